//! The CPU kernels we own because the tensor library's are slower or record no gradient: the
//! GEMM wrapper shared by the convolutions and the trained heads, and the fused transformer ops.

pub mod matmul;
pub(crate) mod ops;
