//! Dropout masks and Gaussian noise, reference: the counter-based generator of `crate::rng`
//! element by element (`kernels/random.cu` computes the same values). Autograd: `src/ops/random.rs`.

use super::host;
use crate::backend::*;
use crate::rng;
use anyhow::Result;

pub(crate) fn dropout_mask(len: usize, p: f32, seed: u64, first: u64) -> Result<Storage> {
    Ok(Storage::Cpu(
        (first..first + len as u64)
            .map(|i| rng::dropout_value_at(seed, i, p))
            .collect(),
    ))
}

pub(crate) fn add_gaussian_noise(x: &Storage, std: f32, seed: u64, first: u64) -> Result<Storage> {
    Ok(Storage::Cpu(
        host(x)?
            .iter()
            .zip(first..)
            .map(|(&v, i)| v + std * rng::normal_at(seed, i))
            .collect(),
    ))
}
