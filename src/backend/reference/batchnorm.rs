//! Batch norm, reference loops: per-channel moments (two-pass), normalisation and the
//! backward pass, accumulated in f64; optionally fused with the ReLU / LeakyReLU that follows
//! (the activation's mask from the pre-activation recomputed in f32 as the forward computed it). `kernels/batchnorm.cu` is judged against it.
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

/// `y = act((x - mean[c]) * scale[c] + shift[c])` ([`batch_norm_affine`]).
pub fn normalize_act(
    x: &[f32],
    d: ChannelDims,
    mean: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: BatchNormAct,
) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(d.hw.max(1))
        .zip(x.par_chunks(d.hw.max(1)))
        .enumerate()
        .for_each(|(row, (yr, xr))| {
            let c = row % d.c;
            for (yv, &xv) in yr.iter_mut().zip(xr) {
                *yv = act.apply(batch_norm_affine(xv, mean[c], scale[c], shift[c]));
            }
        });
    y
}

/// `dy` through the activation of a fused batch norm at element `x` of channel `c` (the
/// pre-activation recomputed as the forward computed it). `beta` is only read when there is an
/// activation.
#[allow(clippy::too_many_arguments)]
pub fn act_grad(
    act: BatchNormAct,
    x: f32,
    dy: f32,
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
) -> f32 {
    if act == BatchNormAct::None {
        return dy;
    }
    act.grad(
        batch_norm_affine(x, mean[c], invstd[c] * gamma[c], beta[c]),
        dy,
    )
}

/// (dx, dgamma, dbeta) of batch norm followed by `act` (`BatchNormAct::None`: plain batch
/// norm; `beta` is then not read). `batch_stats`: training mode, the statistics depend on x.
#[allow(clippy::too_many_arguments)]
pub fn backward_act(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    d: ChannelDims,
    act: BatchNormAct,
    batch_stats: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (d.n * d.hw) as f64;
    let dz = |c: usize, v: f32, g: f32| act_grad(act, v, g, c, gamma, beta, mean, invstd);
    // Per channel: sum(dz) and sum(dz * xhat).
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (mu, is) = (f64::from(mean[c]), f64::from(invstd[c]));
            channel_values(dy, d, c).zip(channel_values(x, d, c)).fold(
                (0.0, 0.0),
                |(s, sx), (g, v)| {
                    let g = f64::from(dz(c, v, g));
                    (s + g, sx + g * (f64::from(v) - mu) * is)
                },
            )
        })
        .collect();
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(d.hw.max(1))
        .enumerate()
        .for_each(|(row, dxr)| {
            let c = row % d.c;
            let (sum_dz, sum_dz_xhat) = sums[c];
            let (mu, is, ga) = (
                f64::from(mean[c]),
                f64::from(invstd[c]),
                f64::from(gamma[c]),
            );
            let base = row * d.hw;
            for (j, v) in dxr.iter_mut().enumerate() {
                let g = f64::from(dz(c, x[base + j], dy[base + j]));
                *v = if batch_stats {
                    let xhat = (f64::from(x[base + j]) - mu) * is;
                    (ga * is / m * (m * g - sum_dz - xhat * sum_dz_xhat)) as f32
                } else {
                    (g * ga * is) as f32
                };
            }
        });
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_act_train(
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &mut Storage,
    running_var: &mut Storage,
    d: ChannelDims,
    momentum: f32,
    eps: f32,
    act: BatchNormAct,
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
    let y = normalize_act(x, d, &mean, &scale, beta, act);
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

pub(crate) fn batch_norm_eval(
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
    Ok(Storage::Cpu(normalize_act(
        host(x)?,
        d,
        host(running_mean)?,
        &scale,
        host(beta)?,
        BatchNormAct::None,
    )))
}

/// Eval mode followed by `act`, normalised by `1 / sqrt(running_var + eps)` (computed in f64).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act_eval(
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &Storage,
    running_var: &Storage,
    d: ChannelDims,
    eps: f32,
    act: BatchNormAct,
) -> Result<BatchNormSaved> {
    let invstd: Vec<f32> = host(running_var)?
        .iter()
        .map(|&v| (1.0 / (f64::from(v) + f64::from(eps)).sqrt()) as f32)
        .collect();
    let scale: Vec<f32> = invstd
        .iter()
        .zip(host(gamma)?)
        .map(|(a, b)| a * b)
        .collect();
    let mean = host(running_mean)?.clone();
    let y = normalize_act(host(x)?, d, &mean, &scale, host(beta)?, act);
    Ok(BatchNormSaved {
        y: Storage::Cpu(y),
        mean: Storage::Cpu(mean),
        invstd: Storage::Cpu(invstd),
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_act_backward(
    x: &Storage,
    dy: &Storage,
    gamma: &Storage,
    beta: &Storage,
    mean: &Storage,
    invstd: &Storage,
    d: ChannelDims,
    act: BatchNormAct,
    batch_stats: bool,
) -> Result<(Storage, Storage, Storage)> {
    let (dx, dg, db) = backward_act(
        host(x)?,
        host(dy)?,
        host(gamma)?,
        host(beta)?,
        host(mean)?,
        host(invstd)?,
        d,
        act,
        batch_stats,
    );
    Ok((Storage::Cpu(dx), Storage::Cpu(dg), Storage::Cpu(db)))
}
