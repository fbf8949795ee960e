//! Launches of `kernels/spectral_norm.cu`: one power iteration and sigma, and the backward
//! pass. Autograd: `src/ops/spectral_norm.rs`.

use super::{cb, cb_mut, CudaBackend};
use crate::backend::*;
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

#[allow(clippy::too_many_arguments)]
pub(super) fn spectral_norm_sigma(
    be: &CudaBackend,
    w: &Storage,
    u: &mut Storage,
    v: &mut Storage,
    rows: usize,
    cols: usize,
    eps: f32,
    update: bool,
) -> Result<Storage> {
    let w = cb(w)?;
    let (r, c) = (rows as u64, cols as u64);
    if r == 0 || c == 0 {
        bail!("spectral_norm: empty weight ({rows}x{cols})");
    }
    let mut sigma = be.alloc(1)?;
    let mut wv = be.alloc(rows)?;
    if update {
        // v = normalize(W^T u)
        let mut t = be.alloc(cols)?;
        {
            let u = cb(u)?;
            let cfg = be.grid(c);
            launch!(
                be,
                sn_wt_u_f32,
                cfg,
                w.slice(),
                u.slice(),
                &r,
                &c,
                t.slice_mut()
            )?;
        }
        let v = cb_mut(v)?;
        launch!(
            be,
            sn_normalize_f32,
            CudaBackend::single_block(1024),
            t.slice(),
            &c,
            &eps,
            v.slice_mut()
        )?;
    }
    {
        let v = cb(v)?;
        let cfg = be.per_row(r, CudaBackend::reduce_threads(c));
        launch!(
            be,
            sn_w_v_f32,
            cfg,
            w.slice(),
            v.slice(),
            &r,
            &c,
            wv.slice_mut()
        )?;
    }
    let u = cb_mut(u)?;
    if update {
        // u = normalize(W v)
        launch!(
            be,
            sn_normalize_f32,
            CudaBackend::single_block(1024),
            wv.slice(),
            &r,
            &eps,
            u.slice_mut()
        )?;
    }
    launch!(
        be,
        sn_sigma_f32,
        CudaBackend::single_block(1024),
        u.slice(),
        wv.slice(),
        &r,
        sigma.slice_mut()
    )?;
    Ok(Storage::Cuda(sigma))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn spectral_norm_backward(
    be: &CudaBackend,
    w: &Storage,
    g: &Storage,
    u: &Storage,
    v: &Storage,
    sigma: &Storage,
    rows: usize,
    cols: usize,
) -> Result<Storage> {
    let (w, g, u, v, sigma) = (cb(w)?, cb(g)?, cb(u)?, cb(v)?, cb(sigma)?);
    let (r, c) = (rows as u64, cols as u64);
    let mut dw = be.alloc(rows * cols)?;
    if r * c > 0 {
        let gw = super::reduce::dot(be, g, w)?;
        let cfg = be.grid(r * c);
        launch!(
            be,
            sn_backward_f32,
            cfg,
            g.slice(),
            u.slice(),
            v.slice(),
            sigma.slice(),
            gw.slice(),
            &r,
            &c,
            dw.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(dw))
}

impl SpectralNormBackend for CudaBackend {
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
        spectral_norm_sigma(self, w, u, v, rows, cols, eps, update)
    }
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
        spectral_norm_backward(self, w, g, u, v, sigma, rows, cols)
    }
}
