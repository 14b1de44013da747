//! Gives the heap memory a replaced config freed back to the system.
//! glibc's malloc keeps freed memory for reuse: a large config read once
//! raises its thresholds for returning memory (they adapt to the largest
//! block freed), the top of a thread's arena is never trimmed by
//! `malloc_trim`, and free pages inside an arena stay until trimmed. So
//! without this a proxy that once held a large config stays at that size
//! after a small one replaces it. The one module of the proxy with unsafe
//! code: calls of glibc's `mallopt` and `malloc_trim`, which take no
//! pointers and have no preconditions.
#![allow(unsafe_code)]

/// Fixes malloc's thresholds (at start, before other threads): blocks of
/// 256 KiB or more are mapped on their own and unmapped when freed, and an
/// arena gives back its free top once over 1 MiB. Without this glibc raises
/// both after the first large block is freed (up to 32 MiB and 64 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn return_memory_promptly() {
    use std::ffi::c_int;
    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    // SAFETY: mallopt takes two integers and changes malloc's parameters
    // under its own lock.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 256 << 10);
        mallopt(M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns the free pages inside every malloc arena to the system; true if
/// any memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it
    // works under malloc's own locks, on free chunks only.
    unsafe { malloc_trim(0) == 1 }
}

// Elsewhere (musl, other systems) malloc returns memory by itself.

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_memory_promptly() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}
