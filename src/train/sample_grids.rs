//! The sample grids of a run: the fixed 8×8 latents rendered with batch statistics, one row
//! per class for conditional runs, written as `samples/epoch-NNNN.png`.

use crate::amp::Numerics;
use crate::nn::{Ctx, Generator, Mode};
use crate::rng::Rng;
use crate::tensor::{no_grad, Tensor};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Side of the fixed-noise sample grid (8×8 = 64 images, as the seeds save).
pub const GRID_SIDE: usize = 8;

/// Images of G for `z` with batch statistics, changing no state (see [`Mode::BatchStats`]).
pub fn generate_for_grid(g: &Generator, z: &Tensor, numerics: Numerics) -> Result<Vec<f32>> {
    generate_for_grid_labeled(g, z, None, numerics)
}

/// [`generate_for_grid`] with one class label per latent (conditional generators).
pub fn generate_for_grid_labeled(
    g: &Generator,
    z: &Tensor,
    labels: Option<&[u32]>,
    numerics: Numerics,
) -> Result<Vec<f32>> {
    let _guard = no_grad();
    let mut unused = Rng::new(0);
    g.forward(
        z,
        &mut Ctx::new(Mode::BatchStats, &mut unused, numerics).labeled(labels),
    )?
    .to_vec()
}

/// Labels of the fixed 8×8 grid of a conditional run: row r shows class r (mod the classes).
pub fn grid_labels(classes: usize) -> Option<Vec<u32>> {
    (classes > 0).then(|| {
        (0..GRID_SIDE * GRID_SIDE)
            .map(|i| ((i / GRID_SIDE) % classes) as u32)
            .collect()
    })
}

/// The per-class grid of a conditional run: one row per class, the first 8 fixed latents in
/// every row (so the columns compare classes at equal latents), generated 8 classes at a time.
pub fn class_grid_images(g: &Generator, fixed: &Tensor, numerics: Numerics) -> Result<Vec<f32>> {
    let nz = g.config.nz;
    let z_all = fixed.to_vec()?;
    let row = &z_all[..GRID_SIDE * nz];
    let mut out = Vec::new();
    let classes: Vec<u32> = (0..g.classes as u32).collect();
    for chunk in classes.chunks(GRID_SIDE) {
        let mut z = Vec::with_capacity(chunk.len() * row.len());
        let mut labels = Vec::with_capacity(chunk.len() * GRID_SIDE);
        for &k in chunk {
            z.extend_from_slice(row);
            labels.extend(std::iter::repeat_n(k, GRID_SIDE));
        }
        let z = Tensor::from_vec(z, &[labels.len(), nz, 1, 1], fixed.device())?;
        out.extend(generate_for_grid_labeled(g, &z, Some(&labels), numerics)?);
    }
    Ok(out)
}

pub(super) fn save_grid(
    g: &Generator,
    z: &Tensor,
    numerics: Numerics,
    dir: &Path,
    epoch: usize,
) -> Result<PathBuf> {
    if g.classes > 0 {
        let images = class_grid_images(g, z, numerics)?;
        crate::data::save_grid_png(
            &images,
            g.classes * GRID_SIDE,
            g.config.image_size,
            GRID_SIDE,
            &dir.join(format!("classes-epoch-{epoch:04}.png")),
        )?;
    }
    let labels = grid_labels(g.classes);
    let images = generate_for_grid_labeled(g, z, labels.as_deref(), numerics)?;
    let path = dir.join(format!("epoch-{epoch:04}.png"));
    crate::data::save_grid_png(
        &images,
        GRID_SIDE * GRID_SIDE,
        g.config.image_size,
        GRID_SIDE,
        &path,
    )?;
    Ok(path)
}
