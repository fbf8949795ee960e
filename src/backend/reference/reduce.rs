//! Row sums and broadcasts, channel bias and channel sums, reference (f64 sums;
//! `kernels/reduce.cu`). No autograd of its own: helpers of the other families.

use super::host;
use crate::backend::*;
use anyhow::{bail, Result};

pub(crate) fn sum_rows(x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
    let x = host(x)?;
    if x.len() != rows * cols {
        bail!("sum_rows: {} elements is not {rows}x{cols}", x.len());
    }
    Ok(Storage::Cpu(
        (0..rows)
            .map(|r| {
                let s: f64 = x[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum();
                (s * f64::from(alpha)) as f32
            })
            .collect(),
    ))
}

pub(crate) fn broadcast_rows(g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
    let g = host(g)?;
    if g.len() != rows {
        bail!("broadcast_rows: {} values for {rows} rows", g.len());
    }
    Ok(Storage::Cpu(
        g.iter()
            .flat_map(|&v| std::iter::repeat_n(v * alpha, cols))
            .collect(),
    ))
}

pub(crate) fn add_channel_bias(y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage> {
    let (y, b) = (host(y)?, host(b)?);
    Ok(Storage::Cpu(
        y.iter()
            .enumerate()
            .map(|(i, &v)| v + b[(i / d.hw) % d.c])
            .collect(),
    ))
}

pub(crate) fn channel_sum(dy: &Storage, d: ChannelDims) -> Result<Storage> {
    let dy = host(dy)?;
    let mut sums = vec![0f64; d.c];
    for (i, &v) in dy.iter().enumerate() {
        sums[(i / d.hw) % d.c] += f64::from(v);
    }
    Ok(Storage::Cpu(sums.into_iter().map(|s| s as f32).collect()))
}
