//! Row and channel reductions: the family's backend trait. Its autograd ops are
//! `crate::ops::reduce`, its kernels `kernels/reduce.cu` (launched by `cuda/reduce.rs`), its
//! reference `reference/reduce.rs`.

use super::reference::reduce as reference;
use super::{all_on_host, ChannelDims, Storage};
use anyhow::Result;

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
