//! Resampling, reference (`kernels/resample.cu`): nearest upsampling, adaptive average pooling
//! and cropping of NCHW planes, f64 sums. The backward passes scatter (each output's share added
//! to the inputs it came from), where the kernels gather: two ways to the same numbers.
//! Autograd: `src/ops/resample.rs`.

use super::host;
use crate::backend::*;
use anyhow::{bail, Result};

/// Checks that `x` holds `want` values (both backends, before reading).
pub(crate) fn check_len(op: &str, what: &str, x: usize, want: usize) -> Result<()> {
    if x != want {
        bail!("{op}: {what} holds {x} values, expected {want}");
    }
    Ok(())
}

/// Checks an upsampling scale (both backends).
pub(crate) fn check_scale(op: &str, scale: usize) -> Result<()> {
    if scale == 0 {
        bail!("{op}: the scale must be at least 1");
    }
    Ok(())
}

/// Checks adaptive pooling's sizes (both backends): every bin must hold a pixel.
pub(crate) fn check_pool(op: &str, d: ImageDims, oh: usize, ow: usize) -> Result<()> {
    if oh == 0 || ow == 0 || d.h == 0 || d.w == 0 {
        bail!(
            "{op}: cannot pool {}x{} planes to {oh}x{ow} (every size must be at least 1)",
            d.h,
            d.w
        );
    }
    Ok(())
}

/// Checks that `win` lies inside the `d.h x d.w` planes (both backends).
pub(crate) fn check_window(op: &str, d: ImageDims, win: Window) -> Result<()> {
    if win.top + win.h > d.h || win.left + win.w > d.w {
        bail!(
            "{op}: the window rows {}..{}, columns {}..{} does not fit in {}x{} planes",
            win.top,
            win.top + win.h,
            win.left,
            win.left + win.w,
            d.h,
            d.w
        );
    }
    Ok(())
}

/// Adaptive pooling's bin `i` of `out` over `len` input positions, as PyTorch:
/// `floor(i·len/out) .. ceil((i+1)·len/out)`.
pub(crate) fn pool_bin(i: usize, out: usize, len: usize) -> std::ops::Range<usize> {
    i * len / out..((i + 1) * len).div_ceil(out)
}

/// The `h x w` planes of `x` (empty ones too, which `chunks_exact` refuses).
fn planes(x: &[f32], d: ImageDims) -> impl Iterator<Item = &[f32]> {
    let size = d.h * d.w;
    (0..d.planes()).map(move |p| &x[p * size..][..size])
}

pub(crate) fn upsample_nearest(x: &Storage, d: ImageDims, s: usize) -> Result<Storage> {
    let x = host(x)?;
    check_scale("upsample_nearest", s)?;
    check_len("upsample_nearest", "the input", x.len(), d.len())?;
    let (oh, ow) = (d.h * s, d.w * s);
    let mut y = Vec::with_capacity(d.len() * s * s);
    for plane in planes(x, d) {
        for i in 0..oh {
            y.extend((0..ow).map(|j| plane[i / s * d.w + j / s]));
        }
    }
    Ok(Storage::Cpu(y))
}

pub(crate) fn upsample_nearest_backward(dy: &Storage, d: ImageDims, s: usize) -> Result<Storage> {
    let dy = host(dy)?;
    check_scale("upsample_nearest_backward", s)?;
    let op = "upsample_nearest_backward";
    check_len(op, "the gradient", dy.len(), d.len() * s * s)?;
    let (oh, ow) = (d.h * s, d.w * s);
    let mut dx = vec![0f64; d.len()];
    for p in 0..d.planes() {
        for i in 0..oh {
            for j in 0..ow {
                dx[(p * d.h + i / s) * d.w + j / s] += f64::from(dy[(p * oh + i) * ow + j]);
            }
        }
    }
    Ok(Storage::Cpu(dx.into_iter().map(|v| v as f32).collect()))
}

pub(crate) fn adaptive_avg_pool(
    x: &Storage,
    d: ImageDims,
    oh: usize,
    ow: usize,
) -> Result<Storage> {
    let x = host(x)?;
    check_pool("adaptive_avg_pool", d, oh, ow)?;
    check_len("adaptive_avg_pool", "the input", x.len(), d.len())?;
    let mut y = Vec::with_capacity(d.planes() * oh * ow);
    for plane in planes(x, d) {
        for i in 0..oh {
            for j in 0..ow {
                let (rows, cols) = (pool_bin(i, oh, d.h), pool_bin(j, ow, d.w));
                let count = (rows.len() * cols.len()) as f64;
                let sum: f64 = rows
                    .flat_map(|r| cols.clone().map(move |c| r * d.w + c))
                    .map(|k| f64::from(plane[k]))
                    .sum();
                y.push((sum / count) as f32);
            }
        }
    }
    Ok(Storage::Cpu(y))
}

pub(crate) fn adaptive_avg_pool_backward(
    dy: &Storage,
    d: ImageDims,
    oh: usize,
    ow: usize,
) -> Result<Storage> {
    let dy = host(dy)?;
    let op = "adaptive_avg_pool_backward";
    check_pool(op, d, oh, ow)?;
    check_len(op, "the gradient", dy.len(), d.planes() * oh * ow)?;
    let mut dx = vec![0f64; d.len()];
    for p in 0..d.planes() {
        for i in 0..oh {
            for j in 0..ow {
                let (rows, cols) = (pool_bin(i, oh, d.h), pool_bin(j, ow, d.w));
                let share = f64::from(dy[(p * oh + i) * ow + j]) / (rows.len() * cols.len()) as f64;
                for r in rows {
                    for c in cols.clone() {
                        dx[(p * d.h + r) * d.w + c] += share;
                    }
                }
            }
        }
    }
    Ok(Storage::Cpu(dx.into_iter().map(|v| v as f32).collect()))
}

pub(crate) fn crop(x: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
    let x = host(x)?;
    check_window("crop", d, win)?;
    check_len("crop", "the input", x.len(), d.len())?;
    let mut y = Vec::with_capacity(d.planes() * win.h * win.w);
    for plane in planes(x, d) {
        for r in win.top..win.top + win.h {
            y.extend_from_slice(&plane[r * d.w + win.left..][..win.w]);
        }
    }
    Ok(Storage::Cpu(y))
}

pub(crate) fn crop_backward(dy: &Storage, d: ImageDims, win: Window) -> Result<Storage> {
    let dy = host(dy)?;
    check_window("crop_backward", d, win)?;
    let op = "crop_backward";
    check_len(op, "the gradient", dy.len(), d.planes() * win.h * win.w)?;
    let mut dx = vec![0f32; d.len()];
    for p in 0..d.planes() {
        for r in 0..win.h {
            let at = (p * d.h + win.top + r) * d.w + win.left;
            dx[at..at + win.w].copy_from_slice(&dy[(p * win.h + r) * win.w..][..win.w]);
        }
    }
    Ok(Storage::Cpu(dx))
}
