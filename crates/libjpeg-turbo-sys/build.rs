//! Builds the vendored libjpeg-turbo 3.1.0 as the static TurboJPEG library, the way its
//! CMakeLists.txt builds `turbojpeg-static`, but with the `cc` crate only: no CMake.
//!
//! SIMD: on x86-64 the accelerated routines are NASM sources. They are assembled when NASM is
//! found; otherwise the library is built from its portable C code alone (libjpeg-turbo's
//! `WITH_SIMD=0`), which decodes to the same pixels, only slower.
//!
//! Environment:
//! * `LIBJPEG_TURBO_SIMD` = `auto` (default: SIMD when NASM works), `on` (fail without it) or
//!   `off` (portable C code only, even when NASM is installed);
//! * `NASM` (or `ASM_NASM`, the variable libjpeg-turbo's CMake honours): the assembler to run,
//!   default `nasm` from `PATH`.
//!
//! Installing or removing NASM later does not re-run this script by itself (cargo cannot watch
//! `PATH` without rebuilding on every unrelated change); set `LIBJPEG_TURBO_SIMD` to switch.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// From libjpeg-turbo's CMakeLists.txt (`VERSION`, `COPYRIGHT_YEAR`), for the generated headers.
const VERSION: &str = "3.1.0";
const VERSION_NUMBER: &str = "3001000";
const COPYRIGHT_YEAR: &str = "1991-2024";
/// libjpeg API/ABI 6.2, the default (`WITH_JPEG7` and `WITH_JPEG8` off), as Pillow's wheels use.
const JPEG_LIB_VERSION: &str = "62";

/// CMakeLists.txt `JPEG16_SOURCES`: compiled once per sample precision (8, 12 and 16 bits).
const JPEG16_SOURCES: &[&str] = &[
    "jcapistd", "jccolor", "jcdiffct", "jclossls", "jcmainct", "jcprepct", "jcsample", "jdapistd",
    "jdcolor", "jddiffct", "jdlossls", "jdmainct", "jdpostct", "jdsample", "jutils",
];
/// `JPEG12_SOURCES` minus `JPEG16_SOURCES`: the lossy (DCT) code, for 8 and 12 bits.
const JPEG12_ONLY_SOURCES: &[&str] = &[
    "jccoefct", "jcdctmgr", "jdcoefct", "jddctmgr", "jdmerge", "jfdctfst", "jfdctint", "jidctflt",
    "jidctfst", "jidctint", "jidctred", "jquant1", "jquant2",
];
/// `JPEG_SOURCES` minus `JPEG12_SOURCES`, with arithmetic coding (`WITH_ARITH_ENC`/`DEC`, on by
/// default): precision-independent code, compiled once.
const JPEG8_ONLY_SOURCES: &[&str] = &[
    "jcapimin",
    "jchuff",
    "jcicc",
    "jcinit",
    "jclhuff",
    "jcmarker",
    "jcmaster",
    "jcomapi",
    "jcparam",
    "jcphuff",
    "jctrans",
    "jdapimin",
    "jdatadst",
    "jdatasrc",
    "jdhuff",
    "jdicc",
    "jdinput",
    "jdlhuff",
    "jdmarker",
    "jdmaster",
    "jdphuff",
    "jdtrans",
    "jerror",
    "jfdctflt",
    "jmemmgr",
    "jmemnobs",
    "jpeg_nbits",
    "jaricom",
    "jcarith",
    "jdarith",
];
/// The TurboJPEG layer of `turbojpeg-static`. Only decompression is used, but `turbojpeg.c`
/// references the whole API (compression, transforms, image file I/O), so all of it is linked.
const TURBOJPEG_SOURCES: &[&str] = &[
    "turbojpeg",
    "transupp",
    "jdatadst-tj",
    "jdatasrc-tj",
    "rdbmp",
    "rdppm",
    "wrbmp",
    "wrppm",
];
/// `turbojpeg12-static` / `turbojpeg16-static`: the PPM reader and writer per precision.
const TURBOJPEG_PRECISION_SOURCES: &[&str] = &["rdppm", "wrppm"];

/// simd/CMakeLists.txt `SIMD_SOURCES` for x86_64 (the other .asm files are included by these).
const X86_64_SIMD_SOURCES: &[&str] = &[
    "jsimdcpu",
    "jfdctflt-sse",
    "jccolor-sse2",
    "jcgray-sse2",
    "jchuff-sse2",
    "jcphuff-sse2",
    "jcsample-sse2",
    "jdcolor-sse2",
    "jdmerge-sse2",
    "jdsample-sse2",
    "jfdctfst-sse2",
    "jfdctint-sse2",
    "jidctflt-sse2",
    "jidctfst-sse2",
    "jidctint-sse2",
    "jidctred-sse2",
    "jquantf-sse2",
    "jquanti-sse2",
    "jccolor-avx2",
    "jcgray-avx2",
    "jcsample-avx2",
    "jdcolor-avx2",
    "jdmerge-avx2",
    "jdsample-avx2",
    "jfdctint-avx2",
    "jidctint-avx2",
    "jquanti-avx2",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimdMode {
    Auto,
    On,
    Off,
}

struct Target {
    arch: String,
    os: String,
    pointer_width: String,
    msvc: bool,
    windows: bool,
}

impl Target {
    fn from_env() -> Self {
        let var = |k: &str| env::var(k).unwrap_or_default();
        let os = var("CARGO_CFG_TARGET_OS");
        Self {
            arch: var("CARGO_CFG_TARGET_ARCH"),
            msvc: var("CARGO_CFG_TARGET_ENV") == "msvc",
            windows: os == "windows",
            pointer_width: var("CARGO_CFG_TARGET_POINTER_WIDTH"),
            os,
        }
    }

    /// NASM's object format and defines for this target (simd/CMakeLists.txt), or `None` where
    /// libjpeg-turbo has no NASM SIMD code (other architectures, the x32 ABI).
    fn nasm_format(&self) -> Option<(&'static str, &'static [&'static str])> {
        if self.arch != "x86_64" || self.pointer_width != "64" {
            return None;
        }
        Some(if self.windows {
            ("win64", &["-DWIN64", "-D__x86_64__"])
        } else if self.os == "macos" || self.os == "ios" {
            ("macho64", &["-DMACHO", "-D__x86_64__"])
        } else {
            ("elf64", &["-DELF", "-D__x86_64__"])
        })
    }
}

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let jt = root.join("libjpeg-turbo");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=libjpeg-turbo");
    println!("cargo:rerun-if-changed=src/abi_check.c");
    for var in ["LIBJPEG_TURBO_SIMD", "NASM", "ASM_NASM"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rustc-check-cfg=cfg(libjpeg_turbo_simd)");

    let target = Target::from_env();
    let mode = simd_mode();
    let include = out.join("include");
    fs::create_dir_all(&include).expect("create OUT_DIR/include");

    let base = base_build(&target, &jt, &include);
    let mut objects = Vec::new();
    let mut simd = false;
    let simd_possible = target.nasm_format().is_some();
    // Elsewhere than x86-64 the portable C code is the plan, not a fallback: no warning.
    if mode == SimdMode::On || (mode == SimdMode::Auto && simd_possible) {
        match assemble_simd(&target, &base, &jt, &out.join("simd")) {
            Ok(objs) => {
                objects.extend(objs);
                simd = true;
            }
            Err(why) if mode == SimdMode::On => {
                panic!("LIBJPEG_TURBO_SIMD=on, but the SIMD code cannot be built: {why}")
            }
            Err(why) => println!(
                "cargo:warning=libjpeg-turbo built without SIMD (JPEG decoding 1.5-3x \
                 slower, same pixels): {why}. Install NASM, or set LIBJPEG_TURBO_SIMD=off to \
                 silence this."
            ),
        }
    }

    write_headers(&jt, &include, &target, simd);

    let src = |names: &[&str]| -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| jt.join("src").join(format!("{n}.c")))
            .collect()
    };
    // Each unit: its files, the defines CMake gives that target, its own object folder (the
    // same file compiled at another precision must not overwrite the 8-bit object).
    let mut eight = src(JPEG16_SOURCES);
    eight.extend(src(JPEG12_ONLY_SOURCES));
    eight.extend(src(JPEG8_ONLY_SOURCES));
    eight.extend(src(TURBOJPEG_SOURCES));
    eight.push(root.join("src").join("abi_check.c"));
    if simd {
        eight.push(jt.join("simd").join("x86_64").join("jsimd.c"));
    }
    let mut twelve = src(JPEG16_SOURCES);
    twelve.extend(src(JPEG12_ONLY_SOURCES));
    let units: Vec<Unit> = vec![
        (
            eight,
            vec![("BMP_SUPPORTED", "1"), ("PPM_SUPPORTED", "1")],
            out.join("obj8"),
        ),
        (twelve, vec![("BITS_IN_JSAMPLE", "12")], out.join("obj12")),
        (
            src(JPEG16_SOURCES),
            vec![("BITS_IN_JSAMPLE", "16")],
            out.join("obj16"),
        ),
        (
            src(TURBOJPEG_PRECISION_SOURCES),
            vec![("BITS_IN_JSAMPLE", "12"), ("PPM_SUPPORTED", "1")],
            out.join("tj12"),
        ),
        (
            src(TURBOJPEG_PRECISION_SOURCES),
            vec![("BITS_IN_JSAMPLE", "16"), ("PPM_SUPPORTED", "1")],
            out.join("tj16"),
        ),
    ];
    objects.extend(compile_parallel(&base, units));

    let mut lib = cc::Build::new();
    lib.objects(&objects).compile("turbojpeg");

    if simd {
        println!("cargo:rustc-cfg=libjpeg_turbo_simd");
    }
    println!("cargo:simd={}", u8::from(simd));
    println!("cargo:include={}", include.display());
}

fn simd_mode() -> SimdMode {
    match env::var("LIBJPEG_TURBO_SIMD").as_deref() {
        Err(_) | Ok("") | Ok("auto") => SimdMode::Auto,
        Ok("on") | Ok("1") => SimdMode::On,
        Ok("off") | Ok("0") => SimdMode::Off,
        Ok(other) => panic!("LIBJPEG_TURBO_SIMD={other:?}: expected auto, on or off"),
    }
}

/// The compiler settings every libjpeg-turbo C file gets.
fn base_build(target: &Target, jt: &Path, include: &Path) -> cc::Build {
    let mut b = cc::Build::new();
    // The generated headers first, then the sources' own folder (CMake's include_directories).
    b.include(include)
        .include(jt.join("src"))
        .define("NDEBUG", None)
        // Upstream code, built as upstream builds it: its warnings are not ours to fix.
        .warnings(false)
        .extra_warnings(false)
        .cargo_warnings(false);
    if target.msvc {
        b.define("_CRT_SECURE_NO_DEPRECATE", None)
            .define("_CRT_NONSTDC_NO_WARNINGS", None);
    }
    b
}

/// One group of C files: the files, the defines they are compiled with, and where their
/// objects go.
type Unit<'a> = (Vec<PathBuf>, Vec<(&'a str, &'a str)>, PathBuf);

/// Compiles the units on `NUM_JOBS` threads (the `cc` crate compiles one file at a time without
/// its `parallel` feature); returns the object files.
fn compile_parallel(base: &cc::Build, units: Vec<Unit>) -> Vec<PathBuf> {
    let jobs: usize = env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    // One (unit, file) per task; tasks are dealt round-robin to the threads.
    let mut tasks = Vec::new();
    for (files, defines, dir) in &units {
        fs::create_dir_all(dir).expect("create object folder");
        for f in files {
            tasks.push((f.clone(), defines.clone(), dir.clone()));
        }
    }
    let mut buckets: Vec<Vec<_>> = (0..jobs.min(tasks.len())).map(|_| Vec::new()).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let n = buckets.len();
        buckets[i % n].push(t);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = buckets
            .into_iter()
            .map(|bucket| {
                s.spawn(move || {
                    let mut objs = Vec::new();
                    for (file, defines, dir) in bucket {
                        let mut b = base.clone();
                        for (k, v) in defines {
                            b.define(k, Some(v));
                        }
                        b.out_dir(&dir).file(&file);
                        objs.extend(b.compile_intermediates());
                    }
                    objs
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a compiler thread panicked"))
            .collect()
    })
}

/// The NASM program to run: `NASM`, `ASM_NASM`, or `nasm` from `PATH`.
fn nasm_program() -> String {
    ["NASM", "ASM_NASM"]
        .iter()
        .find_map(|k| env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "nasm".to_string())
}

/// Assembles libjpeg-turbo's x86-64 SIMD routines; `Err` says why they cannot be used.
fn assemble_simd(
    target: &Target,
    base: &cc::Build,
    jt: &Path,
    dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    let (format, defines) = target.nasm_format().ok_or_else(|| {
        format!(
            "libjpeg-turbo's NASM SIMD code is for x86-64 only (target: {}, {}-bit pointers)",
            target.arch, target.pointer_width
        )
    })?;
    let nasm = nasm_program();
    match Command::new(&nasm).arg("-v").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Err(format!("`{nasm} -v` failed ({})", o.status)),
        Err(e) => return Err(format!("NASM not found (`{nasm}`: {e})")),
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut flags: Vec<String> = vec![format!("-f{format}")];
    flags.extend(defines.iter().map(|d| d.to_string()));
    if !target.windows {
        // Rust links position-independent executables; CMake adds -DPIC for such builds.
        flags.push("-DPIC".into());
    }
    if format == "elf64" && compiler_enables_cet(base) {
        flags.push("-D__CET__".into());
    }
    let simd = jt.join("simd");
    // NASM wants the trailing separator on include folders.
    for inc in [simd.join("nasm"), simd.join("x86_64")] {
        flags.push(format!("-I{}{}", inc.display(), std::path::MAIN_SEPARATOR));
    }
    let ext = if target.msvc { "obj" } else { "o" };
    let outputs: Vec<Result<PathBuf, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = X86_64_SIMD_SOURCES
            .iter()
            .map(|name| {
                let (flags, nasm) = (&flags, &nasm);
                let src = simd.join("x86_64").join(format!("{name}.asm"));
                let obj = dir.join(format!("{name}.{ext}"));
                s.spawn(move || {
                    let o = Command::new(nasm)
                        .args(flags)
                        .arg("-o")
                        .arg(&obj)
                        .arg(&src)
                        .output()
                        .map_err(|e| format!("cannot run `{nasm}`: {e}"))?;
                    if o.status.success() {
                        Ok(obj)
                    } else {
                        Err(format!(
                            "`{nasm}` failed on {}: {}",
                            src.display(),
                            String::from_utf8_lossy(&o.stderr).trim()
                        ))
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an assembler thread panicked"))
            .collect()
    });
    outputs.into_iter().collect()
}

/// Whether the C compiler emits Intel CET markers by default (`__CET__`), in which case the
/// assembly must carry them too (simd/CMakeLists.txt `HAVE_CET`).
fn compiler_enables_cet(base: &cc::Build) -> bool {
    let compiler = base.get_compiler();
    if compiler.is_like_msvc() {
        return false;
    }
    let probe = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("cet.c");
    if fs::write(&probe, "").is_err() {
        return false;
    }
    let output = compiler
        .to_command()
        .args(["-dM", "-E"])
        .arg(&probe)
        .output();
    let Ok(o) = output else { return false };
    String::from_utf8_lossy(&o.stdout).lines().any(|l| {
        l.strip_prefix("#define __CET__ ")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_some_and(|v| v & 3 != 0)
    })
}

/// Writes jconfig.h, jconfigint.h and jversion.h from their `.in` templates, as CMake's
/// `configure_file` would with this target's answers to CMakeLists.txt's checks.
fn write_headers(jt: &Path, include: &Path, target: &Target, simd: bool) {
    let gnu = !target.msvc;
    let size_t = if target.pointer_width == "64" {
        "8"
    } else {
        "4"
    };
    let vars: Vec<(&str, Option<&str>)> = vec![
        ("JPEG_LIB_VERSION", Some(JPEG_LIB_VERSION)),
        ("VERSION", Some(VERSION)),
        ("LIBJPEG_TURBO_VERSION_NUMBER", Some(VERSION_NUMBER)),
        ("COPYRIGHT_YEAR", Some(COPYRIGHT_YEAR)),
        ("C_ARITH_CODING_SUPPORTED", Some("1")),
        ("D_ARITH_CODING_SUPPORTED", Some("1")),
        ("WITH_SIMD", simd.then_some("1")),
        ("RIGHT_SHIFT_IS_UNSIGNED", None),
        // CMake's default is the build date; a fixed string keeps builds reproducible.
        ("BUILD", Some("libjpeg-turbo-sys")),
        ("CMAKE_PROJECT_NAME", Some("libjpeg-turbo")),
        (
            "HIDDEN",
            Some(if gnu && !target.windows {
                "__attribute__((visibility(\"hidden\")))"
            } else {
                ""
            }),
        ),
        (
            "INLINE",
            Some(if gnu {
                "__inline__ __attribute__((always_inline))"
            } else {
                "__forceinline"
            }),
        ),
        (
            "THREAD_LOCAL",
            Some(if target.msvc {
                "__declspec(thread)"
            } else {
                "__thread"
            }),
        ),
        ("SIZE_T", Some(size_t)),
        // __builtin_ctzl counts size_t bits only where long is as wide as size_t (not Win64).
        (
            "HAVE_BUILTIN_CTZL",
            (gnu && !(target.windows && size_t == "8")).then_some("1"),
        ),
        ("HAVE_INTRIN_H", target.msvc.then_some("1")),
    ];
    for name in ["jconfig.h", "jconfigint.h", "jversion.h"] {
        let template = jt.join("src").join(format!("{name}.in"));
        let text = fs::read_to_string(&template)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", template.display()));
        let header =
            configure_file(&text, &vars).unwrap_or_else(|e| panic!("{}: {e}", template.display()));
        write_if_changed(&include.join(name), &header);
    }
}

/// CMake's `configure_file`: `@VAR@` is replaced by the value, `#cmakedefine VAR [value]`
/// becomes `#define VAR [value]` when VAR is set and `/* #undef VAR */` when not. An unknown
/// variable is an error, so that a template change cannot slip through unnoticed.
fn configure_file(text: &str, vars: &[(&str, Option<&str>)]) -> Result<String, String> {
    let lookup = |name: &str| -> Result<Option<&str>, String> {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("template variable {name} has no value"))
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = if let Some(rest) = line.strip_prefix("#cmakedefine ") {
            let mut parts = rest.splitn(2, char::is_whitespace);
            let name = parts.next().unwrap_or_default();
            let value = parts.next().unwrap_or_default().trim();
            match lookup(name)? {
                Some(_) if value.is_empty() => format!("#define {name}"),
                Some(_) => format!("#define {name} {value}"),
                None => format!("/* #undef {name} */"),
            }
        } else {
            line.to_string()
        };
        // @VAR@ substitutions.
        let mut rest = line.as_str();
        while let Some(start) = rest.find('@') {
            let Some(len) = rest[start + 1..].find('@') else {
                break;
            };
            let name = &rest[start + 1..start + 1 + len];
            out.push_str(&rest[..start]);
            out.push_str(lookup(name)?.unwrap_or(""));
            rest = &rest[start + len + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

/// Leaves an unchanged header alone, so that its timestamp does not trigger recompiles.
fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return;
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
