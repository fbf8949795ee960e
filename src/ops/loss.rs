//! Fused binary cross-entropy with logits (mean), PyTorch's stable form:
//! loss = max(x,0) − x·y + log(1 + exp(−|x|)), d loss/dx = (σ(x) − y)/N, both from one pass.

use crate::backend::Storage;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// Mean BCE of logits `x` against the constant label `target` (1 = real, 0 = fake); `[1]`.
pub fn bce_with_logits(x: &Tensor, target: f32) -> Result<Tensor> {
    if x.numel() == 0 {
        bail!("bce_with_logits of an empty tensor");
    }
    if !(0.0..=1.0).contains(&target) {
        bail!("bce_with_logits: target {target} outside [0, 1]");
    }
    let be = x.backend();
    let (loss, grad) = be.bce_with_logits(&x.storage(), target)?;
    Tensor::from_op(
        loss,
        &[1],
        "bce_with_logits",
        &[x],
        move |g: &Storage, _: &[bool]| Ok(vec![Some(be.scale_by_scalar(&grad, g, 1.0)?)]),
    )
}
