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

/// β and 1 − β of one update on the device, as the update's kernels read them: written before
/// each step ([`DeviceDecay::set`]), so that a CUDA graph of the step (`graph_step`) replays
/// each step's own decay.
pub struct DeviceDecay {
    beta: Tensor,
    rest: Tensor,
}

impl DeviceDecay {
    pub fn new(device: crate::backend::Device) -> Result<Self> {
        Ok(DeviceDecay {
            beta: Tensor::zeros(&[1], device)?,
            rest: Tensor::zeros(&[1], device)?,
        })
    }

    /// The decay of the next update (queues a host-to-device copy).
    pub fn set(&self, beta: f64) -> Result<()> {
        let beta = beta as f32;
        for (t, v) in [(&self.beta, beta), (&self.rest, 1.0 - beta)] {
            t.backend().write(&mut t.storage_mut(), &[v])?;
        }
        Ok(())
    }
}

/// `ema ← β·ema + (1 − β)·w` on parameters, copy on buffers and counters.
pub fn update(ema: &Generator, g: &Generator, beta: f64) -> Result<()> {
    let beta = beta as f32;
    update_each(ema, g, |e, w| blend(e, w, beta))
}

/// [`update`] with the decay [`DeviceDecay::set`] wrote: device work only, every tensor of
/// `ema` updated in place.
pub fn update_by(ema: &Generator, g: &Generator, decay: &DeviceDecay) -> Result<()> {
    update_each(ema, g, |e, w| {
        e.backend().scale_add_assign_by(
            &mut e.storage_mut(),
            &decay.beta.storage(),
            &w.storage(),
            &decay.rest.storage(),
        )
    })
}

fn update_each(
    ema: &Generator,
    g: &Generator,
    blend: impl Fn(&Tensor, &Tensor) -> Result<()>,
) -> Result<()> {
    let _guard = crate::tensor::no_grad();
    let mut src: Vec<(String, StateRef)> = Vec::new();
    g.visit_state("", &mut |n, s| src.push((n, s)));
    let mut dst: Vec<(String, StateRef)> = Vec::new();
    ema.visit_state("", &mut |n, s| dst.push((n, s)));
    ensure!(
        src.len() == dst.len(),
        "EMA generator has another architecture"
    );
    for ((name, from), (_, to)) in src.iter().zip(&dst) {
        match (from, to) {
            (StateRef::Param(w), StateRef::Param(e)) => blend(e, w)?,
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
    // In place on the CUDA backend: a captured step writes the buffer it saw.
    src.backend()
        .copy_into(&mut dst.storage_mut(), &src.storage())
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
