//! The template's IAM roles, enforced. A moto server of the test's own is
//! set up as a deployment of `template.yaml` leaves an account, each role
//! holding exactly the policies the template declares (resolved by
//! `tests/tools/iam_stack.py`, not copied here), and then checks every
//! request's signature and permissions. The real binary runs the Lambda
//! path under each role's credentials through the Runtime API emulator:
//! the cold start (model, manifest and labels from S3), an HTTP prediction
//! of an `s3_uri`, and an SQS batch writing its results.
//!
//! Regression: the roles could read the model and its manifest but not the
//! labels file the manifest names, so a real cold start failed with access
//! denied; no test saw it because the test S3 enforced no IAM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::runtime_api::{lambda_env, Outcome, RuntimeApi};
use crate::common::{self, data, root, OwnMoto};

/// Each SDK attempt's connect and first-byte timeout.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A moto server set up as the template's deployment, IAM enforced.
struct Stack {
    moto: OwnMoto,
    facts: Value,
}

impl Stack {
    /// `without`: drop every granted resource ending in this from the roles.
    fn new(without: Option<&str>) -> Stack {
        let moto = OwnMoto::start();
        let mut cmd = Command::new(root().join(".venv/bin/python"));
        cmd.arg(root().join("tests/tools/iam_stack.py"))
            .arg(&moto.endpoint)
            .arg(root().join("template.yaml"))
            .arg(root().join("models"))
            .arg(data("images/chelsea.png"));
        if let Some(suffix) = without {
            cmd.args(["--without", suffix]);
        }
        let out = cmd
            .output()
            .expect("run scripts/test.sh, which makes .venv");
        assert!(
            out.status.success(),
            "iam_stack.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Stack {
            moto,
            facts: serde_json::from_slice(&out.stdout).unwrap(),
        }
    }

    fn credentials(&self, who: &str) -> aws_sdk_s3::config::Credentials {
        let c = if who == "admin" {
            &self.facts["admin"]
        } else {
            &self.facts["roles"][who]
        };
        aws_sdk_s3::config::Credentials::new(
            c["access_key_id"].as_str().unwrap(),
            c["secret_access_key"].as_str().unwrap(),
            c["session_token"].as_str().map(String::from),
            None,
            "iam-test",
        )
    }

    fn s3(&self, who: &str) -> aws_sdk_s3::Client {
        common::s3_client_as(&self.moto.endpoint, TIMEOUT, 3, self.credentials(who))
    }

    fn sqs(&self, who: &str) -> aws_sdk_sqs::Client {
        common::sqs_client_as(&self.moto.endpoint, TIMEOUT, 3, self.credentials(who))
    }

    fn queue(&self, name: &str) -> String {
        self.facts["queues"][name].as_str().unwrap().to_string()
    }

    fn uri(&self, bucket: &str, key: &str) -> String {
        format!("s3://{}/{key}", self.facts[bucket].as_str().unwrap())
    }

    /// The function process as Lambda starts it: the template's environment,
    /// the role's temporary credentials, nothing else.
    fn function(&self, role: &str, api: &RuntimeApi) -> Function {
        let r = &self.facts["roles"][role];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(lambda_env(api))
            .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", r["access_key_id"].as_str().unwrap())
            .env(
                "AWS_SECRET_ACCESS_KEY",
                r["secret_access_key"].as_str().unwrap(),
            )
            .env("AWS_SESSION_TOKEN", r["session_token"].as_str().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in self.facts["environment"].as_object().unwrap() {
            cmd.env(k, v.as_str().unwrap());
        }
        if role == "BatchRole" {
            cmd.env("RESULTS_QUEUE_URL", self.queue("ResultsQueue"));
        }
        Function(cmd.spawn().unwrap())
    }
}

struct Function(Child);

impl Drop for Function {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// An HTTP API (payload 2.0) request of `POST /predict` with a JSON body.
fn http_predict(body: Value) -> Value {
    let mut event = common::event("apigw-http-predict.json");
    event["headers"]["content-type"] = json!("application/json");
    event["isBase64Encoded"] = json!(false);
    event["rawQueryString"] = json!("");
    event["queryStringParameters"] = json!({});
    event["body"] = json!(body.to_string());
    event
}

fn answers(api: &RuntimeApi, n: usize) -> Vec<Outcome> {
    api.wait_for(n, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("the init phase failed under the template's role: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_predict_role_serves_a_cold_start_and_an_s3_prediction() {
    let stack = Stack::new(None);
    let api = RuntimeApi::start();
    let _function = stack.function("PredictRole", &api);
    api.invoke(http_predict(
        json!({"s3_uri": stack.uri("input_bucket", "in/photo.png")}),
    ));
    api.invoke(http_predict(
        json!({"s3_uri": stack.uri("input_bucket", "in/missing.png")}),
    ));
    let out = answers(&api, 2);
    let response = |i: usize| {
        let r = &out[i].body;
        (
            r["statusCode"].as_u64().unwrap(),
            serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap(),
        )
    };
    let (status, body) = response(0);
    assert_eq!(status, 200, "{body}");
    // The labels came from S3: a name, not the class index.
    assert_eq!(body["predictions"][0]["index"], 285, "{body}");
    assert_eq!(body["predictions"][0]["label"], "Egyptian cat", "{body}");
    // Without s3:ListBucket (the template grants it under a condition moto
    // does not evaluate) a missing key is a denial: still a 4xx, never a 500.
    let (status, body) = response(1);
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(
        ["s3_object_not_found", "s3_access_denied"]
            .contains(&body["error"]["code"].as_str().unwrap()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_batch_role_runs_a_batch_and_writes_its_results() {
    let stack = Stack::new(None);
    let api = RuntimeApi::start();
    let _function = stack.function("BatchRole", &api);
    let photo = std::fs::read(data("images/chelsea.png")).unwrap();
    use base64::Engine;
    let inline = base64::engine::general_purpose::STANDARD.encode(photo);
    let jobs = [
        json!({"job_id": "from-s3", "image": {"s3_uri": stack.uri("input_bucket", "in/photo.png")}}),
        json!({"job_id": "inline", "image": {"base64": inline}, "top_k": 2}),
    ];
    let bodies: Vec<String> = jobs.iter().map(Value::to_string).collect();
    api.invoke(common::sqs_event(&bodies, 1));
    let out = answers(&api, 1);
    assert_eq!(out[0].kind, "response", "{:?}", out[0]);
    assert!(
        common::batch_failures(&out[0].body).is_empty(),
        "{}",
        out[0].body
    );
    let results = common::drain(&stack.sqs("admin"), &stack.queue("ResultsQueue")).await;
    let mut results: Vec<Value> = results
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    results.sort_by_key(|r| r["job_id"].as_str().unwrap().to_string());
    assert_eq!(results.len(), 2, "{results:?}");
    for (r, job) in results.iter().zip(["from-s3", "inline"]) {
        assert_eq!(r["job_id"], job, "{r}");
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["predictions"][0]["label"], "Egyptian cat", "{r}");
    }

    // S3 Batch Operations over InputBucket, with the same role: an object
    // under InputPrefix succeeds, one outside it is denied, permanently.
    let bucket = stack.facts["input_bucket"].as_str().unwrap();
    let task = |id: &str, key: &str| json!({"taskId": id, "s3Key": key, "s3VersionId": null, "s3Bucket": bucket});
    api.invoke(json!({
        "invocationSchemaVersion": "2.0", "invocationId": "inv", "job": {"id": "j"},
        "tasks": [task("in", "in/photo.png"), task("private", "private/photo.png")]
    }));
    let out = answers(&api, 2);
    let codes: Vec<(String, String)> = out[1].body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let result: Value = serde_json::from_str(r["resultString"].as_str().unwrap()).unwrap();
            let what = result["label"]
                .as_str()
                .or(result["error"].as_str())
                .unwrap()
                .to_string();
            (r["resultCode"].as_str().unwrap().to_string(), what)
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("Succeeded".to_string(), "Egyptian cat".to_string()),
            (
                "PermanentFailure".to_string(),
                "s3_access_denied".to_string()
            )
        ],
        "{}",
        out[1].body
    );
    // Both results are on the results queue too.
    let ids = common::job_ids_in(&stack.sqs("admin"), &stack.queue("ResultsQueue")).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_roles_reach_nothing_outside_their_grants() {
    let stack = Stack::new(None);
    for role in ["PredictRole", "BatchRole"] {
        let s3 = stack.s3(role);
        let get = |bucket: &str, key: &str| {
            s3.get_object()
                .bucket(stack.facts[bucket].as_str().unwrap())
                .key(key)
                .send()
        };
        // What the role needs...
        assert!(get("input_bucket", "in/photo.png").await.is_ok(), "{role}");
        assert!(get("model_bucket", "models/synset.txt").await.is_ok());
        // ...and no more: another prefix, another bucket, a write.
        for (bucket, key) in [
            ("input_bucket", "private/photo.png"),
            ("other_bucket", "in/photo.png"),
        ] {
            let e = get(bucket, key).await.expect_err("outside the grant");
            assert_eq!(
                e.into_service_error().meta().code(),
                Some("AccessDenied"),
                "{role}: {bucket}/{key}"
            );
        }
        let put = s3
            .put_object()
            .bucket(stack.facts["model_bucket"].as_str().unwrap())
            .key("models/synset.txt")
            .body(b"overwritten".to_vec().into())
            .send()
            .await;
        assert!(put.is_err(), "{role} may not write the model's bucket");
    }
    // Only the batch role sends, and only to the results queue.
    let send = |role: &str, queue: &str| {
        stack
            .sqs(role)
            .send_message()
            .queue_url(stack.queue(queue))
            .message_body("{}")
            .send()
    };
    assert!(send("BatchRole", "ResultsQueue").await.is_ok());
    assert!(send("BatchRole", "JobsQueue").await.is_err());
    assert!(send("PredictRole", "ResultsQueue").await.is_err());
}

/// Each grant is needed: without it the cold start fails, reporting the
/// denial and the object to the Runtime API.
#[test]
fn without_a_model_grant_the_cold_start_fails_naming_the_object() {
    for (suffix, object) in [
        ("synset.txt", "models/synset.txt"),
        (".onnx", "models/mobilenetv2-1.0-fp32.onnx"),
    ] {
        let stack = Stack::new(Some(suffix));
        let api = RuntimeApi::start();
        let _function = stack.function("PredictRole", &api);
        api.invoke(http_predict(json!({})));
        let error = api
            .wait_for(1, Duration::from_secs(120))
            .expect_err("the init phase must fail without the grant");
        let message = error["errorMessage"].as_str().unwrap_or_default();
        assert_eq!(error["errorType"], "Runtime.InitError", "{error}");
        assert!(
            message.contains("access denied") && message.contains(object),
            "{suffix}: {message}"
        );
    }
}
