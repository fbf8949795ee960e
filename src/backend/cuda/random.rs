//! Launches of `kernels/random.cu`: dropout masks and Gaussian noise from the counter-based
//! Philox generator of `crate::rng` (same values as the CPU). Autograd: `src/ops/random.rs`.

use super::{cb, CudaBackend};
use crate::backend::*;
use anyhow::Result;
use cudarc::driver::PushKernelArg;

/// Where a kernel takes its seed (and noise std) from: the launch's arguments, or a device
/// buffer laid out by [`seed_values`] (the form a CUDA graph replays).
pub(super) enum SeedFrom<'a> {
    Args { seed: u64, std: f32 },
    Device(&'a Storage),
}

pub(super) fn dropout_mask(
    be: &CudaBackend,
    len: usize,
    p: f32,
    seed: SeedFrom,
    first: u64,
) -> Result<Storage> {
    let mut out = be.alloc(len)?;
    // The same f32 expressions as crate::rng::dropout_value_at.
    let keep = 1.0f32 - p;
    let scale = 1.0f32 / (1.0f32 - p);
    let n = len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        match seed {
            SeedFrom::Args { seed, .. } => launch!(
                be,
                dropout_mask_f32,
                cfg,
                out.slice_mut(),
                &n,
                &seed,
                &first,
                &keep,
                &scale
            )?,
            SeedFrom::Device(v) => launch!(
                be,
                dropout_mask_by_f32,
                cfg,
                out.slice_mut(),
                &n,
                cb(v)?.slice(),
                &first,
                &keep,
                &scale
            )?,
        }
    }
    Ok(Storage::Cuda(out))
}

pub(super) fn add_gaussian_noise(
    be: &CudaBackend,
    x: &Storage,
    seed: SeedFrom,
    first: u64,
) -> Result<Storage> {
    let x = cb(x)?;
    let mut out = be.alloc(x.len)?;
    let n = x.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        match seed {
            SeedFrom::Args { seed, std } => launch!(
                be,
                gaussian_noise_f32,
                cfg,
                x.slice(),
                out.slice_mut(),
                &n,
                &seed,
                &first,
                &std
            )?,
            SeedFrom::Device(v) => launch!(
                be,
                gaussian_noise_by_f32,
                cfg,
                x.slice(),
                out.slice_mut(),
                &n,
                cb(v)?.slice(),
                &first
            )?,
        }
    }
    Ok(Storage::Cuda(out))
}

impl RandomBackend for CudaBackend {
    fn dropout_mask(&self, len: usize, p: f32, seed: u64, first: u64) -> Result<Storage> {
        dropout_mask(self, len, p, SeedFrom::Args { seed, std: 0.0 }, first)
    }
    fn add_gaussian_noise(&self, x: &Storage, std: f32, seed: u64, first: u64) -> Result<Storage> {
        add_gaussian_noise(self, x, SeedFrom::Args { seed, std }, first)
    }
    fn dropout_mask_by(
        &self,
        len: usize,
        p: f32,
        _seed: u64,
        first: u64,
        values: &Storage,
    ) -> Result<Storage> {
        dropout_mask(self, len, p, SeedFrom::Device(values), first)
    }
    fn add_gaussian_noise_by(
        &self,
        x: &Storage,
        _std: f32,
        _seed: u64,
        first: u64,
        values: &Storage,
    ) -> Result<Storage> {
        add_gaussian_noise(self, x, SeedFrom::Device(values), first)
    }
}
