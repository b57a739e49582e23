//! From ONNX bytes to tract's graph, holding one copy of the weights at a
//! time where tract's own path holds two or three.
//!
//! tract's reader (`model_for_read`) copies the bytes into a buffer of its
//! own before decoding the protobuf, then builds every initializer's
//! tensor while the protobuf still holds its bytes. Here:
//! - the protobuf is decoded straight from the caller's bytes, and when
//!   those are a mapped file, each MiB already decoded (and hashed) is
//!   handed back to the kernel as the decode goes ([`Releasing`]);
//! - each initializer's bytes are moved out of the protobuf before tract
//!   parses it, and handed to tract as "external data" through its
//!   [`ModelDataResolver`] hook, so each is freed as soon as its tensor is
//!   built ([`Detached`]).
//!
//! The load's peak heap went from 29 to 20 MB (`valgrind --tool=massif`
//! on `predict`), the cold process's peak RSS from 54.2 to 53.0 MiB (six
//! alternating runs). The load's own peak is now in tract's compile
//! stages, whose heap is 15-20 MB live but about 25 MiB resident (glibc
//! keeps what each rewrite frees), and the process's comes later, at the
//! first prediction (docs/performance.md, "Memory while loading"). An S3 download is
//! heap, not a file mapping, so its pages stay until the decode ends.

use std::path::Path;
use std::sync::{Arc, Mutex};

use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::tensor_proto::DataLocation;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, format_err};

use crate::error::ModelError;

/// How much of a mapped model is decoded or hashed between two releases.
const RELEASE_STEP: usize = 1 << 20;

/// Decodes the ONNX protobuf straight from `onnx`. `file_backed` says
/// `onnx` lies in a private read-only file mapping, whose pages may be
/// released once decoded.
pub(super) fn decode_proto(
    onnx: &[u8],
    source: &str,
    file_backed: bool,
) -> Result<ModelProto, ModelError> {
    if onnx.is_empty() {
        return Err(not_onnx(source, 0, "the file is empty".into()));
    }
    let buf = Releasing {
        bytes: onnx,
        read: 0,
        released: 0,
        file_backed,
    };
    ModelProto::decode(buf)
        .map_err(|e| not_onnx(source, onnx.len(), format!("Reading proto model: {e}")))
}

/// The lower-case hex sha256 of `onnx`, releasing its pages as
/// [`decode_proto`] does (the two run side by side).
pub(super) fn sha256(onnx: &[u8], file_backed: bool) -> String {
    let mut hasher = Sha256::new();
    for part in onnx.chunks(RELEASE_STEP) {
        hasher.update(part);
        if file_backed {
            // SAFETY: the caller says `onnx` is a file mapping.
            unsafe { crate::memory::release_file_pages(part) };
        }
    }
    super::hex(&hasher.finalize())
}

/// The bytes being decoded, as prost reads them.
struct Releasing<'a> {
    bytes: &'a [u8],
    read: usize,
    released: usize,
    file_backed: bool,
}

impl prost::bytes::Buf for Releasing<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.read
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.read..]
    }

    fn advance(&mut self, n: usize) {
        assert!(n <= self.remaining(), "advance past the end of the model");
        self.read += n;
        if self.file_backed && self.read - self.released >= RELEASE_STEP {
            // SAFETY: `file_backed` says the bytes are a file mapping.
            unsafe { crate::memory::release_file_pages(&self.bytes[self.released..self.read]) };
            self.released = self.read;
        }
    }
}

/// Translates the protobuf into a graph with exactly one input. `size` is
/// the length of the bytes it came from, for errors.
pub(super) fn parse_graph(
    mut proto: ModelProto,
    source: &str,
    size: usize,
) -> Result<InferenceModel, ModelError> {
    let translate = |e: TractError| {
        not_onnx(
            source,
            size,
            format!("Translating proto model to model: {e:#}"),
        )
    };
    let mut onnx = tract_onnx::onnx();
    onnx.provider = Arc::new(Detached::from(&mut proto).map_err(translate)?);
    // The directory is "/" and each initializer's location "." (which tract
    // checks exist and resolve inside it): `Detached` ignores the path.
    let parsed = onnx.parse(&proto, Some("/")).map_err(translate)?;
    drop(proto);
    if !parsed.unresolved_inputs.is_empty() {
        return Err(translate(format_err!(
            "Could not resolve inputs at top-level: {:?}",
            parsed.unresolved_inputs
        )));
    }
    let graph = parsed.model;
    if graph.inputs.len() != 1 {
        return Err(ModelError::Shape(format!(
            "it has {} inputs; an image classifier has exactly one",
            graph.inputs.len()
        )));
    }
    Ok(graph)
}

/// The graph's initializers' bytes, moved out of the protobuf; tract asks
/// for each once, by index (the "offset" of its external data), and takes
/// it.
struct Detached(Mutex<Vec<Option<Vec<u8>>>>);

impl Detached {
    /// Moves the bytes out of every initializer of the main graph that has
    /// raw bytes, marking it as external data. A model that already uses
    /// external data is refused: it needs files beside it, and a model here
    /// is one object.
    fn from(proto: &mut ModelProto) -> TractResult<Detached> {
        let mut table = Vec::new();
        let Some(graph) = proto.graph.as_mut() else {
            return Ok(Detached(Mutex::new(table)));
        };
        for init in &mut graph.initializer {
            ensure!(
                init.data_location != Some(DataLocation::External as i32),
                "initializer {:?} is stored in an external file; onnx-lambda needs the \
                 weights inside the .onnx file (save the model without external data)",
                init.name
            );
            if init.raw_data.is_empty() {
                continue;
            }
            let entry = |key: &str, value: String| StringStringEntryProto {
                key: key.into(),
                value,
            };
            init.external_data = vec![
                entry("location", ".".into()),
                entry("offset", table.len().to_string()),
                entry("length", init.raw_data.len().to_string()),
            ];
            init.data_location = Some(DataLocation::External as i32);
            table.push(Some(std::mem::take(&mut init.raw_data)));
        }
        Ok(Detached(Mutex::new(table)))
    }
}

impl ModelDataResolver for Detached {
    /// Only the locations [`Detached::from`] wrote ("." in "/") are
    /// served: a tensor of a subgraph naming a real file is refused, not
    /// read.
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        path: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        ensure!(
            path == Path::new("/"),
            "tensor data in an external file ({path:?}) is not supported: \
             save the model with its weights inside the .onnx file"
        );
        let mut table = self.0.lock().map_err(|_| format_err!("poisoned"))?;
        let bytes = table
            .get_mut(offset)
            .and_then(Option::take)
            .ok_or_else(|| format_err!("initializer {offset} was asked for twice"))?;
        ensure!(
            length.is_none_or(|l| l == bytes.len()),
            "initializer {offset}: wrong length"
        );
        *buf = bytes;
        Ok(())
    }
}

fn not_onnx(source: &str, size: usize, reason: String) -> ModelError {
    ModelError::NotOnnx {
        source_name: source.to_string(),
        size,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, TensorProto};

    /// Resident bytes of the mapping that holds `bytes` (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn resident(bytes: &[u8]) -> usize {
        let at = bytes.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&at);
                    continue;
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("Rss:") {
                    return kb
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<usize>()
                        .unwrap()
                        << 10;
                }
            }
        }
        panic!("no mapping holds {at:#x}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_model_gives_its_pages_back_and_still_reads_the_same() {
        let path = crate::config::bundled_model_path();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the bundled model is not written while the tests run.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.unwrap();
        assert!(resident(&map) > map.len() / 2, "populate maps the file in");
        let digest = sha256(&map, true);
        let proto = decode_proto(&map, "bundled", true).unwrap();
        let left = resident(&map);
        assert!(
            left < map.len() / 8,
            "{left} of {} bytes still resident",
            map.len()
        );
        let read = std::fs::read(&path).unwrap();
        assert_eq!(digest, crate::model::hex_sha256(&read));
        assert!(
            map[..] == read[..],
            "released pages read back from the file"
        );
        assert!(proto == decode_proto(&read, "bundled", false).unwrap());
    }

    #[test]
    fn a_model_with_external_data_is_refused_by_name() {
        let init = TensorProto {
            name: "conv1.weight".into(),
            data_type: 1,
            dims: vec![1],
            data_location: Some(DataLocation::External as i32),
            external_data: vec![StringStringEntryProto {
                key: "location".into(),
                value: "weights.bin".into(),
            }],
            ..TensorProto::default()
        };
        let proto = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![init],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        };
        let err = parse_graph(proto, "m.onnx", 10).unwrap_err().to_string();
        assert!(
            err.contains("\"conv1.weight\" is stored in an external file"),
            "{err}"
        );
    }

    fn one_initializer_of_four_bytes() -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                initializer: vec![TensorProto {
                    raw_data: vec![1, 2, 3, 4],
                    ..TensorProto::default()
                }],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }

    #[test]
    fn each_initializer_is_served_once() {
        let mut proto = one_initializer_of_four_bytes();
        let detached = Detached::from(&mut proto).unwrap();
        let init = &proto.graph.as_ref().unwrap().initializer[0];
        assert!(init.raw_data.is_empty());
        assert_eq!(init.data_location, Some(DataLocation::External as i32));
        let mut buf = Vec::new();
        detached
            .read_bytes_from_path(&mut buf, Path::new("/"), 0, Some(4))
            .unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        let again = detached.read_bytes_from_path(&mut buf, Path::new("/"), 0, Some(4));
        assert!(again.unwrap_err().to_string().contains("twice"));
        assert!(detached
            .read_bytes_from_path(&mut buf, Path::new("/"), 7, None)
            .is_err());
    }

    /// A subgraph's tensor that names a real file (which tract resolves
    /// under "/") is refused without reading it.
    #[test]
    fn a_real_file_is_never_read() {
        let mut proto = one_initializer_of_four_bytes();
        let detached = Detached::from(&mut proto).unwrap();
        let mut buf = Vec::new();
        let err = detached
            .read_bytes_from_path(&mut buf, Path::new("/etc/hostname"), 0, Some(4))
            .unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        assert!(buf.is_empty());
        detached
            .read_bytes_from_path(&mut buf, Path::new("/"), 0, Some(4))
            .unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
    }
}
