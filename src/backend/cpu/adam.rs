//! Adam in place and in parallel (each element alone, so the split changes no result).
//! Reference: `crate::backend::reference::adam`; caller: the optimiser, `src/optim.rs`.

use super::{host, host_mut, ELEMENTWISE_CHUNK};
use crate::backend::*;
use anyhow::{bail, Result};
use rayon::prelude::*;

pub(super) fn adam_update(items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
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
        // In place and in parallel; each element alone, so the split changes no result.
        p.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(m.par_chunks_mut(ELEMENTWISE_CHUNK))
            .zip(v.par_chunks_mut(ELEMENTWISE_CHUNK))
            .zip(g.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    m[i] = step.beta1 * m[i] + (1.0 - step.beta1) * g[i];
                    v[i] = step.beta2 * v[i] + (1.0 - step.beta2) * g[i] * g[i];
                    let denom = v[i].sqrt() / sqrt_bc2 + step.eps;
                    p[i] -= step_size * m[i] / denom;
                }
            });
    }
    Ok(())
}
