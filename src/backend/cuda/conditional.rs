//! CUDA launches of the conditional-model ops (`kernels/conditional.cu`); the family traits'
//! methods in `mod.rs` dispatch here.
//! Autograd: `src/ops/conditional.rs`.

use super::{cb, CudaBackend};
use crate::backend::reference::conditional::check_gate;
use crate::backend::{ChannelDims, ConditionalBackend, Storage};
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

pub(super) fn embedding(
    be: &CudaBackend,
    table: &Storage,
    labels: &Storage,
    classes: usize,
    dim: usize,
) -> Result<Storage> {
    let (table, labels) = (cb(table)?, cb(labels)?);
    if table.len != classes * dim {
        bail!("embedding: table of {} is not {classes}x{dim}", table.len);
    }
    let (batch, d) = (labels.len as u64, dim as u64);
    let mut out = be.alloc(labels.len * dim)?;
    if batch * d > 0 {
        let cfg = be.grid(batch * d);
        launch!(
            be,
            embedding_f32,
            cfg,
            table.slice(),
            labels.slice(),
            &batch,
            &d,
            out.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(out))
}

pub(super) fn embedding_backward(
    be: &CudaBackend,
    dy: &Storage,
    labels: &Storage,
    classes: usize,
    dim: usize,
) -> Result<Storage> {
    let (dy, labels) = (cb(dy)?, cb(labels)?);
    if dy.len != labels.len * dim {
        bail!(
            "embedding_backward: dy of {} is not {}x{dim}",
            dy.len,
            labels.len
        );
    }
    let (batch, k, d) = (labels.len as u64, classes as u64, dim as u64);
    let mut out = be.alloc(classes * dim)?;
    if k * d > 0 {
        let cfg = be.grid(k * d);
        launch!(
            be,
            embedding_backward_f32,
            cfg,
            dy.slice(),
            labels.slice(),
            &batch,
            &k,
            &d,
            out.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(out))
}

pub(super) fn channel_affine(
    be: &CudaBackend,
    x: &Storage,
    scale: &Storage,
    shift: &Storage,
    d: ChannelDims,
) -> Result<Storage> {
    let (x, scale, shift) = (cb(x)?, cb(scale)?, cb(shift)?);
    if scale.len != d.n * d.c || shift.len != d.n * d.c {
        bail!(
            "channel_affine: scale/shift must hold {}x{} values",
            d.n,
            d.c
        );
    }
    let (hw, total) = (d.hw as u64, d.len() as u64);
    let mut y = be.alloc(d.len())?;
    if total > 0 {
        let cfg = be.grid(total);
        launch!(
            be,
            channel_affine_f32,
            cfg,
            x.slice(),
            scale.slice(),
            shift.slice(),
            &hw,
            &total,
            y.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn channel_affine_backward(
    be: &CudaBackend,
    x: &Storage,
    dy: &Storage,
    scale: &Storage,
    d: ChannelDims,
) -> Result<(Storage, Storage, Storage)> {
    let (x, dy, scale) = (cb(x)?, cb(dy)?, cb(scale)?);
    if scale.len != d.n * d.c {
        bail!(
            "channel_affine_backward: scale must hold {}x{} values",
            d.n,
            d.c
        );
    }
    let (hw, total, rows) = (d.hw as u64, d.len() as u64, (d.n * d.c) as u64);
    let mut dx = be.alloc(d.len())?;
    let mut dscale = be.alloc(d.n * d.c)?;
    let mut dshift = be.alloc(d.n * d.c)?;
    if total > 0 {
        let cfg = be.grid(total);
        launch!(
            be,
            channel_affine_dx_f32,
            cfg,
            dy.slice(),
            scale.slice(),
            &hw,
            &total,
            dx.slice_mut()
        )?;
    }
    if rows > 0 {
        let cfg = be.per_row(rows, CudaBackend::reduce_threads(hw));
        launch!(
            be,
            channel_affine_reduce_f32,
            cfg,
            x.slice(),
            dy.slice(),
            &rows,
            &hw,
            dscale.slice_mut(),
            dshift.slice_mut()
        )?;
    }
    Ok((
        Storage::Cuda(dx),
        Storage::Cuda(dscale),
        Storage::Cuda(dshift),
    ))
}

pub(super) fn channel_gate(
    be: &CudaBackend,
    x: &Storage,
    g: &Storage,
    d: ChannelDims,
) -> Result<Storage> {
    let (x, g) = (cb(x)?, cb(g)?);
    check_gate("channel_gate", x.len, g.len, None, d)?;
    let (hw, total) = (d.hw as u64, d.len() as u64);
    let mut y = be.alloc(d.len())?;
    if total > 0 {
        let cfg = be.grid(total);
        let (x, g, y) = (x.slice(), g.slice(), y.slice_mut());
        launch!(be, channel_gate_f32, cfg, x, g, &hw, &total, y)?;
    }
    Ok(Storage::Cuda(y))
}

/// dx by channel_affine's dx kernel (the gate is its scale), dg by one block per (n, c).
pub(super) fn channel_gate_backward(
    be: &CudaBackend,
    x: &Storage,
    g: &Storage,
    dy: &Storage,
    d: ChannelDims,
) -> Result<(Storage, Storage)> {
    let (x, g, dy) = (cb(x)?, cb(g)?, cb(dy)?);
    check_gate("channel_gate_backward", x.len, g.len, Some(dy.len), d)?;
    let (hw, total, rows) = (d.hw as u64, d.len() as u64, (d.n * d.c) as u64);
    let mut dx = be.alloc(d.len())?;
    let mut dg = be.alloc(d.n * d.c)?;
    if total > 0 {
        let cfg = be.grid(total);
        let (dy, g, dx) = (dy.slice(), g.slice(), dx.slice_mut());
        launch!(be, channel_affine_dx_f32, cfg, dy, g, &hw, &total, dx)?;
    }
    if rows > 0 {
        let cfg = be.per_row(rows, CudaBackend::reduce_threads(hw));
        let (x, dy, dg) = (x.slice(), dy.slice(), dg.slice_mut());
        launch!(be, channel_gate_dg_f32, cfg, x, dy, &rows, &hw, dg)?;
    }
    Ok((Storage::Cuda(dx), Storage::Cuda(dg)))
}

pub(super) fn row_dot(
    be: &CudaBackend,
    a: &Storage,
    b: &Storage,
    rows: usize,
    cols: usize,
) -> Result<Storage> {
    let (a, b) = (cb(a)?, cb(b)?);
    if a.len != rows * cols || b.len != rows * cols {
        bail!(
            "row_dot: {} and {} elements, expected {rows}x{cols}",
            a.len,
            b.len
        );
    }
    let (r, c) = (rows as u64, cols as u64);
    let mut out = be.alloc(rows)?;
    if r > 0 {
        let cfg = be.per_row(r, CudaBackend::reduce_threads(c));
        launch!(
            be,
            row_dot_f32,
            cfg,
            a.slice(),
            b.slice(),
            &r,
            &c,
            out.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(out))
}

pub(super) fn row_dot_backward(
    be: &CudaBackend,
    a: &Storage,
    b: &Storage,
    g: &Storage,
    rows: usize,
    cols: usize,
) -> Result<(Storage, Storage)> {
    let (a, b, g) = (cb(a)?, cb(b)?, cb(g)?);
    if g.len != rows || a.len != rows * cols || b.len != rows * cols {
        bail!("row_dot_backward: shapes do not agree with {rows}x{cols}");
    }
    let (c, total) = (cols as u64, (rows * cols) as u64);
    let mut da = be.alloc(rows * cols)?;
    let mut db = be.alloc(rows * cols)?;
    if total > 0 {
        let cfg = be.grid(total);
        launch!(
            be,
            row_dot_backward_f32,
            cfg,
            a.slice(),
            b.slice(),
            g.slice(),
            &c,
            &total,
            da.slice_mut(),
            db.slice_mut()
        )?;
    }
    Ok((Storage::Cuda(da), Storage::Cuda(db)))
}

impl ConditionalBackend for CudaBackend {
    fn embedding(
        &self,
        table: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        embedding(self, table, labels, classes, dim)
    }
    fn embedding_backward(
        &self,
        dy: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        embedding_backward(self, dy, labels, classes, dim)
    }
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        d: ChannelDims,
    ) -> Result<Storage> {
        channel_affine(self, x, scale, shift, d)
    }
    fn channel_affine_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        channel_affine_backward(self, x, dy, scale, d)
    }
    fn channel_gate(&self, x: &Storage, g: &Storage, d: ChannelDims) -> Result<Storage> {
        channel_gate(self, x, g, d)
    }
    fn channel_gate_backward(
        &self,
        x: &Storage,
        g: &Storage,
        dy: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage)> {
        channel_gate_backward(self, x, g, dy, d)
    }
    fn row_dot(&self, a: &Storage, b: &Storage, rows: usize, cols: usize) -> Result<Storage> {
        row_dot(self, a, b, rows, cols)
    }
    fn row_dot_backward(
        &self,
        a: &Storage,
        b: &Storage,
        g: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        row_dot_backward(self, a, b, g, rows, cols)
    }
}
