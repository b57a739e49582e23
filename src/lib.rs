//! onnx-lambda: ONNX image classification for AWS Lambda, SQS and the
//! command line.
//!
//! One pipeline, several doors. The library holds the pipeline:
//! [`config`] reads and validates every setting once, [`model`] fetches
//! (S3 or file, [`model::source`]) and optimises the network once,
//! [`preprocess`] turns untrusted bytes into an input tensor within limits,
//! [`classify`] runs batches and produces top-k predictions, and [`bench`]
//! measures it all. The doors: [`lambda`] (the Lambda handler and the state
//! shared by its invocations) and the CLI. The binary (`src/main.rs`) only
//! parses the command line and wires these together.

#![warn(missing_docs)]

pub mod aws;
pub mod bench;
pub mod classify;
pub mod config;
pub mod error;
pub mod http;
pub mod inputs;
pub mod jobs;
pub mod lambda;
pub mod model;
pub mod preprocess;
pub mod serve;

pub use classify::{Classification, Classifier, Prediction, Timing};
pub use error::{ClassifyError, InputError, ModelError};
pub use model::{LoadOptions, Model, ModelInfo};
pub use preprocess::InputLimits;
