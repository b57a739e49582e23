//! From ONNX bytes to tract's graph.
//!
//! tract's own reader (`model_for_read`) copies the bytes into a buffer of
//! its own before decoding the protobuf, so three copies of the weights
//! were alive at once (the caller's bytes, that buffer, the protobuf):
//! 42 MB of MobileNetV2's 14 at the load's peak (heaptrack). Decoding from
//! the caller's bytes, which the caller drops before tract builds its
//! tensors, leaves two.
//!
//! Two copies is the floor with tract's parser: handing each initializer's
//! bytes to tract as in-memory "external data", freed tensor by tensor,
//! was tried and left the peak where it was (the bytes and the protobuf
//! are both alive while the protobuf is decoded). Peak heap 43 -> 34 MB;
//! peak RSS barely moves, because glibc keeps the freed pages: a fixed
//! 1 MiB mmap threshold during the load took peak RSS from 66-73 to 56-65
//! MB but made the load 5-7 ms slower (every buffer faulted in afresh),
//! so it is not done (cold start is billed, RSS is not).

use prost::Message;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::error::ModelError;

/// Decodes the ONNX protobuf straight from `onnx`.
pub(super) fn decode_proto(onnx: &[u8], source: &str) -> Result<ModelProto, ModelError> {
    if onnx.is_empty() {
        return Err(not_onnx(source, 0, "the file is empty".into()));
    }
    ModelProto::decode(onnx)
        .map_err(|e| not_onnx(source, onnx.len(), format!("Reading proto model: {e}")))
}

/// Translates the protobuf into a graph with exactly one input. `size` is
/// the length of the bytes it came from, for errors.
pub(super) fn parse_graph(
    proto: ModelProto,
    source: &str,
    size: usize,
) -> Result<InferenceModel, ModelError> {
    let graph = tract_onnx::onnx()
        .model_for_proto_model(&proto)
        .map_err(|e| {
            not_onnx(
                source,
                size,
                format!("Translating proto model to model: {e:#}"),
            )
        })?;
    if graph.inputs.len() != 1 {
        return Err(ModelError::Shape(format!(
            "it has {} inputs; an image classifier has exactly one",
            graph.inputs.len()
        )));
    }
    Ok(graph)
}

fn not_onnx(source: &str, size: usize, reason: String) -> ModelError {
    ModelError::NotOnnx {
        source_name: source.to_string(),
        size,
        reason,
    }
}
