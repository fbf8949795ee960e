//! Spectral normalisation (PyTorch's `torch.nn.utils.spectral_norm`): W viewed as
//! `[rows, cols]` (rows = dim 0 for conv weights; the caller passes the right view for
//! transposed convs), one power iteration per training forward with no gradient through u and
//! v, sigma = uᵀWv with gradient through W, weight used = W/sigma.

use super::same_device;
use crate::backend::reference::spectral_norm as reference;
use crate::backend::{all_on_host, Storage};
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

/// Spectral norm of `w` viewed as `[rows, cols]`. The defaults run the reference
/// (`backend/reference/spectral_norm.rs`) on host memory.
pub trait SpectralNormBackend {
    /// One power iteration when `update` (v = normalize(Wᵀu), u = normalize(Wv), written
    /// back), then sigma = uᵀWv. Returns sigma as a one-element storage.
    #[allow(clippy::too_many_arguments)]
    fn spectral_norm_sigma(
        &self,
        w: &Storage,
        u: &mut Storage,
        v: &mut Storage,
        rows: usize,
        cols: usize,
        eps: f32,
        update: bool,
    ) -> Result<Storage> {
        all_on_host("spectral_norm_sigma", &[w, &*u, &*v])?;
        reference::spectral_norm_sigma(w, u, v, rows, cols, eps, update)
    }
    /// Gradient of W/sigma(W) with respect to W, u and v held fixed:
    /// `dW = g/sigma - (sum(g*W)/sigma^2) u vᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn spectral_norm_backward(
        &self,
        w: &Storage,
        g: &Storage,
        u: &Storage,
        v: &Storage,
        sigma: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<Storage> {
        let _ = rows;
        all_on_host("spectral_norm_backward", &[w, g, u, v, sigma])?;
        reference::spectral_norm_backward(w, g, u, v, sigma, cols)
    }
}
