//! The fused losses (the GAN losses on D's logits, the L1/MSE distance): the family's backend
//! trait. Its autograd ops are `crate::ops::loss`, its
//! kernels `kernels/loss.cu` (launched by `cuda/loss.rs`), its reference `reference/loss.rs`.

use super::reference::loss as reference;
use super::{all_on_host, HingeTerm, PairLoss, Storage};
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
    /// Mean L1 or squared distance between `a` and `b` (one length), fused: returns (loss as one
    /// element, d loss / d a); d loss / d b is its negative. L1's gradient is sign(a − b) / N
    /// with sign(0) = 0 (PyTorch's), MSE's 2(a − b) / N.
    fn pair_loss(&self, a: &Storage, b: &Storage, kind: PairLoss) -> Result<(Storage, Storage)> {
        all_on_host("pair_loss", &[a, b])?;
        reference::pair_loss(a, b, kind)
    }
}
