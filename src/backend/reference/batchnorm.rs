//! Batch norm, reference loops: per-channel moments (two-pass), normalisation and the
//! backward pass, accumulated in f64. `kernels/batchnorm.cu` is judged against it.
//! Autograd: `src/ops/batchnorm.rs`.

use super::{host, host_mut};
use crate::backend::*;
use anyhow::Result;
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

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_train(
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &mut Storage,
    running_var: &mut Storage,
    d: ChannelDims,
    momentum: f32,
    eps: f32,
) -> Result<BatchNormSaved> {
    d.check_batch_norm_train()?;
    let (x, gamma, beta) = (host(x)?, host(gamma)?, host(beta)?);
    let moments = channel_moments(x, d);
    let m = (d.n * d.hw) as f64;
    let mean: Vec<f32> = moments.iter().map(|p| p.0 as f32).collect();
    let invstd: Vec<f32> = moments
        .iter()
        .map(|p| (1.0 / (p.1 + f64::from(eps)).sqrt()) as f32)
        .collect();
    let scale: Vec<f32> = invstd.iter().zip(gamma).map(|(a, b)| a * b).collect();
    let y = normalize(x, d, &mean, &scale, beta);
    let mom = f64::from(momentum);
    for (r, p) in host_mut(running_mean)?.iter_mut().zip(&moments) {
        *r = ((1.0 - mom) * f64::from(*r) + mom * p.0) as f32;
    }
    for (r, p) in host_mut(running_var)?.iter_mut().zip(&moments) {
        let unbiased = p.1 * m / (m - 1.0);
        *r = ((1.0 - mom) * f64::from(*r) + mom * unbiased) as f32;
    }
    Ok(BatchNormSaved {
        y: Storage::Cpu(y),
        mean: Storage::Cpu(mean),
        invstd: Storage::Cpu(invstd),
    })
}

pub(super) fn batch_norm_eval(
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &Storage,
    running_var: &Storage,
    d: ChannelDims,
    eps: f32,
) -> Result<Storage> {
    let scale: Vec<f32> = host(running_var)?
        .iter()
        .zip(host(gamma)?)
        .map(|(&v, &g)| g / (v + eps).sqrt())
        .collect();
    Ok(Storage::Cpu(normalize(
        host(x)?,
        d,
        host(running_mean)?,
        &scale,
        host(beta)?,
    )))
}

pub(super) fn batch_norm_backward(
    x: &Storage,
    dy: &Storage,
    gamma: &Storage,
    mean: &Storage,
    invstd: &Storage,
    d: ChannelDims,
) -> Result<(Storage, Storage, Storage)> {
    let (dx, dg, db) = backward(
        host(x)?,
        host(dy)?,
        host(gamma)?,
        host(mean)?,
        host(invstd)?,
        d,
    );
    Ok((Storage::Cpu(dx), Storage::Cpu(dg), Storage::Cpu(db)))
}
