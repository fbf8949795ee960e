//! `to_dtype`: a tensor as another element type. Its backward casts the gradient back to the
//! input's dtype, so a gradient always has its tensor's dtype.

use crate::backend::DType;
use crate::tensor::Tensor;
use anyhow::Result;

/// `x` as `to` (f32 -> f16 rounds to nearest, ties to even; f16 -> f32 is exact). A copy even
/// when `x` already is `to`.
pub fn to_dtype(x: &Tensor, to: DType) -> Result<Tensor> {
    let be = x.backend();
    let from = x.dtype();
    let y = be.cast(&x.storage(), to)?;
    Tensor::from_op(y, x.shape(), "to_dtype", &[x], move |g, _| {
        Ok(vec![Some(be.cast(g, from)?)])
    })
}

/// `x` as f32, `x` itself when it already is: where amp's f16 activations meet an op or a
/// model output that is f32 only.
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => Ok(x.clone()),
        DType::F16 => to_dtype(x, DType::F32),
    }
}
