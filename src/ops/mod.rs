//! Differentiable ops: shape checks, the backend call, and the backward wiring. Each op's
//! numeric kernels live in the backends, under the same family name: `ops/<family>.rs` here,
//! the family's backend trait in `backend/<family>.rs`, `kernels/<family>.cu`,
//! `backend/cuda/<family>.rs`, `backend/reference/<family>.rs` (and `backend/cpu/<family>.rs`
//! where the fast CPU backend has its own code).

mod batchnorm;
mod conditional;
mod conv;
mod diffaug;
mod elementwise;
mod loss;
mod random;
mod reduce;
mod spectral_norm;

pub use batchnorm::{batch_norm2d, batch_norm2d_act};
pub use conditional::{channel_affine, embedding, label_values, row_dot, Labels};
pub use conv::{conv2d, conv2d_act, conv_transpose2d, conv_transpose2d_act};
pub use diffaug::{
    diff_augment, diff_augment_by, diffaug_color, diffaug_cutout, diffaug_params,
    diffaug_translate, DiffAugment, DiffAugmentBuffers, DiffAugmentParams,
};
pub use elementwise::{add, glu, leaky_relu, mul, relu, scale, sigmoid, tanh};
pub use loss::{bce_with_logits, hinge_loss, GanLoss};
pub use random::{dropout, gaussian_noise, Seed};
pub use reduce::{mean, mean_rows, sum, sum_rows};
pub use spectral_norm::spectral_norm_weight;

use crate::tensor::Tensor;
use anyhow::{bail, Result};

fn same_device(op: &str, tensors: &[&Tensor]) -> Result<()> {
    let d = tensors[0].device();
    if let Some(t) = tensors.iter().find(|t| t.device() != d) {
        bail!(
            "{op}: tensors on different devices ({d} and {})",
            t.device()
        );
    }
    Ok(())
}

fn nchw(op: &str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        ref s => bail!("{op}: expected an NCHW tensor, got shape {s:?}"),
    }
}
