//! Fault injection against the real moto server, through the proxy in
//! `tests/common/proxy.rs`: S3 unreachable or silent at cold start, S3 slow
//! during a request or a job, the results queue failing in the middle of a
//! batch, and duplicate deliveries. Every test counts: nothing is lost, and
//! duplicates appear only as at-least-once delivery allows.

use crate::common;

use std::collections::HashSet;
use std::io::Cursor;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::proxy::{Fault, Proxy};
use common::{
    aws_env, create_queue, drain, moto_endpoint, put_objects, s3_client, sqs_client, sqs_event,
    unique_bucket,
};
use onnx_lambda::jobs::JobResult;
use onnx_lambda::{App, Config, ModelLoader};
use serde_json::{json, Value};

async fn results_in(queue: &str) -> Vec<JobResult> {
    drain(&sqs_client().await, queue)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

/// A small PNG, base64: quick to classify many times.
fn small_photo_b64() -> String {
    let png = std::fs::read(common::data("images/chelsea.png")).unwrap();
    let img = image::load_from_memory(&png).unwrap().thumbnail(96, 96);
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

/// The binary, with the model on S3 behind `proxy`, as at a Lambda cold start.
fn cold_start(proxy: &Proxy, fault: Fault) -> (bool, String, Duration) {
    proxy.set(fault);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
        .arg("predict")
        .arg(common::data("images/chelsea.png"))
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL", &proxy.endpoint)
        .env("MODEL_URI", "s3://no-such-place/zoo/model.onnx")
        .env("SDK_TIMEOUT_SECS", "1")
        .env("AWS_MAX_ATTEMPTS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr, started.elapsed())
}

#[test]
fn s3_unreachable_or_silent_at_cold_start_is_a_clear_start_up_failure() {
    let proxy = Proxy::start(moto_endpoint());
    for fault in [Fault::Reset, Fault::Blackhole] {
        let before = proxy.requests();
        let (ok, stderr, took) = cold_start(&proxy, fault);
        assert!(!ok, "{fault:?}: start-up must fail");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: loading the model from s3://no-such-place/zoo/model.onnx"),
            "{fault:?}: {stderr}"
        );
        assert!(last.contains("failed after retries"), "{fault:?}: {last}");
        if fault == Fault::Blackhole {
            // Two attempts, each cut off by SDK_TIMEOUT_SECS: the SDK retried.
            assert_eq!(proxy.requests() - before, 2, "{last}");
            assert!(
                last.contains("timed out") || last.contains("timeout"),
                "{last}"
            );
        }
        // Two attempts of SDK_TIMEOUT_SECS=1 and a backoff: seconds. With
        // the setting ignored, the 10 s default makes it 20 s or more.
        assert!(
            took < Duration::from_secs(12),
            "{fault:?}: bounded by SDK_TIMEOUT_SECS, took {took:?}"
        );
    }
}

#[tokio::test]
async fn slow_s3_is_a_502_for_a_request_and_a_redelivery_for_a_job() {
    let bucket = unique_bucket("faults-in");
    let photo = std::fs::read(common::data("images/chelsea.png")).unwrap();
    put_objects(&s3_client().await, &bucket, &[("in/cat.png", photo)]).await;
    let proxy = Proxy::start(moto_endpoint());
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "faults-results", &[]).await;
    let config = Config {
        results_queue_url: Some(results.clone()),
        s3_input_allowlist: onnx_lambda::parse_allowlist(&format!("s3://{bucket}/in/")).unwrap(),
        ..Config::default()
    };
    let slow_s3 = common::s3_client_at(&proxy.endpoint, Duration::from_secs(1), 2);
    let app = common::app_with(config, Some(slow_s3), Some(sqs)).await;
    let uri = format!("s3://{bucket}/in/cat.png");

    proxy.set(Fault::Delay(Duration::from_secs(3)));
    let req = http::Request::builder()
        .method("POST")
        .uri("/predict")
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(json!({"s3_uri": uri}).to_string()))
        .unwrap();
    let r = onnx_lambda::http::route(Some(app.clone()), req).await;
    assert_eq!(r.status(), 502);
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body["error"]["code"], "s3_unavailable", "{body}");

    let job = vec![json!({"job_id": "slow", "image": {"s3_uri": uri}}).to_string()];
    let out = common::invoke(app.clone(), sqs_event(&job, 1), "slow").await;
    assert_eq!(
        common::batch_failures(&out),
        HashSet::from(["msg-0".to_string()]),
        "{out}"
    );
    assert!(
        results_in(&results).await.is_empty(),
        "no result for a job delivered again"
    );

    // S3 recovers; the redelivery completes.
    proxy.set(Fault::Pass);
    let out = common::invoke(app, sqs_event(&job, 2), "recovered").await;
    assert!(common::batch_failures(&out).is_empty(), "{out}");
    let got = results_in(&results).await;
    assert_eq!(
        (got.len(), got[0].status.as_str(), got[0].attempt),
        (1, "ok", 2)
    );
}

#[tokio::test]
async fn the_results_queue_failing_mid_batch_loses_nothing() {
    let proxy = Proxy::start(moto_endpoint());
    let results = create_queue(&sqs_client().await, "faults-midbatch", &[]).await;
    let config = Config {
        results_queue_url: Some(results.clone()),
        ..Config::default()
    };
    let flaky_sqs = common::sqs_client_at(&proxy.endpoint, Duration::from_secs(5), 2);
    let app = common::app_with(config, None, Some(flaky_sqs)).await;
    let image = small_photo_b64();
    let bodies: Vec<String> = (0..25)
        .map(|i| json!({"job_id": format!("j{i}"), "image": {"base64": image}}).to_string())
        .collect();

    // 25 results go out in three calls (10, 10, 5): the first passes, every
    // later request (and every retry of it) gets a 500.
    proxy.fail_requests(1, 1_000);
    let out = common::invoke(app.clone(), sqs_event(&bodies, 1), "flaky").await;
    let failed = common::batch_failures(&out);
    let written: HashSet<String> = results_in(&results)
        .await
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!((written.len(), failed.len()), (10, 15), "{out}");
    assert!(written.is_disjoint(&failed));

    // Lambda delivers the failed messages again; now the queue works.
    proxy.fail_requests(0, 0);
    let again: Vec<String> = (0..25)
        .filter(|i| failed.contains(&format!("msg-{i}")))
        .map(|i| bodies[i].clone())
        .collect();
    let out = common::invoke(app, sqs_event(&again, 2), "retry").await;
    assert!(common::batch_failures(&out).is_empty(), "{out}");
    let second: HashSet<String> = results_in(&results)
        .await
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(second.len(), 15);
    let all: HashSet<String> = (0..25).map(|i| format!("j{i}")).collect();
    let first_jobs: HashSet<String> = written
        .iter()
        .map(|m| format!("j{}", m.trim_start_matches("msg-")))
        .collect();
    assert_eq!(&first_jobs | &second, all, "every job has a result");
    assert!(first_jobs.is_disjoint(&second), "no job was written twice");
}

#[tokio::test]
async fn duplicate_deliveries_give_duplicate_results_that_collect_counts_once() {
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "faults-dupes", &[]).await;
    let config = Config {
        results_queue_url: Some(results.clone()),
        ..Config::default()
    };
    let app = common::app_with(config, None, Some(sqs)).await;
    let image = small_photo_b64();
    let bodies: Vec<String> = (0..6)
        .map(|i| json!({"job_id": format!("d{i}"), "image": {"base64": image}}).to_string())
        .collect();
    // At-least-once: the same batch arrives twice (and one message a third time).
    for (n, batch) in [bodies.clone(), bodies.clone(), bodies[..1].to_vec()]
        .iter()
        .enumerate()
    {
        let out = common::invoke(app.clone(), sqs_event(batch, n as u32 + 1), "dupe").await;
        assert!(common::batch_failures(&out).is_empty(), "{out}");
    }
    let out = std::env::temp_dir().join(format!("onnx-lambda-dupes-{}.jsonl", std::process::id()));
    let collected = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
        .args([
            "collect",
            "--queue",
            &results,
            "--expect",
            "6",
            "--timeout",
            "20",
            "--out",
        ])
        .arg(&out)
        .envs(aws_env())
        .output()
        .unwrap();
    assert!(
        collected.status.success(),
        "{}",
        String::from_utf8_lossy(&collected.stderr)
    );
    let summary: Value = serde_json::from_slice(&collected.stdout).unwrap();
    assert_eq!(summary["results"], 6, "{summary}");
    assert_eq!(summary["ok"], 6, "{summary}");
    assert_eq!(summary["complete"], true, "{summary}");
    // 13 results were written for 6 jobs: collect stops at the 6th distinct
    // one, and what it saw before that beyond one per job are duplicates.
    let dupes = summary["duplicates"].as_u64().unwrap();
    assert!(dupes <= 7, "{summary}");
    let left = common::drain(&common::sqs_client().await, &results).await;
    assert_eq!(
        6 + dupes as usize + left.len(),
        13,
        "every result written is collected once, counted as a duplicate, or still queued: {summary}"
    );
    let left_ids: HashSet<String> = left
        .iter()
        .map(|b| {
            serde_json::from_str::<Value>(b).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        left_ids.iter().all(|id| id.starts_with('d')),
        "{left_ids:?}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: HashSet<&str> = lines
        .iter()
        .map(|l| l["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (lines.len(), ids.len()),
        (6, 6),
        "one line per distinct job"
    );
    std::fs::remove_file(&out).ok();
}

#[tokio::test]
async fn access_denied_is_reported_as_such_for_inputs_and_for_the_model() {
    let bucket = unique_bucket("faults-denied");
    let photo = std::fs::read(common::data("images/chelsea.png")).unwrap();
    let model = std::fs::read(onnx_lambda::bundled_model_path()).unwrap();
    put_objects(
        &s3_client().await,
        &bucket,
        &[("in/cat.png", photo), ("m.onnx", model)],
    )
    .await;
    let proxy = Proxy::start(moto_endpoint());
    let s3 = common::s3_client_at(&proxy.endpoint, Duration::from_secs(5), 2);
    let config = Config {
        s3_input_allowlist: onnx_lambda::parse_allowlist(&format!("s3://{bucket}/in/")).unwrap(),
        ..Config::default()
    };
    let app = common::app_with(config, Some(s3.clone()), None).await;

    proxy.inject(0, 100, common::proxy::Injected::s3_access_denied());
    let req = http::Request::builder()
        .method("POST")
        .uri("/predict")
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(
            json!({"s3_uri": format!("s3://{bucket}/in/cat.png")}).to_string(),
        ))
        .unwrap();
    let r = onnx_lambda::http::route(Some(app), req).await;
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(
        (r.status().as_u16(), &body["error"]["code"]),
        (403, &json!("s3_access_denied")),
        "{body}"
    );

    let model_config = Config {
        model: onnx_lambda::Location::parse("MODEL_URI", &format!("s3://{bucket}/m.onnx")).unwrap(),
        ..Config::default()
    };
    let err = ModelLoader::new(Some(s3))
        .load(&model_config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, onnx_lambda::LoadError::AccessDenied { ref uri } if uri.ends_with("/m.onnx")),
        "{err}"
    );
    assert!(err.to_string().contains("s3:GetObject"), "{err}");
}

#[tokio::test]
async fn size_caps_hold_while_streaming_when_no_content_length_is_sent() {
    let bucket = unique_bucket("faults-stream");
    let photo = std::fs::read(common::data("images/coffee.png")).unwrap();
    let model = std::fs::read(onnx_lambda::bundled_model_path()).unwrap();
    put_objects(
        &s3_client().await,
        &bucket,
        &[("in/big.png", photo.clone()), ("m.onnx", model.clone())],
    )
    .await;
    let proxy = Proxy::start(moto_endpoint());
    proxy.set(Fault::NoContentLength);
    let s3 = common::s3_client_at(&proxy.endpoint, Duration::from_secs(5), 2);

    // MODEL_MAX_BYTES: the model is read until the cap, not to its end.
    let cap = 1_000_000u64;
    let config = Config {
        model: onnx_lambda::Location::parse("MODEL_URI", &format!("s3://{bucket}/m.onnx")).unwrap(),
        model_max_bytes: cap,
        ..Config::default()
    };
    let err = ModelLoader::new(Some(s3.clone()))
        .load(&config)
        .await
        .unwrap_err();
    match err {
        onnx_lambda::LoadError::TooLarge { size, limit, .. } => {
            assert_eq!(limit, cap);
            assert!(
                size > cap && size < model.len() as u64,
                "stopped at {size} of {}",
                model.len()
            );
        }
        other => panic!("{other}"),
    }

    // MAX_INPUT_BYTES on an S3 input, and on a raw body.
    let limit = photo.len() as u64 / 2;
    let config = Config {
        s3_input_allowlist: onnx_lambda::parse_allowlist(&format!("s3://{bucket}/in/")).unwrap(),
        limits: onnx_lambda::InputLimits {
            max_bytes: limit,
            ..Default::default()
        },
        ..Config::default()
    };
    let app = common::app_with(config, Some(s3), None).await;
    for (content_type, body) in [
        (
            "application/json",
            json!({"s3_uri": format!("s3://{bucket}/in/big.png")})
                .to_string()
                .into_bytes(),
        ),
        ("image/png", photo.clone()),
    ] {
        let req = http::Request::builder()
            .method("POST")
            .uri("/predict")
            .header("content-type", content_type)
            .body(bytes::Bytes::from(body))
            .unwrap();
        let r = onnx_lambda::http::route(Some(app.clone()), req).await;
        let body: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            (r.status().as_u16(), &body["error"]["code"]),
            (413, &json!("input_too_large")),
            "{content_type}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&limit.to_string()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_sink_retries_a_failed_send_itself() {
    let proxy = Proxy::start(moto_endpoint());
    let results = create_queue(&sqs_client().await, "faults-sink-retry", &[]).await;
    let config = Config {
        results_queue_url: Some(results.clone()),
        ..Config::default()
    };
    // One attempt per SDK call: only the sink's own retry can save the batch.
    let sqs = common::sqs_client_at(&proxy.endpoint, Duration::from_secs(5), 1);
    let app = common::app_with(config, None, Some(sqs)).await;
    let image = small_photo_b64();
    let bodies: Vec<String> = (0..12)
        .map(|i| json!({"job_id": format!("s{i}"), "image": {"base64": image}}).to_string())
        .collect();
    proxy.fail_requests(0, 2);
    let before = proxy.requests();
    let out = common::invoke(app, sqs_event(&bodies, 1), "sink").await;
    assert!(common::batch_failures(&out).is_empty(), "{out}");
    assert_eq!(results_in(&results).await.len(), 12);
    // Two calls (10 + 2 entries) failed once each, then succeeded.
    assert_eq!(proxy.requests() - before, 4);
}

#[tokio::test]
async fn one_batch_with_an_ok_a_permanent_and_a_transient_job() {
    let bucket = unique_bucket("faults-mixed");
    let photo = std::fs::read(common::data("images/chelsea.png")).unwrap();
    put_objects(&s3_client().await, &bucket, &[("in/cat.png", photo)]).await;
    let proxy = Proxy::start(moto_endpoint());
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "faults-mixed", &[]).await;
    let config = Config {
        results_queue_url: Some(results.clone()),
        ..Config::default()
    };
    let flaky_s3 = common::s3_client_at(&proxy.endpoint, Duration::from_secs(5), 2);
    let app = common::app_with(config, Some(flaky_s3), Some(sqs)).await;
    proxy.fail_requests(0, 100);
    let bodies = vec![
        json!({"job_id": "fine", "image": {"base64": small_photo_b64()}}).to_string(),
        json!({"job_id": "poison", "image": {"base64": "!!"}}).to_string(),
        json!({"job_id": "s3-down", "image": {"s3_uri": format!("s3://{bucket}/in/cat.png")}})
            .to_string(),
    ];
    let out = common::invoke(app, sqs_event(&bodies, 1), "mixed").await;
    assert_eq!(
        common::batch_failures(&out),
        HashSet::from(["msg-2".to_string()]),
        "{out}"
    );
    let got: std::collections::HashMap<String, JobResult> = results_in(&results)
        .await
        .into_iter()
        .map(|r| (r.job_id.clone(), r))
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got["fine"].status, "ok");
    assert_eq!(got["poison"].error.as_ref().unwrap().code, "invalid_base64");
}

#[tokio::test]
async fn an_sqs_event_without_a_results_queue_is_delivered_again_whole() {
    let app = Arc::new(
        App::init(Config::default(), &ModelLoader::new(None), None)
            .await
            .unwrap()
            .with_sqs(sqs_client().await),
    );
    assert!(app.results().is_none(), "RESULTS_QUEUE_URL is not set");
    let bodies = vec![
        json!({"job_id": "a", "image": {"base64": small_photo_b64()}}).to_string(),
        "not json".to_string(),
    ];
    let out = common::invoke(app, sqs_event(&bodies, 1), "no-results").await;
    assert_eq!(
        common::batch_failures(&out),
        HashSet::from(["msg-0".to_string(), "msg-1".to_string()]),
        "{out}"
    );
}

/// A batch that takes longer than its visibility timeout stays invisible:
/// the worker renews it, so no job is received, or answered, twice.
#[tokio::test]
async fn the_worker_keeps_a_long_batch_invisible() {
    let bucket = unique_bucket("faults-long");
    let photo = std::fs::read(common::data("images/chelsea.png")).unwrap();
    put_objects(&s3_client().await, &bucket, &[("in/cat.png", photo)]).await;
    let sqs = sqs_client().await;
    let jobs = create_queue(&sqs, "faults-long-jobs", &[]).await;
    let results = create_queue(&sqs, "faults-long-results", &[]).await;
    let bodies: Vec<String> = (0..3)
        .map(|i| json!({"job_id": format!("l{i}"), "image": {"s3_uri": format!("s3://{bucket}/in/cat.png")}}).to_string())
        .collect();
    common::send_all(&sqs, &jobs, &bodies).await;
    // S3 answers after 2.5 s: each batch outlasts its 1 s visibility timeout.
    let proxy = Proxy::start(moto_endpoint());
    proxy.set(Fault::Delay(Duration::from_millis(2_500)));
    let worker = common::Worker::start_with_env(
        &jobs,
        &results,
        &["--visibility-timeout", "1", "--concurrency", "2"],
        &[("AWS_ENDPOINT_URL_S3", proxy.endpoint.clone())],
    );
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} results",
            got.len()
        );
        got.extend(results_in(&results).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Past several more timeouts: nothing comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    got.extend(results_in(&results).await);
    let stats = worker.stop();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter().all(|r| r.status == "ok" && r.attempt == 1),
        "{got:?}"
    );
    assert_eq!(
        stats["received"], 3,
        "no message was received twice: {stats}"
    );
    assert_eq!(stats["deleted"], 3, "{stats}");
}
