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

use http::{Method, StatusCode};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{json_response, HttpRequest, HttpResponse, ResponseCode};
use crate::app::App;
use crate::error::ErrorCode;
use crate::inputs::decode_base64;

/// A protocol error: status and message.
struct V2Error(StatusCode, String);

impl V2Error {
    fn bad(msg: impl Into<String>) -> V2Error {
        V2Error(StatusCode::BAD_REQUEST, msg.into())
    }
    fn unprocessable(msg: impl Into<String>) -> V2Error {
        V2Error(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
    }
    /// The protocol's `{"error": "..."}`, tagged `v2_<status>` for the metrics.
    fn into_response(self) -> HttpResponse {
        let mut r = json_response(self.0, &json!({"error": self.1}));
        let code = ResponseCode(format!("v2_{}", self.0.as_u16()));
        r.extensions_mut().insert(code);
        r
    }
}

/// The model's name and version, and its input and output names.
fn names(app: &App) -> (String, String, String, String) {
    let model = app.model();
    let m = model.manifest();
    (
        model.info().name.clone(),
        model.info().version.clone(),
        m.input.name.clone().unwrap_or_else(|| "input".into()),
        m.output.name.clone().unwrap_or_else(|| "output".into()),
    )
}

/// Routes everything under `/v2`.
pub(super) async fn route(app: Option<Arc<App>>, req: HttpRequest, path: &str) -> HttpResponse {
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
            let classes = app.model().classes();
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "name": model_name,
                    "versions": [version],
                    "platform": "onnx_onnxv1",
                    "inputs": [{"name": input_name, "datatype": "FP32", "shape": app.input_shape(-1)},
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
    #[serde(default)]
    data: TensorData,
}

/// A tensor's JSON `data`, flattened while it is parsed. A JSON value tree
/// costs tens of bytes per number, so a body of a few MB of `0,` held
/// hundreds of MB before its shape could be checked; flat, a number costs
/// the 4 bytes of its f32, less than its text.
#[derive(Debug, Default)]
enum TensorData {
    #[default]
    Absent,
    Numbers(Vec<f32>),
    Strings(Vec<String>),
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = TensorData::Absent;
        d.deserialize_any(Flatten(&mut data))?;
        Ok(data)
    }
}

/// Appends every number or string of nested arrays to one [`TensorData`].
struct Flatten<'a>(&'a mut TensorData);

impl Flatten<'_> {
    fn number<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match self.0 {
            TensorData::Absent => *self.0 = TensorData::Numbers(vec![v as f32]),
            TensorData::Numbers(n) => n.push(v as f32),
            TensorData::Strings(_) => return Err(E::custom("data mixes numbers and strings")),
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers or strings, in (nested) arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let data = self.0;
        while seq.next_element_seed(Flatten(&mut *data))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        match self.0 {
            TensorData::Absent => *self.0 = TensorData::Strings(vec![v.to_string()]),
            TensorData::Strings(s) => s.push(v.to_string()),
            TensorData::Numbers(_) => return Err(E::custom("data mixes numbers and strings")),
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
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

/// The one input of a request, checked against the model and the limits.
struct Input<'a> {
    /// The batch size, the first dimension.
    n: usize,
    input: &'a InferInput,
    /// The body after the JSON header (Triton's binary tensor extension).
    binary_tail: &'a [u8],
}

impl Input<'_> {
    /// This input's bytes in the binary extension, when it declares
    /// `binary_data_size`.
    fn binary(&self) -> Result<Option<&[u8]>, V2Error> {
        let Some(size) = self
            .input
            .parameters
            .get("binary_data_size")
            .and_then(Value::as_u64)
        else {
            return Ok(None);
        };
        usize::try_from(size)
            .ok()
            .and_then(|size| self.binary_tail.get(..size))
            .map(Some)
            .ok_or_else(|| V2Error::bad("binary data is shorter than binary_data_size"))
    }
}

/// `POST /v2/models/{name}/infer`.
async fn infer(app: &Arc<App>, req: HttpRequest) -> Result<Value, V2Error> {
    let limit = app.config().max_request_bytes;
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
    let input = check_input(app, &request, binary)?;
    let scores = match input.input.datatype.as_str() {
        "FP32" => fp32_scores(app, &input).await?,
        "BYTES" => bytes_scores(app, &input).await?,
        other => {
            return Err(V2Error::unprocessable(format!(
                "datatype {other} is not accepted: send FP32 {:?} or BYTES [N] encoded images",
                app.input_shape(-1)
            )))
        }
    };
    let outputs = outputs(app, request.outputs, &scores)?;
    let (model_name, version, _, _) = names(app);
    let mut response =
        json!({"model_name": model_name, "model_version": version, "outputs": outputs});
    if let Some(id) = request.id {
        response["id"] = Value::String(id);
    }
    Ok(response)
}

/// Exactly one input, named as the model's, with a batch of 1 to
/// `MAX_BATCH_IMAGES`.
fn check_input<'a>(
    app: &App,
    request: &'a InferRequest,
    binary: &'a [u8],
) -> Result<Input<'a>, V2Error> {
    let (_, _, input_name, _) = names(app);
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
    let max_batch = app.config().max_batch_images as i64;
    let n = *input.shape.first().unwrap_or(&0);
    if n < 1 || n > max_batch {
        return Err(V2Error::unprocessable(format!(
            "batch dimension {n} of shape {:?} must be 1 to {max_batch} (MAX_BATCH_IMAGES)",
            input.shape
        )));
    }
    Ok(Input {
        n: n as usize,
        input,
        binary_tail: binary,
    })
}

/// `FP32 [N,3,H,W]` (or NHWC): already preprocessed, straight to the model.
async fn fp32_scores(app: &Arc<App>, input: &Input<'_>) -> Result<Vec<Vec<f32>>, V2Error> {
    let expected = app.input_shape(input.n as i64);
    if input.input.shape != expected {
        return Err(V2Error::unprocessable(format!(
            "FP32 input shape {:?} does not match the model's {expected:?}",
            input.input.shape
        )));
    }
    let want = expected.iter().product::<i64>() as usize;
    let values: Vec<f32> = match (input.binary()?, &input.input.data) {
        (Some(raw), _) if raw.len() != want * 4 => {
            return Err(V2Error::bad(format!(
                "binary FP32 data is {} bytes; shape {:?} needs exactly {} (4 per value)",
                raw.len(),
                input.input.shape,
                want * 4
            )))
        }
        (Some(raw), _) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        (None, TensorData::Numbers(v)) => v.clone(),
        (None, TensorData::Strings(_)) => {
            return Err(V2Error::bad(
                "FP32 data must be numbers (nested arrays allowed)",
            ))
        }
        (None, TensorData::Absent) => return Err(V2Error::bad("the input has no data")),
    };
    if values.len() != want {
        return Err(V2Error::unprocessable(format!(
            "FP32 input has {} values; shape {:?} needs {want}",
            values.len(),
            input.input.shape
        )));
    }
    // Triton passes NaN and infinities through; here they are refused: a
    // preprocessed image holds finite values, and a NaN would come back as
    // a NaN score with a meaningless top class.
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(V2Error::bad(format!(
            "FP32 input value {i} is {}: send finite, preprocessed values",
            values[i]
        )));
    }
    app.scores_for_tensor(values, input.n)
        .await
        .map_err(|e| V2Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `BYTES [N]` or `[N,1]`: encoded images through the whole pipeline.
async fn bytes_scores(app: &Arc<App>, input: &Input<'_>) -> Result<Vec<Vec<f32>>, V2Error> {
    let shape = &input.input.shape;
    if !(shape.len() == 1 || (shape.len() == 2 && shape[1] == 1)) {
        return Err(V2Error::unprocessable(format!(
            "BYTES input shape {shape:?} must be [N] or [N,1], one encoded image per element"
        )));
    }
    let images = match (input.binary()?, &input.input.data) {
        (Some(raw), _) => binary_strings(raw)?,
        (None, TensorData::Strings(encoded)) => encoded
            .iter()
            .map(|s| {
                decode_base64("BYTES data", s).map_err(|e| {
                    V2Error::bad(format!(
                        "BYTES data in JSON must be base64-encoded images: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None, TensorData::Numbers(_)) => return Err(V2Error::bad("BYTES data must be strings")),
        (None, TensorData::Absent) => return Err(V2Error::bad("the input has no data")),
    };
    if images.len() != input.n {
        return Err(V2Error::unprocessable(format!(
            "BYTES input has {} elements but shape {shape:?}",
            images.len()
        )));
    }
    app.scores(images)
        .await
        .map_err(|e| V2Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.map_err(|e| V2Error::bad(format!("image {i}: {} ({})", e, e.code()))))
        .collect()
}

/// The requested outputs (default: the raw scores); with the classification
/// extension, `"<score>:<index>:<label>"` strings for the top k.
fn outputs(
    app: &App,
    requested: Vec<RequestedOutput>,
    scores: &[Vec<f32>],
) -> Result<Vec<Value>, V2Error> {
    let (_, _, _, output_name) = names(app);
    let (n, classes) = (scores.len(), app.model().classes());
    let requested = if requested.is_empty() {
        vec![RequestedOutput {
            name: output_name.clone(),
            parameters: Map::new(),
        }]
    } else {
        requested
    };
    let mut outputs = Vec::new();
    for out in requested {
        if out.name != output_name {
            return Err(V2Error::bad(format!(
                "unknown output {:?}; the model's output is {output_name:?}",
                out.name
            )));
        }
        let Some(k) = out.parameters.get("classification") else {
            outputs.push(json!({
                "name": output_name, "datatype": "FP32", "shape": [n, classes],
                "data": scores.iter().flatten().collect::<Vec<_>>(),
            }));
            continue;
        };
        let k = k
            .as_u64()
            .filter(|k| *k >= 1)
            .ok_or_else(|| V2Error::bad("classification must be a positive integer"))?;
        let k = (k as usize).min(classes);
        let labels = app.model().labels();
        let data: Vec<String> = scores
            .iter()
            .flat_map(|s| {
                crate::classify::top_k(s, k, labels)
                    .into_iter()
                    .map(|p| format!("{}:{}:{}", p.probability, p.index, p.label))
            })
            .collect();
        outputs
            .push(json!({"name": output_name, "datatype": "BYTES", "shape": [n, k], "data": data}));
    }
    Ok(outputs)
}
