//! Exponential moving average of the generator's weights (Karras et al., StyleGAN/StyleGAN2
//! practice): sampling from the average gives smoother, better images than the raw weights,
//! which jitter from one step to the next.
//!
//! After each G step, with `n` the images G has been trained on so far and `B` the batch:
//! `half_life = min(half_life_images, rampup · n)` and `β = 0.5^(B / half_life)`;
//! `ema ← β·ema + (1 − β)·w` for every parameter. The ramp-up keeps the average from
//! remembering the random initial weights for long in short runs. Buffers (batch-norm running
//! statistics and their counter, spectral-norm vectors) are copied, not averaged.

use crate::nn::{Generator, Module, StateRef};
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

/// StyleGAN2's defaults: a half-life of 10k images, ramped up over the first 5 % of images.
pub const DEFAULT_HALF_LIFE_IMAGES: f64 = 10_000.0;
pub const DEFAULT_RAMPUP: f64 = 0.05;

/// The EMA decay for one update of `batch` images when G has seen `images_seen` (including
/// this batch).
pub fn decay(batch: usize, images_seen: u64, half_life_images: f64, rampup: Option<f64>) -> f64 {
    let mut half_life = half_life_images;
    if let Some(r) = rampup {
        half_life = half_life.min(r * images_seen as f64);
    }
    if half_life <= 0.0 {
        return 0.0;
    }
    0.5f64.powf(batch as f64 / half_life)
}

/// `ema ← β·ema + (1 − β)·w` on parameters, copy on buffers and counters.
pub fn update(ema: &Generator, g: &Generator, beta: f64) -> Result<()> {
    let _guard = crate::tensor::no_grad();
    let mut src: Vec<(String, StateRef)> = Vec::new();
    g.visit_state("", &mut |n, s| src.push((n, s)));
    let mut dst: Vec<(String, StateRef)> = Vec::new();
    ema.visit_state("", &mut |n, s| dst.push((n, s)));
    ensure!(
        src.len() == dst.len(),
        "EMA generator has another architecture"
    );
    let beta = beta as f32;
    for ((name, from), (_, to)) in src.iter().zip(&dst) {
        match (from, to) {
            (StateRef::Param(w), StateRef::Param(e)) => blend(e, w, beta)?,
            (StateRef::Buffer(w), StateRef::Buffer(e)) => copy(e, w)?,
            (StateRef::Count(w), StateRef::Count(e)) => e.set(w.get()),
            _ => anyhow::bail!("EMA generator: {name} differs in kind"),
        }
    }
    Ok(())
}

/// Makes every tensor of `ema` equal to `g`'s (the start of the average).
pub fn reset(ema: &Generator, g: &Generator) -> Result<()> {
    update(ema, g, 0.0)
}

fn blend(ema: &Tensor, w: &Tensor, beta: f32) -> Result<()> {
    // In place: no new storage per parameter per step.
    ema.backend()
        .scale_add_assign(&mut ema.storage_mut(), beta, &w.storage(), 1.0 - beta)
}

fn copy(dst: &Tensor, src: &Tensor) -> Result<()> {
    let next = src.backend().copy(&src.storage())?;
    *dst.storage_mut() = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_follows_the_half_life() {
        // Without ramp-up: after `half_life` images at batch 64 the old weights weigh 1/2.
        let beta = decay(64, 1_000_000, 6400.0, None);
        assert!((beta.powi(100) - 0.5).abs() < 1e-12);
        // Ramp-up shortens the half-life early on: 5 % of 64 images = 3.2 images.
        let early = decay(64, 64, 10_000.0, Some(0.05));
        assert!((early - 0.5f64.powf(64.0 / 3.2)).abs() < 1e-15);
        assert!(early < decay(64, 640_000, 10_000.0, Some(0.05)));
        assert_eq!(decay(64, 0, 10_000.0, Some(0.05)), 0.0);
    }
}
