//! Integration tests that start no server: the library on real data, the
//! binary as a CLI, the repository's own rules (layering, docs) and the
//! deployment template. One test binary per kind of test environment keeps
//! the links of tract and the AWS SDK to four.

#[path = "../common/mod.rs"]
mod common;

mod architecture;
mod cli;
mod docs;
mod pipeline;
mod template;
mod zoo;
