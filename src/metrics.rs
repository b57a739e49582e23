//! One set of counters, two exports: the Prometheus text format for
//! `serve` and `worker` (`GET /metrics`, scraped), and CloudWatch Embedded
//! Metric Format lines for Lambda (one per invocation on stdout, turned
//! into metrics by CloudWatch Logs with no agent).
//!
//! The counters are cumulative, as Prometheus wants. Lambda wants what one
//! invocation did, so everything recorded is also added to an
//! [`Invocation`] that the Lambda door takes (and resets) after each event:
//! a Lambda container runs one invocation at a time, so that record is
//! exactly the invocation's. Outside Lambda nothing takes it, and it stays
//! bounded ([`MAX_EMF_VALUES`] samples per stage).
//!
//! The names match across the two: the EMF metric `inference`
//! (milliseconds) is the Prometheus histogram
//! `onnx_lambda_inference_seconds`, `predictions` is
//! `onnx_lambda_predictions_total`, and so on (README, Metrics).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// The most values one EMF metric may carry (the EMF specification's limit).
pub const MAX_EMF_VALUES: usize = 100;

/// Seconds buckets for the per-image stage histograms.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for images per request.
const IMAGES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Buckets for messages per SQS batch (Lambda allows up to 10,000).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0, 10000.0];

/// How long each stage of one image took, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageMs {
    /// Decoding the encoded bytes.
    pub decode: f64,
    /// Resize, crop, normalisation.
    pub preprocess: f64,
    /// The model.
    pub inference: f64,
}

/// What one Lambda invocation did: the fields of its EMF line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invocation {
    /// Images classified.
    pub predictions: u64,
    /// Error responses and error results, by code.
    pub errors: BTreeMap<String, u64>,
    /// Images the invocation asked to classify (successes and failures).
    pub images: u64,
    /// Per-image stage times, at most [`MAX_EMF_VALUES`] each.
    pub decode_ms: Vec<f64>,
    /// See `decode_ms`.
    pub preprocess_ms: Vec<f64>,
    /// See `decode_ms`.
    pub inference_ms: Vec<f64>,
    /// Messages in the SQS batch, for an SQS invocation.
    pub sqs_batch_messages: Option<u64>,
    /// Messages reported back for redelivery.
    pub sqs_batch_item_failures: Option<u64>,
    /// The first invocation of this container.
    pub cold_start: bool,
    /// The model load, on the cold start only.
    pub model_load_ms: Option<f64>,
}

/// Where an EMF line goes and how it is labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmfTarget {
    /// CloudWatch namespace (`METRICS_NAMESPACE`).
    pub namespace: String,
    /// Dimension names and values (`METRICS_DIMENSIONS`, `FunctionName`).
    pub dimensions: Vec<(String, String)>,
}

/// The facts of the invocation that are not counters.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationFacts<'a> {
    /// The Lambda request id (a property, not a metric).
    pub request_id: &'a str,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Invocation {
    /// The EMF line: the `_aws` envelope declaring every metric, the
    /// dimension values, the metric values (arrays for per-image times),
    /// and `request_id` as a searchable property.
    pub fn emf(&self, target: &EmfTarget, facts: &InvocationFacts<'_>) -> String {
        let mut root = Map::new();
        let mut declared = Vec::new();
        let mut put = |name: String, unit: &str, value: Value| {
            declared.push(json!({"Name": name, "Unit": unit}));
            root.insert(name, value);
        };
        put("predictions".into(), "Count", json!(self.predictions));
        put(
            "errors".into(),
            "Count",
            json!(self.errors.values().sum::<u64>()),
        );
        for (code, n) in &self.errors {
            put(format!("errors.{code}"), "Count", json!(n));
        }
        put("images".into(), "Count", json!(self.images));
        put(
            "cold_start".into(),
            "Count",
            json!(u8::from(self.cold_start)),
        );
        for (name, values) in [
            ("decode", &self.decode_ms),
            ("preprocess", &self.preprocess_ms),
            ("inference", &self.inference_ms),
        ] {
            if !values.is_empty() {
                put(name.into(), "Milliseconds", json!(values));
            }
        }
        if let Some(ms) = self.model_load_ms {
            put("model_load".into(), "Milliseconds", json!(ms));
        }
        if let Some(n) = self.sqs_batch_messages {
            put("sqs_batch_messages".into(), "Count", json!(n));
        }
        if let Some(n) = self.sqs_batch_item_failures {
            put("sqs_batch_item_failures".into(), "Count", json!(n));
        }
        let names: Vec<&str> = target.dimensions.iter().map(|(k, _)| k.as_str()).collect();
        for (k, v) in &target.dimensions {
            root.insert(k.clone(), json!(v));
        }
        root.insert("request_id".into(), json!(facts.request_id));
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": facts.timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": target.namespace,
                    "Dimensions": [names],
                    "Metrics": declared,
                }],
            }),
        );
        Value::Object(root).to_string()
    }
}

/// A Prometheus histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), the last one above all bounds.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {cumulative}", self.sum);
    }
}

#[derive(Debug)]
struct State {
    predictions: u64,
    errors: BTreeMap<String, u64>,
    cold_starts: u64,
    decode: Histogram,
    preprocess: Histogram,
    inference: Histogram,
    images_per_request: Histogram,
    sqs_batch_messages: Histogram,
    sqs_batch_item_failures: u64,
    model_load_seconds: Option<f64>,
    invocation: Invocation,
}

/// The process's counters, owned by the `App` and shared by every door.
#[derive(Debug)]
pub struct Metrics(Mutex<State>);

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics(Mutex::new(State {
            predictions: 0,
            errors: BTreeMap::new(),
            cold_starts: 0,
            decode: Histogram::new(SECONDS_BUCKETS),
            preprocess: Histogram::new(SECONDS_BUCKETS),
            inference: Histogram::new(SECONDS_BUCKETS),
            images_per_request: Histogram::new(IMAGES_BUCKETS),
            sqs_batch_messages: Histogram::new(BATCH_BUCKETS),
            sqs_batch_item_failures: 0,
            model_load_seconds: None,
            invocation: Invocation::default(),
        }))
    }
}

/// Appends `value` unless `values` is full.
fn push_capped(values: &mut Vec<f64>, value: f64) {
    if values.len() < MAX_EMF_VALUES {
        values.push(value);
    }
}

impl Metrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still
        // counters: keep counting.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One classification call: `images` asked for, `succeeded` of them
    /// classified, with the stage times of those that have them (the
    /// failures are counted where they become error responses, by code).
    pub fn observe_classification(&self, images: usize, succeeded: usize, times: &[StageMs]) {
        let mut s = self.state();
        s.images_per_request.observe(images as f64);
        s.predictions += succeeded as u64;
        s.invocation.images += images as u64;
        s.invocation.predictions += succeeded as u64;
        for t in times {
            s.decode.observe(t.decode / 1000.0);
            s.preprocess.observe(t.preprocess / 1000.0);
            s.inference.observe(t.inference / 1000.0);
            push_capped(&mut s.invocation.decode_ms, t.decode);
            push_capped(&mut s.invocation.preprocess_ms, t.preprocess);
            push_capped(&mut s.invocation.inference_ms, t.inference);
        }
    }

    /// One error response or error result with a stable `code`.
    pub fn error(&self, code: &str) {
        let mut s = self.state();
        *s.errors.entry(code.to_string()).or_default() += 1;
        *s.invocation.errors.entry(code.to_string()).or_default() += 1;
    }

    /// One SQS batch of `messages`, `failures` of them reported for redelivery.
    pub fn observe_batch(&self, messages: usize, failures: usize) {
        let mut s = self.state();
        s.sqs_batch_messages.observe(messages as f64);
        s.sqs_batch_item_failures += failures as u64;
        let inv = &mut s.invocation;
        *inv.sqs_batch_messages.get_or_insert(0) += messages as u64;
        *inv.sqs_batch_item_failures.get_or_insert(0) += failures as u64;
    }

    /// A Lambda cold start (the container's first invocation): the
    /// invocation's record carries it, with the model load time.
    pub fn cold_start(&self) {
        let mut s = self.state();
        s.cold_starts += 1;
        s.invocation.cold_start = true;
        s.invocation.model_load_ms = s.model_load_seconds.map(|secs| secs * 1000.0);
    }

    /// How long the model took to load (fetch, check, parse, optimise).
    pub fn set_model_load_seconds(&self, seconds: f64) {
        self.state().model_load_seconds = Some(seconds);
    }

    /// The model load time, if recorded.
    pub fn model_load_seconds(&self) -> Option<f64> {
        self.state().model_load_seconds
    }

    /// What was recorded since the last call, for one EMF line.
    pub fn take_invocation(&self) -> Invocation {
        std::mem::take(&mut self.state().invocation)
    }

    /// Everything, in the Prometheus text exposition format (0.0.4).
    /// `model` adds `onnx_lambda_model_info{name, version, sha256} 1`.
    pub fn prometheus(&self, model: Option<[(&str, &str); 3]>) -> String {
        let s = self.state();
        let mut out = String::new();
        s.render_counters(&mut out);
        for (h, name, help) in [
            (
                &s.decode,
                "onnx_lambda_decode_seconds",
                "Decoding one image.",
            ),
            (
                &s.preprocess,
                "onnx_lambda_preprocess_seconds",
                "Preprocessing one image.",
            ),
            (
                &s.inference,
                "onnx_lambda_inference_seconds",
                "The model on one image.",
            ),
            (
                &s.images_per_request,
                "onnx_lambda_images_per_request",
                "Images per classification request.",
            ),
            (
                &s.sqs_batch_messages,
                "onnx_lambda_sqs_batch_messages",
                "Messages per SQS batch.",
            ),
        ] {
            h.render(&mut out, name, help);
        }
        if let Some(secs) = s.model_load_seconds {
            let _ = writeln!(
                out,
                "# HELP onnx_lambda_model_load_seconds Loading the model at start-up.\n\
                 # TYPE onnx_lambda_model_load_seconds gauge\nonnx_lambda_model_load_seconds {secs}"
            );
        }
        if let Some(labels) = model {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(
                out,
                "# HELP onnx_lambda_model_info The loaded model.\n# TYPE onnx_lambda_model_info gauge\n\
                 onnx_lambda_model_info{{{}}} 1",
                labels.join(",")
            );
        }
        out
    }
}

impl State {
    /// The counters, errors by code among them.
    fn render_counters(&self, out: &mut String) {
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            out,
            "onnx_lambda_predictions_total",
            "Images classified.",
            self.predictions,
        );
        let _ = writeln!(
            out,
            "# HELP onnx_lambda_errors_total Error responses and error results, by stable code.\n\
             # TYPE onnx_lambda_errors_total counter"
        );
        for (code, n) in &self.errors {
            let _ = writeln!(
                out,
                "onnx_lambda_errors_total{{code=\"{}\"}} {n}",
                escape(code)
            );
        }
        counter(
            out,
            "onnx_lambda_cold_starts_total",
            "Lambda cold starts.",
            self.cold_starts,
        );
        counter(
            out,
            "onnx_lambda_sqs_batch_item_failures_total",
            "SQS messages reported for redelivery.",
            self.sqs_batch_item_failures,
        );
    }
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(ms: f64) -> StageMs {
        StageMs {
            decode: ms,
            preprocess: ms,
            inference: ms,
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 6\nx_count 4\n"), "{out}");
    }

    #[test]
    fn an_invocation_is_taken_once_and_capped() {
        let m = Metrics::default();
        let many = vec![stage(1.0); MAX_EMF_VALUES + 5];
        m.observe_classification(many.len() + 1, many.len(), &many);
        m.error("invalid_image");
        let inv = m.take_invocation();
        assert_eq!(inv.images, MAX_EMF_VALUES as u64 + 6);
        assert_eq!(inv.predictions, MAX_EMF_VALUES as u64 + 5);
        assert_eq!(inv.inference_ms.len(), MAX_EMF_VALUES);
        assert_eq!(inv.errors.get("invalid_image"), Some(&1));
        assert_eq!(m.take_invocation(), Invocation::default());
        // The cumulative counters keep everything.
        let text = m.prometheus(None);
        assert!(
            text.contains("onnx_lambda_predictions_total 105\n"),
            "{text}"
        );
        assert!(
            text.contains("onnx_lambda_inference_seconds_count 105\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.error("a\"b\\c\nd");
        let text = m.prometheus(Some([("name", "m\"1"), ("version", "1"), ("sha256", "x")]));
        assert!(
            text.contains(r#"onnx_lambda_errors_total{code="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"onnx_lambda_model_info{name="m\"1",version="1",sha256="x"} 1"#));
    }

    #[test]
    fn every_declared_emf_metric_has_a_value_and_every_dimension_a_string() {
        let m = Metrics::default();
        m.observe_classification(2, 1, &[stage(3.0)]);
        m.error("invalid_image");
        m.observe_batch(2, 0);
        m.set_model_load_seconds(0.25);
        m.cold_start();
        let target = EmfTarget {
            namespace: "ns".into(),
            dimensions: vec![("FunctionName".into(), "f".into())],
        };
        let facts = InvocationFacts {
            request_id: "r",
            timestamp_ms: 1,
        };
        let line: Value = serde_json::from_str(&m.take_invocation().emf(&target, &facts)).unwrap();
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Dimensions"], json!([["FunctionName"]]));
        assert_eq!(line["FunctionName"], "f");
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            let value = &line[name];
            assert!(value.is_number() || value.is_array(), "{name}: {value}");
        }
        assert_eq!(line["errors.invalid_image"], 1);
        assert_eq!(line["inference"], json!([3.0]));
        assert_eq!(line["cold_start"], 1);
        assert_eq!(line["model_load"], 250.0);
        assert_eq!(line["sqs_batch_item_failures"], 0);
    }
}
