//! The CPU kernels we own because the tensor library's are slower or record no gradient: the
//! GEMM wrapper and few-row kernels shared by the encoders, the convolutions and the trained
//! heads, the bfloat16 products of the opt-in reduced precision, the fused transformer ops, the SGD step fused into a weight gradient's tiles, vectorised element-wise math, and where parallel work starts from.

pub mod alloc;
pub mod bf16;
pub(crate) mod eva_ops;
pub mod matmul;
pub(crate) mod ops;
pub mod panels;
pub mod pool;
pub mod sgd;
pub(crate) mod vmath;
