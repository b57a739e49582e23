//! Integration tests of the Lambda door through the real `lambda_runtime`
//! loop: the Runtime API emulators (ours and `cargo lambda watch`), the
//! model from S3 once per container, and the template's IAM roles enforced.

#[path = "../common/mod.rs"]
mod common;

mod iam;
mod lambda_watch;
mod s3_model;
