//! Launches of `kernels/reduce.cu`: row sums and broadcasts, channel bias and channel sums,
//! and the two-stage dot product spectral norm uses. No autograd of its own: these are helpers
//! of the other families (`src/ops/elementwise.rs`, `src/ops/conv.rs`, `src/ops/spectral_norm.rs`).

use super::{cb, CudaBackend, CudaBuffer, BLOCK};
use crate::backend::*;
use anyhow::Result;
use cudarc::driver::PushKernelArg;

/// `sum(a * b)` into a one-element buffer: two deterministic stages (fixed grid for a
/// given length, then one block over the partials).
pub(super) fn dot(be: &CudaBackend, a: &CudaBuffer, b: &CudaBuffer) -> Result<CudaBuffer> {
    let n = a.len as u64;
    let cfg = be.grid(n);
    let parts = u64::from(cfg.grid_dim.0);
    let mut partials = be.alloc(parts as usize)?;
    let mut out = be.alloc(1)?;
    launch!(
        be,
        dot_partials_f32,
        cfg,
        a.slice(),
        b.slice(),
        &n,
        partials.slice_mut()
    )?;
    launch!(
        be,
        sum_partials_f32,
        CudaBackend::single_block(BLOCK),
        partials.slice(),
        &parts,
        out.slice_mut()
    )?;
    Ok(out)
}

pub(super) fn sum_rows(
    be: &CudaBackend,
    x: &Storage,
    rows: usize,
    cols: usize,
    alpha: f32,
) -> Result<Storage> {
    let x = cb(x)?;
    let mut out = be.alloc(rows)?;
    let (r, c) = (rows as u64, cols as u64);
    if r > 0 {
        let cfg = be.per_row(r, CudaBackend::reduce_threads(c));
        launch!(
            be,
            sum_rows_f32,
            cfg,
            x.slice(),
            &r,
            &c,
            &alpha,
            out.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(out))
}

pub(super) fn broadcast_rows(
    be: &CudaBackend,
    g: &Storage,
    rows: usize,
    cols: usize,
    alpha: f32,
) -> Result<Storage> {
    let g = cb(g)?;
    let mut out = be.alloc(rows * cols)?;
    let (r, c) = (rows as u64, cols as u64);
    if r * c > 0 {
        let cfg = be.grid(r * c);
        launch!(
            be,
            broadcast_rows_f32,
            cfg,
            g.slice(),
            &r,
            &c,
            &alpha,
            out.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(out))
}

pub(super) fn add_channel_bias(
    be: &CudaBackend,
    y: &Storage,
    b: &Storage,
    d: ChannelDims,
) -> Result<Storage> {
    let (y, b) = (cb(y)?, cb(b)?);
    let mut out = be.alloc(d.len())?;
    let (c, hw, total) = (d.c as u64, d.hw as u64, d.len() as u64);
    if total > 0 {
        let cfg = be.grid(total);
        launch!(
            be,
            add_channel_bias_f32,
            cfg,
            y.slice(),
            b.slice(),
            &c,
            &hw,
            out.slice_mut(),
            &total
        )?;
    }
    Ok(Storage::Cuda(out))
}

pub(super) fn channel_sum(be: &CudaBackend, dy: &Storage, d: ChannelDims) -> Result<Storage> {
    let dy = cb(dy)?;
    let mut out = be.alloc(d.c)?;
    let (n, c, hw) = (d.n as u64, d.c as u64, d.hw as u64);
    if c > 0 {
        let cfg = be.per_row(c, CudaBackend::reduce_threads(n * hw));
        launch!(
            be,
            channel_sum_f32,
            cfg,
            dy.slice(),
            &n,
            &c,
            &hw,
            out.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(out))
}

impl ReduceBackend for CudaBackend {
    fn sum_rows(&self, x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        sum_rows(self, x, rows, cols, alpha)
    }
    fn broadcast_rows(&self, g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        broadcast_rows(self, g, rows, cols, alpha)
    }
    fn add_channel_bias(&self, y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage> {
        add_channel_bias(self, y, b, d)
    }
    fn channel_sum(&self, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        channel_sum(self, dy, d)
    }
}
