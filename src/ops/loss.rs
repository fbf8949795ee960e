//! The GAN losses on D's logits, each fused (loss and gradient from one pass):
//! * BCE with logits (mean), PyTorch's stable form: loss = max(x,0) − x·y + log(1 + exp(−|x|)),
//!   d loss/dx = (σ(x) − y)/N; G's loss is the non-saturating BCE(D(G(z)), 1).
//! * hinge (Lim & Ye 2017, SAGAN, FastGAN): D minimises mean(max(0, 1 − D(x))) +
//!   mean(max(0, 1 + D(G(z)))), G minimises −mean(D(G(z))).
//! * L1 and MSE between two tensors (FastGAN's reconstruction loss), PyTorch's `F.l1_loss`
//!   and `F.mse_loss` with mean reduction.

use super::{check_dtypes, same_device, F32};
use crate::backend::{HingeTerm, PairLoss, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Mean BCE of logits `x` against the constant label `target` (1 = real, 0 = fake); `[1]`.
pub fn bce_with_logits(x: &Tensor, target: f32) -> Result<Tensor> {
    check_dtypes("bce_with_logits", &[("logits", x)], F32)?;
    if x.numel() == 0 {
        bail!("bce_with_logits of an empty tensor");
    }
    if !(0.0..=1.0).contains(&target) {
        bail!("bce_with_logits: target {target} outside [0, 1]");
    }
    let be = x.backend();
    let (loss, grad) = be.bce_with_logits(&x.storage(), target)?;
    fused_loss(x, loss, grad, "bce_with_logits")
}

/// Mean hinge loss of logits `x` for one `term` (see [`HingeTerm`]); `[1]`.
pub fn hinge_loss(x: &Tensor, term: HingeTerm) -> Result<Tensor> {
    check_dtypes("hinge_loss", &[("logits", x)], F32)?;
    if x.numel() == 0 {
        bail!("hinge_loss of an empty tensor");
    }
    let (loss, grad) = x.backend().hinge_with_logits(&x.storage(), term)?;
    fused_loss(x, loss, grad, "hinge_loss")
}

/// `F.l1_loss(a, b)`: mean |a − b| over one shape, `[1]`. Gradients sign(a − b)/N for `a`
/// (sign(0) = 0, as PyTorch) and its negative for `b`.
pub fn l1_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    pair_loss(a, b, PairLoss::L1, "l1_loss")
}

/// `F.mse_loss(a, b)`: mean (a − b)² over one shape, `[1]`. Gradients 2(a − b)/N for `a` and
/// its negative for `b`.
pub fn mse_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    pair_loss(a, b, PairLoss::Mse, "mse_loss")
}

fn pair_loss(a: &Tensor, b: &Tensor, kind: PairLoss, name: &'static str) -> Result<Tensor> {
    same_device(name, &[a, b])?;
    check_dtypes(name, &[("a", a), ("b", b)], F32)?;
    if a.shape() != b.shape() {
        bail!("{name}: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    if a.numel() == 0 {
        bail!("{name} of empty tensors (shape {:?})", a.shape());
    }
    let be = a.backend();
    let (loss, grad) = be.pair_loss(&a.storage(), &b.storage(), kind)?;
    Tensor::from_op(
        loss,
        &[1],
        name,
        &[a, b],
        move |g: &Storage, needs: &[bool]| {
            Ok(vec![
                needs[0]
                    .then(|| be.scale_by_scalar(&grad, g, 1.0))
                    .transpose()?,
                needs[1]
                    .then(|| be.scale_by_scalar(&grad, g, -1.0))
                    .transpose()?,
            ])
        },
    )
}

/// The loss tensor of a fused loss: its backward scales the gradient computed with it.
fn fused_loss(x: &Tensor, loss: Storage, grad: Storage, name: &'static str) -> Result<Tensor> {
    let be = x.backend();
    Tensor::from_op(loss, &[1], name, &[x], move |g: &Storage, _: &[bool]| {
        Ok(vec![Some(be.scale_by_scalar(&grad, g, 1.0)?)])
    })
}

/// The adversarial loss of a run (`--loss`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GanLoss {
    /// Binary cross-entropy with logits, the non-saturating form for G (the DCGAN papers').
    #[default]
    Bce,
    /// The hinge loss (SAGAN, BigGAN, FastGAN).
    Hinge,
}

impl GanLoss {
    /// D's loss on its logits for real images.
    pub fn d_real(self, logits: &Tensor) -> Result<Tensor> {
        match self {
            GanLoss::Bce => bce_with_logits(logits, 1.0),
            GanLoss::Hinge => hinge_loss(logits, HingeTerm::Real),
        }
    }

    /// D's loss on its logits for generated images.
    pub fn d_fake(self, logits: &Tensor) -> Result<Tensor> {
        match self {
            GanLoss::Bce => bce_with_logits(logits, 0.0),
            GanLoss::Hinge => hinge_loss(logits, HingeTerm::Fake),
        }
    }

    /// G's loss on D's logits for its images.
    pub fn generator(self, logits: &Tensor) -> Result<Tensor> {
        match self {
            GanLoss::Bce => bce_with_logits(logits, 1.0),
            GanLoss::Hinge => hinge_loss(logits, HingeTerm::Generator),
        }
    }
}

impl std::fmt::Display for GanLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            GanLoss::Bce => "bce",
            GanLoss::Hinge => "hinge",
        })
    }
}
