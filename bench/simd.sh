# Sourced by the bench scripts: SIMD=avx512|avx2|portable runs both sides at that level on a CPU
# that has more (unset: each side's own choice, the CPU's widest).
#
# Ours: CLIP_ADAPTER_SIMD (our kernels and our blocked GEMM); below AVX-512 the build leaves out
# the gemm crate's AVX-512 kernels (--no-default-features), whose own dispatch candle's matmul
# uses. PyTorch: ATEN_CPU_CAPABILITY (ATen's kernels), MKL_ENABLE_INSTRUCTIONS (MKL's GEMM),
# ONEDNN_MAX_CPU_ISA (oneDNN's convolutions). Neither side can take the gemm crate, MKL or oneDNN
# below AVX2 on a CPU with AVX2, so "portable" is our kernels and ATen's portable ones only.
CARGO_FEATURES=
case "${SIMD:-}" in
  "") ;;
  avx512)
    export CLIP_ADAPTER_SIMD=avx512 ATEN_CPU_CAPABILITY=avx512
    export MKL_ENABLE_INSTRUCTIONS=AVX512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ;;
  avx2)
    export CLIP_ADAPTER_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2
    export MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
    CARGO_FEATURES=--no-default-features ;;
  portable)
    export CLIP_ADAPTER_SIMD=portable ATEN_CPU_CAPABILITY=default
    export MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
    CARGO_FEATURES=--no-default-features ;;
  *) echo "SIMD=$SIMD: one of avx512, avx2, portable" >&2; exit 2 ;;
esac
