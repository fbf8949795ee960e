//! The fused GAN losses: the family's backend trait. Its autograd ops are `crate::ops::loss`, its
//! kernels `kernels/loss.cu` (launched by `cuda/loss.rs`), its reference `reference/loss.rs`.

use super::reference::loss as reference;
use super::{all_on_host, HingeTerm, Storage};
use anyhow::Result;

/// The fused losses. The defaults run the reference (`backend/reference/loss.rs`) on host
/// memory.
pub trait LossBackend {
    /// Mean binary cross-entropy with logits against a constant `target`, fused: returns
    /// (loss as one element, d loss / d x).
    fn bce_with_logits(&self, x: &Storage, target: f32) -> Result<(Storage, Storage)> {
        all_on_host("bce_with_logits", &[x])?;
        reference::bce_with_logits(x, target)
    }
    /// Mean hinge loss of logits for one `term`, fused: returns (loss as one element,
    /// d loss / d x).
    fn hinge_with_logits(&self, x: &Storage, term: HingeTerm) -> Result<(Storage, Storage)> {
        all_on_host("hinge_with_logits", &[x])?;
        reference::hinge_with_logits(x, term)
    }
}
