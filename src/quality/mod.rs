//! Image quality: the sliced Wasserstein distance (SWD) of Progressive GAN (Karras et al. 2018,
//! "Progressive Growing of GANs", section 5 and appendix D), which needs no pretrained network.
//!
//! For each image of two sets (8-bit RGB):
//!
//! 1. build a Laplacian pyramid from full size down to 16 px: 5×5 binomial filter
//!    (`[1, 4, 6, 4, 1] / 16` per axis) with mirror padding, as cv2's `pyrDown`/`pyrUp`; each
//!    level is the image at that scale minus the upsampled next level, the last one is the
//!    low-pass image itself;
//! 2. per level, cut 128 descriptors: 7×7×3 neighbourhoods at uniformly random centres.
//!
//! Per level, each set's descriptors are normalised per colour channel by that set's own mean
//! and standard deviation. The distance between the two clouds of descriptors is then estimated
//! with 4 repeats × 128 random unit directions: project both sets onto a direction, sort the
//! projections, take the mean absolute difference (the 1-D Wasserstein-1 distance between the
//! two empirical distributions), and average over directions. The report is that average ×10³
//! per level, plus the mean over levels.
//!
//! Because of the per-set normalisation the metric ignores a global colour cast or contrast
//! change (per channel); it measures the *structure* of patches at each scale: the finest
//! levels respond to sharpness and texture, the coarse low-pass level to colour layout.
//!
//! Everything is deterministic from the seed: descriptor centres depend only on (seed, level,
//! image index) and are the same for both sets, so a set compared with itself scores exactly 0.
//!
//! Here: the settings, [`swd`] and the generated and real image sets. `pyramid.rs`: the
//! Laplacian pyramid; `sliced.rs`: descriptors, projections and the sliced distance.

use crate::amp::Numerics;
use crate::data::ImageSet;
use crate::nn::{Ctx, Generator, Mode, Module};
use crate::rng::Rng;
use crate::tensor::{no_grad, Tensor};
use anyhow::{bail, Result};

mod pyramid;
mod sliced;

pub use pyramid::{laplacian_pyramid, pyramid_resolutions, reconstruct, PyramidLevel};
use sliced::{descriptors, directions, sliced_wasserstein};

/// Settings of the metric. [`Default`] gives the paper's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SwdParams {
    /// Descriptors cut from each image at each pyramid level.
    pub descriptors_per_image: usize,
    /// Side of a descriptor's square neighbourhood (odd).
    pub patch: usize,
    /// Independent batches of random directions; the result is their mean.
    pub repeats: usize,
    /// Random directions per batch.
    pub directions: usize,
    /// The pyramid stops before its levels get smaller than this.
    pub min_resolution: usize,
}

impl Default for SwdParams {
    fn default() -> Self {
        SwdParams {
            descriptors_per_image: 128,
            patch: 7,
            repeats: 4,
            directions: 128,
            min_resolution: 16,
        }
    }
}

impl SwdParams {
    fn validate(&self) -> Result<()> {
        if self.patch == 0 || self.patch.is_multiple_of(2) {
            bail!("SWD patch size must be odd, got {}", self.patch);
        }
        if self.min_resolution < self.patch {
            bail!(
                "SWD min_resolution {} is smaller than the {}-px patch",
                self.min_resolution,
                self.patch
            );
        }
        if self.descriptors_per_image == 0 || self.repeats == 0 || self.directions == 0 {
            bail!("SWD needs at least one descriptor per image, one repeat and one direction");
        }
        Ok(())
    }

    /// Length of one descriptor: `patch × patch` pixels × 3 channels.
    fn dim(&self) -> usize {
        3 * self.patch * self.patch
    }
}

/// The distance between two image sets, per pyramid level (finest first).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SwdReport {
    /// Side in pixels of each pyramid level, e.g. `[64, 32, 16]`.
    pub resolutions: Vec<usize>,
    /// SWD ×10³ at each level (same order as `resolutions`).
    pub per_level: Vec<f32>,
    /// Mean of `per_level`.
    pub mean: f32,
    /// Images per set.
    pub count: usize,
}

/// The SWD between image sets `a` and `b` (the same number of images, each `size`×`size`×3
/// bytes in [`ImageSet::image_u8`]'s HWC layout), deterministic from `seed`.
pub fn swd(
    a: &[&[u8]],
    b: &[&[u8]],
    size: usize,
    params: &SwdParams,
    seed: u64,
) -> Result<SwdReport> {
    params.validate()?;
    if a.is_empty() || b.is_empty() {
        bail!(
            "SWD needs images in both sets, got {} and {}",
            a.len(),
            b.len()
        );
    }
    if a.len() != b.len() {
        bail!(
            "SWD compares sets of equal size, got {} and {} images (draw the same number from each)",
            a.len(),
            b.len()
        );
    }
    if size < params.min_resolution {
        bail!(
            "{size}x{size} px images are smaller than the {} px the SWD pyramid goes down to",
            params.min_resolution
        );
    }
    let bytes = size * size * 3;
    for (name, set) in [("first", a), ("second", b)] {
        if let Some((i, img)) = set.iter().enumerate().find(|(_, img)| img.len() != bytes) {
            bail!(
                "image {i} of the {name} set has {} bytes, expected {size}x{size}x3 = {bytes}",
                img.len()
            );
        }
    }
    let resolutions = pyramid_resolutions(size, params.min_resolution);
    let levels = resolutions.len();
    let dim = params.dim();
    let mut per_level = Vec::with_capacity(levels);
    for level in 0..levels {
        let da = descriptors(a, size, levels, level, params, seed);
        let db = descriptors(b, size, levels, level, params, seed);
        let (dirs, total) = directions(params, level, seed);
        per_level.push((sliced_wasserstein(&da, &db, dim, &dirs, total) * 1e3) as f32);
    }
    let mean = per_level.iter().sum::<f32>() / levels as f32;
    Ok(SwdReport {
        resolutions,
        per_level,
        mean,
        count: a.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Generators and real sets
// ---------------------------------------------------------------------------------------------

/// One generated image (CHW f32 in [-1, 1], `size`×`size`) as 8-bit HWC RGB, converted exactly
/// as `artgan sample` writes PNGs: `round((clamp(v, -1, 1) + 1) × 127.5)`.
pub fn to_u8_hwc(chw: &[f32], size: usize) -> Vec<u8> {
    let plane = size * size;
    assert_eq!(chw.len(), 3 * plane, "expected a 3x{size}x{size} image");
    let mut out = vec![0u8; 3 * plane];
    for (p, px) in out.chunks_exact_mut(3).enumerate() {
        for c in 0..3 {
            px[c] = ((chw[c * plane + p].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
        }
    }
    out
}

/// `count` indices into a set of `n`: without replacement (a seeded random subset) when
/// `count ≤ n`, else with replacement.
fn draw_indices(n: usize, count: usize, rng: &mut Rng) -> Vec<usize> {
    if count <= n {
        // Partial Fisher-Yates: the first `count` places of a random permutation.
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..count {
            let j = i + rng.below(n - i);
            all.swap(i, j);
        }
        all.truncate(count);
        all
    } else {
        (0..count).map(|_| rng.below(n)).collect()
    }
}

/// Images per generator forward pass.
const GENERATE_BATCH: usize = 64;

/// `count` images of `g` from latents of the `"evaluate-latents"` stream of `seed`, as 8-bit
/// HWC RGB. Eval mode (running batch-norm statistics, as `artgan sample`), under `no_grad`, in
/// batches of at most 64; the latents do not depend on the batching.
pub fn generate_u8(
    g: &Generator,
    count: usize,
    seed: u64,
    numerics: Numerics,
) -> Result<Vec<Vec<u8>>> {
    generate_u8_labeled(g, count, seed, None, numerics)
}

/// Labels for `count` images of a conditional generator, drawn in proportion to the classes'
/// image counts (the `"evaluate-labels"` stream of `seed`).
pub fn proportional_labels(table: &crate::data::ClassTable, count: usize, seed: u64) -> Vec<u32> {
    let total: usize = table.classes.iter().map(|c| c.images).sum();
    let mut rng = Rng::derive(seed, "evaluate-labels");
    (0..count)
        .map(|_| {
            let mut r = rng.below(total.max(1));
            for c in &table.classes {
                if r < c.images {
                    return c.index as u32;
                }
                r -= c.images;
            }
            0
        })
        .collect()
}

/// [`generate_u8`] with a class label per image for a conditional generator (the latents are
/// the same as without labels).
pub fn generate_u8_labeled(
    g: &Generator,
    count: usize,
    seed: u64,
    labels: Option<&[u32]>,
    numerics: Numerics,
) -> Result<Vec<Vec<u8>>> {
    match labels {
        None if g.classes > 0 => {
            bail!(
                "the generator is conditional ({} classes): give labels",
                g.classes
            )
        }
        Some(l) if l.len() != count => bail!("{} labels for {count} images", l.len()),
        _ => {}
    }
    let device = match g.parameters().first() {
        Some((_, t)) => t.device(),
        None => bail!("the generator has no parameters"),
    };
    let (nz, size) = (g.config.nz, g.config.image_size);
    let mut rng = Rng::derive(seed, "evaluate-latents");
    let _guard = no_grad();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let b = GENERATE_BATCH.min(count - out.len());
        let z = Tensor::randn(&[b, nz, 1, 1], 0.0, 1.0, &mut rng, device)?;
        // Eval mode draws no random numbers; the context's generator is never used.
        let batch_labels = labels.map(|l| &l[out.len()..out.len() + b]);
        let images = g
            .forward(
                &z,
                &mut Ctx::new(Mode::Eval, &mut Rng::new(0), numerics).labeled(batch_labels),
            )?
            .to_vec()?;
        out.extend(images.chunks(3 * size * size).map(|im| to_u8_hwc(im, size)));
    }
    Ok(out)
}

fn check_real(real: &ImageSet, count: usize, params: &SwdParams) -> Result<()> {
    if count == 0 {
        bail!("SWD needs at least one image per set (count is 0)");
    }
    if real.is_empty() {
        bail!("the real image set is empty");
    }
    if real.size < params.min_resolution {
        bail!(
            "{0}x{0} px images are smaller than the {1} px the SWD pyramid goes down to",
            real.size,
            params.min_resolution
        );
    }
    Ok(())
}

/// SWD between `count` images of `g` and `count` images of `real` (a random subset, or drawn
/// with replacement when `real` has fewer). Everything (latents, the real draw, descriptor
/// centres, directions) is derived from `seed`. The paper uses `count` = 16384.
pub fn evaluate_generator(
    g: &Generator,
    real: &ImageSet,
    count: usize,
    seed: u64,
    params: &SwdParams,
    numerics: Numerics,
) -> Result<SwdReport> {
    evaluate_generator_labeled(g, real, count, seed, params, None, numerics)
}

/// [`evaluate_generator`] for a conditional generator: `labels[i]` is the class of generated
/// image i (e.g. [`proportional_labels`], or one class throughout for a per-class SWD).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_generator_labeled(
    g: &Generator,
    real: &ImageSet,
    count: usize,
    seed: u64,
    params: &SwdParams,
    labels: Option<&[u32]>,
    numerics: Numerics,
) -> Result<SwdReport> {
    check_real(real, count, params)?;
    if real.size != g.config.image_size {
        bail!(
            "the real images are {0}x{0} px but the generator makes {1}x{1} px",
            real.size,
            g.config.image_size
        );
    }
    let fake = generate_u8_labeled(g, count, seed, labels, numerics)?;
    let fake: Vec<&[u8]> = fake.iter().map(Vec::as_slice).collect();
    let picks = draw_indices(real.len(), count, &mut Rng::derive(seed, "evaluate-reals"));
    let reals: Vec<&[u8]> = picks.iter().map(|&i| real.image_u8(i)).collect();
    swd(&reals, &fake, real.size, params, seed)
}

/// The noise floor: SWD between two draws of `count` real images. The draws are disjoint when
/// the set has at least `2 × count` images; otherwise they share images and the floor comes out
/// lower than two truly independent samples would give.
pub fn real_floor(
    real: &ImageSet,
    count: usize,
    seed: u64,
    params: &SwdParams,
) -> Result<SwdReport> {
    check_real(real, count, params)?;
    let n = real.len();
    let (first, second) = if 2 * count <= n {
        let both = draw_indices(n, 2 * count, &mut Rng::derive(seed, "floor-reals"));
        (both[..count].to_vec(), both[count..].to_vec())
    } else {
        (
            draw_indices(n, count, &mut Rng::derive(seed, "floor-reals-a")),
            draw_indices(n, count, &mut Rng::derive(seed, "floor-reals-b")),
        )
    };
    let a: Vec<&[u8]> = first.iter().map(|&i| real.image_u8(i)).collect();
    let b: Vec<&[u8]> = second.iter().map(|&i| real.image_u8(i)).collect();
    swd(&a, &b, real.size, params, seed)
}
