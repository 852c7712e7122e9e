/*
 * Build-time proof that the constants and signatures declared in lib.rs are those of the
 * vendored turbojpeg.h: a mismatch stops the build here instead of decoding wrongly.
 */
#include <stddef.h>
#include "turbojpeg.h"

_Static_assert(TJINIT_DECOMPRESS == 1, "lib.rs TJINIT_DECOMPRESS");
_Static_assert(TJPARAM_JPEGWIDTH == 5, "lib.rs TJPARAM_JPEGWIDTH");
_Static_assert(TJPARAM_JPEGHEIGHT == 6, "lib.rs TJPARAM_JPEGHEIGHT");
_Static_assert(TJPARAM_COLORSPACE == 8, "lib.rs TJPARAM_COLORSPACE");
_Static_assert(TJPF_RGB == 0, "lib.rs TJPF_RGB");
_Static_assert(TJPF_GRAY == 6, "lib.rs TJPF_GRAY");
_Static_assert(TJPF_CMYK == 11, "lib.rs TJPF_CMYK");
_Static_assert(TJCS_RGB == 0, "lib.rs TJCS_RGB");
_Static_assert(TJCS_YCbCr == 1, "lib.rs TJCS_YCbCr");
_Static_assert(TJCS_GRAY == 2, "lib.rs TJCS_GRAY");
_Static_assert(TJCS_CMYK == 3, "lib.rs TJCS_CMYK");
_Static_assert(TJCS_YCCK == 4, "lib.rs TJCS_YCCK");
_Static_assert(TJERR_WARNING == 0, "lib.rs TJERR_WARNING");

/* The signatures lib.rs declares, declared again: C makes a redeclaration with a different type
 * a hard error ("conflicting types"). */
void *tj3Init(int initType);
void tj3Destroy(void *handle);
char *tj3GetErrorStr(void *handle);
int tj3GetErrorCode(void *handle);
int tj3Get(void *handle, int param);
int tj3DecompressHeader(void *handle, const unsigned char *jpegBuf, size_t jpegSize);
int tj3Decompress8(void *handle, const unsigned char *jpegBuf, size_t jpegSize,
                   unsigned char *dstBuf, int pitch, int pixelFormat);
