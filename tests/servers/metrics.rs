//! `GET /metrics` on `serve` and on the worker's `--metrics-addr`, read by
//! curl and parsed by a real Prometheus parser (`prometheus_client.parser`,
//! `tests/tools/parse_prometheus.py`); the counts must match the requests
//! and jobs sent. The Lambda side (EMF) is in `tests/lambda/lambda_watch.rs`.

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{aws_env, create_queue, curl, curl_text, data, python_tool, send_all, sqs_client};
use onnx_lambda::config::Config;
use serde_json::{json, Value};

/// The parsed families of a `/metrics` body.
fn scrape(url: &str) -> Value {
    let (status, body) = curl_text(&[url]);
    assert_eq!(status, 200, "{body}");
    python_tool("parse_prometheus.py", &body)
}

/// The value of sample `sample` of family `family` whose labels include `labels`.
fn sample(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family} in {families}"));
    samples
        .iter()
        .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][k] == *v))
        .unwrap_or_else(|| panic!("no {sample}{labels:?} in {}", families[family]))[2]
        .as_f64()
        .unwrap()
}

#[test]
fn serve_counts_predictions_errors_and_stage_times() {
    let server = common::InProcessServer::start(Config::default());
    let photo = format!("@{}", data("images/chelsea.png").display());
    let predict = format!("{}/predict", server.url);
    for _ in 0..3 {
        let (s, b) = curl(&["--data-binary", &photo, &predict]);
        assert_eq!(s, 200, "{b}");
    }
    // Two images in one request.
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(data("images/grace_hopper.jpg")).unwrap());
    let body = std::env::temp_dir().join(common::unique_bucket("two-images"));
    std::fs::write(&body, json!({"images": [b64, b64]}).to_string()).unwrap();
    let body = format!("@{}", body.display());
    let (s, b) = curl(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &predict,
    ]);
    assert_eq!(s, 200, "{b}");
    // Errors: not an image (twice), an unknown route, a bad V2 request.
    for _ in 0..2 {
        let (s, b) = curl(&["--data-binary", "not an image", &predict]);
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("unsupported_format")),
            "{b}"
        );
    }
    let (s, _) = curl(&[&format!("{}/nope", server.url)]);
    assert_eq!(s, 404);
    let (s, _) = curl(&[
        "-d",
        "{",
        &format!("{}/v2/models/mobilenetv2-1.0/infer", server.url),
    ]);
    assert_eq!(s, 400);

    let m = scrape(&format!("{}/metrics", server.url));
    let get = |family: &str, name: &str, labels: &[(&str, &str)]| sample(&m, family, name, labels);
    assert_eq!(m["onnx_lambda_predictions"]["type"], "counter");
    assert_eq!(
        get(
            "onnx_lambda_predictions",
            "onnx_lambda_predictions_total",
            &[]
        ),
        5.0
    );
    let errors = "onnx_lambda_errors_total";
    assert_eq!(
        get(
            "onnx_lambda_errors",
            errors,
            &[("code", "unsupported_format")]
        ),
        2.0
    );
    assert_eq!(
        get("onnx_lambda_errors", errors, &[("code", "not_found")]),
        1.0
    );
    assert_eq!(
        get("onnx_lambda_errors", errors, &[("code", "v2_400")]),
        1.0
    );
    assert_eq!(m["onnx_lambda_inference_seconds"]["type"], "histogram");
    for stage in ["decode", "preprocess", "inference"] {
        let family = format!("onnx_lambda_{stage}_seconds");
        let count = get(&family, &format!("{family}_count"), &[]);
        assert_eq!(count, 5.0, "{stage}");
        let inf = get(&family, &format!("{family}_bucket"), &[("le", "+Inf")]);
        assert_eq!(inf, count, "{stage}");
        assert!(get(&family, &format!("{family}_sum"), &[]) > 0.0, "{stage}");
    }
    // Requests that reached the classifier: 3 + 1 + the 2 that failed to decode.
    let per_request = "onnx_lambda_images_per_request";
    assert_eq!(get(per_request, &format!("{per_request}_count"), &[]), 6.0);
    assert_eq!(get(per_request, &format!("{per_request}_sum"), &[]), 7.0);
    let info = &m["onnx_lambda_model_info"]["samples"][0][1];
    assert_eq!(info["name"], "mobilenetv2-1.0", "{info}");
    assert_eq!(
        info["sha256"], "8cdd0539566d8c48e81e8e8f5bdec67b53da39881abb4d56ce1a7e66fd10ea02",
        "the bundled model's digest"
    );
    assert!(
        get(
            "onnx_lambda_model_load_seconds",
            "onnx_lambda_model_load_seconds",
            &[]
        ) > 0.0
    );
    // Scraping is not an error, and only GET and HEAD are allowed.
    let (s, b) = curl(&["-X", "POST", &format!("{}/metrics", server.url)]);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

/// The worker's first stdout line names its metrics address.
fn metrics_url(worker: &mut std::process::Child) -> String {
    let stdout = worker.stdout.as_mut().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let addr = line
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_exposes_job_counts_on_metrics_addr() {
    let sqs = sqs_client().await;
    let jobs = create_queue(&sqs, "metrics-jobs", &[]).await;
    let results = create_queue(&sqs, "metrics-results", &[]).await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
    cmd.args(["worker", "--queue", &jobs, "--results-queue", &results])
        .args(["--wait-seconds", "1", "--metrics-addr", "127.0.0.1:0"])
        .args(["--visibility-timeout", "2"])
        .envs(aws_env())
        // S3 that refuses connections: a job reading it fails transiently.
        .env(
            "AWS_ENDPOINT_URL_S3",
            format!("http://127.0.0.1:{}", common::free_port()),
        )
        .env("S3_INPUT_ALLOWLIST", "s3://metrics-in")
        .env("SDK_TIMEOUT_SECS", "1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut worker = cmd.spawn().unwrap();
    let url = metrics_url(&mut worker);
    let image = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(data("images/rocket.jpg")).unwrap());
    let mut bodies: Vec<String> = (0..4)
        .map(|i| json!({"job_id": format!("ok-{i}"), "image": {"base64": image}}).to_string())
        .collect();
    bodies.push(json!({"job_id": "bad-b64", "image": {"base64": "%%%"}}).to_string());
    bodies.push("not json".to_string());
    bodies.push(
        json!({"job_id": "s3-down", "image": {"s3_uri": "s3://metrics-in/a.jpg"}}).to_string(),
    );
    send_all(&sqs, &jobs, &bodies).await;
    let start = Instant::now();
    let m = loop {
        let m = scrape(&url);
        let done = m["onnx_lambda_sqs_batch_messages"]["samples"]
            .as_array()
            .and_then(|s| {
                s.iter()
                    .find(|s| s[0] == "onnx_lambda_sqs_batch_messages_sum")
            })
            .and_then(|s| s[2].as_f64())
            .unwrap_or(0.0);
        let failures = m["onnx_lambda_sqs_batch_item_failures"]["samples"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(|s| s[2].as_f64())
            .unwrap_or(0.0);
        if done >= 7.0 && failures >= 1.0 {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "jobs not done: {m}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let get = |family: &str, name: &str, labels: &[(&str, &str)]| sample(&m, family, name, labels);
    assert_eq!(
        get(
            "onnx_lambda_predictions",
            "onnx_lambda_predictions_total",
            &[]
        ),
        4.0
    );
    let errors = "onnx_lambda_errors_total";
    assert_eq!(
        get("onnx_lambda_errors", errors, &[("code", "invalid_base64")]),
        1.0
    );
    assert_eq!(
        get("onnx_lambda_errors", errors, &[("code", "invalid_job")]),
        1.0
    );
    let failures = "onnx_lambda_sqs_batch_item_failures_total";
    // The transient failure, delivered again (and failing) each time.
    assert!(get("onnx_lambda_sqs_batch_item_failures", failures, &[]) >= 1.0);
    let (s, b) = curl(&[&url.replace("/metrics", "/health")]);
    assert_eq!(s, 200, "{b}");
    let (s, _) = curl(&[&url.replace("/metrics", "/predict")]);
    assert_eq!(s, 404, "the worker serves only /metrics and /health");
    worker.kill().ok();
    worker.wait().ok();
}
