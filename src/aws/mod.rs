//! AWS SDK clients, built once at start-up and passed in, and the two
//! things done with them everywhere: one bounded S3 GET (`s3`) and SQS
//! batch calls (`sqs`).
//!
//! Region, credentials, endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`)
//! and retry settings come from the SDK's standard chain. Two choices are
//! ours: TLS is rustls on ring (no aws-lc C build), and with a custom
//! endpoint (moto, MinIO, LocalStack) S3 uses path-style addressing, since
//! such servers do not resolve `bucket.host` names.

pub(crate) mod s3;
pub(crate) mod sqs;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Attempts per SDK call (throttling, 5xx and timeouts are retried with
/// exponential backoff) unless `AWS_MAX_ATTEMPTS` says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The HTTPS client every SDK client uses: hyper + rustls on ring.
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Loads the shared SDK configuration from the environment. `timeout`
/// (`SDK_TIMEOUT_SECS`) bounds connecting (at most 3.1 s) and waiting for
/// the first byte of each attempt, so an unreachable or silent endpoint is
/// retried and then reported instead of hanging; S3 downloads also use it
/// as the longest pause between body chunks.
pub async fn sdk_config(timeout: Duration) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(timeout.min(Duration::from_millis(3100)))
        .read_timeout(timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .timeout_config(timeouts);
    if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
        loader =
            loader.retry_config(RetryConfig::standard().with_max_attempts(DEFAULT_MAX_ATTEMPTS));
    }
    loader.load().await
}

/// An S3 client; path-style when a custom endpoint is configured.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let custom_endpoint =
        config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(custom_endpoint)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// An SQS client.
pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}
