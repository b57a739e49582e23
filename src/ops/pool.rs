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
//!
//! A batch ([`OperatorPool::map`]) runs one image per worker, each worker
//! taking the next image from a counter rather than from the pool's queue
//! (so no whole image is ever a queued job), with the operators still
//! splitting over the pool. While every worker has an image, each runs its
//! operators' pieces itself; a worker that finds no image left steals
//! pieces of the others' instead of idling until the slowest image ends.
//! Before, the batch ran on scoped threads outside the pool and the last
//! image of each batch ran on one core: the idle tail cost 5-8% of the
//! throughput of batches of 10 on two cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use std::ops::Range;

use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::tract_linalg::multithread::{
    multithread_tract_scope, par_chunks_mut, Executor,
};

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

    /// Maps `f` over `items` on every worker at once, once no other run is
    /// inside, and returns the results in order. `f` runs with the
    /// operators splitting over the pool: it must not call [`run`] or
    /// `map` itself (the turn is held).
    ///
    /// [`run`]: OperatorPool::run
    pub(crate) fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        if let [item] = items {
            return vec![self.run(|| f(item))];
        }
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
        let work = || {
            multithread_tract_scope(self.executor.clone(), || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            })
        };
        {
            let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
            match &self.executor {
                Executor::MultiThread(pool) => {
                    pool.broadcast(|_| work());
                }
                _ => work(),
            }
        }
        slots
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .map(|r| r.expect("every item was taken by a worker"))
            .collect()
    }
}

/// Splits `output` (planes of `plane` values, `channels` of them per image)
/// over tract's executor: whole panels of `panel` planes when the channels
/// come in panels, so no tile is computed twice, else single planes. `f`
/// gets the chunk's planes (counted across images) and its values.
pub(crate) fn par_planes(
    output: &mut [f32],
    (plane, channels, panel): (usize, usize, usize),
    cost: usize,
    f: impl Fn(Range<usize>, &mut [f32]) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    let unit = if channels.is_multiple_of(panel) {
        panel
    } else {
        1
    };
    par_chunks_mut(output, unit * plane, cost, |first, chunk| {
        f(first * unit..first * unit + chunk.len() / plane, chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;
    use tract_onnx::tract_core::tract_linalg::multithread::par_chunks_mut;

    #[test]
    fn map_keeps_order_and_spreads_items_over_the_workers() {
        let pool = OperatorPool::new(2);
        let items: Vec<usize> = (0..40).collect();
        let out = pool.map(&items, |&x| {
            std::thread::sleep(Duration::from_millis(2));
            (x * 2, std::thread::current().name().map(str::to_owned))
        });
        assert_eq!(
            out.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
            (0..40).map(|x| x * 2).collect::<Vec<_>>()
        );
        let names: HashSet<_> = out
            .into_iter()
            .map(|(_, n)| n.unwrap_or_default())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("onnx-lambda-op")),
            "{names:?}"
        );
    }

    /// The point of `map`: the last item's operator pieces are taken by the
    /// worker that has no item left, instead of all running on one thread.
    #[test]
    fn a_worker_without_an_item_helps_with_the_last_ones_operators() {
        let pool = OperatorPool::new(2);
        let seen = Mutex::new(Vec::new());
        let items = [0usize, 1];
        pool.map(&items, |&i| {
            if i == 0 {
                // One short item: its worker is free almost at once.
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
            let mut out = vec![0u8; 1 << 16];
            par_chunks_mut(&mut out, 1 << 10, 1 << 20, |_, _| {
                std::thread::sleep(Duration::from_millis(5));
                seen.lock().unwrap().push(std::thread::current().id());
                Ok(())
            })
            .unwrap();
        });
        let threads: HashSet<_> = seen.into_inner().unwrap().into_iter().collect();
        assert_eq!(threads.len(), 2, "every piece ran on one thread");
    }
}
