//! Adam, reference: one plain loop per tensor (`kernels/adam.cu`). No autograd: the caller is
//! the optimiser, `src/optim.rs`.

use super::{host, host_mut};
use crate::backend::*;
use anyhow::{bail, Result};

pub(crate) fn adam_update(items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
    let sqrt_bc2 = step.bias_correction2.sqrt();
    for it in items.iter_mut() {
        let step_size = it.lr / step.bias_correction1;
        let g = host(it.grad)?;
        let m = host_mut(it.m)?;
        let v = host_mut(it.v)?;
        let p = host_mut(it.param)?;
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            bail!("adam: parameter, gradient and moments differ in length");
        }
        for i in 0..p.len() {
            m[i] = step.beta1 * m[i] + (1.0 - step.beta1) * g[i];
            v[i] = step.beta2 * v[i] + (1.0 - step.beta2) * g[i] * g[i];
            let denom = v[i].sqrt() / sqrt_bc2 + step.eps;
            p[i] -= step_size * m[i] / denom;
        }
    }
    Ok(())
}

/// `Backend::adam_update_scaled` on the host: the non-finite check, then `adam` (this file's
/// loop or the fast CPU backend's, which compute the same per element) on the unscaled
/// gradients, then the scale update. `kernels/adam.cu` does the same in three launches.
pub(crate) fn adam_update_scaled(
    items: &mut [AdamItem<'_>],
    hyper: AdamHyper,
    scale: &mut Storage,
    counters: &mut Storage,
    adam: impl FnOnce(&mut [AdamItem<'_>], AdamStep) -> Result<()>,
) -> Result<()> {
    use loss_scale::*;
    let s = host_mut(scale)?;
    let c = host_mut(counters)?;
    if s.len() != 1 || c.len() != COUNTERS {
        bail!("adam: loss-scale state of {} + {} values", s.len(), c.len());
    }
    let inv = inverse_scale(s[0]);
    let mut found_inf = false;
    for it in items.iter() {
        found_inf |= host(it.grad)?.iter().any(|&g| !(g * inv).is_finite());
    }
    if !found_inf {
        let unscaled = items
            .iter()
            .map(|it| {
                Ok(Storage::Cpu(
                    host(it.grad)?.iter().map(|&g| g * inv).collect(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut plain: Vec<AdamItem<'_>> = items
            .iter_mut()
            .zip(&unscaled)
            .map(|(it, g)| AdamItem {
                param: &mut *it.param,
                grad: g,
                m: &mut *it.m,
                v: &mut *it.v,
                lr: it.lr,
            })
            .collect();
        adam(&mut plain, bias_corrected(hyper, c[APPLIED] + 1.0))?;
    }
    update_scale(&mut s[0], c, found_inf);
    Ok(())
}

/// `1/scale` as PyTorch computes it (in f64, then f32; exact for the powers of two a scale is).
pub(crate) fn inverse_scale(scale: f32) -> f32 {
    (1.0 / f64::from(scale)) as f32
}

/// Adam's bias corrections for step `t` (a whole number held in f32): `1 − β^t` in f64 with
/// `pow`, then f32, as the CUDA kernel computes them.
pub(crate) fn bias_corrected(h: AdamHyper, t: f32) -> AdamStep {
    let bc = |beta: f32| (1.0 - f64::from(beta).powf(f64::from(t))) as f32;
    AdamStep {
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        bias_correction1: bc(h.beta1),
        bias_correction2: bc(h.beta2),
    }
}

/// PyTorch's `_amp_update_scale_` with the default factors (×0.5 on inf/NaN, ×2 after
/// `GROWTH_INTERVAL` clean steps), plus our skipped/applied counts; clears `FOUND_INF`.
pub(crate) fn update_scale(scale: &mut f32, c: &mut [f32], found_inf: bool) {
    use loss_scale::*;
    if found_inf {
        *scale *= 0.5;
        c[GROWTH_TRACKER] = 0.0;
        c[SKIPPED] += 1.0;
    } else {
        c[APPLIED] += 1.0;
        let clean = c[GROWTH_TRACKER] + 1.0;
        if clean == GROWTH_INTERVAL as f32 {
            let grown = *scale * 2.0;
            if grown.is_finite() {
                *scale = grown;
            }
            c[GROWTH_TRACKER] = 0.0;
        } else {
            c[GROWTH_TRACKER] = clean;
        }
    }
    c[FOUND_INF] = 0.0;
}
