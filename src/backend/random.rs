//! Dropout masks and Gaussian noise: the family's backend trait. Its autograd ops are
//! `crate::ops::random`, its kernels `kernels/random.cu` (launched by `cuda/random.rs`), its
//! reference `reference/random.rs`.

use super::reference::random as reference;
use super::{all_on_host, Storage};
use anyhow::Result;

/// Random masks and noise, counter-based: element i depends only on seed and `first + i` (see
/// `crate::rng`), where `first` is the index of the tensor's first element in the whole
/// batch's tensor (0, but for a part of the batch on one GPU of several: the part then draws
/// what one GPU would for those elements). The defaults run the reference
/// (`backend/reference/random.rs`) on host memory.
pub trait RandomBackend {
    /// Inverted-dropout mask: `1/(1-p)` where kept, else 0.
    fn dropout_mask(&self, len: usize, p: f32, seed: u64, first: u64) -> Result<Storage> {
        reference::dropout_mask(len, p, seed, first)
    }
    /// `x + std * N(0, 1)`.
    fn add_gaussian_noise(&self, x: &Storage, std: f32, seed: u64, first: u64) -> Result<Storage> {
        all_on_host("add_gaussian_noise", &[x])?;
        reference::add_gaussian_noise(x, std, seed, first)
    }
    /// [`RandomBackend::dropout_mask`] with the seed already in `values` (written before the
    /// step; layout: [`crate::backend::seed_values`]), which must hold the same seed: the form
    /// a CUDA graph replays (the seed changes every step, a graph's arguments cannot). The host
    /// backends ignore `values`.
    fn dropout_mask_by(
        &self,
        len: usize,
        p: f32,
        seed: u64,
        first: u64,
        values: &Storage,
    ) -> Result<Storage> {
        let _ = values;
        self.dropout_mask(len, p, seed, first)
    }
    /// [`RandomBackend::add_gaussian_noise`] with the seed and std already in `values` (layout:
    /// [`crate::backend::seed_values`]), like [`RandomBackend::dropout_mask_by`].
    fn add_gaussian_noise_by(
        &self,
        x: &Storage,
        std: f32,
        seed: u64,
        first: u64,
        values: &Storage,
    ) -> Result<Storage> {
        let _ = values;
        self.add_gaussian_noise(x, std, seed, first)
    }
}
