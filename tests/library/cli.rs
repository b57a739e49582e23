//! The `onnx-lambda` binary as a user runs it: JSON Lines out, exit status.

use crate::common;

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

/// Runs a command that must succeed and print one JSON value.
fn json_of(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    let line = json_of(bin().arg("predict").arg(data("images/china.jpg")));
    assert_eq!(line["predictions"].as_array().unwrap().len(), 5);
}

#[test]
fn bench_json_reports_the_documented_fields() {
    let r = json_of(
        bin()
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
            .arg(data("images")),
    );
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
    // The cost estimate follows the CPU time and the pricing flags.
    let cpu_ms = r["cpu_ms_per_image"].as_f64().unwrap();
    assert!(cpu_ms > 0.0, "{r}");
    assert_eq!(r["pricing"]["arch"], "x86_64");
    assert_eq!(r["pricing"]["images_per_invocation"], 2);
    let usd = r["usd_per_million_images"].as_f64().unwrap();
    let request_share = 0.20 / 2.0;
    assert!(usd > request_share, "{usd}");
    assert!(!r["machine"]["cpu"].as_str().unwrap().is_empty());
}

#[test]
fn bench_cost_uses_the_price_flags() {
    let run = |extra: &[&str]| {
        json_of(
            bin()
                .args(["bench", "--json", "--iterations", "1", "--warmup", "0"])
                .args(extra)
                .arg(data("images/chelsea.png")),
        )
    };
    // Free compute: only the request share is left (one image per call).
    let r = run(&["--batch-size", "1", "--price-gb-second", "0"]);
    assert!(
        (r["usd_per_million_images"].as_f64().unwrap() - 0.20).abs() < 1e-9,
        "{r}"
    );
    // Free requests and arm64's price: compute only, at the arm64 rate.
    let r = run(&[
        "--arch",
        "arm64",
        "--price-per-million-requests",
        "0",
        "--memory-mb",
        "1769",
    ]);
    let cpu_s = r["cpu_ms_per_image"].as_f64().unwrap() / 1000.0;
    let threads = r["threads"].as_f64().unwrap().min(1.0);
    let want = cpu_s / threads * 1769.0 / 1024.0 * 0.000_013_333_4 * 1e6;
    let got = r["usd_per_million_images"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-9 * want.max(1.0), "{got} vs {want}");
    assert_eq!(r["pricing"]["arch"], "arm64");
}

#[test]
fn profile_times_every_operator_kind_including_ours() {
    let r = json_of(bin().args(["profile", "--rounds", "2", "--json"]));
    let ops = r["ops"].as_array().unwrap();
    let row = |name: &str| ops.iter().find(|o| o["op"] == name);
    let nodes = |name: &str| row(name).map_or(0, |o| o["nodes"].as_u64().unwrap());
    let ours = row("Depthwise(onnx-lambda)").expect("our depthwise operator is in the plan");
    assert!(ours["ms"].as_f64().unwrap() > 0.0);
    // Depthwise layers are joined to the expansion before them (fused.rs)
    // where the CPU runs our 1x1 convolutions: all but the 7x7 ones at
    // AVX2, those whose input does not fit L2 at AVX-512; the first is
    // joined to the stem on x86.
    let joined = nodes("ExpandDepthwise(onnx-lambda)");
    let stem_joined = nodes("StemDepthwise(onnx-lambda)");
    assert_eq!(
        nodes("Depthwise(onnx-lambda)") + joined + stem_joined,
        17,
        "MobileNetV2's depthwise layers: {ops:?}"
    );
    let pointwise = nodes("Pointwise(onnx-lambda)") + joined;
    assert!(pointwise == 34 || pointwise == 0, "its 1x1 layers: {ops:?}");
    assert_eq!(
        nodes("Stem(onnx-lambda)") + stem_joined,
        1,
        "the first layer: {ops:?}"
    );
    assert_eq!(nodes("Dense(onnx-lambda)"), 1, "the classifier: {ops:?}");
    if pointwise == 34 {
        // No matrix product left to tract, so no weights packed by it.
        assert_eq!(nodes("OptMatMul"), 0, "tract's matrix products: {ops:?}");
        assert_eq!(nodes("OptMatMulPack"), 0, "tract's packing: {ops:?}");
    }
    assert!(
        row("DepthWiseConv").is_none(),
        "tract's depthwise is gone: {ops:?}"
    );
    let macs: u64 = ops.iter().map(|o| o["macs"].as_u64().unwrap()).sum();
    assert!(
        (290_000_000..320_000_000).contains(&macs),
        "MobileNetV2 is ~301 M MACs, got {macs}"
    );
    assert!(r["load"]["compile"]["parse_ms"].as_f64().unwrap() > 0.0);
    // The baseline: tract's own operators only.
    let r = json_of(bin().args(["profile", "--rounds", "1", "--json", "--tract-kernels"]));
    let ops = r["ops"].as_array().unwrap();
    assert!(ops.iter().any(|o| o["op"] == "DepthWiseConv"), "{ops:?}");
    assert!(!ops.iter().any(|o| o["op"] == "Depthwise(onnx-lambda)"));
    assert!(!ops.iter().any(|o| o["op"] == "Dense(onnx-lambda)"));
    assert!(ops.iter().any(|o| o["op"] == "OptMatMul"), "{ops:?}");
}

/// `--simd` lowers the instruction set of the project's operators for the
/// whole run, and says so: portable takes our 1x1 convolutions out of the
/// plan (they need AVX2), avx2 keeps them on an AVX2 machine.
#[test]
fn simd_lowers_what_our_operators_run_and_is_reported() {
    let profile = |level: &str| {
        let r = json_of(bin().args(["profile", "--rounds", "1", "--json", "--simd", level]));
        let ops = r["ops"].as_array().unwrap().clone();
        let nodes = |name: &str| {
            ops.iter()
                .find(|o| o["op"] == name)
                .map_or(0, |o| o["nodes"].as_u64().unwrap())
        };
        let joined = nodes("ExpandDepthwise(onnx-lambda)");
        let ours = nodes("Pointwise(onnx-lambda)") + joined;
        let stem_joined = nodes("StemDepthwise(onnx-lambda)");
        // The peak beside the table is measured at the same level.
        assert_eq!(r["peak"]["simd"], level, "{}", r["peak"]);
        assert!(r["peak"]["gmacs"].as_f64().unwrap() > 0.0);
        (
            r["machine"]["simd"].as_str().unwrap().to_string(),
            ours,
            joined,
            stem_joined,
        )
    };
    assert_eq!(profile("portable"), ("portable".to_string(), 0, 0, 0));
    let best = json_of(bin().args(["profile", "--rounds", "1", "--json"]));
    let peak = best["peak"].clone();
    let best = best["machine"]["simd"].as_str().unwrap().to_string();
    assert_eq!(
        peak["simd"],
        best.as_str(),
        "the peak is measured at the best level"
    );
    assert_eq!(peak["lanes"], if best == "avx512" { 16 } else { 8 });
    if best != "portable" {
        // At AVX2 every expansion on a plane of 10x10 or more is joined to
        // its depthwise layer, channel-blocked: 13 of MobileNetV2's 16
        // inverted residual blocks (not the three at 7x7), and the stem to
        // the first depthwise layer.
        assert_eq!(profile("avx2"), ("avx2".to_string(), 34, 13, 1));
    }
    let out = bin().args(["profile", "--simd", "sse9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expected one of portable, avx2, avx512"),
        "{err}"
    );
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

/// The binary as on a laptop with no AWS configuration at all: no AWS
/// variables, an empty home (no ~/.aws), and never the instance metadata
/// service (off EC2 the binary disables it itself; set here too, so the
/// test can never send traffic to it).
fn bin_without_aws(home: &std::path::Path) -> Command {
    let mut c = bin();
    for (var, _) in std::env::vars() {
        if var.starts_with("AWS_") {
            c.env_remove(var);
        }
    }
    c.env("HOME", home).env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// The one stderr line of a failed run.
fn one_error(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "said once, in one line: {err}");
    assert!(
        !err.contains("DispatchFailure") && !err.contains("Connector"),
        "{err}"
    );
    err
}

#[test]
fn first_contact_without_aws_settings_names_the_setting_once() {
    let home = std::env::temp_dir().join(common::unique_bucket("no-aws-home"));
    std::fs::create_dir_all(&home).unwrap();
    let queue = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs";
    // No region: submit stops before the first upload, naming AWS_REGION.
    let err = one_error(
        bin_without_aws(&home)
            .args(["submit", "--bucket", "b", "--queue", queue])
            .arg(data("images")),
    );
    assert!(
        err.starts_with("error: no AWS region is set: set AWS_REGION"),
        "{err}"
    );
    // The model on S3 without a region: the region, not the network, is named.
    let err = one_error(
        bin_without_aws(&home)
            .env("MODEL_URI", "s3://models/m.onnx")
            .arg("predict")
            .arg(data("images/china.jpg")),
    );
    assert!(err.contains("no AWS region is set"), "{err}");
    // A region but no credentials.
    let err = one_error(bin_without_aws(&home).env("AWS_REGION", "us-east-1").args([
        "collect",
        "--queue",
        queue,
        "--expect",
        "1",
        "--out",
        "/dev/null",
    ]));
    assert!(err.contains("no AWS credentials were found"), "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY_ID") && err.contains("AWS_PROFILE"),
        "{err}"
    );
    // A queue name where a URL is needed: refused before any call.
    let out = bin_without_aws(&home)
        .args(["submit", "--bucket", "b", "--queue", "jobs"])
        .arg(data("images"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("get-queue-url"), "{err}");
    // serve with the bundled model needs no AWS at all: it is not checked.
    let mut serve = bin_without_aws(&home)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    serve.kill().ok();
    serve.wait().ok();
    assert!(line.starts_with("listening on http://"), "{line}");
}

/// `scripts/compare.sh --avx2-only` measures both sides' AVX2 code on an
/// AVX-512 machine: its preload hides AVX-512 from every `cpuid`, so our
/// operators choose AVX2 (and the peak beside the table is AVX2's), and so
/// does what a Python extension detects (NumPy here, ONNX Runtime's MLAS
/// the same way). Only where there is AVX-512 to hide and the kernel can
/// fault `cpuid` (flag `cpuid_fault`); elsewhere the script refuses.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_only_view_hides_avx512_from_both_sides() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map_or(vec![], |l| l.split_whitespace().collect());
    if !(flags.contains(&"avx512f") && flags.contains(&"cpuid_fault")) {
        return;
    }
    let shim = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("avx2_only.so");
    let gcc = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(common::root().join("scripts/avx2_only.c"))
        .output()
        .unwrap();
    assert!(
        gcc.status.success(),
        "{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let simd = |preload: bool| {
        let mut c = bin();
        if preload {
            c.env("LD_PRELOAD", &shim);
        }
        let r = json_of(c.args(["profile", "--rounds", "1", "--json"]));
        (r["machine"]["simd"].clone(), r["peak"]["simd"].clone())
    };
    assert_eq!(simd(false), ("avx512".into(), "avx512".into()));
    assert_eq!(simd(true), ("avx2".into(), "avx2".into()));
    let numpy = |preload: bool| {
        let mut c = Command::new(common::root().join(".venv/bin/python"));
        if preload {
            c.env("LD_PRELOAD", &shim);
        }
        let features = "import numpy; f = numpy._core._multiarray_umath.__cpu_features__; \
                        print(f['AVX2'], f['AVX512F'])";
        let out = c.args(["-c", features]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(numpy(false), "True True");
    assert_eq!(numpy(true), "True False");
}
