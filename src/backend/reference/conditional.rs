//! CPU reference of the conditional-model and DiffAugment ops (issue 13): plain loops, f64
//! accumulation in the reductions.

use anyhow::{bail, Result};

use crate::backend::ChannelDims;

/// Class index of a label held as f32 (validated by `crate::ops`; checked again here).
fn class_of(label: f32, classes: usize) -> Result<usize> {
    let k = label as usize;
    if label < 0.0 || label.fract() != 0.0 || k >= classes {
        bail!("label {label} is not a class index below {classes}");
    }
    Ok(k)
}

pub fn embedding(table: &[f32], labels: &[f32], classes: usize, dim: usize) -> Result<Vec<f32>> {
    if table.len() != classes * dim {
        bail!("embedding: table of {} is not {classes}x{dim}", table.len());
    }
    let mut out = Vec::with_capacity(labels.len() * dim);
    for &l in labels {
        let k = class_of(l, classes)?;
        out.extend_from_slice(&table[k * dim..(k + 1) * dim]);
    }
    Ok(out)
}

pub fn embedding_backward(
    dy: &[f32],
    labels: &[f32],
    classes: usize,
    dim: usize,
) -> Result<Vec<f32>> {
    if dy.len() != labels.len() * dim {
        bail!(
            "embedding_backward: dy of {} is not {}x{dim}",
            dy.len(),
            labels.len()
        );
    }
    let mut out = vec![0f32; classes * dim];
    for (b, &l) in labels.iter().enumerate() {
        let k = class_of(l, classes)?;
        for j in 0..dim {
            out[k * dim + j] += dy[b * dim + j];
        }
    }
    Ok(out)
}

fn check_nc(name: &str, v: &[f32], d: ChannelDims) -> Result<()> {
    if v.len() != d.n * d.c {
        bail!("{name}: {} values, expected {}x{}", v.len(), d.n, d.c);
    }
    Ok(())
}

pub fn channel_affine(x: &[f32], scale: &[f32], shift: &[f32], d: ChannelDims) -> Result<Vec<f32>> {
    check_nc("channel_affine scale", scale, d)?;
    check_nc("channel_affine shift", shift, d)?;
    Ok(x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let nc = i / d.hw;
            v * scale[nc] + shift[nc]
        })
        .collect())
}

pub fn channel_affine_backward(
    x: &[f32],
    dy: &[f32],
    scale: &[f32],
    d: ChannelDims,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    check_nc("channel_affine_backward scale", scale, d)?;
    let dx = dy
        .iter()
        .enumerate()
        .map(|(i, &g)| g * scale[i / d.hw])
        .collect();
    let mut dscale = Vec::with_capacity(d.n * d.c);
    let mut dshift = Vec::with_capacity(d.n * d.c);
    for nc in 0..d.n * d.c {
        let r = nc * d.hw..(nc + 1) * d.hw;
        let (mut s, mut t) = (0f64, 0f64);
        for (&g, &v) in dy[r.clone()].iter().zip(&x[r]) {
            s += f64::from(g) * f64::from(v);
            t += f64::from(g);
        }
        dscale.push(s as f32);
        dshift.push(t as f32);
    }
    Ok((dx, dscale, dshift))
}

pub fn row_dot(a: &[f32], b: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    if a.len() != rows * cols || b.len() != rows * cols {
        bail!(
            "row_dot: {} and {} elements, expected {rows}x{cols}",
            a.len(),
            b.len()
        );
    }
    Ok((0..rows)
        .map(|r| {
            let s: f64 = (r * cols..(r + 1) * cols)
                .map(|i| f64::from(a[i]) * f64::from(b[i]))
                .sum();
            s as f32
        })
        .collect())
}

pub fn row_dot_backward(
    a: &[f32],
    b: &[f32],
    g: &[f32],
    rows: usize,
    cols: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if g.len() != rows {
        bail!("row_dot_backward: {} gradients for {rows} rows", g.len());
    }
    let da = b
        .iter()
        .enumerate()
        .map(|(i, &v)| g[i / cols] * v)
        .collect();
    let db = a
        .iter()
        .enumerate()
        .map(|(i, &v)| g[i / cols] * v)
        .collect();
    Ok((da, db))
}

/// DiffAugment colour (see [`crate::backend::Backend::diffaug_color`]), following the paper's
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
