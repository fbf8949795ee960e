//! Convolution on the CPU: im2col/col2im around a GEMM (matrixmultiply's sgemm). Work is
//! split over images in a fixed way (never by thread count), so results are bit-identical on
//! every run and machine.

use crate::backend::ConvGeom;
use rayon::prelude::*;

/// Number of batch chunks for the filter gradient: fixed, so the summation order is too.
const FILTER_CHUNKS: usize = 8;

/// `c[m, n] = alpha·a[m, k]·b[k, n] + beta·c`, row-major; `a_t`/`b_t` read a or b transposed
/// (stored as `[k, m]` / `[n, k]`).
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
    // SAFETY: the strides above address exactly the asserted ranges of a, b and c.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Rows `(ci, ky, kx)`, columns `(oy, ox)` of one image.
fn im2col(x: &[f32], g: &ConvGeom, col: &mut [f32]) {
    let l = g.oh * g.ow;
    for ci in 0..g.c_in {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (ci * g.kh + ky) * g.kw + kx;
                let out = &mut col[row * l..(row + 1) * l];
                for oy in 0..g.oh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    for ox in 0..g.ow {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        out[oy * g.ow + ox] =
                            if iy >= 0 && (iy as usize) < g.h && ix >= 0 && (ix as usize) < g.w {
                                x[(ci * g.h + iy as usize) * g.w + ix as usize]
                            } else {
                                0.0
                            };
                    }
                }
            }
        }
    }
}

/// Adjoint of `im2col`: scatters-adds columns back into one image (`x` zeroed by caller).
fn col2im(col: &[f32], g: &ConvGeom, x: &mut [f32]) {
    let l = g.oh * g.ow;
    for ci in 0..g.c_in {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (ci * g.kh + ky) * g.kw + kx;
                let src = &col[row * l..(row + 1) * l];
                for oy in 0..g.oh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    for ox in 0..g.ow {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if ix >= 0 && (ix as usize) < g.w {
                            x[(ci * g.h + iy as usize) * g.w + ix as usize] += src[oy * g.ow + ox];
                        }
                    }
                }
            }
        }
    }
}

fn col_len(g: &ConvGeom) -> usize {
    g.c_in * g.kh * g.kw * g.oh * g.ow
}

pub fn forward(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    let k = g.c_in * g.kh * g.kw;
    let mut y = vec![0.0; g.output_len()];
    y.par_chunks_mut(out_len.max(1))
        .zip(x.par_chunks(in_len.max(1)))
        .for_each(|(yn, xn)| {
            let mut col = vec![0.0; col_len(g)];
            im2col(xn, g, &mut col);
            gemm(g.c_out, k, g.oh * g.ow, w, false, &col, false, 0.0, yn);
        });
    y
}

pub fn backward_data(dy: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    let k = g.c_in * g.kh * g.kw;
    let mut dx = vec![0.0; g.input_len()];
    dx.par_chunks_mut(in_len.max(1))
        .zip(dy.par_chunks(out_len.max(1)))
        .for_each(|(dxn, dyn_)| {
            let mut col = vec![0.0; col_len(g)];
            gemm(k, g.c_out, g.oh * g.ow, w, true, dyn_, false, 0.0, &mut col);
            col2im(&col, g, dxn);
        });
    dx
}

pub fn backward_filter(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    let k = g.c_in * g.kh * g.kw;
    let per_chunk = g.n.div_ceil(FILTER_CHUNKS).max(1);
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0.0; g.weight_len()];
            let mut col = vec![0.0; col_len(g)];
            for i in chunk * per_chunk..((chunk + 1) * per_chunk).min(g.n) {
                im2col(&x[i * in_len..(i + 1) * in_len], g, &mut col);
                let dyn_ = &dy[i * out_len..(i + 1) * out_len];
                gemm(
                    g.c_out,
                    g.oh * g.ow,
                    k,
                    dyn_,
                    false,
                    &col,
                    true,
                    1.0,
                    &mut dw,
                );
            }
            dw
        })
        .collect();
    let mut dw = vec![0.0; g.weight_len()];
    for p in partials {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    dw
}
