//! The threads one image's operators split over.
//!
//! A run goes whole onto a thread of the pool, so that each operator's
//! split starts there instead of waking the pool and putting the caller to
//! sleep twice per operator (inference on two cores went from 5.0-5.2 to
//! 3.4-3.5 ms, `bench --batch-size 1`, AMD EPYC).
//!
//! Runs are admitted one at a time. A pool thread waiting inside an
//! operator's split (rayon's `join`) executes whatever else is queued on
//! the pool; were that another image's whole run, it would start it while
//! its own operator still holds its per-thread scratch (tract's `OptMatMul`
//! keeps one in a `RefCell`): "RefCell already borrowed", and two images
//! interleaved on one stack. With one run in the pool, the only queued jobs
//! are the current operator's own pieces. Concurrent callers wait their
//! turn; the pool is busy either way, so the total time is the same and
//! each image finishes sooner.

use std::sync::Mutex;

use tract_onnx::tract_core::tract_linalg::multithread::{multithread_tract_scope, Executor};

/// A rayon pool for tract's operators and the project's own, with a turn
/// that lets one run in at a time.
pub struct OperatorPool {
    executor: Executor,
    turn: Mutex<()>,
}

impl std::fmt::Debug for OperatorPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl OperatorPool {
    /// `threads` workers, named `onnx-lambda-op-N` (at least 1).
    pub fn new(threads: usize) -> OperatorPool {
        OperatorPool {
            executor: Executor::multithread_with_name(threads.max(1), "onnx-lambda-op"),
            turn: Mutex::new(()),
        }
    }

    /// How many workers the pool has.
    pub fn threads(&self) -> usize {
        match &self.executor {
            Executor::MultiThread(pool) => pool.current_num_threads(),
            // A single-thread or rayon-global executor (wasm only).
            _ => 1,
        }
    }

    /// Runs `f` on a thread of the pool with every operator splitting over
    /// it, once no other run is inside. Must not be called from the pool's
    /// own threads (nothing in the crate does: the callers are request and
    /// batch threads).
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        // A poisoned turn only means another run panicked; the pool is fine.
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let scoped = || multithread_tract_scope(self.executor.clone(), f);
        match &self.executor {
            Executor::MultiThread(pool) => pool.install(scoped),
            _ => scoped(),
        }
    }
}
