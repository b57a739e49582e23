//! The function under `cargo lambda watch`, cargo-lambda's emulator of the
//! Lambda Runtime API and of Function URLs: the real `lambda_runtime` loop
//! polls it, `cargo lambda invoke --data-file` sends every event in
//! `events/` unchanged, and curl calls the emulated Function URL. The model
//! comes from S3 and the inputs and results go through S3 and SQS, all moto.
//!
//! The emulator runs with `--only-lambda-apis` and the test starts the
//! function itself, as Lambda starts `bootstrap`: the packaged binary when
//! `BOOTSTRAP` names it (`scripts/package.sh` in CI, after
//! `cargo lambda build --release`), else the one `cargo test` built. So
//! nothing is compiled twice, and the test reads the function's stdout (the
//! EMF lines, checked against the EMF specification by
//! `tests/tools/check_emf.py`) and stderr (its JSON logs).
//!
//! The project's own emulator (`tests/common/runtime_api.rs`) stays for
//! what this one cannot do: invocation deadlines chosen by the test, and
//! an init failure reported to `/runtime/init/error` (`tests/lambda/s3_model.rs`).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Injected, Proxy};
use common::{
    aws_env, create_queue, curl, data, drain, free_port, moto_endpoint, put_objects, python_tool,
    root, s3_client, sqs_client, unique_bucket, wait_for_port,
};
use serde_json::Value;

/// A child process killed when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn cargo_lambda() -> PathBuf {
    let path = root().join(".venv/bin/cargo-lambda");
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which installs cargo-lambda into .venv",
        path.display()
    );
    path
}

/// The function's binary: the package's `bootstrap` when `BOOTSTRAP` is set.
fn bootstrap() -> PathBuf {
    std::env::var_os("BOOTSTRAP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_onnx-lambda")))
}

/// `cargo lambda watch --only-lambda-apis` on a free port. Its stdin is kept
/// open: it stops when stdin closes.
fn start_emulator(log: &Path) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new(cargo_lambda())
        .args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1"])
        .args(["-P", &port.to_string()])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(60));
    (Guard(child), port)
}

/// `cargo lambda invoke` with `events/NAME`, the function's answer as JSON.
/// The emulator waits for an answer as long as the function lives, so a
/// dead function fails the test here instead of hanging it.
fn invoke(port: u16, name: &str, function: &mut Guard, dir: &Path) -> Value {
    let mut child = Command::new(cargo_lambda())
        .args([
            "lambda",
            "invoke",
            "_",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .args(["--output-format", "json", "--data-file"])
        .arg(root().join("events").join(name))
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        let exited = function.0.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            child.kill().ok();
            let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            panic!("invoke {name}: the function {exited:?} did not answer:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "invoke {name}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("invoke {name}: {e}: {stdout}"))
}

/// The one task result of an S3 Batch Operations answer, for `task_id`:
/// its result code and its result string, parsed.
fn task_result(answer: &Value, task_id: &Value) -> (String, Value) {
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{answer}");
    assert_eq!(&results[0]["taskId"], task_id, "{answer}");
    let result = serde_json::from_str(results[0]["resultString"].as_str().unwrap()).unwrap();
    (
        results[0]["resultCode"].as_str().unwrap().to_string(),
        result,
    )
}

/// The top class of an HTTP-shaped answer (or a direct one).
fn top_class(answer: &Value) -> (u64, usize) {
    let body: Value = match answer.get("body") {
        Some(b) => serde_json::from_str(b.as_str().unwrap()).unwrap(),
        None => answer.clone(),
    };
    let predictions = body["predictions"].as_array().expect("predictions");
    (predictions[0]["index"].as_u64().unwrap(), predictions.len())
}

const CATS: [u64; 3] = [281, 282, 285];

/// What every event in `events/` must answer; a new event file fails here
/// until its expectation is added.
fn check_event(name: &str, answer: &Value) {
    match name {
        "direct-invoke.json" => {
            let (top, n) = top_class(answer);
            assert!(CATS.contains(&top) && n == 3, "{answer}");
        }
        "apigw-rest-predict.json"
        | "apigw-http-predict.json"
        | "function-url-predict.json"
        | "alb-predict.json" => {
            assert_eq!(answer["statusCode"], 200, "{name}: {answer}");
            let (top, n) = top_class(answer);
            assert!(CATS.contains(&top) && n == 3, "{name}: {answer}");
        }
        "sqs-jobs.json" | "sqs-s3-notification.json" => {
            assert_eq!(
                answer["batchItemFailures"],
                serde_json::json!([]),
                "{name}: {answer}"
            );
        }
        "s3-batch-v1.json" | "s3-batch-v2.json" => {
            let version = if name.ends_with("v1.json") { "1" } else { "2" };
            let event = common::event(name);
            assert_eq!(
                answer["invocationSchemaVersion"],
                format!("{version}.0"),
                "{answer}"
            );
            assert_eq!(answer["invocationId"], event["invocationId"], "{answer}");
            let (code, result) = task_result(answer, &event["tasks"][0]["taskId"]);
            assert_eq!(code, "Succeeded", "{name}: {answer}");
            let index = result["index"].as_u64().unwrap();
            assert!(CATS.contains(&index), "{name}: {answer}");
            assert!(result["probability"].as_f64().unwrap() > 0.0, "{answer}");
        }
        other => panic!("events/{other} has no expectation in tests/lambda/lambda_watch.rs"),
    }
}

/// The model in a fresh bucket and the inputs the SQS events name in
/// `my-images`; returns the model's URI.
async fn stage_s3() -> (String, String) {
    let s3 = s3_client().await;
    let bucket = unique_bucket("watch-model");
    let model = std::fs::read(root().join("models/mobilenetv2-1.0-fp32.onnx")).unwrap();
    let manifest = std::fs::read(root().join("models/mobilenetv2-1.0-fp32.json")).unwrap();
    let labels = std::fs::read(root().join("models/synset.txt")).unwrap();
    let objects = [
        ("m/model.onnx", model),
        ("m/model.json", manifest),
        ("m/synset.txt", labels),
    ];
    put_objects(&s3, &bucket, &objects).await;
    // `in/cat.jpg` stays missing, as tests/aws/sqs.rs expects of the same event
    // (the moto server is shared): that job must end as an error result.
    let cat = std::fs::read(data("images/chelsea.png")).unwrap();
    put_objects(&s3, "my-images", &[("in/my cat.jpg", cat)]).await;
    (
        format!("s3://{bucket}/m/model.onnx"),
        format!("/{bucket}/m/model.onnx"),
    )
}

/// The command that starts the function: `bootstrap()`, or under the
/// program `BOOTSTRAP_RUNNER` names (with its arguments), so that the arm64
/// package answers the same events under qemu:
/// `BOOTSTRAP_RUNNER="qemu-aarch64 -L /"` (docs/ci.md).
fn function_command() -> Command {
    let runner = std::env::var("BOOTSTRAP_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let Some(program) = words.next() else {
        return Command::new(bootstrap());
    };
    let mut cmd = Command::new(program);
    cmd.args(words).arg(bootstrap());
    cmd
}

/// The function process, talking to the emulator on `port`.
fn start_function(port: u16, model: &str, results: &str, s3: &Proxy, dir: &Path) -> Guard {
    let mut cmd = function_command();
    cmd.current_dir(dir)
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL_S3", &s3.endpoint)
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
        .env("MODEL_URI", model)
        .env("RESULTS_QUEUE_URL", results)
        .env("S3_INPUT_ALLOWLIST", "s3://my-images")
        .env("METRICS_NAMESPACE", "onnx-lambda-test")
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
    Guard(cmd.spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_and_the_function_url_under_cargo_lambda_watch() {
    let dir = std::env::temp_dir().join(unique_bucket("lambda-watch"));
    std::fs::create_dir_all(&dir).unwrap();
    let (model, model_path) = stage_s3().await;
    let sqs = sqs_client().await;
    let results = create_queue(&sqs, "watch-results", &[]).await;
    let s3 = Proxy::start(moto_endpoint());
    let (_emulator, port) = start_emulator(&dir.join("emulator.log"));
    let started = Instant::now();
    let mut function = start_function(port, &model, &results, &s3, &dir);

    let mut events: Vec<String> = std::fs::read_dir(root().join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    events.sort();
    let mut invocations = 0;
    let mut first_response = None;
    for name in &events {
        let answer = invoke(port, name, &mut function, &dir);
        first_response.get_or_insert_with(|| started.elapsed());
        check_event(name, &answer);
        invocations += 1;
    }
    eprintln!(
        "cold start under cargo lambda watch (process start to first response, model from moto S3): {:?} ({})",
        first_response.unwrap(),
        bootstrap().display()
    );

    // S3 failing (500s past the SDK's retries) is transient: the message
    // is a batch item failure, to be delivered again, and no result.
    let mut event = common::event("sqs-s3-notification.json");
    event["Records"][0]["messageId"] = serde_json::json!("s3-was-down");
    let failing = dir.join("sqs-s3-down.json");
    std::fs::write(&failing, event.to_string()).unwrap();
    s3.fail_requests(0, 50);
    let answer = invoke(port, failing.to_str().unwrap(), &mut function, &dir);
    s3.fail_requests(0, 0);
    assert_eq!(
        answer["batchItemFailures"],
        serde_json::json!([{"itemIdentifier": "s3-was-down"}]),
        "{answer}"
    );
    invocations += 1;

    // S3 Batch Operations: a missing object is a permanent failure (and an
    // error result on the queue); S3 throttling past the SDK's retries is
    // temporary, for S3 to retry, and writes no result.
    let mut event = common::event("s3-batch-v2.json");
    event["tasks"][0]["s3Key"] = serde_json::json!("in/missing.jpg");
    let missing = dir.join("s3-batch-missing.json");
    std::fs::write(&missing, event.to_string()).unwrap();
    let answer = invoke(port, missing.to_str().unwrap(), &mut function, &dir);
    let (code, result) = task_result(&answer, &event["tasks"][0]["taskId"]);
    assert_eq!(
        (code.as_str(), result["error"].as_str()),
        ("PermanentFailure", Some("s3_object_not_found")),
        "{answer}"
    );
    let mut event = common::event("s3-batch-v1.json");
    event["tasks"][0]["taskId"] = serde_json::json!("throttled");
    let throttled = dir.join("s3-batch-throttled.json");
    std::fs::write(&throttled, event.to_string()).unwrap();
    s3.inject(0, 50, Injected::s3_slow_down());
    let answer = invoke(port, throttled.to_str().unwrap(), &mut function, &dir);
    s3.fail_requests(0, 0);
    let (code, result) = task_result(&answer, &serde_json::json!("throttled"));
    assert_eq!(
        (code.as_str(), result["error"].as_str()),
        ("TemporaryFailure", Some("s3_unavailable")),
        "{answer}"
    );
    invocations += 2;

    // The emulated Function URL, with curl.
    let url = format!("http://127.0.0.1:{port}/lambda-url/_");
    let photo = format!("@{}", data("images/chelsea.png").display());
    let (s, b) = curl(&[
        "-H",
        "Content-Type: image/png",
        "--data-binary",
        &photo,
        &format!("{url}/predict?top_k=2"),
    ]);
    assert_eq!(s, 200, "{b}");
    assert!(
        CATS.contains(&b["predictions"][0]["index"].as_u64().unwrap()),
        "{b}"
    );
    assert_eq!(b["predictions"].as_array().unwrap().len(), 2);
    let (s, b) = curl(&[&format!("{url}/model")]);
    assert_eq!(
        (s, b["name"].as_str()),
        (200, Some("mobilenetv2-1.0")),
        "{b}"
    );
    let (s, b) = curl(&["--data-binary", "not an image", &format!("{url}/predict")]);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("unsupported_format")),
        "{b}"
    );
    let (s, b) = curl(&[&format!("{url}/nope")]);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
    invocations += 4;

    // The SQS events' results: every job accounted for.
    let mut got: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 5 && Instant::now() < deadline {
        for body in drain(&sqs, &results).await {
            let r: Value = serde_json::from_str(&body).unwrap();
            got.insert(r["job_id"].as_str().unwrap().to_string(), r);
        }
    }
    assert_eq!(got.len(), 5, "{got:?}");
    for job in ["photo-0001", "s3://my-images/in/missing.jpg"] {
        let missing = &got[job];
        assert_eq!(missing["error"]["code"], "s3_object_not_found", "{missing}");
    }
    // Both S3 Batch Operations events name the same object: one job id.
    let batch = [("s3://my-images/in/my cat.jpg", [2, 5])];
    for (job, k) in batch {
        let n = got[job]["predictions"].as_array().unwrap().len();
        assert!(k.contains(&n), "{job}: {}", got[job]);
    }
    for (job, k) in [("photo-0002", 3), ("in/my cat.jpg", 5)] {
        assert_eq!(got[job]["status"], "ok", "{job}: {}", got[job]);
        assert_eq!(
            got[job]["predictions"].as_array().unwrap().len(),
            k,
            "{job}"
        );
    }

    // One model download across every invocation.
    let model_gets = s3
        .request_lines()
        .iter()
        .filter(|l| l.starts_with(&format!("GET {model_path}")))
        .count();
    assert_eq!(model_gets, 1, "{:?}", s3.request_lines());
    assert!(
        function.0.try_wait().unwrap().is_none(),
        "the function exited"
    );
    drop(_emulator);
    function.0.kill().ok();
    function.0.wait().ok();
    check_logs_and_metrics(&dir, invocations);
}

/// One JSON `invocation` log line per invocation, cold only on the first;
/// one EMF line per invocation, valid by the specification, adding up to
/// what was sent.
fn check_logs_and_metrics(dir: &Path, invocations: usize) {
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    let logged: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "invocation")
        .collect();
    assert_eq!(logged.len(), invocations, "{stderr}");
    let cold: Vec<bool> = logged
        .iter()
        .map(|l| l["fields"]["cold_start"] == true)
        .collect();
    assert!(cold[0] && cold[1..].iter().all(|c| !c), "{cold:?}");

    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap();
    let emf = python_tool("check_emf.py", &stdout);
    let lines = emf["lines"].as_array().unwrap();
    assert_eq!(
        lines.len(),
        invocations,
        "one EMF line per invocation:\n{stdout}"
    );
    assert_eq!(
        stdout.lines().count(),
        invocations,
        "nothing else on stdout:\n{stdout}"
    );
    let total = |name: &str| -> f64 { lines.iter().filter_map(|l| l[name].as_f64()).sum() };
    assert_eq!(lines[0]["cold_start"], 1);
    assert!(
        lines[0]["model_load"].as_f64().unwrap() > 0.0,
        "{}",
        lines[0]
    );
    assert_eq!(total("cold_start"), 1.0);
    assert!(lines[1..].iter().all(|l| l.get("model_load").is_none()));
    // 5 HTTP/direct events + 2 jobs + 1 Function URL prediction.
    assert_eq!(total("predictions"), 10.0);
    assert_eq!(total("errors"), 4.0);
    assert_eq!(total("errors.unsupported_format"), 1.0);
    assert_eq!(total("errors.not_found"), 1.0);
    assert_eq!(total("errors.s3_object_not_found"), 2.0);
    assert_eq!(total("sqs_batch_messages"), 4.0);
    assert_eq!(total("sqs_batch_item_failures"), 1.0);
    let inference: usize = lines
        .iter()
        .filter_map(|l| l["inference"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(inference, 10, "one inference time per image");
    for stage in ["decode", "preprocess"] {
        let times: Vec<f64> = lines
            .iter()
            .filter_map(|l| l[stage].as_array())
            .flatten()
            .map(|t| t.as_f64().unwrap())
            .collect();
        // 8 classified images and the 2 whose bytes failed to decode.
        assert!(times.len() >= 10, "{stage}: {times:?}");
        assert!(times.iter().all(|t| *t >= 0.0), "{stage}: {times:?}");
    }
    assert!(total("images") >= 10.0, "images: {}", total("images"));
    assert!(
        lines.iter().all(|l| l["FunctionName"] == "_"),
        "each line carries its FunctionName dimension's value"
    );
    let directive = &lines[0]["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "onnx-lambda-test");
    assert_eq!(
        directive["Dimensions"],
        serde_json::json!([["FunctionName"]])
    );
    let request_ids: BTreeMap<&str, ()> = lines
        .iter()
        .map(|l| (l["request_id"].as_str().unwrap(), ()))
        .collect();
    assert_eq!(
        request_ids.len(),
        invocations,
        "each line names its invocation"
    );
}
