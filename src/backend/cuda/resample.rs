//! Launches of `kernels/resample.cu`: nearest upsampling, adaptive average pooling and
//! cropping (f32), with the family trait's impl. The shape checks are the reference's, so
//! both backends refuse the same input with the same words. Autograd: `src/ops/resample.rs`.

use super::{cb, CudaBackend, CudaBuffer};
use crate::backend::reference::resample as reference;
use crate::backend::*;
use anyhow::Result;
use cudarc::driver::PushKernelArg;

/// The buffer of `s`, checked to hold `want` values.
fn sized<'a>(op: &str, what: &str, s: &'a Storage, want: usize) -> Result<&'a CudaBuffer> {
    let b = cb(s)?;
    reference::check_len(op, what, b.len, want)?;
    Ok(b)
}

fn upsample_nearest(be: &CudaBackend, x: &Storage, d: ImageDims, s: usize) -> Result<Storage> {
    reference::check_scale("upsample_nearest", s)?;
    let x = sized("upsample_nearest", "the input", x, d.len())?;
    let total = d.len() * s * s;
    let mut y = be.alloc(total)?;
    let (h, w, s, total) = (d.h as u64, d.w as u64, s as u64, total as u64);
    if total > 0 {
        let cfg = be.grid(total);
        let (x, y) = (x.slice(), y.slice_mut());
        launch!(be, upsample_nearest_f32, cfg, x, &h, &w, &s, &total, y)?;
    }
    Ok(Storage::Cuda(y))
}

fn upsample_nearest_backward(
    be: &CudaBackend,
    dy: &Storage,
    d: ImageDims,
    s: usize,
) -> Result<Storage> {
    let op = "upsample_nearest_backward";
    reference::check_scale(op, s)?;
    let dy = sized(op, "the gradient", dy, d.len() * s * s)?;
    let mut dx = be.alloc(d.len())?;
    let (h, w, s, total) = (d.h as u64, d.w as u64, s as u64, d.len() as u64);
    if total > 0 {
        let cfg = be.grid(total);
        let (dy, dx) = (dy.slice(), dx.slice_mut());
        launch!(
            be,
            upsample_nearest_backward_f32,
            cfg,
            dy,
            &h,
            &w,
            &s,
            &total,
            dx
        )?;
    }
    Ok(Storage::Cuda(dx))
}

fn adaptive_avg_pool(
    be: &CudaBackend,
    x: &Storage,
    d: ImageDims,
    oh: usize,
    ow: usize,
) -> Result<Storage> {
    reference::check_pool("adaptive_avg_pool", d, oh, ow)?;
    let x = sized("adaptive_avg_pool", "the input", x, d.len())?;
    let total = d.planes() * oh * ow;
    let mut y = be.alloc(total)?;
    let (h, w, oh, ow, total) = (d.h as u64, d.w as u64, oh as u64, ow as u64, total as u64);
    if total > 0 {
        let cfg = be.grid(total);
        let (x, y) = (x.slice(), y.slice_mut());
        launch!(
            be,
            adaptive_avg_pool_f32,
            cfg,
            x,
            &h,
            &w,
            &oh,
            &ow,
            &total,
            y
        )?;
    }
    Ok(Storage::Cuda(y))
}

fn adaptive_avg_pool_backward(
    be: &CudaBackend,
    dy: &Storage,
    d: ImageDims,
    oh: usize,
    ow: usize,
) -> Result<Storage> {
    let op = "adaptive_avg_pool_backward";
    reference::check_pool(op, d, oh, ow)?;
    let dy = sized(op, "the gradient", dy, d.planes() * oh * ow)?;
    let mut dx = be.alloc(d.len())?;
    let (h, w, oh, ow, total) = (d.h as u64, d.w as u64, oh as u64, ow as u64, d.len() as u64);
    if total > 0 {
        let cfg = be.grid(total);
        let (dy, dx) = (dy.slice(), dx.slice_mut());
        launch!(
            be,
            adaptive_avg_pool_backward_f32,
            cfg,
            dy,
            &h,
            &w,
            &oh,
            &ow,
            &total,
            dx
        )?;
    }
    Ok(Storage::Cuda(dx))
}

/// The window's bounds as the kernels take them.
fn window_args(d: ImageDims, win: Window) -> [u64; 6] {
    [d.h, d.w, win.top, win.left, win.h, win.w].map(|v| v as u64)
}

fn crop(be: &CudaBackend, x: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
    reference::check_window("crop", d, win)?;
    let x = sized("crop", "the input", x, d.len())?;
    let total = d.planes() * win.h * win.w;
    let mut y = be.alloc(total)?;
    let [h, w, top, left, ch, cw] = window_args(d, win);
    let total = total as u64;
    if total > 0 {
        let cfg = be.grid(total);
        let (x, y) = (x.slice(), y.slice_mut());
        launch!(be, crop_f32, cfg, x, &h, &w, &top, &left, &ch, &cw, &total, y)?;
    }
    Ok(Storage::Cuda(y))
}

fn crop_backward(be: &CudaBackend, dy: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
    let op = "crop_backward";
    reference::check_window(op, d, win)?;
    let dy = sized(op, "the gradient", dy, d.planes() * win.h * win.w)?;
    let mut dx = be.alloc(d.len())?;
    let [h, w, top, left, ch, cw] = window_args(d, win);
    let total = d.len() as u64;
    if total > 0 {
        let cfg = be.grid(total);
        let (dy, dx) = (dy.slice(), dx.slice_mut());
        launch!(
            be,
            crop_backward_f32,
            cfg,
            dy,
            &h,
            &w,
            &top,
            &left,
            &ch,
            &cw,
            &total,
            dx
        )?;
    }
    Ok(Storage::Cuda(dx))
}

impl ResampleBackend for CudaBackend {
    fn upsample_nearest(&self, x: &Storage, d: ImageDims, scale: usize) -> Result<Storage> {
        upsample_nearest(self, x, d, scale)
    }
    fn upsample_nearest_backward(
        &self,
        dy: &Storage,
        d: ImageDims,
        scale: usize,
    ) -> Result<Storage> {
        upsample_nearest_backward(self, dy, d, scale)
    }
    fn adaptive_avg_pool(
        &self,
        x: &Storage,
        d: ImageDims,
        oh: usize,
        ow: usize,
    ) -> Result<Storage> {
        adaptive_avg_pool(self, x, d, oh, ow)
    }
    fn adaptive_avg_pool_backward(
        &self,
        dy: &Storage,
        d: ImageDims,
        oh: usize,
        ow: usize,
    ) -> Result<Storage> {
        adaptive_avg_pool_backward(self, dy, d, oh, ow)
    }
    fn crop(&self, x: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
        crop(self, x, d, win)
    }
    fn crop_backward(&self, dy: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
        crop_backward(self, dy, d, win)
    }
}
