//! Where model bytes come from (S3 or a local file) and how they are fetched:
//! size cap while streaming, sha256 check, retries with backoff (the SDK's
//! standard retry policy), and a clear error for each way it goes wrong.
//!
//! The MXNet original's users once had an S3 error page parsed as a model.
//! Here every failure of the fetch is an error of its own, and bytes that are
//! not an ONNX model fail as such, naming where they came from.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::error::ModelError;
use crate::model::{hex_sha256, labels_file_name, LoadOptions, Model};

/// A place holding model, manifest or labels bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 object, optionally a specific version.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
        /// `?versionId=` pin, for reproducible deployments.
        version_id: Option<String>,
    },
    /// A local file.
    File(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3 {
                bucket,
                key,
                version_id: Some(v),
            } => write!(f, "s3://{bucket}/{key}?versionId={v}"),
            Location::S3 { bucket, key, .. } => write!(f, "s3://{bucket}/{key}"),
            Location::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Location {
    /// Parses `s3://bucket/key[?versionId=V]`, `file:///path` or a plain
    /// path; `var` names the setting in errors.
    pub fn parse(var: &'static str, value: &str) -> Result<Location, ConfigError> {
        let bad = |expected: &str| ConfigError {
            var,
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let value = value.trim();
        if let Some(rest) = value.strip_prefix("s3://") {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            let (bucket, key) = path
                .split_once('/')
                .ok_or_else(|| bad("expected s3://bucket/key: the key is missing"))?;
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !bucket_ok {
                return Err(bad(
                    "expected s3://bucket/key with a valid bucket name (3-63 lower-case letters, digits, dots, hyphens)",
                ));
            }
            if key.is_empty() || key.ends_with('/') {
                return Err(bad(
                    "expected s3://bucket/key: the key must name an object, not a prefix",
                ));
            }
            let version_id = match query {
                None => None,
                Some(q) => match q.strip_prefix("versionId=") {
                    Some(v) if !v.is_empty() && !v.contains('&') => Some(v.to_string()),
                    _ => {
                        return Err(bad(
                            "expected s3://bucket/key?versionId=VERSION as the only query",
                        ))
                    }
                },
            };
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
                version_id,
            });
        }
        if value.contains("://") && !value.starts_with("file://") {
            return Err(bad(
                "expected s3://bucket/key, file:///path or a local path",
            ));
        }
        Ok(Location::File(crate::config::local_path(value)))
    }

    /// The same place with another extension (`model.onnx` -> `model.json`);
    /// a version pin is dropped, since it belongs to the model object.
    pub fn with_extension(&self, ext: &str) -> Location {
        match self {
            Location::S3 { bucket, key, .. } => {
                let stem = match key.rsplit_once('.') {
                    Some((stem, e)) if !e.contains('/') => stem,
                    _ => key.as_str(),
                };
                Location::S3 {
                    bucket: bucket.clone(),
                    key: format!("{stem}.{ext}"),
                    version_id: None,
                }
            }
            Location::File(p) => Location::File(p.with_extension(ext)),
        }
    }

    /// A file named `name` in the same folder / prefix.
    pub fn sibling(&self, name: &str) -> Location {
        match self {
            Location::S3 { bucket, key, .. } => {
                let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
                let key = if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                };
                Location::S3 {
                    bucket: bucket.clone(),
                    key,
                    version_id: None,
                }
            }
            Location::File(p) => Location::File(p.parent().unwrap_or(Path::new(".")).join(name)),
        }
    }
}

/// Why the model could not be fetched or built.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The bucket does not exist (or is in another account / region).
    #[error("S3 bucket {bucket:?} does not exist (reading {uri}): check the bucket name in {var} and the region (AWS_REGION)")]
    NoSuchBucket {
        /// Which setting pointed there.
        var: &'static str,
        /// The bucket.
        bucket: String,
        /// The full location.
        uri: String,
    },
    /// The object (or that version of it) does not exist.
    #[error("S3 object {uri} does not exist: upload it or fix {var}")]
    NoSuchKey {
        /// Which setting pointed there.
        var: &'static str,
        /// The full location.
        uri: String,
    },
    /// The credentials may not read the object.
    #[error("access denied reading {uri}: grant s3:GetObject on it to the function's role (and s3:ListBucket to tell a missing key from a denial)")]
    AccessDenied {
        /// The full location.
        uri: String,
    },
    /// Any other S3 failure, after the SDK's retries.
    #[error("reading {uri} from S3 failed after retries: {message}")]
    S3 {
        /// The full location.
        uri: String,
        /// What the SDK said, with the error code when there is one.
        message: String,
    },
    /// A local file could not be read.
    #[error("cannot read {path}: {source}; fix {var} or the file's permissions")]
    File {
        /// Which setting pointed there.
        var: &'static str,
        /// The path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The object is larger than the configured cap.
    #[error("{uri} is {size} bytes, more than MODEL_MAX_BYTES={limit}: raise the limit if this is really the model")]
    TooLarge {
        /// The full location.
        uri: String,
        /// Its size (or the bytes read before giving up).
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The bytes do not have the expected digest.
    #[error("{uri} has sha256 {actual}, but MODEL_SHA256 expects {expected}: the object changed or the digest is wrong")]
    Checksum {
        /// The full location.
        uri: String,
        /// `MODEL_SHA256`.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// An `s3://` location was configured but no S3 client was supplied.
    #[error("{uri} is on S3 but no S3 client was configured")]
    NoS3Client {
        /// The full location.
        uri: String,
    },
    /// The bytes arrived but are not a usable model / manifest / labels.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One fetched object with the facts worth logging.
#[derive(Debug)]
pub struct Fetched {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// How long the download (or file read) took.
    pub elapsed: Duration,
}

/// Fetches and builds models; counts model downloads so tests (and logs)
/// can prove a container loads its model exactly once.
#[derive(Debug, Default)]
pub struct ModelLoader {
    s3: Option<aws_sdk_s3::Client>,
    model_fetches: AtomicUsize,
}

/// A loaded model with what the load cost, for the start-up log line.
#[derive(Debug)]
pub struct Loaded {
    /// The model, ready to share.
    pub model: Arc<Model>,
    /// Time to fetch the model bytes.
    pub download: Duration,
    /// Time to parse and optimise the graph.
    pub optimize: Duration,
    /// Whether a manifest was found and used.
    pub manifest_used: bool,
}

impl ModelLoader {
    /// A loader that reads `s3://` locations with `s3` (None: local files only).
    pub fn new(s3: Option<aws_sdk_s3::Client>) -> ModelLoader {
        ModelLoader {
            s3,
            model_fetches: AtomicUsize::new(0),
        }
    }

    /// How many times the model bytes were fetched by this loader.
    pub fn model_fetches(&self) -> usize {
        self.model_fetches.load(Ordering::SeqCst)
    }

    /// Fetches the model, verifies size and digest, fetches the manifest
    /// and labels next to it, and builds the optimised model.
    pub async fn load(&self, config: &Config) -> Result<Loaded, LoadError> {
        self.load_with(config, LoadOptions::default()).await
    }

    /// [`load`](Self::load) with explicit compile options (the benchmark's
    /// fixed batch sizes).
    pub async fn load_with(
        &self,
        config: &Config,
        options: LoadOptions,
    ) -> Result<Loaded, LoadError> {
        let uri = config.model.to_string();
        self.model_fetches.fetch_add(1, Ordering::SeqCst);
        let fetched = self
            .fetch("MODEL_URI", &config.model, config.model_max_bytes)
            .await?;
        if let Some(expected) = &config.model_sha256 {
            let actual = hex_sha256(&fetched.bytes);
            if &actual != expected {
                return Err(LoadError::Checksum {
                    uri,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let (manifest_loc, required) = config.manifest_location();
        let manifest = match self
            .fetch("MODEL_MANIFEST_URI", &manifest_loc, 1 << 20)
            .await
        {
            Ok(f) => Some(f.bytes),
            Err(LoadError::NoSuchKey { .. } | LoadError::File { .. }) if !required => None,
            // A private bucket without s3:ListBucket says AccessDenied for a
            // missing key; the implicit manifest is optional, so go on.
            Err(LoadError::AccessDenied { .. }) if !required => None,
            Err(e) => return Err(e),
        };
        let labels = match manifest.as_deref().map(labels_file_name).transpose()? {
            Some(Some(name)) => {
                let loc = manifest_loc.sibling(&name);
                let f = self.fetch("MODEL_MANIFEST_URI", &loc, 16 << 20).await?;
                Some(String::from_utf8_lossy(&f.bytes).into_owned())
            }
            _ => None,
        };
        let manifest_used = manifest.is_some();
        let bytes = fetched.bytes;
        let model = tokio::task::spawn_blocking(move || {
            Model::from_bytes(
                &bytes,
                &uri,
                manifest.as_deref(),
                labels.as_deref(),
                options,
            )
        })
        .await
        .map_err(|e| ModelError::Optimize(format!("the loading task failed: {e}")))??;
        let info = model.info();
        tracing::info!(
            source = %info.source,
            bytes = info.size_bytes,
            sha256 = %info.sha256,
            model = %info.name,
            version = %info.version,
            manifest = manifest_used,
            download_ms = fetched.elapsed.as_secs_f64() * 1000.0,
            optimize_ms = model.optimize_time().as_secs_f64() * 1000.0,
            model_fetches = self.model_fetches(),
            "model loaded"
        );
        Ok(Loaded {
            optimize: model.optimize_time(),
            model: Arc::new(model),
            download: fetched.elapsed,
            manifest_used,
        })
    }

    /// Reads one object or file, refusing more than `max_bytes`. A download
    /// that breaks off mid-stream (which the SDK does not retry) is tried
    /// again, up to three times, with backoff.
    pub async fn fetch(
        &self,
        var: &'static str,
        location: &Location,
        max_bytes: u64,
    ) -> Result<Fetched, LoadError> {
        let mut attempt = 1;
        loop {
            match self.fetch_once(var, location, max_bytes).await {
                Err(LoadError::S3 { uri, message }) if attempt < 3 => {
                    tracing::warn!(%uri, %message, attempt, "fetch failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn fetch_once(
        &self,
        var: &'static str,
        location: &Location,
        max_bytes: u64,
    ) -> Result<Fetched, LoadError> {
        let started = Instant::now();
        let bytes = match location {
            Location::File(path) => read_file(var, path, max_bytes)?,
            Location::S3 {
                bucket,
                key,
                version_id,
            } => {
                let client = self.s3.as_ref().ok_or_else(|| LoadError::NoS3Client {
                    uri: location.to_string(),
                })?;
                get_object(
                    client,
                    var,
                    bucket,
                    key,
                    version_id.as_deref(),
                    max_bytes,
                    location,
                )
                .await?
            }
        };
        Ok(Fetched {
            bytes,
            elapsed: started.elapsed(),
        })
    }
}

fn read_file(var: &'static str, path: &Path, max_bytes: u64) -> Result<Vec<u8>, LoadError> {
    let io = |source| LoadError::File {
        var,
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > max_bytes {
        return Err(LoadError::TooLarge {
            uri: path.display().to_string(),
            size,
            limit: max_bytes,
        });
    }
    std::fs::read(path).map_err(io)
}

async fn get_object(
    client: &aws_sdk_s3::Client,
    var: &'static str,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    max_bytes: u64,
    location: &Location,
) -> Result<Vec<u8>, LoadError> {
    let uri = location.to_string();
    let response = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version_id.map(str::to_string))
        .send()
        .await
        .map_err(|e| s3_error(e, var, bucket, &uri))?;
    let declared = response.content_length().unwrap_or(0).max(0) as u64;
    if declared > max_bytes {
        return Err(LoadError::TooLarge {
            uri,
            size: declared,
            limit: max_bytes,
        });
    }
    let mut body = response.body;
    let mut bytes = Vec::with_capacity(declared as usize);
    loop {
        match body.try_next().await {
            Ok(Some(chunk)) => {
                if bytes.len() as u64 + chunk.len() as u64 > max_bytes {
                    return Err(LoadError::TooLarge {
                        uri,
                        size: bytes.len() as u64 + chunk.len() as u64,
                        limit: max_bytes,
                    });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(LoadError::S3 {
                    uri,
                    message: format!("the download was interrupted: {e}"),
                })
            }
        }
    }
    Ok(bytes)
}

/// Maps an S3 failure to the error that says what to do about it.
fn s3_error<E, R>(e: SdkError<E, R>, var: &'static str, bucket: &str, uri: &str) -> LoadError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().map(str::to_string);
    match code.as_deref() {
        Some("NoSuchBucket") => LoadError::NoSuchBucket {
            var,
            bucket: bucket.to_string(),
            uri: uri.to_string(),
        },
        Some("NoSuchKey" | "NoSuchVersion" | "NotFound") => LoadError::NoSuchKey {
            var,
            uri: uri.to_string(),
        },
        Some("AccessDenied" | "Forbidden") => LoadError::AccessDenied {
            uri: uri.to_string(),
        },
        _ => {
            let detail = match &e {
                SdkError::DispatchFailure(_) => {
                    "cannot reach S3 (network, endpoint or AWS_ENDPOINT_URL?)".to_string()
                }
                SdkError::TimeoutError(_) => "timed out".to_string(),
                _ => String::new(),
            };
            let message = match (code, e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c,
                _ => format!("{detail} {}", aws_sdk_s3::error::DisplayErrorContext(&e))
                    .trim()
                    .to_string(),
            };
            LoadError::S3 {
                uri: uri.to_string(),
                message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_file_and_plain_locations() {
        assert_eq!(
            Location::parse("MODEL_URI", "s3://my-bucket/a/b/model.onnx?versionId=v1").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                key: "a/b/model.onnx".into(),
                version_id: Some("v1".into())
            }
        );
        assert_eq!(
            Location::parse("MODEL_URI", "file:///opt/m.onnx").unwrap(),
            Location::File("/opt/m.onnx".into())
        );
        assert_eq!(
            Location::parse("MODEL_URI", "models/m.onnx").unwrap(),
            Location::File("models/m.onnx".into())
        );
        for bad in [
            "s3://",
            "s3://b",
            "s3://Bad_Bucket/k",
            "s3://bucket/",
            "s3://bucket/k?x=1",
            "http://h/m",
        ] {
            assert!(Location::parse("MODEL_URI", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_and_labels_sit_next_to_the_model() {
        let m = Location::parse("MODEL_URI", "s3://b1b/zoo/v2/model.onnx?versionId=9").unwrap();
        assert_eq!(
            m.with_extension("json").to_string(),
            "s3://b1b/zoo/v2/model.json"
        );
        assert_eq!(
            m.sibling("synset.txt").to_string(),
            "s3://b1b/zoo/v2/synset.txt"
        );
        let top = Location::parse("MODEL_URI", "s3://b1b/model").unwrap();
        assert_eq!(
            top.with_extension("json").to_string(),
            "s3://b1b/model.json"
        );
        assert_eq!(top.sibling("l.txt").to_string(), "s3://b1b/l.txt");
        let f = Location::File("/m/x.onnx".into());
        assert_eq!(f.sibling("l.txt"), Location::File("/m/l.txt".into()));
    }
}
