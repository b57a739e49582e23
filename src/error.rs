//! Errors below the doors, and the one error body every door sends.
//!
//! Each error type covers one concern and gives every variant a stable,
//! machine-readable [`code`](ErrorCode::code) so clients can branch on it,
//! with a message that says what went wrong and what to do about it. The
//! doors never format errors themselves: they send an [`ErrorBody`], and
//! `http::error` is the one place that picks status codes.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An error with a stable code. Codes are part of the API: never change one.
pub trait ErrorCode: std::fmt::Display {
    /// The stable, machine-readable code.
    fn code(&self) -> &'static str;
}

/// `{"code", "message"}`: how every door reports one failure (HTTP bodies,
/// direct invocations, SQS error results, CLI JSON lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl ErrorBody {
    /// A body from a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The body of any coded error.
    pub fn of(e: &impl ErrorCode) -> ErrorBody {
        ErrorBody::new(e.code(), e.to_string())
    }

    /// `{"error": {"code", "message"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

/// What a caught panic said, for an `internal` error message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// A configuration value that cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{var}={value:?} is invalid: {expected}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault.
    pub var: &'static str,
    /// The value it had.
    pub value: String,
    /// What is allowed instead.
    pub expected: String,
}

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
    /// Decoding the image would hold more memory than the configured limit
    /// (deep or many-channel pixels, a progressive JPEG's coefficients).
    #[error("decoding this {width}x{height} {kind} image needs about {} MiB, more than the limit of {} MiB: downscale it, save it with 8 bits per channel (or as a baseline JPEG), or raise MAX_DECODE_BYTES", bytes >> 20, limit >> 20)]
    TooMuchMemory {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// What makes it costly, e.g. "16-bit RGBA Tiff".
        kind: String,
        /// The decode's estimated peak, in bytes.
        bytes: u64,
        /// Configured limit (`MAX_DECODE_BYTES`).
        limit: u64,
    },
}

impl ErrorCode for InputError {
    fn code(&self) -> &'static str {
        match self {
            InputError::Empty => "empty_input",
            InputError::TooManyBytes { .. } => "input_too_large",
            InputError::UnsupportedFormat { .. } => "unsupported_format",
            InputError::Corrupt(_) => "corrupt_image",
            InputError::TooManyPixels { .. } | InputError::TooMuchMemory { .. } => {
                "image_too_large"
            }
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
    /// The work itself failed (a worker thread died): internal error.
    #[error("{0}")]
    Internal(String),
    /// Classifying this input panicked: a bug this input triggers, so
    /// retrying it would panic again.
    #[error("{0}")]
    Panicked(String),
}

impl ErrorCode for ClassifyError {
    /// The input's code, or `inference_failed` for model errors.
    fn code(&self) -> &'static str {
        match self {
            ClassifyError::Input(e) => e.code(),
            ClassifyError::Model(_) => "inference_failed",
            ClassifyError::Internal(_) | ClassifyError::Panicked(_) => "internal",
        }
    }
}
