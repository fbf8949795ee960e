//! CPU reference of the conditional-model ops (class embeddings, the per-sample channel affine
//! and channel gate, the projection's row-wise inner product): plain loops, f64 accumulation in the reductions.

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

/// Checks the channel gate's lengths (both backends): `x` and `dy` (if given) hold `d`, `g` one
/// value per (n, c).
pub fn check_gate(op: &str, x: usize, g: usize, dy: Option<usize>, d: ChannelDims) -> Result<()> {
    if x != d.len() || g != d.n * d.c || dy.is_some_and(|dy| dy != d.len()) {
        bail!(
            "{op}: {x} input values, {g} gate values{} for {d:?}",
            dy.map_or(String::new(), |dy| format!(" and {dy} gradient values"))
        );
    }
    Ok(())
}

pub fn channel_gate(x: &[f32], g: &[f32], d: ChannelDims) -> Result<Vec<f32>> {
    check_gate("channel_gate", x.len(), g.len(), None, d)?;
    Ok(x.iter()
        .enumerate()
        .map(|(i, &v)| v * g[i / d.hw])
        .collect())
}

/// (dx, dg): channel_affine's (dx, dscale), the gate being its scale.
pub fn channel_gate_backward(
    x: &[f32],
    g: &[f32],
    dy: &[f32],
    d: ChannelDims,
) -> Result<(Vec<f32>, Vec<f32>)> {
    check_gate("channel_gate_backward", x.len(), g.len(), Some(dy.len()), d)?;
    let (dx, dg, _) = channel_affine_backward(x, dy, g, d)?;
    Ok((dx, dg))
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
