//! The model: an optimised tract plan plus the manifest and labels that say
//! how to feed it and read it.
//!
//! A [`Model`] is built once per process (once per Lambda container, in the
//! init phase) and shared by reference or `Arc`; [`Model::run`] takes `&self`
//! and is safe to call from many threads at once.

mod compile;
pub(crate) mod declutter;
mod loader;
pub mod manifest;
mod parse;
mod profile;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::config::Config;
use crate::error::ModelError;
use crate::location::Location;
pub use loader::{LoadError, Loaded, ModelLoader};
use manifest::InferredInput;
pub use manifest::{Layout, Manifest};
pub use profile::OpProfile;

/// ImageNet-1k labels (`models/synset.txt`), used when a 1000-class model
/// comes without a labels file.
const IMAGENET_SYNSET: &str = include_str!("../../models/synset.txt");

type Plan = TypedRunnableModel;
type RunState = TypedSimpleState;

/// Options that change how the graph is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The fixed batch size the plan is compiled for. 1 is the fastest per
    /// image for MobileNetV2 on tract (see `classify.rs` for the numbers);
    /// larger values exist for the benchmark that proves it.
    pub plan_batch: usize,
    /// Put the project's own operators (`pointwise.rs`, `depthwise.rs`) in
    /// place of tract's where they apply. Off only to measure against tract
    /// alone.
    pub own_kernels: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            plan_batch: 1,
            own_kernels: true,
        }
    }
}

/// Where the model bytes came from and what they were, for logs and replies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelInfo {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// Lower-case hex sha256 of the `.onnx` bytes: the identity of the weights.
    pub sha256: String,
    /// Size of the `.onnx` bytes.
    pub size_bytes: usize,
    /// Human-readable origin (path or URI).
    pub source: String,
}

/// Where building the plan went, stage by stage (the cold start's share).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CompileTimes {
    /// ONNX protobuf to tract's inference graph, in milliseconds.
    pub parse_ms: f64,
    /// Type inference and decluttering.
    pub declutter_ms: f64,
    /// Putting the project's own operators in.
    pub own_kernels_ms: f64,
    /// tract's optimiser (kernel selection, fusion).
    pub optimize_ms: f64,
    /// Making the runnable plan.
    pub plan_ms: f64,
}

/// A model's ONNX bytes as the caller holds them.
pub(crate) enum OnnxBytes<'a> {
    /// The caller keeps them.
    Borrowed(&'a [u8]),
    /// Read into memory (an S3 download).
    Owned(Vec<u8>),
    /// A private read-only mapping of a model file: its pages can be given
    /// back to the kernel as soon as they are decoded (they read back from
    /// the file), which the heap's cannot.
    Mapped(memmap2::Mmap),
}

impl OnnxBytes<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            OnnxBytes::Borrowed(bytes) => bytes,
            OnnxBytes::Owned(bytes) => bytes,
            OnnxBytes::Mapped(map) => map,
        }
    }

    fn file_backed(&self) -> bool {
        matches!(self, OnnxBytes::Mapped(_))
    }
}

/// A loaded, optimised classifier.
pub struct Model {
    plan: Arc<Plan>,
    /// Run states kept between runs (each holds its buffers), at most one
    /// per concurrent run: spawning one per run was allocation churn.
    states: Mutex<Vec<RunState>>,
    manifest: Manifest,
    labels: Vec<String>,
    info: ModelInfo,
    plan_batch: usize,
    classes: usize,
    optimize_time: Duration,
    compile_times: CompileTimes,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("info", &self.info)
            .field("plan_batch", &self.plan_batch)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Builds a model from its bytes.
    ///
    /// `manifest_json` and `labels_text` are the contents of the manifest and
    /// labels files if the caller found them; `None` means "infer / use
    /// defaults". `source` names the origin in errors and in [`ModelInfo`].
    pub fn from_bytes(
        onnx: &[u8],
        source: &str,
        manifest_json: Option<&[u8]>,
        labels_text: Option<&str>,
        options: LoadOptions,
    ) -> Result<Model, ModelError> {
        Model::build(
            OnnxBytes::Borrowed(onnx),
            None,
            source,
            manifest_json,
            labels_text,
            options,
        )
    }

    /// [`Model::from_bytes`], given the bytes' sha256 when the caller has
    /// already computed it (the loader does, to check `MODEL_SHA256`).
    /// Owned bytes (or a mapped file) are dropped as soon as they are
    /// decoded, before tract copies the weights out of the protobuf (see
    /// `parse.rs` for how the copies are kept from piling up).
    pub(crate) fn build(
        onnx: OnnxBytes<'_>,
        sha256: Option<String>,
        source: &str,
        manifest_json: Option<&[u8]>,
        labels_text: Option<&str>,
        options: LoadOptions,
    ) -> Result<Model, ModelError> {
        let started = Instant::now();
        // The digest (about 10 ms for MobileNetV2's 14 MB) runs beside the
        // parse: it is on the cold-start path of every container.
        let (bytes, file_backed) = (onnx.as_slice(), onnx.file_backed());
        let size_bytes = bytes.len();
        // The protobuf's copy of the weights is the first fresh heap the
        // load touches: as much again is faulted in on the other core.
        crate::memory::prefault_heap(size_bytes);
        let (proto, sha256) = std::thread::scope(|scope| {
            let digest =
                scope.spawn(|| sha256.unwrap_or_else(|| parse::sha256(bytes, file_backed)));
            let proto = parse::decode_proto(bytes, source, file_backed);
            (proto, digest.join())
        });
        drop(onnx);
        let sha256 = sha256.map_err(|_| ModelError::Optimize("the sha256 thread failed".into()))?;
        let graph = parse::parse_graph(proto?, source, size_bytes)?;
        let parse_ms = ms_since(started);
        let stem = Path::new(source)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model");
        let manifest = Manifest::resolve(
            manifest_json,
            &format!("manifest for {source}"),
            stem,
            &infer_input(&graph),
        )?;
        let batch = options.plan_batch.max(1);
        let (plan, classes, mut compile_times) =
            compile::compile(graph, &manifest, batch, options.own_kernels)?;
        compile_times.parse_ms = parse_ms;
        let labels = resolve_labels(labels_text, &manifest, classes)?;
        crate::memory::release_now();
        let info = ModelInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sha256,
            size_bytes,
            source: source.to_string(),
        };
        Ok(Model {
            plan,
            states: Mutex::new(Vec::new()),
            manifest,
            labels,
            info,
            plan_batch: batch,
            classes,
            optimize_time: started.elapsed(),
            compile_times,
        })
    }

    /// Loads a model file with its manifest (same path, `.json`, if present)
    /// and labels, through the same loader the services use. Blocking: for
    /// tests, benchmarks and tools outside an async runtime.
    pub fn load_path(path: &Path, options: LoadOptions) -> Result<Model, LoadError> {
        let config = Config {
            model: Location::File(path.to_path_buf()),
            ..Config::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| ModelError::Optimize(format!("cannot start a runtime to load: {e}")))?;
        let loaded = runtime.block_on(ModelLoader::new(None).load_with(&config, options))?;
        Ok(Arc::try_unwrap(loaded.model).expect("a freshly loaded model has one owner"))
    }

    /// Runs the network on a preprocessed batch laid out as the manifest
    /// says, `plan_batch()` images long, and returns one score vector per
    /// image. On the calling thread; its operators split their work over an
    /// [`OperatorPool`] when the caller is one of its workers.
    pub fn run(&self, input: Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
        let fail = |e: anyhow::Error| ModelError::Inference(format!("{e:#}"));
        let pooled = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut state = match pooled {
            Some(state) => state,
            None => self.plan.spawn().map_err(fail)?,
        };
        let inputs = tvec!(input.into());
        let outputs = state.run(inputs);
        // A state whose run failed may hold half a turn: drop it.
        let outputs = outputs.map_err(fail)?;
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state);
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Inference(format!("{e:#}")))?;
        let flat: Vec<f32> = view.iter().copied().collect();
        Ok(flat.chunks(self.classes).map(<[f32]>::to_vec).collect())
    }

    /// A deterministic, image-shaped input for one plan run (values in
    /// [-2, 2), like a normalised photo), for profiling.
    pub fn example_input(&self) -> Tensor {
        let (h, w) = (
            self.manifest.input.height as usize,
            self.manifest.input.width as usize,
        );
        let shape: [usize; 4] = match self.manifest.input.layout {
            Layout::Nchw => [self.plan_batch, 3, h, w],
            Layout::Nhwc => [self.plan_batch, h, w, 3],
        };
        let values: Vec<f32> = crate::ops::noise(shape.iter().product(), 0x9e37_79b9)
            .into_iter()
            .map(|v| v * 2.0)
            .collect();
        Tensor::from_shape(&shape, &values).expect("the shape matches the values")
    }

    /// The manifest in force (file values over inferred over defaults).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Class labels, indexed like the model output.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Identity of the model, reported with every prediction.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The fixed batch size the plan was compiled for.
    pub fn plan_batch(&self) -> usize {
        self.plan_batch
    }

    /// Number of output classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Time spent parsing and optimising the graph (not reading the bytes).
    pub fn optimize_time(&self) -> Duration {
        self.optimize_time
    }

    /// [`Model::optimize_time`], stage by stage.
    pub fn compile_times(&self) -> CompileTimes {
        self.compile_times
    }
}

pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Lower-case hex sha256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A digest in lower-case hex, as `MODEL_SHA256` and the logs spell it.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One label per non-empty line; a leading WordNet id (`n01440764 `) is dropped.
pub fn parse_labels(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| match line.split_once(' ') {
            Some((id, rest))
                if id.len() == 9
                    && id.starts_with('n')
                    && id[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                rest.trim().to_string()
            }
            _ => line.to_string(),
        })
        .collect()
}

/// The `labels` field of a manifest, read before the full resolve so the
/// file can be fetched from wherever the manifest came from.
pub fn labels_file_name(manifest_json: &[u8]) -> Result<Option<String>, ModelError> {
    #[derive(serde::Deserialize)]
    struct OnlyLabels {
        labels: Option<String>,
    }
    serde_json::from_slice::<OnlyLabels>(manifest_json)
        .map(|m| m.labels)
        .map_err(|e| ModelError::Manifest {
            path: "manifest".into(),
            reason: e.to_string(),
        })
}

/// The labels file, else the ImageNet synset for a 1000-class model, else
/// `class_N`; it must have one label per class.
fn resolve_labels(
    labels_text: Option<&str>,
    manifest: &Manifest,
    classes: usize,
) -> Result<Vec<String>, ModelError> {
    let text = labels_text.or(if classes == 1000 {
        Some(IMAGENET_SYNSET)
    } else {
        None
    });
    let labels = match text {
        Some(text) => parse_labels(text),
        None => (0..classes).map(|i| format!("class_{i}")).collect(),
    };
    if labels.len() != classes {
        return Err(ModelError::Labels {
            path: manifest.labels.clone().unwrap_or_else(|| "(labels)".into()),
            labels: labels.len(),
            classes,
        });
    }
    Ok(labels)
}

/// Reads name, layout and fixed spatial size off the graph's first input.
fn infer_input(graph: &InferenceModel) -> InferredInput {
    let mut inferred = InferredInput::default();
    if let Ok(outlets) = graph.input_outlets() {
        if let Some(o) = outlets.first() {
            inferred.name = Some(graph.node(o.node).name.clone());
        }
    }
    let Ok(fact) = graph.input_fact(0) else {
        return inferred;
    };
    let dims: Vec<Option<i64>> = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
        .collect();
    if dims.len() != 4 {
        return inferred;
    }
    let (layout, h, w) = match (dims[1], dims[3]) {
        (Some(3), _) => (Layout::Nchw, dims[2], dims[3]),
        (_, Some(3)) => (Layout::Nhwc, dims[1], dims[2]),
        _ => return inferred,
    };
    inferred.layout = Some(layout);
    inferred.height = h.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    inferred.width = w.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    inferred
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_drop_wordnet_ids_only() {
        let labels = parse_labels("n01440764 tench, Tinca tinca\n\ncat\nn123 not an id\n");
        assert_eq!(labels, ["tench, Tinca tinca", "cat", "n123 not an id"]);
    }

    #[test]
    fn bundled_synset_has_1000_labels() {
        let labels = parse_labels(IMAGENET_SYNSET);
        assert_eq!(labels.len(), 1000);
        assert_eq!(labels[285], "Egyptian cat");
    }

    #[test]
    fn garbage_bytes_are_not_a_model() {
        let html = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>";
        let err =
            Model::from_bytes(html, "s3://b/k", None, None, LoadOptions::default()).unwrap_err();
        assert!(matches!(err, ModelError::NotOnnx { .. }), "{err}");
        let err = Model::from_bytes(b"", "x.onnx", None, None, LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
