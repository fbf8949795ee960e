//! Reductions on a `[rows, cols]` view: the sum or mean of a tensor, of each row.

use super::{check_dtypes, F32};
use crate::backend::Storage;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// `[rows, cols]`-view row reduction scaled by `alpha`, with output shape `out_shape`.
fn reduce_rows(
    x: &Tensor,
    rows: usize,
    alpha: f32,
    out_shape: &[usize],
    name: &'static str,
) -> Result<Tensor> {
    check_dtypes(name, &[("input", x)], F32)?;
    let cols = x.numel() / rows.max(1);
    let be = x.backend();
    let y = be.sum_rows(&x.storage(), rows, cols, alpha)?;
    Tensor::from_op(y, out_shape, name, &[x], move |g: &Storage, _: &[bool]| {
        Ok(vec![Some(be.broadcast_rows(g, rows, cols, alpha)?)])
    })
}

/// Sum of all elements, shape `[1]`.
pub fn sum(x: &Tensor) -> Result<Tensor> {
    reduce_rows(x, 1, 1.0, &[1], "sum")
}

/// Mean of all elements, shape `[1]`.
pub fn mean(x: &Tensor) -> Result<Tensor> {
    if x.numel() == 0 {
        bail!("mean of an empty tensor");
    }
    reduce_rows(x, 1, 1.0 / x.numel() as f32, &[1], "mean")
}

/// Mean over everything but the first dimension: `[n, ...]` → `[n]` (global average pooling
/// of a one-channel map).
pub fn mean_rows(x: &Tensor) -> Result<Tensor> {
    let Some(&n) = x.shape().first() else {
        bail!("mean_rows of a scalar");
    };
    let cols = x.numel() / n.max(1);
    if cols == 0 {
        bail!("mean_rows of an empty tensor");
    }
    reduce_rows(x, n, 1.0 / cols as f32, &[n], "mean_rows")
}

/// Sum over everything but the first dimension: `[n, ...]` → `[n]` (the projection
/// discriminator's phi: features summed over their pixels).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let Some(&n) = x.shape().first() else {
        bail!("sum_rows of a scalar");
    };
    reduce_rows(x, n, 1.0, &[n], "sum_rows")
}
