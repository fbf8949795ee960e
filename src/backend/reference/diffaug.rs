//! CPU reference of DiffAugment's colour, translation and cutout: plain loops, f64
//! accumulation in the colour means.

use anyhow::{bail, Result};

use crate::backend::ChannelDims;

/// DiffAugment colour (see [`crate::backend::DiffAugBackend::diffaug_color`]), following the paper's
/// three steps literally.
pub fn diffaug_color(
    x: &[f32],
    params: &[f32],
    d: ChannelDims,
    brightness: bool,
) -> Result<Vec<f32>> {
    if params.len() != d.n * 3 {
        bail!(
            "diffaug_color: {} parameters for {} images",
            params.len(),
            d.n
        );
    }
    let per = d.c * d.hw;
    let mut out = vec![0f32; x.len()];
    for n in 0..d.n {
        let (b, s, k) = (params[3 * n], params[3 * n + 1], params[3 * n + 2]);
        let img = &x[n * per..(n + 1) * per];
        let x1: Vec<f32> = img
            .iter()
            .map(|&v| if brightness { v + b } else { v })
            .collect();
        let mut x2 = vec![0f32; per];
        for p in 0..d.hw {
            let m = (0..d.c).map(|c| f64::from(x1[c * d.hw + p])).sum::<f64>() / d.c as f64;
            let m = m as f32;
            for c in 0..d.c {
                x2[c * d.hw + p] = (x1[c * d.hw + p] - m) * s + m;
            }
        }
        let mm = (x2.iter().map(|&v| f64::from(v)).sum::<f64>() / per as f64) as f32;
        for (o, &v) in out[n * per..(n + 1) * per].iter_mut().zip(&x2) {
            *o = (v - mm) * k + mm;
        }
    }
    Ok(out)
}

pub fn diffaug_translate(x: &[f32], shifts: &[f32], dims: [usize; 4]) -> Result<Vec<f32>> {
    let [n, c, h, w] = dims;
    if shifts.len() != n * 2 {
        bail!("diffaug_translate: {} shifts for {n} images", shifts.len());
    }
    let mut out = vec![0f32; x.len()];
    for b in 0..n {
        let (sy, sx) = (shifts[2 * b] as i64, shifts[2 * b + 1] as i64);
        for ch in 0..c {
            let base = (b * c + ch) * h * w;
            for i in 0..h {
                let si = i as i64 + sy;
                if si < 0 || si >= h as i64 {
                    continue;
                }
                for j in 0..w {
                    let sj = j as i64 + sx;
                    if sj >= 0 && sj < w as i64 {
                        out[base + i * w + j] = x[base + si as usize * w + sj as usize];
                    }
                }
            }
        }
    }
    Ok(out)
}

pub fn diffaug_cutout(x: &[f32], boxes: &[f32], dims: [usize; 4]) -> Result<Vec<f32>> {
    let [n, c, h, w] = dims;
    if boxes.len() != n * 4 {
        bail!("diffaug_cutout: {} box values for {n} images", boxes.len());
    }
    let mut out = x.to_vec();
    for b in 0..n {
        let [y0, y1, x0, x1] = [0, 1, 2, 3].map(|k| boxes[4 * b + k] as i64);
        for ch in 0..c {
            let base = (b * c + ch) * h * w;
            for i in 0..h as i64 {
                for j in 0..w as i64 {
                    if y0 <= i && i < y1 && x0 <= j && j < x1 {
                        out[base + (i as usize) * w + j as usize] = 0.0;
                    }
                }
            }
        }
    }
    Ok(out)
}
