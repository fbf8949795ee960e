//! Spectral normalisation (PyTorch's `torch.nn.utils.spectral_norm`): W viewed as
//! `[rows, cols]` (rows = dim 0 for conv weights; the caller passes the right view for
//! transposed convs), one power iteration per training forward with no gradient through u and
//! v, sigma = uᵀWv with gradient through W, weight used = W/sigma.

use super::{check_dtypes, same_device, F32};
use crate::backend::Storage;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// Returns W/sigma(W). `u` (`[rows]`) and `v` (`[cols]`) are persistent buffers updated in
/// place when `training`.
pub fn spectral_norm_weight(
    w: &Tensor,
    u: &Tensor,
    v: &Tensor,
    rows: usize,
    training: bool,
    eps: f32,
) -> Result<Tensor> {
    same_device("spectral_norm", &[w, u, v])?;
    check_dtypes("spectral_norm", &[("weight", w), ("u", u), ("v", v)], F32)?;
    if rows == 0 || !w.numel().is_multiple_of(rows) {
        bail!(
            "spectral_norm: {rows} rows do not divide weight {:?}",
            w.shape()
        );
    }
    let cols = w.numel() / rows;
    if u.numel() != rows || v.numel() != cols {
        bail!(
            "spectral_norm: u has {} and v {} elements, weight is {rows}x{cols}",
            u.numel(),
            v.numel()
        );
    }
    let be = w.backend();
    let sigma = be.spectral_norm_sigma(
        &w.storage(),
        &mut u.storage_mut(),
        &mut v.storage_mut(),
        rows,
        cols,
        eps,
        training,
    )?;
    // 1/sigma on the device: no host round trip inside a training step.
    let y = be.scale_by_scalar(&w.storage(), &be.reciprocal(&sigma)?, 1.0)?;
    // u and v are frozen at their values for this forward (the next training forward changes
    // them in place), so the backward keeps copies.
    let (u_now, v_now) = (be.copy(&u.storage())?, be.copy(&v.storage())?);
    let sw = w.storage_rc();
    Tensor::from_op(
        y,
        w.shape(),
        "spectral_norm",
        &[w],
        move |g: &Storage, _: &[bool]| {
            Ok(vec![Some(be.spectral_norm_backward(
                &sw.borrow(),
                g,
                &u_now,
                &v_now,
                &sigma,
                rows,
                cols,
            )?)])
        },
    )
}
