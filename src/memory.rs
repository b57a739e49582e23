//! Giving freed memory back to the operating system when a server goes
//! idle. glibc keeps what a burst of requests freed in its arenas, so RSS
//! stays at the burst's peak long after it; trimming at idle returns it
//! without making every allocation pay for an `mmap` (measured: a fixed
//! 1 MiB mmap threshold kept RSS flat but cost 25% of the throughput).
//! And for the model load: a mapped model's pages handed back once read,
//! and the heap it is about to fill faulted in on another core.

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
    if let Some(pages) = whole_pages(bytes.as_ptr() as usize, bytes.len()) {
        // SAFETY: whole pages inside `bytes`, which the caller promises are
        // file-backed; the call changes no contents.
        unsafe {
            libc::madvise(
                pages.start as *mut libc::c_void,
                pages.len(),
                libc::MADV_DONTNEED,
            )
        };
    }
}

/// The largest heap block worth faulting in ahead: glibc serves blocks of
/// 32 MiB and more with an `mmap` of their own (`tune_allocator` in
/// `main.rs`) and unmaps them when they are freed, pages and all.
const MOST_PREFAULTED: usize = 30 << 20;

/// Faults in, on another core, up to `bytes` of the heap this thread is
/// about to allocate: for the model load, whose fresh heap (tract's tensors
/// beside the protobuf's copy of the weights) cost a page fault per 4 KiB,
/// a third of a cold start's CPU time on the loading core while the other
/// core had nothing to do.
///
/// A block of `bytes` is allocated and freed at once, so it stays at the
/// top of this thread's arena (the trim threshold keeps it there), where
/// this thread's next allocations are carved from; a helper thread then
/// asks the kernel to map its pages (`MADV_POPULATE_WRITE`, Linux 5.14 and
/// later). Populating changes no byte, so it is harmless if this thread
/// has meanwhile reused the memory or the allocator has given it back. A
/// no-op on older kernels and off glibc Linux.
pub(crate) fn prefault_heap(bytes: usize) {
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let block: Vec<u8> = Vec::with_capacity(bytes.min(MOST_PREFAULTED));
        let pages = whole_pages(block.as_ptr() as usize, block.capacity());
        drop(block);
        if let Some(pages) = pages {
            // Detached: nothing waits for it, and a failure only means
            // the load faults its pages in itself, as before.
            let _ = std::thread::Builder::new()
                .name("prefault".into())
                .spawn(move || populate(pages));
        }
    }
}

/// Maps the pages of `pages` writable without writing them, a MiB at a
/// time from the top down: the loading thread fills the block from the
/// bottom up, so the two meet once instead of faulting the same pages.
/// False if the kernel refused (older than 5.14, or not mapped).
#[cfg(target_os = "linux")]
fn populate(pages: std::ops::Range<usize>) -> bool {
    const STEP: usize = 1 << 20;
    let mut top = pages.end;
    while top > pages.start {
        let bottom = top.saturating_sub(STEP).max(pages.start);
        // SAFETY: MADV_POPULATE_WRITE only faults pages in; it reads and
        // writes no byte of them, and fails on a range that is not mapped.
        let done = unsafe {
            libc::madvise(
                bottom as *mut libc::c_void,
                top - bottom,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if done != 0 {
            return false;
        }
        top = bottom;
    }
    true
}

/// The whole pages inside `len` bytes at address `at`.
#[cfg(target_os = "linux")]
fn whole_pages(at: usize, len: usize) -> Option<std::ops::Range<usize>> {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return None,
    };
    let start = at.next_multiple_of(page);
    let end = (at + len) / page * page;
    (end > start).then_some(start..end)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Pages of `range` the kernel has mapped (`mincore`).
    fn resident(range: &std::ops::Range<usize>) -> usize {
        let page = 4096;
        let mut vec = vec![0u8; range.len() / page];
        // SAFETY: `range` is a live mapping; `vec` has a byte per page.
        let r = unsafe {
            libc::mincore(
                range.start as *mut libc::c_void,
                range.len(),
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn populate_maps_every_page_and_changes_no_byte() {
        // Three MiB and five pages: the last step is a partial one.
        let len = (3 << 20) + 4096 * 5;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        // Small pages whatever the machine's THP setting, to count them.
        // SAFETY: advice on the mapping made above.
        assert_eq!(unsafe { libc::madvise(at, len, libc::MADV_NOHUGEPAGE) }, 0);
        let range = at as usize..at as usize + len;
        // SAFETY: the mapping is `len` bytes, read and written only here.
        let bytes = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
        bytes[4096 * 7 + 3] = 42;
        assert_eq!(resident(&range), 1, "only the written page is mapped");
        if !populate(range.clone()) {
            let errno = std::io::Error::last_os_error();
            // Kernels before 5.14 lack MADV_POPULATE_WRITE: nothing to test.
            assert_eq!(errno.raw_os_error(), Some(libc::EINVAL), "{errno}");
            eprintln!("MADV_POPULATE_WRITE not supported here: {errno}");
        } else {
            assert_eq!(resident(&range), len / 4096);
        }
        assert_eq!(bytes[4096 * 7 + 3], 42);
        assert_eq!(bytes.iter().map(|&b| usize::from(b)).sum::<usize>(), 42);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(at, len) };
    }

    #[test]
    fn populate_refuses_a_range_that_is_not_mapped() {
        // A reserved range with no access: mapped, but not writable.
        let len = 1 << 20;
        // SAFETY: a fresh inaccessible mapping, unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let range = at as usize..at as usize + len;
        assert!(!populate(range.clone()));
        assert_eq!(resident(&range), 0);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(at, len) };
    }

    #[test]
    fn whole_pages_stay_inside_the_bytes() {
        assert_eq!(whole_pages(4096, 8192), Some(4096..12288));
        assert_eq!(whole_pages(4097, 8192), Some(8192..12288));
        assert_eq!(whole_pages(4097, 4096), None);
        assert_eq!(whole_pages(0, 100), None);
    }
}
