//! DiffAugment: the family's backend trait. Its autograd ops are `crate::ops::diffaug`, its kernels
//! `kernels/diffaug.cu` (launched by `cuda/diffaug.rs`), its reference `reference/diffaug.rs`.

use super::reference::diffaug as reference;
use super::{on_host, ChannelDims, Storage};
use anyhow::Result;

/// DiffAugment (Zhao et al. 2020) on NCHW images, per-sample parameters given. The defaults
/// run the reference (`backend/reference/diffaug.rs`) on host memory.
pub trait DiffAugBackend {
    /// Colour: per sample n with `params[n] = (brightness shift, saturation factor, contrast
    /// factor)`: `x1 = x + b` (only when `brightness`), `x2 = (x1 - mean_c x1) * s + mean_c x1`,
    /// `y = (x2 - mean_chw x2) * k + mean_chw x2`. Without brightness the map is linear and
    /// self-adjoint, so it is also its own backward.
    fn diffaug_color(
        &self,
        x: &Storage,
        params: &Storage,
        d: ChannelDims,
        brightness: bool,
    ) -> Result<Storage> {
        let op = "diffaug_color";
        reference::diffaug_color(on_host(op, x)?, on_host(op, params)?, d, brightness)
            .map(Storage::Cpu)
    }
    /// Translation with zero padding: `y[n, c, i, j] = x[n, c, i + sy, j + sx]` (0 outside),
    /// `shifts[n] = (sy, sx)` whole numbers held as f32. The backward is the same op with the
    /// shifts negated. `dims` = [n, c, h, w].
    fn diffaug_translate(
        &self,
        x: &Storage,
        shifts: &Storage,
        dims: [usize; 4],
    ) -> Result<Storage> {
        let op = "diffaug_translate";
        reference::diffaug_translate(on_host(op, x)?, on_host(op, shifts)?, dims).map(Storage::Cpu)
    }
    /// Cutout: zero where `y0 <= i < y1 && x0 <= j < x1`, `boxes[n] = (y0, y1, x0, x1)` as
    /// f32; a mask, so it is its own backward. `dims` = [n, c, h, w].
    fn diffaug_cutout(&self, x: &Storage, boxes: &Storage, dims: [usize; 4]) -> Result<Storage> {
        let op = "diffaug_cutout";
        reference::diffaug_cutout(on_host(op, x)?, on_host(op, boxes)?, dims).map(Storage::Cpu)
    }
}
