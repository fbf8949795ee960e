//! TEMPORARY — delete when `artgan::data` (the data pipeline) is merged.
//!
//! A minimal stand-in for the data engineer's built-in dataset, loader and grid writer so the
//! training loop, CLI and tests can run before the merge. Only the three seam points are used
//! elsewhere: `builtin_source`, `save_grid_png`, `BuiltinSource` as a `train::BatchSource`.

use crate::backend::Device;
use crate::checkpoint::write_atomic;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::BatchSource;
use anyhow::{bail, Result};
use std::path::Path;

/// `count` procedural landscapes `[3, size, size]` in [-1, 1]: a sky gradient, a horizon with
/// a ground gradient, a sun and a few strokes.
pub fn builtin_images(count: usize, size: usize, seed: u64) -> Vec<Vec<f32>> {
    let palettes: [[[f32; 3]; 4]; 4] = [
        // sky top, sky bottom, ground top, ground bottom (RGB in [0, 1])
        [
            [0.1, 0.2, 0.5],
            [0.9, 0.6, 0.4],
            [0.2, 0.3, 0.1],
            [0.1, 0.15, 0.05],
        ],
        [
            [0.3, 0.5, 0.8],
            [0.8, 0.9, 1.0],
            [0.5, 0.6, 0.2],
            [0.3, 0.35, 0.1],
        ],
        [
            [0.05, 0.05, 0.2],
            [0.3, 0.1, 0.4],
            [0.1, 0.1, 0.2],
            [0.0, 0.0, 0.05],
        ],
        [
            [0.9, 0.5, 0.2],
            [1.0, 0.85, 0.5],
            [0.6, 0.3, 0.1],
            [0.35, 0.15, 0.05],
        ],
    ];
    (0..count)
        .map(|i| {
            let mut rng = Rng::derive(seed.wrapping_add(i as u64), "tempdata-builtin");
            let pal = palettes[rng.below(palettes.len())];
            let jitter =
                |rng: &mut Rng, c: [f32; 3]| c.map(|v| (v + 0.1 * rng.normal()).clamp(0.0, 1.0));
            let (st, sb, gt, gb) = (
                jitter(&mut rng, pal[0]),
                jitter(&mut rng, pal[1]),
                jitter(&mut rng, pal[2]),
                jitter(&mut rng, pal[3]),
            );
            let s = size as f32;
            let horizon = s * (0.45 + 0.3 * rng.uniform());
            let (cx, cy, r) = (
                s * rng.uniform(),
                horizon * (0.2 + 0.6 * rng.uniform()),
                s * (0.06 + 0.08 * rng.uniform()),
            );
            let sun = [1.0, 0.9 - 0.4 * rng.uniform(), 0.5 * rng.uniform()];
            let mut img = vec![0f32; 3 * size * size];
            for y in 0..size {
                for x in 0..size {
                    let fy = y as f32 + 0.5;
                    let fx = x as f32 + 0.5;
                    let mut c = if fy < horizon {
                        let t = fy / horizon;
                        [0, 1, 2].map(|k| st[k] * (1.0 - t) + sb[k] * t)
                    } else {
                        let t = (fy - horizon) / (s - horizon);
                        [0, 1, 2].map(|k| gt[k] * (1.0 - t) + gb[k] * t)
                    };
                    if fy < horizon && (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                        c = sun;
                    }
                    for k in 0..3 {
                        img[(k * size + y) * size + x] = c[k] * 2.0 - 1.0;
                    }
                }
            }
            // A few dark brush strokes on the ground.
            for _ in 0..3 {
                let y0 = horizon + (s - horizon) * rng.uniform();
                let x0 = s * rng.uniform();
                let len = s * (0.1 + 0.2 * rng.uniform());
                for t in 0..(len as usize) {
                    let x = (x0 + t as f32) as usize;
                    let y = (y0 - 0.3 * t as f32) as usize;
                    if x < size && y < size {
                        for k in 0..3 {
                            img[(k * size + y) * size + x] = -0.8;
                        }
                    }
                }
            }
            img
        })
        .collect()
}

/// Shuffled batches over the built-in images (incomplete last batch dropped: BN needs >1).
pub struct BuiltinSource {
    images: Vec<Vec<f32>>,
    size: usize,
    batch_size: usize,
    seed: u64,
    order: Vec<usize>,
    pos: usize,
}

pub fn builtin_source(
    count: usize,
    size: usize,
    batch_size: usize,
    seed: u64,
) -> Result<BuiltinSource> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    Ok(BuiltinSource {
        images: builtin_images(count, size, seed),
        size,
        batch_size,
        seed,
        order: Vec::new(),
        pos: 0,
    })
}

impl BatchSource for BuiltinSource {
    fn image_count(&self) -> usize {
        self.images.len()
    }
    fn batches_per_epoch(&self) -> usize {
        self.images.len() / self.batch_size
    }
    fn start_epoch(&mut self, epoch: usize) {
        self.order = (0..self.images.len()).collect();
        Rng::derive(self.seed.wrapping_add(epoch as u64), "tempdata-shuffle")
            .shuffle(&mut self.order);
        self.pos = 0;
    }
    fn next_batch(&mut self, device: Device) -> Result<Option<Tensor>> {
        if self.pos + self.batch_size > self.order.len() {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(self.batch_size * 3 * self.size * self.size);
        for &i in &self.order[self.pos..self.pos + self.batch_size] {
            data.extend_from_slice(&self.images[i]);
        }
        self.pos += self.batch_size;
        Tensor::from_vec(data, &[self.batch_size, 3, self.size, self.size], device).map(Some)
    }
}

/// `n` NCHW images in [-1, 1] as a grid PNG, `nrow` per row, 2 px black padding (like
/// torchvision's `save_image`), written atomically.
pub fn save_grid_png(
    images: &[f32],
    n: usize,
    size: usize,
    nrow: usize,
    path: &Path,
) -> Result<()> {
    let pad = 2;
    let cols = nrow.min(n).max(1);
    let rows = n.div_ceil(cols);
    let (w, h) = (cols * (size + pad) + pad, rows * (size + pad) + pad);
    let mut img = image::RgbImage::new(w as u32, h as u32);
    for i in 0..n {
        let (ox, oy) = (
            pad + (i % cols) * (size + pad),
            pad + (i / cols) * (size + pad),
        );
        for y in 0..size {
            for x in 0..size {
                let px = [0, 1, 2].map(|k| {
                    let v = images[((i * 3 + k) * size + y) * size + x];
                    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
                });
                img.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb(px));
            }
        }
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    write_atomic(path, &bytes)
}
