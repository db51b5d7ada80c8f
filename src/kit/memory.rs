//! Memory the process no longer needs, given back to the system.
//!
//! Start-up allocates and frees a lot at once (migrations, descriptor pools, the OpenAPI document,
//! configuration). glibc's allocator keeps such freed pages in its heap for later use, so a
//! service would sit on them for its whole life, counted in its resident memory though nothing
//! holds them. Trimming once, when the service is ready, returns them: about 1.5 MB of
//! agent-service's idle RSS (BENCHMARKS.md).

/// Returns the allocator's free heap pages to the system (glibc's `malloc_trim`); elsewhere a
/// no-op. Cheap enough to call once after start-up; not meant for a hot path.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and releases the allocator's own free chunks; it is
    // thread-safe (it takes each arena's lock) and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn releasing_free_heap_keeps_live_allocations_intact() {
        let live = vec![7u8; 1 << 20];
        drop(vec![0u8; 8 << 20]);
        super::release_free_heap();
        assert!(live.iter().all(|&b| b == 7));
    }
}
