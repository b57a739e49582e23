//! `POST /predict`: raw image bytes, or JSON with one `"image"` (base64), one
//! `"s3_uri"` (allow-listed), or an `"images"` batch in which a bad entry
//! becomes an error entry instead of failing the batch.

use std::sync::Arc;

use http::{header, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, HttpRequest};
use crate::app::App;
use crate::classify::Classification;
use crate::error::{ClassifyError, ErrorBody};
use crate::inputs::{decode_base64, Input};

/// One image in a JSON request.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ImageRef {
    /// Bare base64 string.
    Base64(String),
    /// `{"image": b64}` or `{"s3_uri": uri}`.
    Object {
        image: Option<String>,
        s3_uri: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictJson {
    image: Option<String>,
    s3_uri: Option<String>,
    images: Option<Vec<ImageRef>>,
    top_k: Option<usize>,
}

/// How the body is to be read.
enum BodyKind {
    Json,
    Image,
}

/// `POST /predict`.
pub(super) async fn predict(app: Arc<App>, req: HttpRequest) -> Result<Value, ApiError> {
    let limit = app.config().max_request_bytes;
    if req.body().len() > limit {
        return Err(ApiError::payload_too_large(req.body().len(), limit));
    }
    let top_k = query_top_k(&req)?.unwrap_or(app.config().top_k);
    match body_kind(&req)? {
        BodyKind::Image => {
            if req.body().is_empty() {
                return Err(ApiError::bad_request(
                    "empty_input",
                    "the request body is empty: POST the image bytes, or JSON {\"image\": \"<base64>\"}",
                ));
            }
            single(&app, req.into_body().to_vec(), top_k).await
        }
        BodyKind::Json => predict_json(&app, req.body(), top_k).await,
    }
}

async fn predict_json(app: &Arc<App>, body: &[u8], top_k: usize) -> Result<Value, ApiError> {
    let body: PredictJson = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "the body is not a valid request: {e}; expected {{\"image\": \"<base64>\"}}, \
                 {{\"s3_uri\": \"s3://bucket/key\"}} or {{\"images\": [...]}}, with optional \"top_k\""
            ),
        )
    })?;
    let top_k = match body.top_k {
        Some(k) => parse_top_k(&k.to_string())?,
        None => top_k,
    };
    match (body.image, body.s3_uri, body.images) {
        (Some(b64), None, None) => single(app, decode_base64("\"image\"", &b64)?, top_k).await,
        (None, Some(uri), None) => {
            let input = app.inputs().fetch_allowed(&uri, 0).await?;
            let answer = single(app, input.bytes, top_k).await;
            drop(input.held);
            answer
        }
        (None, None, Some(images)) => batch(app, images, top_k).await,
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "give exactly one of \"image\" (base64), \"s3_uri\" or \"images\" (a list)",
        )),
    }
}

fn body_kind(req: &HttpRequest) -> Result<BodyKind, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ct.as_deref() {
        Some("application/json") => Ok(BodyKind::Json),
        Some(t) if t.ends_with("+json") => Ok(BodyKind::Json),
        Some(t) if t.starts_with("image/") || t == "application/octet-stream" => Ok(BodyKind::Image),
        // curl --data-binary sends form-urlencoded unless told otherwise; a
        // missing type is common too. Sniff: JSON starts with '{'.
        None | Some("application/x-www-form-urlencoded") | Some("") => {
            if req.body().iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                Ok(BodyKind::Json)
            } else {
                Ok(BodyKind::Image)
            }
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {other} is not accepted: send image bytes (image/* or application/octet-stream) \
                 or JSON (application/json)"
            ),
        )),
    }
}

fn query_top_k(req: &HttpRequest) -> Result<Option<usize>, ApiError> {
    let Some(q) = req.uri().query() else {
        return Ok(None);
    };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("top_k=") {
            return parse_top_k(v).map(Some);
        }
    }
    Ok(None)
}

fn parse_top_k(v: &str) -> Result<usize, ApiError> {
    crate::config::parse_top_k("top_k", v)
        .map_err(|e| ApiError::bad_request("invalid_top_k", e.to_string()))
}

/// One image: its predictions, or its error as the request's error.
async fn single(app: &Arc<App>, bytes: Vec<u8>, top_k: usize) -> Result<Value, ApiError> {
    let c = app
        .classify(vec![bytes], top_k)
        .await?
        .pop()
        .expect("one result per image")?;
    Ok(json!({"model": app.model_json(), "predictions": c.predictions, "timing_ms": c.timing_ms}))
}

async fn batch(app: &Arc<App>, images: Vec<ImageRef>, top_k: usize) -> Result<Value, ApiError> {
    let max = app.config().max_batch_images;
    if images.is_empty() || images.len() > max {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "\"images\" has {} entries; send 1 to {max} (MAX_BATCH_IMAGES)",
                images.len()
            ),
        ));
    }
    // Resolve every entry; a bad entry is an error result, not a failed batch.
    let mut resolved: Vec<Result<Input, ApiError>> = Vec::with_capacity(images.len());
    // Bytes of this request's S3 inputs read so far (inline data is bounded
    // by the body).
    let mut held = 0u64;
    for (i, img) in images.into_iter().enumerate() {
        resolved.push(match img {
            ImageRef::Base64(s)
            | ImageRef::Object {
                image: Some(s),
                s3_uri: None,
            } => decode_base64(&format!("images[{i}]"), &s)
                .map(Input::inline)
                .map_err(ApiError::from),
            ImageRef::Object {
                image: None,
                s3_uri: Some(uri),
            } => {
                let input = app.inputs().fetch_allowed(&uri, held).await;
                if let Ok(input) = &input {
                    held += input.bytes.len() as u64;
                }
                input.map_err(ApiError::from)
            }
            ImageRef::Object { .. } => Err(ApiError::bad_request(
                "invalid_json",
                format!("images[{i}] needs exactly one of \"image\" or \"s3_uri\""),
            )),
        });
    }
    // The budget shares (`held`) stay in `resolved` until the images are
    // classified.
    let ok: Vec<Vec<u8>> = resolved
        .iter_mut()
        .filter_map(|r| {
            r.as_mut()
                .ok()
                .map(|input| std::mem::take(&mut input.bytes))
        })
        .collect();
    let mut classified = app.classify(ok, top_k).await?.into_iter();
    let results: Vec<Value> = resolved
        .into_iter()
        .map(|r| {
            let outcome: Result<Classification, ErrorBody> = r.map_err(|e| e.body).and_then(|_| {
                let c: Result<Classification, ClassifyError> =
                    classified.next().expect("one result per image");
                c.map_err(|e| ApiError::from(e).body)
            });
            match outcome {
                Ok(c) => json!({"predictions": c.predictions, "timing_ms": c.timing_ms}),
                Err(body) => body.to_json(),
            }
        })
        .collect();
    Ok(json!({"model": app.model_json(), "results": results}))
}
