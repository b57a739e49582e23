//! `submit s3://bucket/prefix/` and `submit --manifest`: one job per object,
//! exactly once across an interrupted run and its re-run.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{aws_env, create_queue, drain, moto_endpoint, put_objects, s3_client, sqs_client};
use serde_json::Value;

/// Objects under the prefix that match, of `N` and a few that do not.
const N: usize = 250;

/// `onnx-lambda submit ARGS`, its SQS traffic through `sqs_endpoint`, one
/// SDK attempt per call (so an injected failure is final at once).
fn submit(sqs_endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
    cmd.arg("submit")
        .args(args)
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL_SQS", sqs_endpoint)
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Job ids in the queue, each with how many times it was enqueued.
async fn enqueued(sqs: &aws_sdk_sqs::Client, queue: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for body in drain(sqs, queue).await {
        let job: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            job["image"]["s3_uri"], job["job_id"],
            "a job names its object"
        );
        *counts
            .entry(job["job_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

/// A bucket with `N` images under `photos/`, and objects to leave out.
async fn stage() -> String {
    let bucket = common::unique_bucket("bulk");
    let mut objects: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let ext = ["jpg", "PNG", "webp"][i % 3];
            (format!("photos/img {i:04}.{ext}"), vec![i as u8; 16])
        })
        .collect();
    objects.push(("photos/notes.json".into(), b"{}".to_vec()));
    objects.push(("photos/sub/".into(), Vec::new()));
    objects.push(("elsewhere/x.jpg".into(), vec![1]));
    let refs: Vec<(&str, Vec<u8>)> = objects
        .iter()
        .map(|(k, b)| (k.as_str(), b.clone()))
        .collect();
    put_objects(&s3_client().await, &bucket, &refs).await;
    bucket
}

fn expected_ids(bucket: &str) -> Vec<String> {
    let mut ids: Vec<String> = (0..N)
        .map(|i| {
            let ext = ["jpg", "PNG", "webp"][i % 3];
            format!("s3://{bucket}/photos/img {i:04}.{ext}")
        })
        .collect();
    ids.sort();
    ids
}

fn assert_exactly_once(got: &HashMap<String, usize>, bucket: &str) {
    let mut ids: Vec<&String> = got.keys().collect();
    ids.sort();
    assert_eq!(ids, expected_ids(bucket).iter().collect::<Vec<_>>());
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "enqueued more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_a_prefix_enqueues_each_object_once_across_a_failed_run_and_its_rerun() {
    let bucket = stage().await;
    let sqs = sqs_client().await;
    let jobs = create_queue(&sqs, "bulk-jobs", &[]).await;
    let proxy = Proxy::start(moto_endpoint());
    let dir = std::env::temp_dir().join(common::unique_bucket("bulk-state"));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let uri = format!("s3://{bucket}/photos/");
    let args = ["--queue", &jobs, "--state", state.to_str().unwrap(), &uri];

    // SQS fails from its 6th request on: the run stops, says what failed,
    // and records what it did.
    proxy.fail_requests(5, 100_000);
    let out = submit(&proxy.endpoint, &args).output().unwrap();
    let first = summary(&out);
    assert_eq!(out.status.code(), Some(1), "{first}");
    assert_eq!(first["complete"], false, "{first}");
    let sent = first["submitted"].as_u64().unwrap();
    assert!(sent >= 10 && sent < N as u64, "{first}");
    assert!(!first["failed"].as_array().unwrap().is_empty(), "{first}");
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(recorded["submitted"], sent, "{recorded}");

    // The re-run enqueues only what is missing.
    proxy.fail_requests(0, 0);
    let out = submit(&proxy.endpoint, &args).output().unwrap();
    let second = summary(&out);
    assert!(out.status.success(), "{second}");
    assert_eq!(second["complete"], true, "{second}");
    assert_eq!(
        second["submitted"].as_u64().unwrap() + sent,
        N as u64,
        "{second}"
    );
    assert_eq!(second["submitted_in_total"], N, "{second}");
    assert_exactly_once(&enqueued(&sqs, &jobs).await, &bucket);

    // A third run has nothing left to do.
    let out = submit(&proxy.endpoint, &args).output().unwrap();
    let third = summary(&out);
    assert!(out.status.success(), "{third}");
    assert_eq!(
        (third["submitted"].as_u64(), third["complete"].as_bool()),
        (Some(0), Some(true))
    );
    assert!(drain(&sqs, &jobs).await.is_empty());

    // Another source with the same state file is refused.
    let other = format!("s3://{bucket}/elsewhere/");
    let out = submit(
        &proxy.endpoint,
        &["--queue", &jobs, "--state", state.to_str().unwrap(), &other],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give another --state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_a_submit_that_a_rerun_finishes_without_repeats() {
    let bucket = stage().await;
    let sqs = sqs_client().await;
    let jobs = create_queue(&sqs, "bulk-int", &[]).await;
    let proxy = Proxy::start(moto_endpoint());
    // Slow SQS answers: the run lasts long enough to be interrupted.
    proxy.set(common::proxy::Fault::Delay(Duration::from_millis(150)));
    let dir = std::env::temp_dir().join(common::unique_bucket("bulk-int"));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let uri = format!("s3://{bucket}/photos/");
    let args = ["--queue", &jobs, "--state", state.to_str().unwrap(), &uri];
    let child = submit(&proxy.endpoint, &args).spawn().unwrap();
    wait_for_file(&state, Duration::from_secs(30));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let first = summary(&out);
    assert_eq!(out.status.code(), Some(130), "{first}");
    assert_eq!(first["interrupted"], true, "{first}");
    let sent = first["submitted"].as_u64().unwrap();
    assert!(sent < N as u64, "{first}");

    proxy.set(common::proxy::Fault::Pass);
    let out = submit(&proxy.endpoint, &args).output().unwrap();
    let second = summary(&out);
    assert!(out.status.success(), "{second}");
    assert_eq!(
        second["submitted"].as_u64().unwrap() + sent,
        N as u64,
        "{second}"
    );
    assert_exactly_once(&enqueued(&sqs, &jobs).await, &bucket);
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_a_manifest_of_every_kind_of_line() {
    let sqs = sqs_client().await;
    let jobs = create_queue(&sqs, "bulk-manifest", &[]).await;
    let dir = std::env::temp_dir().join(common::unique_bucket("bulk-manifest"));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("manifest.csv");
    let submit_manifest = |lines: &str| {
        std::fs::write(&manifest, lines).unwrap();
        let args = ["--queue", &jobs, "--manifest", manifest.to_str().unwrap()];
        let out = submit(moto_endpoint(), &args).output().unwrap();
        (out.status.code(), summary(&out))
    };
    let (code, s) = submit_manifest(
        "photos,in/a%20b.jpg\n\"photos\",\"in/c.png\",\"v3\"\ns3://other/x y.png\n\n# comment\n",
    );
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["submitted"], 3, "{s}");
    let mut bodies: Vec<Value> = drain(&sqs, &jobs)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    bodies.sort_by_key(|j| j["job_id"].as_str().unwrap().to_string());
    let ids: Vec<&str> = bodies
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "s3://other/x y.png",
            "s3://photos/in/a b.jpg",
            "s3://photos/in/c.png?versionId=v3"
        ]
    );
    assert_eq!(bodies[2]["image"]["version_id"], "v3");

    // A line that is none of them stops the run at that line, with why.
    let (code, s) = submit_manifest("s3://photos/ok.jpg\nnot-a-line\n");
    assert_eq!(code, Some(1), "{s}");
    assert!(s["failed"][0].as_str().unwrap().contains("line 2"), "{s}");
}

fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `scripts/rehearse.py`, as the docs run it with 100,000 jobs, at a size
/// for the test suite: objects -> `submit s3://` -> two workers -> `collect
/// --summary`, every job accounted for, and its figures reported.
#[test]
fn the_rehearsal_accounts_for_every_job() {
    let jobs = 240;
    let out = Command::new(common::root().join(".venv/bin/python"))
        .arg(common::root().join("scripts/rehearse.py"))
        .args(["--jobs", &jobs.to_string(), "--workers", "2"])
        .args(["--binary", env!("CARGO_BIN_EXE_onnx-lambda")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["accounted_for"], true, "{report}");
    assert_eq!(report["results"], jobs, "{report}");
    assert_eq!(report["submit"]["submitted"], jobs, "{report}");
    let collect = &report["end_to_end"]["collect"];
    // --summary: the top-1 classes add up to the results.
    let classes: u64 = collect["classes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(classes, jobs, "{collect}");
    let ok: u64 = report["end_to_end"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["ok"].as_u64().unwrap())
        .sum();
    assert!(ok >= jobs, "{report}");
    // Every job: a send, a receive and a delete in batches of at most 10,
    // a result sent, received and deleted the same way: 0.6 calls a job at
    // least, every call counted.
    let calls = report["end_to_end"]["sqs_calls"].as_u64().unwrap();
    assert!(calls >= jobs * 6 / 10, "{report}");
    for p in report["processes"].as_array().unwrap() {
        assert!(p["peak_rss_mib"].as_f64().unwrap() > 1.0, "{p}");
    }
}
