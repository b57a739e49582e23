//! The HTTP door: the Lambda handler driven by the real event JSON in
//! `events/`, every error code through the router, and the local server
//! driven by real clients (curl, the Triton/KServe Python client).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use common::{aws_env, curl, data, event, put_objects, s3_client, unique_bucket};
use onnx_lambda::config::Config;
use onnx_lambda::App;
use onnx_lambda::ModelLoader;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

const CAT: [u64; 3] = [281, 282, 285];

async fn app_with(config: Config) -> Arc<App> {
    let s3 = s3_client().await;
    let loader = ModelLoader::new(Some(s3.clone()));
    Arc::new(App::init(config, &loader, Some(s3)).await.unwrap())
}

/// One app for the in-process tests, allowing `s3://<bucket>/allowed/`.
async fn app() -> (Arc<App>, String) {
    static APP: OnceCell<(Arc<App>, String)> = OnceCell::const_new();
    APP.get_or_init(|| async {
        let bucket = unique_bucket("http-inputs");
        let s3 = s3_client().await;
        put_objects(
            &s3,
            &bucket,
            &[
                (
                    "allowed/cat.png",
                    std::fs::read(data("images/chelsea.png")).unwrap(),
                ),
                (
                    "secret/cat.png",
                    std::fs::read(data("images/chelsea.png")).unwrap(),
                ),
            ],
        )
        .await;
        let config = Config {
            s3_input_allowlist: onnx_lambda::parse_allowlist(&format!("s3://{bucket}/allowed/"))
                .unwrap(),
            max_request_bytes: 4_000_000,
            max_batch_images: 4,
            ..Config::default()
        };
        (app_with(config).await, bucket)
    })
    .await
    .clone()
}

#[tokio::test]
async fn every_http_event_source_gets_a_prediction_in_its_own_response_shape() {
    let (app, _) = app().await;
    for name in [
        "apigw-rest-predict.json",
        "apigw-http-predict.json",
        "function-url-predict.json",
        "alb-predict.json",
    ] {
        let response = common::invoke(app.clone(), event(name), name).await;
        assert_eq!(response["statusCode"], 200, "{name}: {response}");
        assert_eq!(response["isBase64Encoded"], false, "{name}");
        let content_type = match name {
            "apigw-rest-predict.json" => {
                assert!(
                    response["headers"].as_object().is_none_or(|h| h.is_empty()),
                    "{name}: REST sends each header once"
                );
                response["multiValueHeaders"]["content-type"][0].clone()
            }
            "alb-predict.json" => {
                assert_eq!(response["statusDescription"], "200 OK");
                assert_eq!(
                    response["multiValueHeaders"]["content-type"][0],
                    "application/json"
                );
                response["headers"]["content-type"].clone()
            }
            _ => response["headers"]["content-type"].clone(),
        };
        assert_eq!(content_type, "application/json", "{name}: {response}");
        let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        let predictions = body["predictions"].as_array().unwrap();
        assert_eq!(
            predictions.len(),
            3,
            "{name}: top_k=3 from the query string"
        );
        assert!(
            CAT.contains(&predictions[0]["index"].as_u64().unwrap()),
            "{name}: {body}"
        );
        assert_eq!(body["model"]["name"], "mobilenetv2-1.0");
        assert!(body["timing_ms"]["total"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test]
async fn http_errors_reach_lambda_clients_as_json_with_status() {
    let (app, _) = app().await;
    let mut e = event("apigw-http-predict.json");
    e["rawPath"] = json!("/nope");
    e["requestContext"]["http"]["path"] = json!("/nope");
    let response = common::invoke(app.clone(), e, "404").await;
    assert_eq!(response["statusCode"], 404);
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let mut e = event("alb-predict.json");
    e["body"] = json!(base64::engine::general_purpose::STANDARD.encode(b"not an image"));
    let response = common::invoke(app.clone(), e, "400").await;
    assert_eq!(response["statusCode"], 400);
    assert_eq!(response["statusDescription"], "400 Bad Request");
}

fn request(
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> http::Request<Bytes> {
    let mut b = http::Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

async fn call(app: Option<Arc<App>>, req: http::Request<Bytes>) -> (u16, Value) {
    let r = onnx_lambda::http::route(app, req).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    (
        r.status().as_u16(),
        serde_json::from_slice(r.body()).expect("every response is JSON"),
    )
}

/// `POST path` with a raw body of type `content_type`.
fn post(path: &str, content_type: &str, body: impl Into<Bytes>) -> http::Request<Bytes> {
    request("POST", path, Some(content_type), body)
}

/// `POST path` with a JSON body.
fn json_post(path: &str, body: &Value) -> http::Request<Bytes> {
    request("POST", path, Some("application/json"), body.to_string())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn predict_accepts_bytes_base64_s3_and_batches() {
    let (app, bucket) = app().await;
    let jpeg = std::fs::read(data("images/grace_hopper.jpg")).unwrap();
    let (s, b) = call(
        Some(app.clone()),
        post("/predict?top_k=2", "image/jpeg", jpeg.clone()),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["predictions"].as_array().unwrap().len(), 2);
    assert!([652, 457].contains(&b["predictions"][0]["index"].as_u64().unwrap()));
    assert_eq!(b["model"]["sha256"], app.model_info().sha256);

    let json_body = json!({"image": b64(&jpeg), "top_k": 4});
    let (s, b2) = call(Some(app.clone()), json_post("/predict", &json_body)).await;
    assert_eq!(s, 200, "{b2}");
    assert_eq!(b2["predictions"].as_array().unwrap().len(), 4);
    assert_eq!(b2["predictions"][0], b["predictions"][0]);

    let s3_body = json!({"s3_uri": format!("s3://{bucket}/allowed/cat.png")});
    let (s, b) = call(Some(app.clone()), json_post("/predict", &s3_body)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["predictions"][0]["index"], 285);

    let batch = json!({"images": [b64(&jpeg), {"s3_uri": format!("s3://{bucket}/allowed/cat.png")},
                                  {"image": b64(b"junk")}, {"s3_uri": format!("s3://{bucket}/secret/cat.png")}]});
    let (s, b) = call(Some(app.clone()), json_post("/predict", &batch)).await;
    assert_eq!(s, 200, "{b}");
    let results = b["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert!([652, 457].contains(&results[0]["predictions"][0]["index"].as_u64().unwrap()));
    assert_eq!(results[1]["predictions"][0]["index"], 285);
    assert_eq!(results[2]["error"]["code"], "unsupported_format");
    assert_eq!(results[3]["error"]["code"], "s3_uri_not_allowed");
}

#[tokio::test]
async fn every_error_code_has_its_status() {
    let (app, bucket) = app().await;
    let a = || Some(app.clone());
    let png = std::fs::read(data("images/chelsea.png")).unwrap();
    let cases: Vec<(http::Request<Bytes>, u16, &str)> = vec![
        (
            post("/predict", "application/json", "{\"image\": "),
            400,
            "invalid_json",
        ),
        (
            post("/predict", "application/json", "{\"imagez\": \"x\"}"),
            400,
            "invalid_json",
        ),
        (
            post("/predict", "application/json", "{\"image\": \"***\"}"),
            400,
            "invalid_base64",
        ),
        (post("/predict", "image/png", ""), 400, "empty_input"),
        (
            post("/predict", "image/png", png[..png.len() / 2].to_vec()),
            400,
            "corrupt_image",
        ),
        (
            post("/predict", "image/png", "GIF? no"),
            400,
            "unsupported_format",
        ),
        (
            post("/predict?top_k=0", "image/png", png.clone()),
            400,
            "invalid_top_k",
        ),
        (
            json_post("/predict", &json!({"s3_uri": "s3://x"})),
            400,
            "invalid_s3_uri",
        ),
        (
            json_post(
                "/predict",
                &json!({"s3_uri": format!("s3://{bucket}/allowed/nope.png")}),
            ),
            400,
            "s3_object_not_found",
        ),
        (
            json_post(
                "/predict",
                &json!({"s3_uri": format!("s3://{bucket}/secret/cat.png")}),
            ),
            403,
            "s3_uri_not_allowed",
        ),
        (
            json_post("/predict", &json!({"images": []})),
            400,
            "invalid_batch",
        ),
        (
            json_post("/predict", &json!({"images": vec!["a"; 5]})),
            400,
            "invalid_batch",
        ),
        (
            post("/predict", "image/png", vec![0u8; 4_000_001]),
            413,
            "payload_too_large",
        ),
        (
            post("/predict", "text/plain", "hello"),
            415,
            "unsupported_media_type",
        ),
        (
            post("/predict", "multipart/form-data; boundary=x", "--x"),
            415,
            "unsupported_media_type",
        ),
        (request("GET", "/nowhere", None, ""), 404, "not_found"),
        (
            request("GET", "/predict", None, ""),
            405,
            "method_not_allowed",
        ),
        (
            request("DELETE", "/model", None, ""),
            405,
            "method_not_allowed",
        ),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, b) = call(a(), req).await;
        assert_eq!(
            (s, b["error"]["code"].as_str().unwrap_or("-")),
            (status, code),
            "{what}: {b}"
        );
        assert!(!b["error"]["message"].as_str().unwrap().is_empty());
    }
    // Too many pixels is the input's fault: 400 with its own code.
    let small_limits = Config {
        limits: onnx_lambda::InputLimits {
            max_pixels: 100,
            ..Default::default()
        },
        ..Config::default()
    };
    let strict = app_with(small_limits).await;
    let (s, b) = call(Some(strict), post("/predict", "image/png", png)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (400, "image_too_large")
    );
    // Not ready yet: 503 everywhere but the liveness routes.
    let (s, b) = call(None, post("/predict", "image/png", "x")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (503, "not_ready")
    );
    assert_eq!(call(None, request("GET", "/ready", None, "")).await.0, 503);
    assert_eq!(call(None, request("GET", "/health", None, "")).await.0, 200);
    assert_eq!(
        call(None, request("GET", "/v2/health/live", None, ""))
            .await
            .0,
        200
    );
    assert_eq!(
        call(None, request("GET", "/v2/health/ready", None, ""))
            .await
            .0,
        503
    );
}

#[tokio::test]
async fn an_unreachable_s3_is_a_502_not_a_hang_or_a_500() {
    // An S3 client pointing at a closed port, one attempt: the network error path.
    let dead = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{}", common::free_port()))
            .force_path_style(true)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "t", "t", None, None, "t",
            ))
            .http_client(onnx_lambda::aws::http_client())
            .build(),
    );
    let config = Config {
        s3_input_allowlist: onnx_lambda::parse_allowlist("s3://down-bucket").unwrap(),
        ..Config::default()
    };
    let app = Arc::new(
        App::init(config, &ModelLoader::new(None), Some(dead))
            .await
            .unwrap(),
    );
    let body = json!({"s3_uri": "s3://down-bucket/cat.png"});
    let (s, b) = call(Some(app), json_post("/predict", &body)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (502, "s3_unavailable"),
        "{b}"
    );
}

#[tokio::test]
async fn health_ready_and_model_describe_the_service() {
    let (app, _) = app().await;
    let (s, b) = call(Some(app.clone()), request("GET", "/ready", None, "")).await;
    assert_eq!((s, b["status"].as_str().unwrap()), (200, "ready"));
    let (s, m) = call(Some(app.clone()), request("GET", "/model", None, "")).await;
    assert_eq!(s, 200);
    assert_eq!(m["name"], "mobilenetv2-1.0");
    assert_eq!(
        m["sha256"],
        "8cdd0539566d8c48e81e8e8f5bdec67b53da39881abb4d56ce1a7e66fd10ea02"
    );
    assert_eq!(m["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
    assert_eq!(m["outputs"][0]["shape"], json!([-1, 1000]));
    assert_eq!(m["preprocessing"]["resize_shorter_side"], 256);
    assert_eq!(m["labels"], 1000);
}

#[tokio::test]
async fn open_inference_protocol_in_process() {
    let (app, _) = app().await;
    let a = || Some(app.clone());
    let (s, meta) = call(a(), request("GET", "/v2/models/mobilenetv2-1.0", None, "")).await;
    assert_eq!(s, 200);
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
    // FP32 input: the reference tensor gives ONNX Runtime's logits.
    let input: Vec<f32> = std::fs::read(data("testdata/chelsea.input.1x3x224x224.f32le"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let body = json!({"id": "r1", "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": input}],
                      "outputs": [{"name": "output"}, {"name": "output", "parameters": {"classification": 3}}]});
    let (s, r) = call(a(), json_post("/v2/models/mobilenetv2-1.0/infer", &body)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["id"], "r1");
    assert_eq!(r["outputs"][0]["shape"], json!([1, 1000]));
    let logits: Vec<f64> = r["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let argmax = (0..1000)
        .max_by(|a, b| logits[*a].total_cmp(&logits[*b]))
        .unwrap();
    assert_eq!(argmax, 285);
    let top = r["outputs"][1]["data"][0].as_str().unwrap();
    assert!(top.ends_with(":285:Egyptian cat"), "{top}");
    assert_eq!(r["outputs"][1]["shape"], json!([1, 3]));

    let errors: Vec<(http::Request<Bytes>, u16)> = vec![
        (
            post("/v2/models/other/infer", "application/json", "{}"),
            404,
        ),
        (
            post(
                "/v2/models/mobilenetv2-1.0/infer",
                "application/json",
                "nope",
            ),
            400,
        ),
        (
            json_post(
                "/v2/models/mobilenetv2-1.0/infer",
                &json!({"inputs": [{"name": "input", "shape": [1, 3, 100, 100], "datatype": "FP32", "data": [0.0]}]}),
            ),
            422,
        ),
        (
            json_post(
                "/v2/models/mobilenetv2-1.0/infer",
                &json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "INT8", "data": [0]}]}),
            ),
            422,
        ),
        (
            json_post(
                "/v2/models/mobilenetv2-1.0/infer",
                &json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0.0, 1.0]}]}),
            ),
            422,
        ),
        (
            request("GET", "/v2/models/mobilenetv2-1.0/infer", None, ""),
            405,
        ),
    ];
    // Regression: binary FP32 data one value short, or with bytes left
    // over, or holding NaN or an infinity, reached the model.
    let binary = |values: &[f32], extra: &[u8]| {
        let mut raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw.extend_from_slice(extra);
        let header =
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                        "parameters": {"binary_data_size": raw.len()}}]})
            .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&raw);
        http::Request::builder()
            .method("POST")
            .uri("/v2/models/mobilenetv2-1.0/infer")
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", header.len())
            .body(Bytes::from(body))
            .unwrap()
    };
    let (s, r) = call(a(), binary(&input, &[])).await;
    assert_eq!(s, 200, "the whole tensor in binary: {r}");
    let mut nan = input.clone();
    nan[1234] = f32::NAN;
    let mut inf = input.clone();
    inf[0] = f32::INFINITY;
    let mut errors = errors;
    errors.extend([
        (binary(&input[1..], &[]), 400),
        (binary(&input, &[0, 0, 0]), 400),
        (binary(&nan, &[]), 400),
        (binary(&inf, &[]), 400),
    ]);
    // A JSON number past f32's range would be an infinity.
    let mut big: Vec<Value> = input.iter().map(|v| json!(v)).collect();
    big[7] = json!(1e300);
    let mixed = json!([0.5, "AAAA"]);
    for data in [Value::Array(big), mixed] {
        errors.push((
            json_post(
                "/v2/models/mobilenetv2-1.0/infer",
                &json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": data}]}),
            ),
            400,
        ));
    }
    for (req, status) in errors {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, b) = call(a(), req).await;
        assert_eq!(s, status, "{what}: {b}");
        assert!(
            b["error"].as_str().is_some_and(|m| !m.is_empty()),
            "V2 errors are {{\"error\": string}}: {b}"
        );
    }
}

/// `onnx-lambda serve` on a free port; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn start_server(env: &[(&str, String)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
    cmd.args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in aws_env()
        .into_iter()
        .chain(env.iter().map(|(k, v)| (*k, v.clone())))
    {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // The address line, or a clear failure instead of a hang.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("serve printed no address within 60 s");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("serve prints its address")
        .to_string();
    let server = Server { child, url };
    // Wait for readiness the way a load balancer would.
    for _ in 0..300 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{}/ready", server.url),
            ])
            .output()
            .unwrap();
        if out.stdout == b"200" {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the server never became ready");
}

#[test]
fn curl_against_the_local_server() {
    let server = start_server(&[("MAX_REQUEST_BYTES", "300000".into())]);
    let photo = data("images/chelsea.png");
    let (s, b) = curl(&[
        "-H",
        "Content-Type: image/png",
        "--data-binary",
        &format!("@{}", photo.display()),
        &format!("{}/predict?top_k=2", server.url),
    ]);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["predictions"][0]["index"], 285);
    assert_eq!(b["predictions"].as_array().unwrap().len(), 2);
    // curl's default form content type still works for raw bytes.
    let jpeg = data("images/rocket.jpg");
    let (s, b) = curl(&[
        "--data-binary",
        &format!("@{}", jpeg.display()),
        &format!("{}/predict", server.url),
    ]);
    assert_eq!(s, 200, "{b}");
    assert!([657, 744, 812].contains(&b["predictions"][0]["index"].as_u64().unwrap()));
    // JSON with base64.
    let small = std::fs::read(data("images/grace_hopper.jpg")).unwrap();
    let body = json!({"image": b64(&small), "top_k": 1}).to_string();
    let (s, b) = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!("{}/predict", server.url),
    ]);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["predictions"].as_array().unwrap().len(), 1);
    // Over MAX_REQUEST_BYTES (chelsea.png is 240 kB, coffee.png 467 kB): 413.
    let big = data("images/coffee.png");
    let (s, b) = curl(&[
        "-H",
        "Content-Type: image/png",
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("{}/predict", server.url),
    ]);
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (413, "payload_too_large"),
        "{b}"
    );
    assert!(b["error"]["message"].as_str().unwrap().contains("300000"));
    // The server is still fine after bad requests.
    let (s, _) = curl(&[&format!("{}/health", server.url)]);
    assert_eq!(s, 200);
    let (s, b) = curl(&[&format!("{}/v2/models/mobilenetv2-1.0/ready", server.url)]);
    assert_eq!(s, 200, "{b}");
}

/// The stock Triton client against `serve` started in this process (the
/// binary's own `serve` is driven by curl above).
#[test]
fn triton_http_client_against_the_local_server() {
    let server = common::InProcessServer::start(Config::default());
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/triton_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.url.trim_start_matches("http://"))
        .arg(data("images"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/test.sh, which installs tritonclient[http]",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["server_live"], true);
    assert_eq!(report["server_ready"], true);
    assert_eq!(report["model_ready"], true);
    let metadata = &report["metadata"];
    assert_eq!(metadata["name"], "mobilenetv2-1.0", "{metadata}");
    assert_eq!(metadata["platform"], "onnx_onnxv1", "{metadata}");
    assert_eq!(metadata["inputs"][0]["name"], "input", "{metadata}");
    assert_eq!(
        metadata["inputs"][0]["shape"],
        json!([-1, 3, 224, 224]),
        "{metadata}"
    );
    assert_eq!(
        metadata["outputs"][0]["shape"],
        json!([-1, 1000]),
        "{metadata}"
    );
    assert_eq!(report["fp32_top1"], 285, "{report}");
    assert_eq!(report["bytes_top1"], json!([285, 967]), "{report}");
    assert!(
        report["classification"][0]
            .as_str()
            .unwrap()
            .ends_with(":285:Egyptian cat"),
        "{report}"
    );
}
