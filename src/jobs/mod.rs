//! The jobs protocol: asynchronous batch predictions over SQS.
//!
//! Delivery is at least once, so every job ends in exactly one of two ways:
//! a result on the results queue (`ok`, or `error` for a permanent problem
//! such as invalid JSON, a missing object or a corrupt image), or its message
//! is reported failed and SQS delivers it again, until the redrive policy
//! moves it to the dead-letter queue. A message is only acknowledged once all
//! of its results are written. Results carry the `job_id` (falling back to
//! the message id, or the object key for S3 events) so consumers deduplicate.
//!
//! `message` holds the job and result messages, `batch` the processing
//! both SQS doors share, `events` the Lambda SQS event, `batch_operations`
//! S3 Batch Operations' invocations (one job per task, through the same
//! processing), [`worker`] the long-polling loop, and [`submit`] (local
//! files), [`bucket`] (objects already in S3) and [`collect`] the bulk tools.

pub(crate) mod batch;
pub(crate) mod batch_operations;
pub mod bucket;
pub mod collect;
pub(crate) mod events;
pub(crate) mod message;
pub mod submit;
pub mod worker;

pub use batch::DEADLINE_MARGIN;
pub use message::{JobError, JobResult};
