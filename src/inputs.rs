//! Getting a request's or a job's image bytes: inline base64, or an
//! `s3://bucket/key` reference read through the one bounded S3 GET, never
//! more than `MAX_INPUT_BYTES`.
//!
//! HTTP requests may only reference buckets/prefixes on the allow-list
//! (`S3_INPUT_ALLOWLIST`, empty by default, so a public endpoint cannot be
//! turned into a reader of everything the function's role can see). SQS jobs
//! come from producers the operator trusts: for them IAM is the boundary.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::aws::s3::{self, ObjectRef, S3Error};
use crate::error::ErrorCode;
use crate::location::{AllowedPrefix, Location};

/// Why an input's bytes could not be had (before any decoding).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Inline image data that is not base64.
    #[error("{field} is not valid base64: {reason}")]
    InvalidBase64 {
        /// The field, as the client named it (`"image"`, `images[2]`).
        field: String,
        /// What the decoder said.
        reason: String,
    },
    /// Not an `s3://bucket/key` URI.
    #[error("{uri:?} is not an s3://bucket/key URI: {reason}")]
    InvalidUri {
        /// What was given.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// The bucket/prefix is not on the allow-list.
    #[error("{uri} is not under an allowed prefix (S3_INPUT_ALLOWLIST: {allowed}); ask the operator to allow it")]
    NotAllowed {
        /// What was asked for.
        uri: String,
        /// The allow-list, for the message.
        allowed: String,
    },
    /// No such object or bucket.
    #[error("{uri} does not exist")]
    NotFound {
        /// What was asked for.
        uri: String,
    },
    /// The function's role may not read it.
    #[error("access denied reading {uri}: the function's role needs s3:GetObject on it")]
    AccessDenied {
        /// What was asked for.
        uri: String,
    },
    /// Larger than `MAX_INPUT_BYTES`.
    #[error("{uri} is {size} bytes, more than MAX_INPUT_BYTES={limit}")]
    TooLarge {
        /// What was asked for.
        uri: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The process already holds as many input bytes as its memory budget
    /// allows, and none came free in time.
    #[error("no room to read {uri} now: {message}; retry later")]
    Busy {
        /// What was asked for.
        uri: String,
        /// How long it waited, and for how much.
        message: String,
    },
    /// With the inputs a request already holds, more than the fetch budget.
    #[error("{uri} was not read: {message}; send fewer or smaller images per request")]
    TooMuchAtOnce {
        /// What was asked for.
        uri: String,
        /// The sizes and the limit.
        message: String,
    },
    /// S3 failed (after the SDK's retries): throttling, 5xx, network.
    #[error("reading {uri} from S3 failed: {message}; retry later")]
    Unavailable {
        /// What was asked for.
        uri: String,
        /// What the SDK said.
        message: String,
    },
}

impl ErrorCode for FetchError {
    fn code(&self) -> &'static str {
        match self {
            FetchError::InvalidBase64 { .. } => "invalid_base64",
            FetchError::InvalidUri { .. } => "invalid_s3_uri",
            FetchError::NotAllowed { .. } => "s3_uri_not_allowed",
            FetchError::NotFound { .. } => "s3_object_not_found",
            FetchError::AccessDenied { .. } => "s3_access_denied",
            FetchError::TooLarge { .. } | FetchError::TooMuchAtOnce { .. } => "input_too_large",
            FetchError::Unavailable { .. } => "s3_unavailable",
            FetchError::Busy { .. } => "overloaded",
        }
    }
}

impl FetchError {
    /// Whether retrying the same input later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Unavailable { .. } | FetchError::Busy { .. }
        )
    }

    fn from_s3(e: S3Error, uri: &str) -> FetchError {
        let uri = uri.to_string();
        match e {
            S3Error::NoSuchBucket | S3Error::NoSuchKey => FetchError::NotFound { uri },
            S3Error::AccessDenied => FetchError::AccessDenied { uri },
            S3Error::TooLarge { size, limit } => FetchError::TooLarge { uri, size, limit },
            S3Error::Unavailable(message) => FetchError::Unavailable { uri, message },
            S3Error::NoRoom {
                message,
                retry: true,
            } => FetchError::Busy { uri, message },
            S3Error::NoRoom {
                message,
                retry: false,
            } => FetchError::TooMuchAtOnce { uri, message },
        }
    }
}

/// Decodes inline image data; `field` names it in the error.
pub fn decode_base64(field: &str, data: &str) -> Result<Vec<u8>, FetchError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| FetchError::InvalidBase64 {
            field: field.to_string(),
            reason: e.to_string(),
        })
}

/// Parses `s3://bucket/key` into bucket and key. The key is everything
/// after the bucket, `?` included: keys may contain one, and a job pins a
/// version in its own field, not in a query.
pub fn parse_s3_uri(uri: &str) -> Result<(String, String), FetchError> {
    let rest = uri
        .trim()
        .strip_prefix("s3://")
        .ok_or_else(|| FetchError::InvalidUri {
            uri: shown(uri),
            reason: "expected s3://bucket/key".into(),
        })?;
    match Location::split_s3(rest) {
        Ok((bucket, key)) => Ok((bucket.to_string(), key.to_string())),
        Err(reason) => Err(FetchError::InvalidUri {
            uri: shown(uri),
            reason: reason.into(),
        }),
    }
}

/// A refused URI as error messages and logs repeat it: without its query
/// (a presigned URL carries its signature and credentials there) and cut
/// to a length worth reading.
fn shown(uri: &str) -> String {
    const MAX_CHARS: usize = 120;
    let bare = uri.split('?').next().unwrap_or_default();
    let mut out: String = bare.chars().take(MAX_CHARS).collect();
    if out.len() < uri.len() {
        out.push_str("...");
    }
    out
}

/// Parses a request's `s3://bucket/key` and checks it against the allow-list.
pub fn check_allowed(uri: &str, allowed: &[AllowedPrefix]) -> Result<(String, String), FetchError> {
    let (bucket, key) = parse_s3_uri(uri)?;
    if allowed.iter().any(|a| a.permits(&bucket, &key)) {
        return Ok((bucket, key));
    }
    let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
    Err(FetchError::NotAllowed {
        uri: uri.into(),
        allowed: if list.is_empty() {
            "empty".into()
        } else {
            list.join(", ")
        },
    })
}

/// Image bytes, with their share of the fetch budget: hold it until the
/// image has been classified.
#[derive(Debug)]
pub struct Input {
    /// The encoded image.
    pub bytes: Vec<u8>,
    /// The budget share; `None` for inline (base64) data, which the request
    /// body already bounds.
    pub held: Option<OwnedSemaphorePermit>,
}

impl Input {
    /// Bytes that came with the request or the message.
    pub fn inline(bytes: Vec<u8>) -> Input {
        Input { bytes, held: None }
    }
}

/// Reads input images from S3 within the size limit; built once, shared.
///
/// All reads of a process share one byte budget (`MAX_INPUT_BYTES_IN_FLIGHT`):
/// a download waits, once its size is known and before its body is read,
/// until the bytes it needs are free. Requests and jobs naming many large
/// objects then queue for memory instead of holding them all at once.
#[derive(Debug, Clone)]
pub struct InputFetcher {
    s3: Option<aws_sdk_s3::Client>,
    allowlist: Vec<AllowedPrefix>,
    max_bytes: u64,
    /// The budget, in KiB permits.
    in_flight: Arc<Semaphore>,
    /// Its size, in KiB.
    capacity_kib: u64,
    /// How long an HTTP request's read waits for room before `overloaded`.
    request_wait: Duration,
}

impl InputFetcher {
    /// A fetcher reading with `s3` (None: every S3 input is unavailable),
    /// at most `max_bytes` an object and `in_flight` bytes at once (at
    /// least one object's worth); a request waits `request_wait` for room.
    pub fn new(
        s3: Option<aws_sdk_s3::Client>,
        allowlist: Vec<AllowedPrefix>,
        max_bytes: u64,
        in_flight: u64,
        request_wait: Duration,
    ) -> InputFetcher {
        let kib = in_flight
            .max(max_bytes)
            .div_ceil(1024)
            .min(Semaphore::MAX_PERMITS as u64)
            .min(u64::from(u32::MAX));
        InputFetcher {
            s3,
            allowlist,
            max_bytes,
            in_flight: Arc::new(Semaphore::new(kib as usize)),
            capacity_kib: kib,
            request_wait,
        }
    }

    /// A request's `s3://` image: only from the allow-list, and only if
    /// room for it comes free within the request wait. `held`: bytes the
    /// request already holds; an image that would take it past the whole
    /// budget is refused at once (waiting could not help).
    pub async fn fetch_allowed(&self, uri: &str, held: u64) -> Result<Input, FetchError> {
        let (bucket, key) = check_allowed(uri, &self.allowlist)?;
        let object = ObjectRef {
            bucket: &bucket,
            key: &key,
            version_id: None,
        };
        self.fetch_within(object, Some((self.request_wait, held)))
            .await
    }

    /// A job's image (no allow-list: see the module docs), waiting as long
    /// as it takes for room: a batch's caller bounds the time.
    pub(crate) async fn fetch(&self, object: ObjectRef<'_>) -> Result<Input, FetchError> {
        self.fetch_within(object, None).await
    }

    /// `request`: how long to wait for room, and the bytes already held.
    async fn fetch_within(
        &self,
        object: ObjectRef<'_>,
        request: Option<(Duration, u64)>,
    ) -> Result<Input, FetchError> {
        let uri = match object.version_id {
            None => format!("s3://{}/{}", object.bucket, object.key),
            Some(v) => format!("s3://{}/{}?versionId={v}", object.bucket, object.key),
        };
        let Some(s3) = &self.s3 else {
            return Err(FetchError::Unavailable {
                uri,
                message: "no S3 client is configured".into(),
            });
        };
        let capacity = self.capacity_kib;
        let hold = |bytes: u64| {
            let kib = bytes.div_ceil(1024).clamp(1, capacity);
            let permits = self.in_flight.clone().acquire_many_owned(kib as u32);
            async move {
                let no_room = |message: String, retry| S3Error::NoRoom { message, retry };
                let Some((wait, held)) = request else {
                    return permits.await.map_err(|e| no_room(e.to_string(), true));
                };
                if kib + held.div_ceil(1024) > capacity {
                    return Err(no_room(
                        format!(
                            "with the {held} bytes before it, the request's images need more than \
                             MAX_INPUT_BYTES_IN_FLIGHT ({} bytes)",
                            capacity * 1024
                        ),
                        false,
                    ));
                }
                match tokio::time::timeout(wait, permits).await {
                    Ok(permit) => permit.map_err(|e| no_room(e.to_string(), true)),
                    Err(_) => Err(no_room(
                        format!(
                            "{bytes} bytes did not come free within {} s \
                             (MAX_INPUT_BYTES_IN_FLIGHT)",
                            wait.as_secs_f64()
                        ),
                        true,
                    )),
                }
            }
        };
        s3::get_object_held(s3, object, self.max_bytes, hold)
            .await
            .map(|(bytes, held)| Input {
                bytes,
                held: Some(held),
            })
            .map_err(|e| FetchError::from_s3(e, &uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::parse_allowlist;

    /// Regression: the refusal of a presigned URL repeated its signature and
    /// credentials in the error body (and the logs), and an over-long key
    /// was repeated whole.
    #[test]
    fn refused_uris_are_shown_without_query_and_cut_short() {
        let presigned =
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Credential=AKIA/x&X-Amz-Signature=abc";
        let e = parse_s3_uri(presigned).unwrap_err().to_string();
        assert!(e.contains("https://b.s3.amazonaws.com/k.jpg"), "{e}");
        assert!(!e.contains("Signature") && !e.contains("AKIA"), "{e}");
        let long = format!("s3://bucket/{}", "k".repeat(70_000));
        let e = parse_s3_uri(&long).unwrap_err();
        assert_eq!(e.code(), "invalid_s3_uri");
        assert!(e.to_string().len() < 400, "{}", e.to_string().len());
        assert!(e.to_string().contains("1,024 bytes"), "{e}");
    }

    #[test]
    fn allowlist_is_by_bucket_and_prefix() {
        let allowed = parse_allowlist("s3://images/in/, s3://other-bucket").unwrap();
        assert!(check_allowed("s3://images/in/cat.jpg", &allowed).is_ok());
        assert!(check_allowed("s3://other-bucket/any/thing.png", &allowed).is_ok());
        for denied in [
            "s3://images/out/cat.jpg",
            "s3://images/in/../out/x.jpg",
            "s3://imagesx/in/a.jpg",
        ] {
            assert_eq!(
                check_allowed(denied, &allowed).unwrap_err().code(),
                "s3_uri_not_allowed",
                "{denied}"
            );
        }
        assert_eq!(
            check_allowed("s3://images/in/a.jpg", &[])
                .unwrap_err()
                .code(),
            "s3_uri_not_allowed"
        );
        assert_eq!(
            check_allowed("http://x/y", &allowed).unwrap_err().code(),
            "invalid_s3_uri"
        );
    }

    #[test]
    fn base64_errors_name_the_field() {
        assert_eq!(decode_base64("\"image\"", " AAAA\n").unwrap(), [0, 0, 0]);
        let err = decode_base64("images[2]", "not base64!").unwrap_err();
        assert_eq!(err.code(), "invalid_base64");
        assert!(
            err.to_string().starts_with("images[2] is not valid base64"),
            "{err}"
        );
    }
}
