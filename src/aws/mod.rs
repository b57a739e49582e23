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
use aws_sdk_s3::config::ProvideCredentials;
use thiserror::Error;

use crate::error::ErrorCode;
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

/// An SDK error as a person reads it: its message and each cause's, joined
/// by ": ", repeats dropped, on one line. (The SDK's `DisplayErrorContext`
/// ends with the whole `Debug` dump, which is for bug reports, not users.)
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = one_line(&err.to_string());
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// A multi-line message (the credentials chain lists one provider a line)
/// as one line: lines joined by "; ", or by a space after a colon.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// AWS settings that cannot work, found once at start-up instead of once
/// per request or file.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AwsSetupError {
    /// No region from the environment, the profile or the instance.
    #[error(
        "no AWS region is set: set AWS_REGION (for example AWS_REGION=us-east-1), or `region` \
         in the ~/.aws/config profile that AWS_PROFILE names"
    )]
    NoRegion,
    /// No provider in the SDK's chain gave credentials.
    #[error(
        "no AWS credentials were found ({0}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
         or AWS_PROFILE for a profile in ~/.aws (`aws configure`), or run on AWS with an IAM role"
    )]
    NoCredentials(String),
}

impl ErrorCode for AwsSetupError {
    fn code(&self) -> &'static str {
        match self {
            AwsSetupError::NoRegion => "aws_region_missing",
            AwsSetupError::NoCredentials(_) => "aws_credentials_missing",
        }
    }
}

/// Checks that `config` has a region and that its credentials resolve, so a
/// door that needs AWS says what to set, once, before its first call.
pub async fn check_setup(config: &SdkConfig) -> Result<(), AwsSetupError> {
    if config.region().is_none() {
        return Err(AwsSetupError::NoRegion);
    }
    let Some(provider) = config.credentials_provider() else {
        return Err(AwsSetupError::NoCredentials(
            "no credentials provider".into(),
        ));
    };
    let resolved = tokio::time::timeout(Duration::from_secs(15), provider.provide_credentials());
    match resolved.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(AwsSetupError::NoCredentials(error_chain(&e))),
        Err(_) => Err(AwsSetupError::NoCredentials(
            "resolving them took more than 15 s".into(),
        )),
    }
}

/// Whether this process runs on an EC2 instance (or a container on one),
/// where the instance metadata service can provide region and credentials.
pub fn on_ec2() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    [
        "/sys/devices/virtual/dmi/id/board_vendor",
        "/sys/devices/virtual/dmi/id/sys_vendor",
    ]
    .iter()
    .any(|p| read(p).trim() == "Amazon EC2")
        || read("/sys/hypervisor/uuid").starts_with("ec2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    #[error("dispatch failure")]
    struct Outer(#[source] Inner);

    #[derive(Debug, Error)]
    #[error("io error:\n  connection refused\n  twice")]
    struct Inner;

    /// Regression: SDK errors reached users with `DisplayErrorContext`, whose
    /// text ends in the whole `Debug` dump.
    #[test]
    fn sdk_errors_read_as_their_cause_chain_on_one_line() {
        assert_eq!(
            error_chain(&Outer(Inner)),
            "dispatch failure: io error: connection refused; twice"
        );
    }
}
