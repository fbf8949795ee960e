//! Differentiable ops: shape checks, the backend call, and the backward wiring. Each op's
//! numeric kernels live in the backends, under the same family name: `ops/<family>.rs` here,
//! the family's backend trait in `backend/<family>.rs`, `kernels/<family>.cu`,
//! `backend/cuda/<family>.rs`, `backend/reference/<family>.rs` (and `backend/cpu/<family>.rs`
//! where the fast CPU backend has its own code).

mod batchnorm;
mod conditional;
mod conv;
mod diffaug;
mod dtype;
mod elementwise;
mod loss;
mod random;
mod reduce;
mod resample;
mod spectral_norm;

pub use batchnorm::{batch_norm2d, batch_norm2d_act, batch_norm2d_synced};
pub use conditional::{channel_affine, channel_gate, embedding, label_values, row_dot, Labels};
pub use conv::{conv2d, conv2d_act, conv_transpose2d, conv_transpose2d_act};
pub use diffaug::{
    diff_augment, diff_augment_by, diff_augment_part, diffaug_color, diffaug_cutout,
    diffaug_params, diffaug_translate, DiffAugment, DiffAugmentBuffers, DiffAugmentParams,
};
pub use dtype::{to_dtype, to_f32};
pub use elementwise::{add, glu, leaky_relu, mul, relu, scale, sigmoid, tanh};
pub use loss::{bce_with_logits, hinge_loss, l1_loss, mse_loss, GanLoss};
pub use random::{dropout, gaussian_noise, Seed};
pub use reduce::{mean, mean_rows, sum, sum_rows};
pub use resample::{adaptive_avg_pool2d, crop2d, upsample_nearest2d};
pub use spectral_norm::spectral_norm_weight;

use crate::backend::DType;
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

/// What most ops take: f32 throughout.
const F32: &[&[DType]] = &[&[DType::F32]];

/// What the ops amp's activations pass through take: all f32, or all f16 (an activation, its
/// gradient).
const F32_OR_F16: &[&[DType]] = &[&[DType::F32], &[DType::F16]];

/// Checks an op's named tensor inputs against the dtype combinations it accepts: each
/// combination gives one dtype per input, or a single dtype for all of them. The error names the
/// op, the inputs' dtypes and what it takes, e.g. "conv2d: input is f16, weight is f32; this op
/// takes f32".
fn check_dtypes(op: &str, inputs: &[(&str, &Tensor)], accepts: &[&[DType]]) -> Result<()> {
    let got: Vec<DType> = inputs.iter().map(|(_, t)| t.dtype()).collect();
    let fits = |combo: &[DType]| match combo {
        [one] => got.iter().all(|d| d == one),
        all => all == got.as_slice(),
    };
    if accepts.iter().any(|c| fits(c)) {
        return Ok(());
    }
    let describe = |combo: &[DType]| match combo {
        [one] => one.to_string(),
        all => inputs
            .iter()
            .zip(all)
            .map(|((name, _), d)| format!("{name} {d}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let given: Vec<String> = inputs
        .iter()
        .map(|(name, t)| format!("{name} is {}", t.dtype()))
        .collect();
    let mut takes = describe(accepts[0]);
    for c in &accepts[1..] {
        takes += &format!(" (or {})", describe(c));
    }
    bail!("{op}: {}; this op takes {takes}", given.join(", "))
}

fn nchw(op: &str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        ref s => bail!("{op}: expected an NCHW tensor, got shape {s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Device;

    /// The form an op with several accepted combinations gives (amp's ops will have them).
    #[test]
    fn check_dtypes_lists_every_accepted_combination() {
        let h = Tensor::from_f16(vec![half::f16::ONE], &[1], Device::Cpu).unwrap();
        let f = Tensor::from_vec(vec![1.0], &[1], Device::Cpu).unwrap();
        let takes: &[&[DType]] = &[&[DType::F32], &[DType::F16, DType::F32]];
        check_dtypes("bn", &[("input", &h), ("weight", &f)], takes).unwrap();
        check_dtypes("bn", &[("input", &f), ("weight", &f)], takes).unwrap();
        let e = check_dtypes("bn", &[("input", &f), ("weight", &h)], takes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bn: input is f32, weight is f16; this op takes f32 (or input f16, weight f32)"
        );
    }
}
