//! Fast convolution on the CPU: im2col over a chunk of images at once, so each layer is one or
//! a few large GEMMs (packing amortised over the chunk, threads busy), and the same for
//! backward-data (one GEMM, then col2im) and backward-filter (GEMMs accumulating into the
//! weight gradient). Chunk sizes depend only on the geometry, never on the thread count, and
//! the GEMM splits its work over the output (never over the summed dimension), so results are
//! bit-identical whatever the number of threads. Scratch buffers are kept per thread and
//! reused from one call to the next. The plain definition it is tested against lives in
//! `crate::backend::reference`.

use crate::backend::ConvGeom;
use rayon::prelude::*;
use std::cell::RefCell;

/// Most floats of one chunk's column matrix (4 MiB): large enough for big GEMMs, small enough
/// to keep peak memory (and cache misses) down.
const COL_BUDGET: usize = 1 << 20;

/// `c[m, n] = a[m, k]·b[k, n] + beta·c`, row-major; `a_t`/`b_t` read a or b transposed
/// (stored as `[k, m]` / `[n, k]`). `beta` is 0 or 1. The `gemm` crate (the one candle uses),
/// threaded on the current rayon pool: it splits the output among threads and sums along `k`
/// in the same order whatever their number (tests/cpu_fast.rs checks 1, 2 and 3 threads).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    assert!(beta == 0.0 || beta == 1.0, "gemm: beta must be 0 or 1");
    let (rsa, csa) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        ::gemm::Parallelism::Rayon(threads)
    } else {
        ::gemm::Parallelism::None
    };
    // SAFETY: the strides above address exactly the asserted ranges of a, b and c, and c does
    // not alias a or b (a `&mut` borrow).
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta == 1.0,
            a.as_ptr(),
            csa,
            rsa,
            b.as_ptr(),
            csb,
            rsb,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

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

/// `col[(ci, ky, kx), (b, oy, ox)]` for the `nb` images in `x` (one row per task).
fn im2col(x: &[f32], g: &ConvGeom, nb: usize, col: &mut [f32]) {
    let l = g.oh * g.ow;
    let in_len = g.c_in * g.h * g.w;
    col.par_chunks_mut(nb * l)
        .enumerate()
        .for_each(|(row, out)| {
            let kx = row % g.kw;
            let ky = (row / g.kw) % g.kh;
            let ci = row / (g.kw * g.kh);
            for b in 0..nb {
                let xc = &x[b * in_len + ci * g.h * g.w..b * in_len + (ci + 1) * g.h * g.w];
                let out = &mut out[b * l..(b + 1) * l];
                for oy in 0..g.oh {
                    let dst = &mut out[oy * g.ow..(oy + 1) * g.ow];
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy as usize >= g.h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        *d = if ix >= 0 && (ix as usize) < g.w {
                            src[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        });
}

/// Adjoint of `im2col`: `dx` (the chunk's `nb` images, overwritten) from the columns; one
/// image per task, taps summed in a fixed order.
fn col2im(col: &[f32], g: &ConvGeom, nb: usize, dx: &mut [f32]) {
    let l = g.oh * g.ow;
    let in_len = g.c_in * g.h * g.w;
    dx.par_chunks_mut(in_len).enumerate().for_each(|(b, xb)| {
        xb.fill(0.0);
        for ci in 0..g.c_in {
            let xc = &mut xb[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = (ci * g.kh + ky) * g.kw + kx;
                    let src = &col[row * nb * l + b * l..row * nb * l + (b + 1) * l];
                    for oy in 0..g.oh {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy as usize >= g.h {
                            continue;
                        }
                        let dst = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                        for ox in 0..g.ow {
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            if ix >= 0 && (ix as usize) < g.w {
                                dst[ix as usize] += src[oy * g.ow + ox];
                            }
                        }
                    }
                }
            }
        }
    });
}

/// `[nb, c, l]` (images) → `[c, nb·l]` (channel-major), one channel per task.
fn to_channel_major(src: &[f32], c: usize, l: usize, nb: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(nb * l)
        .enumerate()
        .for_each(|(ch, row)| {
            for b in 0..nb {
                row[b * l..(b + 1) * l]
                    .copy_from_slice(&src[(b * c + ch) * l..(b * c + ch + 1) * l]);
            }
        });
}

/// `[c, nb·l]` → `[nb, c, l]`, one image per task.
fn from_channel_major(src: &[f32], c: usize, l: usize, nb: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(c * l).enumerate().for_each(|(b, img)| {
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
