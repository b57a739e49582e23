//! The bad-input corpus (`tests/common/corpus.rs`) through every door: the
//! HTTP router (raw bytes and base64 JSON), an SQS job through the Lambda
//! handler (moto), and the CLI. Each input gets its documented answer from
//! each door, and nothing panics. Then the request-level hostile inputs
//! each door has of its own.

use crate::common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use common::corpus::{self, Expect};
use common::{create_queue, drain, s3_client, sqs_client, sqs_event};
use onnx_lambda::jobs::JobResult;
use onnx_lambda::{App, Config, ModelLoader};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The HTTP status each image error code is documented with.
fn status_of(code: &str) -> u16 {
    match code {
        "input_too_large" | "payload_too_large" => 413,
        _ => 400,
    }
}

/// An app whose results go to a fresh queue. Built per test: SDK clients
/// must not outlive the runtime of the test that made them.
async fn app() -> Arc<App> {
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "corpus-results", &[]).await;
    let config = Config {
        results_queue_url: Some(results),
        s3_input_allowlist: onnx_lambda::parse_allowlist("s3://allowed-bucket/in/").unwrap(),
        ..Config::default()
    };
    let s3 = s3_client().await;
    let app = App::init(config, &ModelLoader::new(None), Some(s3))
        .await
        .unwrap()
        .with_sqs(sqs);
    Arc::new(app)
}

async fn post(app: &Arc<App>, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", content_type)
        .body(Bytes::from(body))
        .unwrap();
    let r = onnx_lambda::http::route(Some(app.clone()), req).await;
    let body = serde_json::from_slice(r.body()).expect("every response is JSON");
    (r.status().as_u16(), body)
}

#[tokio::test]
async fn every_image_case_gets_its_answer_over_http() {
    let app = app().await;
    let mut wrong = Vec::new();
    for case in corpus::images() {
        let raw = post(
            &app,
            "/predict",
            "application/octet-stream",
            case.bytes.clone(),
        )
        .await;
        let json_body = json!({"image": b64(&case.bytes)}).to_string().into_bytes();
        let via_json = post(&app, "/predict", "application/json", json_body).await;
        for (how, (status, body)) in [("raw", raw), ("base64", via_json)] {
            let ok = match case.expect {
                Expect::Ok => {
                    status == 200 && body["predictions"].as_array().is_some_and(|p| p.len() == 5)
                }
                Expect::Code(code) => status == status_of(code) && body["error"]["code"] == code,
            };
            if !ok {
                wrong.push(format!(
                    "{} ({how}): {status} {body}, want {:?}",
                    case.name, case.expect
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn every_image_case_gets_its_answer_as_an_sqs_job() {
    let app = app().await;
    let results = app.config().results_queue_url.clone().unwrap();
    let cases = corpus::images();
    let bodies: Vec<String> = cases
        .iter()
        .map(|c| json!({"job_id": c.name, "image": {"base64": b64(&c.bytes)}}).to_string())
        .collect();
    let out = common::invoke(app.clone(), sqs_event(&bodies, 1), "corpus").await;
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    let got: HashMap<String, JobResult> = drain(&sqs_client().await, &results)
        .await
        .iter()
        .map(|b| serde_json::from_str::<JobResult>(b).unwrap())
        .map(|r| (r.job_id.clone(), r))
        .collect();
    assert_eq!(got.len(), cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let r = &got[case.name];
        let ok = match case.expect {
            Expect::Ok => r.status == "ok" && r.predictions.as_ref().is_some_and(|p| p.len() == 5),
            Expect::Code(code) => {
                r.status == "error" && r.error.as_ref().is_some_and(|e| e.code == code)
            }
        };
        if !ok {
            wrong.push(format!("{}: {r:?}, want {:?}", case.name, case.expect));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_image_case_gets_its_answer_from_the_cli() {
    let dir = std::env::temp_dir().join(format!("onnx-lambda-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = corpus::images();
    let files: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = dir.join(format!("case-{i}.bin"));
            std::fs::write(&f, &c.bytes).unwrap();
            f
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
        .arg("predict")
        .args(&files)
        .env_remove("MODEL_URI")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "some cases fail, so the exit status is 1"
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    let mut wrong = Vec::new();
    for (case, line) in cases.iter().zip(&lines) {
        let ok = match case.expect {
            Expect::Ok => line["predictions"].as_array().is_some_and(|p| p.len() == 5),
            Expect::Code(code) => line["error"]["code"] == code,
        };
        if !ok {
            wrong.push(format!("{}: {line}, want {:?}", case.name, case.expect));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn hostile_http_requests_get_their_documented_errors() {
    let app = app().await;
    let photo = std::fs::read(common::data("images/chelsea.png")).unwrap();
    let nested = "[".repeat(100_000);
    let oversized = vec![0xffu8; app.config().max_request_bytes + 1];
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "wrong content type",
            "text/plain",
            b"hello".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "multipart",
            "multipart/form-data; boundary=x",
            photo.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "invalid json",
            "application/json",
            b"{\"image\": ".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "deeply nested json",
            "application/json",
            nested.into_bytes(),
            400,
            "invalid_json",
        ),
        (
            "json of the wrong shape",
            "application/json",
            b"[1, 2, 3]".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            "application/json",
            br#"{"image": "AAAA", "evil": 1}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "invalid base64",
            "application/json",
            br#"{"image": "not base64!"}"#.to_vec(),
            400,
            "invalid_base64",
        ),
        (
            "oversized payload",
            "application/octet-stream",
            oversized,
            413,
            "payload_too_large",
        ),
        (
            "s3_uri outside the allow-list",
            "application/json",
            br#"{"s3_uri": "s3://other-bucket/in/x.jpg"}"#.to_vec(),
            403,
            "s3_uri_not_allowed",
        ),
        (
            "s3_uri escaping with ..",
            "application/json",
            br#"{"s3_uri": "s3://allowed-bucket/in/../secret/x.jpg"}"#.to_vec(),
            403,
            "s3_uri_not_allowed",
        ),
        (
            "s3_uri of another scheme",
            "application/json",
            br#"{"s3_uri": "https://allowed-bucket/in/x.jpg"}"#.to_vec(),
            400,
            "invalid_s3_uri",
        ),
        (
            "s3_uri with a file scheme",
            "application/json",
            br#"{"s3_uri": "file:///etc/passwd"}"#.to_vec(),
            400,
            "invalid_s3_uri",
        ),
        (
            "top_k out of range",
            "application/json",
            json!({"image": b64(&photo), "top_k": 5000})
                .to_string()
                .into_bytes(),
            400,
            "invalid_top_k",
        ),
        (
            "empty batch",
            "application/json",
            br#"{"images": []}"#.to_vec(),
            400,
            "invalid_batch",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, ct, body, status, code) in cases {
        let (s, b) = post(&app, "/predict", ct, body).await;
        if s != status
            || b["error"]["code"] != code
            || b["error"]["message"].as_str().is_none_or(str::is_empty)
        {
            wrong.push(format!("{name}: {s} {b}, want {status} {code}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn hostile_kserve_requests_get_protocol_errors() {
    let app = app().await;
    let infer = "/v2/models/mobilenetv2-1.0/infer";
    let fp32 = |shape: Value, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]});
    let json_cases: Vec<(&str, Value, u16)> = vec![
        (
            "wrong shape",
            fp32(json!([1, 3, 2, 2]), json!(vec![0.0; 12])),
            422,
        ),
        (
            "batch of zero",
            fp32(json!([0, 3, 224, 224]), json!([])),
            422,
        ),
        (
            "too few values",
            fp32(json!([1, 3, 224, 224]), json!([0.0, 1.0])),
            422,
        ),
        (
            "strings as FP32",
            fp32(json!([1, 3, 224, 224]), json!(["a"])),
            400,
        ),
        (
            "unknown datatype",
            json!({"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1]}]}),
            422,
        ),
        (
            "unknown input",
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}),
            400,
        ),
        (
            "two inputs",
            json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}, {"name": "input", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}),
            400,
        ),
        (
            "BYTES count not the shape",
            json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["AAAA"]}]}),
            422,
        ),
        (
            "BYTES not base64",
            json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}),
            400,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, body, status) in json_cases {
        let (s, b) = post(
            &app,
            infer,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await;
        if s != status || b["error"].as_str().is_none_or(str::is_empty) {
            wrong.push(format!("{name}: {s} {b}, want {status}"));
        }
    }
    // Triton's binary extension with a binary_data_size that lies.
    for (name, declared, actual, status) in [
        ("binary_data_size larger than the body", 602_112, 1_000, 400),
        // Not exactly the shape's bytes: a malformed request, 400.
        (
            "binary_data_size smaller than the tensor",
            1_000,
            602_112,
            400,
        ),
    ] {
        let header =
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                         "parameters": {"binary_data_size": declared}}]})
            .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(vec![0u8; actual]);
        let req = http::Request::builder()
            .method("POST")
            .uri(infer)
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", header.len())
            .body(Bytes::from(body))
            .unwrap();
        let r = onnx_lambda::http::route(Some(app.clone()), req).await;
        if r.status().as_u16() != status {
            wrong.push(format!("{name}: {}, want {status}", r.status()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn hostile_job_messages_get_error_results() {
    let app = app().await;
    let results = app.config().results_queue_url.clone().unwrap();
    let nested = "[".repeat(100_000);
    let cases: Vec<(&str, String, &str)> = vec![
        ("not json", "not json".into(), "invalid_job"),
        ("deeply nested json", nested, "invalid_job"),
        (
            "no image",
            json!({"job_id": "x"}).to_string(),
            "invalid_job",
        ),
        (
            "both sources",
            json!({"image": {"base64": "AAAA", "s3_uri": "s3://b1b/k"}}).to_string(),
            "invalid_job",
        ),
        (
            "unknown field",
            json!({"image": {"base64": "AAAA"}, "evil": true}).to_string(),
            "invalid_job",
        ),
        (
            "top_k 0",
            json!({"image": {"base64": "AAAA"}, "top_k": 0}).to_string(),
            "invalid_job",
        ),
        (
            "invalid base64",
            json!({"image": {"base64": "not base64!"}}).to_string(),
            "invalid_base64",
        ),
        (
            "another scheme",
            json!({"image": {"s3_uri": "https://b1b/k.jpg"}}).to_string(),
            "invalid_s3_uri",
        ),
        (
            "a records message that is not s3",
            json!({"Records": [{"eventSource": "aws:sns"}]}).to_string(),
            "invalid_job",
        ),
    ];
    let bodies: Vec<String> = cases.iter().map(|(_, b, _)| b.clone()).collect();
    let out = common::invoke(app.clone(), sqs_event(&bodies, 1), "hostile").await;
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    let got: HashMap<String, JobResult> = drain(&sqs_client().await, &results)
        .await
        .iter()
        .map(|b| serde_json::from_str::<JobResult>(b).unwrap())
        .map(|r| (r.message_id.clone(), r))
        .collect();
    let mut wrong = Vec::new();
    for (i, (name, _, code)) in cases.iter().enumerate() {
        let r = got.get(&format!("msg-{i}"));
        if r.and_then(|r| r.error.as_ref())
            .is_none_or(|e| e.code != *code)
        {
            wrong.push(format!("{name}: {r:?}, want {code}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
