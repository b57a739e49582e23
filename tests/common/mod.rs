//! Shared test helpers: a real moto server (S3 + SQS wire protocols) and a
//! Lambda Runtime API emulator for driving the real runtime loop.
#![allow(dead_code)]

pub mod bombs;
pub mod corpus;
pub mod proxy;
pub mod runtime_api;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a file under `tests/data`.
pub fn data(rel: &str) -> PathBuf {
    root().join("tests/data").join(rel)
}

/// One Lambda invocation through the real handler, its response as JSON
/// (what the runtime would send back).
pub async fn invoke(
    app: std::sync::Arc<onnx_lambda::App>,
    event: serde_json::Value,
    request_id: &str,
) -> serde_json::Value {
    invoke_until(app, event, request_id, None).await
}

/// [`invoke`] with the invocation's deadline.
pub async fn invoke_until(
    app: std::sync::Arc<onnx_lambda::App>,
    event: serde_json::Value,
    request_id: &str,
    deadline: Option<std::time::Instant>,
) -> serde_json::Value {
    let response = onnx_lambda::lambda::handle(app, event, request_id, deadline).await;
    serde_json::to_value(response).expect("a Lambda response serialises")
}

/// A Lambda event from `events/`.
pub fn event(name: &str) -> serde_json::Value {
    let path = root().join("events").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A free TCP port on loopback (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Moto {
    endpoint: String,
    _child: Option<Child>,
}

/// The endpoint of a moto server: `MOTO_ENDPOINT` if `scripts/test.sh`
/// started one, else one started here for this test binary (it dies with
/// the test process). Panics with instructions when moto is not installed:
/// a test that needs S3 must not silently pass without it.
pub fn moto_endpoint() -> &'static str {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    &MOTO
        .get_or_init(|| {
            if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") {
                return Moto {
                    endpoint,
                    _child: None,
                };
            }
            let (endpoint, child) = spawn_moto();
            Moto {
                endpoint,
                _child: Some(child),
            }
        })
        .endpoint
}

/// A moto server of one test's own, killed when dropped: for tests that
/// change server-wide settings, such as turning on IAM enforcement.
pub struct OwnMoto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Child,
}

impl OwnMoto {
    /// Starts one on a free port and waits until it listens.
    pub fn start() -> OwnMoto {
        let (endpoint, child) = spawn_moto();
        OwnMoto { endpoint, child }
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Starts moto (`scripts/moto_server.py` with the venv's python, as
/// `scripts/test.sh` does) on a free loopback port.
fn spawn_moto() -> (String, Child) {
    let program = root().join(".venv/bin/python");
    let port = free_port();
    let mut cmd = Command::new(&program);
    cmd.arg(root().join("scripts/moto_server.py"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Kill moto when this test process exits, however it exits.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // PR_SET_PDEATHSIG fires when the spawning *thread* ends, and a test's
    // thread ends with the test: spawn from a thread that lives as long as
    // the process, or moto dies after the first test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(cmd.spawn()).unwrap();
        loop {
            std::thread::park();
        }
    });
    let child = rx.recv().unwrap().unwrap_or_else(|e| {
        panic!(
            "cannot start {}: {e}. Run scripts/test.sh, which installs moto into .venv",
            program.display()
        )
    });
    wait_for_port(port, Duration::from_secs(30));
    (format!("http://127.0.0.1:{port}"), child)
}

/// Waits until something listens on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Environment for the AWS SDK (ours or boto3) to talk to moto.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto_endpoint().to_string()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// An S3 client for `endpoint` with a read timeout and a number of attempts
/// (for fault injection through [`proxy::Proxy`]).
pub fn s3_client_at(endpoint: &str, timeout: Duration, attempts: u32) -> aws_sdk_s3::Client {
    s3_client_as(endpoint, timeout, attempts, test_credentials())
}

/// The credentials moto takes while it enforces no IAM.
fn test_credentials() -> aws_sdk_s3::config::Credentials {
    aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "tests")
}

/// [`s3_client_at`] signing with `credentials` (an IAM identity's).
pub fn s3_client_as(
    endpoint: &str,
    timeout: Duration,
    attempts: u32,
    credentials: aws_sdk_s3::config::Credentials,
) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .http_client(onnx_lambda::aws::http_client())
        .credentials_provider(credentials)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(timeout)
                .read_timeout(timeout)
                .build(),
        )
        .retry_config(
            aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(attempts),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An SQS client for `endpoint` with a read timeout and a number of attempts.
pub fn sqs_client_at(endpoint: &str, timeout: Duration, attempts: u32) -> aws_sdk_sqs::Client {
    sqs_client_as(endpoint, timeout, attempts, test_credentials())
}

/// [`sqs_client_at`] signing with `credentials`.
pub fn sqs_client_as(
    endpoint: &str,
    timeout: Duration,
    attempts: u32,
    credentials: aws_sdk_sqs::config::Credentials,
) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::new()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .http_client(onnx_lambda::aws::http_client())
        .timeout_config(
            aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                .connect_timeout(timeout)
                .read_timeout(timeout)
                .build(),
        )
        .retry_config(
            aws_sdk_sqs::config::retry::RetryConfig::standard().with_max_attempts(attempts),
        )
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// An S3 client for moto, built like the service builds its own.
pub async fn s3_client() -> aws_sdk_s3::Client {
    s3_client_at(moto_endpoint(), Duration::from_secs(30), 3)
}

/// A bucket name unique to this test run.
pub fn unique_bucket(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Creates `bucket` and uploads `objects` (key, bytes).
pub async fn put_objects(client: &aws_sdk_s3::Client, bucket: &str, objects: &[(&str, Vec<u8>)]) {
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("create bucket");
    for (key, bytes) in objects {
        client
            .put_object()
            .bucket(bucket)
            .key(*key)
            .body(bytes.clone().into())
            .send()
            .await
            .expect("put object");
    }
}

/// An SQS client for moto.
pub async fn sqs_client() -> aws_sdk_sqs::Client {
    sqs_client_at(moto_endpoint(), Duration::from_secs(30), 3)
}

/// Creates a queue (unique name from `prefix`) with `attributes`; returns its URL.
pub async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    attributes: &[(&str, String)],
) -> String {
    let mut req = sqs.create_queue().queue_name(unique_bucket(prefix));
    for (k, v) in attributes {
        req = req.attributes(aws_sdk_sqs::types::QueueAttributeName::from(*k), v.clone());
    }
    req.send().await.expect("create queue").queue_url.unwrap()
}

/// Drains a queue: every body currently in it (deleting them).
pub async fn drain(sqs: &aws_sdk_sqs::Client, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let r = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        let messages = r.messages.unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            out.push(m.body.clone().unwrap_or_default());
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

/// Approximate visible + in-flight messages in a queue.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue: &str) -> usize {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let r = sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = r.attributes.unwrap_or_default();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// `serve` running in this test process on an ephemeral port, with the
/// bundled model and `config`; ready when returned, stopped on drop.
pub struct InProcessServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessServer {
    pub fn start(config: onnx_lambda::Config) -> InProcessServer {
        InProcessServer::start_with(config, onnx_lambda::serve::router())
    }

    /// The same with another request handler (to provoke faults).
    pub fn start_with(
        config: onnx_lambda::Config,
        handler: onnx_lambda::serve::Handler,
    ) -> InProcessServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let cell = onnx_lambda::AppCell::default();
                let shutdown = async {
                    stopped.await.ok();
                };
                let options = onnx_lambda::serve::ServeOptions::from_config(&config);
                let server = tokio::spawn(onnx_lambda::serve::serve(
                    listener,
                    cell.clone(),
                    options,
                    handler,
                    shutdown,
                ));
                let loader = onnx_lambda::ModelLoader::new(None);
                let app = onnx_lambda::App::init(config, &loader, None).await.unwrap();
                cell.set(std::sync::Arc::new(app));
                ready_tx.send(format!("http://{addr}")).unwrap();
                server.await.unwrap().unwrap();
            });
        });
        let url = ready_rx.recv().expect("the in-process server started");
        InProcessServer {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// An SQS event like Lambda's, from `events/sqs-jobs.json` with new bodies
/// (message ids `msg-0`, `msg-1`, ...).
pub fn sqs_event(bodies: &[String], receive_count: u32) -> serde_json::Value {
    let template = event("sqs-jobs.json");
    let record = template["Records"][0].clone();
    let records: Vec<serde_json::Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = record.clone();
            r["messageId"] = serde_json::json!(format!("msg-{i}"));
            r["body"] = serde_json::json!(b);
            r["attributes"]["ApproximateReceiveCount"] =
                serde_json::json!(receive_count.to_string());
            r
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// Sends bodies in batches of 10; returns the message id of each.
pub async fn send_all(sqs: &aws_sdk_sqs::Client, queue: &str, bodies: &[String]) -> Vec<String> {
    let mut ids = vec![String::new(); bodies.len()];
    for (c, chunk) in bodies.chunks(10).enumerate() {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .build()
                    .unwrap()
            })
            .collect();
        let out = sqs
            .send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed().is_empty());
        for ok in out.successful() {
            ids[c * 10 + ok.id().parse::<usize>().unwrap()] = ok.message_id().to_string();
        }
    }
    ids
}

pub struct Worker(Child);

impl Worker {
    pub fn start(queue: &str, results: &str, extra: &[&str]) -> Worker {
        Worker::start_with_env(queue, results, extra, &[])
    }

    /// [`Worker::start`] with more environment (after the moto settings).
    pub fn start_with_env(
        queue: &str,
        results: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
        cmd.args([
            "worker",
            "--queue",
            queue,
            "--results-queue",
            results,
            "--wait-seconds",
            "1",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        for (k, v) in aws_env() {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Worker(cmd.spawn().unwrap())
    }

    /// The process id, to read its `/proc` status.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then wait: the worker must exit cleanly on its own.
    pub fn stop(mut self) -> serde_json::Value {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "worker exit status {status}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "worker did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(self.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        serde_json::from_str(out.lines().last().unwrap_or("null"))
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Worker {
    /// SIGKILL: no chance to finish or clean up, as when a host dies.
    pub fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// An app with the bundled model (loaded from disk), reading S3 inputs
/// with `s3` and writing results with `sqs`.
pub async fn app_with(
    config: onnx_lambda::Config,
    s3: Option<aws_sdk_s3::Client>,
    sqs: Option<aws_sdk_sqs::Client>,
) -> std::sync::Arc<onnx_lambda::App> {
    let app = onnx_lambda::App::init(config, &onnx_lambda::ModelLoader::new(None), s3)
        .await
        .expect("the bundled model loads");
    std::sync::Arc::new(match sqs {
        Some(sqs) => app.with_sqs(sqs),
        None => app,
    })
}

/// The message ids in an SQS response's `batchItemFailures`.
pub fn batch_failures(response: &serde_json::Value) -> std::collections::HashSet<String> {
    response["batchItemFailures"]
        .as_array()
        .expect("an SQS response")
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

/// The `job_id`s of the messages in `queue` (drained): jobs or results.
pub async fn job_ids_in(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
) -> std::collections::HashSet<String> {
    drain(sqs, queue)
        .await
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["job_id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// A queue's ARN (for redrive policies).
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone()
}

/// A field of `/proc/PID/status` in bytes (`VmHWM:` is the peak resident
/// size, `VmRSS:` the current one).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb * 1024
}

/// What the README promises: peak RSS of a process at default settings.
pub const PEAK_LIMIT: u64 = 300 * 1000 * 1000;

/// `serve` on a free port, as a process of its own, killed when dropped.
pub struct ServeProcess {
    child: Child,
    pub url: String,
}

impl ServeProcess {
    /// Starts `serve` with `env` on top of this process's environment.
    pub fn start(env: &[(&str, String)]) -> ServeProcess {
        ServeProcess::start_logging(env, Stdio::null())
    }

    /// [`ServeProcess::start`], its log (stderr) going to `log`.
    pub fn start_logging(env: &[(&str, String)], log: impl Into<Stdio>) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .current_dir(root())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();

        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve printed {line:?}"))
            .to_string();
        ServeProcess { child, url }
    }

    /// SIGTERM, and wait for the process to exit.
    pub fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap();
    }

    /// A field of the process's `/proc` status, in bytes.
    pub fn status(&self, field: &str) -> u64 {
        proc_status_bytes(self.child.id(), field)
    }

    /// Waits until a prediction of the sample photo succeeds.
    pub fn wait_ready(&self) {
        let photo = std::fs::read(data("images/chelsea.png")).unwrap();
        let started = Instant::now();
        loop {
            let (status, body) = self
                .post_all("/predict", "image/png", std::slice::from_ref(&photo))
                .remove(0);
            if status == 200 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{status} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a new peak at the current resident size.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
        assert!(self.status("VmHWM:") <= self.status("VmRSS:") + (1 << 20));
    }

    /// Posts every body at once (one curl each) and returns the answers.
    pub fn post_all(
        &self,
        path: &str,
        content_type: &str,
        bodies: &[Vec<u8>],
    ) -> Vec<(u16, serde_json::Value)> {
        let dir = std::env::temp_dir().join(format!("onnx-lambda-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::thread::scope(|s| {
            let calls: Vec<_> = bodies
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let file = dir.join(format!("body-{i}"));
                    std::fs::write(&file, body).unwrap();
                    let url = format!("{}{path}", self.url);
                    s.spawn(move || {
                        let header = format!("Content-Type: {content_type}");
                        let data = format!("@{}", file.display());
                        curl(&["-H", &header, "--data-binary", &data, &url])
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        })
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl with `args`: the status and the body as JSON (`Null` if it is not).
#[allow(dead_code)] // not every test binary uses it
pub fn curl(args: &[&str]) -> (u16, serde_json::Value) {
    let (status, body) = curl_text(args);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// curl with `args`: the status and the body as text.
#[allow(dead_code)] // not every test binary uses it
pub fn curl_text(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap_or(0), body.to_string())
}

/// Runs `tests/tools/SCRIPT` with the venv's python on `input` (stdin) and
/// returns its JSON output; panics with its output when it fails.
#[allow(dead_code)] // not every test binary uses it
pub fn python_tool(script: &str, input: &str) -> serde_json::Value {
    use std::io::Write;
    let python = root().join(".venv/bin/python");
    let mut child = Command::new(&python)
        .arg(root().join("tests/tools").join(script))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/test.sh, which makes .venv",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}\ninput:\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

/// template.yaml as JSON, read by cfn-lint's own CloudFormation YAML decoder
/// (`tests/tools/template_facts.py`: `!Ref X` becomes `{"Ref": "X"}`).
#[allow(dead_code)] // not every test binary uses it
pub fn template() -> serde_json::Value {
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(root().join("tests/tools/template_facts.py"))
        .arg(root().join("template.yaml"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/test.sh", python.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
