//! Asynchronous batch predictions against real moto SQS + S3: every job is
//! accounted for, poison messages get error results, transient failures are
//! redelivered and end in the dead-letter queue, and a stopped worker loses
//! nothing.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{
    aws_env, create_queue, data, drain, put_objects, queue_depth, s3_client, send_all, sqs_client,
    sqs_event, unique_bucket, Worker,
};
use onnx_lambda::config::Config;
use onnx_lambda::jobs::{JobResult, DEADLINE_MARGIN};
use onnx_lambda::App;
use onnx_lambda::ModelLoader;
use serde_json::{json, Value};

const PHOTOS: [(&str, &[u64]); 5] = [
    ("chelsea.png", &[285, 281, 282]),
    ("coffee.png", &[967, 968]),
    ("rocket.jpg", &[657, 744, 812]),
    ("grace_hopper.jpg", &[652, 457]),
    ("china.jpg", &[698, 663]),
];

/// A bucket holding the five sample photos under `in/` and a corrupt file.
async fn photo_bucket() -> String {
    let bucket = unique_bucket("jobs");
    let mut objects: Vec<(String, Vec<u8>)> = PHOTOS
        .iter()
        .map(|(f, _)| {
            (
                format!("in/{f}"),
                std::fs::read(data(&format!("images/{f}"))).unwrap(),
            )
        })
        .collect();
    let png = std::fs::read(data("images/chelsea.png")).unwrap();
    objects.push(("in/corrupt.png".into(), png[..png.len() / 3].to_vec()));
    let refs: Vec<(&str, Vec<u8>)> = objects
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    put_objects(&s3_client().await, &bucket, &refs).await;
    bucket
}

/// Runs `onnx-lambda collect` and returns the results by job id.
fn collect(results: &str, expect: usize, timeout: u64) -> (HashMap<String, JobResult>, Value) {
    let out = std::env::temp_dir().join(format!(
        "collect-{}-{}.jsonl",
        std::process::id(),
        unique_bucket("c")
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
    cmd.args([
        "collect",
        "--queue",
        results,
        "--expect",
        &expect.to_string(),
        "--timeout",
        &timeout.to_string(),
        "--out",
    ])
    .arg(&out);
    for (k, v) in aws_env() {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    // collect succeeds exactly when every expected job arrived.
    assert_eq!(
        o.status.success(),
        summary["complete"] == true,
        "collect's exit status and summary disagree: {summary}"
    );
    let results = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let r: JobResult = serde_json::from_str(l).unwrap();
            (r.job_id.clone(), r)
        })
        .collect();
    std::fs::remove_file(&out).ok();
    (results, summary)
}

/// Regression: a job naming a 70,000-byte key made the AWS SDK panic while
/// building the request; the batch task died with it, and none of the five
/// jobs of its `SendMessageBatch` got a result or reached the dead-letter
/// queue (the visibility heartbeat kept them invisible).
#[tokio::test]
async fn a_job_with_an_over_long_key_gets_an_error_and_its_batch_completes() {
    let sqs = sqs_client().await;
    let bucket = photo_bucket().await;
    let jobs = create_queue(&sqs, "long-key-jobs", &[("VisibilityTimeout", "30".into())]).await;
    let results = create_queue(&sqs, "long-key-results", &[]).await;
    let mut bodies: Vec<String> = PHOTOS[..4]
        .iter()
        .enumerate()
        .map(|(i, (photo, _))| {
            json!({"job_id": format!("ok-{i}"), "image": {"s3_uri": format!("s3://{bucket}/in/{photo}")}})
                .to_string()
        })
        .collect();
    let long_key = format!("s3://{bucket}/in/{}", "k".repeat(70_000));
    bodies.insert(
        2,
        json!({"job_id": "long-key", "image": {"s3_uri": long_key}}).to_string(),
    );
    send_all(&sqs, &jobs, &bodies).await; // one SendMessageBatch of five
    let worker = Worker::start(&jobs, &results, &[]);
    let (got, summary) = tokio::task::spawn_blocking({
        let results = results.clone();
        move || collect(&results, 5, 90)
    })
    .await
    .unwrap();
    let stats = worker.stop();
    assert_eq!(summary["complete"], true, "{summary}; worker {stats}");
    for (i, (_, family)) in PHOTOS[..4].iter().enumerate() {
        let r = &got[&format!("ok-{i}")];
        assert_eq!(r.status, "ok", "{:?}", r.error);
        let top = r.predictions.as_ref().unwrap()[0].index as u64;
        assert!(family.contains(&top), "ok-{i}: {top}");
    }
    let bad = &got["long-key"];
    assert_eq!(bad.status, "error");
    let error = bad.error.as_ref().unwrap();
    assert_eq!(error.code, "invalid_s3_uri", "{}", error.message);
    assert!(error.message.len() < 2_000, "the key is not echoed whole");
    assert_eq!(queue_depth(&sqs, &jobs).await, 0, "every message deleted");
}

#[tokio::test]
async fn three_hundred_jobs_with_ten_percent_poison_all_get_results() {
    let sqs = sqs_client().await;
    let bucket = photo_bucket().await;
    let jobs = create_queue(&sqs, "jobs", &[("VisibilityTimeout", "60".into())]).await;
    let results = create_queue(&sqs, "results", &[]).await;

    // 270 good jobs (S3 references and inline base64) and 30 poison ones.
    let inline = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(data("images/coffee.png")).unwrap());
    let mut bodies = Vec::new();
    let mut expected: Vec<(Option<String>, &str, &[u64])> = Vec::new(); // (job id, code or "ok", family)
    for i in 0..300 {
        let id = format!("job-{i}");
        if i % 10 == 3 {
            match (i / 10) % 3 {
                0 => {
                    bodies.push("{\"job_id\": \"half a message".to_string());
                    expected.push((None, "invalid_job", &[]));
                }
                1 => {
                    bodies.push(json!({"job_id": id, "image": {"s3_uri": format!("s3://{bucket}/in/missing-{i}.jpg")}}).to_string());
                    expected.push((Some(id), "s3_object_not_found", &[]));
                }
                _ => {
                    bodies.push(json!({"job_id": id, "image": {"s3_uri": format!("s3://{bucket}/in/corrupt.png")}}).to_string());
                    expected.push((Some(id), "corrupt_image", &[]));
                }
            }
        } else if i % 10 == 7 {
            bodies.push(json!({"job_id": id, "image": {"base64": inline}, "top_k": 2}).to_string());
            expected.push((Some(id), "ok", &[967, 968]));
        } else {
            let (photo, family) = PHOTOS[i % 5];
            bodies.push(
                json!({"job_id": id, "image": {"s3_uri": format!("s3://{bucket}/in/{photo}")}})
                    .to_string(),
            );
            expected.push((Some(id), "ok", family));
        }
    }
    let message_ids = send_all(&sqs, &jobs, &bodies).await;
    let worker = Worker::start(&jobs, &results, &["--concurrency", "2"]);
    let (got, summary) = tokio::task::spawn_blocking({
        let results = results.clone();
        move || collect(&results, 300, 120)
    })
    .await
    .unwrap();
    let stats = worker.stop();
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(got.len(), 300, "every job has a result; worker {stats}");
    for (i, (id, code, family)) in expected.iter().enumerate() {
        // Invalid JSON has no job id: the result falls back to the message id.
        let id = id.clone().unwrap_or_else(|| message_ids[i].clone());
        let r = got.get(&id).unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(r.message_id, message_ids[i]);
        assert_eq!(
            r.model["sha256"],
            "8cdd0539566d8c48e81e8e8f5bdec67b53da39881abb4d56ce1a7e66fd10ea02"
        );
        assert!(r.attempt >= 1);
        if *code == "ok" {
            assert_eq!(r.status, "ok", "{id}: {:?}", r.error);
            let p = r.predictions.as_ref().unwrap();
            assert!(
                family.contains(&(p[0].index as u64)),
                "{id}: top-1 {} not in {family:?}",
                p[0].index
            );
            assert_eq!(p.len(), if i % 10 == 7 { 2 } else { 5 });
        } else {
            assert_eq!(r.status, "error", "{id}");
            assert_eq!(r.error.as_ref().unwrap().code, *code, "{id}");
        }
    }
    assert_eq!(summary["ok"], 270);
    assert_eq!(
        summary["errors"],
        json!({"invalid_job": 10, "s3_object_not_found": 10, "corrupt_image": 10}),
        "{summary}"
    );
    assert_eq!(summary["unreadable"], 0, "{summary}");
    assert!(summary["duplicates"].as_u64().is_some(), "{summary}");
    assert_eq!(
        queue_depth(&sqs, &jobs).await,
        0,
        "every job message was deleted"
    );
}

async fn app(results_queue: &str) -> Arc<App> {
    let config = Config {
        results_queue_url: Some(results_queue.to_string()),
        ..Config::default()
    };
    let s3 = s3_client().await;
    let app = App::init(config, &ModelLoader::new(None), Some(s3))
        .await
        .unwrap();
    Arc::new(app.with_sqs(sqs_client().await))
}

#[tokio::test]
async fn the_lambda_handler_reports_unwritten_results_as_batch_item_failures() {
    let sqs = sqs_client().await;
    let bucket = photo_bucket().await;
    // A results queue URL that does not exist yet: "unavailable".
    let name = unique_bucket("late-results");
    let url = format!("{}/123456789012/{name}", common::moto_endpoint());
    let app = app(&url).await;
    let bodies: Vec<String> = (0..4)
        .map(|i| json!({"job_id": format!("j{i}"), "image": {"s3_uri": format!("s3://{bucket}/in/{}", PHOTOS[i].0)}}).to_string())
        .chain(["not json".to_string()])
        .collect();

    let first = common::invoke(app.clone(), sqs_event(&bodies, 1), "r1").await;
    let failures: HashSet<String> = first["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect();
    let all: HashSet<String> = (0..5).map(|i| format!("msg-{i}")).collect();
    assert_eq!(
        failures, all,
        "nothing may be acknowledged while results cannot be written"
    );

    // The queue comes back; the redelivered batch completes.
    let created = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    assert_eq!(created, url);
    let second = common::invoke(app.clone(), sqs_event(&bodies, 2), "r2").await;
    assert_eq!(second["batchItemFailures"], json!([]), "{second}");
    let results: Vec<JobResult> = results_in(&sqs, &url).await;
    assert_eq!(results.len(), 5);
    for r in &results {
        assert_eq!(r.attempt, 2);
        if r.job_id == "msg-4" {
            assert_eq!(r.error.as_ref().unwrap().code, "invalid_job");
        } else {
            assert_eq!(r.status, "ok");
        }
    }
}

#[tokio::test]
async fn transient_failures_end_in_the_dead_letter_queue_and_nothing_is_lost() {
    let sqs = sqs_client().await;
    let bucket = photo_bucket().await;
    let dlq = create_queue(&sqs, "dlq", &[]).await;
    let dlq_arn = common::queue_arn(&sqs, &dlq).await;
    let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}).to_string();
    let jobs = create_queue(&sqs, "redrive-jobs", &[("RedrivePolicy", redrive)]).await;
    let results = create_queue(&sqs, "results", &[]).await;
    let bodies: Vec<String> = (0..20)
        .map(|i| json!({"job_id": format!("d{i}"), "image": {"s3_uri": format!("s3://{bucket}/in/{}", PHOTOS[i % 5].0)}}).to_string())
        .collect();
    let job_ids = |range: std::ops::Range<usize>| -> HashSet<String> {
        range.map(|i| format!("d{i}")).collect()
    };

    // Phase 1: the results queue is unreachable; every batch fails
    // transiently and is redelivered after a 1 s visibility timeout, until
    // the redrive policy moves all ten jobs to the DLQ.
    send_all(&sqs, &jobs, &bodies[..10]).await;
    let missing = format!(
        "{}/123456789012/{}",
        common::moto_endpoint(),
        unique_bucket("nowhere")
    );
    let worker = Worker::start(
        &jobs,
        &missing,
        &["--visibility-timeout", "1", "--batch-size", "5"],
    );
    let start = Instant::now();
    while queue_depth(&sqs, &dlq).await < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "phase 1: only {} of 10 jobs dead-lettered",
            queue_depth(&sqs, &dlq).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stats = worker.stop();
    assert!(stats["redelivered"].as_u64().unwrap() >= 10, "{stats}");
    assert_eq!(stats["ok"], 0, "nothing could be written: {stats}");

    // Phase 2: results flow again; ten new jobs complete.
    send_all(&sqs, &jobs, &bodies[10..]).await;
    let worker = Worker::start(&jobs, &results, &["--visibility-timeout", "10"]);
    let start = Instant::now();
    while queue_depth(&sqs, &jobs).await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "phase 2: jobs left in the queue"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stats = worker.stop();
    assert_eq!(stats["ok"], 10, "{stats}");
    let dead = common::job_ids_in(&sqs, &dlq).await;
    let done = common::job_ids_in(&sqs, &results).await;
    assert_eq!(
        dead,
        job_ids(0..10),
        "phase 1's jobs are dead-lettered, whole"
    );
    assert_eq!(done, job_ids(10..20), "phase 2's jobs have results");
}

/// Every result message in `queue`, parsed (and deleted).
async fn results_in(sqs: &aws_sdk_sqs::Client, queue: &str) -> Vec<JobResult> {
    drain(sqs, queue)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

/// [`results_in`], by job id.
async fn results_by_job(sqs: &aws_sdk_sqs::Client, queue: &str) -> HashMap<String, JobResult> {
    let results = results_in(sqs, queue).await;
    results.into_iter().map(|r| (r.job_id.clone(), r)).collect()
}

#[tokio::test]
async fn a_worker_stopped_mid_run_and_restarted_loses_nothing() {
    let sqs = sqs_client().await;
    let bucket = photo_bucket().await;
    let jobs = create_queue(&sqs, "restart-jobs", &[("VisibilityTimeout", "30".into())]).await;
    let results = create_queue(&sqs, "restart-results", &[]).await;
    let bodies: Vec<String> = (0..60)
        .map(|i| json!({"job_id": format!("r{i}"), "image": {"s3_uri": format!("s3://{bucket}/in/{}", PHOTOS[i % 5].0)}}).to_string())
        .collect();
    send_all(&sqs, &jobs, &bodies).await;

    let worker = Worker::start(&jobs, &results, &[]);
    let start = Instant::now();
    while queue_depth(&sqs, &results).await < 10 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = worker.stop(); // in the middle of the run
    assert!(
        stats["deleted"].as_u64().unwrap() < 60,
        "stopped mid-run: {stats}"
    );
    assert_eq!(
        stats["received"],
        stats["deleted"].as_u64().unwrap() + stats["redelivered"].as_u64().unwrap(),
        "{stats}"
    );

    let worker = Worker::start(&jobs, &results, &[]);
    let (got, summary) = tokio::task::spawn_blocking({
        let results = results.clone();
        move || collect(&results, 60, 60)
    })
    .await
    .unwrap();
    worker.stop();
    assert_eq!(summary["complete"], true, "{summary}");
    let ids: HashSet<&String> = got.keys().collect();
    assert_eq!(ids.len(), 60);
    assert!(got.values().all(|r| r.status == "ok"));
}

#[tokio::test]
async fn s3_event_notifications_through_sqs_classify_the_new_objects() {
    let sqs = sqs_client().await;
    let bucket = unique_bucket("drop");
    put_objects(
        &s3_client().await,
        &bucket,
        &[(
            "in/my cat.jpg",
            std::fs::read(data("images/chelsea.png")).unwrap(),
        )],
    )
    .await;
    let results = create_queue(&sqs, "s3-results", &[]).await;
    let app = app(&results).await;
    // The documented example, pointed at this bucket.
    let mut event: Value = common::event("sqs-s3-notification.json");
    let mut body: Value =
        serde_json::from_str(event["Records"][0]["body"].as_str().unwrap()).unwrap();
    body["Records"][0]["s3"]["bucket"]["name"] = json!(bucket);
    event["Records"][0]["body"] = json!(body.to_string());
    let out = common::invoke(app.clone(), event, "s3").await;
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    let got: Vec<JobResult> = results_in(&sqs, &results).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].job_id, "in/my cat.jpg",
        "job_id falls back to the (decoded) key"
    );
    assert_eq!(got[0].predictions.as_ref().unwrap()[0].index, 285);

    // The other example: a job for a missing object and an inline 1x1 PNG.
    let event: Value = common::event("sqs-jobs.json");
    let out = common::invoke(app.clone(), event, "jobs").await;
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    let got = results_by_job(&sqs, &results).await;
    assert_eq!(
        got["photo-0001"].error.as_ref().unwrap().code,
        "s3_object_not_found"
    );
    assert_eq!(got["photo-0002"].status, "ok");
    assert_eq!(got["photo-0002"].predictions.as_ref().unwrap().len(), 3);
}

#[tokio::test]
async fn an_unreadable_sqs_event_fails_every_message_it_names() {
    let results = create_queue(&sqs_client().await, "unused-results", &[]).await;
    let app = app(&results).await;
    // `body` must be a string; a malformed record must not drop the batch.
    let event = json!({"Records": [
        {"eventSource": "aws:sqs", "messageId": "m1", "body": 42},
        {"eventSource": "aws:sqs", "messageId": "m2", "body": "{}"}
    ]});
    let out = common::invoke(app.clone(), event, "bad").await;
    assert_eq!(
        out["batchItemFailures"],
        json!([{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]),
        "{out}"
    );
    // Counted: the invocation's metrics say what happened.
    let metrics = app.metrics().take_invocation();
    assert_eq!(metrics.errors.get("invalid_event"), Some(&1));
    assert_eq!(metrics.sqs_batch_messages, Some(2));
    assert_eq!(metrics.sqs_batch_item_failures, Some(2));
}

/// Regression: an SQS job with invalid base64 got `invalid_s3_uri`, while
/// HTTP said `invalid_base64` for the same input. Both doors now decode
/// through one function and agree.
#[tokio::test]
async fn invalid_base64_gets_the_same_code_from_a_job_and_over_http() {
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "b64-results", &[]).await;
    let app = app(&results).await;
    let bad = "this is not base64!";
    let bodies = vec![json!({"job_id": "bad-b64", "image": {"base64": bad}}).to_string()];
    let out = common::invoke(app.clone(), sqs_event(&bodies, 1), "b64").await;
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    let got: Vec<JobResult> = results_in(&sqs, &results).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, "error");
    let job_error = got[0].error.as_ref().unwrap();
    assert_eq!(job_error.code, "invalid_base64", "{}", job_error.message);

    let request = http::Request::builder()
        .method("POST")
        .uri("/predict")
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(json!({"image": bad}).to_string()))
        .unwrap();
    let response = onnx_lambda::http::route(Some(app), request).await;
    assert_eq!(response.status(), 400);
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["error"]["code"], job_error.code);
}

/// A Lambda batch starts no work within two seconds of its deadline: what
/// it did not do is reported for redelivery, what it did is written, and
/// the two never overlap, wherever the deadline falls.
#[tokio::test]
async fn sqs_batches_stop_before_the_invocation_deadline_and_lose_nothing() {
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "deadline-results", &[]).await;
    let app = app(&results).await;
    // Inline images: the work is classification alone, in chunks of one
    // image per thread, so a deadline halfway through the batch's time
    // falls between chunks (fetch times from moto vary too much for that).
    let bodies: Vec<String> = (0..10)
        .map(|i| {
            let photo = std::fs::read(data(&format!("images/{}", PHOTOS[i % 5].0))).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(photo);
            json!({"job_id": format!("d{i}"), "image": {"base64": b64}}).to_string()
        })
        .collect();
    let all: HashSet<String> = (0..10).map(|i| format!("msg-{i}")).collect();

    // Inside the margin already: nothing is started, nothing is written.
    let soon = Instant::now() + Duration::from_millis(500);
    let out = common::invoke_until(app.clone(), sqs_event(&bodies, 1), "late", Some(soon)).await;
    assert_eq!(common::batch_failures(&out), all, "{out}");
    assert!(results_in(&sqs, &results).await.is_empty());

    // Time enough: all done. The classification's own time (its images'
    // times over the threads; writing to moto varies too much to count)
    // places the next deadlines.
    let later = Instant::now() + Duration::from_secs(300);
    let out = common::invoke_until(app.clone(), sqs_event(&bodies, 2), "ok", Some(later)).await;
    assert!(common::batch_failures(&out).is_empty(), "{out}");
    let got = results_in(&sqs, &results).await;
    assert_eq!(got.len(), 10);
    let image_ms: f64 = got.iter().map(|r| r.timing_ms.unwrap().total).sum();
    let whole = Duration::from_secs_f64(image_ms / 1000.0 / app.threads() as f64);
    assert!(got.iter().all(|r| r.status == "ok"));

    // Deadlines in the middle of the work (a quarter to three quarters of
    // the batch's time, tried in turn, as other tests load the machine):
    // each invocation returns before its deadline, and every message is
    // either written or failed, never both, never neither; at least one
    // deadline splits the batch, some of each.
    let mut split = None;
    for (attempt, quarters) in [2u32, 1, 3, 2, 1, 3].into_iter().enumerate() {
        let tight = Instant::now() + DEADLINE_MARGIN + whole * quarters / 4;
        let event = sqs_event(&bodies, 3 + attempt as u32);
        let out = common::invoke_until(app.clone(), event, "tight", Some(tight)).await;
        let returned = Instant::now();
        let failed = common::batch_failures(&out);
        let written: HashSet<String> = results_in(&sqs, &results)
            .await
            .into_iter()
            .map(|r| r.message_id)
            .collect();
        assert!(
            returned <= tight,
            "returned {:?} after the deadline",
            returned - tight
        );
        assert!(failed.is_disjoint(&written), "{failed:?} / {written:?}");
        assert_eq!(&failed | &written, all);
        if !failed.is_empty() && !written.is_empty() {
            split = Some((failed.len(), written.len()));
            break;
        }
    }
    assert!(
        split.is_some(),
        "no deadline between a quarter and three quarters of the batch's time ({whole:?}) split it"
    );
}

#[tokio::test]
async fn submit_uploads_a_folder_and_enqueues_one_job_per_image() {
    let s3 = s3_client().await;
    let sqs = sqs_client().await;
    let bucket = unique_bucket("submit");
    put_objects(&s3, &bucket, &[]).await;
    let jobs = create_queue(&sqs, "submit-jobs", &[]).await;
    let dir = std::env::temp_dir().join(format!("onnx-lambda-submit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["a.jpg", "b.png", "c.PNG"];
    for (name, photo) in names.iter().zip(["china.jpg", "chelsea.png", "coffee.png"]) {
        std::fs::copy(data(&format!("images/{photo}")), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    let submit = |bucket: &str| {
        Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
            .args([
                "submit", "--bucket", bucket, "--prefix", "batch-1/", "--queue", &jobs,
            ])
            .arg(&dir)
            .envs(aws_env())
            .output()
            .unwrap()
    };

    let out = submit(&bucket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary, json!({"submitted": 3, "failed": []}));
    let mut enqueued: Vec<Value> = drain(&sqs, &jobs)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    enqueued.sort_by_key(|j| j["job_id"].as_str().unwrap().to_string());
    for (job, name) in enqueued.iter().zip(names) {
        let key = format!("batch-1/{name}");
        assert_eq!(job["job_id"], key.as_str());
        assert_eq!(job["image"]["s3_uri"], format!("s3://{bucket}/{key}"));
        let stored = s3
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        let bytes = stored.body.collect().await.unwrap().into_bytes();
        assert_eq!(
            bytes.as_ref(),
            std::fs::read(dir.join(name)).unwrap().as_slice()
        );
    }
    assert_eq!(enqueued.len(), 3, "the text file is not an image");

    // A bucket that does not exist: every file fails, with a reason, exit 1.
    let out = submit("no-such-bucket-for-submit");
    assert_eq!(out.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["submitted"], 0);
    let failed = summary["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 3, "{summary}");
    assert!(
        failed
            .iter()
            .all(|f| f.as_str().unwrap().contains("upload failed")),
        "{summary}"
    );
    assert!(
        drain(&sqs, &jobs).await.is_empty(),
        "nothing enqueued for files not uploaded"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The result code and parsed result string of each task, by task id.
fn task_results(answer: &Value) -> HashMap<String, (String, Value)> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {answer}"))
        .iter()
        .map(|r| {
            let s = r["resultString"].as_str().unwrap();
            (
                r["taskId"].as_str().unwrap().to_string(),
                (
                    r["resultCode"].as_str().unwrap().to_string(),
                    serde_json::from_str(s).unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn s3_batch_operations_tasks_each_get_a_result_code() {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let s3 = s3_client().await;
    let bucket = unique_bucket("batch-ops");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let versioning = VersioningConfiguration::builder()
        .status(BucketVersioningStatus::Enabled)
        .build();
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(versioning)
        .send()
        .await
        .unwrap();
    // One key, two versions: a cat, then a coffee mug.
    let mut versions = Vec::new();
    for photo in ["chelsea.png", "coffee.png"] {
        let out = s3
            .put_object()
            .bucket(&bucket)
            .key("in/a photo.png")
            .body(
                std::fs::read(data(&format!("images/{photo}")))
                    .unwrap()
                    .into(),
            )
            .send()
            .await
            .unwrap();
        versions.push(out.version_id().unwrap().to_string());
    }
    put_objects(&s3, &bucket, &[("notes.txt", b"not an image".to_vec())]).await;
    let task = |id: &str, key: &str, version: Option<&str>| json!({"taskId": id, "s3Key": key, "s3VersionId": version, "s3Bucket": bucket});
    let event = json!({
        "invocationSchemaVersion": "2.0", "invocationId": "inv-1",
        "job": {"id": "job-1", "userArguments": {"top_k": "3"}},
        "tasks": [
            task("pinned", "in/a+photo.png", Some(&versions[0])),
            task("current", "in/a%20photo.png", None),
            task("missing", "in/nothing.png", None),
            task("not-an-image", "notes.txt", None),
        ]
    });

    // No results queue: the answer alone carries the results.
    let app = common::app_with(Config::default(), Some(s3.clone()), None).await;
    let answer = common::invoke(app.clone(), event.clone(), "b1").await;
    assert_eq!(answer["invocationId"], "inv-1", "{answer}");
    assert_eq!(answer["invocationSchemaVersion"], "2.0", "{answer}");
    assert_eq!(answer["treatMissingKeysAs"], "PermanentFailure", "{answer}");
    let got = task_results(&answer);
    assert_eq!(got.len(), 4, "{answer}");
    assert_eq!(got["pinned"].0, "Succeeded", "{answer}");
    assert!(
        [285, 281, 282].contains(&got["pinned"].1["index"].as_u64().unwrap()),
        "{answer}"
    );
    assert_eq!(got["current"].0, "Succeeded", "{answer}");
    assert!(
        [967, 968].contains(&got["current"].1["index"].as_u64().unwrap()),
        "{answer}"
    );
    assert_eq!(got["missing"].0, "PermanentFailure");
    assert_eq!(got["missing"].1["error"], "s3_object_not_found");
    assert_eq!(got["not-an-image"].0, "PermanentFailure");
    assert_eq!(got["not-an-image"].1["error"], "unsupported_format");

    // With a results queue, every task's result is on it, named by its
    // object (and version).
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "batch-ops-results", &[]).await;
    let app = self::app(&results).await;
    let answer = common::invoke(app.clone(), event.clone(), "b2").await;
    assert!(
        task_results(&answer)
            .values()
            .filter(|r| r.0 == "Succeeded")
            .count()
            == 2
    );
    let got = results_by_job(&sqs, &results).await;
    let pinned = format!("s3://{bucket}/in/a photo.png?versionId={}", versions[0]);
    assert_eq!(got.len(), 4, "{:?}", got.keys());
    assert_eq!(got[&pinned].predictions.as_ref().unwrap().len(), 3);
    assert_eq!(got[&format!("s3://{bucket}/notes.txt")].status, "error");

    // A deadline that leaves no time: every task is temporary, for S3 to retry.
    let soon = Instant::now() + DEADLINE_MARGIN / 2;
    let answer = common::invoke_until(app, event, "b3", Some(soon)).await;
    let got = task_results(&answer);
    assert!(
        got.values()
            .all(|(code, r)| code == "TemporaryFailure" && r["error"] == "deadline"),
        "{answer}"
    );
}

/// Regression: moto's delete assigns back a copy of the queue it walked,
/// which drops a message sent into a second delete's copy meanwhile, and
/// a message after one a receive moves to the dead-letter queue
/// meanwhile; a job of the crash test (tests/aws/crash.rs) vanished the
/// first way. Every moto server of the suite runs `scripts/moto_server.py`,
/// which makes both hold the queue's lock.
#[test]
fn the_suites_moto_loses_no_message_to_a_racing_delete() {
    let out = common::python_tool("moto_delete_race.py", "");
    let right = json!({
        "two_deletes_and_a_send": {"queue": ["b"]},
        "a_delete_and_a_dead_letter_move": {"queue": ["y"], "dead": ["x"]},
    });
    assert_eq!(out["locked"], right, "{out}");
    // If this fails, moto as pinned no longer loses these messages: the
    // patch in scripts/moto_server.py can go.
    let lost = json!({
        "two_deletes_and_a_send": {"queue": ["c"]},
        "a_delete_and_a_dead_letter_move": {"queue": ["x"], "dead": ["x"]},
    });
    assert_eq!(out["unlocked"], lost, "{out}");
}
