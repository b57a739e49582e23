//! A fault-injecting TCP proxy for HTTP/1.1, in front of the real moto
//! server: pass, delay, reset, blackhole, or answer chosen requests with a
//! canned answer (a 500, S3's AccessDenied), switchable while a test runs.
//! Blocking std threads; one request per connection, each forwarded on its
//! own upstream connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Wait this long before forwarding each answer.
    Delay(Duration),
    /// Reset every new connection at once.
    Reset,
    /// Accept and read, never answer.
    Blackhole,
    /// Forward, but drop `Content-Length` from answers (the body then ends
    /// when the connection closes), as some servers and proxies do.
    NoContentLength,
}

/// A canned answer for chosen requests.
#[derive(Debug, Clone)]
pub struct Injected {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Injected {
    /// 500 InternalError, which SDKs retry.
    pub fn internal_error() -> Injected {
        Injected {
            status: 500,
            content_type: "application/x-amz-json-1.0",
            body: r#"{"__type":"InternalError","message":"injected fault"}"#.into(),
        }
    }

    /// S3's 503 SlowDown: throttling, which SDKs retry with backoff.
    #[allow(dead_code)] // not every test binary throttles
    pub fn s3_slow_down() -> Injected {
        Injected {
            status: 503,
            content_type: "application/xml",
            body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                   <Message>Please reduce your request rate.</Message></Error>"
                .into(),
        }
    }

    /// S3's 403 AccessDenied.
    pub fn s3_access_denied() -> Injected {
        Injected {
            status: 403,
            content_type: "application/xml",
            body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>\
                   <Message>Access Denied</Message></Error>"
                .into(),
        }
    }
}

#[derive(Debug)]
struct State {
    fault: Fault,
    /// Requests seen so far (0-based index of the next one).
    requests: usize,
    /// Their request lines (`GET /bucket/key HTTP/1.1`).
    lines: Vec<String>,
    /// Request indices answered with `injected` instead of forwarded.
    fail: std::ops::Range<usize>,
    injected: Injected,
}

/// A running proxy; it lives as long as the test process.
#[derive(Clone)]
pub struct Proxy {
    /// `http://127.0.0.1:PORT`: point an SDK client here.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`http://host:port`), passing traffic.
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            fault: Fault::Pass,
            requests: 0,
            lines: Vec::new(),
            fail: 0..0,
            injected: Injected::internal_error(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (state, upstream) = (shared.clone(), upstream.clone());
                std::thread::spawn(move || serve(client, &upstream, &state));
            }
        });
        Proxy { endpoint, state }
    }

    /// Switches the fault for new traffic.
    pub fn set(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
    }

    /// Answers the next requests numbered `from..to` (counted from now, 0
    /// being the next) with a 500 InternalError, which SDKs retry.
    pub fn fail_requests(&self, from: usize, to: usize) {
        self.inject(from, to, Injected::internal_error());
    }

    /// Answers the next requests numbered `from..to` with `answer`.
    pub fn inject(&self, from: usize, to: usize, answer: Injected) {
        let mut s = self.state.lock().unwrap();
        s.fail = s.requests + from..s.requests + to;
        s.injected = answer;
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// The request lines seen so far, in order.
    #[allow(dead_code)] // not every test binary reads them
    pub fn request_lines(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }
}

fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) {
    let fault = state.lock().unwrap().fault;
    if fault == Fault::Reset {
        // SO_LINGER 0: close sends RST.
        let _ = socket_linger_zero(&client);
        return;
    }
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    let injected = {
        let mut s = state.lock().unwrap();
        let index = s.requests;
        s.requests += 1;
        let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
        s.lines.push(String::from_utf8_lossy(line).into_owned());
        s.fail.contains(&index).then(|| s.injected.clone())
    };
    let response = match (fault, injected) {
        (Fault::Blackhole, _) => {
            // Read on, answer nothing, until the client gives up.
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
        (_, Some(injected)) => Some(answer(injected)),
        (Fault::Delay(d), None) => {
            std::thread::sleep(d);
            forward(upstream, &request)
        }
        (Fault::NoContentLength, None) => {
            forward(upstream, &request).map(|r| without_content_length(&r))
        }
        _ => forward(upstream, &request),
    };
    // Every answer says `Connection: close` (upstream was asked to), and a
    // body without `Content-Length` ends only when the connection does.
    if let Some(response) = response {
        let _ = client.write_all(&response);
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// One request: head and `Content-Length` body, with `Connection: close`
/// set for the upstream hop.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    head.extend_from_slice(&body);
    Some(head)
}

/// Sends one request upstream and reads its whole answer (upstream closes).
fn forward(upstream: &str, request: &[u8]) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).ok()?;
    up.write_all(request).ok()?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).ok()?;
    Some(response)
}

fn answer(a: Injected) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} Injected\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        a.status,
        a.content_type,
        a.body.len(),
        a.body
    )
    .into_bytes()
}

/// The same answer without its `Content-Length` header.
fn without_content_length(response: &[u8]) -> Vec<u8> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&response[..split]);
    let mut out: Vec<u8> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes();
    out.extend_from_slice(&response[split..]);
    out
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
