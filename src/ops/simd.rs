//! The instruction set the project's operators run with: detected once per
//! process, capped by `--simd` for measurements.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The instruction set an operator runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Plain Rust, vectorised by the compiler (SSE2; NEON on aarch64).
    Portable,
    /// AVX2 + FMA: 8 outputs a step.
    Avx2,
    /// AVX-512F (with AVX2 + FMA for the rest): 16 outputs a step, masked
    /// tails, so a 7- or 14-wide row is one step.
    Avx512,
    /// AArch64's Advanced SIMD (every ARMv8-A core: Graviton2's Neoverse
    /// N1 and later): 4 lanes, 32 registers, FMA by a lane of a register.
    Neon,
}

/// The highest level [`Level::detect`] returns, as `Simd as u8` (no limit
/// until [`Simd::limit`] sets one).
static LIMIT: AtomicU8 = AtomicU8::new(u8::MAX);

impl Simd {
    /// This architecture's levels, lowest first: each one's CPU has all
    /// below it.
    #[cfg(not(target_arch = "aarch64"))]
    pub(crate) const ALL: &[Simd] = &[Simd::Portable, Simd::Avx2, Simd::Avx512];
    #[cfg(target_arch = "aarch64")]
    pub(crate) const ALL: &[Simd] = &[Simd::Portable, Simd::Neon];

    /// Runs the project's operators at most at `level` from now on, for the
    /// whole process: so that `bench --simd avx2` and `profile --simd avx2`
    /// measure on an AVX-512 machine the path an AVX2-only one runs.
    pub fn limit(level: Simd) {
        LIMIT.store(level as u8, Ordering::Relaxed);
    }

    /// The level named `name` (`portable`, `avx2`, `avx512` on x86_64;
    /// `portable`, `neon` on aarch64), for `--simd`.
    pub fn parse(name: &str) -> Result<Simd, String> {
        let names: Vec<&str> = Simd::ALL.iter().map(|l| l.name()).collect();
        Simd::ALL
            .iter()
            .copied()
            .find(|l| l.name() == name)
            .ok_or_else(|| format!("{name:?}: expected one of {}", names.join(", ")))
    }

    /// The level's name, as `--simd` takes it and reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
            Simd::Neon => "neon",
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
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            levels.push(Level(Simd::Neon));
        }
        levels
    })
}
