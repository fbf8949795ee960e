//! Memory: making, moving and copying storage; the family's backend trait. Its callers are
//! `Tensor`'s own methods (`crate::tensor`).

use super::{on_host, reference, DType, Device, Storage};
use anyhow::{bail, Result};
use half::f16;

/// Storage in and out of a backend. The defaults keep tensors in host memory.
pub trait MemoryBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn upload(&self, host: &[f32]) -> Result<Storage> {
        Ok(Storage::Cpu(host.to_vec()))
    }
    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        Ok(on_host("download", s)?.clone())
    }
    fn upload_f16(&self, host: &[f16]) -> Result<Storage> {
        Ok(Storage::CpuF16(host.to_vec()))
    }
    fn download_f16(&self, s: &Storage) -> Result<Vec<f16>> {
        match s {
            Storage::CpuF16(v) => Ok(v.clone()),
            other => bail!(
                "download_f16: given a {} tensor on {}",
                other.dtype(),
                other.device()
            ),
        }
    }
    /// `s` as `to` (a copy, also when it already is): f32 -> f16 rounds to nearest even,
    /// f16 -> f32 is exact (`reference::dtype`).
    fn cast(&self, s: &Storage, to: DType) -> Result<Storage> {
        reference::dtype::cast(s, to)
    }
    fn zeros(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Cpu(vec![0.0; len]))
    }
    fn full(&self, len: usize, value: f32) -> Result<Storage> {
        Ok(Storage::Cpu(vec![value; len]))
    }
    fn copy(&self, s: &Storage) -> Result<Storage> {
        if let Storage::CpuF16(v) = s {
            return Ok(Storage::CpuF16(v.clone()));
        }
        Ok(Storage::Cpu(on_host("copy", s)?.clone()))
    }
    /// Overwrites `dst` with `host` (same length), keeping its device buffer: what a CUDA graph
    /// reads must stay at its address.
    fn write(&self, dst: &mut Storage, host: &[f32]) -> Result<()> {
        if dst.len() != host.len() {
            bail!("write: {} values into {}", host.len(), dst.len());
        }
        *dst = self.upload(host)?;
        Ok(())
    }
    /// Overwrites `dst` with `src` (same length); the CUDA backend keeps `dst`'s buffer.
    fn copy_into(&self, dst: &mut Storage, src: &Storage) -> Result<()> {
        if dst.len() != src.len() {
            bail!("copy_into: {} elements into {}", src.len(), dst.len());
        }
        *dst = self.copy(src)?;
        Ok(())
    }
    /// The parts one after another in one new buffer (no host round trip): the training loop
    /// gathers a window's per-step metrics this way, so reading them is one download.
    fn concat(&self, parts: &[&Storage]) -> Result<Storage> {
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            out.extend_from_slice(on_host("concat", p)?);
        }
        Ok(Storage::Cpu(out))
    }
    /// Step capture and replay (`--cuda-graphs`); `None`: no graphs on this device.
    fn step_capture(&self) -> Option<&dyn super::capture::StepCapture> {
        None
    }
    /// The most bytes tensors have held at once since the backend began or since
    /// [`MemoryBackend::reset_peak_memory`] (the device allocator's high-water mark, PyTorch's
    /// `max_memory_allocated`); `None` where memory is the host's.
    fn peak_memory_bytes(&self) -> Option<u64> {
        None
    }
    /// Restarts [`MemoryBackend::peak_memory_bytes`] from what is in use now.
    fn reset_peak_memory(&self) {}
    /// Gives cached device memory back to the driver (after an out-of-memory error).
    fn release_cached_memory(&self) -> Result<()> {
        Ok(())
    }
    /// Waits for queued work (timing, error surfacing). A no-op on the host.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
