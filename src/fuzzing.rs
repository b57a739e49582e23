//! Entry points for the fuzz targets in `fuzz/fuzz_targets/`: each feeds
//! untrusted bytes to one parser the way a door does, and panics only when
//! the code under test misbehaves (a panic, a non-JSON answer, a 5xx for
//! bad input, a NaN tensor).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::app::App;
use crate::config::{Config, InputLimits};
use crate::decode;
use crate::model::manifest::Manifest;
use crate::model::ModelLoader;
use crate::preprocess::Preprocessor;

/// Small limits, so inputs explore headers instead of allocating images.
const LIMITS: InputLimits = InputLimits {
    max_bytes: 1 << 20,
    max_pixels: 1 << 20,
    max_decode_bytes: 64 << 20,
};

/// Decodes `data` and, if it is an image, preprocesses it. The first byte
/// picks the decode: full size, or DCT-scaled for a preprocessor that needs
/// only 8 to 64 pixels (so small fuzz inputs reach the scaled JPEG path).
pub fn decode_and_preprocess(data: &[u8]) {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let min_side: u32 = if pick % 2 == 0 { 0 } else { 8 << (pick % 4) };
    if let Ok(image) = decode::decode_for(data, &LIMITS, min_side) {
        let pre = Preprocessor::new(&Manifest::imagenet_defaults("fuzz"));
        let mut out = vec![0f32; pre.image_len()];
        pre.preprocess_into(image, &mut out);
        assert!(
            out.iter().all(|v| v.is_finite()),
            "a NaN or infinite input value"
        );
    }
}

/// Parses an SQS message body as the job doors do.
pub fn parse_job(body: &str) {
    let _ = crate::jobs::message::parse_message(body, "message-id", 5);
    let _ = crate::jobs::message::declared_job_id(body);
}

/// The routes a fuzz input can take: method, path, content type. `s3`
/// makes the body the key of an allowed `s3_uri` (`s3 batch`: several,
/// split at zero bytes), read from an S3 endpoint that refuses
/// connections: key checks and the SDK's request building see it all.
const ROUTES: [(&str, &str, &str); 8] = [
    ("POST", "/predict", "s3"),
    ("POST", "/predict", "s3 batch"),
    ("POST", "/predict", "application/octet-stream"),
    ("POST", "/predict?top_k=3", "application/json"),
    ("POST", "/predict", ""),
    (
        "POST",
        "/v2/models/mobilenetv2-1.0/infer",
        "application/json",
    ),
    ("POST", "/v2/models/mobilenetv2-1.0/infer", "binary"),
    ("GET", "/v2/models/mobilenetv2-1.0", "application/json"),
];

/// One request through the router with the bundled model: `data[0]` picks
/// the route; for Triton's binary extension the next two bytes (little
/// endian) say where the JSON header ends; the rest is the body. Any answer must be JSON, and bad input
/// must never be a 5xx.
pub fn route_request(data: &[u8]) {
    static STATE: OnceLock<(tokio::runtime::Runtime, Arc<App>)> = OnceLock::new();
    let (runtime, app) = STATE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let config = Config {
            limits: LIMITS,
            max_batch_images: 4,
            threads: Some(1),
            s3_input_allowlist: crate::location::parse_allowlist("s3://fuzz-bucket/in/")
                .expect("a valid allow-list"),
            ..Config::default()
        };
        let app = runtime
            .block_on(App::init(
                config,
                &ModelLoader::new(None),
                Some(refusing_s3()),
            ))
            .expect("the bundled model loads");
        (runtime, Arc::new(app))
    });
    let Some((&selector, mut body)) = data.split_first() else {
        return;
    };
    let (method, path, content_type) = ROUTES[usize::from(selector) % ROUTES.len()];
    let mut request = http::Request::builder().method(method).uri(path);
    let s3_body;
    if content_type.starts_with("s3") {
        let uri = |key: &[u8]| format!("s3://fuzz-bucket/in/{}", String::from_utf8_lossy(key));
        let json = match content_type {
            "s3" => serde_json::json!({ "s3_uri": uri(body) }),
            _ => serde_json::json!({"images": body
                .split(|&b| b == 0)
                .map(|key| serde_json::json!({ "s3_uri": uri(key) }))
                .collect::<Vec<_>>()}),
        };
        s3_body = json.to_string();
        body = s3_body.as_bytes();
        request = request.header("content-type", "application/json");
    } else if content_type == "binary" {
        let Some((len, rest)) = body.split_first_chunk::<2>() else {
            return;
        };
        body = rest;
        let header_len = usize::from(u16::from_le_bytes(*len));
        request = request
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", header_len);
    } else if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    let request = request
        .body(Bytes::copy_from_slice(body))
        .expect("a valid request");
    let response = runtime.block_on(crate::http::route(Some(app.clone()), request));
    let json: serde_json::Value =
        serde_json::from_slice(response.body()).expect("every answer is JSON");
    // The refusing S3 endpoint is a 502 (`s3_unavailable`): not the input's
    // fault, and not the process's.
    let unreachable = json["error"]["code"] == "s3_unavailable";
    assert!(
        !response.status().is_server_error() || unreachable,
        "{} for bad input: {json}",
        response.status()
    );
    let entries = json["results"].as_array().into_iter().flatten();
    for entry in entries {
        assert_ne!(entry["error"]["code"], "internal", "{json}");
    }
}

/// An S3 client for an endpoint where nothing listens: every read fails
/// at once, after the SDK has built (and checked) the request.
fn refusing_s3() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "fuzz", "fuzz", None, None, "fuzz",
        ))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .http_client(crate::aws::http_client())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The S3 routes as the fuzz target drives them, on the inputs that
    /// once made the SDK panic (an over-long key) and on keys no S3 holds.
    #[test]
    fn s3_references_never_panic_or_answer_internal() {
        let long = [vec![0u8], vec![b'k'; 70_000]].concat();
        route_request(&long);
        route_request(b"\x00cat.jpg");
        route_request(b"\x01a.jpg\x00\x00../b.png\x00\xff\xfe\x00?x=1");
        route_request(&[vec![1u8], vec![b'k'; 2_000], vec![0], b"ok.jpg".to_vec()].concat());
    }
}
