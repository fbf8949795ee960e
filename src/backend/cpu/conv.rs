//! Fast convolution on the CPU: im2col over a chunk of images at once, so each layer is one or
//! a few large GEMMs (packing amortised over the chunk, threads busy), and the same for
//! backward-data (one GEMM, then col2im) and backward-filter (GEMMs accumulating into the
//! weight gradient). Chunk sizes depend only on the geometry, never on the thread count, and
//! the GEMM splits its work over the output (never over the summed dimension), so results are
//! bit-identical whatever the number of threads. Scratch buffers are kept per thread and
//! reused from one call to the next. The plain definition it is tested against lives in
//! `crate::backend::reference`.

use super::gemm::gemm;
use crate::backend::ConvGeom;
use rayon::prelude::*;
use std::cell::RefCell;

/// Most floats of one chunk's column matrix (4 MiB): large enough for big GEMMs, small enough
/// to keep peak memory (and cache misses) down.
const COL_BUDGET: usize = 1 << 20;

thread_local! {
    /// Column matrix and channel-major output/gradient of the current chunk.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with two scratch buffers of the given lengths (contents unspecified).
fn with_scratch<R>(len_a: usize, len_b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        // Re-entered (a conv inside a rayon task stolen by this thread): use fresh buffers.
        let Ok(mut s) = s.try_borrow_mut() else {
            return f(&mut vec![0.0; len_a], &mut vec![0.0; len_b]);
        };
        let (a, b) = &mut *s;
        if a.len() < len_a {
            a.resize(len_a, 0.0);
        }
        if b.len() < len_b {
            b.resize(len_b, 0.0);
        }
        f(&mut a[..len_a], &mut b[..len_b])
    })
}

/// Pixels per image of the output, rows of the column matrix, images per chunk.
fn sizes(g: &ConvGeom) -> (usize, usize, usize) {
    let l = g.oh * g.ow;
    let k = g.c_in * g.kh * g.kw;
    let per_image = (k * l).max(1);
    (l, k, (COL_BUDGET / per_image).clamp(1, g.n.max(1)))
}

/// Floats of work per rayon task in the copy loops below: fewer, larger tasks than one per row
/// (small layers spent more on scheduling than on copying). Each output element is written by
/// one task in a fixed order, so the split never changes a result.
const TASK_FLOATS: usize = 1 << 15;

/// Items of `per_item` floats each that make one task.
fn items_per_task(per_item: usize) -> usize {
    TASK_FLOATS.div_ceil(per_item.max(1))
}

thread_local! {
    /// Zero-padded input planes of the current chunk (see `im2col`).
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Side lengths of a plane with its zero padding.
fn padded_size(g: &ConvGeom) -> (usize, usize) {
    (g.h + 2 * g.pad, g.w + 2 * g.pad)
}

/// Input row `ky` of output row `oy`'s windows, in a padded plane of row width `wp`, starting at
/// tap `kx`: output pixel `ox` reads element `ox·stride` of it, with no bounds to test.
fn window_row(g: &ConvGeom, wp: usize, oy: usize, ky: usize, kx: usize) -> usize {
    (oy * g.stride + ky) * wp + kx
}

/// Length of a window row's span: the last output pixel reads its element `(ow − 1)·stride`.
fn window_span(g: &ConvGeom) -> usize {
    (g.ow.max(1) - 1) * g.stride + 1
}

/// `planes` planes of `h×w` each, copied into `out` with `pad` zeros on every side.
fn pad_planes(x: &[f32], h: usize, w: usize, pad: usize, out: &mut [f32]) {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    out.par_chunks_mut(hp * wp)
        .zip(x.par_chunks(h * w))
        .with_min_len(items_per_task(hp * wp))
        .for_each(|(o, x)| {
            o[..pad * wp].fill(0.0);
            o[(pad + h) * wp..].fill(0.0);
            for (orow, xrow) in o[pad * wp..(pad + h) * wp]
                .chunks_exact_mut(wp)
                .zip(x.chunks_exact(w))
            {
                orow[..pad].fill(0.0);
                orow[pad..pad + w].copy_from_slice(xrow);
                orow[pad + w..].fill(0.0);
            }
        });
}

/// `col[(ci, ky, kx), (b, oy, ox)]` for the `nb` images in `x`. The input is first copied into
/// zero-padded planes, so each output row of a column row is a plain copy (stride 1) or strided
/// gather of one input row, with no bounds to test (the small planes of a GAN made per-pixel
/// bounds work dominate).
fn im2col(x: &[f32], g: &ConvGeom, nb: usize, col: &mut [f32]) {
    let (hp, wp) = padded_size(g);
    let (l, span) = (g.oh * g.ow, window_span(g));
    let run = |xp: &[f32], col: &mut [f32]| {
        col.par_chunks_mut(nb * l)
            .enumerate()
            .with_min_len(items_per_task(nb * l))
            .for_each(|(row, out)| {
                let kx = row % g.kw;
                let ky = (row / g.kw) % g.kh;
                let ci = row / (g.kw * g.kh);
                for (b, out) in out.chunks_exact_mut(l).enumerate() {
                    let plane = &xp[(b * g.c_in + ci) * hp * wp..][..hp * wp];
                    for (oy, out) in out.chunks_exact_mut(g.ow).enumerate() {
                        let src = &plane[window_row(g, wp, oy, ky, kx)..][..span];
                        if g.stride == 1 {
                            out.copy_from_slice(src);
                        } else {
                            for (o, &v) in out.iter_mut().zip(src.iter().step_by(g.stride)) {
                                *o = v;
                            }
                        }
                    }
                }
            });
    };
    if g.pad == 0 {
        return run(x, col);
    }
    let len = nb * g.c_in * hp * wp;
    let padded = |xp: &mut [f32], col: &mut [f32]| {
        pad_planes(x, g.h, g.w, g.pad, xp);
        run(xp, col);
    };
    PADDED.with(|p| match p.try_borrow_mut() {
        Ok(mut xp) => {
            if xp.len() < len {
                xp.resize(len, 0.0);
            }
            padded(&mut xp[..len], col);
        }
        // Re-entered (a conv inside a rayon task stolen by this thread): a fresh buffer.
        Err(_) => padded(&mut vec![0.0; len], col),
    });
}

/// Adjoint of `im2col`: `dx` (the chunk's `nb` images, overwritten) from the columns. One
/// channel plane per item, accumulated in a zero-padded plane row by row (taps summed in a
/// fixed order: ky, kx), then cropped into `dx`.
fn col2im(col: &[f32], g: &ConvGeom, nb: usize, dx: &mut [f32]) {
    let (hp, wp) = padded_size(g);
    let (l, span) = (g.oh * g.ow, window_span(g));
    let plane = g.h * g.w;
    dx.par_chunks_mut(plane.max(1))
        .enumerate()
        .with_min_len(items_per_task(g.kh * g.kw * l))
        .for_each_init(
            || vec![0.0; hp * wp],
            |acc, (p, xc)| {
                let (b, ci) = (p / g.c_in, p % g.c_in);
                acc.fill(0.0);
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = (ci * g.kh + ky) * g.kw + kx;
                        let src = &col[row * nb * l + b * l..][..l];
                        for (oy, src) in src.chunks_exact(g.ow).enumerate() {
                            let dst = &mut acc[window_row(g, wp, oy, ky, kx)..][..span];
                            for (d, &v) in dst.iter_mut().step_by(g.stride).zip(src) {
                                *d += v;
                            }
                        }
                    }
                }
                for (xrow, arow) in xc
                    .chunks_exact_mut(g.w)
                    .zip(acc[g.pad * wp..].chunks_exact(wp))
                {
                    xrow.copy_from_slice(&arow[g.pad..g.pad + g.w]);
                }
            },
        );
}

/// `[nb, c, l]` (images) → `[c, nb·l]` (channel-major).
fn to_channel_major(src: &[f32], c: usize, l: usize, nb: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(nb * l)
        .enumerate()
        .with_min_len(items_per_task(nb * l))
        .for_each(|(ch, row)| {
            for b in 0..nb {
                row[b * l..(b + 1) * l]
                    .copy_from_slice(&src[(b * c + ch) * l..(b * c + ch + 1) * l]);
            }
        });
}

/// `[c, nb·l]` → `[nb, c, l]`.
fn from_channel_major(src: &[f32], c: usize, l: usize, nb: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(c * l)
        .enumerate()
        .with_min_len(items_per_task(c * l))
        .for_each(|(b, img)| {
            for ch in 0..c {
                img[ch * l..(ch + 1) * l]
                    .copy_from_slice(&src[ch * nb * l + b * l..ch * nb * l + (b + 1) * l]);
            }
        });
}

pub fn forward(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (l, k, chunk) = sizes(g);
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * l);
    let mut y = vec![0.0; g.output_len()];
    if g.n == 0 {
        return y;
    }
    with_scratch(k * chunk * l, g.c_out * chunk * l, |col, yc| {
        for start in (0..g.n).step_by(chunk) {
            let nb = chunk.min(g.n - start);
            let (col, yc) = (&mut col[..k * nb * l], &mut yc[..g.c_out * nb * l]);
            im2col(&x[start * in_len..(start + nb) * in_len], g, nb, col);
            gemm(g.c_out, k, nb * l, w, false, col, false, 0.0, yc);
            from_channel_major(
                yc,
                g.c_out,
                l,
                nb,
                &mut y[start * out_len..(start + nb) * out_len],
            );
        }
    });
    y
}

pub fn backward_data(dy: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (l, k, chunk) = sizes(g);
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * l);
    let mut dx = vec![0.0; g.input_len()];
    if g.n == 0 {
        return dx;
    }
    with_scratch(k * chunk * l, g.c_out * chunk * l, |col, dyc| {
        for start in (0..g.n).step_by(chunk) {
            let nb = chunk.min(g.n - start);
            let (col, dyc) = (&mut col[..k * nb * l], &mut dyc[..g.c_out * nb * l]);
            to_channel_major(
                &dy[start * out_len..(start + nb) * out_len],
                g.c_out,
                l,
                nb,
                dyc,
            );
            gemm(k, g.c_out, nb * l, w, true, dyc, false, 0.0, col);
            col2im(col, g, nb, &mut dx[start * in_len..(start + nb) * in_len]);
        }
    });
    dx
}

pub fn backward_filter(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (l, k, chunk) = sizes(g);
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * l);
    let mut dw = vec![0.0; g.weight_len()];
    with_scratch(k * chunk * l, g.c_out * chunk * l, |col, dyc| {
        for start in (0..g.n).step_by(chunk) {
            let nb = chunk.min(g.n - start);
            let (col, dyc) = (&mut col[..k * nb * l], &mut dyc[..g.c_out * nb * l]);
            im2col(&x[start * in_len..(start + nb) * in_len], g, nb, col);
            to_channel_major(
                &dy[start * out_len..(start + nb) * out_len],
                g.c_out,
                l,
                nb,
                dyc,
            );
            let beta = if start == 0 { 0.0 } else { 1.0 };
            gemm(g.c_out, nb * l, k, dyc, false, col, true, beta, &mut dw);
        }
    });
    dw
}
