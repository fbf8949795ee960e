//! batch_norm2d with PyTorch semantics: training normalises with the biased batch variance
//! and moves the running stats (unbiased variance) by `momentum`; eval uses the running stats.

use super::{nchw, same_device};
use crate::backend::{ChannelDims, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};

#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    training: bool,
    momentum: f32,
    eps: f32,
) -> Result<Tensor> {
    same_device("batch_norm2d", &[x, gamma, beta, running_mean, running_var])?;
    let [n, c, h, w] = nchw("batch_norm2d", x)?;
    for (name, t) in [
        ("weight", gamma),
        ("bias", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        if t.shape() != [c] {
            bail!("batch_norm2d: {name} shape {:?}, expected [{c}]", t.shape());
        }
    }
    let d = ChannelDims { n, c, hw: h * w };
    let be = x.backend();
    if !training {
        let y = be.batch_norm_eval(
            &x.storage(),
            &gamma.storage(),
            &beta.storage(),
            &running_mean.storage(),
            &running_var.storage(),
            d,
            eps,
        )?;
        // Eval mode is affine in x, y = (x - rm)·gamma/sqrt(rv + eps) + beta, and gradients
        // still flow through it (e.g. projecting an image through a trained G).
        let (sx, sg) = (x.storage_rc(), gamma.storage_rc());
        let (srm, srv) = (running_mean.storage_rc(), running_var.storage_rc());
        return Tensor::from_op(
            y,
            x.shape(),
            "batch_norm2d_eval",
            &[x, gamma, beta],
            move |g: &Storage, _: &[bool]| {
                let zeros = be.zeros(c)?;
                let dx =
                    be.batch_norm_eval(g, &sg.borrow(), &zeros, &zeros, &srv.borrow(), d, eps)?;
                let ones = be.full(c, 1.0)?;
                let xhat = be.batch_norm_eval(
                    &sx.borrow(),
                    &ones,
                    &zeros,
                    &srm.borrow(),
                    &srv.borrow(),
                    d,
                    eps,
                )?;
                let dgamma = be.channel_sum(&be.mul(g, &xhat)?, d)?;
                let dbeta = be.channel_sum(g, d)?;
                Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
            },
        );
    }
    if n * h * w < 2 {
        bail!(
            "batch_norm2d: training needs more than one value per channel, got {:?}",
            x.shape()
        );
    }
    let saved = be.batch_norm_train(
        &x.storage(),
        &gamma.storage(),
        &beta.storage(),
        &mut running_mean.storage_mut(),
        &mut running_var.storage_mut(),
        d,
        momentum,
        eps,
    )?;
    let (sx, sg) = (x.storage_rc(), gamma.storage_rc());
    let (mean, invstd) = (saved.mean, saved.invstd);
    Tensor::from_op(
        saved.y,
        x.shape(),
        "batch_norm2d",
        &[x, gamma, beta],
        move |g: &Storage, _: &[bool]| {
            let (dx, dgamma, dbeta) =
                be.batch_norm_backward(&sx.borrow(), g, &sg.borrow(), &mean, &invstd, d)?;
            Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
        },
    )
}
