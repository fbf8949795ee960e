//! Launches of `kernels/batchnorm.cu`: training-mode statistics and normalisation, eval mode
//! and the backward pass. Autograd: `src/ops/batchnorm.rs`.

use super::err::drv;
use super::{cb, cb_mut, CudaBackend};
use crate::backend::*;
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_train(
    be: &CudaBackend,
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &mut Storage,
    running_var: &mut Storage,
    d: ChannelDims,
    momentum: f32,
    eps: f32,
) -> Result<BatchNormSaved> {
    d.check_batch_norm_train()?;
    let (x, gamma, beta) = (cb(x)?, cb(gamma)?, cb(beta)?);
    let rm = cb_mut(running_mean)?;
    let (n, c, hw, total) = (d.n as u64, d.c as u64, d.hw as u64, d.len() as u64);
    let mut mean = be.alloc(d.c)?;
    let mut invstd = be.alloc(d.c)?;
    let mut y = be.alloc(d.len())?;
    if total == 0 {
        bail!("batch_norm: empty input");
    }
    {
        let rv = cb_mut(running_var)?;
        let cfg = be.per_row(c, CudaBackend::reduce_threads(n * hw));
        let f = be.func("bn_stats_f32")?;
        let mut b = be.stream.launch_builder(f);
        b.arg(x.slice())
            .arg(&n)
            .arg(&c)
            .arg(&hw)
            .arg(&momentum)
            .arg(&eps)
            .arg(mean.slice_mut())
            .arg(invstd.slice_mut())
            .arg(rm.slice_mut())
            .arg(rv.slice_mut());
        // SAFETY: matches bn_stats_f32's signature.
        unsafe { b.launch(cfg) }.map_err(|e| drv(e, "launching bn_stats_f32"))?;
    }
    let cfg = be.grid(total);
    launch!(
        be,
        "bn_apply_f32",
        cfg,
        x.slice(),
        mean.slice(),
        invstd.slice(),
        gamma.slice(),
        beta.slice(),
        &c,
        &hw,
        y.slice_mut(),
        &total
    )?;
    Ok(BatchNormSaved {
        y: Storage::Cuda(y),
        mean: Storage::Cuda(mean),
        invstd: Storage::Cuda(invstd),
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_eval(
    be: &CudaBackend,
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &Storage,
    running_var: &Storage,
    d: ChannelDims,
    eps: f32,
) -> Result<Storage> {
    let (x, gamma, beta) = (cb(x)?, cb(gamma)?, cb(beta)?);
    let (rm, rv) = (cb(running_mean)?, cb(running_var)?);
    let mut y = be.alloc(d.len())?;
    let (c, hw, total) = (d.c as u64, d.hw as u64, d.len() as u64);
    if total > 0 {
        let cfg = be.grid(total);
        launch!(
            be,
            "bn_eval_f32",
            cfg,
            x.slice(),
            rm.slice(),
            rv.slice(),
            gamma.slice(),
            beta.slice(),
            &eps,
            &c,
            &hw,
            y.slice_mut(),
            &total
        )?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn batch_norm_backward(
    be: &CudaBackend,
    x: &Storage,
    dy: &Storage,
    gamma: &Storage,
    mean: &Storage,
    invstd: &Storage,
    d: ChannelDims,
) -> Result<(Storage, Storage, Storage)> {
    let (x, dy, gamma) = (cb(x)?, cb(dy)?, cb(gamma)?);
    let (mean, invstd) = (cb(mean)?, cb(invstd)?);
    let (n, c, hw, total) = (d.n as u64, d.c as u64, d.hw as u64, d.len() as u64);
    let mut dx = be.alloc(d.len())?;
    let mut dgamma = be.alloc(d.c)?;
    let mut dbeta = be.alloc(d.c)?;
    if total == 0 {
        bail!("batch_norm backward: empty input");
    }
    let cfg = be.per_row(c, CudaBackend::reduce_threads(n * hw));
    launch!(
        be,
        "bn_backward_reduce_f32",
        cfg,
        x.slice(),
        dy.slice(),
        mean.slice(),
        invstd.slice(),
        &n,
        &c,
        &hw,
        dgamma.slice_mut(),
        dbeta.slice_mut()
    )?;
    let cfg = be.grid(total);
    launch!(
        be,
        "bn_backward_dx_f32",
        cfg,
        x.slice(),
        dy.slice(),
        gamma.slice(),
        mean.slice(),
        invstd.slice(),
        dgamma.slice(),
        dbeta.slice(),
        &n,
        &c,
        &hw,
        dx.slice_mut()
    )?;
    Ok((
        Storage::Cuda(dx),
        Storage::Cuda(dgamma),
        Storage::Cuda(dbeta),
    ))
}
