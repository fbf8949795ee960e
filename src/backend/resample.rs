//! Resampling of NCHW images (nearest upsampling, adaptive average pooling, cropping): the
//! family's backend trait. Its autograd ops are `crate::ops::resample`, its kernels
//! `kernels/resample.cu` (launched by `cuda/resample.rs`), its reference
//! `reference/resample.rs`.

use super::reference::resample as reference;
use super::{all_on_host, ImageDims, Storage, Window};
use anyhow::Result;

/// Resampling, f32 only. `d` is always the input's dims. The defaults run the reference
/// (`backend/reference/resample.rs`) on host memory; the fast CPU backend uses them too (these
/// ops move little data next to the convolutions around them).
pub trait ResampleBackend {
    /// Nearest-neighbour upsampling by an integer `scale` (PyTorch's `F.interpolate(x,
    /// scale_factor=scale, mode="nearest")`): `y[n, c, i, j] = x[n, c, i / scale, j / scale]`,
    /// `[n, c, h·scale, w·scale]`.
    fn upsample_nearest(&self, x: &Storage, d: ImageDims, scale: usize) -> Result<Storage> {
        all_on_host("upsample_nearest", &[x])?;
        reference::upsample_nearest(x, d, scale)
    }
    /// dx (`d`) of [`ResampleBackend::upsample_nearest`]: each input pixel's `scale x scale`
    /// block of `dy` summed.
    fn upsample_nearest_backward(
        &self,
        dy: &Storage,
        d: ImageDims,
        scale: usize,
    ) -> Result<Storage> {
        all_on_host("upsample_nearest_backward", &[dy])?;
        reference::upsample_nearest_backward(dy, d, scale)
    }
    /// Adaptive average pooling to `oh x ow` (PyTorch's `F.adaptive_avg_pool2d`): output row
    /// `i` averages input rows `floor(i·h/oh) .. ceil((i+1)·h/oh)`, columns likewise.
    fn adaptive_avg_pool(
        &self,
        x: &Storage,
        d: ImageDims,
        oh: usize,
        ow: usize,
    ) -> Result<Storage> {
        all_on_host("adaptive_avg_pool", &[x])?;
        reference::adaptive_avg_pool(x, d, oh, ow)
    }
    /// dx (`d`) of [`ResampleBackend::adaptive_avg_pool`]: each input pixel gets `dy / bin
    /// size` of every bin that covers it.
    fn adaptive_avg_pool_backward(
        &self,
        dy: &Storage,
        d: ImageDims,
        oh: usize,
        ow: usize,
    ) -> Result<Storage> {
        all_on_host("adaptive_avg_pool_backward", &[dy])?;
        reference::adaptive_avg_pool_backward(dy, d, oh, ow)
    }
    /// The window `win` of every plane: `[n, c, win.h, win.w]` (the caller checks it fits).
    fn crop(&self, x: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
        all_on_host("crop", &[x])?;
        reference::crop(x, d, win)
    }
    /// dx (`d`) of [`ResampleBackend::crop`]: `dy` inside the window, zeros outside.
    fn crop_backward(&self, dy: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
        all_on_host("crop_backward", &[dy])?;
        reference::crop_backward(dy, d, win)
    }
}
