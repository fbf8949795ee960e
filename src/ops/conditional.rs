//! Ops of the conditional models: embedding lookup (backward: a scatter-add), the per-sample
//! channel affine of class-conditional batch norm (and its scale-only form, FastGAN's channel
//! gate), and the row-wise inner product of the
//! projection discriminator.

use super::{check_dtypes, nchw, same_device, F32};
use crate::backend::{ChannelDims, Storage};
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
    check_dtypes("embedding", &[("table", table)], F32)?;
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
    check_dtypes(
        "channel_affine",
        &[("input", x), ("scale", scale), ("shift", shift)],
        F32,
    )?;
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

/// `y[n, c, :, :] = x[n, c, :, :] * g[n, c]`, `g` of shape `[N, C, 1, 1]` or `[N, C]`: FastGAN's
/// skip-layer excitation gate (applied after `ops::sigmoid`). `dg[n, c]` sums `dy * x` over
/// the pixels.
pub fn channel_gate(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    same_device("channel_gate", &[x, g])?;
    check_dtypes("channel_gate", &[("input", x), ("gate", g)], F32)?;
    let [n, c, h, w] = nchw("channel_gate", x)?;
    if g.shape() != [n, c, 1, 1] && g.shape() != [n, c] {
        bail!(
            "channel_gate: gate of shape {:?} for input {:?}, expected [{n}, {c}, 1, 1] or \
             [{n}, {c}]",
            g.shape(),
            x.shape()
        );
    }
    let d = ChannelDims { n, c, hw: h * w };
    let be = x.backend();
    let y = be.channel_gate(&x.storage(), &g.storage(), d)?;
    let (sx, sg) = (x.storage_rc(), g.storage_rc());
    Tensor::from_op(
        y,
        x.shape(),
        "channel_gate",
        &[x, g],
        move |dy: &Storage, _needs: &[bool]| {
            let (dx, dg) = be.channel_gate_backward(&sx.borrow(), &sg.borrow(), dy, d)?;
            Ok(vec![Some(dx), Some(dg)])
        },
    )
}

/// Row-wise inner product of two `[rows, cols]` tensors → `[rows]`.
pub fn row_dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("row_dot", &[a, b])?;
    check_dtypes("row_dot", &[("a", a), ("b", b)], F32)?;
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
