//! onnx-lambda: ONNX image classification for AWS Lambda, SQS and the
//! command line.
//!
//! One pipeline, several doors. Modules are layered and each imports only
//! from layers below it (`tests/library/architecture.rs` checks this):
//!
//! 1. Doors: [`lambda`] (the Lambda runtime loop and event dispatch) and
//!    [`serve`] (the local HTTP server); the `worker` loop lives in
//!    [`jobs::worker`]; the CLI is the binary (`src/main.rs`, `src/cli/`).
//! 2. Protocols: [`http`] (router, `/predict`, KServe V2, Lambda HTTP
//!    events) and [`jobs`] (job and result messages, batch processing,
//!    Lambda SQS events, the worker, `submit`/`collect`).
//! 3. The application service: [`app`]'s [`App`], built once per process.
//! 4. The pipeline: `inputs` (image bytes by base64 or `s3://`),
//!    [`bench`](mod@bench), `classify` ([`Classifier`]), [`preprocess`], [`decode`].
//! 5. The model: [`model`] (load once from S3 or a file, optimise, run).
//! 6. Foundations: [`aws`] (clients, the one bounded S3 GET, SQS batching),
//!    [`config`] (every setting, validated once), `location` (`s3://` and
//!    file locations), `error` (coded errors and the one [`ErrorBody`]).

#![warn(missing_docs)]

pub mod app;
pub mod aws;
pub mod bench;
mod classify;
pub mod config;
pub mod decode;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod inputs;
pub mod jobs;
pub mod lambda;
mod location;
mod memory;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod preprocess;
pub mod serve;

pub use app::{App, AppCell};
pub use classify::{top_k, Classification, Classifier, Prediction, Timing};
pub use config::{bundled_model_path, Config, ConfigError, InputLimits};
pub use error::{ClassifyError, ErrorBody, ErrorCode, InputError, ModelError};
pub use inputs::{FetchError, InputFetcher};
pub use location::{parse_allowlist, AllowedPrefix, Location};
pub use model::{LoadError, LoadOptions, Model, ModelInfo, ModelLoader};
pub use ops::OperatorPool;
