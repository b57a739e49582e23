//! The one S3 read: a GET that refuses more than a size cap (checked against
//! `Content-Length` and again while streaming, since a server need not send
//! one), retries a download that breaks off mid-stream (which the SDK's own
//! retries do not cover), and maps the SDK's errors once, to [`S3Error`].
//! The model loader and request inputs both read through it and add their
//! own context (which setting, which request) on top.

use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use thiserror::Error;

/// Attempts for a download that breaks off mid-stream.
const STREAM_ATTEMPTS: u32 = 3;
/// The longest pause between body chunks when the client sets no read timeout.
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// One object to read.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    /// Bucket.
    pub bucket: &'a str,
    /// Key.
    pub key: &'a str,
    /// A pinned version, if any.
    pub version_id: Option<&'a str>,
}

/// Why an S3 read failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum S3Error {
    /// The bucket does not exist (or is in another account or region).
    #[error("the bucket does not exist")]
    NoSuchBucket,
    /// The object, or that version of it, does not exist.
    #[error("the object does not exist")]
    NoSuchKey,
    /// The credentials may not read it.
    #[error("access denied")]
    AccessDenied,
    /// Larger than the cap.
    #[error("the object is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Its size, or the bytes read before giving up.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Anything else, after the SDK's retries: throttling, 5xx, network.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's `hold` found no room for the body: not in time
    /// (`retry`), or never.
    #[error("{message}")]
    NoRoom {
        /// Why.
        message: String,
        /// Whether room may come later.
        retry: bool,
    },
}

/// Reads one object, refusing more than `limit` bytes.
pub async fn get_object(
    client: &aws_sdk_s3::Client,
    object: ObjectRef<'_>,
    limit: u64,
) -> Result<Vec<u8>, S3Error> {
    get_object_held(client, object, limit, |_| async { Ok(()) })
        .await
        .map(|(bytes, ())| bytes)
}

/// [`get_object`], calling `hold(bytes)` once the object's size is known
/// (`limit` if S3 sends none) and before its body is read: the guard it
/// returns, given back with the bytes, is how a caller bounds the bytes of
/// all its downloads at once. A retried download holds afresh.
pub async fn get_object_held<G, F: Future<Output = Result<G, S3Error>>>(
    client: &aws_sdk_s3::Client,
    object: ObjectRef<'_>,
    limit: u64,
    hold: impl Fn(u64) -> F,
) -> Result<(Vec<u8>, G), S3Error> {
    let mut attempt = 1;
    loop {
        match get_once(client, object, limit, &hold).await {
            Err(Interrupted(message)) if attempt < STREAM_ATTEMPTS => {
                tracing::warn!(bucket = object.bucket, key = object.key, %message, attempt, "S3 download interrupted, retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                attempt += 1;
            }
            Err(Interrupted(message)) => return Err(S3Error::Unavailable(message)),
            Ok(result) => return result,
        }
    }
}

/// A download that broke off mid-stream: the one failure retried here.
struct Interrupted(String);

async fn get_once<G, F: Future<Output = Result<G, S3Error>>>(
    client: &aws_sdk_s3::Client,
    object: ObjectRef<'_>,
    limit: u64,
    hold: &impl Fn(u64) -> F,
) -> Result<Result<(Vec<u8>, G), S3Error>, Interrupted> {
    let response = client
        .get_object()
        .bucket(object.bucket)
        .key(object.key)
        .set_version_id(object.version_id.map(str::to_string))
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => return Ok(Err(map_sdk_error(e))),
    };
    let declared = response.content_length().unwrap_or(0).max(0) as u64;
    if declared > limit {
        return Ok(Err(S3Error::TooLarge {
            size: declared,
            limit,
        }));
    }
    let guard = match hold(if declared > 0 { declared } else { limit }).await {
        Ok(g) => g,
        Err(e) => return Ok(Err(e)),
    };
    let mut body = response.body;
    let mut bytes = Vec::with_capacity(declared as usize);
    let idle = client
        .config()
        .timeout_config()
        .and_then(|t| t.read_timeout())
        .unwrap_or(DEFAULT_IDLE);
    loop {
        let Ok(next) = tokio::time::timeout(idle, body.try_next()).await else {
            return Err(Interrupted(format!(
                "the download stalled for {} s",
                idle.as_secs_f64()
            )));
        };
        match next {
            Ok(Some(chunk)) => {
                let size = bytes.len() as u64 + chunk.len() as u64;
                if size > limit {
                    return Ok(Err(S3Error::TooLarge { size, limit }));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Ok((bytes, guard))),
            Err(e) => return Err(Interrupted(format!("the download was interrupted: {e}"))),
        }
    }
}

/// The one mapping from the SDK's errors.
fn map_sdk_error<E, R>(e: SdkError<E, R>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let code = e.code().map(str::to_string);
    match code.as_deref() {
        Some("NoSuchBucket") => S3Error::NoSuchBucket,
        Some("NoSuchKey" | "NoSuchVersion" | "NotFound") => S3Error::NoSuchKey,
        Some("AccessDenied" | "Forbidden") => S3Error::AccessDenied,
        _ => {
            let detail = match &e {
                SdkError::DispatchFailure(_) => {
                    "cannot reach S3 (network, endpoint or AWS_ENDPOINT_URL?)"
                }
                SdkError::TimeoutError(_) => "timed out",
                _ => "",
            };
            let message = match (code, e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c,
                _ => format!("{detail} {}", super::error_chain(&e))
                    .trim()
                    .to_string(),
            };
            S3Error::Unavailable(message)
        }
    }
}
