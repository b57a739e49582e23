//! The `onnx-lambda` binary as a user runs it: JSON Lines out, exit status.

mod common;

use std::process::Command;

use common::data;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
    // The defaults must work with nothing configured.
    for var in [
        "MODEL_URI",
        "TOP_K",
        "MAX_INPUT_BYTES",
        "MAX_IMAGE_PIXELS",
        "THREADS",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn predict_prints_one_json_line_per_file_and_fails_if_any_failed() {
    let dir = std::env::temp_dir().join(format!("onnx-lambda-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.join("missing.png");
    let out = bin()
        .args(["predict", "--top-k", "3"])
        .arg(data("images/chelsea.png"))
        .arg(&empty)
        .arg(&missing)
        .arg(data("images/coffee.png"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "exit status must report the failures"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0]["file"].as_str().unwrap().ends_with("chelsea.png"));
    let preds = lines[0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert_eq!(preds[0]["index"], 285);
    assert_eq!(preds[0]["label"], "Egyptian cat");
    assert!(preds[0]["probability"].as_f64().unwrap() > preds[1]["probability"].as_f64().unwrap());
    assert!(lines[0]["timing_ms"]["total"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["error"]["code"], "empty_input");
    assert_eq!(lines[2]["error"]["code"], "read_failed");
    assert!(lines[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing.png"));
    assert_eq!(lines[3]["predictions"][0]["index"], 967);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn predict_succeeds_when_all_inputs_do() {
    let out = bin()
        .arg("predict")
        .arg(data("images/china.jpg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["predictions"].as_array().unwrap().len(), 5);
}

#[test]
fn bench_json_reports_the_documented_fields() {
    let out = bin()
        .args([
            "bench",
            "--json",
            "--iterations",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "2",
        ])
        .arg(data("images"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["images"], 5);
    assert_eq!(r["classified"], 5);
    assert_eq!(r["errors"], 0);
    assert!(r["images_per_second"].as_f64().unwrap() > 0.0);
    let l = &r["latency_ms"];
    let (p50, p95, p99) = (
        l["p50"].as_f64().unwrap(),
        l["p95"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{l}");
    assert!(r["batch_latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["model_load_ms"].as_f64().unwrap() > 0.0);
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 10 << 20);
}

#[test]
fn a_bad_model_path_fails_with_a_clear_message() {
    let out = bin()
        .args(["--model", "/nonexistent/model.onnx", "predict"])
        .arg(data("images/china.jpg"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.onnx"), "{err}");
    // Said once, as one sentence (not also as a JSON log line).
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: loading the model from"), "{err}");
}

#[test]
fn a_file_over_the_input_limit_is_refused_from_its_size() {
    let out = bin()
        .args(["--max-input-bytes", "1000", "predict"])
        .arg(data("images/chelsea.png"))
        .arg(common::root().join("tests/data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["error"]["code"], "input_too_large", "{}", lines[0]);
    assert!(lines[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1000"));
    assert_eq!(
        lines[1]["error"]["code"], "read_failed",
        "a folder is not an image file"
    );
}
