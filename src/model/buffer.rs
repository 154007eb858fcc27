//! Output buffers of the forward's kernels, filled chunk by chunk in parallel without a
//! serial zeroing pass first.
//!
//! `vec![0f32; n]` clears all `n` values on the calling thread before any kernel runs: the
//! allocator recycles freed activations (`main.rs` sets `mallopt` so they stay on the
//! heap), so `calloc` has to `memset` them. At 8 MB per CTI activation that was 6% of the
//! forward's cycles, all of it on one core while the other waited. [`par_filled`] clears
//! each chunk on the worker that then fills it, while the chunk sits in that core's cache.
//! [`par_written`] skips even that clear for kernels that write every value themselves
//! (LayerNorm, residual adds, bias and residual preloads): the clear still cost about 4%
//! of the forward (measured beside it), because it is the clear, not the kernel, that
//! first pulls each line of fresh memory into the cache.
//!
//! No upstream counterpart: PyTorch allocates its outputs with `torch.empty`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// `n` values whose consecutive chunks of `chunk` values (the last may be shorter) are
/// written by `f(chunk_index, chunk)`, in parallel. Each chunk holds zeros when `f`
/// receives it, so `f` may accumulate into it or overwrite it.
pub fn par_filled(n: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    par_filled_with(n, chunk, || (), |_, i, c| f(i, c))
}

/// [`par_filled`] with per-worker scratch state: `init` runs once per piece of work rayon
/// splits off (a handful per call), not once per chunk, and `f` gets it mutably.
pub fn par_filled_with<S>(
    n: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |s, (i, c)| f(s, i, zeroed(c)));
    // SAFETY: the capacity is at least n, and `zeroed` initialised every one of the first
    // n values (the chunks above cover them all) before `f` ran; if `f` panicked, the
    // panic propagates before this line and the Vec drops with length 0.
    unsafe { v.set_len(n) };
    v
}

/// `n` values whose consecutive chunks of `chunk` values (the last may be shorter) are
/// written by `f(chunk_index, chunk)` in parallel, with no clear first.
///
/// # Safety
///
/// `f` must initialise every element of each chunk it is given (for example with
/// `MaybeUninit::write` in a loop over the whole chunk, or `write_copy_of_slice` of the
/// chunk's full length) before it returns. A chunk left partly unwritten would make the
/// returned Vec hold uninitialised values.
pub unsafe fn par_written(n: usize, chunk: usize, f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c));
    // SAFETY: the capacity is at least n, the chunks cover the first n values, and the
    // caller guarantees `f` initialised all of each; a panic in `f` propagates before
    // this line and the Vec drops with length 0.
    unsafe { v.set_len(n) };
    v
}

/// [`par_written`] for `k` outputs of `n` values each: chunk `i` of every output is
/// written by one call `f(i, chunks)`, `chunks[j]` being chunk `i` of output `j`.
///
/// # Safety
///
/// `f` must initialise every element of every chunk it is given before it returns.
pub unsafe fn par_written_many(
    k: usize,
    n: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [&mut [MaybeUninit<f32>]]) + Sync + Send,
) -> Vec<Vec<f32>> {
    let chunk = chunk.max(1);
    let mut outs: Vec<Vec<f32>> = (0..k).map(|_| Vec::with_capacity(n)).collect();
    // per chunk index: that chunk of each output, in output order
    let mut per_chunk: Vec<Vec<&mut [MaybeUninit<f32>]>> = (0..n.div_ceil(chunk)).map(|_| Vec::with_capacity(k)).collect();
    for o in outs.iter_mut() {
        for (i, c) in o.spare_capacity_mut()[..n].chunks_mut(chunk).enumerate() {
            per_chunk[i].push(c);
        }
    }
    per_chunk.into_par_iter().enumerate().for_each(|(i, mut cs)| f(i, &mut cs));
    for o in outs.iter_mut() {
        // SAFETY: the capacity is n, the chunks cover the first n values of every output,
        // and the caller guarantees `f` initialised all of each; a panic in `f`
        // propagates before this line and the Vecs drop with length 0.
        unsafe { o.set_len(n) };
    }
    outs
}

/// Write zeros into `c` and view it as initialised.
fn zeroed(c: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    c.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just initialised, and `MaybeUninit<f32>` has the size,
    // alignment and layout of `f32`.
    unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_zeroed_and_cover_everything() {
        let v = par_filled(10, 4, |i, c| {
            assert!(c.iter().all(|&x| x == 0.0));
            c.iter_mut().enumerate().for_each(|(j, x)| *x = (i * 4 + j) as f32);
        });
        assert_eq!(v, (0..10).map(|x| x as f32).collect::<Vec<_>>());
        assert!(par_filled(0, 4, |_, _| unreachable!("no chunk of an empty buffer")).is_empty());
    }

    #[test]
    fn written_chunks_cover_everything() {
        // SAFETY: the closure writes every element of each chunk it is given.
        let v = unsafe {
            par_written(10, 4, |i, c| {
                for (j, x) in c.iter_mut().enumerate() {
                    x.write((i * 4 + j) as f32);
                }
            })
        };
        assert_eq!(v, (0..10).map(|x| x as f32).collect::<Vec<_>>());
    }

    #[test]
    fn written_many_chunks_cover_every_output() {
        // SAFETY: the closure writes every element of each chunk of each output.
        let v = unsafe {
            par_written_many(3, 10, 4, |i, cs| {
                assert_eq!(cs.len(), 3);
                for (j, c) in cs.iter_mut().enumerate() {
                    for (t, x) in c.iter_mut().enumerate() {
                        x.write((100 * j + i * 4 + t) as f32);
                    }
                }
            })
        };
        for (j, o) in v.iter().enumerate() {
            assert_eq!(*o, (0..10).map(|x| (100 * j + x) as f32).collect::<Vec<_>>());
        }
        assert!(unsafe { par_written_many(2, 0, 4, |_, _| unreachable!("no chunk")) }.iter().all(|o| o.is_empty()));
    }
}
