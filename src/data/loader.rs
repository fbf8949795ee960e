//! Batches: a seeded shuffle per epoch, random flips and small rotations, NCHW f32 in [-1, 1].
//!
//! Everything random is drawn from streams named by (seed, epoch, batch), so a run resumed at
//! any batch sees exactly the batches it would have seen. The loader first makes a
//! [`BatchPlan`] (which images, flipped or not, at which angle) and then assembles it; on the
//! CPU [`assemble_batch`] does that, and a device-side op can take the same plan instead.

use std::sync::Arc;

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{Augment, ImageSet};
use crate::backend::Device;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// What one batch is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPlan {
    pub epoch: usize,
    pub batch: usize,
    /// Image indices into the set.
    pub indices: Vec<usize>,
    /// Per image: mirror left-right.
    pub flips: Vec<bool>,
    /// Per image: rotation in degrees, positive = counter-clockwise as displayed.
    pub angles_deg: Vec<f32>,
}

/// Deterministic batch iterator over an [`ImageSet`] (drop_last, like PyTorch's DataLoader in
/// the seeds).
pub struct Loader {
    set: Arc<ImageSet>,
    batch_size: usize,
    augment: Augment,
    seed: u64,
    epoch: usize,
    batch: usize,
    order: Vec<usize>,
}

impl Loader {
    /// A loader positioned at the start of epoch 0.
    pub fn new(set: Arc<ImageSet>, batch_size: usize, augment: Augment, seed: u64) -> Self {
        let mut l = Loader {
            set,
            batch_size,
            augment,
            seed,
            epoch: 0,
            batch: 0,
            order: Vec::new(),
        };
        l.start_epoch(0);
        l
    }

    pub fn set(&self) -> &Arc<ImageSet> {
        &self.set
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn augment(&self) -> Augment {
        self.augment
    }

    /// Full batches per epoch; a last partial batch is dropped.
    pub fn batches_per_epoch(&self) -> usize {
        self.set.len().checked_div(self.batch_size).unwrap_or(0)
    }

    /// Shuffles for `epoch` (depends only on the seed and the epoch) and rewinds to its start.
    pub fn start_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
        self.batch = 0;
        self.order = (0..self.set.len()).collect();
        Rng::derive(self.seed, &format!("data-order-{epoch}")).shuffle(&mut self.order);
    }

    /// Positions the loader at batch `batch` of `epoch` (for resuming).
    pub fn seek(&mut self, epoch: usize, batch: usize) {
        self.start_epoch(epoch);
        self.batch = batch;
    }

    /// (epoch, index of the next batch within it).
    pub fn position(&self) -> (usize, usize) {
        (self.epoch, self.batch)
    }

    /// The next batch's plan, or None at the end of the epoch.
    pub fn next_plan(&mut self) -> Result<Option<BatchPlan>> {
        let bpe = self.batches_per_epoch();
        if bpe == 0 {
            bail!(
                "the dataset has {} images, fewer than the batch size {}: lower --batch-size \
                 or add images",
                self.set.len(),
                self.batch_size
            );
        }
        if self.batch >= bpe {
            return Ok(None);
        }
        let b = self.batch;
        self.batch += 1;
        let indices = self.order[b * self.batch_size..(b + 1) * self.batch_size].to_vec();
        let mut rng = Rng::derive(self.seed, &format!("data-augment-{}-{b}", self.epoch));
        let mut flips = Vec::with_capacity(indices.len());
        let mut angles_deg = Vec::with_capacity(indices.len());
        for _ in &indices {
            // Always draw both so that switching one augmentation off does not shift the other.
            let f = rng.uniform();
            let a = rng.uniform();
            flips.push(self.augment.flip && f < 0.5);
            angles_deg.push(if self.augment.rotate_deg > 0.0 {
                (2.0 * a - 1.0) * self.augment.rotate_deg
            } else {
                0.0
            });
        }
        Ok(Some(BatchPlan {
            epoch: self.epoch,
            batch: b,
            indices,
            flips,
            angles_deg,
        }))
    }

    /// The next batch as a `[B, 3, S, S]` tensor in [-1, 1] on `device`, or None at the end of
    /// the epoch (call [`Loader::start_epoch`] for the next one).
    pub fn next_batch(&mut self, device: Device) -> Result<Option<Tensor>> {
        let Some(plan) = self.next_plan()? else {
            return Ok(None);
        };
        let s = self.set.size;
        let data = assemble_batch(&self.set, &plan.indices, &plan.flips, &plan.angles_deg);
        Tensor::from_vec(data, &[plan.indices.len(), 3, s, s], device).map(Some)
    }
}

/// Mirror-reflects a coordinate into [0, n-1] (edge pixel not repeated), so rotated corners
/// are filled with nearby painting rather than a black wedge the discriminator could learn.
fn reflect(t: f32, n: usize) -> f32 {
    if n <= 1 {
        return 0.0;
    }
    let last = (n - 1) as f32;
    // Almost every sample is inside; skip the (slow) float remainder for those.
    if (0.0..=last).contains(&t) {
        return t;
    }
    let period = 2.0 * last;
    let t = t.abs() % period;
    if t > last {
        period - t
    } else {
        t
    }
}

/// CPU reference of batch assembly: gathers `indices`, mirrors where `flips` says, rotates by
/// `angles_deg` about the centre (bilinear, reflected edges), and maps bytes to [-1, 1]
/// (v / 127.5 - 1). Returns NCHW f32. Flip is applied before rotation.
pub fn assemble_batch(
    set: &ImageSet,
    indices: &[usize],
    flips: &[bool],
    angles_deg: &[f32],
) -> Vec<f32> {
    let s = set.size;
    let plane = s * s;
    let mut out = vec![0f32; indices.len() * 3 * plane];
    out.par_chunks_mut(3 * plane)
        .enumerate()
        .for_each(|(b, dst)| {
            let src = set.image_u8(indices[b]);
            let flip = flips.get(b).copied().unwrap_or(false);
            let angle = angles_deg.get(b).copied().unwrap_or(0.0);
            if angle == 0.0 {
                for y in 0..s {
                    for x in 0..s {
                        let sx = if flip { s - 1 - x } else { x };
                        let p = (y * s + sx) * 3;
                        for c in 0..3 {
                            dst[c * plane + y * s + x] = f32::from(src[p + c]) / 127.5 - 1.0;
                        }
                    }
                }
                return;
            }
            let (sin, cos) = (angle as f64).to_radians().sin_cos();
            let (sin, cos) = (sin as f32, cos as f32);
            let centre = (s as f32 - 1.0) / 2.0;
            for y in 0..s {
                for x in 0..s {
                    let (dx, dy) = (x as f32 - centre, y as f32 - centre);
                    let mut sx = centre + cos * dx - sin * dy;
                    let sy = centre + sin * dx + cos * dy;
                    if flip {
                        sx = s as f32 - 1.0 - sx;
                    }
                    let (sx, sy) = (reflect(sx, s), reflect(sy, s));
                    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                    let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
                    let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                    for c in 0..3 {
                        let at = |xx: usize, yy: usize| f32::from(src[(yy * s + xx) * 3 + c]);
                        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
                        let bot = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
                        let v = top * (1.0 - fy) + bot * fy;
                        dst[c * plane + y * s + x] = v / 127.5 - 1.0;
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_stays_inside() {
        assert_eq!(reflect(-1.0, 4), 1.0);
        assert_eq!(reflect(4.0, 4), 2.0);
        assert_eq!(reflect(2.5, 4), 2.5);
        for i in -50..50 {
            let r = reflect(i as f32 * 0.37, 5);
            assert!((0.0..=4.0).contains(&r));
        }
    }
}
