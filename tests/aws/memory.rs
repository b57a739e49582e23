//! The memory budget where inputs come from S3: `serve` asked for one
//! 19 MiB object sixteen times in a request, and a worker given an S3
//! event with 24 records for it beside decompression bombs, stay under
//! [`PEAK_LIMIT`] of resident memory, and every job gets its result.

use crate::common::{self, bombs, put_objects, s3_client, unique_bucket, ServeProcess, PEAK_LIMIT};

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// A real photo padded past its end-of-image marker to `size` bytes:
/// decoders stop at the marker, so it classifies like the photo.
fn padded_photo(size: usize) -> Vec<u8> {
    let mut jpeg = std::fs::read(common::data("images/grace_hopper.jpg")).unwrap();
    jpeg.resize(size, 0);
    jpeg
}

async fn bucket_with_big_photo() -> String {
    let bucket = unique_bucket("memory");
    put_objects(
        &s3_client().await,
        &bucket,
        &[("in/big.jpg", padded_photo(19 << 20))],
    )
    .await;
    bucket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(target_os = "linux")]
async fn serve_reads_s3_inputs_within_the_budget() {
    let bucket = bucket_with_big_photo().await;
    let mut env = common::aws_env();
    env.push(("S3_INPUT_ALLOWLIST", format!("s3://{bucket}/in/")));
    let serve = ServeProcess::start(&env);
    tokio::task::block_in_place(|| serve.wait_ready());
    serve.reset_peak();
    let uri = format!("s3://{bucket}/in/big.jpg");
    let many = json!({"images": vec![json!({"s3_uri": uri}); 16]}).to_string();
    let single = json!({"s3_uri": uri}).to_string();
    let bodies = vec![
        many.into_bytes(),
        single.clone().into_bytes(),
        single.into_bytes(),
    ];
    let answers =
        tokio::task::block_in_place(|| serve.post_all("/predict", "application/json", &bodies));
    let peak = serve.status("VmHWM:");

    let (status, body) = &answers[0];
    assert_eq!(*status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    let ok = results
        .iter()
        .filter(|r| r["predictions"][0]["index"] == 652)
        .count();
    let refused = results
        .iter()
        .filter(|r| {
            ["input_too_large", "overloaded"].contains(&r["error"]["code"].as_str().unwrap_or(""))
        })
        .count();
    assert_eq!(ok + refused, 16, "{body}");
    assert!(ok >= 1, "the first entry fits the budget: {body}");
    assert!(refused >= 14, "16 x 19 MiB cannot be held at once: {body}");
    for (status, body) in &answers[1..] {
        match status {
            200 => assert_eq!(body["predictions"][0]["index"], 652, "{body}"),
            503 => assert_eq!(body["error"]["code"], "overloaded", "{body}"),
            _ => panic!("{status} {body}"),
        }
    }
    assert!(peak <= PEAK_LIMIT, "peak RSS {peak} bytes");
    eprintln!("serve, S3 inputs: peak RSS {:.1} MB", peak as f64 / 1e6);
}

#[tokio::test]
#[cfg(target_os = "linux")]
async fn a_worker_reads_many_large_objects_and_bombs_within_the_budget() {
    let bucket = bucket_with_big_photo().await;
    let sqs = common::sqs_client().await;
    let jobs = common::create_queue(&sqs, "memory-jobs", &[]).await;
    let results = common::create_queue(&sqs, "memory-results", &[]).await;
    let record = json!({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": bucket}, "object": {"key": "in/big.jpg", "size": 19 << 20}}});
    let event = json!({"Records": vec![record; 24]}).to_string();
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    let bomb_jobs = [
        ("tiff", b64(bombs::tiff_rgba16(7000, 7000))),
        // 4000x4000: a 7000x7000 PNG is past SQS's 256 KiB once in base64.
        ("png16", b64(bombs::png(4000, 4000, 6, 16, 0))),
        ("gif", b64(bombs::gif(7000, 7000))),
        ("jpeg", b64(bombs::progressive_jpeg(7000, 7000))),
    ];
    let mut bodies = vec![event];
    bodies.extend(
        bomb_jobs
            .iter()
            .map(|(id, data)| json!({"job_id": id, "image": {"base64": data}}).to_string()),
    );
    common::send_all(&sqs, &jobs, &bodies).await;
    let worker = common::Worker::start(&jobs, &results, &[]);

    let mut got: Vec<Value> = Vec::new();
    let started = Instant::now();
    while got.len() < 28 && started.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        got.extend(
            common::drain(&sqs, &results)
                .await
                .iter()
                .map(|b| serde_json::from_str::<Value>(b).unwrap()),
        );
    }
    let peak = common::proc_status_bytes(worker.pid(), "VmHWM:");
    worker.stop();
    let from_s3: Vec<&Value> = got.iter().filter(|r| r["job_id"] == "in/big.jpg").collect();
    assert_eq!(from_s3.len(), 24, "{got:?}");
    assert!(
        from_s3.iter().all(|r| r["predictions"][0]["index"] == 652),
        "{from_s3:?}"
    );
    for (id, _) in &bomb_jobs {
        let r = got
            .iter()
            .find(|r| r["job_id"] == *id)
            .unwrap_or_else(|| panic!("{id}: {got:?}"));
        assert_eq!(r["error"]["code"], "image_too_large", "{r}");
    }
    assert_eq!(got.len(), 28, "{got:?}");
    assert!(peak <= PEAK_LIMIT, "peak RSS {peak} bytes");
    eprintln!(
        "worker, S3 inputs and bombs: peak RSS {:.1} MB",
        peak as f64 / 1e6
    );
}
