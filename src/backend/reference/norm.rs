//! Batch norm and spectral norm, reference loops. Sums are accumulated in f64: this is the reference
//! the CUDA kernels are judged against.

use crate::backend::ChannelDims;
use rayon::prelude::*;

/// Values of channel `c` across the batch, in order.
fn channel_values(x: &[f32], d: ChannelDims, c: usize) -> impl Iterator<Item = f32> + '_ {
    (0..d.n).flat_map(move |n| {
        let start = (n * d.c + c) * d.hw;
        x[start..start + d.hw].iter().copied()
    })
}

/// Per-channel (mean, biased variance), two-pass.
pub fn channel_moments(x: &[f32], d: ChannelDims) -> Vec<(f64, f64)> {
    let m = (d.n * d.hw) as f64;
    (0..d.c)
        .into_par_iter()
        .map(|c| {
            let mean = channel_values(x, d, c).map(f64::from).sum::<f64>() / m;
            let var = channel_values(x, d, c)
                .map(|v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / m;
            (mean, var)
        })
        .collect()
}

/// `y = (x - mean[c]) * scale[c] + shift[c]`.
pub fn normalize(
    x: &[f32],
    d: ChannelDims,
    mean: &[f32],
    scale: &[f32],
    shift: &[f32],
) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(d.hw.max(1))
        .zip(x.par_chunks(d.hw.max(1)))
        .enumerate()
        .for_each(|(row, (yr, xr))| {
            let c = row % d.c;
            for (yv, &xv) in yr.iter_mut().zip(xr) {
                *yv = (xv - mean[c]) * scale[c] + shift[c];
            }
        });
    y
}

/// (dx, dgamma, dbeta) of training-mode batch norm.
pub fn backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    d: ChannelDims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (d.n * d.hw) as f64;
    // Per channel: sum(dy) and sum(dy * xhat).
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (mu, is) = (f64::from(mean[c]), f64::from(invstd[c]));
            channel_values(dy, d, c).zip(channel_values(x, d, c)).fold(
                (0.0, 0.0),
                |(s, sx), (g, v)| {
                    (
                        s + f64::from(g),
                        sx + f64::from(g) * (f64::from(v) - mu) * is,
                    )
                },
            )
        })
        .collect();
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(d.hw.max(1))
        .enumerate()
        .for_each(|(row, dxr)| {
            let c = row % d.c;
            let (sum_dy, sum_dy_xhat) = sums[c];
            let (mu, is, ga) = (
                f64::from(mean[c]),
                f64::from(invstd[c]),
                f64::from(gamma[c]),
            );
            let base = row * d.hw;
            for (j, v) in dxr.iter_mut().enumerate() {
                let xhat = (f64::from(x[base + j]) - mu) * is;
                let g = f64::from(dy[base + j]);
                *v = (ga * is / m * (m * g - sum_dy - xhat * sum_dy_xhat)) as f32;
            }
        });
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}

/// `W·x` for W `[rows, cols]`, in f64.
fn mat_vec(w: &[f32], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            w[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(&a, &b)| f64::from(a) * b)
                .sum()
        })
        .collect()
}

/// `Wᵀ·x` for W `[rows, cols]`, in f64.
fn mat_t_vec(w: &[f32], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; cols];
    for r in 0..rows {
        for (o, &a) in out.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
            *o += f64::from(a) * x[r];
        }
    }
    out
}

/// PyTorch's `normalize(v, dim=0, eps)`: v / max(|v|, eps).
fn normalized(v: Vec<f64>, eps: f32) -> Vec<f64> {
    let norm = v
        .iter()
        .map(|a| a * a)
        .sum::<f64>()
        .sqrt()
        .max(f64::from(eps));
    v.into_iter().map(|a| a / norm).collect()
}

/// One power iteration (when `update`) then sigma = uᵀWv.
pub fn spectral_sigma(
    w: &[f32],
    u: &mut [f32],
    v: &mut [f32],
    rows: usize,
    cols: usize,
    eps: f32,
    update: bool,
) -> f32 {
    if update {
        let u64_: Vec<f64> = u.iter().map(|&a| f64::from(a)).collect();
        let new_v = normalized(mat_t_vec(w, rows, cols, &u64_), eps);
        let new_u = normalized(mat_vec(w, rows, cols, &new_v), eps);
        for (d, s) in v.iter_mut().zip(&new_v) {
            *d = *s as f32;
        }
        for (d, s) in u.iter_mut().zip(&new_u) {
            *d = *s as f32;
        }
    }
    let v64: Vec<f64> = v.iter().map(|&a| f64::from(a)).collect();
    let wv = mat_vec(w, rows, cols, &v64);
    u.iter()
        .zip(&wv)
        .map(|(&a, b)| f64::from(a) * b)
        .sum::<f64>() as f32
}

/// `dW = g/sigma - (sum(g*W)/sigma^2) u vᵀ`.
pub fn spectral_backward(
    w: &[f32],
    g: &[f32],
    u: &[f32],
    v: &[f32],
    sigma: f32,
    cols: usize,
) -> Vec<f32> {
    let s = f64::from(sigma);
    let gw: f64 = g
        .iter()
        .zip(w)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    let coef = gw / (s * s);
    g.iter()
        .enumerate()
        .map(|(i, &gi)| {
            let (r, c) = (i / cols, i % cols);
            (f64::from(gi) / s - coef * f64::from(u[r]) * f64::from(v[c])) as f32
        })
        .collect()
}
