//! The size floor behind the README's "Cold start and size": the smallest
//! program that does this product's job with the crates it must use. A
//! Lambda handler that reads an image from S3 (`aws-sdk-s3`), decodes it
//! (`image`), runs it through an ONNX model (`tract-onnx`, `ndarray`) and
//! sends the top class to SQS (`aws-sdk-sqs`, `serde_json`), under
//! `lambda_runtime`; no HTTP API, no SQS event types, no CLI, no own
//! operators, no error handling beyond `?`.
//!
//! Built with the package's release profile, its stripped size is what any
//! program built on these crates starts from:
//! `cargo build --release --example size_floor`, then
//! `ls -l $CARGO_TARGET_DIR/release/examples/size_floor`.

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let path =
        std::env::var("MODEL_PATH").unwrap_or_else(|_| "models/mobilenetv2-1.0-fp32.onnx".into());
    let plan: Plan = tract_onnx::onnx()
        .model_for_path(path)?
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
        .into_optimized()?
        .into_runnable()?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::from_env().http_client(http).load().await;
    let (s3, sqs) = (
        aws_sdk_s3::Client::new(&config),
        aws_sdk_sqs::Client::new(&config),
    );
    let (plan, s3, sqs) = (&plan, &s3, &sqs);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let field = |name: &str| event.payload[name].as_str().unwrap_or_default().to_string();
        let object = s3
            .get_object()
            .bucket(field("bucket"))
            .key(field("key"))
            .send()
            .await?;
        let bytes = object.body.collect().await?.into_bytes();
        let rgb = image::load_from_memory(&bytes)?
            .resize_exact(224, 224, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let input = tract_ndarray::Array4::from_shape_fn((1, 3, 224, 224), |(_, c, y, x)| {
            rgb[(x as u32, y as u32)][c] as f32 / 255.0
        });
        let output = plan.run(tvec!(Tensor::from(input).into()))?;
        let scores = output[0].to_plain_array_view::<f32>()?;
        let top = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let body = json!({ "key": field("key"), "class": top }).to_string();
        sqs.send_message()
            .queue_url(field("queue"))
            .message_body(body)
            .send()
            .await?;
        Ok::<Value, Error>(json!({ "class": top }))
    }))
    .await
}
