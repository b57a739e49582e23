//! onnx-lambda: ONNX image classification for AWS Lambda, SQS and the
//! command line.
//!
//! One pipeline, several doors. The library holds the pipeline:
//! [`model`] loads and optimises the network once, [`preprocess`] turns
//! untrusted bytes into an input tensor within limits, [`classify`] runs
//! batches and produces top-k predictions, and [`bench`] measures it all.
//! The binary (`src/main.rs`) only parses the command line and wires these
//! together.

#![warn(missing_docs)]

pub mod bench;
pub mod classify;
pub mod error;
pub mod model;
pub mod preprocess;

pub use classify::{Classification, Classifier, Prediction, Timing};
pub use error::{ClassifyError, InputError, ModelError};
pub use model::{LoadOptions, Model, ModelInfo};
pub use preprocess::InputLimits;
