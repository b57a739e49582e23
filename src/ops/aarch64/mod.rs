//! The building blocks the operators' aarch64 kernels share. Advanced
//! SIMD (NEON) is part of every ARMv8-A core, so the kernels need no
//! `target_feature` of their own: the target has it.

pub(crate) mod neon;
