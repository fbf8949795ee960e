//! The GAN losses on D's logits, reference (f64 sums; `kernels/loss.cu`). Autograd:
//! `src/ops/loss.rs`.

use super::{host, stable_sigmoid};
use crate::backend::*;
use anyhow::Result;

pub(crate) fn bce_with_logits(x: &Storage, target: f32) -> Result<(Storage, Storage)> {
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

pub(crate) fn hinge_with_logits(x: &Storage, term: HingeTerm) -> Result<(Storage, Storage)> {
    let x = host(x)?;
    let n = x.len() as f64;
    let sign = f64::from(term.sign());
    let mut loss = 0f64;
    let grad = x
        .iter()
        .map(|&v| {
            let margin = 1.0 - sign * f64::from(v);
            let active = !term.clamped() || margin > 0.0;
            loss += if term.clamped() {
                margin.max(0.0)
            } else {
                -sign * f64::from(v)
            };
            if active {
                (-sign / n) as f32
            } else {
                0.0
            }
        })
        .collect();
    Ok((Storage::Cpu(vec![(loss / n) as f32]), Storage::Cpu(grad)))
}
