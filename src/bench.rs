//! The offline batch benchmark behind `onnx-lambda bench`: a folder of images
//! through the same pipeline the services use, reporting throughput, latency
//! percentiles, model load time, peak memory, CPU time per image and what
//! that would cost on Lambda.

use std::time::Instant;

use serde::Serialize;

use crate::classify::Classifier;

/// Lambda's list prices (us-east-1, aws.amazon.com/lambda/pricing), per
/// GB-second of billed duration. `scripts/bench_onnxruntime.py` uses the same.
pub const PRICE_GB_SECOND_X86_64: f64 = 0.000_016_666_7;
/// The arm64 (Graviton) price per GB-second.
pub const PRICE_GB_SECOND_ARM64: f64 = 0.000_013_333_4;
/// The price of a million invocations, either architecture.
pub const PRICE_PER_MILLION_REQUESTS: f64 = 0.20;
/// Lambda gives one vCPU per 1,769 MB of memory, up to 6.
pub const MB_PER_VCPU: f64 = 1769.0;
const MAX_VCPUS: f64 = 6.0;

/// What an image costs on Lambda, from the CPU time it took here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LambdaPricing {
    /// `x86_64` or `arm64` (informational; the price is what counts).
    pub arch: &'static str,
    /// The function's memory size.
    pub memory_mb: f64,
    /// Price per GB-second.
    pub price_gb_second: f64,
    /// Price per million invocations.
    pub price_per_million_requests: f64,
    /// Images one invocation carries (the SQS batch size; 1 for HTTP).
    pub images_per_invocation: usize,
}

impl LambdaPricing {
    /// List prices for `arch` (`arm64`, else x86_64) at `memory_mb`.
    pub fn list(arch: &str, memory_mb: f64, images_per_invocation: usize) -> LambdaPricing {
        let arm = arch == "arm64";
        LambdaPricing {
            arch: if arm { "arm64" } else { "x86_64" },
            memory_mb,
            price_gb_second: if arm {
                PRICE_GB_SECOND_ARM64
            } else {
                PRICE_GB_SECOND_X86_64
            },
            price_per_million_requests: PRICE_PER_MILLION_REQUESTS,
            images_per_invocation: images_per_invocation.max(1),
        }
    }

    /// US dollars per million images, for a pipeline that spends
    /// `cpu_ms_per_image` of CPU with `threads` threads: the CPU time is
    /// spread over min(vCPUs, threads), billed at the memory size, plus the
    /// request price shared by the images of one invocation. Assumes the
    /// function is CPU-bound (inputs already in memory, as in `bench`).
    pub fn usd_per_million_images(&self, cpu_ms_per_image: f64, threads: usize) -> f64 {
        let vcpus = (self.memory_mb / MB_PER_VCPU).min(MAX_VCPUS);
        let seconds = cpu_ms_per_image / 1000.0 / vcpus.min(threads.max(1) as f64);
        let compute = seconds * self.memory_mb / 1024.0 * self.price_gb_second;
        let request = self.price_per_million_requests / 1e6 / self.images_per_invocation as f64;
        (compute + request) * 1e6
    }
}

/// How to run the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Images per `classify_batch` call.
    pub batch_size: usize,
    /// Measured passes over the image set.
    pub iterations: usize,
    /// Unmeasured passes first (page in weights, warm caches).
    pub warmup: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Prices for the cost estimate.
    pub pricing: LambdaPricing,
}

/// p50/p95/p99 of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (any order); zeros when empty.
    pub fn of(samples: &[f64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| s[((p / 100.0 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Percentiles {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }
}

/// What `bench --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Model name and version.
    pub model: String,
    /// Distinct input images.
    pub images: usize,
    /// Images classified in the measured passes.
    pub classified: usize,
    /// Inputs that failed (counted, not timed).
    pub errors: usize,
    /// Images per `classify_batch` call.
    pub batch_size: usize,
    /// Threads a batch fans out over.
    pub threads: usize,
    /// Measured passes.
    pub iterations: usize,
    /// Successful images per wall-clock second over the measured passes.
    pub images_per_second: f64,
    /// Per image, encoded bytes to top-k.
    pub latency_ms: Percentiles,
    /// Per `classify_batch` call.
    pub batch_latency_ms: Percentiles,
    /// Mean per-image decode / preprocess / inference split.
    pub stage_mean_ms: crate::classify::Timing,
    /// Reading, parsing and optimising the model.
    pub model_load_ms: f64,
    /// Peak resident memory of the process (VmHWM), bytes; 0 where unknown.
    pub peak_rss_bytes: u64,
    /// Process CPU time (user + system) over the measured passes, per image.
    pub cpu_ms_per_image: f64,
    /// The prices the estimate below used.
    pub pricing: LambdaPricing,
    /// Estimated Lambda cost of a million images at this CPU time.
    pub usd_per_million_images: f64,
    /// Where it ran.
    pub machine: Machine,
}

/// Runs the benchmark over `images` (name, encoded bytes).
pub fn run(
    classifier: &Classifier,
    images: &[(String, Vec<u8>)],
    options: &BenchOptions,
    model_load_ms: f64,
) -> BenchReport {
    let batch_size = options.batch_size.max(1);
    let inputs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let measured = passes(&inputs, options.iterations);
    let total = (options.warmup + options.iterations) * inputs.len();
    let bar = if options.progress {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    warm_up(classifier, &inputs, options, &bar);
    let mut latencies = Vec::new();
    let mut batch_latencies = Vec::new();
    let mut stages = crate::classify::Timing::default();
    let mut errors = 0;
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    for chunk in measured.chunks(batch_size) {
        let t = Instant::now();
        let results = classifier.classify_batch(chunk, 5);
        batch_latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        for r in results {
            match r {
                Ok(c) => {
                    latencies.push(c.timing_ms.total);
                    stages.decode += c.timing_ms.decode;
                    stages.preprocess += c.timing_ms.preprocess;
                    stages.inference += c.timing_ms.inference;
                    stages.total += c.timing_ms.total;
                }
                Err(_) => errors += 1,
            }
        }
        bar.inc(chunk.len() as u64);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_ms_per_image = (cpu_seconds() - cpu_started) * 1000.0 / latencies.len().max(1) as f64;
    bar.finish_and_clear();
    let n = latencies.len().max(1) as f64;
    let info = classifier.model().info();
    BenchReport {
        model: format!("{} {}", info.name, info.version),
        images: images.len(),
        classified: latencies.len(),
        errors,
        batch_size,
        threads: classifier.threads(),
        iterations: options.iterations,
        images_per_second: if wall > 0.0 {
            latencies.len() as f64 / wall
        } else {
            0.0
        },
        latency_ms: Percentiles::of(&latencies),
        batch_latency_ms: Percentiles::of(&batch_latencies),
        stage_mean_ms: crate::classify::Timing {
            decode: stages.decode / n,
            preprocess: stages.preprocess / n,
            inference: stages.inference / n,
            total: stages.total / n,
        },
        model_load_ms,
        peak_rss_bytes: peak_rss_bytes(),
        cpu_ms_per_image,
        pricing: options.pricing,
        usd_per_million_images: options
            .pricing
            .usd_per_million_images(cpu_ms_per_image, classifier.threads()),
        machine: machine(),
    }
}

/// The unmeasured passes: weights paged in, caches and run states warm.
fn warm_up(
    classifier: &Classifier,
    inputs: &[&[u8]],
    options: &BenchOptions,
    bar: &indicatif::ProgressBar,
) {
    for chunk in passes(inputs, options.warmup).chunks(options.batch_size.max(1)) {
        let _ = classifier.classify_batch(chunk, 5);
        bar.inc(chunk.len() as u64);
    }
}

/// `passes` passes over `inputs` back to back, so that every batch but the
/// last holds exactly `batch_size` images even when the set is smaller or
/// not a multiple of it: 5 photos in batches of 10 are batches of 10, not
/// of 5 (which left one of two threads idle for a fifth of each batch).
fn passes<'a>(inputs: &[&'a [u8]], passes: usize) -> Vec<&'a [u8]> {
    inputs
        .iter()
        .copied()
        .cycle()
        .take(inputs.len() * passes)
        .collect()
}

/// User + system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The machine a measurement was taken on: absolute times only mean
/// something beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu: String,
    /// The SIMD flags the kernels care about, those this CPU has.
    pub flags: Vec<String>,
    /// Cores this process may use.
    pub cores: usize,
    /// The instruction set the project's own operators run with: the best
    /// the CPU has, unless `--simd` lowered it.
    pub simd: &'static str,
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {} cores, {} {}; own operators: {}",
            self.cpu,
            self.cores,
            std::env::consts::ARCH,
            self.flags.join(" "),
            self.simd
        )
    }
}

/// Reads the CPU model and flags (Linux; "unknown" elsewhere).
pub fn machine() -> Machine {
    const FLAGS: [&str; 8] = [
        "sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "asimd",
    ];
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu = field("model name")
        .or_else(|| field("CPU part").map(|p| arm_core(&p)))
        .unwrap_or_else(|| "unknown".into());
    let present = field("flags")
        .or_else(|| field("Features"))
        .unwrap_or_default();
    let present: Vec<&str> = present.split_whitespace().collect();
    Machine {
        cpu,
        flags: FLAGS
            .iter()
            .filter(|f| present.contains(f))
            .map(|f| f.to_string())
            .collect(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        simd: crate::ops::Level::detect().simd().name(),
    }
}

/// An Arm core by its `/proc/cpuinfo` part number (which is all an arm64
/// kernel says of the model): Graviton's by name, others by number.
fn arm_core(part: &str) -> String {
    let name = match part {
        "0xd0c" => "Neoverse N1 (Graviton2)",
        "0xd40" => "Neoverse V1 (Graviton3)",
        "0xd4f" => "Neoverse V2 (Graviton4)",
        _ => return format!("CPU part {part}"),
    };
    format!("Arm {name}")
}

/// Peak resident set size of this process (Linux `VmHWM`), or 0 elsewhere.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_full_across_passes_over_a_small_set() {
        let set: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e"];
        let all = passes(&set, 10);
        let sizes: Vec<usize> = all.chunks(10).map(<[_]>::len).collect();
        assert_eq!(sizes, [10; 5]);
        assert_eq!(all[..7], [&b"a"[..], b"b", b"c", b"d", b"e", b"a", b"b"]);
        let sizes: Vec<usize> = passes(&set[..3], 3).chunks(4).map(<[_]>::len).collect();
        assert_eq!(sizes, [4, 4, 1]);
        assert!(passes(&set, 0).is_empty());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&samples);
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&[7.0]).p99, 7.0);
    }

    #[test]
    fn lambda_cost_follows_cpu_time_vcpus_and_requests() {
        // 10 ms of CPU at 1,769 MB (1 vCPU): 0.01 s x 1.7275 GB x price,
        // plus one request per image.
        let one = LambdaPricing::list("x86_64", 1769.0, 1);
        let want = (0.01 * 1769.0 / 1024.0 * PRICE_GB_SECOND_X86_64 + 0.2e-6) * 1e6;
        assert!((one.usd_per_million_images(10.0, 2) - want).abs() < 1e-9);
        // Twice the memory with one thread: twice the compute bill.
        let big = LambdaPricing::list("x86_64", 3538.0, 1);
        let compute = |p: &LambdaPricing, t| p.usd_per_million_images(10.0, t) - 0.2;
        assert!((compute(&big, 1) - 2.0 * compute(&one, 1)).abs() < 1e-9);
        // ... and the same bill when two threads use both vCPUs.
        assert!((compute(&big, 2) - compute(&one, 1)).abs() < 1e-9);
        // arm64 is cheaper; ten images per invocation share one request.
        let arm = LambdaPricing::list("arm64", 1769.0, 10);
        assert!(arm.usd_per_million_images(10.0, 1) < one.usd_per_million_images(10.0, 1) - 0.18);
    }

    #[test]
    fn machine_names_the_cpu_on_linux() {
        let m = machine();
        assert!(m.cores >= 1);
        if cfg!(target_os = "linux") {
            assert_ne!(m.cpu, "unknown");
            assert!(m.to_string().contains(std::env::consts::ARCH));
        }
    }

    #[test]
    fn graviton_cores_are_named_by_their_part_number() {
        assert_eq!(arm_core("0xd0c"), "Arm Neoverse N1 (Graviton2)");
        assert_eq!(arm_core("0xd4f"), "Arm Neoverse V2 (Graviton4)");
        assert_eq!(arm_core("0xd03"), "CPU part 0xd03");
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes() > 1024 * 1024);
        }
    }
}
