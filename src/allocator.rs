//! The global allocator: mimalloc, called the way its fast paths expect.
//!
//! Many small, short-lived allocations per request (headers, buffers, futures): mimalloc
//! spends far less time on them than glibc's malloc (measured in BENCHMARKS.md). The `mimalloc`
//! crate passes every allocation to `mi_malloc_aligned`, whose fast path takes only blocks of
//! at most 1 KiB; a larger one (a 4 KiB read buffer, a header map, Pingora's boxed request
//! future) went through its generic aligned path, about 20 times per request on each role.
//! `mi_malloc` already aligns every block to 16 bytes, which is all nearly every Rust type asks
//! for; only a stricter alignment needs the aligned calls.
// The one place Herald implements an unsafe trait: `GlobalAlloc` is unsafe by definition.
#![allow(unsafe_code)]

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// What `mi_malloc` guarantees for any block of at least this size (`MI_MAX_ALIGN_SIZE`).
const MALLOC_ALIGN: usize = 16;

pub struct MiMalloc;

/// Whether `mi_malloc`'s own alignment serves a block of `size` bytes aligned to `align` (as
/// the `mimalloc` crate decided it before it sent everything to the aligned calls).
fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc with at least the layout's alignment (its own 16
// bytes, or the aligned calls past that) and goes back to it through `mi_free`, which takes
// blocks from any of these calls; `realloc` keeps the alignment the same way.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_has_its_alignment_and_keeps_its_bytes() {
        let allocator = MiMalloc;
        for align in [1, 2, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 15, 16, 17, 100, 1024, 1025, 4096, 14_000, 1 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed once, with its layout.
                unsafe {
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "{size} aligned to {align}");
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0));
                    allocator.dealloc(zeroed, layout);

                    let block = allocator.alloc(layout);
                    assert_eq!(block as usize % align, 0, "{size} aligned to {align}");
                    std::ptr::write_bytes(block, 0xa5, size);
                    let grown = allocator.realloc(block, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "{size} grown, aligned to {align}"
                    );
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|&b| b == 0xa5));
                    allocator.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                }
            }
        }
    }
}
