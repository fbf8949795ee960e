//! Writing images as one grid PNG, like torchvision's `make_grid(padding=2)` + `save_image`,
//! atomically. (Which images a run's sample grids show: `train::sample_grids`.)

use std::path::Path;

use anyhow::{bail, Context, Result};

pub use crate::durable::write_atomic;

const PAD: usize = 2;

/// Grid geometry: (columns, rows, width, height) in pixels, padding included.
fn layout(n: usize, size: usize, nrow: usize) -> (usize, usize, usize, usize) {
    let cols = nrow.min(n).max(1);
    let rows = n.div_ceil(cols);
    (
        cols,
        rows,
        cols * (size + PAD) + PAD,
        rows * (size + PAD) + PAD,
    )
}

fn encode_png(rgb: Vec<u8>, w: usize, h: usize, path: &Path) -> Result<()> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb).context("grid buffer size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomic(path, &out.into_inner())
}

/// Saves `n` NCHW images in [-1, 1] of `size`×`size` as a PNG grid with `nrow` images per row
/// (the last row may be short) and 2 px black padding, as torchvision's `save_image` does:
/// byte = clamp((x + 1) / 2 * 255 + 0.5, 0, 255).
pub fn save_grid_png(
    images_nchw: &[f32],
    n: usize,
    size: usize,
    nrow: usize,
    path: &Path,
) -> Result<()> {
    let plane = size * size;
    if n == 0 || size == 0 || images_nchw.len() != n * 3 * plane {
        bail!(
            "save_grid_png: {} values are not {n} images of 3x{size}x{size}",
            images_nchw.len()
        );
    }
    let (cols, _, w, h) = layout(n, size, nrow);
    let mut rgb = vec![0u8; w * h * 3];
    for i in 0..n {
        let (x0, y0) = (
            PAD + (i % cols) * (size + PAD),
            PAD + (i / cols) * (size + PAD),
        );
        let img = &images_nchw[i * 3 * plane..(i + 1) * 3 * plane];
        for y in 0..size {
            for x in 0..size {
                let o = ((y0 + y) * w + x0 + x) * 3;
                for c in 0..3 {
                    let v = (img[c * plane + y * size + x] + 1.0) * 0.5 * 255.0 + 0.5;
                    // NaN maps to 0 (`as` saturates), so a diverged model still writes a file.
                    rgb[o + c] = v.clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    encode_png(rgb, w, h, path)
}

/// Same grid from HWC RGB bytes (e.g. [`super::ImageSet::image_u8`]).
pub fn save_grid_png_u8(images: &[&[u8]], size: usize, nrow: usize, path: &Path) -> Result<()> {
    let n = images.len();
    if n == 0 || images.iter().any(|i| i.len() != size * size * 3) {
        bail!("save_grid_png_u8: need at least one {size}x{size} RGB image");
    }
    let (cols, _, w, h) = layout(n, size, nrow);
    let mut rgb = vec![0u8; w * h * 3];
    for (i, img) in images.iter().enumerate() {
        let (x0, y0) = (
            PAD + (i % cols) * (size + PAD),
            PAD + (i / cols) * (size + PAD),
        );
        for y in 0..size {
            let o = ((y0 + y) * w + x0) * 3;
            rgb[o..o + size * 3].copy_from_slice(&img[y * size * 3..(y + 1) * size * 3]);
        }
    }
    encode_png(rgb, w, h, path)
}
