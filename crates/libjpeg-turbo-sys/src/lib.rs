//! Raw bindings to the part of the TurboJPEG 3 API that decompresses a JPEG into an 8-bit
//! buffer, linked against the libjpeg-turbo 3.1.0 this crate vendors and builds (`build.rs`).
//!
//! Only what clip-adapter calls is declared. The constants' values are the C enums'
//! (`turbojpeg.h`); `abi_check.c`, compiled into the library, asserts each one at build time, so
//! a mismatch fails the build instead of decoding wrongly.
//!
//! Every function is `unsafe`: the caller upholds TurboJPEG's contract (a live handle from
//! [`tj3Init`], buffers of the stated sizes).

#![no_std]
#![allow(non_camel_case_types, non_upper_case_globals)]

use core::ffi::{c_char, c_int, c_void};

/// The libjpeg-turbo release that is vendored.
pub const LIBJPEG_TURBO_VERSION: &str = "3.1.0";

/// Whether the library was built with its x86-64 SIMD routines (NASM was found), rather than
/// from its portable C code only. Both decode to the same pixels.
pub const SIMD: bool = cfg!(libjpeg_turbo_simd);

/// A TurboJPEG instance (`tjhandle`).
pub type tjhandle = *mut c_void;

/// `TJINIT_DECOMPRESS` (enum TJINIT).
pub const TJINIT_DECOMPRESS: c_int = 1;

/// `TJPARAM_*` (enum TJPARAM): parameters read with [`tj3Get`].
pub const TJPARAM_JPEGWIDTH: c_int = 5;
pub const TJPARAM_JPEGHEIGHT: c_int = 6;
pub const TJPARAM_COLORSPACE: c_int = 8;

/// `TJPF_*` (enum TJPF): the pixel formats we decode into.
pub const TJPF_RGB: c_int = 0;
pub const TJPF_GRAY: c_int = 6;
pub const TJPF_CMYK: c_int = 11;

/// `TJCS_*` (enum TJCS): the JPEG colour spaces [`TJPARAM_COLORSPACE`] reports.
pub const TJCS_RGB: c_int = 0;
pub const TJCS_YCbCr: c_int = 1;
pub const TJCS_GRAY: c_int = 2;
pub const TJCS_CMYK: c_int = 3;
pub const TJCS_YCCK: c_int = 4;

/// `TJERR_WARNING` (enum TJERR): [`tj3GetErrorCode`]'s answer when libjpeg only warned and the
/// operation completed.
pub const TJERR_WARNING: c_int = 0;

extern "C" {
    pub fn tj3Init(init_type: c_int) -> tjhandle;
    pub fn tj3Destroy(handle: tjhandle);
    pub fn tj3GetErrorStr(handle: tjhandle) -> *mut c_char;
    pub fn tj3GetErrorCode(handle: tjhandle) -> c_int;
    pub fn tj3Get(handle: tjhandle, param: c_int) -> c_int;
    pub fn tj3DecompressHeader(handle: tjhandle, jpeg_buf: *const u8, jpeg_size: usize) -> c_int;
    pub fn tj3Decompress8(
        handle: tjhandle,
        jpeg_buf: *const u8,
        jpeg_size: usize,
        dst_buf: *mut u8,
        pitch: c_int,
        pixel_format: c_int,
    ) -> c_int;
}
