//! CUDA launches of the conditional-model and DiffAugment ops (`kernels/conditional.cu`);
//! the trait methods in `mod.rs` dispatch here.
//! Autograd: `src/ops/conditional.rs`.

use super::{cb, CudaBackend};
use crate::backend::{ChannelDims, Storage};
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
            "embedding_f32",
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
            "embedding_backward_f32",
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
            "channel_affine_f32",
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
            "channel_affine_dx_f32",
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
            "channel_affine_reduce_f32",
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
            "row_dot_f32",
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
            "row_dot_backward_f32",
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

pub(super) fn diffaug_color(
    be: &CudaBackend,
    x: &Storage,
    params: &Storage,
    d: ChannelDims,
    brightness: bool,
) -> Result<Storage> {
    let (x, params) = (cb(x)?, cb(params)?);
    if params.len != d.n * 3 || x.len != d.len() {
        bail!(
            "diffaug_color: {} parameters for {} images",
            params.len,
            d.n
        );
    }
    let (n, c, hw) = (d.n as u64, d.c as u64, d.hw as u64);
    let flag: i32 = brightness.into();
    let mut y = be.alloc(d.len())?;
    if !d.is_empty() {
        let cfg = be.per_row(n, CudaBackend::reduce_threads(c * hw));
        launch!(
            be,
            "diffaug_color_f32",
            cfg,
            x.slice(),
            params.slice(),
            &n,
            &c,
            &hw,
            &flag,
            y.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(y))
}

/// `kernel` is "diffaug_translate_f32" (4 values per image: 2 used) or the cutout.
fn geometric(
    be: &CudaBackend,
    kernel: &'static str,
    x: &Storage,
    per_image: &Storage,
    width: usize,
    dims: [usize; 4],
) -> Result<Storage> {
    let (x, p) = (cb(x)?, cb(per_image)?);
    let [n, c, h, w] = dims;
    if p.len != n * width || x.len != n * c * h * w {
        bail!(
            "{kernel}: {} parameters for {n} images of {c}x{h}x{w}",
            p.len
        );
    }
    let (c, h, w, total) = (c as u64, h as u64, w as u64, x.len as u64);
    let mut y = be.alloc(x.len)?;
    if total > 0 {
        let cfg = be.grid(total);
        let f = be.func(kernel)?;
        let mut b = be.stream.launch_builder(f);
        b.arg(x.slice());
        b.arg(p.slice());
        b.arg(&c);
        b.arg(&h);
        b.arg(&w);
        b.arg(&total);
        b.arg(y.slice_mut());
        // SAFETY: both kernels take (const float*, const float*, u64, u64, u64, u64, float*).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| super::err::drv(e, kernel))?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn diffaug_translate(
    be: &CudaBackend,
    x: &Storage,
    shifts: &Storage,
    dims: [usize; 4],
) -> Result<Storage> {
    geometric(be, "diffaug_translate_f32", x, shifts, 2, dims)
}

pub(super) fn diffaug_cutout(
    be: &CudaBackend,
    x: &Storage,
    boxes: &Storage,
    dims: [usize; 4],
) -> Result<Storage> {
    geometric(be, "diffaug_cutout_f32", x, boxes, 4, dims)
}
