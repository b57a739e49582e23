//! The application service: everything a request or a job needs, built once
//! per process (in the Lambda init phase, or at `serve`/`worker` start-up)
//! and shared by every invocation through an `Arc`.
//!
//! The doors and protocols above never touch the classifier directly: they
//! call [`App::classify`], the one place that moves CPU-bound work onto the
//! blocking pool, so inference never stalls the async reactor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::aws::sqs::QueueSender;
use crate::classify::{Classification, Classifier};
use crate::config::{Config, InputLimits};
use crate::error::ClassifyError;
use crate::inputs::InputFetcher;
use crate::metrics::{Metrics, StageMs};
use crate::model::{Layout, LoadError, Model, ModelInfo, ModelLoader};

/// Everything an invocation needs, built once and shared.
#[derive(Debug)]
pub struct App {
    config: Config,
    classifier: Classifier,
    inputs: InputFetcher,
    results: Option<QueueSender>,
    /// One permit per thread: images in decode or inference at once, across
    /// every request, job and door of the process.
    work: Arc<Semaphore>,
    /// Thread-nanoseconds one unit of work (a request's or a batch's
    /// classification) took, as an exponentially weighted mean: what
    /// `serve`'s admission estimates a queue's wait from.
    service_ns: AtomicU64,
    cold: AtomicBool,
    metrics: Metrics,
}

impl App {
    /// Loads the model with `loader` (which logs what the load cost) and
    /// wires the classifier and the input fetcher. Call once per process.
    pub async fn init(
        config: Config,
        loader: &ModelLoader,
        s3: Option<aws_sdk_s3::Client>,
    ) -> Result<App, LoadError> {
        let started = std::time::Instant::now();
        let loaded = loader.load(&config).await?;
        let app = App::new(config, loaded.model, s3);
        app.metrics
            .set_model_load_seconds(started.elapsed().as_secs_f64());
        Ok(app)
    }

    /// Wires an already loaded model.
    pub fn new(config: Config, model: Arc<Model>, s3: Option<aws_sdk_s3::Client>) -> App {
        let classifier = Classifier::configured(model, &config);
        let inputs = InputFetcher::new(
            s3,
            config.s3_input_allowlist.clone(),
            config.limits.max_bytes,
            config.max_input_bytes_in_flight,
            config.admission_wait,
        );
        App {
            work: Arc::new(Semaphore::new(classifier.threads())),
            service_ns: AtomicU64::new(0),
            config,
            classifier,
            inputs,
            results: None,
            cold: AtomicBool::new(true),
            metrics: Metrics::default(),
        }
    }

    /// Adds the SQS client results are written with (to `RESULTS_QUEUE_URL`,
    /// when it is set).
    pub fn with_sqs(mut self, sqs: aws_sdk_sqs::Client) -> App {
        self.results = self
            .config
            .results_queue_url
            .as_ref()
            .map(|url| QueueSender::new(sqs, url.clone()));
        self
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The shared model.
    pub fn model(&self) -> &Model {
        self.classifier.model()
    }

    /// The loaded model's identity.
    pub fn model_info(&self) -> &ModelInfo {
        self.model().info()
    }

    /// `{"name", "version", "sha256"}`, as every reply carries it.
    pub fn model_json(&self) -> Value {
        let info = self.model_info();
        json!({"name": info.name, "version": info.version, "sha256": info.sha256})
    }

    /// Images classified at once.
    pub fn threads(&self) -> usize {
        self.classifier.threads()
    }

    /// The limits on one input.
    pub fn limits(&self) -> &InputLimits {
        self.classifier.limits()
    }

    /// Where inputs by reference are read.
    pub fn inputs(&self) -> &InputFetcher {
        &self.inputs
    }

    /// The results queue, when an SQS client and `RESULTS_QUEUE_URL` are set.
    pub fn results(&self) -> Option<&QueueSender> {
        self.results.as_ref()
    }

    /// True for the first invocation of this container only (counted).
    pub fn take_cold_start(&self) -> bool {
        let cold = self.cold.swap(false, Ordering::SeqCst);
        if cold {
            self.metrics.cold_start();
        }
        cold
    }

    /// The process's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `GET /metrics`: the counters in the Prometheus text format, with
    /// the model's identity.
    pub fn prometheus(&self) -> String {
        let info = self.model_info();
        self.metrics.prometheus(Some([
            ("name", info.name.as_str()),
            ("version", info.version.as_str()),
            ("sha256", info.sha256.as_str()),
        ]))
    }

    /// Classifies encoded images in parallel; one result per image, in order.
    /// The outer error means the work itself failed (not any one image).
    pub async fn classify(
        self: &Arc<Self>,
        images: Vec<Vec<u8>>,
        top_k: usize,
    ) -> Result<Vec<Result<Classification, ClassifyError>>, ClassifyError> {
        let n = images.len();
        let results = self
            .blocking(n, move |c| {
                let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
                c.classify_batch(&refs, top_k)
            })
            .await?;
        let times: Vec<StageMs> = results
            .iter()
            .flatten()
            .map(|c| StageMs {
                decode: c.timing_ms.decode,
                preprocess: c.timing_ms.preprocess,
                inference: c.timing_ms.inference,
            })
            .collect();
        self.metrics.observe_classification(n, times.len(), &times);
        Ok(results)
    }

    /// The model's raw outputs for encoded images, one per image, in order.
    pub async fn scores(
        self: &Arc<Self>,
        images: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<Vec<f32>, ClassifyError>>, ClassifyError> {
        let n = images.len();
        let results = self
            .blocking(n, move |c| {
                let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
                c.scores_batch(&refs)
            })
            .await?;
        let succeeded = results.iter().filter(|r| r.is_ok()).count();
        self.metrics.observe_classification(n, succeeded, &[]);
        Ok(results)
    }

    /// The model's raw outputs for `n` preprocessed images laid out back to
    /// back (the KServe `FP32` input).
    pub async fn scores_for_tensor(
        self: &Arc<Self>,
        values: Vec<f32>,
        n: usize,
    ) -> Result<Vec<Vec<f32>>, ClassifyError> {
        let scores = self
            .blocking(n, move |c| c.scores_for_tensor(&values, n))
            .await?
            .map_err(ClassifyError::from)?;
        self.metrics.observe_classification(n, scores.len(), &[]);
        Ok(scores)
    }

    /// Runs `f` over `images` images on the blocking pool, once threads for
    /// them are free. The permits travel with the work, so a caller that
    /// gives up (a request past its deadline) does not free them early.
    async fn blocking<R: Send + 'static>(
        self: &Arc<Self>,
        images: usize,
        f: impl FnOnce(&Classifier) -> R + Send + 'static,
    ) -> Result<R, ClassifyError> {
        let wanted = images.clamp(1, self.classifier.threads());
        let permits = self
            .work
            .clone()
            .acquire_many_owned(u32::try_from(wanted).unwrap_or(u32::MAX))
            .await
            .map_err(|e| ClassifyError::Internal(format!("the work queue is closed: {e}")))?;
        let app = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permits = permits;
            let started = std::time::Instant::now();
            let result = f(&app.classifier);
            app.record_service(started.elapsed() * wanted as u32);
            result
        })
        .await
        .map_err(|e| ClassifyError::Internal(format!("the classification task failed: {e}")))
    }

    /// Thread-time one unit of work takes, as recently measured (zero until
    /// the first): requests queued for threads wait about this, times
    /// their number, divided by the threads.
    pub fn service_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.service_ns.load(Ordering::Relaxed))
    }

    /// Folds one unit of work's thread-time into [`App::service_time`]
    /// (weight 1/8: a few requests move it, one outlier does not).
    fn record_service(&self, took: std::time::Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .service_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    took
                } else {
                    mean - mean / 8 + took / 8
                })
            });
    }

    /// The input shape with batch dimension `batch` (-1 for "any").
    pub fn input_shape(&self, batch: i64) -> Vec<i64> {
        let m = self.model().manifest();
        let (h, w) = (i64::from(m.input.height), i64::from(m.input.width));
        match m.input.layout {
            Layout::Nchw => vec![batch, 3, h, w],
            Layout::Nhwc => vec![batch, h, w, 3],
        }
    }

    /// What the model is and expects, and the limits in force (`GET /model`).
    pub fn describe(&self) -> Value {
        let model = self.model();
        let m = model.manifest();
        let info = model.info();
        json!({
            "name": info.name,
            "version": info.version,
            "sha256": info.sha256,
            "source": info.source,
            "inputs": [{"name": m.input.name.clone().unwrap_or_else(|| "input".into()), "datatype": "FP32",
                        "shape": self.input_shape(-1), "layout": m.input.layout}],
            "outputs": [{"name": m.output.name.clone().unwrap_or_else(|| "output".into()), "datatype": "FP32",
                         "shape": [-1, model.classes()], "kind": m.output.kind}],
            "preprocessing": m.preprocessing,
            "labels": model.labels().len(),
            "limits": {"max_input_bytes": self.limits().max_bytes,
                       "max_image_pixels": self.limits().max_pixels,
                       "max_request_bytes": self.config.max_request_bytes,
                       "max_batch_images": self.config.max_batch_images},
        })
    }
}

/// The app once it is loaded, shared by a server's connections: empty while
/// the model loads, so a server can listen (and answer `/health`) first.
#[derive(Debug, Clone, Default)]
pub struct AppCell(Arc<OnceLock<Arc<App>>>);

impl AppCell {
    /// Publishes the loaded app (once; later calls are ignored).
    pub fn set(&self, app: Arc<App>) {
        let _ = self.0.set(app);
    }

    /// The app, if loaded.
    pub fn get(&self) -> Option<Arc<App>> {
        self.0.get().cloned()
    }
}
