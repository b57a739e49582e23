//! The instruction set the project's operators run with: detected once per
//! process, capped by `--simd` for measurements.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The instruction set an operator runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Plain Rust, vectorised by the compiler (SSE2, NEON).
    Portable,
    /// AVX2 + FMA: 8 outputs a step.
    Avx2,
    /// AVX-512F (with AVX2 + FMA for the rest): 16 outputs a step, masked
    /// tails, so a 7- or 14-wide row is one step.
    Avx512,
}

/// The highest level [`Level::detect`] returns, as `Simd as u8`: lowered
/// by [`Simd::limit`] only.
static LIMIT: AtomicU8 = AtomicU8::new(Simd::Avx512 as u8);

impl Simd {
    /// Every level, lowest first: each one's CPU has all below it.
    pub(crate) const ALL: [Simd; 3] = [Simd::Portable, Simd::Avx2, Simd::Avx512];

    /// Runs the project's operators at most at `level` from now on, for the
    /// whole process: so that `bench --simd avx2` and `profile --simd avx2`
    /// measure on an AVX-512 machine the path an AVX2-only one runs.
    pub fn limit(level: Simd) {
        LIMIT.store(level as u8, Ordering::Relaxed);
    }

    /// The level named `name` (`portable`, `avx2`, `avx512`), for `--simd`.
    pub fn parse(name: &str) -> Result<Simd, String> {
        Simd::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| format!("{name:?}: expected portable, avx2 or avx512"))
    }

    /// The level's name, as `--simd` takes it and reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// An instruction-set level this CPU has. Only [`Level::detect`] and
/// [`Level::available`] make one, after asking the CPU, and every kernel
/// call rests on that: a kernel compiled for `level.simd()` may run where
/// a `Level` is at hand. Operators choose their kernels from a `Level`
/// (each keeps a table of them), so this is the one safety argument for
/// running them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Level(Simd);

impl Level {
    /// The best level this CPU has, up to the process's [`Simd::limit`].
    /// Operators ask on every run, so the CPU is asked once.
    pub(crate) fn detect() -> Level {
        let limit = LIMIT.load(Ordering::Relaxed);
        cpu_levels()
            .iter()
            .rev()
            .find(|l| l.0 as u8 <= limit)
            .copied()
            .unwrap_or(PORTABLE)
    }

    /// Every level this CPU can run, portable first: what kernel tests
    /// compare with the definition.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Level> {
        cpu_levels().to_vec()
    }

    /// The instruction set.
    pub(crate) fn simd(self) -> Simd {
        self.0
    }
}

/// Plain Rust: every CPU has it.
const PORTABLE: Level = Level(Simd::Portable);

/// The levels this CPU has, portable first, asked once.
fn cpu_levels() -> &'static [Level] {
    static LEVELS: OnceLock<Vec<Level>> = OnceLock::new();
    LEVELS.get_or_init(|| {
        let mut levels = vec![PORTABLE];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                levels.push(Level(Simd::Avx2));
                if has!("avx512f") {
                    levels.push(Level(Simd::Avx512));
                }
            }
        }
        levels
    })
}
