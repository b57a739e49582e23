//! The [`Classifier`]: N encoded images in, N results out.
//!
//! # Batching design
//!
//! A batch of images fans the whole pipeline (decode, preprocess,
//! inference) out over `threads` threads, one image per thread, each with
//! the shared batch-1 plan: no synchronisation inside an image while every
//! thread has one. A fixed larger batch plan was slower per image (larger
//! activations fall out of cache), and a symbolic batch dimension much
//! slower (`models/README.md`). The threads are the operator pool's
//! workers, so a worker that runs out of images splits the operators of
//! those still running (`OperatorPool::map`). A batch decodes there too,
//! and the JPEG decoder's row tasks go to the pool it runs on instead of
//! threads of its own.
//!
//! A request with a single image instead runs its operators on all
//! `threads` (tract's rayon executor, `multithread-mm`; the project's
//! operators split their channels over it), which is the latency an HTTP
//! caller sees. Concurrent single-image requests take turns on that pool
//! (`ops::OperatorPool` says why). Lambda gives one vCPU per 1,769 MB, so
//! either way the work scales with the memory setting. The measurements
//! behind each choice are in docs/performance.md ("Threads").

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::Tensor;

use crate::config::{Config, InputLimits};
use crate::decode::{self, DecodeBudget, Reservation};
use crate::error::{panic_message, ClassifyError, InputError, ModelError};
use crate::model::{Layout, Model};
use crate::ops::OperatorPool;
use crate::preprocess::Preprocessor;

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Output index of the class.
    pub index: usize,
    /// Human-readable label.
    pub label: String,
    /// Softmax probability (or the model's own, for probability outputs).
    pub probability: f32,
}

/// Where the time went for one image, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Decoding the encoded bytes (and applying EXIF orientation).
    pub decode: f64,
    /// Colour conversion, resize, crop and normalisation.
    pub preprocess: f64,
    /// Running the network.
    pub inference: f64,
    /// Encoded bytes to top-k, end to end.
    pub total: f64,
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// Top-k classes, most probable first.
    pub predictions: Vec<Prediction>,
    /// Time spent on this image.
    pub timing_ms: Timing,
}

/// Classifies encoded images with a shared [`Model`].
///
/// Cheap to clone (the model is behind an `Arc`); safe to share between
/// threads and requests.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: Arc<Model>,
    pre: Preprocessor,
    limits: InputLimits,
    /// The memory decodes may hold at once, shared by every clone.
    budget: Arc<DecodeBudget>,
    threads: usize,
    /// `threads` workers for one image's operators, made on first use.
    pool: Arc<OnceLock<OperatorPool>>,
}

impl Classifier {
    /// A classifier for `model` that enforces `limits` on every input and
    /// uses one thread per available core for batches.
    pub fn new(model: Arc<Model>, limits: InputLimits) -> Classifier {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Classifier {
            pre: Preprocessor::new(model.manifest()),
            model,
            budget: DecodeBudget::new(limits.max_decode_bytes),
            limits,
            threads,
            pool: Arc::new(OnceLock::new()),
        }
    }

    /// A classifier as the configuration asks: its input limits and, when
    /// set, `THREADS`.
    pub fn configured(model: Arc<Model>, config: &Config) -> Classifier {
        Classifier::new(model, config.limits).with_threads(config.worker_threads())
    }

    /// Sets how many images of a batch run at once (at least 1).
    pub fn with_threads(mut self, threads: usize) -> Classifier {
        self.threads = threads.max(1);
        self.pool = Arc::new(OnceLock::new());
        self
    }

    /// The `threads` workers images run on, decode included (the JPEG
    /// decoder's row tasks stay on the pool it runs on); `None` with one
    /// thread, where the caller's thread does it all: a one-worker pool
    /// measured 5% slower inference (`bench --threads 1`, 9 alternating
    /// runs, AMD EPYC; the cause not found). A single image decoded on the
    /// caller's thread sent its rows to rayon's global pool, whose threads
    /// then slowed the inference on two cores 3.0-3.1 -> 3.25 ms
    /// (`bench --batch-size 1`, 3 alternating runs).
    fn pool(&self) -> Option<&OperatorPool> {
        (self.threads > 1).then(|| self.pool.get_or_init(|| OperatorPool::new(self.threads)))
    }

    /// The shared model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The input limits in force.
    pub fn limits(&self) -> &InputLimits {
        &self.limits
    }

    /// How many images of a batch run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Classifies one encoded image (any supported format) and returns the
    /// `top_k` most probable classes.
    /// A single image's operators use all the threads.
    pub fn classify(&self, bytes: &[u8], top_k: usize) -> Result<Classification, ClassifyError> {
        match self.pool() {
            Some(pool) => pool.run(|| self.classify_here(bytes, top_k)),
            None => self.classify_here(bytes, top_k),
        }
    }

    /// [`Classifier::classify`] on this thread (a pool worker, or the only
    /// thread).
    fn classify_here(&self, bytes: &[u8], top_k: usize) -> Result<Classification, ClassifyError> {
        let (scores, mut timing) = self.scores_timed(bytes)?;
        let started = Instant::now();
        let predictions = self.top_k(&scores, top_k);
        timing.total += ms(started.elapsed());
        Ok(Classification {
            predictions,
            timing_ms: timing,
        })
    }

    /// Decodes at the size the preprocessing needs, holding the decode's
    /// memory from the shared budget until the reservation is dropped
    /// (after preprocessing, which frees the image).
    fn decode(&self, bytes: &[u8]) -> Result<(image::DynamicImage, Reservation), InputError> {
        decode::decode_reserved(
            bytes,
            &self.limits,
            self.pre.min_decode_side(),
            &self.budget,
        )
    }

    /// The raw model output for one encoded image, and where the time went.
    fn scores_timed(&self, bytes: &[u8]) -> Result<(Vec<f32>, Timing), ClassifyError> {
        let started = Instant::now();
        let (image, held) = self.decode(bytes)?;
        let decoded = Instant::now();
        let batch = self.model.plan_batch();
        let mut input = vec![0f32; self.pre.image_len() * batch];
        self.pre
            .preprocess_into(image, &mut input[..self.pre.image_len()]);
        drop(held);
        let preprocessed = Instant::now();
        let scores = self.run(input)?.swap_remove(0);
        let done = Instant::now();
        Ok((
            scores,
            Timing {
                decode: ms(decoded - started),
                preprocess: ms(preprocessed - decoded),
                inference: ms(done - preprocessed),
                total: ms(done - started),
            },
        ))
    }

    /// Raw model outputs (logits or probabilities, as the model gives them)
    /// for encoded images, one result per input, in parallel.
    pub fn scores_batch(&self, inputs: &[&[u8]]) -> Vec<Result<Vec<f32>, ClassifyError>> {
        self.map(inputs, |bytes| {
            contain(|| self.scores_timed(bytes).map(|(s, _)| s))
        })
    }

    /// Maps `f` over `items`, one item per thread, on the operator pool:
    /// `f` runs on a worker, with the network's operators (and the JPEG
    /// decoder's rows) splitting over the pool (see `OperatorPool::map`).
    /// With one item, that is all threads inside the one image; with one
    /// thread, this thread.
    fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        match self.pool() {
            Some(pool) => pool.map(items, f),
            None => items.iter().map(f).collect(),
        }
    }

    /// Raw model outputs for `n` already-preprocessed images laid out back
    /// to back in the manifest's layout (the KServe `FP32` input).
    pub fn scores_for_tensor(&self, values: &[f32], n: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let len = self.pre.image_len();
        if values.len() != len * n {
            return Err(ModelError::Inference(format!(
                "expected {} values for {n} images, got {}",
                len * n,
                values.len()
            )));
        }
        let images: Vec<&[f32]> = values.chunks_exact(len).collect();
        self.map(&images, |image| {
            let mut input = vec![0f32; len * self.model.plan_batch()];
            input[..len].copy_from_slice(image);
            self.run(input).map(|mut s| s.swap_remove(0))
        })
        .into_iter()
        .collect()
    }

    /// Classifies many images; one result per input, in input order. One bad
    /// input never affects the others.
    ///
    /// With the default batch-1 model the images run in parallel, one per
    /// thread (see the module docs for why). A model compiled for a larger
    /// fixed batch is fed full batches instead, padded with zeros.
    pub fn classify_batch(
        &self,
        inputs: &[&[u8]],
        top_k: usize,
    ) -> Vec<Result<Classification, ClassifyError>> {
        if self.model.plan_batch() == 1 {
            return self.map(inputs, |bytes| contain(|| self.classify_here(bytes, top_k)));
        }
        self.classify_fixed_batches(inputs, top_k)
    }

    /// The fixed-batch path: preprocess in parallel, then one network run per
    /// `plan_batch()` images. Kept for the batching benchmark.
    fn classify_fixed_batches(
        &self,
        inputs: &[&[u8]],
        top_k: usize,
    ) -> Vec<Result<Classification, ClassifyError>> {
        let len = self.pre.image_len();
        let prepared = self.map(inputs, |bytes| {
            contain(|| {
                let started = Instant::now();
                let (image, held) = self.decode(bytes)?;
                let decoded = Instant::now();
                let mut values = vec![0f32; len];
                self.pre.preprocess_into(image, &mut values);
                drop(held);
                Ok((values, ms(decoded - started), ms(decoded.elapsed())))
            })
        });
        let mut results: Vec<Option<Result<Classification, ClassifyError>>> =
            (0..inputs.len()).map(|_| None).collect();
        let ok: Vec<usize> = prepared
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_ok())
            .map(|(i, _)| i)
            .collect();
        for chunk in ok.chunks(self.model.plan_batch()) {
            let mut input = vec![0f32; len * self.model.plan_batch()];
            for (slot, &i) in chunk.iter().enumerate() {
                if let Ok((values, _, _)) = &prepared[i] {
                    input[slot * len..(slot + 1) * len].copy_from_slice(values);
                }
            }
            let started = Instant::now();
            let run = self.run(input);
            let inference = ms(started.elapsed());
            for (slot, &i) in chunk.iter().enumerate() {
                let Ok((_, decode, preprocess)) = &prepared[i] else {
                    continue;
                };
                results[i] = Some(match &run {
                    Ok(scores) => Ok(Classification {
                        predictions: self.top_k(&scores[slot], top_k),
                        timing_ms: Timing {
                            decode: *decode,
                            preprocess: *preprocess,
                            inference,
                            total: decode + preprocess + inference,
                        },
                    }),
                    Err(e) => Err(ModelError::Inference(e.to_string()).into()),
                });
            }
        }
        prepared
            .into_iter()
            .zip(results)
            .map(|(p, r)| match p {
                Err(e) => Err(e),
                Ok(_) => r.expect("every prepared image was run"),
            })
            .collect()
    }

    /// Runs the network on already-preprocessed values (`plan_batch()` images
    /// in the manifest's layout) and returns raw scores per image. On this
    /// thread alone, unless it is one of the pool's.
    pub fn run(&self, input: Vec<f32>) -> Result<Vec<Vec<f32>>, ModelError> {
        let m = self.model.manifest();
        let (b, h, w) = (
            self.model.plan_batch(),
            m.input.height as usize,
            m.input.width as usize,
        );
        let shape: [usize; 4] = match m.input.layout {
            Layout::Nchw => [b, 3, h, w],
            Layout::Nhwc => [b, h, w, 3],
        };
        let array = ndarray::Array4::from_shape_vec(shape, input)
            .map_err(|e| ModelError::Inference(format!("input has the wrong length: {e}")))?;
        self.model.run(Tensor::from(array))
    }

    /// Softmax (unless the model outputs probabilities) and the `k` best
    /// classes, most probable first; `k` is clamped to 1..=classes.
    pub fn top_k(&self, scores: &[f32], k: usize) -> Vec<Prediction> {
        let probs = match self.model.manifest().output.kind {
            crate::model::manifest::OutputKind::Logits => softmax(scores),
            crate::model::manifest::OutputKind::Probabilities => scores.to_vec(),
        };
        top_k(&probs, k, self.model.labels())
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` highest probabilities with their labels, highest first; ties keep
/// the lower index first. NaN scores sort last.
pub fn top_k(probs: &[f32], k: usize, labels: &[String]) -> Vec<Prediction> {
    let k = k.clamp(1, probs.len().max(1));
    let mut order: Vec<usize> = (0..probs.len()).collect();
    let key = |i: &usize| {
        let p = probs[*i];
        if p.is_nan() {
            f32::NEG_INFINITY
        } else {
            p
        }
    };
    let cmp = |a: &usize, b: &usize| key(b).total_cmp(&key(a)).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, cmp);
        order.truncate(k);
    }
    order.sort_by(cmp);
    order
        .into_iter()
        .map(|i| Prediction {
            index: i,
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}")),
            probability: probs[i],
        })
        .collect()
}

/// Runs one image's work, turning a panic into an `internal` error, so a
/// bug triggered by one input never takes its batch, or the process, down.
pub(crate) fn contain<T>(
    work: impl FnOnce() -> Result<T, ClassifyError>,
) -> Result<T, ClassifyError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        let message = panic_message(payload.as_ref());
        tracing::error!(%message, "classification panicked; the process goes on");
        Err(ClassifyError::Panicked(format!(
            "the classification failed unexpectedly ({message}); this is a bug, please report it"
        )))
    })
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
    }

    #[test]
    fn top_k_orders_clamps_and_breaks_ties_by_index() {
        let labels: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let got = top_k(&[0.1, 0.4, 0.4, f32::NAN], 3, &labels);
        let idx: Vec<usize> = got.iter().map(|p| p.index).collect();
        assert_eq!(idx, [1, 2, 0]);
        assert_eq!(got[0].label, "b");
        assert_eq!(top_k(&[0.1, 0.4], 0, &labels).len(), 1);
        assert_eq!(top_k(&[0.1, 0.4], 99, &labels).len(), 2);
    }

    #[test]
    fn a_panic_in_one_image_is_an_internal_error_for_that_image_only() {
        let items = [1, 2, 3];
        let results = OperatorPool::new(2).map(&items, |&i| {
            contain(|| {
                if i == 2 {
                    panic!("boom on {i}");
                }
                Ok(i * 10)
            })
        });
        assert_eq!(results[0].as_ref().unwrap(), &10);
        assert_eq!(results[2].as_ref().unwrap(), &30);
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(crate::error::ErrorCode::code(err), "internal");
        assert!(err.to_string().contains("boom on 2"), "{err}");
    }
}
