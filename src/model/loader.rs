//! Where model bytes come from (S3 or a local file) and how they are fetched:
//! size cap while streaming, sha256 check, retries with backoff (the SDK's
//! standard retry policy), and a clear error for each way it goes wrong.
//!
//! The MXNet original's users once had an S3 error page parsed as a model.
//! Here every failure of the fetch is an error of its own, and bytes that are
//! not an ONNX model fail as such, naming where they came from.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::aws::s3::{self, ObjectRef, S3Error};
use crate::config::Config;
use crate::error::ModelError;
use crate::location::Location;
use crate::model::{hex_sha256, labels_file_name, LoadOptions, Model, OnnxBytes};

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
        let started = Instant::now();
        let bytes = match &config.model {
            Location::File(path) => {
                OnnxBytes::Mapped(map_file("MODEL_URI", path, config.model_max_bytes)?)
            }
            location => OnnxBytes::Owned(
                self.fetch("MODEL_URI", location, config.model_max_bytes)
                    .await?
                    .bytes,
            ),
        };
        let download = started.elapsed();
        let mut verified = None;
        if let Some(expected) = &config.model_sha256 {
            let actual = hex_sha256(bytes.as_slice());
            if &actual != expected {
                return Err(LoadError::Checksum {
                    uri,
                    expected: expected.clone(),
                    actual,
                });
            }
            verified = Some(actual);
        }
        let (manifest, labels) = self.fetch_manifest_and_labels(config).await?;
        let manifest_used = manifest.is_some();
        let model = tokio::task::spawn_blocking(move || {
            Model::build(
                bytes,
                verified,
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
            download_ms = download.as_secs_f64() * 1000.0,
            optimize_ms = model.optimize_time().as_secs_f64() * 1000.0,
            model_fetches = self.model_fetches(),
            "model loaded"
        );
        Ok(Loaded {
            optimize: model.optimize_time(),
            model: Arc::new(model),
            download,
            manifest_used,
        })
    }

    /// The manifest (an explicit `MODEL_MANIFEST_URI` must exist; the implicit
    /// `.json` sibling of the model may not) and the labels file it names.
    async fn fetch_manifest_and_labels(
        &self,
        config: &Config,
    ) -> Result<(Option<Vec<u8>>, Option<String>), LoadError> {
        let (manifest_loc, required) = config.manifest_location();
        let manifest = match self
            .fetch("MODEL_MANIFEST_URI", &manifest_loc, 1 << 20)
            .await
        {
            Ok(f) => f.bytes,
            Err(LoadError::NoSuchKey { .. } | LoadError::File { .. }) if !required => {
                return Ok((None, None))
            }
            // A private bucket without s3:ListBucket says AccessDenied for a
            // missing key; the implicit manifest is optional, so go on.
            Err(LoadError::AccessDenied { .. }) if !required => return Ok((None, None)),
            Err(e) => return Err(e),
        };
        let labels = match labels_file_name(&manifest)? {
            Some(name) => {
                let loc = manifest_loc.sibling(&name);
                let f = self.fetch("MODEL_MANIFEST_URI", &loc, 16 << 20).await?;
                Some(String::from_utf8_lossy(&f.bytes).into_owned())
            }
            None => None,
        };
        Ok((Some(manifest), labels))
    }

    /// Reads one object or file, refusing more than `max_bytes`; `var`
    /// names the setting that pointed there, for the error message.
    pub async fn fetch(
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
                let object = ObjectRef {
                    bucket,
                    key,
                    version_id: version_id.as_deref(),
                };
                s3::get_object(client, object, max_bytes)
                    .await
                    .map_err(|e| LoadError::from_s3(e, var, bucket, location))?
            }
        };
        Ok(Fetched {
            bytes,
            elapsed: started.elapsed(),
        })
    }
}

impl LoadError {
    /// Adds to an S3 failure which setting pointed there and what to do.
    fn from_s3(e: S3Error, var: &'static str, bucket: &str, location: &Location) -> LoadError {
        let uri = location.to_string();
        match e {
            S3Error::NoSuchBucket => LoadError::NoSuchBucket {
                var,
                bucket: bucket.to_string(),
                uri,
            },
            S3Error::NoSuchKey => LoadError::NoSuchKey { var, uri },
            S3Error::AccessDenied => LoadError::AccessDenied { uri },
            S3Error::TooLarge { size, limit } => LoadError::TooLarge { uri, size, limit },
            S3Error::Unavailable(message) | S3Error::NoRoom { message, .. } => {
                LoadError::S3 { uri, message }
            }
        }
    }
}

fn read_file(var: &'static str, path: &Path, max_bytes: u64) -> Result<Vec<u8>, LoadError> {
    let io = file_error(var, path);
    check_size(path, std::fs::metadata(path).map_err(&io)?.len(), max_bytes)?;
    std::fs::read(path).map_err(io)
}

/// Maps a local model file rather than reading it: the bytes are the page
/// cache's own pages, prefaulted in one call, where reading copied them
/// into 14 MB of fresh memory faulted in page by page. Process start to
/// first prediction 61-62 -> 55-57 ms (`hyperfine -N -r 40 'onnx-lambda
/// predict photo.jpg'`, two alternating runs, AMD EPYC Zen 5).
fn map_file(var: &'static str, path: &Path, max_bytes: u64) -> Result<memmap2::Mmap, LoadError> {
    let io = file_error(var, path);
    let file = std::fs::File::open(path).map_err(&io)?;
    check_size(path, file.metadata().map_err(&io)?.len(), max_bytes)?;
    // SAFETY: a private read-only mapping, alive only while the model is
    // built (`load_with`). Truncating the file meanwhile would end the
    // process with SIGBUS, as it would any program mapping it; deployments
    // replace a model by writing a new file (new object, new inode).
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(io)?;
    check_size(path, map.len() as u64, max_bytes)?;
    Ok(map)
}

fn file_error<'p>(var: &'static str, path: &'p Path) -> impl Fn(std::io::Error) -> LoadError + 'p {
    move |source| LoadError::File {
        var,
        path: path.display().to_string(),
        source,
    }
}

fn check_size(path: &Path, size: u64, max_bytes: u64) -> Result<(), LoadError> {
    if size > max_bytes {
        return Err(LoadError::TooLarge {
            uri: path.display().to_string(),
            size,
            limit: max_bytes,
        });
    }
    Ok(())
}
