//! Launches of `kernels/batchnorm.cu`: training-mode statistics and normalisation, eval mode
//! and the backward pass, each optionally fused with the ReLU / LeakyReLU that follows.
//! Autograd: `src/ops/batchnorm.rs`.
//!
//! The activations (x, y, dy, dx) are f32 or f16 (amp: f16 in and out, f32 inside), all of one
//! dtype per call; the statistics and parameters are always f32.

use super::dtype::{alloc_dtype, any_buffer, same_dtype, storage};
use super::{cb, cb_mut, CudaBackend};
use crate::backend::*;
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// (n, c, hw, total) as the kernels' 32-bit indices; larger tensors are refused.
fn dims32(d: ChannelDims) -> Result<(u32, u32, u32, u32)> {
    // Below 2^31, so `i + grid stride` cannot wrap a u32 either.
    if d.len() > i32::MAX as usize {
        bail!(
            "batch norm: {} elements exceed the CUDA kernels' 32-bit indexing (at most {})",
            d.len(),
            i32::MAX
        );
    }
    Ok((d.n as u32, d.c as u32, d.hw as u32, d.len() as u32))
}

/// Kernel code and slope of `act` (`BN_ACT_*` in kernels/batchnorm.cu).
fn act_code(act: BatchNormAct) -> (i32, f32) {
    match act {
        BatchNormAct::None => (0, 0.0),
        BatchNormAct::Relu => (1, 0.0),
        BatchNormAct::LeakyRelu(slope) => (2, slope),
    }
}

/// Launch shape of the per-channel reductions: `tx` threads per channel (a power of two from 32
/// to 1024, about 8 elements each), `ty` channels per block so a block has at least 256
/// threads, blocks capped at the device's resident count (they stride over channel groups).
/// The shape depends on the channel size only, so the sums do not depend on the device.
fn channel_reduce_config(be: &CudaBackend, d: ChannelDims) -> LaunchConfig {
    let count = (d.n * d.hw) as u32;
    let tx = count.div_ceil(8).next_power_of_two().clamp(32, 1024);
    let ty = (256 / tx).max(1);
    let groups = (d.c as u32).div_ceil(ty);
    LaunchConfig {
        grid_dim: (groups.clamp(1, be.max_blocks), 1, 1),
        block_dim: (tx, ty, 1),
        shared_mem_bytes: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_act_train(
    be: &CudaBackend,
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &mut Storage,
    running_var: &mut Storage,
    d: ChannelDims,
    momentum: f32,
    eps: f32,
    act: BatchNormAct,
) -> Result<BatchNormSaved> {
    d.check_batch_norm_train()?;
    let (n, c, hw, _) = dims32(d)?;
    let dtype = x.dtype();
    let (xs, rm, rv) = (any_buffer(x)?, cb_mut(running_mean)?, cb_mut(running_var)?);
    let mut mean = be.alloc(d.c)?;
    let mut invstd = be.alloc(d.c)?;
    launch_typed!(
        be,
        dtype,
        bn_stats_f32 | bn_stats_f16,
        channel_reduce_config(be, d),
        xs.slice(),
        &n,
        &c,
        &hw,
        &momentum,
        &eps,
        mean.slice_mut(),
        invstd.slice_mut(),
        rm.slice_mut(),
        rv.slice_mut()
    )?;
    let (mean, invstd) = (Storage::Cuda(mean), Storage::Cuda(invstd));
    let y = apply(be, x, &mean, &invstd, gamma, beta, d, act)?;
    Ok(BatchNormSaved { y, mean, invstd })
}

/// `act((x - mean) * invstd * gamma + beta)`, of x's dtype.
#[allow(clippy::too_many_arguments)]
fn apply(
    be: &CudaBackend,
    x: &Storage,
    mean: &Storage,
    invstd: &Storage,
    gamma: &Storage,
    beta: &Storage,
    d: ChannelDims,
    act: BatchNormAct,
) -> Result<Storage> {
    let (_, c, hw, total) = dims32(d)?;
    let dtype = x.dtype();
    let x = any_buffer(x)?;
    let (mean, invstd, gamma, beta) = (cb(mean)?, cb(invstd)?, cb(gamma)?, cb(beta)?);
    let (code, slope) = act_code(act);
    let mut y = alloc_dtype(be, dtype, d.len())?;
    if total > 0 {
        launch_typed!(
            be,
            dtype,
            bn_apply_f32 | bn_apply_f16,
            be.grid(u64::from(total)),
            x.slice(),
            mean.slice(),
            invstd.slice(),
            gamma.slice(),
            beta.slice(),
            &code,
            &slope,
            &c,
            &hw,
            y.slice_mut(),
            &total
        )?;
    }
    Ok(storage(dtype, y))
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
    let (_, c, hw, total) = dims32(d)?;
    let dtype = x.dtype();
    let (x, gamma, beta) = (any_buffer(x)?, cb(gamma)?, cb(beta)?);
    let (rm, rv) = (cb(running_mean)?, cb(running_var)?);
    let mut y = alloc_dtype(be, dtype, d.len())?;
    if total > 0 {
        launch_typed!(
            be,
            dtype,
            bn_eval_f32 | bn_eval_f16,
            be.grid(u64::from(total)),
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
    Ok(storage(dtype, y))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_act_eval(
    be: &CudaBackend,
    x: &Storage,
    gamma: &Storage,
    beta: &Storage,
    running_mean: &Storage,
    running_var: &Storage,
    d: ChannelDims,
    eps: f32,
    act: BatchNormAct,
) -> Result<BatchNormSaved> {
    let c = d.c as u32;
    let mut invstd = be.alloc(d.c)?;
    if c > 0 {
        launch!(
            be,
            bn_invstd_f32,
            be.grid(u64::from(c)),
            cb(running_var)?.slice(),
            &eps,
            invstd.slice_mut(),
            &c
        )?;
    }
    let (mean, invstd) = (be.copy(running_mean)?, Storage::Cuda(invstd));
    let y = apply(be, x, &mean, &invstd, gamma, beta, d, act)?;
    Ok(BatchNormSaved { y, mean, invstd })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_act_backward(
    be: &CudaBackend,
    x: &Storage,
    dy: &Storage,
    gamma: &Storage,
    beta: &Storage,
    mean: &Storage,
    invstd: &Storage,
    d: ChannelDims,
    act: BatchNormAct,
    batch_stats: bool,
) -> Result<(Storage, Storage, Storage)> {
    let (n, c, hw, total) = dims32(d)?;
    let dtype = same_dtype("batch_norm backward", &[("x", x), ("dy", dy)])?;
    let (x, dy) = (any_buffer(x)?, any_buffer(dy)?);
    let (gamma, beta, mean, invstd) = (cb(gamma)?, cb(beta)?, cb(mean)?, cb(invstd)?);
    let (code, slope) = act_code(act);
    let batch_stats = i32::from(batch_stats);
    let mut dx = alloc_dtype(be, dtype, d.len())?;
    let mut dgamma = be.alloc(d.c)?;
    let mut dbeta = be.alloc(d.c)?;
    if total == 0 {
        bail!("batch_norm backward: empty input");
    }
    launch_typed!(
        be,
        dtype,
        bn_backward_reduce_f32 | bn_backward_reduce_f16,
        channel_reduce_config(be, d),
        x.slice(),
        dy.slice(),
        gamma.slice(),
        beta.slice(),
        mean.slice(),
        invstd.slice(),
        &code,
        &slope,
        &n,
        &c,
        &hw,
        dgamma.slice_mut(),
        dbeta.slice_mut()
    )?;
    launch_typed!(
        be,
        dtype,
        bn_backward_dx_f32 | bn_backward_dx_f16,
        be.grid(u64::from(total)),
        x.slice(),
        dy.slice(),
        gamma.slice(),
        beta.slice(),
        mean.slice(),
        invstd.slice(),
        dgamma.slice(),
        dbeta.slice(),
        &code,
        &slope,
        &batch_stats,
        &n,
        &c,
        &hw,
        dx.slice_mut()
    )?;
    Ok((
        storage(dtype, dx),
        Storage::Cuda(dgamma),
        Storage::Cuda(dbeta),
    ))
}

// Plain batch norm (train, backward) is the fused one with no activation: the trait's
// defaults.
impl BatchNormBackend for CudaBackend {
    fn batch_norm_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
    ) -> Result<Storage> {
        batch_norm_eval(self, x, gamma, beta, running_mean, running_var, d, eps)
    }
    fn batch_norm_act_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        d: ChannelDims,
        momentum: f32,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        batch_norm_act_train(
            self,
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            momentum,
            eps,
            act,
        )
    }
    fn batch_norm_act_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        batch_norm_act_eval(self, x, gamma, beta, running_mean, running_var, d, eps, act)
    }
    fn batch_norm_act_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        beta: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
        act: BatchNormAct,
        batch_stats: bool,
    ) -> Result<(Storage, Storage, Storage)> {
        batch_norm_act_backward(self, x, dy, gamma, beta, mean, invstd, d, act, batch_stats)
    }
}
