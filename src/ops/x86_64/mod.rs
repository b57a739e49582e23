//! The building blocks the operators' x86_64 kernels share, one file per
//! instruction set: the clamp each kernel ends with, tail masks, and
//! register transposes. Each is `#[inline]` with its instruction set
//! enabled, so it compiles into the kernel that calls it.

pub(crate) mod avx2;
pub(crate) mod avx512;
