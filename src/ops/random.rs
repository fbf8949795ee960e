//! Training-only regularisers: dropout and additive Gaussian noise. Both draw from the
//! counter-based generator (`crate::rng`), so a given seed gives the same mask on every backend.
//! Kernels: `kernels/random.cu` (launches in `backend/cuda/random.rs`, reference in
//! `backend/reference/random.rs`).

use super::{check_dtypes, F32};
use crate::backend::Storage;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// The seed of one dropout mask or noise draw. For a training step that a CUDA graph replays,
/// `on_device` holds it too (with the noise std; layout [`crate::backend::seed_values`],
/// written before the step), and the kernels read it from there: a replay then uses each
/// step's own seed instead of the one seen at capture.
/// `part`: the rank of this tensor's part of the whole batch's tensor (0 on one device; see
/// `crate::train::parallel`): the draw then starts at element `part · numel` of the whole.
#[derive(Clone)]
pub struct Seed {
    pub value: u64,
    pub on_device: Option<Tensor>,
    pub part: usize,
}

impl From<u64> for Seed {
    fn from(value: u64) -> Self {
        Seed {
            value,
            on_device: None,
            part: 0,
        }
    }
}

impl Seed {
    /// The index of `x`'s first element in the whole batch's tensor.
    fn first(&self, x: &Tensor) -> u64 {
        (self.part * x.numel()) as u64
    }
}

/// Inverted dropout with drop probability `p`; the identity when not training.
pub fn dropout(x: &Tensor, p: f32, seed: impl Into<Seed>, training: bool) -> Result<Tensor> {
    check_dtypes("dropout", &[("input", x)], F32)?;
    if !(0.0..1.0).contains(&p) {
        bail!("dropout: probability {p} outside [0, 1)");
    }
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let be = x.backend();
    let seed = seed.into();
    let first = seed.first(x);
    let mask = match seed {
        Seed {
            value,
            on_device: Some(v),
            ..
        } => be.dropout_mask_by(x.numel(), p, value, first, &v.storage())?,
        Seed { value, .. } => be.dropout_mask(x.numel(), p, value, first)?,
    };
    let y = be.mul(&x.storage(), &mask)?;
    Tensor::from_op(
        y,
        x.shape(),
        "dropout",
        &[x],
        move |g: &Storage, _: &[bool]| Ok(vec![Some(be.mul(g, &mask)?)]),
    )
}

/// `x + std·N(0, 1)` when training; the identity otherwise (and when `std` is 0).
pub fn gaussian_noise(
    x: &Tensor,
    std: f32,
    seed: impl Into<Seed>,
    training: bool,
) -> Result<Tensor> {
    check_dtypes("gaussian_noise", &[("input", x)], F32)?;
    if !(std >= 0.0 && std.is_finite()) {
        bail!("gaussian_noise: std {std} must be finite and non-negative");
    }
    if !training || std == 0.0 {
        return Ok(x.clone());
    }
    let be = x.backend();
    let seed = seed.into();
    let first = seed.first(x);
    let y = match seed {
        Seed {
            value,
            on_device: Some(v),
            ..
        } => be.add_gaussian_noise_by(&x.storage(), std, value, first, &v.storage())?,
        Seed { value, .. } => be.add_gaussian_noise(&x.storage(), std, value, first)?,
    };
    Tensor::from_op(
        y,
        x.shape(),
        "gaussian_noise",
        &[x],
        move |g: &Storage, _: &[bool]| Ok(vec![Some(be.copy(g)?)]),
    )
}
