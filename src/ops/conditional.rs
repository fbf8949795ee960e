//! Ops of the conditional models: embedding lookup (backward: a scatter-add), the per-sample
//! channel affine of class-conditional batch norm, and the row-wise inner product of the
//! projection discriminator; and their backend family, [`ConditionalBackend`].

use super::{nchw, same_device};
use crate::backend::reference::conditional as reference;
use crate::backend::{on_host, ChannelDims, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// The class labels of a batch: the host values (validated, and what the host backends read)
/// and, in a training step that a CUDA graph replays, their copy on the device (as f32,
/// written before the step), which the kernels read instead of an upload per lookup.
#[derive(Clone, Copy)]
pub struct Labels<'a> {
    pub host: &'a [u32],
    pub on_device: Option<&'a Tensor>,
}

impl<'a> From<&'a [u32]> for Labels<'a> {
    fn from(host: &'a [u32]) -> Self {
        Labels {
            host,
            on_device: None,
        }
    }
}

impl<'a, const N: usize> From<&'a [u32; N]> for Labels<'a> {
    fn from(host: &'a [u32; N]) -> Self {
        Labels::from(&host[..])
    }
}

/// `labels` as f32 (what the device copy of [`Labels`] holds).
pub fn label_values(labels: &[u32]) -> Vec<f32> {
    labels.iter().map(|&l| l as f32).collect()
}

/// `table[labels[b], :]` for each label: `[classes, dim]` → `[B, dim]`. The gradient reaches
/// the table by a scatter-add (rows of classes absent from the batch get 0).
pub fn embedding<'a>(table: &Tensor, labels: impl Into<Labels<'a>>) -> Result<Tensor> {
    let labels = labels.into();
    let [classes, dim] = match *table.shape() {
        [k, d] => [k, d],
        ref s => bail!("embedding: table of shape {s:?}, expected [classes, dim]"),
    };
    if let Some(&bad) = labels.host.iter().find(|&&l| l as usize >= classes) {
        bail!("embedding: label {bad} is out of range for {classes} classes");
    }
    let be = table.backend();
    let labels_dev = match labels.on_device {
        Some(t) if t.numel() == labels.host.len() => t.storage_rc(),
        Some(t) => bail!(
            "embedding: {} labels on the device for {} on the host",
            t.numel(),
            labels.host.len()
        ),
        None => Tensor::from_vec(
            label_values(labels.host),
            &[labels.host.len()],
            table.device(),
        )?
        .storage_rc(),
    };
    let y = be.embedding(&table.storage(), &labels_dev.borrow(), classes, dim)?;
    Tensor::from_op(
        y,
        &[labels.host.len(), dim],
        "embedding",
        &[table],
        move |g: &Storage, _needs: &[bool]| {
            Ok(vec![Some(be.embedding_backward(
                g,
                &labels_dev.borrow(),
                classes,
                dim,
            )?)])
        },
    )
}

/// `y[n, c, :, :] = x[n, c, :, :] * scale[n, c] + shift[n, c]` (`scale`/`shift`: `[N, C]`).
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    same_device("channel_affine", &[x, scale, shift])?;
    let [n, c, h, w] = nchw("channel_affine", x)?;
    for (name, t) in [("scale", scale), ("shift", shift)] {
        if t.shape() != [n, c] {
            bail!(
                "channel_affine: {name} of shape {:?}, expected [{n}, {c}]",
                t.shape()
            );
        }
    }
    let d = ChannelDims { n, c, hw: h * w };
    let be = x.backend();
    let y = be.channel_affine(&x.storage(), &scale.storage(), &shift.storage(), d)?;
    let (sx, ss) = (x.storage_rc(), scale.storage_rc());
    Tensor::from_op(
        y,
        x.shape(),
        "channel_affine",
        &[x, scale, shift],
        move |g: &Storage, _needs: &[bool]| {
            let (dx, ds, db) = be.channel_affine_backward(&sx.borrow(), g, &ss.borrow(), d)?;
            Ok(vec![Some(dx), Some(ds), Some(db)])
        },
    )
}

/// Row-wise inner product of two `[rows, cols]` tensors → `[rows]`.
pub fn row_dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("row_dot", &[a, b])?;
    let (rows, cols) = match *a.shape() {
        [r, c] => (r, c),
        ref s => bail!("row_dot: expected [rows, cols], got {s:?}"),
    };
    if b.shape() != a.shape() {
        bail!("row_dot: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    let be = a.backend();
    let y = be.row_dot(&a.storage(), &b.storage(), rows, cols)?;
    let (sa, sb) = (a.storage_rc(), b.storage_rc());
    Tensor::from_op(
        y,
        &[rows],
        "row_dot",
        &[a, b],
        move |g: &Storage, _needs: &[bool]| {
            let (da, db) = be.row_dot_backward(&sa.borrow(), &sb.borrow(), g, rows, cols)?;
            Ok(vec![Some(da), Some(db)])
        },
    )
}

/// The conditional models' ops: class embeddings, the class-conditional batch-norm affine and
/// the projection discriminator's inner product. Class labels travel as f32 holding small
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
