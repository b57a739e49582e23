//! One configuration for every entry point (CLI, servers, the Lambda
//! handler), read from environment variables and validated once at start-up.
//!
//! Every bad value is reported with the variable's name and what is allowed,
//! so a misconfigured Lambda fails its init phase with a message that says
//! exactly what to fix, instead of failing later on the first request.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::error::ConfigError;
use crate::location::{parse_allowlist, AllowedPrefix, Location};
use crate::metrics::EmfTarget;

/// One environment variable the service reads: the single list that the
/// `--help` text and the README's configuration table are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The variable.
    pub name: &'static str,
    /// The command-line flag that overrides it, if any.
    pub flag: Option<&'static str>,
    /// What it is for, one line.
    pub meaning: &'static str,
}

/// Every variable [`Config::from_lookup`] reads, in the README's order.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    Setting { name: "MODEL_URI", flag: Some("--model"), meaning: "model location: s3://bucket/key[?versionId=V], file:///path or a path" },
    Setting { name: "MODEL_MANIFEST_URI", flag: None, meaning: "manifest location; default: the model's with .json (optional)" },
    Setting { name: "MODEL_SHA256", flag: None, meaning: "expected sha256 of the model bytes" },
    Setting { name: "MODEL_MAX_BYTES", flag: None, meaning: "largest model object accepted" },
    Setting { name: "TOP_K", flag: Some("--top-k"), meaning: "classes per image, 1 to 1000" },
    Setting { name: "MAX_INPUT_BYTES", flag: Some("--max-input-bytes"), meaning: "largest encoded image accepted" },
    Setting { name: "MAX_IMAGE_PIXELS", flag: Some("--max-image-pixels"), meaning: "largest decoded image accepted" },
    Setting { name: "MAX_DECODE_BYTES", flag: None, meaning: "memory all image decodes may hold at once" },
    Setting { name: "MAX_INPUT_BYTES_IN_FLIGHT", flag: None, meaning: "bytes of S3 inputs held at once, by all requests and jobs" },
    Setting { name: "THREADS", flag: Some("--threads"), meaning: "images classified at once" },
    Setting { name: "S3_INPUT_ALLOWLIST", flag: None, meaning: "s3://bucket[/prefix] list requests may read images from" },
    Setting { name: "MAX_REQUEST_BYTES", flag: None, meaning: "largest HTTP request body" },
    Setting { name: "MAX_BATCH_IMAGES", flag: None, meaning: "most images in one request" },
    Setting { name: "RESULTS_QUEUE_URL", flag: Some("--results-queue"), meaning: "where SQS job results go" },
    Setting { name: "SDK_TIMEOUT_SECS", flag: None, meaning: "S3/SQS: time to connect and to first byte, per attempt" },
    Setting { name: "MAX_CONNECTIONS", flag: None, meaning: "serve: open connections at once" },
    Setting { name: "MAX_QUEUED_REQUESTS", flag: None, meaning: "serve: most inference requests waiting for a thread; more get 503" },
    Setting { name: "ADMISSION_WAIT_SECS", flag: None, meaning: "serve: longest expected wait for a thread before 503" },
    Setting { name: "HEADER_TIMEOUT_SECS", flag: None, meaning: "serve: time to send the request headers" },
    Setting { name: "BODY_TIMEOUT_SECS", flag: None, meaning: "serve: time to send the request body" },
    Setting { name: "REQUEST_TIMEOUT_SECS", flag: None, meaning: "serve: time from headers to response" },
    Setting { name: "METRICS_NAMESPACE", flag: None, meaning: "Lambda: CloudWatch namespace of the EMF metrics" },
    Setting { name: "METRICS_DIMENSIONS", flag: None, meaning: "Lambda: EMF dimensions, Name=value,...; default FunctionName=<the function>" },
];

/// How long `serve` waits for each part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `HEADER_TIMEOUT_SECS`: the request line and headers (slow-loris).
    pub header: Duration,
    /// `BODY_TIMEOUT_SECS`: the whole body, once the headers are in.
    pub body: Duration,
    /// `REQUEST_TIMEOUT_SECS`: body, queueing and inference together.
    pub request: Duration,
}

impl Default for Timeouts {
    /// 10 s for headers, 30 s for a body (6 MiB at 200 KiB/s), 60 s in all.
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            request: Duration::from_secs(60),
        }
    }
}

/// Limits on what one untrusted input may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest encoded input accepted, in bytes.
    pub max_bytes: u64,
    /// Largest decoded image accepted, in pixels (width x height). Checked
    /// from the header, before the pixel buffer is allocated.
    pub max_pixels: u64,
    /// Most bytes the decodes of a process hold at once
    /// (`decode::DecodeBudget`), and so the most one image's decode may
    /// need. Estimated from the header, before the pixel buffer exists.
    pub max_decode_bytes: u64,
}

impl Default for InputLimits {
    /// 20 MiB and 50 megapixels: room for a full-resolution phone photo
    /// (48 MP); `MAX_DECODE_BYTES` then bounds what deeper pixels cost.
    fn default() -> Self {
        InputLimits {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_decode_bytes: DEFAULT_MAX_DECODE_BYTES,
        }
    }
}

/// Default `MAX_DECODE_BYTES`: with the model (~60 MB resident), the S3
/// inputs in flight and the request bodies in flight, what keeps a
/// process under 300 MB (`tests/servers/memory.rs`). A 40-megapixel RGB
/// PNG fits; 16-bit RGBA at 7000x7000 does not; JPEGs are decoded at the
/// scale the model needs, so any baseline JPEG within `MAX_IMAGE_PIXELS`.
pub const DEFAULT_MAX_DECODE_BYTES: u64 = 128 << 20;

/// Default `MAX_INPUT_BYTES_IN_FLIGHT`: two inputs of the largest size
/// (`MAX_INPUT_BYTES`), many of a photo's.
pub const DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT: u64 = 48 << 20;

/// File name of the bundled model, looked up by [`bundled_model_path`].
pub const BUNDLED_MODEL_FILE: &str = "mobilenetv2-1.0-fp32.onnx";

/// Where the bundled model lives: `models/` under the working directory (the
/// repo, or `/var/task` on Lambda), next to the executable, or in the source
/// tree this binary was built from, whichever exists first.
pub fn bundled_model_path() -> PathBuf {
    let rel = Path::new("models").join(BUNDLED_MODEL_FILE);
    let mut candidates = vec![rel.clone()];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(&rel));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel));
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or(rel)
}

/// Default cap on model size: MobileNetV2 is 14 MB, ResNet-50 98 MB; this
/// leaves room for larger classifiers while refusing a runaway object.
pub const DEFAULT_MODEL_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Default number of classes returned per image.
pub const DEFAULT_TOP_K: usize = 5;

/// Everything the service needs to start, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `MODEL_URI`: where the ONNX model comes from. Default: the bundled model.
    pub model: Location,
    /// `MODEL_MANIFEST_URI`: an explicit manifest. Default: the model's
    /// location with a `.json` extension, optional (defaults apply if absent).
    pub manifest: Option<Location>,
    /// `MODEL_SHA256`: expected lower-case hex digest of the model bytes.
    pub model_sha256: Option<String>,
    /// `MODEL_MAX_BYTES`: refuse larger model objects.
    pub model_max_bytes: u64,
    /// `TOP_K`: default classes per image (requests may ask for others).
    pub top_k: usize,
    /// `MAX_INPUT_BYTES` and `MAX_IMAGE_PIXELS`.
    pub limits: InputLimits,
    /// `THREADS`: images classified at once; default one per core.
    pub threads: Option<usize>,
    /// `S3_INPUT_ALLOWLIST`: where requests may reference images by
    /// `s3://` (comma-separated `s3://bucket[/prefix]`); empty by default.
    pub s3_input_allowlist: Vec<AllowedPrefix>,
    /// `MAX_INPUT_BYTES_IN_FLIGHT`: bytes of S3 inputs read and not yet
    /// classified, all requests and jobs together.
    pub max_input_bytes_in_flight: u64,
    /// `MAX_REQUEST_BYTES`: largest HTTP request body.
    pub max_request_bytes: usize,
    /// `MAX_BATCH_IMAGES`: most images in one `{"images": [...]}` request.
    pub max_batch_images: usize,
    /// `RESULTS_QUEUE_URL`: where SQS job results go.
    pub results_queue_url: Option<String>,
    /// `MAX_CONNECTIONS`: connections `serve` holds open at once; more wait
    /// in the listen backlog.
    pub max_connections: usize,
    /// `MAX_QUEUED_REQUESTS`: inference requests `serve` admits beyond one
    /// per thread at most; more are refused with 503. Default: 64 per
    /// thread, so the expected wait decides first.
    pub max_queued_requests: Option<usize>,
    /// `ADMISSION_WAIT_SECS`: `serve` admits an inference request while the
    /// wait it can expect for a thread (requests ahead x their measured
    /// service time / threads) is at most this; past it, 503 `overloaded`
    /// with `Retry-After` from the estimate.
    pub admission_wait: Duration,
    /// `HEADER_TIMEOUT_SECS`, `BODY_TIMEOUT_SECS`, `REQUEST_TIMEOUT_SECS`.
    pub timeouts: Timeouts,
    /// `SDK_TIMEOUT_SECS`: each S3/SQS attempt's time to connect and to the
    /// first byte of the answer (and an S3 download's longest pause).
    pub sdk_timeout: Duration,
    /// `METRICS_NAMESPACE` and `METRICS_DIMENSIONS`: how the Lambda
    /// handler's EMF lines are filed in CloudWatch.
    pub emf: EmfTarget,
}

/// Default `SDK_TIMEOUT_SECS`: generous for S3 and SQS, which answer in
/// milliseconds, while a dead endpoint is known within a minute of retries.
pub const DEFAULT_SDK_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `ADMISSION_WAIT_SECS`: a client waits at most about this long
/// for a thread before its inference starts; longer, and a retry elsewhere
/// (or later) serves it sooner.
pub const DEFAULT_ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// Default `MAX_CONNECTIONS`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default `MAX_REQUEST_BYTES`: the synchronous Lambda payload limit, so the
/// local server behaves like the deployed function.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;

/// Default `METRICS_NAMESPACE`.
pub const DEFAULT_METRICS_NAMESPACE: &str = "onnx-lambda";

/// Default `MAX_BATCH_IMAGES`.
pub const DEFAULT_MAX_BATCH_IMAGES: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Config {
            model: Location::File(bundled_model_path()),
            manifest: None,
            model_sha256: None,
            model_max_bytes: DEFAULT_MODEL_MAX_BYTES,
            top_k: DEFAULT_TOP_K,
            limits: InputLimits::default(),
            threads: None,
            s3_input_allowlist: Vec::new(),
            max_input_bytes_in_flight: DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_batch_images: DEFAULT_MAX_BATCH_IMAGES,
            results_queue_url: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_queued_requests: None,
            admission_wait: DEFAULT_ADMISSION_WAIT,
            timeouts: Timeouts::default(),
            sdk_timeout: DEFAULT_SDK_TIMEOUT,
            emf: EmfTarget {
                namespace: DEFAULT_METRICS_NAMESPACE.into(),
                dimensions: Vec::new(),
            },
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads configuration through `lookup` (a variable name to its value),
    /// so tests can supply values without touching the process environment.
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |var: &str| {
            debug_assert!(
                SETTINGS.iter().any(|s| s.name == var),
                "{var} is missing from SETTINGS"
            );
            lookup(var).filter(|v| !v.trim().is_empty())
        };
        let mut c = Config::default();
        if let Some(v) = get("MODEL_URI") {
            c.model = Location::parse("MODEL_URI", &v)?;
        }
        if let Some(v) = get("MODEL_MANIFEST_URI") {
            c.manifest = Some(Location::parse("MODEL_MANIFEST_URI", &v)?);
        }
        if let Some(v) = get("MODEL_SHA256") {
            c.model_sha256 = Some(parse_sha256("MODEL_SHA256", &v)?);
        }
        if let Some(v) = get("MODEL_MAX_BYTES") {
            c.model_max_bytes = parse_positive("MODEL_MAX_BYTES", &v, "a number of bytes")?;
        }
        if let Some(v) = get("TOP_K") {
            c.top_k = parse_top_k("TOP_K", &v)?;
        }
        c.read_input_limits(get)?;
        if let Some(v) = get("THREADS") {
            let n = parse_positive("THREADS", &v, "a number of threads")?;
            c.threads = Some(usize::try_from(n).unwrap_or(usize::MAX).min(256));
        }
        if let Some(v) = get("S3_INPUT_ALLOWLIST") {
            c.s3_input_allowlist = parse_allowlist(&v)?;
        }
        if let Some(v) = get("MAX_REQUEST_BYTES") {
            c.max_request_bytes =
                parse_positive("MAX_REQUEST_BYTES", &v, "a number of bytes")? as usize;
        }
        if let Some(v) = get("RESULTS_QUEUE_URL") {
            c.results_queue_url = Some(parse_queue_url("RESULTS_QUEUE_URL", &v)?);
        }
        if let Some(v) = get("SDK_TIMEOUT_SECS") {
            c.sdk_timeout = parse_seconds("SDK_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("MAX_CONNECTIONS") {
            let n = parse_positive("MAX_CONNECTIONS", &v, "a number of connections")?;
            c.max_connections = usize::try_from(n).unwrap_or(usize::MAX).min(65_536);
        }
        if let Some(v) = get("MAX_QUEUED_REQUESTS") {
            c.max_queued_requests = Some(parse_count("MAX_QUEUED_REQUESTS", &v)?);
        }
        if let Some(v) = get("ADMISSION_WAIT_SECS") {
            c.admission_wait = parse_seconds("ADMISSION_WAIT_SECS", &v)?;
        }
        if let Some(v) = get("HEADER_TIMEOUT_SECS") {
            c.timeouts.header = parse_seconds("HEADER_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("BODY_TIMEOUT_SECS") {
            c.timeouts.body = parse_seconds("BODY_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("REQUEST_TIMEOUT_SECS") {
            c.timeouts.request = parse_seconds("REQUEST_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("MAX_BATCH_IMAGES") {
            let n = parse_positive("MAX_BATCH_IMAGES", &v, "a number of images")?;
            c.max_batch_images = usize::try_from(n).unwrap_or(usize::MAX).min(1024);
        }
        c.emf = emf_target(get("METRICS_NAMESPACE"), get("METRICS_DIMENSIONS"), || {
            lookup("AWS_LAMBDA_FUNCTION_NAME")
        })?;
        Ok(c)
    }

    /// The limits on what inputs may cost, from `get`.
    fn read_input_limits(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let bytes = |var| {
            get(var)
                .map(|v| parse_positive(var, &v, "a number of bytes"))
                .transpose()
        };
        if let Some(n) = bytes("MAX_INPUT_BYTES")? {
            self.limits.max_bytes = n;
        }
        if let Some(v) = get("MAX_IMAGE_PIXELS") {
            self.limits.max_pixels = parse_positive("MAX_IMAGE_PIXELS", &v, "a number of pixels")?;
        }
        if let Some(n) = bytes("MAX_DECODE_BYTES")? {
            self.limits.max_decode_bytes = n;
        }
        if let Some(n) = bytes("MAX_INPUT_BYTES_IN_FLIGHT")? {
            self.max_input_bytes_in_flight = n;
        }
        Ok(())
    }

    /// Images classified at once: `THREADS`, or one per core.
    pub fn worker_threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// Inference requests `serve` admits: one per thread plus the queue.
    pub fn admitted_requests(&self) -> usize {
        let threads = self.worker_threads();
        threads + self.max_queued_requests.unwrap_or(64 * threads)
    }

    /// Whether the model or its manifest is read from S3.
    pub fn model_on_s3(&self) -> bool {
        let on_s3 = |l: &Location| matches!(l, Location::S3 { .. });
        on_s3(&self.model) || self.manifest.as_ref().is_some_and(on_s3)
    }

    /// Whether the service reads from S3 or writes to SQS, so that a door
    /// must have a region and credentials to start.
    pub fn uses_aws(&self) -> bool {
        self.model_on_s3()
            || !self.s3_input_allowlist.is_empty()
            || self.results_queue_url.is_some()
    }

    /// The manifest to fetch and whether it must exist: an explicit
    /// `MODEL_MANIFEST_URI` must; the implicit `.json` sibling may be absent.
    pub fn manifest_location(&self) -> (Location, bool) {
        match &self.manifest {
            Some(m) => (m.clone(), true),
            None => (self.model.with_extension("json"), false),
        }
    }
}

/// A positive whole number, with an error naming `var`.
pub fn parse_positive(var: &'static str, value: &str, what: &str) -> Result<u64, ConfigError> {
    match value.trim().replace('_', "").parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError {
            var,
            value: value.to_string(),
            expected: format!("expected {what}: a whole number greater than 0"),
        }),
    }
}

/// A whole number, 0 allowed.
fn parse_count(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    value
        .trim()
        .replace('_', "")
        .parse::<usize>()
        .map_err(|_| ConfigError {
            var,
            value: value.to_string(),
            expected: "expected a whole number (0 or more)".into(),
        })
}

/// Whole seconds, 1 to one day.
fn parse_seconds(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    match parse_positive(var, value, "a number of seconds")? {
        n if n <= 86_400 => Ok(Duration::from_secs(n)),
        _ => Err(ConfigError {
            var,
            value: value.to_string(),
            expected: "expected a number of seconds from 1 to 86400".into(),
        }),
    }
}

/// `TOP_K`: 1 to 1000.
pub fn parse_top_k(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(ConfigError {
            var,
            value: value.to_string(),
            expected: "expected a whole number from 1 to 1000".into(),
        }),
    }
}

/// A sha256 digest: 64 hex digits (case-insensitive), returned lower-case.
pub fn parse_sha256(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim().to_ascii_lowercase();
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v)
    } else {
        Err(ConfigError {
            var,
            value: value.to_string(),
            expected: "expected a sha256 digest: 64 hexadecimal digits (sha256sum model.onnx)"
                .into(),
        })
    }
}

/// An SQS queue URL, `http(s)://HOST/ACCOUNT/NAME`: a queue name or ARN
/// is refused with the way to find the URL, before any call is made.
pub fn parse_queue_url(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let segments: Option<Vec<&str>> = rest.map(|r| r.trim_end_matches('/').split('/').collect());
    let ok = segments.is_some_and(|s| s.len() == 3 && s.iter().all(|p| !p.is_empty()));
    if ok {
        return Ok(value.to_string());
    }
    Err(ConfigError {
        var,
        value: value.to_string(),
        expected:
            "expected a queue URL, https://sqs.REGION.amazonaws.com/ACCOUNT/NAME, not a name \
                   or an ARN: `aws sqs get-queue-url --queue-name NAME` prints it, and the stack's \
                   JobsQueueUrl and ResultsQueueUrl outputs are the two queues"
                .into(),
    })
}

/// `METRICS_NAMESPACE` and `METRICS_DIMENSIONS` (`Name=value,...`), checked
/// against CloudWatch's limits so a bad value fails the init phase instead of
/// every metric silently. Without `METRICS_DIMENSIONS`, the function's name
/// is the one dimension (none outside Lambda).
fn emf_target(
    namespace: Option<String>,
    dimensions: Option<String>,
    function_name: impl Fn() -> Option<String>,
) -> Result<EmfTarget, ConfigError> {
    let namespace = namespace.map_or_else(
        || DEFAULT_METRICS_NAMESPACE.to_string(),
        |v| v.trim().to_string(),
    );
    let ns_ok = namespace.len() <= 255
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_/#:".contains(c));
    if !ns_ok || namespace.starts_with(':') {
        return Err(ConfigError {
            var: "METRICS_NAMESPACE",
            value: namespace,
            expected: "expected up to 255 characters of letters, digits and . - _ / # :".into(),
        });
    }
    let Some(spec) = dimensions else {
        let dimensions = function_name()
            .filter(|n| !n.is_empty())
            .map(|n| vec![("FunctionName".to_string(), n)])
            .unwrap_or_default();
        return Ok(EmfTarget {
            namespace,
            dimensions,
        });
    };
    let bad = |why: &str| ConfigError {
        var: "METRICS_DIMENSIONS",
        value: spec.clone(),
        expected: format!("expected Name=value pairs separated by commas (at most 30): {why}"),
    };
    let mut pairs = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| bad(&format!("{item:?} has no '='")))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() || k.len() > 255 || v.len() > 1024 || k.starts_with(':') {
            return Err(bad(&format!("{item:?} needs a name (1-255 characters, not starting with ':') and a value (1-1024)")));
        }
        if pairs.iter().any(|(seen, _): &(String, String)| seen == k) {
            return Err(bad(&format!("{k} is given twice")));
        }
        pairs.push((k.to_string(), v.to_string()));
    }
    if pairs.len() > 30 {
        return Err(bad("more than 30 dimensions"));
    }
    Ok(EmfTarget {
        namespace,
        dimensions: pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_configured_means_the_documented_defaults() {
        let c = config(&[]).unwrap();
        // The values the README's configuration table promises.
        assert_eq!(c.max_request_bytes, 6 * 1024 * 1024);
        assert_eq!(c.max_batch_images, 16);
        assert_eq!(c.limits.max_bytes, 20 * 1024 * 1024);
        assert_eq!(c.limits.max_pixels, 50_000_000);
        assert_eq!(c.model_max_bytes, 512 * 1024 * 1024);
        assert_eq!(c.top_k, 5);
        assert_eq!(c.sdk_timeout, Duration::from_secs(10));
        assert_eq!(
            (c.threads, c.model_sha256.as_deref(), c.manifest.as_ref()),
            (None, None, None)
        );
        assert!(c.s3_input_allowlist.is_empty() && c.results_queue_url.is_none());
        assert!(
            matches!(&c.model, Location::File(p) if p.ends_with("models/mobilenetv2-1.0-fp32.onnx"))
        );
        let (manifest, required) = c.manifest_location();
        assert!(!required);
        assert!(
            matches!(manifest, Location::File(p) if p.ends_with("models/mobilenetv2-1.0-fp32.json"))
        );
    }

    #[test]
    fn every_variable_is_read() {
        let sha = "8CDD0539566D8C48E81E8E8F5BDEC67B53DA39881ABB4D56CE1A7E66FD10EA02";
        let c = config(&[
            ("MODEL_URI", "s3://models/zoo/resnet50.onnx?versionId=abc"),
            (
                "MODEL_MANIFEST_URI",
                "s3://models/zoo/resnet50-manifest.json",
            ),
            ("MODEL_SHA256", sha),
            ("MODEL_MAX_BYTES", "1000000"),
            ("TOP_K", "3"),
            ("MAX_INPUT_BYTES", "2_000_000"),
            ("MAX_IMAGE_PIXELS", "1000000"),
            ("MAX_DECODE_BYTES", "67108864"),
            ("MAX_INPUT_BYTES_IN_FLIGHT", "1000"),
            ("THREADS", "4"),
            ("S3_INPUT_ALLOWLIST", "s3://in-bucket/a/, s3://other-bucket"),
            ("MAX_REQUEST_BYTES", "300000"),
            ("MAX_BATCH_IMAGES", "7"),
            (
                "RESULTS_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/results",
            ),
            ("SDK_TIMEOUT_SECS", "3"),
        ])
        .unwrap();
        assert_eq!(
            c.s3_input_allowlist
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["s3://in-bucket/a/", "s3://other-bucket/"]
        );
        assert_eq!((c.max_request_bytes, c.max_batch_images), (300_000, 7));
        assert_eq!(c.max_input_bytes_in_flight, 1000);
        assert_eq!(
            c.results_queue_url.as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com/1/results")
        );
        assert_eq!(c.sdk_timeout, Duration::from_secs(3));
        assert_eq!(
            c.model,
            Location::S3 {
                bucket: "models".into(),
                key: "zoo/resnet50.onnx".into(),
                version_id: Some("abc".into())
            }
        );
        assert_eq!(
            c.model_sha256.as_deref(),
            Some(sha.to_ascii_lowercase().as_str())
        );
        assert_eq!(
            (c.model_max_bytes, c.top_k, c.threads),
            (1_000_000, 3, Some(4))
        );
        assert_eq!(
            c.limits,
            InputLimits {
                max_bytes: 2_000_000,
                max_pixels: 1_000_000,
                max_decode_bytes: 64 << 20,
            }
        );
        assert!(c.manifest_location().1);
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (var, value) in [
            ("MODEL_URI", "s3://"),
            ("MODEL_URI", "s3://bucket-only"),
            ("MODEL_URI", "https://example.com/model.onnx"),
            ("MODEL_MANIFEST_URI", "s3:///key.json"),
            ("MODEL_SHA256", "abc"),
            ("MODEL_MAX_BYTES", "-1"),
            ("TOP_K", "0"),
            ("TOP_K", "five"),
            ("MAX_INPUT_BYTES", "20MB"),
            ("MAX_IMAGE_PIXELS", "0"),
            ("THREADS", "0"),
            ("S3_INPUT_ALLOWLIST", "bucket/prefix"),
            ("MAX_REQUEST_BYTES", "big"),
            ("MAX_BATCH_IMAGES", "0"),
            ("RESULTS_QUEUE_URL", "my-queue"),
            ("MAX_CONNECTIONS", "0"),
            ("MAX_QUEUED_REQUESTS", "-1"),
            ("HEADER_TIMEOUT_SECS", "0"),
            ("BODY_TIMEOUT_SECS", "1.5"),
            ("REQUEST_TIMEOUT_SECS", "100000"),
        ] {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            let msg = err.to_string();
            assert!(msg.contains(var) && msg.contains("expected"), "{msg}");
        }
    }

    #[test]
    fn every_setting_is_read_and_nothing_else() {
        let asked = std::cell::RefCell::new(Vec::new());
        Config::from_lookup(|var| {
            asked.borrow_mut().push(var.to_string());
            None
        })
        .unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        let mut listed: Vec<String> = SETTINGS.iter().map(|s| s.name.to_string()).collect();
        // Set by Lambda itself, read for the default EMF dimension.
        listed.push("AWS_LAMBDA_FUNCTION_NAME".into());
        listed.sort();
        assert_eq!(asked, listed);
    }

    #[test]
    fn serve_limits_are_read() {
        let c = config(&[
            ("MAX_CONNECTIONS", "8"),
            ("MAX_QUEUED_REQUESTS", "0"),
            ("HEADER_TIMEOUT_SECS", "2"),
            ("BODY_TIMEOUT_SECS", "3"),
            ("REQUEST_TIMEOUT_SECS", "4"),
        ])
        .unwrap();
        assert_eq!((c.max_connections, c.max_queued_requests), (8, Some(0)));
        assert_eq!(
            c.timeouts,
            Timeouts {
                header: Duration::from_secs(2),
                body: Duration::from_secs(3),
                request: Duration::from_secs(4)
            }
        );
        let d = Config::default();
        assert_eq!((d.max_connections, d.max_queued_requests), (256, None));
        assert_eq!(d.timeouts.header, Duration::from_secs(10));
    }

    #[test]
    fn emf_dimensions_default_to_the_function_and_are_checked() {
        let c = Config::from_lookup(|v| (v == "AWS_LAMBDA_FUNCTION_NAME").then(|| "fn1".into()))
            .unwrap();
        assert_eq!(c.emf.namespace, DEFAULT_METRICS_NAMESPACE);
        assert_eq!(
            c.emf.dimensions,
            vec![("FunctionName".to_string(), "fn1".to_string())]
        );
        assert!(config(&[]).unwrap().emf.dimensions.is_empty());
        let c = config(&[
            ("METRICS_NAMESPACE", "Team/ml"),
            ("METRICS_DIMENSIONS", "Stage=prod, Model=mnv2"),
        ])
        .unwrap();
        assert_eq!(c.emf.namespace, "Team/ml");
        assert_eq!(
            c.emf.dimensions[1],
            ("Model".to_string(), "mnv2".to_string())
        );
        for (var, value) in [
            ("METRICS_DIMENSIONS", "Stage"),
            ("METRICS_DIMENSIONS", "Stage=a,Stage=b"),
            ("METRICS_DIMENSIONS", ":x=1"),
            ("METRICS_NAMESPACE", "has space"),
        ] {
            let e = config(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{value}");
        }
    }

    #[test]
    fn queue_urls_are_checked_before_any_call() {
        for good in [
            "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
            "http://127.0.0.1:5000/123456789012/jobs/",
        ] {
            assert_eq!(parse_queue_url("--queue", good).unwrap(), good);
        }
        for bad in [
            "jobs",
            "arn:aws:sqs:us-east-1:123456789012:jobs",
            "https://sqs.amazonaws.com/jobs",
            "https:///1/jobs",
        ] {
            let e = parse_queue_url("--queue", bad).unwrap_err();
            assert!(e.to_string().contains("get-queue-url"), "{bad}: {e}");
        }
    }
}
