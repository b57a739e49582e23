//! Integration tests against the AWS emulation (moto's S3 and SQS): the
//! job queue end to end, fault injection, a crash at volume, and the local
//! stack scripts.

#[path = "../common/mod.rs"]
mod common;

mod bulk;
mod crash;
mod faults;
mod local_stack;
mod memory;
mod sqs;
