//! Launches of `kernels/loss.cu`: the fused GAN losses and L1/MSE distance (loss and gradient in one kernel).
//! Autograd: `src/ops/loss.rs`.

use super::{cb, CudaBackend};
use crate::backend::*;
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

pub(super) fn bce_with_logits(
    be: &CudaBackend,
    x: &Storage,
    target: f32,
) -> Result<(Storage, Storage)> {
    let x = cb(x)?;
    if x.len == 0 {
        bail!("bce_with_logits: empty input");
    }
    let mut loss = be.alloc(1)?;
    let mut grad = be.alloc(x.len)?;
    let n = x.len as u64;
    launch!(
        be,
        bce_logits_f32,
        CudaBackend::single_block(CudaBackend::reduce_threads(n)),
        x.slice(),
        &n,
        &target,
        loss.slice_mut(),
        grad.slice_mut()
    )?;
    Ok((Storage::Cuda(loss), Storage::Cuda(grad)))
}

pub(super) fn hinge_with_logits(
    be: &CudaBackend,
    x: &Storage,
    term: HingeTerm,
) -> Result<(Storage, Storage)> {
    let x = cb(x)?;
    if x.len == 0 {
        bail!("hinge_with_logits: empty input");
    }
    let mut loss = be.alloc(1)?;
    let mut grad = be.alloc(x.len)?;
    let n = x.len as u64;
    let (sign, clamped) = (term.sign(), i32::from(term.clamped()));
    launch!(
        be,
        hinge_logits_f32,
        CudaBackend::single_block(CudaBackend::reduce_threads(n)),
        x.slice(),
        &n,
        &sign,
        &clamped,
        loss.slice_mut(),
        grad.slice_mut()
    )?;
    Ok((Storage::Cuda(loss), Storage::Cuda(grad)))
}

pub(super) fn pair_loss(
    be: &CudaBackend,
    a: &Storage,
    b: &Storage,
    kind: PairLoss,
) -> Result<(Storage, Storage)> {
    let (a, b) = (cb(a)?, cb(b)?);
    crate::backend::reference::loss::check_pair(a.len, b.len)?;
    let mut loss = be.alloc(1)?;
    let mut grad = be.alloc(a.len)?;
    let (n, kind) = (a.len as u64, kind.code());
    let cfg = CudaBackend::single_block(CudaBackend::reduce_threads(n));
    let (a, b, l, g) = (a.slice(), b.slice(), loss.slice_mut(), grad.slice_mut());
    launch!(be, pair_loss_f32, cfg, a, b, &n, &kind, l, g)?;
    Ok((Storage::Cuda(loss), Storage::Cuda(grad)))
}

impl LossBackend for CudaBackend {
    fn bce_with_logits(&self, x: &Storage, target: f32) -> Result<(Storage, Storage)> {
        bce_with_logits(self, x, target)
    }
    fn hinge_with_logits(&self, x: &Storage, term: HingeTerm) -> Result<(Storage, Storage)> {
        hinge_with_logits(self, x, term)
    }
    fn pair_loss(&self, a: &Storage, b: &Storage, kind: PairLoss) -> Result<(Storage, Storage)> {
        pair_loss(self, a, b, kind)
    }
}
