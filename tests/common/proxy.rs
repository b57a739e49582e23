//! A fault-injecting TCP proxy for HTTP/1.1, in front of the real moto
//! server: pass, delay, reset, blackhole, or answer chosen requests with a
//! 500, switchable while a test runs. Blocking std threads, one per
//! connection; each request is forwarded on its own upstream connection.

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
}

#[derive(Debug)]
struct State {
    fault: Fault,
    /// Requests seen so far (0-based index of the next one).
    requests: usize,
    /// Request indices answered with an injected 500 instead of forwarded.
    fail: std::ops::Range<usize>,
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
            fail: 0..0,
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
        let mut s = self.state.lock().unwrap();
        s.fail = s.requests + from..s.requests + to;
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

fn serve(client: TcpStream, upstream: &str, state: &Mutex<State>) {
    let fault = state.lock().unwrap().fault;
    if fault == Fault::Reset {
        // SO_LINGER 0: close sends RST.
        let _ = socket_linger_zero(&client);
        return;
    }
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    loop {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        let (fault, index, fail) = {
            let mut s = state.lock().unwrap();
            let index = s.requests;
            s.requests += 1;
            (s.fault, index, s.fail.contains(&index))
        };
        let response = match fault {
            Fault::Blackhole => {
                // Read on, answer nothing, until the client gives up.
                let mut sink = [0u8; 4096];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            Fault::Delay(d) => {
                std::thread::sleep(d);
                forward(upstream, &request)
            }
            _ if fail => injected_500(index),
            _ => forward(upstream, &request),
        };
        let Some(response) = response else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        if client.write_all(&response).is_err() {
            return;
        }
    }
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

fn injected_500(index: usize) -> Option<Vec<u8>> {
    let body = format!(
        "{{\"__type\":\"InternalError\",\"message\":\"injected fault on request {index}\"}}"
    );
    Some(
        format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/x-amz-json-1.0\r\n\
             x-amzn-query-error: InternalError;Receiver\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
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
