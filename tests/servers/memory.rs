//! The memory budget: `serve` at default settings stays under
//! [`PEAK_LIMIT`] of resident memory for every input that inflates
//! (decompression bombs in each format, a huge ICC profile, a large KServe
//! JSON body), sent several at once, and for big images it decodes. The
//! peak is the kernel's own count (`VmHWM`), reset between classes through
//! `/proc/PID/clear_refs`.

use crate::common::{self, bombs, corpus, ServeProcess};

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use common::PEAK_LIMIT;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One class of input: what is sent, how many at once, and the answer.
struct Class {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    copies: usize,
    check: fn(u16, &Value) -> Result<(), String>,
}

fn refused_as(code: &'static str) -> impl Fn(u16, &Value) -> Result<(), String> {
    move |status, body| match (status, body["error"]["code"].as_str()) {
        (400, Some(c)) if c == code => Ok(()),
        _ => Err(format!("expected 400 {code}, got {status} {body}")),
    }
}

fn classified(status: u16, body: &Value) -> Result<(), String> {
    match (status, body["predictions"].as_array()) {
        (200, Some(p)) if !p.is_empty() => Ok(()),
        _ => Err(format!(
            "expected 200 with predictions, got {status} {body}"
        )),
    }
}

fn classes() -> Vec<Class> {
    let tiff = bombs::tiff_rgba16(7000, 7000);
    let many_tiffs = json!({"images": vec![b64(&tiff); 16]})
        .to_string()
        .into_bytes();
    // 1.45 M numbers where 150,528 are expected: refused for its shape.
    let mut v2 = br#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": ["#.to_vec();
    v2.extend(std::iter::repeat_n(*b"0,", 1_450_000).flatten());
    v2.extend_from_slice(b"0]}]}");
    vec![
        Class {
            name: "TIFF 7000x7000 16-bit RGBA, deflate",
            path: "/predict",
            content_type: "image/tiff",
            body: tiff,
            copies: 4,
            check: |s, b| refused_as("image_too_large")(s, b),
        },
        Class {
            name: "16 of those TIFFs in one {\"images\"} body",
            path: "/predict",
            content_type: "application/json",
            body: many_tiffs,
            copies: 2,
            check: |s, b| {
                let results = b["results"].as_array().ok_or(format!("{s} {b}"))?;
                match results
                    .iter()
                    .all(|r| r["error"]["code"] == "image_too_large")
                {
                    true if s == 200 && results.len() == 16 => Ok(()),
                    _ => Err(format!("{s} {b}")),
                }
            },
        },
        Class {
            name: "PNG 7000x7000 16-bit RGBA",
            path: "/predict",
            content_type: "image/png",
            body: bombs::png(7000, 7000, 6, 16, 0),
            copies: 4,
            check: |s, b| refused_as("image_too_large")(s, b),
        },
        Class {
            name: "GIF 7000x7000",
            path: "/predict",
            content_type: "image/gif",
            body: bombs::gif(7000, 7000),
            copies: 4,
            check: |s, b| refused_as("image_too_large")(s, b),
        },
        Class {
            name: "progressive JPEG 7000x7000 4:4:4",
            path: "/predict",
            content_type: "image/jpeg",
            body: bombs::progressive_jpeg(7000, 7000),
            copies: 4,
            check: |s, b| refused_as("image_too_large")(s, b),
        },
        Class {
            name: "WebP 7000x7000",
            path: "/predict",
            content_type: "image/webp",
            body: corpus::webp_declaring(7000),
            copies: 4,
            check: |s, b| refused_as("image_too_large")(s, b),
        },
        Class {
            // Colour profiles are not applied: one past the decoder's
            // metadata cap is dropped, and the pixels classified.
            name: "1x1 PNG with a 400 MB ICC profile",
            path: "/predict",
            content_type: "image/png",
            body: bombs::png(1, 1, 2, 8, 400 << 20),
            copies: 4,
            check: classified,
        },
        Class {
            name: "KServe V2 JSON, 1.45 M numbers",
            path: "/v2/models/mobilenetv2-1.0/infer",
            content_type: "application/json",
            body: v2,
            copies: 2,
            check: |s, b| match s {
                400..500 if b["error"].as_str().is_some_and(|e| e.contains("150528")) => Ok(()),
                _ => Err(format!("expected a 4xx naming the shape, got {s} {b}")),
            },
        },
        Class {
            name: "PNG 5000x5000 RGBA, decoded",
            path: "/predict",
            content_type: "image/png",
            body: bombs::png(5000, 5000, 6, 8, 0),
            copies: 4,
            check: classified,
        },
        Class {
            name: "PNG 4000x3000 16-bit RGB, decoded",
            path: "/predict",
            content_type: "image/png",
            body: bombs::png(4000, 3000, 2, 16, 0),
            copies: 4,
            check: classified,
        },
    ]
}

#[test]
#[cfg(target_os = "linux")]
fn serve_stays_under_the_memory_budget_for_every_input_class() {
    let serve = ServeProcess::start(&[]);
    serve.wait_ready();
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for class in classes() {
        serve.reset_peak();
        let bodies = vec![class.body.clone(); class.copies];
        let answers = serve.post_all(class.path, class.content_type, &bodies);
        // The peak may come from work still running after an answer.
        std::thread::sleep(Duration::from_millis(200));
        let peak = serve.status("VmHWM:");
        table.push(format!("{:>6.1} MB  {}", peak as f64 / 1e6, class.name));
        for (status, body) in &answers {
            if let Err(e) = (class.check)(*status, body) {
                let mut e = e;
                e.truncate(400);
                failures.push(format!("{}: {e}", class.name));
            }
        }
        if peak > PEAK_LIMIT {
            failures.push(format!("{}: peak RSS {peak} bytes", class.name));
        }
    }
    eprintln!("peak RSS per input class:\n{}", table.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}\n{}", table.join("\n"));
}
