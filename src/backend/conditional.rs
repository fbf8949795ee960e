//! The conditional models' ops: the family's backend trait. Its autograd ops are
//! `crate::ops::conditional`, its kernels `kernels/conditional.cu` (launched by
//! `cuda/conditional.rs`), its reference `reference/conditional.rs`.

use super::reference::conditional as reference;
use super::{on_host, ChannelDims, Storage};
use anyhow::Result;

/// The conditional models' ops: class embeddings, the class-conditional batch-norm affine (and
/// its scale-only form, the channel gate) and the projection discriminator's inner product. Class labels travel as f32 holding small
/// non-negative integers (exact below 2^24), validated by `crate::ops`. The defaults run the
/// reference (`backend/reference/conditional.rs`) on host memory.
pub trait ConditionalBackend {
    /// Embedding lookup: `out[b, :] = table[labels[b], :]`, table `[classes, dim]`, labels
    /// `[B]`, out `[B, dim]`.
    fn embedding(
        &self,
        table: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        let op = "embedding";
        reference::embedding(on_host(op, table)?, on_host(op, labels)?, classes, dim)
            .map(Storage::Cpu)
    }
    /// Its backward, a scatter-add: `out[k, :] = sum over b with labels[b] = k of dy[b, :]`
    /// (`[classes, dim]`, rows of absent classes 0), summed in batch order (deterministic).
    fn embedding_backward(
        &self,
        dy: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        let op = "embedding_backward";
        reference::embedding_backward(on_host(op, dy)?, on_host(op, labels)?, classes, dim)
            .map(Storage::Cpu)
    }
    /// Per-sample, per-channel affine: `y[n, c, hw] = x[n, c, hw] * scale[n, c] + shift[n, c]`
    /// (class-conditional batch norm: `scale`/`shift` are embedding lookups).
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        d: ChannelDims,
    ) -> Result<Storage> {
        let op = "channel_affine";
        let (x, scale, shift) = (on_host(op, x)?, on_host(op, scale)?, on_host(op, shift)?);
        reference::channel_affine(x, scale, shift, d).map(Storage::Cpu)
    }
    /// Returns (dx, dscale, dshift) of [`ConditionalBackend::channel_affine`]:
    /// `dx = dy * scale[n, c]`, `dscale[n, c] = sum_hw dy * x`, `dshift[n, c] = sum_hw dy`.
    fn channel_affine_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        let op = "channel_affine_backward";
        let (x, dy, scale) = (on_host(op, x)?, on_host(op, dy)?, on_host(op, scale)?);
        let (dx, ds, db) = reference::channel_affine_backward(x, dy, scale, d)?;
        Ok((Storage::Cpu(dx), Storage::Cpu(ds), Storage::Cpu(db)))
    }
    /// Per-sample channel gate (FastGAN's skip-layer excitation, after its sigmoid):
    /// `y[n, c, hw] = x[n, c, hw] * g[n, c]`.
    fn channel_gate(&self, x: &Storage, g: &Storage, d: ChannelDims) -> Result<Storage> {
        let op = "channel_gate";
        reference::channel_gate(on_host(op, x)?, on_host(op, g)?, d).map(Storage::Cpu)
    }
    /// Returns (dx, dg) of [`ConditionalBackend::channel_gate`]: `dx = dy * g[n, c]`,
    /// `dg[n, c] = sum_hw dy * x`.
    fn channel_gate_backward(
        &self,
        x: &Storage,
        g: &Storage,
        dy: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage)> {
        let op = "channel_gate_backward";
        let (x, g, dy) = (on_host(op, x)?, on_host(op, g)?, on_host(op, dy)?);
        let (dx, dg) = reference::channel_gate_backward(x, g, dy, d)?;
        Ok((Storage::Cpu(dx), Storage::Cpu(dg)))
    }
    /// Row-wise inner product of two `[rows, cols]` views: `out[r] = sum_c a[r, c] * b[r, c]`
    /// (the projection term `<embed(y), phi(x)>`).
    fn row_dot(&self, a: &Storage, b: &Storage, rows: usize, cols: usize) -> Result<Storage> {
        let op = "row_dot";
        reference::row_dot(on_host(op, a)?, on_host(op, b)?, rows, cols).map(Storage::Cpu)
    }
    /// Returns (da, db) of [`ConditionalBackend::row_dot`]: `da[r, c] = g[r] * b[r, c]`,
    /// `db = g[r] * a`.
    fn row_dot_backward(
        &self,
        a: &Storage,
        b: &Storage,
        g: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        let op = "row_dot_backward";
        let (a, b, g) = (on_host(op, a)?, on_host(op, b)?, on_host(op, g)?);
        let (da, db) = reference::row_dot_backward(a, b, g, rows, cols)?;
        Ok((Storage::Cpu(da), Storage::Cpu(db)))
    }
}
