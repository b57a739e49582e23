//! `ApiError`: the one place errors become HTTP status codes. Every failure
//! outside `/v2` is answered with [`ErrorBody`]'s `{"error": {"code",
//! "message"}}`.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::Value;

use super::HttpResponse;
use crate::app::App;
use crate::error::{ClassifyError, ErrorBody, InputError};
use crate::inputs::FetchError;

/// A failed request: status, stable code, and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code and the explanation.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with the given status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 413 for a body over `limit` bytes.
    pub fn payload_too_large(size: usize, limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is {size} bytes, more than the limit of {limit} bytes (MAX_REQUEST_BYTES; \
                 a synchronous Lambda payload is at most 6 MB, base64 adds a third): send large images \
                 by reference with {{\"s3_uri\": \"s3://bucket/key\"}}"
            ),
        )
    }

    /// The `{"error": {"code", "message"}}` response, tagged with its code.
    pub fn into_response(self) -> HttpResponse {
        let mut r = json_response(self.status, &self.body.to_json());
        r.extensions_mut().insert(ResponseCode(self.body.code));
        r
    }
}

impl From<ClassifyError> for ApiError {
    fn from(e: ClassifyError) -> ApiError {
        let status = match &e {
            ClassifyError::Input(InputError::TooManyBytes { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ClassifyError::Input(_) => StatusCode::BAD_REQUEST,
            ClassifyError::Model(_) | ClassifyError::Internal(_) | ClassifyError::Panicked(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError {
            status,
            body: ErrorBody::of(&e),
        }
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> ApiError {
        let status = match &e {
            FetchError::NotAllowed { .. } | FetchError::AccessDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            FetchError::InvalidBase64 { .. }
            | FetchError::InvalidUri { .. }
            | FetchError::NotFound { .. } => StatusCode::BAD_REQUEST,
            FetchError::TooLarge { .. } | FetchError::TooMuchAtOnce { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            FetchError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
            FetchError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            body: ErrorBody::of(&e),
        }
    }
}

/// The stable code of an error response, carried beside its body so the
/// doors count errors (`App::metrics`) without parsing what they send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCode(pub String);

/// Counts `response` as an error by its code, if it is one: called once per
/// response by each door that answers HTTP (`serve`, Lambda's HTTP events).
pub fn observe(app: Option<&App>, response: &HttpResponse) {
    let (Some(app), Some(code)) = (app, response.extensions().get::<ResponseCode>()) else {
        return;
    };
    app.metrics().error(&code.0);
}

/// Serialises `body` as a JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut r = Response::new(serde_json::to_vec(body).expect("a Value always serialises"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
