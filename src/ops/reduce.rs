//! Reductions on a `[rows, cols]` view (sums and means of a tensor, of each row) and the
//! per-channel bias sum, with their backend family, [`ReduceBackend`].

use crate::backend::reference::reduce as reference;
use crate::backend::{all_on_host, ChannelDims, Storage};
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

/// Row and channel reductions and their broadcasts. The defaults run the reference
/// (`backend/reference/reduce.rs`) on host memory.
pub trait ReduceBackend {
    /// `out[r] = alpha * sum_c x[r, c]`.
    fn sum_rows(&self, x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        all_on_host("sum_rows", &[x])?;
        reference::sum_rows(x, rows, cols, alpha)
    }
    /// `out[r, c] = alpha * g[r]` (backward of `sum_rows`).
    fn broadcast_rows(&self, g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        all_on_host("broadcast_rows", &[g])?;
        reference::broadcast_rows(g, rows, cols, alpha)
    }
    /// `y[n, c, :] + b[c]`.
    fn add_channel_bias(&self, y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage> {
        all_on_host("add_channel_bias", &[y, b])?;
        reference::add_channel_bias(y, b, d)
    }
    /// `out[c] = sum_{n, hw} dy[n, c, hw]` (bias gradient).
    fn channel_sum(&self, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        all_on_host("channel_sum", &[dy])?;
        reference::channel_sum(dy, d)
    }
}
