//! What the logs must never hold: credentials, presigned-URL signatures,
//! image bytes. A real `serve` and a real `worker` handle requests and jobs
//! carrying all three, with our crate logging at its most verbose, and
//! their logs are scanned.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::{aws_env, create_queue, put_objects, s3_client, send_all, sqs_client, unique_bucket};
use serde_json::json;

const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY";
const TOKEN: &str = "FwoGZXIvYXdzSESSIONTOKENvalue0123456789";
const SIGNATURE: &str = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";

fn secret_env() -> Vec<(&'static str, String)> {
    let mut env = aws_env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", SECRET.into()));
    env.push(("AWS_SESSION_TOKEN", TOKEN.into()));
    env.push(("RUST_LOG", "info,onnx_lambda=trace".into()));
    env
}

fn presigned() -> String {
    format!(
        "https://photos.s3.amazonaws.com/in/cat.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIDEXAMPLE%2F20261127%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Security-Token={TOKEN}&X-Amz-Signature={SIGNATURE}"
    )
}

/// Fails if `text` (logs, or what a client or the results queue got)
/// holds anything it must not: credentials, any presigned-URL signature or
/// credential scope, or any stretch of the image's bytes.
fn assert_clean(door: &str, text: &str, image_b64: &str) {
    assert!(!text.is_empty(), "{door}: nothing captured");
    for (what, needle) in [
        ("the secret key", SECRET),
        ("the session token", TOKEN),
        ("a presigned URL's signature", SIGNATURE),
        ("a presigned URL's signature parameter", "Signature="),
        ("a presigned URL's credential", "AKIDEXAMPLE"),
    ] {
        assert!(!text.contains(needle), "{door} holds {what}");
    }
    // Windows across the whole image, not only its middle.
    for start in (0..image_b64.len() - 32).step_by(image_b64.len() / 7) {
        let window = &image_b64[start..start + 32];
        assert!(
            !text.contains(window),
            "{door} holds image bytes (base64 at {start})"
        );
    }
}

#[tokio::test]
async fn logs_hold_no_credentials_signatures_or_image_bytes() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("security");
    let photo = std::fs::read(common::data("images/chelsea.png")).unwrap();
    put_objects(&s3, &bucket, &[("in/cat.png", photo.clone())]).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&photo);
    let dir = std::env::temp_dir().join(format!("onnx-lambda-security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // serve: base64, an allowed s3_uri (a signed S3 GET), a presigned URL.
    let log = dir.join("serve.log");
    let mut env = secret_env();
    env.push(("S3_INPUT_ALLOWLIST", format!("s3://{bucket}/in/")));
    let serve = common::ServeProcess::start_logging(&env, std::fs::File::create(&log).unwrap());
    let url = serve.url.clone();
    let body_file = dir.join("body.json");
    let curl = |body: String| {
        std::fs::write(&body_file, body).unwrap();
        let out = Command::new("curl")
            .args([
                "-s",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
            ])
            .arg(format!("@{}", body_file.display()))
            .arg(format!("{url}/predict"))
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    for _ in 0..100 {
        if curl(json!({"image": b64}).to_string())["predictions"].is_array() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        curl(json!({"image": b64}).to_string())["predictions"][0]["index"],
        285
    );
    assert_eq!(
        curl(json!({"s3_uri": format!("s3://{bucket}/in/cat.png")}).to_string())["predictions"][0]
            ["index"],
        285
    );
    let refused = curl(json!({"s3_uri": presigned()}).to_string());
    assert_eq!(refused["error"]["code"], "invalid_s3_uri");
    assert_clean("the refusal's body", &refused.to_string(), &b64);
    serve.stop();
    assert_clean("serve", &std::fs::read_to_string(&log).unwrap(), &b64);

    // worker: the same inputs as jobs.
    let sqs = sqs_client().await;
    let jobs = create_queue(&sqs, "security-jobs", &[]).await;
    let results = create_queue(&sqs, "security-results", &[]).await;
    let bodies = vec![
        json!({"job_id": "b64", "image": {"base64": b64}}).to_string(),
        json!({"job_id": "s3", "image": {"s3_uri": format!("s3://{bucket}/in/cat.png")}})
            .to_string(),
        json!({"job_id": "presigned", "image": {"s3_uri": presigned()}}).to_string(),
    ];
    send_all(&sqs, &jobs, &bodies).await;
    let log = dir.join("worker.log");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
        .args([
            "worker",
            "--queue",
            &jobs,
            "--results-queue",
            &results,
            "--wait-seconds",
            "1",
        ])
        .envs(secret_env())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(common::drain(&sqs, &results).await);
        if got.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unsafe {
        libc::kill(worker.id() as i32, libc::SIGTERM);
    }
    worker.wait().unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_clean("worker", &std::fs::read_to_string(&log).unwrap(), &b64);
    assert_clean("the results", &got.join("\n"), &b64);
    std::fs::remove_dir_all(&dir).ok();
}
