//! Giving freed memory back to the operating system when a server goes
//! idle. glibc keeps what a burst of requests freed in its arenas, so RSS
//! stays at the burst's peak long after it; trimming at idle returns it
//! without making every allocation pay for an `mmap` (measured: a fixed
//! 1 MiB mmap threshold kept RSS flat but cost 25% of the throughput).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Trim at most this often, in milliseconds.
const MIN_INTERVAL_MS: u64 = 1_000;

/// Returns free heap memory to the OS (glibc `malloc_trim`), at most once
/// a second, on the blocking pool: a trim walks the heap and holds its
/// locks for milliseconds, which an async worker thread must not. A no-op
/// elsewhere. Call from a runtime when no work is in flight.
pub fn release_when_idle() {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) < MIN_INTERVAL_MS
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(release_now);
}

/// Returns free heap memory to the OS now, on this thread. For the end of
/// the model load: its copies of the weights were freed into the loading
/// thread's arena, which the threads that run inference do not allocate
/// from, so without this that arena's free pages stay resident for the
/// life of the process (peak RSS of `bench --threads 1` on the sample
/// photos 64-73 -> 57-59 MiB, 3 alternating runs). A no-op elsewhere.
pub(crate) fn release_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands the whole pages inside `bytes` back to the kernel, so they stop
/// counting in this process's RSS. For the model load: each part of a
/// mapped model file is read once (decoded, hashed), and keeping the
/// pages mapped afterwards put the file's 14 MB on top of the protobuf's
/// copy at the load's peak. A no-op off Linux.
///
/// # Safety
/// `bytes` must lie in a private, read-only file mapping: its pages then
/// read back from the file if touched again. Anonymous memory (the heap)
/// would read back as zeros.
pub(crate) unsafe fn release_file_pages(bytes: &[u8]) {
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let first = bytes.as_ptr() as usize;
        let start = first.next_multiple_of(page);
        let end = (first + bytes.len()) / page * page;
        if end > start {
            // SAFETY: whole pages inside `bytes`, which the caller promises
            // are file-backed; the call changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}
