//! Keel's global allocator ([`Allocator`]), and giving memory back after a burst. mimalloc keeps each
//! thread's freed pages for reuse, and pages freed by another thread (a tensor decoded on a worker,
//! dropped after the drain thread logged it) wait until their owner next allocates. After an overload
//! ends, most of that memory would stay resident until the same threads see the same load again. So
//! every thread that serves requests collects its heap when it goes idle, at most once per [`EVERY`]:
//! the cost (microseconds for a small heap) is paid off the hot path, and an idle server's RSS returns
//! close to its idle size.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two collections on one thread.
const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called when this thread has nothing to do (a runtime worker parking, an instance waiting for work).
pub fn idle() {
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last.get().is_none_or(|t| now.duration_since(t) >= EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

/// Frees this thread's empty pages, takes back the frees other threads left for it, and returns the
/// unused memory to the OS.
#[allow(unsafe_code)]
pub fn collect() {
    // SAFETY: mi_collect only walks the calling thread's own heap and the allocator's shared segments,
    // under mimalloc's own synchronization; it takes no pointers from us. Keel's global allocator is
    // mimalloc (main.rs), so this is the heap every Rust allocation on this thread comes from.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Keel's global allocator (both binaries name it): mimalloc, asked for plain `mi_malloc` when the
/// alignment needs nothing more. The `mimalloc` crate's allocator passes every allocation to
/// `mi_malloc_aligned`, whose fast path only covers blocks up to 1 KiB; larger ones (request bodies,
/// decoded tensors, big futures: some 7 per HTTP request) went through its generic aligned path, which
/// looks up the size class and over-allocates by the alignment less one (about 230 instructions each,
/// the allocation included). With the aligned fast path's own checks gone too, a single-row HTTP request
/// took 50,668 instructions instead of 52,037 (callgrind, `benches/instructions.py`). Every mimalloc
/// block is at least word-aligned, as mimalloc's own aligned realloc assumes for such alignments; larger
/// alignments still go to the aligned calls.
pub struct Allocator;

/// The alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY (for the whole impl): each method forwards to the mimalloc call for the same job, which
// returns null or a block of at least `size` bytes aligned to `align` (a plain call only when
// `align <= WORD`, which every block satisfies), and frees or resizes only blocks mimalloc handed out.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see the impl.
        unsafe {
            if align <= WORD {
                libmimalloc_sys::mi_malloc(size).cast()
            } else {
                libmimalloc_sys::mi_malloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see the impl.
        unsafe {
            if align <= WORD {
                libmimalloc_sys::mi_zalloc(size).cast()
            } else {
                libmimalloc_sys::mi_zalloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: see the impl; `ptr` came from this allocator.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from this allocator. mimalloc's aligned realloc itself
        // takes the plain path for word alignment.
        unsafe {
            if layout.align() <= WORD {
                libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    /// Every size class from a word to a huge block, at every alignment from 1 to a page: the block is
    /// aligned, holds what was written, keeps it through growing and shrinking, and zeroed blocks are
    /// zero.
    #[test]
    #[allow(unsafe_code)]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let sizes = [
            1,
            3,
            8,
            15,
            16,
            24,
            100,
            1000,
            1024,
            1025,
            3000,
            70_000,
            5 << 20,
        ];
        for align in (0..13).map(|i| 1usize << i) {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: nonzero sizes; each block is written within its size, then freed once with
                // the layout it was made with (its new size after a realloc).
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    let check = |q: *mut u8, n: usize| {
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "size {size} align {align}");
                        assert!((0..n).all(|i| *q.add(i) == (i % 251) as u8));
                    };
                    // Grown, then shrunk below the original size.
                    let grown = size * 3 + 5;
                    let q = Allocator.realloc(p, layout, grown);
                    check(q, size);
                    let shrunk = size / 2 + 1;
                    let r = Allocator.realloc(
                        q,
                        Layout::from_size_align(grown, align).unwrap(),
                        shrunk,
                    );
                    check(r, shrunk);
                    Allocator.dealloc(r, Layout::from_size_align(shrunk, align).unwrap());
                    let z = Allocator.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
