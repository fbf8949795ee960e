//! CUDA launches of DiffAugment (`kernels/diffaug.cu`). Autograd: `src/ops/diffaug.rs`.

use super::modules::names;
use super::{cb, CudaBackend};
use crate::backend::{ChannelDims, DiffAugBackend, Storage};
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

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
            diffaug_color_f32,
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
    geometric(be, names::diffaug_translate_f32, x, shifts, 2, dims)
}

pub(super) fn diffaug_cutout(
    be: &CudaBackend,
    x: &Storage,
    boxes: &Storage,
    dims: [usize; 4],
) -> Result<Storage> {
    geometric(be, names::diffaug_cutout_f32, x, boxes, 4, dims)
}

impl DiffAugBackend for CudaBackend {
    fn diffaug_color(
        &self,
        x: &Storage,
        params: &Storage,
        d: ChannelDims,
        brightness: bool,
    ) -> Result<Storage> {
        diffaug_color(self, x, params, d, brightness)
    }
    fn diffaug_translate(
        &self,
        x: &Storage,
        shifts: &Storage,
        dims: [usize; 4],
    ) -> Result<Storage> {
        diffaug_translate(self, x, shifts, dims)
    }
    fn diffaug_cutout(&self, x: &Storage, boxes: &Storage, dims: [usize; 4]) -> Result<Storage> {
        diffaug_cutout(self, x, boxes, dims)
    }
}
