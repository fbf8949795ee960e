//! Training-mode batch norm on the fast CPU backend. Same statistics as the reference
//! (`reference::batchnorm`: two passes, f64 sums), but each contiguous `[hw]` row is summed over
//! eight interleaved f64 partial sums, so the loops vectorise instead of waiting on one long
//! chain of dependent adds; the input gradient is applied in f32 from per-channel coefficients
//! computed in f64. Every channel is summed by one task in a fixed order, so results do not
//! depend on the thread count. With a fused activation the mask comes from the pre-activation
//! recomputed exactly as the forward computed it (`reference::batchnorm::act_grad`).

use crate::backend::reference::batchnorm::{act_grad, normalize_act};
use crate::backend::{BatchNormAct, ChannelDims};
use rayon::prelude::*;

/// Partial sums per row.
const LANES: usize = 8;
/// Floats of work per rayon task (small layers would otherwise spend more on scheduling).
const TASK_FLOATS: usize = 1 << 15;

/// `sum f(a[i], b[i])` in f64 over `LANES` interleaved partial sums, added in a fixed order.
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += f(xa[i], xb[i]);
        }
    }
    for (i, (&va, &vb)) in ra.iter().zip(rb).enumerate() {
        acc[i] += f(va, vb);
    }
    acc.iter().sum()
}

/// Rows `[hw]` of channel `c`, image by image.
fn rows(x: &[f32], d: ChannelDims, c: usize) -> impl Iterator<Item = &[f32]> {
    (0..d.n).map(move |n| &x[(n * d.c + c) * d.hw..(n * d.c + c + 1) * d.hw])
}

fn channels_per_task(d: ChannelDims) -> usize {
    TASK_FLOATS.div_ceil((d.n * d.hw).max(1))
}

/// Per-channel (mean, biased variance), two passes, as `reference::batchnorm::channel_moments`.
pub fn channel_moments(x: &[f32], d: ChannelDims) -> Vec<(f64, f64)> {
    let m = (d.n * d.hw) as f64;
    (0..d.c)
        .into_par_iter()
        .with_min_len(channels_per_task(d))
        .map(|c| {
            let mean = rows(x, d, c)
                .map(|r| lane_sum(r, r, |v, _| f64::from(v)))
                .sum::<f64>()
                / m;
            let var = rows(x, d, c)
                .map(|r| {
                    lane_sum(r, r, |v, _| {
                        let v = f64::from(v) - mean;
                        v * v
                    })
                })
                .sum::<f64>()
                / m;
            (mean, var)
        })
        .collect()
}

/// (dx, dgamma, dbeta) of batch norm followed by `act`, as `reference::batchnorm::backward_act`
/// (`beta` is only read when there is an activation).
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
    // Per channel: sum(dz), sum(dz * xhat), one row of dz at a time.
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .with_min_len(channels_per_task(d))
        .map(|c| {
            let (mu, is) = (f64::from(mean[c]), f64::from(invstd[c]));
            let mut dz_row = vec![0.0f32; d.hw];
            rows(dy, d, c)
                .zip(rows(x, d, c))
                .map(|(g, v)| {
                    for ((o, &gv), &xv) in dz_row.iter_mut().zip(g).zip(v) {
                        *o = dz(c, xv, gv);
                    }
                    (
                        lane_sum(&dz_row, &dz_row, |g, _| f64::from(g)),
                        lane_sum(&dz_row, v, |g, v| f64::from(g) * (f64::from(v) - mu) * is),
                    )
                })
                .fold((0.0, 0.0), |(s, sx), (a, b)| (s + a, sx + b))
        })
        .collect();
    // Training: dx = gamma·invstd/m · (m·dz − sum_dz − xhat·sum_dz_xhat) = a·dz + b + k·(x − mean);
    // eval: dx = a·dz.
    let coef: Vec<(f32, f32, f32)> = (0..d.c)
        .map(|c| {
            let a = f64::from(gamma[c]) * f64::from(invstd[c]);
            let (sum_dz, sum_dz_xhat) = if batch_stats { sums[c] } else { (0.0, 0.0) };
            (
                a as f32,
                (-a * sum_dz / m) as f32,
                (-a * f64::from(invstd[c]) * sum_dz_xhat / m) as f32,
            )
        })
        .collect();
    let mut dx = vec![0.0; x.len()];
    let hw = d.hw.max(1);
    dx.par_chunks_mut(hw)
        .zip(dy.par_chunks(hw))
        .zip(x.par_chunks(hw))
        .enumerate()
        .with_min_len(TASK_FLOATS.div_ceil(hw))
        .for_each(|(row, ((dxr, gr), xr))| {
            let c = row % d.c;
            let (a, b, k) = coef[c];
            let mu = mean[c];
            for ((o, &g), &v) in dxr.iter_mut().zip(gr).zip(xr) {
                *o = a * dz(c, v, g) + b + k * (v - mu);
            }
        });
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}

/// Training-mode forward followed by `act`: (y, mean, invstd); moves the running statistics by
/// `momentum` (unbiased variance), as the reference's `batch_norm_act_train`.
#[allow(clippy::too_many_arguments)]
pub fn train_act(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    d: ChannelDims,
    momentum: f32,
    eps: f32,
    act: BatchNormAct,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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
    for ((rm, rv), &(mu, var)) in running_mean.iter_mut().zip(running_var).zip(&moments) {
        *rm = ((1.0 - mom) * f64::from(*rm) + mom * mu) as f32;
        *rv = ((1.0 - mom) * f64::from(*rv) + mom * var * m / (m - 1.0)) as f32;
    }
    (y, mean, invstd)
}
