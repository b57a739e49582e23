//! Integration tests against local servers: `serve` in and out of process,
//! the HTTP door with real clients, metrics, the logs, and the bad-input
//! corpus through every door.

#[path = "../common/mod.rs"]
mod common;

mod corpus;
mod http;
mod memory;
mod metrics;
mod security;
mod serve;
