//! This core's multiply-add peak, measured: the yardstick that says how far
//! an operator's GMAC/s is from what the CPU can do at all.
//!
//! Datasheet figures do not fit a virtual machine's CPU (the clock under
//! load, how many FMA pipes, whether 512-bit operations are split in two),
//! so `profile` and `scripts/compare.sh` measure it where they run: one
//! thread, independent chains of vector FMAs held in registers, nothing
//! loaded or stored, enough chains to cover the FMA latency on every x86
//! core the project has run on (4-5 cycles, one or two 512-bit FMAs a
//! cycle). Best of a few runs of about 10 ms each, so frequency ramp-up and
//! a neighbour's burst do not set the figure.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use crate::ops::{Level, Simd};

/// Independent accumulators per run. 12 vectors leave AVX-512's 32
/// registers room; AVX2 has 16, so 10 (Zen 2 needs 2 pipes x 5 cycles).
const AVX512_CHAINS: usize = 12;
const AVX2_CHAINS: usize = 10;
const PORTABLE_CHAINS: usize = 12;
/// Graviton3's Neoverse V1 has four 128-bit FMA pipes of 4 cycles (16
/// chains to fill); Graviton2's N1 two (8). NEON has 32 registers.
const NEON_CHAINS: usize = 16;

/// Runs, and steps per chain in each.
const RUNS: usize = 5;
const STEPS: usize = 1 << 21;

/// The factor and addend every step applies (`acc * M + A`): the chains
/// converge to 1, so they never overflow or go subnormal, slowly enough
/// that the tests can count the steps.
const M: f32 = 0.999;
const A: f32 = 0.001;

/// A measured peak, per core.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Peak {
    /// Billions of multiply-adds per second on one core.
    pub gmacs: f64,
    /// The instruction set measured (`avx512`, `avx2`, `neon`, `portable`).
    pub simd: &'static str,
    /// Multiply-adds per instruction and independent chains.
    pub lanes: usize,
    /// Independent chains of FMAs.
    pub chains: usize,
}

impl Peak {
    /// `achieved` GMAC/s as a percentage of this peak.
    pub fn percent(&self, achieved: f64) -> f64 {
        100.0 * achieved / self.gmacs.max(f64::MIN_POSITIVE)
    }
}

/// Measures this core's multiply-add peak (on the calling thread, in about
/// 50 ms) at the level the project's operators run with: the best this CPU
/// has, or what [`Simd::limit`] lowered it to.
pub fn fma_peak() -> Peak {
    peak_at(Level::detect())
}

/// [`fma_peak`] at `level`. The portable level counts a multiply and an
/// add as one multiply-add, as the portable operators compute.
fn peak_at(level: Level) -> Peak {
    let simd = level.simd();
    let (lanes, chains) = shape(simd);
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let started = Instant::now();
        black_box(chains_sum(
            level,
            black_box(STEPS),
            black_box(M),
            black_box(A),
        ));
        best = best.min(started.elapsed().as_secs_f64());
    }
    Peak {
        gmacs: (STEPS * chains * lanes) as f64 / best.max(1e-9) / 1e9,
        simd: simd.name(),
        lanes,
        chains,
    }
}

/// Lanes per instruction and chains at `simd`.
fn shape(simd: Simd) -> (usize, usize) {
    match simd {
        Simd::Avx512 => (16, AVX512_CHAINS),
        Simd::Avx2 => (8, AVX2_CHAINS),
        Simd::Portable => (8, PORTABLE_CHAINS),
        Simd::Neon => (4, NEON_CHAINS),
    }
}

/// Runs `steps` of `acc = acc * m + a` on every lane of every chain (chain
/// `i` starting at `i`), and returns the sum of every lane: the tests check
/// it against the same recurrence in scalar code, so the timed loop is
/// known to do exactly the work it is credited with.
fn chains_sum(level: Level, steps: usize, m: f32, a: f32) -> f32 {
    // SAFETY (both arms): a `Level` is one this CPU has.
    match level.simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::chains_sum(steps, m, a) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::chains_sum(steps, m, a) },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => unsafe { neon::chains_sum(steps, m, a) },
        _ => portable(steps, m, a),
    }
}

/// Plain Rust over arrays the compiler vectorises: a multiply, then an add
/// (Rust does not fuse them), as the portable operators run.
#[inline(never)]
fn portable(steps: usize, m: f32, a: f32) -> f32 {
    let mut acc = [[0f32; 8]; PORTABLE_CHAINS];
    for (i, chain) in acc.iter_mut().enumerate() {
        *chain = [i as f32; 8];
    }
    for _ in 0..steps {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * m + a;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx2.rs"]
mod avx2;
#[cfg(target_arch = "x86_64")]
#[path = "x86_64/avx512.rs"]
mod avx512;
#[cfg(target_arch = "aarch64")]
#[path = "aarch64/neon.rs"]
mod neon;

#[cfg(test)]
mod tests {
    use super::*;

    /// The same recurrence, one lane of one chain at a time, fused where
    /// the level fuses.
    fn scalar(simd: Simd, steps: usize) -> f32 {
        let (lanes, chains) = shape(simd);
        let mut sum = 0f32;
        for i in 0..chains {
            let mut v = i as f32;
            for _ in 0..steps {
                v = match simd {
                    Simd::Portable => v * M + A,
                    _ => v.mul_add(M, A),
                };
            }
            sum += v * lanes as f32;
        }
        sum
    }

    /// The timed loop does exactly `steps` multiply-adds per lane and
    /// chain: a loop the compiler shortened, or a chain it dropped, would
    /// give another sum (the chains start apart and move every step).
    #[test]
    fn every_level_does_the_work_it_is_credited_with() {
        for level in Level::available() {
            let simd = level.simd();
            for steps in [1, 2, 7, 1000] {
                let got = chains_sum(level, steps, M, A);
                let close = |want: f32| (got - want).abs() <= want.abs() * 1e-6;
                assert!(close(scalar(simd, steps)), "{simd:?}, {steps} steps: {got}");
                assert!(!close(scalar(simd, steps + 1)), "{simd:?}: {steps} steps");
            }
        }
    }

    #[test]
    fn the_peak_counts_lanes_chains_and_steps() {
        let simd = Level::detect().simd();
        let peak = fma_peak();
        let (lanes, chains) = shape(simd);
        assert_eq!(
            (peak.lanes, peak.chains, peak.simd),
            (lanes, chains, simd.name())
        );
        assert!(peak.gmacs.is_finite() && peak.gmacs > 0.0, "{peak:?}");
        assert_eq!(
            Peak {
                gmacs: 50.0,
                ..peak
            }
            .percent(20.0),
            40.0
        );
    }
}
