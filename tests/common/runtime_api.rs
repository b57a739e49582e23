//! A small Lambda Runtime API emulator: enough of the protocol
//! (`/runtime/invocation/next`, `/response`, `/error`, `/init/error`) for
//! the real `lambda_runtime` loop in the real binary to run against it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the function answered for one invocation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The request id the emulator gave the invocation.
    pub request_id: String,
    /// `response` or `error`.
    pub kind: String,
    /// The body the function posted.
    pub body: serde_json::Value,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(String, serde_json::Value)>,
    outcomes: Vec<Outcome>,
    init_error: Option<serde_json::Value>,
}

/// The emulator; the address goes into `AWS_LAMBDA_RUNTIME_API`.
pub struct RuntimeApi {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl RuntimeApi {
    /// Starts listening on a free loopback port.
    pub fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, s));
            }
        });
        RuntimeApi { addr, state }
    }

    /// Queues an invocation; returns its request id.
    pub fn invoke(&self, event: serde_json::Value) -> String {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap();
        let id = format!("req-{}", st.queue.len() + st.outcomes.len() + 1);
        st.queue.push_back((id.clone(), event));
        cv.notify_all();
        id
    }

    /// Waits until `n` invocations have been answered (or the function
    /// reported an init error), and returns the outcomes in answer order.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Outcome>, serde_json::Value> {
        let (lock, cv) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(e) = &st.init_error {
                return Err(e.clone());
            }
            if st.outcomes.len() >= n {
                return Ok(st.outcomes.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} invocations answered in {timeout:?}",
                st.outcomes.len()
            );
            st = cv.wait_timeout(st, left).unwrap().0;
        }
    }
}

fn serve(stream: TcpStream, state: Arc<(Mutex<State>, Condvar)>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (lock, cv) = &*state;
        let response = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let mut st = lock.lock().unwrap();
            let (id, event) = loop {
                if let Some(item) = st.queue.pop_front() {
                    break item;
                }
                st = cv.wait(st).unwrap();
            };
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            let payload = event.to_string();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {id}\r\n\
                 Lambda-Runtime-Deadline-Ms: {deadline}\r\n\
                 Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:onnx-lambda\r\n\
                 Lambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000\r\n\
                 Content-Length: {}\r\n\r\n{payload}",
                payload.len()
            )
        } else {
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into())
            });
            let mut st = lock.lock().unwrap();
            if path.ends_with("/init/error") {
                st.init_error = Some(value);
            } else if let Some(rest) = path.strip_prefix("/2018-06-01/runtime/invocation/") {
                let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
                st.outcomes.push(Outcome {
                    request_id: id.to_string(),
                    kind: kind.to_string(),
                    body: value,
                });
            }
            cv.notify_all();
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n".to_string()
        };
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Environment the Lambda runtime expects, pointing at `api`.
pub fn lambda_env(api: &RuntimeApi) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", api.addr.clone()),
        ("AWS_LAMBDA_FUNCTION_NAME", "onnx-lambda".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "test-stream".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            "/aws/lambda/onnx-lambda".into(),
        ),
    ]
}
