//! `serve` under hostile clients, in process on ephemeral ports: slow
//! headers and bodies, more inference requests than it admits, a request
//! past its deadline, a panicking handler, more connections than allowed.
//! Each test asserts both the refusal and that the server goes on serving.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::InProcessServer;
use onnx_lambda::Config;
use serde_json::Value;

fn addr(server: &InProcessServer) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Sends `request` on a new connection and reads the whole answer (the
/// server closes or the read times out after `wait`).
fn exchange(server: &InProcessServer, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr(server)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(request).unwrap();
    read_response(&mut stream)
}

/// One response from `stream`: up to the end of its `Content-Length` body.
fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn json_body(response: &str) -> Value {
    serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn health(server: &InProcessServer) -> u16 {
    status(&exchange(
        server,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    ))
}

fn config(vars: &[(&str, &str)]) -> Config {
    Config::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap()
}

#[test]
fn a_slow_loris_is_disconnected_and_does_not_block_others() {
    let server = InProcessServer::start(config(&[("HEADER_TIMEOUT_SECS", "1")]));
    let mut loris = TcpStream::connect(addr(&server)).unwrap();
    let request =
        b"GET /health HTTP/1.1\r\nHost: slow.example\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut closed_after = None;
    for (i, byte) in request.iter().enumerate() {
        if loris.write_all(&[*byte]).is_err() {
            closed_after = Some(i);
            break;
        }
        if i == 3 {
            // Others are served while the loris holds its connection.
            assert_eq!(health(&server), 200);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = closed_after.expect("the server never closed the slow connection");
    assert!(
        sent < request.len() / 2,
        "the server let the loris send {sent} of {} bytes ({:?})",
        request.len(),
        started.elapsed()
    );
    assert_eq!(health(&server), 200, "the server is still fine");
}

#[test]
fn a_body_slower_than_its_timeout_gets_408() {
    let server = InProcessServer::start(config(&[("BODY_TIMEOUT_SECS", "1")]));
    let started = Instant::now();
    let response = exchange(
        &server,
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n0123456789",
        Duration::from_secs(20),
    );
    assert_eq!(status(&response), 408, "{response}");
    assert_eq!(json_body(&response)["error"]["code"], "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(health(&server), 200);
}

#[test]
fn past_the_request_deadline_the_answer_is_503_with_retry_after() {
    let server = InProcessServer::start(config(&[
        ("REQUEST_TIMEOUT_SECS", "1"),
        ("BODY_TIMEOUT_SECS", "30"),
    ]));
    let response = exchange(
        &server,
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n0123",
        Duration::from_secs(20),
    );
    assert_eq!(status(&response), 503, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    assert_eq!(json_body(&response)["error"]["code"], "deadline_exceeded");
}

#[test]
fn beyond_the_admitted_requests_inference_is_refused_at_once_and_others_are_served() {
    let server = InProcessServer::start(config(&[("THREADS", "1"), ("MAX_QUEUED_REQUESTS", "0")]));
    // One admitted request, holding its permit while its body is awaited.
    let mut holder = TcpStream::connect(addr(&server)).unwrap();
    holder
        .write_all(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let refused = exchange(
        &server,
        b"POST /v2/models/mobilenetv2-1.0/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{",
        Duration::from_secs(10),
    );
    assert_eq!(status(&refused), 503, "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert_eq!(json_body(&refused)["error"]["code"], "overloaded");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, without the body"
    );
    assert_eq!(
        health(&server),
        200,
        "non-inference routes need no admission"
    );
    // The holder finishes; its permit comes back and inference is admitted again.
    holder.write_all(&[0u8; 100]).unwrap();
    holder
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(status(&read_response(&mut holder)), 400);
    let photo = std::fs::read(common::data("images/chelsea.png")).unwrap();
    let mut request = format!(
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        photo.len()
    )
    .into_bytes();
    request.extend_from_slice(&photo);
    let ok = exchange(&server, &request, Duration::from_secs(30));
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(json_body(&ok)["predictions"][0]["index"], 285);
}

#[test]
fn a_panicking_handler_gets_a_500_and_the_server_goes_on() {
    use futures::FutureExt;
    let handler: onnx_lambda::serve::Handler =
        std::sync::Arc::new(|app, req: http::Request<bytes::Bytes>| {
            async move {
                if req.uri().path() == "/predict" {
                    panic!("provoked by the test");
                }
                onnx_lambda::http::route(app, req).await
            }
            .boxed()
        });
    let server = InProcessServer::start_with(Config::default(), handler);
    for _ in 0..2 {
        let response = exchange(
            &server,
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 3\r\n\r\nabc",
            Duration::from_secs(10),
        );
        assert_eq!(status(&response), 500, "{response}");
        let body = json_body(&response);
        assert_eq!(body["error"]["code"], "internal");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provoked by the test"));
        assert_eq!(health(&server), 200);
    }
}

#[test]
fn connections_beyond_the_limit_wait_until_one_closes() {
    let server = InProcessServer::start(config(&[("MAX_CONNECTIONS", "2")]));
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr(&server)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = TcpStream::connect(addr(&server)).unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        third.read(&mut buf).is_err(),
        "a third connection is not served while two are open"
    );
    drop(idle);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(status(&read_response(&mut third)), 200);
}

#[test]
fn a_client_that_sends_its_whole_oversized_body_still_reads_the_413() {
    let server = InProcessServer::start(config(&[("MAX_REQUEST_BYTES", "100000")]));
    for size in [100_001usize, 350_000] {
        let mut request = format!(
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n\r\n"
        )
        .into_bytes();
        request.extend(vec![7u8; size]);
        // Like Python's http.client: the whole body first, then the answer.
        let response = exchange(&server, &request, Duration::from_secs(20));
        assert_eq!(status(&response), 413, "{size}: {response}");
        assert_eq!(json_body(&response)["error"]["code"], "payload_too_large");
    }
    // Declared far beyond the limit: refused at once, before any body.
    let started = Instant::now();
    let response = exchange(
        &server,
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status(&response), 413, "{response}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(health(&server), 200);
}
