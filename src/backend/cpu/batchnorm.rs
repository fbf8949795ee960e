//! Training-mode batch norm on the fast CPU backend. Same statistics as the reference
//! (`reference::batchnorm`: two passes, f64 sums), but each channel is summed over eight
//! interleaved f64 partial sums carried across its rows, so the loops vectorise instead of
//! waiting on one long chain of dependent adds; the input gradient is applied in f32 from
//! per-channel coefficients computed in f64. Every channel is summed by one task in a fixed
//! order, so results do not depend on the thread count. With a fused activation the mask comes
//! from the pre-activation recomputed exactly as the forward computed it
//! ([`batch_norm_affine`]). The activation is matched once per call, not per element: the
//! loops are generic over [`Act`], one instance per activation, so each vectorises.

use super::par_output;
use crate::backend::{batch_norm_affine, BatchNormAct, ChannelDims};
use rayon::prelude::*;

/// Partial sums per channel.
const LANES: usize = 8;
/// Floats of work per rayon task (small layers would otherwise spend more on scheduling).
const TASK_FLOATS: usize = 1 << 15;

/// A [`BatchNormAct`] variant as a type of its own, so a loop over elements is compiled for it
/// alone (the variant's `apply`/`grad` with the match folded away).
trait Act: Copy + Send + Sync {
    /// Whether the activation reads the pre-activation (and so beta).
    const NEEDS_Z: bool = true;
    fn variant(self) -> BatchNormAct;
}

#[derive(Clone, Copy)]
struct NoAct;
#[derive(Clone, Copy)]
struct Relu;
#[derive(Clone, Copy)]
struct LeakyRelu(f32);

impl Act for NoAct {
    const NEEDS_Z: bool = false;
    fn variant(self) -> BatchNormAct {
        BatchNormAct::None
    }
}
impl Act for Relu {
    fn variant(self) -> BatchNormAct {
        BatchNormAct::Relu
    }
}
impl Act for LeakyRelu {
    fn variant(self) -> BatchNormAct {
        BatchNormAct::LeakyRelu(self.0)
    }
}

/// Calls the generic function `$f::<A>(.., act_value)` for `$act`'s type.
macro_rules! dispatch_act {
    ($act:expr, $f:ident($($arg:expr),*)) => {
        match $act {
            BatchNormAct::None => $f($($arg,)* NoAct),
            BatchNormAct::Relu => $f($($arg,)* Relu),
            BatchNormAct::LeakyRelu(slope) => $f($($arg,)* LeakyRelu(slope)),
        }
    };
}

/// Adds `f(a[i], b[i])` into `LANES` interleaved f64 partial sums.
fn lane_sum_into(acc: &mut [f64; LANES], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) {
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
}

/// Rows `[hw]` of channel `c`, image by image.
fn rows(x: &[f32], d: ChannelDims, c: usize) -> impl Iterator<Item = &[f32]> {
    (0..d.n).map(move |n| &x[(n * d.c + c) * d.hw..(n * d.c + c + 1) * d.hw])
}

fn channels_per_task(d: ChannelDims) -> usize {
    TASK_FLOATS.div_ceil((d.n * d.hw).max(1))
}

/// `sum f(a, b)` over channel `c`'s elements of `a` and `b` (lanes added in a fixed order).
fn channel_sum(
    a: &[f32],
    b: &[f32],
    d: ChannelDims,
    c: usize,
    f: impl Fn(f32, f32) -> f64 + Copy,
) -> f64 {
    let mut acc = [0.0f64; LANES];
    for (ra, rb) in rows(a, d, c).zip(rows(b, d, c)) {
        lane_sum_into(&mut acc, ra, rb, f);
    }
    acc.iter().sum()
}

/// Per-channel (mean, biased variance), two passes, as `reference::batchnorm::channel_moments`.
pub fn channel_moments(x: &[f32], d: ChannelDims) -> Vec<(f64, f64)> {
    let m = (d.n * d.hw) as f64;
    (0..d.c)
        .into_par_iter()
        .with_min_len(channels_per_task(d))
        .map(|c| {
            let mean = channel_sum(x, x, d, c, |v, _| f64::from(v)) / m;
            let var = channel_sum(x, x, d, c, |v, _| {
                let v = f64::from(v) - mean;
                v * v
            }) / m;
            (mean, var)
        })
        .collect()
}

/// `y = act((x - mean[c]) * scale[c] + shift[c])`, as `reference::batchnorm::normalize_act`.
pub fn normalize_act(
    x: &[f32],
    d: ChannelDims,
    mean: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: BatchNormAct,
) -> Vec<f32> {
    dispatch_act!(act, normalize(x, d, mean, scale, shift))
}

fn normalize<A: Act>(
    x: &[f32],
    d: ChannelDims,
    mean: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: A,
) -> Vec<f32> {
    let hw = d.hw.max(1);
    par_output(x.len(), hw, TASK_FLOATS.div_ceil(hw), |row, yr| {
        let c = row % d.c;
        let (mu, s, t) = (mean[c], scale[c], shift[c]);
        let act = act.variant();
        for (yv, &xv) in yr.iter_mut().zip(&x[row * hw..]) {
            *yv = act.apply(batch_norm_affine(xv, mu, s, t));
        }
    })
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
    let stats = BackwardStats {
        gamma,
        beta,
        mean,
        invstd,
    };
    dispatch_act!(act, backward(x, dy, &stats, d, batch_stats))
}

/// The per-channel values the backward reads.
struct BackwardStats<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    mean: &'a [f32],
    invstd: &'a [f32],
}

impl BackwardStats<'_> {
    /// `dz = act'(z)·dy` of one row of channel `c` into `out` (z recomputed from x).
    fn dz_row<A: Act>(&self, act: A, c: usize, x: &[f32], dy: &[f32], out: &mut [f32]) {
        if !A::NEEDS_Z {
            return out.copy_from_slice(dy);
        }
        let (mu, s, t) = (self.mean[c], self.invstd[c] * self.gamma[c], self.beta[c]);
        let act = act.variant();
        for ((o, &g), &v) in out.iter_mut().zip(dy).zip(x) {
            *o = act.grad(batch_norm_affine(v, mu, s, t), g);
        }
    }
}

fn backward<A: Act>(
    x: &[f32],
    dy: &[f32],
    st: &BackwardStats,
    d: ChannelDims,
    batch_stats: bool,
    act: A,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (d.n * d.hw) as f64;
    // Per channel: sum(dz), sum(dz * xhat), one row of dz at a time.
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .with_min_len(channels_per_task(d))
        .map_init(
            || vec![0.0f32; d.hw],
            |dz_row, c| {
                let (mu, is) = (f64::from(st.mean[c]), f64::from(st.invstd[c]));
                let (mut s, mut sx) = ([0.0f64; LANES], [0.0f64; LANES]);
                for (g, v) in rows(dy, d, c).zip(rows(x, d, c)) {
                    st.dz_row(act, c, v, g, dz_row);
                    lane_sum_into(&mut s, dz_row, dz_row, |g, _| f64::from(g));
                    lane_sum_into(&mut sx, dz_row, v, |g, v| {
                        f64::from(g) * (f64::from(v) - mu) * is
                    });
                }
                (s.iter().sum(), sx.iter().sum())
            },
        )
        .collect();
    // Training: dx = gamma·invstd/m · (m·dz − sum_dz − xhat·sum_dz_xhat) = a·dz + b + k·(x − mean);
    // eval: dx = a·dz.
    let coef: Vec<(f32, f32, f32)> = (0..d.c)
        .map(|c| {
            let a = f64::from(st.gamma[c]) * f64::from(st.invstd[c]);
            let (sum_dz, sum_dz_xhat) = if batch_stats { sums[c] } else { (0.0, 0.0) };
            (
                a as f32,
                (-a * sum_dz / m) as f32,
                (-a * f64::from(st.invstd[c]) * sum_dz_xhat / m) as f32,
            )
        })
        .collect();
    let hw = d.hw.max(1);
    let dx = par_output(x.len(), hw, TASK_FLOATS.div_ceil(hw), |row, dxr| {
        let (xr, gr) = (&x[row * hw..][..dxr.len()], &dy[row * hw..][..dxr.len()]);
        let c = row % d.c;
        st.dz_row(act, c, xr, gr, dxr);
        let (a, b, k) = coef[c];
        let mu = st.mean[c];
        for (o, &v) in dxr.iter_mut().zip(xr) {
            *o = a * *o + b + k * (v - mu);
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
