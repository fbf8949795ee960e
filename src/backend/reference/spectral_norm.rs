//! Spectral norm, reference loops: one power iteration, sigma = uᵀWv and the backward pass,
//! in f64. `kernels/spectral_norm.cu` is judged against it. Autograd: `src/ops/spectral_norm.rs`.

use super::{host, host_mut, scalar};
use crate::backend::*;
use anyhow::Result;

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

pub(crate) fn spectral_norm_sigma(
    w: &Storage,
    u: &mut Storage,
    v: &mut Storage,
    rows: usize,
    cols: usize,
    eps: f32,
    update: bool,
) -> Result<Storage> {
    let sigma = spectral_sigma(
        host(w)?,
        host_mut(u)?,
        host_mut(v)?,
        rows,
        cols,
        eps,
        update,
    );
    Ok(Storage::Cpu(vec![sigma]))
}

pub(crate) fn spectral_norm_backward(
    w: &Storage,
    g: &Storage,
    u: &Storage,
    v: &Storage,
    sigma: &Storage,
    cols: usize,
) -> Result<Storage> {
    Ok(Storage::Cpu(spectral_backward(
        host(w)?,
        host(g)?,
        host(u)?,
        host(v)?,
        scalar(sigma)?,
        cols,
    )))
}
