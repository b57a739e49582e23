//! Criterion benchmarks for the inference core.
//!
//! `cargo bench --bench pipeline` runs them all; pass a filter to run one
//! group, e.g. `cargo bench --bench pipeline -- batching`.
//!
//! - `decode_preprocess`: encoded photo to normalised tensor (no inference).
//! - `inference`: the network alone at batch 1 and at a fixed batch of 8,
//!   with the project's own operators and with tract's alone (the baseline).
//! - `end_to_end`: encoded bytes to top-5, one image.
//! - `batching`: 8 preprocessed images through each batching strategy; the
//!   numbers behind the design choice documented in `src/classify.rs`.

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use onnx_lambda::decode;
use onnx_lambda::preprocess::Preprocessor;
use onnx_lambda::{Classifier, InputLimits, LoadOptions, Model};

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/images")
            .join(name),
    )
    .expect("sample image")
}

fn classifier(batch_size: usize, threads: usize) -> Classifier {
    classifier_with(batch_size, threads, true)
}

fn classifier_with(batch_size: usize, threads: usize, own_kernels: bool) -> Classifier {
    let model = Model::load_path(
        &onnx_lambda::bundled_model_path(),
        LoadOptions {
            plan_batch: batch_size,
            own_kernels,
        },
    )
    .expect("bundled model");
    Classifier::new(Arc::new(model), InputLimits::default()).with_threads(threads)
}

fn decode_preprocess(c: &mut Criterion) {
    let cls = classifier(1, 1);
    let pre = Preprocessor::new(cls.model().manifest());
    let mut group = c.benchmark_group("decode_preprocess");
    for name in ["grace_hopper.jpg", "chelsea.png"] {
        let bytes = photo(name);
        group.bench_function(name, |b| {
            let mut out = vec![0f32; pre.image_len()];
            b.iter(|| {
                let img = decode::decode(&bytes, cls.limits()).unwrap();
                pre.preprocess_into(img, &mut out);
            })
        });
    }
    group.finish();
}

fn inference(c: &mut Criterion) {
    let mut group = c.benchmark_group("inference");
    group.sample_size(20);
    for (batch, own) in [(1usize, true), (1, false), (8, true)] {
        let cls = classifier_with(batch, 1, own);
        let input = vec![0.1f32; 3 * 224 * 224 * batch];
        let name = if own { "batch" } else { "tract_only_batch" };
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, _| {
            b.iter(|| cls.run(input.clone()).unwrap())
        });
    }
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let cls = classifier(1, 1);
    let bytes = photo("grace_hopper.jpg");
    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(20);
    group.bench_function("grace_hopper.jpg", |b| {
        b.iter(|| cls.classify(&bytes, 5).unwrap())
    });
    group.finish();
}

fn batching(c: &mut Criterion) {
    let mut group = c.benchmark_group("batching");
    group.sample_size(10);
    group.throughput(Throughput::Elements(8));
    let input = vec![0.1f32; 3 * 224 * 224];
    // Baseline: batch-1 plan, one image after another.
    let seq = classifier(1, 1);
    group.bench_function("batch1_sequential", |b| {
        b.iter(|| {
            (0..8)
                .map(|_| seq.run(input.clone()).unwrap())
                .collect::<Vec<_>>()
        })
    });
    // One run of a plan compiled for a fixed batch of 8.
    let b8 = classifier(8, 1);
    let input8 = vec![0.1f32; 3 * 224 * 224 * 8];
    group.bench_function("batch8_plan", |b| {
        b.iter(|| b8.run(input8.clone()).unwrap())
    });
    // Batch-1 plan, the 8 images spread over one thread per core.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    group.bench_function(format!("batch1_{threads}_threads"), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (seq, input) = (&seq, &input);
                    s.spawn(move || {
                        for _ in (t..8).step_by(threads) {
                            seq.run(input.clone()).unwrap();
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, decode_preprocess, inference, end_to_end, batching);
criterion_main!(benches);
