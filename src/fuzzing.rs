//! Entry points for the fuzz targets in `fuzz/fuzz_targets/`: each feeds
//! untrusted bytes to one parser the way a door does, and panics only when
//! the code under test misbehaves (a panic, a non-JSON answer, a 5xx for
//! bad input, a NaN tensor).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::app::App;
use crate::config::{Config, InputLimits};
use crate::model::manifest::Manifest;
use crate::model::ModelLoader;
use crate::preprocess::{self, Preprocessor};

/// Small limits, so inputs explore headers instead of allocating images.
const LIMITS: InputLimits = InputLimits {
    max_bytes: 1 << 20,
    max_pixels: 1 << 20,
};

/// Decodes `data` and, if it is an image, preprocesses it. The first byte
/// picks the decode: full size, or DCT-scaled for a preprocessor that needs
/// only 8 to 64 pixels (so small fuzz inputs reach the scaled JPEG path).
pub fn decode_and_preprocess(data: &[u8]) {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let min_side: u32 = if pick % 2 == 0 { 0 } else { 8 << (pick % 4) };
    if let Ok(image) = preprocess::decode_for(data, &LIMITS, min_side) {
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

/// The routes a fuzz input can take: method, path, content type.
const ROUTES: [(&str, &str, &str); 6] = [
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
            max_batch_images: 2,
            threads: Some(1),
            ..Config::default()
        };
        let app = runtime
            .block_on(App::init(config, &ModelLoader::new(None), None))
            .expect("the bundled model loads");
        (runtime, Arc::new(app))
    });
    let Some((&selector, mut body)) = data.split_first() else {
        return;
    };
    let (method, path, content_type) = ROUTES[usize::from(selector) % ROUTES.len()];
    let mut request = http::Request::builder().method(method).uri(path);
    if content_type == "binary" {
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
    assert!(
        !response.status().is_server_error(),
        "{} for bad input: {json}",
        response.status()
    );
}
