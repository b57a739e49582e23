//! Errors shared by every door (CLI, HTTP, SQS).
//!
//! Each variant carries a stable, machine-readable [`code`](InputError::code)
//! so that clients can branch on it, and a message that says what went wrong
//! and what to do about it. The doors map these to their own wire format in one
//! place each.

use thiserror::Error;

/// Why one input image could not be classified.
///
/// These are caused by the input, not by the service: retrying the same
/// bytes gives the same error, so queue consumers treat them as permanent.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    /// Zero bytes were supplied.
    #[error("the input is empty: send the encoded bytes of an image (JPEG, PNG, WebP, GIF, BMP, TIFF or PNM)")]
    Empty,
    /// More encoded bytes than the configured limit.
    #[error("the input is {actual} bytes, more than the limit of {limit} bytes: send a smaller image or raise MAX_INPUT_BYTES")]
    TooManyBytes {
        /// Size of the input.
        actual: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The bytes are not in a format we decode.
    #[error("the input is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF, PNM){detail}")]
    UnsupportedFormat {
        /// Extra context, e.g. the format that was detected; starts with ": " when present.
        detail: String,
    },
    /// The format was recognised but the data is damaged or truncated.
    #[error("the image could not be decoded, it is truncated or corrupt: {0}")]
    Corrupt(String),
    /// The image declares more pixels than the configured limit.
    #[error("the image is {width}x{height} ({pixels} pixels), more than the limit of {limit} pixels: downscale it or raise MAX_IMAGE_PIXELS")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// width * height.
        pixels: u64,
        /// Configured limit.
        limit: u64,
    },
}

impl InputError {
    /// Stable code for clients and result messages; never change an existing one.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Empty => "empty_input",
            InputError::TooManyBytes { .. } => "input_too_large",
            InputError::UnsupportedFormat { .. } => "unsupported_format",
            InputError::Corrupt(_) => "corrupt_image",
            InputError::TooManyPixels { .. } => "image_too_large",
        }
    }
}

/// Why a model could not be loaded or run.
///
/// Loading errors happen once, at start-up, and stop the process with a
/// clear message; inference errors on a loaded model are bugs or resource
/// exhaustion and are reported as internal errors.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The model or manifest file could not be read.
    #[error("cannot read {what} at {path}: {source}")]
    Io {
        /// "model", "manifest" or "labels".
        what: &'static str,
        /// Where we looked.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model tract can load (an S3 error page, a
    /// truncated upload, a TensorFlow file...).
    #[error("{source_name} is not a loadable ONNX model ({size} bytes): {reason}")]
    NotOnnx {
        /// Where the bytes came from.
        source_name: String,
        /// How many bytes there were.
        size: usize,
        /// What tract said.
        reason: String,
    },
    /// The manifest is not valid JSON or has impossible values.
    #[error("invalid model manifest {path}: {reason}")]
    Manifest {
        /// Where the manifest came from.
        path: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The model's input or output does not fit an image classifier.
    #[error("the model does not look like an image classifier: {0}")]
    Shape(String),
    /// The labels file does not match the model output.
    #[error("labels file {path} has {labels} labels but the model outputs {classes} classes: use the labels the model was trained with")]
    Labels {
        /// Where the labels came from.
        path: String,
        /// How many labels were read.
        labels: usize,
        /// How many classes the model outputs.
        classes: usize,
    },
    /// tract failed while optimising the graph.
    #[error("the model could not be optimised for inference: {0}")]
    Optimize(String),
    /// tract failed while running a loaded model.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Why one classification failed: the input's fault or the service's.
#[derive(Debug, Error)]
pub enum ClassifyError {
    /// Bad input: permanent, report to the caller as a 4xx / error result.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The model failed: internal error.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ClassifyError {
    /// Stable code, as in [`InputError::code`]; `inference_failed` for model errors.
    pub fn code(&self) -> &'static str {
        match self {
            ClassifyError::Input(e) => e.code(),
            ClassifyError::Model(_) => "inference_failed",
        }
    }
}
