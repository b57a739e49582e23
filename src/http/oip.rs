//! The Open Inference Protocol (KServe V2) REST API, so existing KServe and
//! Triton clients work unchanged.
//!
//! `infer` takes one input: `FP32 [N,3,H,W]` (already preprocessed, in the
//! manifest's layout) or `BYTES [N]` (encoded images). It returns the model
//! output `FP32 [N,classes]`, or with the classification extension
//! (`"parameters": {"classification": k}` on the requested output) `BYTES
//! [N,k]` strings `"<score>:<index>:<label>"`, where the score is the model's
//! raw output value, as Triton does. Inputs may use Triton's binary tensor
//! extension (`Inference-Header-Content-Length`); outputs are always JSON,
//! which the clients accept. Errors follow the protocol: an HTTP error status
//! with `{"error": "<message>"}`.

use std::sync::Arc;

use base64::Engine;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{json_response, HttpRequest, HttpResponse};
use crate::lambda::App;
use crate::model::Layout;

/// A protocol error: status and message.
struct V2Error(StatusCode, String);

impl V2Error {
    fn bad(msg: impl Into<String>) -> V2Error {
        V2Error(StatusCode::BAD_REQUEST, msg.into())
    }
    fn unprocessable(msg: impl Into<String>) -> V2Error {
        V2Error(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
    }
    fn into_response(self) -> HttpResponse {
        json_response(self.0, &json!({"error": self.1}))
    }
}

/// The input shape with batch dimension `batch` (-1 for "any").
pub fn input_shape(app: &App, batch: i64) -> Vec<i64> {
    let m = app.classifier.model().manifest();
    let (h, w) = (i64::from(m.input.height), i64::from(m.input.width));
    match m.input.layout {
        Layout::Nchw => vec![batch, 3, h, w],
        Layout::Nhwc => vec![batch, h, w, 3],
    }
}

fn names(app: &App) -> (String, String, String, String) {
    let model = app.classifier.model();
    let m = model.manifest();
    (
        model.info().name.clone(),
        model.info().version.clone(),
        m.input.name.clone().unwrap_or_else(|| "input".into()),
        m.output.name.clone().unwrap_or_else(|| "output".into()),
    )
}

/// Routes everything under `/v2`.
pub async fn route(app: Option<Arc<App>>, req: HttpRequest, path: &str) -> HttpResponse {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let result = match segments.as_slice() {
        ["v2"] if get => Ok(json_response(
            StatusCode::OK,
            &json!({"name": "onnx-lambda", "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["classification", "binary_tensor_data"]}),
        )),
        ["v2", "health", "live"] if get => {
            Ok(json_response(StatusCode::OK, &json!({"live": true})))
        }
        ["v2", "health", "ready"] if get => Ok(ready(app.is_some())),
        ["v2", "models", name, rest @ ..] => model_route(app, req, name, rest, &method).await,
        ["v2"] | ["v2", "health", "live" | "ready"] => Err(V2Error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} accepts GET, not {method}"),
        )),
        _ => Err(V2Error(
            StatusCode::NOT_FOUND,
            format!("no route {path} in the V2 protocol"),
        )),
    };
    result.unwrap_or_else(V2Error::into_response)
}

fn ready(is_ready: bool) -> HttpResponse {
    if is_ready {
        json_response(StatusCode::OK, &json!({"ready": true}))
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
    }
}

async fn model_route(
    app: Option<Arc<App>>,
    req: HttpRequest,
    name: &str,
    rest: &[&str],
    method: &Method,
) -> Result<HttpResponse, V2Error> {
    let Some(app) = app else {
        return Err(V2Error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading".into(),
        ));
    };
    let (model_name, version, input_name, output_name) = names(&app);
    if name != model_name {
        return Err(V2Error(
            StatusCode::NOT_FOUND,
            format!("unknown model {name:?}; this server has {model_name:?}"),
        ));
    }
    // Optional "/versions/{v}".
    let rest = match rest {
        ["versions", v, tail @ ..] => {
            if *v != version {
                return Err(V2Error(
                    StatusCode::NOT_FOUND,
                    format!("unknown version {v:?} of {model_name}; this server has {version:?}"),
                ));
            }
            tail
        }
        other => other,
    };
    let get = *method == Method::GET || *method == Method::HEAD;
    match rest {
        [] if get => {
            let classes = app.classifier.model().classes();
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "name": model_name,
                    "versions": [version],
                    "platform": "onnx_onnxv1",
                    "inputs": [{"name": input_name, "datatype": "FP32", "shape": input_shape(&app, -1)},
                               {"name": input_name, "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": output_name, "datatype": "FP32", "shape": [-1, classes]}],
                }),
            ))
        }
        ["ready"] if get => Ok(ready(true)),
        ["infer"] if *method == Method::POST => infer(&app, req)
            .await
            .map(|v| json_response(StatusCode::OK, &v)),
        [] | ["ready"] | ["infer"] => Err(V2Error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed here"),
        )),
        _ => Err(V2Error(StatusCode::NOT_FOUND, "no such model route".into())),
    }
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Splits a body in Triton's binary tensor format into (JSON, binary tail).
fn split_binary(req: &HttpRequest) -> Result<(&[u8], &[u8]), V2Error> {
    let body = req.body().as_ref();
    match req.headers().get("inference-header-content-length") {
        None => Ok((body, &[])),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| V2Error::bad("Inference-Header-Content-Length is not a number"))?;
            if n > body.len() {
                return Err(V2Error::bad(format!(
                    "Inference-Header-Content-Length {n} is larger than the body ({} bytes)",
                    body.len()
                )));
            }
            Ok(body.split_at(n))
        }
    }
}

fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> Result<(), V2Error> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_numbers(i, out)),
        Value::Number(n) => {
            out.push(
                n.as_f64()
                    .ok_or_else(|| V2Error::bad("a number is out of range"))?
                    as f32,
            );
            Ok(())
        }
        _ => Err(V2Error::bad(
            "FP32 data must be numbers (nested arrays allowed)",
        )),
    }
}

fn flatten_strings(v: &Value, out: &mut Vec<Vec<u8>>) -> Result<(), V2Error> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_strings(i, out)),
        Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| {
                    V2Error::bad(format!(
                        "BYTES data in JSON must be base64-encoded images: {e}"
                    ))
                })?;
            out.push(bytes);
            Ok(())
        }
        _ => Err(V2Error::bad("BYTES data must be strings")),
    }
}

/// Reads BYTES elements from the binary extension: u32 LE length + bytes, repeated.
fn binary_strings(mut data: &[u8]) -> Result<Vec<Vec<u8>>, V2Error> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(V2Error::bad(
                "truncated BYTES element length in binary data",
            ));
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        data = &data[4..];
        if len > data.len() {
            return Err(V2Error::bad(
                "a BYTES element is longer than the binary data",
            ));
        }
        out.push(data[..len].to_vec());
        data = &data[len..];
    }
    Ok(out)
}

async fn infer(app: &Arc<App>, req: HttpRequest) -> Result<Value, V2Error> {
    let limit = app.config.max_request_bytes;
    if req.body().len() > limit {
        return Err(V2Error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is {} bytes, more than MAX_REQUEST_BYTES={limit}",
                req.body().len()
            ),
        ));
    }
    let (json_part, binary) = split_binary(&req)?;
    let request: InferRequest = serde_json::from_slice(json_part)
        .map_err(|e| V2Error::bad(format!("invalid inference request JSON: {e}")))?;
    let (model_name, version, input_name, output_name) = names(app);
    let [input] = request.inputs.as_slice() else {
        return Err(V2Error::bad(format!(
            "expected exactly one input ({input_name:?}), got {}",
            request.inputs.len()
        )));
    };
    if input.name != input_name {
        return Err(V2Error::bad(format!(
            "unknown input {:?}; the model's input is {input_name:?}",
            input.name
        )));
    }
    let binary_size = input
        .parameters
        .get("binary_data_size")
        .and_then(Value::as_u64);
    let max_batch = app.config.max_batch_images as i64;
    let n = *input.shape.first().unwrap_or(&0);
    if n < 1 || n > max_batch {
        return Err(V2Error::unprocessable(format!(
            "batch dimension {n} of shape {:?} must be 1 to {max_batch} (MAX_BATCH_IMAGES)",
            input.shape
        )));
    }
    let n = n as usize;
    let app2 = app.clone();
    let scores: Vec<Vec<f32>> = match input.datatype.as_str() {
        "FP32" => {
            let expected = input_shape(app, n as i64);
            if input.shape != expected {
                return Err(V2Error::unprocessable(format!(
                    "FP32 input shape {:?} does not match the model's {expected:?}",
                    input.shape
                )));
            }
            let values: Vec<f32> = match (binary_size, &input.data) {
                (Some(size), _) => {
                    let raw = binary.get(..size as usize).ok_or_else(|| {
                        V2Error::bad("binary data is shorter than binary_data_size")
                    })?;
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                }
                (None, Some(data)) => {
                    let mut v = Vec::new();
                    flatten_numbers(data, &mut v)?;
                    v
                }
                (None, None) => return Err(V2Error::bad("the input has no data")),
            };
            let want = expected.iter().product::<i64>() as usize;
            if values.len() != want {
                return Err(V2Error::unprocessable(format!(
                    "FP32 input has {} values; shape {:?} needs {want}",
                    values.len(),
                    input.shape
                )));
            }
            tokio::task::spawn_blocking(move || app2.classifier.scores_for_tensor(&values, n))
                .await
                .map_err(|e| V2Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| V2Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        }
        "BYTES" => {
            if !(input.shape.len() == 1 || (input.shape.len() == 2 && input.shape[1] == 1)) {
                return Err(V2Error::unprocessable(format!(
                    "BYTES input shape {:?} must be [N] or [N,1], one encoded image per element",
                    input.shape
                )));
            }
            let images = match (binary_size, &input.data) {
                (Some(size), _) => {
                    binary_strings(binary.get(..size as usize).ok_or_else(|| {
                        V2Error::bad("binary data is shorter than binary_data_size")
                    })?)?
                }
                (None, Some(data)) => {
                    let mut v = Vec::new();
                    flatten_strings(data, &mut v)?;
                    v
                }
                (None, None) => return Err(V2Error::bad("the input has no data")),
            };
            if images.len() != n {
                return Err(V2Error::unprocessable(format!(
                    "BYTES input has {} elements but shape {:?}",
                    images.len(),
                    input.shape
                )));
            }
            let results = tokio::task::spawn_blocking(move || {
                let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
                app2.classifier.scores_batch(&refs)
            })
            .await
            .map_err(|e| V2Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            results
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    r.map_err(|e| V2Error::bad(format!("image {i}: {} ({})", e, e.code())))
                })
                .collect::<Result<_, _>>()?
        }
        other => {
            return Err(V2Error::unprocessable(format!(
                "datatype {other} is not accepted: send FP32 {:?} or BYTES [N] encoded images",
                input_shape(app, -1)
            )))
        }
    };

    let classes = app.classifier.model().classes();
    let requested = if request.outputs.is_empty() {
        vec![RequestedOutput {
            name: output_name.clone(),
            parameters: Map::new(),
        }]
    } else {
        request.outputs
    };
    let mut outputs = Vec::new();
    for out in requested {
        if out.name != output_name {
            return Err(V2Error::bad(format!(
                "unknown output {:?}; the model's output is {output_name:?}",
                out.name
            )));
        }
        match out.parameters.get("classification") {
            None => outputs.push(json!({
                "name": output_name, "datatype": "FP32", "shape": [n, classes],
                "data": scores.iter().flatten().collect::<Vec<_>>(),
            })),
            Some(k) => {
                let k = k
                    .as_u64()
                    .filter(|k| *k >= 1)
                    .ok_or_else(|| V2Error::bad("classification must be a positive integer"))?;
                let k = (k as usize).min(classes);
                let labels = app.classifier.model().labels();
                let data: Vec<String> = scores
                    .iter()
                    .flat_map(|s| {
                        crate::classify::top_k(s, k, labels)
                            .into_iter()
                            .map(|p| format!("{}:{}:{}", p.probability, p.index, p.label))
                    })
                    .collect();
                outputs.push(json!({"name": output_name, "datatype": "BYTES", "shape": [n, k], "data": data}));
            }
        }
    }
    let mut response =
        json!({"model_name": model_name, "model_version": version, "outputs": outputs});
    if let Some(id) = request.id {
        response["id"] = Value::String(id);
    }
    Ok(response)
}
