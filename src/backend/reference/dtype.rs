//! Casts between element types on the host: f32 -> f16 rounds to nearest, ties to even
//! (`half::f16::from_f32`: overflow to ±inf, subnormals kept, NaN stays NaN); f16 -> f32 is
//! exact. `kernels/conv.cu`'s `f32_to_f16` / `f16_to_f32` are its device twins.

use crate::backend::{DType, Storage};
use anyhow::{bail, Result};
use half::f16;

pub fn cast(s: &Storage, to: DType) -> Result<Storage> {
    Ok(match (s, to) {
        (Storage::Cpu(v), DType::F32) => Storage::Cpu(v.clone()),
        (Storage::Cpu(v), DType::F16) => {
            Storage::CpuF16(v.iter().map(|&x| f16::from_f32(x)).collect())
        }
        (Storage::CpuF16(v), DType::F16) => Storage::CpuF16(v.clone()),
        (Storage::CpuF16(v), DType::F32) => Storage::Cpu(v.iter().map(|x| x.to_f32()).collect()),
        (other, _) => bail!(
            "to_dtype: this backend has no implementation for tensors on {}",
            other.device()
        ),
    })
}
