//! f16 storage on the device and the casts (`kernels/conv.cu`'s `f32_to_f16`, round to nearest
//! even, and `f16_to_f32`, exact; `reference::dtype` is their host twin). The caching allocator
//! hands out 4-byte units, so an f16 tensor of n elements holds ⌈n/2⌉ of them, two halves a
//! unit (element 2i in the low 16 bits): 2 bytes an element, plus 2 when n is odd.

use super::err::drv;
use super::{cb, CudaBackend, CudaBuffer};
use crate::backend::{DType, Storage};
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;
use half::f16;

/// Units (4 bytes) an f16 buffer of `len` elements holds.
fn units(len: usize) -> usize {
    len.div_ceil(2)
}

fn f16_buffer(s: &Storage) -> Result<&CudaBuffer> {
    match s {
        Storage::CudaF16(b) => Ok(b),
        other => bail!(
            "expected an f16 tensor on the GPU, given {} on {}",
            other.dtype(),
            other.device()
        ),
    }
}

/// An f16 buffer of `len` elements, contents unspecified (NaN under `ARTGAN_POISON=1`).
pub(super) fn alloc_f16(be: &CudaBackend, len: usize) -> Result<CudaBuffer> {
    let mut b = be.alloc(units(len))?; // poisoned as f32 NaNs: each half is NaN too
    b.len = len;
    Ok(b)
}

pub(super) fn upload_f16(be: &CudaBackend, host: &[f16]) -> Result<Storage> {
    let mut b = alloc_f16(be, host.len())?;
    let packed: Vec<f32> = host
        .chunks(2)
        .map(|p| {
            let hi = p.get(1).map_or(0, |h| h.to_bits());
            f32::from_bits(u32::from(p[0].to_bits()) | u32::from(hi) << 16)
        })
        .collect();
    if !packed.is_empty() {
        be.stream
            .memcpy_htod(&packed, &mut b.slice_mut().slice_mut(0..packed.len()))
            .map_err(|e| drv(e, "copying to the GPU"))?;
    }
    Ok(Storage::CudaF16(b))
}

pub(super) fn download_f16(be: &CudaBackend, s: &Storage) -> Result<Vec<f16>> {
    let b = f16_buffer(s)?;
    if b.len == 0 {
        return Ok(Vec::new());
    }
    let packed = be
        .stream
        .clone_dtoh(&b.slice().slice(0..units(b.len)))
        .map_err(|e| drv(e, "copying from the GPU"))?;
    be.stream.synchronize().map_err(|e| drv(e, "synchronize"))?;
    let halves = packed.iter().flat_map(|u| {
        let bits = u.to_bits();
        [
            f16::from_bits(bits as u16),
            f16::from_bits((bits >> 16) as u16),
        ]
    });
    Ok(halves.take(b.len).collect())
}

pub(super) fn copy_f16(be: &CudaBackend, s: &Storage) -> Result<Storage> {
    let src = f16_buffer(s)?;
    let mut b = alloc_f16(be, src.len)?;
    if src.len > 0 {
        let n = units(src.len);
        be.stream
            .memcpy_dtod(&src.slice().slice(0..n), &mut b.slice_mut().slice_mut(0..n))
            .map_err(|e| drv(e, "device copy"))?;
    }
    Ok(Storage::CudaF16(b))
}

pub(super) fn cast(be: &CudaBackend, s: &Storage, to: DType) -> Result<Storage> {
    use crate::backend::MemoryBackend;
    match (s, to) {
        (Storage::Cuda(_), DType::F32) => be.copy(s),
        (Storage::CudaF16(_), DType::F16) => copy_f16(be, s),
        (Storage::Cuda(_), DType::F16) => {
            let x = cb(s)?;
            let mut out = alloc_f16(be, x.len)?;
            let n = x.len as u64;
            if n > 0 {
                launch!(be, f32_to_f16, be.grid(n), x.slice(), &n, out.slice_mut())?;
            }
            Ok(Storage::CudaF16(out))
        }
        (Storage::CudaF16(h), DType::F32) => {
            let mut out = be.alloc(h.len)?;
            let n = h.len as u64;
            if n > 0 {
                launch!(be, f16_to_f32, be.grid(n), h.slice(), &n, out.slice_mut())?;
            }
            Ok(Storage::Cuda(out))
        }
        (other, _) => bail!("the CUDA backend was given a tensor on {}", other.device()),
    }
}

/// The buffer of a CUDA tensor of either dtype, for the kernels that come as `<name>_f32` and
/// `<name>_f16` (`launch_typed!`).
pub(super) fn any_buffer(s: &Storage) -> Result<&CudaBuffer> {
    match s {
        Storage::Cuda(b) | Storage::CudaF16(b) => Ok(b),
        other => bail!("the CUDA backend was given a tensor on {}", other.device()),
    }
}

pub(super) fn any_buffer_mut(s: &mut Storage) -> Result<&mut CudaBuffer> {
    match s {
        Storage::Cuda(b) | Storage::CudaF16(b) => Ok(b),
        other => bail!("the CUDA backend was given a tensor on {}", other.device()),
    }
}

/// The one dtype of `op`'s activation-precision tensors (`(name, tensor)`, at least one): all
/// f32 or all f16; a mix is an error naming the op and each tensor's dtype.
pub(super) fn same_dtype(op: &str, tensors: &[(&str, &Storage)]) -> Result<DType> {
    let first = tensors[0].1.dtype();
    if tensors.iter().all(|(_, t)| t.dtype() == first) {
        return Ok(first);
    }
    let given: Vec<String> = tensors
        .iter()
        .map(|(name, t)| format!("{name} is {}", t.dtype()))
        .collect();
    let names: Vec<&str> = tensors.iter().map(|(name, _)| *name).collect();
    bail!(
        "{op}: {}; the CUDA kernels take {} all f32 or all f16",
        given.join(", "),
        names.join(", ")
    )
}

/// A fresh buffer of `len` elements of `dtype`, and its wrapping into a tensor.
pub(super) fn alloc_dtype(be: &CudaBackend, dtype: DType, len: usize) -> Result<CudaBuffer> {
    match dtype {
        DType::F32 => be.alloc(len),
        DType::F16 => alloc_f16(be, len),
    }
}

pub(super) fn storage(dtype: DType, b: CudaBuffer) -> Storage {
    match dtype {
        DType::F32 => Storage::Cuda(b),
        DType::F16 => Storage::CudaF16(b),
    }
}
