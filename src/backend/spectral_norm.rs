//! Spectral norm: the family's backend trait. Its autograd ops are `crate::ops::spectral_norm`, its
//! kernels `kernels/spectral_norm.cu` (launched by `cuda/spectral_norm.rs`), its reference
//! `reference/spectral_norm.rs`.

use super::reference::spectral_norm as reference;
use super::{all_on_host, Storage};
use anyhow::Result;

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
