//! Resampling ops on NCHW f32 tensors, PyTorch's semantics: nearest upsampling by an integer
//! factor, adaptive average pooling, and a crop of one window of every image (FastGAN's
//! decoder and its random-quarter reconstruction). Each backward is a gather the backends do
//! deterministically.

use super::{check_dtypes, nchw, F32};
use crate::backend::{ImageDims, Storage, Window};
use crate::tensor::Tensor;
use anyhow::{bail, Result};

fn image_dims(op: &str, x: &Tensor) -> Result<ImageDims> {
    check_dtypes(op, &[("input", x)], F32)?;
    let [n, c, h, w] = nchw(op, x)?;
    Ok(ImageDims { n, c, h, w })
}

/// `F.interpolate(x, scale_factor=scale, mode="nearest")` for an integer `scale >= 1`:
/// `[N, C, H, W]` → `[N, C, H·scale, W·scale]`, each pixel repeated in a `scale x scale`
/// block. The gradient of a pixel is the sum of its block's.
pub fn upsample_nearest2d(x: &Tensor, scale: usize) -> Result<Tensor> {
    let op = "upsample_nearest2d";
    let d = image_dims(op, x)?;
    if scale == 0 {
        bail!("{op}: the scale factor must be at least 1, got 0");
    }
    let be = x.backend();
    let y = be.upsample_nearest(&x.storage(), d, scale)?;
    let out = [d.n, d.c, d.h * scale, d.w * scale];
    Tensor::from_op(y, &out, op, &[x], move |g: &Storage, _: &[bool]| {
        Ok(vec![Some(be.upsample_nearest_backward(g, d, scale)?)])
    })
}

/// `F.adaptive_avg_pool2d(x, (oh, ow))`: output row `i` is the mean over input rows
/// `floor(i·H/oh) .. ceil((i+1)·H/oh)` (columns likewise), so bins overlap when `oh` does not
/// divide `H` and repeat rows when `oh > H`. The gradient spreads `dy / bin size` over each bin.
pub fn adaptive_avg_pool2d(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let op = "adaptive_avg_pool2d";
    let d = image_dims(op, x)?;
    if oh == 0 || ow == 0 || d.h == 0 || d.w == 0 {
        bail!(
            "{op}: cannot pool input {:?} to {oh}x{ow} (every size must be at least 1)",
            x.shape()
        );
    }
    let be = x.backend();
    let y = be.adaptive_avg_pool(&x.storage(), d, oh, ow)?;
    Tensor::from_op(
        y,
        &[d.n, d.c, oh, ow],
        op,
        &[x],
        move |g: &Storage, _: &[bool]| Ok(vec![Some(be.adaptive_avg_pool_backward(g, d, oh, ow)?)]),
    )
}

/// `x[:, :, top:top+h, left:left+w]`: one window for the whole batch. A window that does not
/// fit in the input is an error. The gradient is `dy` inside the window, zeros outside.
pub fn crop2d(x: &Tensor, top: usize, left: usize, h: usize, w: usize) -> Result<Tensor> {
    let op = "crop2d";
    let d = image_dims(op, x)?;
    if top.saturating_add(h) > d.h || left.saturating_add(w) > d.w {
        bail!(
            "{op}: the window rows {top}..{}, columns {left}..{} does not fit in input {:?} \
             ({}x{} images)",
            top.saturating_add(h),
            left.saturating_add(w),
            x.shape(),
            d.h,
            d.w
        );
    }
    let win = Window { top, left, h, w };
    let be = x.backend();
    let y = be.crop(&x.storage(), d, win)?;
    Tensor::from_op(
        y,
        &[d.n, d.c, h, w],
        op,
        &[x],
        move |g: &Storage, _: &[bool]| Ok(vec![Some(be.crop_backward(g, d, win)?)]),
    )
}
