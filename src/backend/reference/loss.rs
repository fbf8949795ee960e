//! The GAN losses on D's logits and the L1/MSE distance, reference (f64 sums; `kernels/loss.cu`). Autograd:
//! `src/ops/loss.rs`.

use super::{host, stable_sigmoid};
use crate::backend::*;
use anyhow::{bail, Result};

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

/// Checks the pair loss's operands (both backends): one length, not empty.
pub(crate) fn check_pair(a: usize, b: usize) -> Result<()> {
    if a != b || a == 0 {
        bail!("pair_loss: {a} and {b} values (one length, at least 1, expected)");
    }
    Ok(())
}

pub(crate) fn pair_loss(a: &Storage, b: &Storage, kind: PairLoss) -> Result<(Storage, Storage)> {
    let (a, b) = (host(a)?, host(b)?);
    check_pair(a.len(), b.len())?;
    let n = a.len() as f64;
    let mut loss = 0f64;
    let grad = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            let (l, g) = match kind {
                // f64's signum(0) is 1; PyTorch's sign(0), the subgradient it uses, is 0.
                PairLoss::L1 => (d.abs(), if d == 0.0 { 0.0 } else { d.signum() }),
                PairLoss::Mse => (d * d, 2.0 * d),
            };
            loss += l;
            (g / n) as f32
        })
        .collect();
    Ok((Storage::Cpu(vec![(loss / n) as f32]), Storage::Cpu(grad)))
}
