//! The model from S3, once per container, against a real moto server:
//! loading, manifests, integrity checks, start-up failures, and the real
//! Lambda runtime loop proving one download for many invocations.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::runtime_api::{lambda_env, RuntimeApi};
use common::{aws_env, data, put_objects, s3_client, unique_bucket};
use onnx_lambda::config::Config;
use onnx_lambda::{Classifier, InputLimits};
use onnx_lambda::{LoadError, Location, ModelLoader};

fn bundled(file: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(file),
    )
    .unwrap()
}

fn model_bytes() -> Vec<u8> {
    bundled("mobilenetv2-1.0-fp32.onnx")
}

fn s3_config(bucket: &str, key: &str) -> Config {
    Config {
        model: Location::S3 {
            bucket: bucket.into(),
            key: key.into(),
            version_id: None,
        },
        ..Config::default()
    }
}

#[tokio::test]
async fn model_from_s3_predicts_exactly_like_the_bundled_copy() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("models");
    put_objects(
        &s3,
        &bucket,
        &[
            ("zoo/mobilenet.onnx", model_bytes()),
            ("zoo/mobilenet.json", bundled("mobilenetv2-1.0-fp32.json")),
            ("zoo/synset.txt", bundled("synset.txt")),
        ],
    )
    .await;
    let loader = ModelLoader::new(Some(s3));
    let loaded = loader
        .load(&s3_config(&bucket, "zoo/mobilenet.onnx"))
        .await
        .unwrap();
    assert!(loaded.manifest_used);
    assert_eq!(loader.model_fetches(), 1);
    let from_s3 = Classifier::new(loaded.model, InputLimits::default());

    let local = ModelLoader::new(None)
        .load(&Config::default())
        .await
        .unwrap();
    let from_disk = Classifier::new(local.model, InputLimits::default());
    assert_eq!(
        from_s3.model().info().sha256,
        from_disk.model().info().sha256
    );
    assert_eq!(
        from_s3.model().info().source,
        format!("s3://{bucket}/zoo/mobilenet.onnx")
    );

    for photo in ["chelsea.png", "grace_hopper.jpg"] {
        let bytes = std::fs::read(data(&format!("images/{photo}"))).unwrap();
        let a = from_s3.classify(&bytes, 5).unwrap();
        let b = from_disk.classify(&bytes, 5).unwrap();
        assert_eq!(a.predictions, b.predictions, "{photo}");
    }
}

#[tokio::test]
async fn a_manifest_next_to_the_model_is_used_and_defaults_apply_without_one() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("manifests");
    let labels: String = (0..1000).map(|i| format!("custom label {i}\n")).collect();
    let manifest = br#"{"name": "cat-detector", "version": "7", "labels": "my-labels.txt",
        "preprocessing": {"interpolation": "bicubic"}}"#;
    put_objects(
        &s3,
        &bucket,
        &[
            ("with/model.onnx", model_bytes()),
            ("with/model.json", manifest.to_vec()),
            ("with/my-labels.txt", labels.into_bytes()),
            ("without/model.onnx", model_bytes()),
        ],
    )
    .await;
    let loader = ModelLoader::new(Some(s3));
    let chelsea = std::fs::read(data("images/chelsea.png")).unwrap();

    let with = loader
        .load(&s3_config(&bucket, "with/model.onnx"))
        .await
        .unwrap();
    assert!(with.manifest_used);
    let info = with.model.info().clone();
    assert_eq!(
        (info.name.as_str(), info.version.as_str()),
        ("cat-detector", "7")
    );
    assert_eq!(
        with.model.manifest().preprocessing.interpolation,
        onnx_lambda::model::manifest::Interpolation::Bicubic
    );
    let top = Classifier::new(with.model, InputLimits::default())
        .classify(&chelsea, 1)
        .unwrap();
    assert_eq!(
        top.predictions[0].label,
        format!("custom label {}", top.predictions[0].index)
    );

    let without = loader
        .load(&s3_config(&bucket, "without/model.onnx"))
        .await
        .unwrap();
    assert!(!without.manifest_used);
    assert_eq!(without.model.info().name, "model");
    assert_eq!(
        without.model.manifest().input.height,
        224,
        "inferred from the graph"
    );
    let top = Classifier::new(without.model, InputLimits::default())
        .classify(&chelsea, 1)
        .unwrap();
    assert_eq!(
        top.predictions[0].label, "Egyptian cat",
        "ImageNet labels by default"
    );

    // An explicit MODEL_MANIFEST_URI must exist.
    let mut config = s3_config(&bucket, "without/model.onnx");
    config.manifest =
        Some(Location::parse("MODEL_MANIFEST_URI", &format!("s3://{bucket}/nope.json")).unwrap());
    let err = loader.load(&config).await.unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::NoSuchKey {
                var: "MODEL_MANIFEST_URI",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn oversized_and_non_onnx_objects_are_refused() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("bad");
    put_objects(
        &s3,
        &bucket,
        &[
            ("model.onnx", model_bytes()),
            (
                "error-page.onnx",
                b"<Error><Code>AccessDenied</Code></Error>".to_vec(),
            ),
        ],
    )
    .await;
    let loader = ModelLoader::new(Some(s3));
    let mut config = s3_config(&bucket, "model.onnx");
    config.model_max_bytes = 1_000_000;
    let err = loader.load(&config).await.unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::TooLarge {
                limit: 1_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("MODEL_MAX_BYTES"));

    let err = loader
        .load(&s3_config(&bucket, "error-page.onnx"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not a loadable ONNX model"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("s3://{bucket}/error-page.onnx")),
        "{err}"
    );
}

#[tokio::test]
async fn a_version_id_pins_the_model_object() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("versioned");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let put = |body: Vec<u8>| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            s3.put_object()
                .bucket(bucket)
                .key("m.onnx")
                .body(body.into())
                .send()
                .await
                .unwrap()
                .version_id
                .unwrap()
        }
    };
    let good = put(model_bytes()).await;
    put(b"a later upload that is not a model".to_vec()).await;
    let loader = ModelLoader::new(Some(s3.clone()));

    let latest = loader
        .load(&s3_config(&bucket, "m.onnx"))
        .await
        .unwrap_err();
    assert!(
        latest.to_string().contains("not a loadable ONNX model"),
        "{latest}"
    );
    let mut pinned = s3_config(&bucket, "m.onnx");
    pinned.model = Location::parse(
        "MODEL_URI",
        &format!("s3://{bucket}/m.onnx?versionId={good}"),
    )
    .unwrap();
    let loaded = loader.load(&pinned).await.unwrap();
    assert_eq!(
        loaded.model.info().sha256,
        "8cdd0539566d8c48e81e8e8f5bdec67b53da39881abb4d56ce1a7e66fd10ea02"
    );
}

/// Runs the binary's `predict` with `env`, returning (success, stderr).
fn predict_with(env: &[(&str, String)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"));
    cmd.arg("predict").arg(data("images/china.jpg"));
    for (k, v) in aws_env() {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_model_settings_fail_start_up_with_a_clear_message() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("startup");
    put_objects(&s3, &bucket, &[("m.onnx", model_bytes())]).await;
    let uri = format!("s3://{bucket}/m.onnx");

    let (ok, _) = predict_with(&[("MODEL_URI", uri.clone())]);
    assert!(
        ok,
        "the good configuration must work, or the failures below prove nothing"
    );

    let wrong = "0".repeat(64);
    let (ok, err) = predict_with(&[("MODEL_URI", uri.clone()), ("MODEL_SHA256", wrong.clone())]);
    assert!(!ok);
    assert!(
        err.contains("MODEL_SHA256") && err.contains(&wrong),
        "{err}"
    );
    assert!(
        err.contains("8cdd0539566d8c48e81e8e8f5bdec67b53da39881abb4d56ce1a7e66fd10ea02"),
        "actual digest: {err}"
    );

    let (ok, err) = predict_with(&[("MODEL_URI", format!("s3://{bucket}/missing.onnx"))]);
    assert!(!ok);
    assert!(
        err.contains("does not exist") && err.contains("missing.onnx") && err.contains("MODEL_URI"),
        "{err}"
    );

    let (ok, err) = predict_with(&[("MODEL_URI", "s3://no-such-bucket-here/m.onnx".into())]);
    assert!(!ok);
    assert!(
        err.contains("bucket") && err.contains("no-such-bucket-here"),
        "{err}"
    );
    // The message could echo the URI for any failure: check the variant.
    let missing = s3_config("no-such-bucket-here", "m.onnx");
    match ModelLoader::new(Some(s3.clone())).load(&missing).await {
        Err(LoadError::NoSuchBucket { bucket, var, .. }) => {
            assert_eq!((bucket.as_str(), var), ("no-such-bucket-here", "MODEL_URI"));
        }
        other => panic!("want NoSuchBucket, got {other:?}"),
    }

    let (ok, err) = predict_with(&[("MODEL_URI", "s3://bucket".into())]);
    assert!(!ok);
    assert!(
        err.contains("MODEL_URI") && err.contains("expected"),
        "{err}"
    );

    let (ok, err) = predict_with(&[("TOP_K", "lots".into())]);
    assert!(!ok);
    assert!(err.contains("TOP_K=\"lots\""), "{err}");
}

/// The project's own Runtime API emulator, because `cargo lambda watch`
/// cannot show what a function posts to `/runtime/init/error` (the happy
/// path, one download for many invocations, is `tests/lambda/lambda_watch.rs`).
#[tokio::test]
async fn a_failed_init_is_reported_to_the_runtime_api() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("init-error");
    put_objects(&s3, &bucket, &[("m.onnx", model_bytes())]).await;
    let api = RuntimeApi::start();
    let wrong = "0".repeat(64);
    let mut child = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
        .envs(aws_env())
        .envs(lambda_env(&api))
        .env("MODEL_URI", format!("s3://{bucket}/m.onnx"))
        .env("MODEL_SHA256", &wrong)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    api.invoke(serde_json::json!({"image": "unused"}));
    let error = api
        .wait_for(1, Duration::from_secs(60))
        .expect_err("the init phase must fail");
    assert_eq!(error["errorType"], "Runtime.InitError", "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("MODEL_SHA256") && message.contains(&wrong),
        "{message}"
    );
    assert!(
        message.contains("8cdd0539566d8c48e81e8e8f5bdec67b53da39881abb4d56ce1a7e66fd10ea02"),
        "{message}"
    );
    assert!(
        !child.wait().unwrap().success(),
        "the process exits after reporting"
    );
}

#[tokio::test]
async fn the_shared_app_serves_concurrent_invocations_without_reloading() {
    let s3 = s3_client().await;
    let bucket = unique_bucket("shared");
    put_objects(&s3, &bucket, &[("m.onnx", model_bytes())]).await;
    let loader = ModelLoader::new(Some(s3.clone()));
    let app = Arc::new(
        onnx_lambda::App::init(s3_config(&bucket, "m.onnx"), &loader, Some(s3))
            .await
            .unwrap(),
    );
    let sha = app.model_info().sha256.clone();
    let image = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(data("images/chelsea.png")).unwrap());
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            let event = serde_json::json!({"image": image});
            tokio::spawn(async move { common::invoke(app, event, &format!("r{i}")).await })
        })
        .collect();
    for t in tasks {
        let body = t.await.unwrap();
        assert_eq!(body["predictions"][0]["index"], 285, "{body}");
        // Every answer comes from the one model loaded at init.
        assert_eq!(body["model"]["sha256"], sha.as_str(), "{body}");
    }
    // The documented example event, and an event of no known kind.
    let example: serde_json::Value = common::event("direct-invoke.json");
    let body = common::invoke(app.clone(), example, "example").await;
    assert_eq!(body["predictions"].as_array().unwrap().len(), 3, "{body}");
    assert!(
        [281, 282, 285].contains(&body["predictions"][0]["index"].as_u64().unwrap()),
        "{body}"
    );
    let body = common::invoke(app.clone(), serde_json::json!({"Records": "?"}), "odd").await;
    assert_eq!(body["error"]["code"], "unsupported_event", "{body}");
    // Invocations cannot reach the loader at all (the App holds no loader);
    // the real runtime loop above proves one download per process.
}
