//! BCE-with-logits, reference (f64 sum; `kernels/loss.cu`). Autograd: `src/ops/loss.rs`.

use super::{host, stable_sigmoid};
use crate::backend::*;
use anyhow::Result;

pub(super) fn bce_with_logits(x: &Storage, target: f32) -> Result<(Storage, Storage)> {
    let x = host(x)?;
    let n = x.len() as f64;
    let mut loss = 0f64;
    let grad = x
        .iter()
        .map(|&v| {
            let l = v.max(0.0) - v * target + (-v.abs()).exp().ln_1p();
            loss += f64::from(l);
            ((f64::from(stable_sigmoid(v)) - f64::from(target)) / n) as f32
        })
        .collect();
    Ok((Storage::Cpu(vec![(loss / n) as f32]), Storage::Cpu(grad)))
}
