//! Crash-safe jobs at volume: 2,000 jobs (5% poison) through two concurrent
//! `worker` processes, one SIGKILLed mid-batch and restarted, with `collect`
//! draining the results all along. Every job ends with a result or in the
//! dead-letter queue, and `collect` reconciles it.
//!
//! moto scans a whole queue on every call, so a backlog of 2,000 slows it
//! tenfold; the producer keeps the job queue short instead, as a real
//! producer feeding a fleet would not need to.

use crate::common;

use std::collections::HashSet;
use std::io::Cursor;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{create_queue, queue_depth, send_all, sqs_client, Worker};
use serde_json::{json, Value};

const JOBS: usize = 2_000;
/// Most jobs waiting in the queue at once.
const BACKLOG: usize = 200;

fn bodies() -> Vec<String> {
    // Small inline images keep moto's traffic light; every 20th job is poison.
    let png = std::fs::read(common::data("images/coffee.png")).unwrap();
    let img = image::load_from_memory(&png).unwrap().thumbnail(40, 40);
    let mut small = Cursor::new(Vec::new());
    img.write_to(&mut small, image::ImageFormat::Png).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(small.into_inner());
    (0..JOBS)
        .map(|i| match (i % 20, i % 60) {
            (0, 0) => json!({"job_id": format!("c{i}"), "image": {"base64": "!!"}}),
            (0, 20) => json!({"job_id": format!("c{i}"), "image": {"base64": "AAAA"}}),
            (0, _) => json!({"job_id": format!("c{i}"), "image": {}}),
            _ => json!({"job_id": format!("c{i}"), "image": {"base64": b64}}),
        })
        .map(|v| v.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_jobs_survive_a_worker_killed_mid_batch() {
    let sqs = sqs_client().await;
    let dlq = create_queue(&sqs, "crash-dlq", &[]).await;
    let redrive =
        json!({"deadLetterTargetArn": common::queue_arn(&sqs, &dlq).await, "maxReceiveCount": "5"});
    let jobs = create_queue(
        &sqs,
        "crash-jobs",
        &[
            ("RedrivePolicy", redrive.to_string()),
            ("VisibilityTimeout", "5".into()),
        ],
    )
    .await;
    let results = create_queue(&sqs, "crash-results", &[]).await;
    let out = std::env::temp_dir().join(format!("onnx-lambda-crash-{}.jsonl", std::process::id()));
    let collector = {
        let (results, out) = (results.clone(), out.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
                .args([
                    "collect",
                    "--queue",
                    &results,
                    "--expect",
                    &JOBS.to_string(),
                ])
                .args(["--timeout", "60", "--out"])
                .arg(&out)
                .envs(common::aws_env())
                .output()
                .unwrap()
        })
    };

    let args = ["--concurrency", "2", "--visibility-timeout", "5"];
    let steady = Worker::start(&jobs, &results, &args);
    let mut doomed = Some(Worker::start(&jobs, &results, &args));
    let mut restarted = None;
    let started = Instant::now();
    let bodies = bodies();
    let mut sent = 0;
    while sent < JOBS {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress after {sent} jobs"
        );
        if queue_depth(&sqs, &jobs).await < BACKLOG {
            let wave = (sent + BACKLOG / 2).min(JOBS);
            send_all(&sqs, &jobs, &bodies[sent..wave]).await;
            sent = wave;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Well under way: one worker dies holding received, unfinished batches.
        if sent >= JOBS / 3 {
            if let Some(w) = doomed.take() {
                w.kill();
                restarted = Some(Worker::start(&jobs, &results, &args));
            }
        }
    }
    let collected = collector.await.unwrap();
    let summary: Value = serde_json::from_slice(&collected.stdout).unwrap();
    let stats = (steady.stop(), restarted.expect("restarted").stop());
    let dead = common::job_ids_in(&sqs, &dlq).await;
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::remove_file(&out).ok();
    let written: HashSet<String> = lines
        .iter()
        .map(|l| l["job_id"].as_str().unwrap().to_string())
        .collect();
    let all: HashSet<String> = (0..JOBS).map(|i| format!("c{i}")).collect();

    assert_eq!(lines.len(), written.len(), "collect writes each job once");
    let accounted = &written | &dead;
    let missing: Vec<&String> = all.difference(&accounted).collect();
    // Still in the job queue (visible or in flight), a result `collect`
    // did not wait for, or gone: which one tells a stuck or unredelivered
    // message, or a slow collector, from a lost one.
    let left = queue_depth(&sqs, &jobs).await;
    let unread = queue_depth(&sqs, &results).await;
    assert!(
        missing.is_empty(),
        "lost jobs: {missing:?}; {left} messages left in the job queue, {unread} in the results queue; {summary}; workers {stats:?}"
    );
    assert_eq!(accounted.len(), JOBS, "nothing but these jobs: {summary}");
    assert_eq!(summary["complete"], dead.is_empty(), "{summary}");
    let errors: usize = summary["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap() as usize)
        .sum();
    let poison_written = written
        .iter()
        .filter(|id| id[1..].parse::<usize>().unwrap() % 20 == 0)
        .count();
    assert_eq!(
        errors, poison_written,
        "each poison job with a result is an error: {summary}"
    );
    assert_eq!(
        summary["ok"].as_u64().unwrap() as usize + errors,
        written.len(),
        "{summary}"
    );
    assert_eq!(queue_depth(&sqs, &jobs).await, 0, "the job queue is empty");
    // The kill hit a worker holding jobs: they came again (attempt 2 or
    // later) and were done then, none dead-lettered for it. A job whose
    // result the killed worker had sent but not yet deleted comes again
    // too, and its second result is a duplicate that `collect` counts
    // and drops: either shows the redelivery.
    let redone = lines.iter().any(|l| l["attempt"].as_u64() >= Some(2));
    let duplicates = summary["duplicates"].as_u64().unwrap_or(0);
    assert!(
        redone || duplicates > 0,
        "no job was redelivered: the killed worker held none; {summary}; workers {stats:?}"
    );
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    eprintln!(
        "{JOBS} jobs in {:?}: {} results, {} dead-lettered, {} duplicates seen by collect; workers {stats:?}",
        started.elapsed(),
        written.len(),
        dead.len(),
        summary["duplicates"]
    );
}
