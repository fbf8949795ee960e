//! batch_norm2d with PyTorch semantics: training normalises with the biased batch variance
//! and moves the running stats (unbiased variance) by `momentum`; eval uses the running stats.
//! `batch_norm2d_act` is the same followed by ReLU or LeakyReLU as one node: one pass forward,
//! one backward, and no pre-activation tensor kept (the backward recomputes its sign from x).
//! In training mode and fused with an activation, x may be f16 (amp's activations): y and the
//! gradient of x are then f16, the statistics and parameters f32.

use super::{check_dtypes, nchw, same_device, F32};
use crate::backend::DType;
use crate::backend::{Activation, BatchNormAct, ChannelDims, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use std::cell::RefCell;
use std::rc::Rc;

/// Validates the inputs; returns the `[n, c, hw]` view of x. `f16_input`: x may be f16.
#[allow(clippy::too_many_arguments)]
fn batch_norm_dims(
    what: &str,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    training: bool,
    f16_input: bool,
) -> Result<ChannelDims> {
    same_device(what, &[x, gamma, beta, running_mean, running_var])?;
    let named = [("input", x), ("weight", gamma), ("bias", beta)];
    let running = [("running_mean", running_mean), ("running_var", running_var)];
    let all = [named.as_slice(), running.as_slice()].concat();
    const F16_INPUT: &[DType] = &[DType::F16, DType::F32, DType::F32, DType::F32, DType::F32];
    let accepts: &[&[DType]] = if f16_input {
        &[&[DType::F32], F16_INPUT]
    } else {
        F32
    };
    check_dtypes(what, &all, accepts)?;
    let [n, c, h, w] = nchw(what, x)?;
    for (name, t) in [
        ("weight", gamma),
        ("bias", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        if t.shape() != [c] {
            bail!("{what}: {name} shape {:?}, expected [{c}]", t.shape());
        }
    }
    if training && n * h * w < 2 {
        bail!(
            "{what}: training needs more than one value per channel, got {:?}",
            x.shape()
        );
    }
    Ok(ChannelDims { n, c, hw: h * w })
}

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
    let what = "batch_norm2d";
    // Eval mode's own backward below is f32; training mode's node takes f16 too.
    let f16_input = training;
    let d = batch_norm_dims(
        what,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        training,
        f16_input,
    )?;
    let c = d.c;
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
    let none = BatchNormAct::None;
    batch_norm_node(
        what,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        d,
        training,
        momentum,
        eps,
        none,
    )
}

/// `act(batch_norm2d(x, ...))` for `act` ReLU or LeakyReLU, as one op (same values as the two
/// ops one after the other, up to float rounding).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    training: bool,
    momentum: f32,
    eps: f32,
    act: Activation,
) -> Result<Tensor> {
    let what = "batch_norm2d_act";
    let d = batch_norm_dims(
        what,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        training,
        true,
    )?;
    let act = BatchNormAct::fused(act)?;
    batch_norm_node(
        what,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        d,
        training,
        momentum,
        eps,
        act,
    )
}

/// One autograd node for batch norm followed by `act`: training mode (and, with an activation,
/// eval mode too); saves x, gamma, beta and the statistics, never the pre-activation.
#[allow(clippy::too_many_arguments)]
fn batch_norm_node(
    what: &'static str,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    d: ChannelDims,
    training: bool,
    momentum: f32,
    eps: f32,
    act: BatchNormAct,
) -> Result<Tensor> {
    let be = x.backend();
    let (xs, gs, bs) = (x.storage(), gamma.storage(), beta.storage());
    let saved = if training {
        let (mut rm, mut rv) = (running_mean.storage_mut(), running_var.storage_mut());
        be.batch_norm_act_train(&xs, &gs, &bs, &mut rm, &mut rv, d, momentum, eps, act)?
    } else {
        let (rm, rv) = (running_mean.storage(), running_var.storage());
        be.batch_norm_act_eval(&xs, &gs, &bs, &rm, &rv, d, eps, act)?
    };
    drop((xs, gs, bs));
    let (sx, sg, sb) = (x.storage_rc(), gamma.storage_rc(), beta.storage_rc());
    let (mean, invstd) = (saved.mean, saved.invstd);
    Tensor::from_op(
        saved.y,
        x.shape(),
        what,
        &[x, gamma, beta],
        move |g: &Storage, _: &[bool]| {
            let (dx, dgamma, dbeta) = be.batch_norm_act_backward(
                &sx.borrow(),
                g,
                &sg.borrow(),
                &sb.borrow(),
                &mean,
                &invstd,
                d,
                act,
                training,
            )?;
            Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
        },
    )
}

/// Training-mode `act(batch_norm2d(x, ...))` with the batch statistics of every GPU of the
/// backend's group (`--sync-bn`; PyTorch's `SyncBatchNorm`): the mean and the biased variance
/// are those of the whole batch (two passes, each an all-reduce of the per-GPU means: the parts
/// are equal), and so are the backward's sums. So GPUs that each hold a part of the batch
/// compute what one GPU would with the whole batch, up to float rounding. `act`: None, ReLU or
/// LeakyReLU. Computed in f32 (an f16 x is widened, y and its gradient rounded back).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_synced(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f32,
    eps: f32,
    act: BatchNormAct,
) -> Result<Tensor> {
    let what = "batch_norm2d (synchronised)";
    let d = batch_norm_dims(what, x, gamma, beta, running_mean, running_var, true, true)?;
    let be = x.backend();
    let dtype = x.dtype();
    // x itself when f32 (shared with the tensor, as the other nodes keep it), else widened.
    let x32 = match dtype {
        DType::F32 => x.storage_rc(),
        DType::F16 => Rc::new(RefCell::new(be.cast(&x.storage(), DType::F32)?)),
    };
    let count = (d.n * d.hw) as f32;
    let whole = count * be.group_size() as f32;
    // The mean over the GPUs of per-GPU values (nothing to do alone: then this is plain batch
    // norm, which lets the CPU check its backward against finite differences).
    let group = be.clone();
    let over_gpus = move |parts: &mut [&mut Storage]| match group.group_size() {
        1 => Ok(()),
        _ => group.all_reduce_mean(parts),
    };
    let xs = x32.borrow();
    let mut mean = be.scale(&be.channel_sum(&xs, d)?, 1.0 / count)?;
    over_gpus(&mut [&mut mean])?;
    let centred = be.add_channel_bias(&xs, &be.scale(&mean, -1.0)?, d)?;
    let mut var = be.scale(
        &be.channel_sum(&be.mul(&centred, &centred)?, d)?,
        1.0 / count,
    )?;
    drop(centred);
    over_gpus(&mut [&mut var])?;
    let (gs, bs) = (gamma.storage(), beta.storage());
    // Normalising with given statistics is what eval mode does with the running ones.
    let saved = be.batch_norm_act_eval(&xs, &gs, &bs, &mean, &var, d, eps, act)?;
    drop((gs, bs, xs));
    {
        let unbiased = be.scale(&var, whole / (whole - 1.0).max(1.0))?;
        let (mut rm, mut rv) = (running_mean.storage_mut(), running_var.storage_mut());
        be.scale_add_assign(&mut rm, 1.0 - momentum, &mean, momentum)?;
        be.scale_add_assign(&mut rv, 1.0 - momentum, &unbiased, momentum)?;
    }
    let y = be.cast(&saved.y, dtype)?;
    let invstd = saved.invstd;
    let (sg, sb) = (gamma.storage_rc(), beta.storage_rc());
    Tensor::from_op(y, x.shape(), what, &[x, gamma, beta], move |g, _| {
        let g32 = be.cast(g, DType::F32)?;
        let (gamma, beta, x32) = (sg.borrow(), sb.borrow(), x32.borrow());
        // dz·gamma·invstd, and this part's sums of dz·xhat and dz (the parameters' gradients).
        let (dx_part, dgamma, dbeta) =
            be.batch_norm_act_backward(&x32, &g32, &gamma, &beta, &mean, &invstd, d, act, false)?;
        // The whole batch's means of dz and dz·xhat.
        let mut mean_dz = be.scale(&dbeta, 1.0 / count)?;
        let mut mean_dzx = be.scale(&dgamma, 1.0 / count)?;
        over_gpus(&mut [&mut mean_dz, &mut mean_dzx])?;
        // dx = gamma·invstd·(dz − mean(dz) − xhat·mean(dz·xhat)): the last two terms are
        // xhat·a + b per channel, which the eval-mode normalisation computes.
        let gi = be.mul(&gamma, &invstd)?;
        let a = be.scale(&be.mul(&gi, &mean_dzx)?, -1.0)?;
        let b = be.scale(&be.mul(&gi, &mean_dz)?, -1.0)?;
        let terms = be.batch_norm_eval(&x32, &a, &b, &mean, &var, d, eps)?;
        let dx = be.cast(&be.add(&dx_part, &terms)?, dtype)?;
        Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
    })
}
