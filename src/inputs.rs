//! Images fetched by reference (`s3://bucket/key`) for a request: only from
//! buckets/prefixes on the allow-list (`S3_INPUT_ALLOWLIST`, empty by
//! default, so a public endpoint cannot be turned into a reader of
//! everything the function's role can see), and never more than
//! `MAX_INPUT_BYTES`.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use thiserror::Error;

use crate::lambda::App;
use crate::model::source::Location;

/// Why an input could not be fetched.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
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
    /// S3 failed (after the SDK's retries): throttling, 5xx, network.
    #[error("reading {uri} from S3 failed: {message}; retry later")]
    Unavailable {
        /// What was asked for.
        uri: String,
        /// What the SDK said.
        message: String,
    },
}

impl InputError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::InvalidUri { .. } => "invalid_s3_uri",
            InputError::NotAllowed { .. } => "s3_uri_not_allowed",
            InputError::NotFound { .. } => "s3_object_not_found",
            InputError::AccessDenied { .. } => "s3_access_denied",
            InputError::TooLarge { .. } => "input_too_large",
            InputError::Unavailable { .. } => "s3_unavailable",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, InputError::Unavailable { .. })
    }
}

/// One allowed `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPrefix {
    /// Bucket.
    pub bucket: String,
    /// Key prefix ("" allows the whole bucket).
    pub prefix: String,
}

impl std::fmt::Display for AllowedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Parses `S3_INPUT_ALLOWLIST`: comma-separated `s3://bucket[/prefix]`.
pub fn parse_allowlist(value: &str) -> Result<Vec<AllowedPrefix>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let rest = entry
                .strip_prefix("s3://")
                .ok_or_else(|| format!("{entry:?} does not start with s3://"))?;
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 || bucket.contains(['*', '?']) || prefix.contains(['*', '?']) {
                return Err(format!(
                    "{entry:?} is not s3://bucket or s3://bucket/prefix (no wildcards)"
                ));
            }
            Ok(AllowedPrefix {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        })
        .collect()
}

/// Parses a request's `s3://bucket/key` and checks the allow-list.
pub fn check_uri(uri: &str, allowed: &[AllowedPrefix]) -> Result<(String, String), InputError> {
    let (bucket, key) = match Location::parse("s3_uri", uri) {
        Ok(Location::S3 {
            bucket,
            key,
            version_id: None,
        }) => (bucket, key),
        Ok(_) => {
            return Err(InputError::InvalidUri {
                uri: uri.into(),
                reason: "expected s3://bucket/key".into(),
            })
        }
        Err(e) => {
            return Err(InputError::InvalidUri {
                uri: uri.into(),
                reason: e.expected,
            })
        }
    };
    // A key with ".." segments could walk out of a prefix in tools that
    // normalise paths; refuse it rather than reason about it.
    let permitted = !key.split('/').any(|s| s == "..")
        && allowed
            .iter()
            .any(|a| a.bucket == bucket && key.starts_with(&a.prefix));
    if !permitted {
        let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        return Err(InputError::NotAllowed {
            uri: uri.into(),
            allowed: if list.is_empty() {
                "empty".into()
            } else {
                list.join(", ")
            },
        });
    }
    Ok((bucket, key))
}

/// Fetches an allowed `s3://` image for `app`.
pub async fn fetch_s3(app: &App, uri: &str) -> Result<Vec<u8>, InputError> {
    let (bucket, key) = check_uri(uri, &app.config.s3_input_allowlist)?;
    let Some(s3) = &app.s3 else {
        return Err(InputError::Unavailable {
            uri: uri.into(),
            message: "no S3 client is configured".into(),
        });
    };
    get(s3, &bucket, &key, uri, app.classifier.limits().max_bytes).await
}

/// Reads one object, refusing more than `limit` bytes.
pub async fn get(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    uri: &str,
    limit: u64,
) -> Result<Vec<u8>, InputError> {
    let resp = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| map_sdk(e, uri))?;
    let size = resp.content_length().unwrap_or(0).max(0) as u64;
    if size > limit {
        return Err(InputError::TooLarge {
            uri: uri.into(),
            size,
            limit,
        });
    }
    let data = resp
        .body
        .collect()
        .await
        .map_err(|e| InputError::Unavailable {
            uri: uri.into(),
            message: format!("the download was interrupted: {e}"),
        })?;
    let bytes = data.into_bytes().to_vec();
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge {
            uri: uri.into(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

fn map_sdk<E, R>(e: SdkError<E, R>, uri: &str) -> InputError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.code() {
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound") => InputError::NotFound { uri: uri.into() },
        Some("AccessDenied" | "Forbidden") => InputError::AccessDenied { uri: uri.into() },
        _ => InputError::Unavailable {
            uri: uri.into(),
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_is_by_bucket_and_prefix() {
        let allowed = parse_allowlist("s3://images/in/, s3://other-bucket").unwrap();
        assert!(check_uri("s3://images/in/cat.jpg", &allowed).is_ok());
        assert!(check_uri("s3://other-bucket/any/thing.png", &allowed).is_ok());
        for denied in [
            "s3://images/out/cat.jpg",
            "s3://images/in/../out/x.jpg",
            "s3://imagesx/in/a.jpg",
        ] {
            assert_eq!(
                check_uri(denied, &allowed).unwrap_err().code(),
                "s3_uri_not_allowed",
                "{denied}"
            );
        }
        assert_eq!(
            check_uri("s3://images/in/a.jpg", &[]).unwrap_err().code(),
            "s3_uri_not_allowed"
        );
        assert_eq!(
            check_uri("http://x/y", &allowed).unwrap_err().code(),
            "invalid_s3_uri"
        );
        assert!(parse_allowlist("images/in").is_err());
        assert!(parse_allowlist("s3://b*/x").is_err());
    }
}
