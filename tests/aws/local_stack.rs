//! `scripts/local-stack.sh` (moto with the template's queues and buckets)
//! and `scripts/deploy.sh` (its dry run: no AWS account here), as a user runs them.

use crate::common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use base64::Engine;
use common::{data, root, template, unique_bucket};
use serde_json::{json, Value};

/// `export K=V ...` lines to a map.
fn exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The moto server the script left running, stopped with the test.
struct Moto(i32);

impl Drop for Moto {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGTERM);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_stack_has_the_templates_queues_and_runs_the_worker() {
    let stack = unique_bucket("ls");
    let out = Command::new(root().join("scripts/local-stack.sh"))
        .env("STACK_NAME", &stack)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let env = exports(&String::from_utf8(out.stdout).unwrap());
    let _moto = Moto(env["MOTO_PID"].parse().unwrap());
    let sqs = common::sqs_client_at(&env["AWS_ENDPOINT_URL"], Duration::from_secs(5), 2);

    // The jobs queue as the template declares it, dead-lettering to its DLQ.
    let declared = template()["Resources"]["JobsQueue"]["Properties"].clone();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&env["JOBS_QUEUE_URL"])
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    assert_eq!(
        attrs[&QueueAttributeName::VisibilityTimeout],
        declared["VisibilityTimeout"].to_string()
    );
    let redrive: Value = serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        declared["RedrivePolicy"]["maxReceiveCount"].to_string()
    );
    assert!(redrive["deadLetterTargetArn"]
        .as_str()
        .unwrap()
        .ends_with(&format!("{stack}-JobsDeadLetterQueue")));
    assert!(env["JOBS_QUEUE_URL"].ends_with(&format!("/{stack}-JobsQueue")));

    // The worker, with only the printed environment, the model from its S3.
    let mut worker = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
        .args([
            "worker",
            "--queue",
            &env["JOBS_QUEUE_URL"],
            "--wait-seconds",
            "1",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let image = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(data("images/chelsea.png")).unwrap());
    let job = json!({"job_id": "local-1", "image": {"base64": image}}).to_string();
    sqs.send_message()
        .queue_url(&env["JOBS_QUEUE_URL"])
        .message_body(job)
        .send()
        .await
        .unwrap();
    let start = Instant::now();
    let result = loop {
        let got = common::drain(&sqs, &env["RESULTS_QUEUE_URL"]).await;
        if let Some(body) = got.first() {
            break serde_json::from_str::<Value>(body).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no result");
    };
    worker.kill().ok();
    worker.wait().ok();
    assert_eq!(result["job_id"], "local-1");
    assert_eq!(result["status"], "ok", "{result}");
    assert!(result["model"]["sha256"]
        .as_str()
        .unwrap()
        .starts_with("8cdd0539"));
}

#[test]
fn deploy_dry_run_overrides_only_template_parameters() {
    let out = Command::new(root().join("scripts/deploy.sh"))
        .env("DRY_RUN", "1")
        .env("MODEL_BUCKET", "my-models")
        .env("INPUT_BUCKET", "my-images")
        .env("INPUT_PREFIX", "in/")
        .env(
            "ALARM_TOPIC_ARN",
            "arn:aws:sns:us-east-1:123456789012:alarms",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let command = String::from_utf8(out.stdout).unwrap();
    assert!(command.starts_with("sam deploy --guided"), "{command}");
    let template = template();
    let params = template["Parameters"].as_object().unwrap();
    let overrides: HashMap<&str, &str> = command
        .split_whitespace()
        .skip_while(|w| *w != "--parameter-overrides")
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .collect();
    for key in overrides.keys() {
        assert!(
            params.contains_key(*key),
            "{key} is not a template parameter"
        );
    }
    // Every parameter without a default is given.
    for (name, p) in params {
        if p.get("Default").is_none() {
            assert!(
                overrides.contains_key(name.as_str()),
                "{name} missing: {command}"
            );
        }
    }
    assert_eq!(
        overrides["ModelSha256"].len(),
        64,
        "the bundled model's digest"
    );
    assert_eq!(overrides["InputPrefix"], "in/");
    // The role may read the labels file the bundled model's manifest names.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("models/mobilenetv2-1.0-fp32.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        overrides["ModelLabelsKey"],
        format!("models/{}", manifest["labels"].as_str().unwrap())
    );
}
