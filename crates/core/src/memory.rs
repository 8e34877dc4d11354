//! Giving memory back after a burst.
//!
//! A service that holds something the size of its fleet (the coordinator's per-instance
//! state, the status page's view of every target) builds it, or rebuilds it, in a burst of
//! small allocations that interleave with short-lived ones. glibc's allocator keeps the
//! pages those short-lived allocations freed (one heap per thread that allocated), so the
//! process's RSS stays at the burst's peak long after its live heap is back to what it holds
//! (the status page's 50,000 targets: about 200 MB of RSS for a few tens of MB alive; see
//! docs/benchmarks.md). [`release_freed`] hands those free pages back.

/// Returns the whole pages glibc's allocator holds free, in every arena, to the system
/// (`malloc_trim(0)`); nothing elsewhere (other allocators keep their own policy). Call it
/// after a burst, not per request: it walks every arena's free chunks (a few milliseconds
/// after a burst the size of a large fleet).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only returns free pages to the kernel; glibc
    // locks each arena while it walks it, so it is safe to call from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
