//! CUDA backend: our kernels (`kernels/*.cu`, loaded by [`loader`]), cuBLAS GEMMs for
//! convolutions (or cuDNN, see [`ConvImpl`]), a caching allocator, one stream.
//!
//! This file holds the backend struct, its launch macro and the memory family. The launches
//! of each kernel family `kernels/<family>.cu` live in `<family>.rs` beside it, with the
//! family trait's impl (`adam`, `batch`, `batchnorm`, `conditional`, `conv` (+ `cudnn`),
//! `diffaug`, `elementwise`, `loss`, `random`, `reduce`, `resample`, `spectral_norm`,
//! `collective` (NCCL)); `modules.rs` loads the kernels build.rs found in each module.
//!
//! Every op is queued on the stream and returns at once; only `download` (and `synchronize`)
//! wait. Scalars the trait returns (loss, sigma) stay on the device as one-element buffers.

/// Launches kernel `$name` with the given config and arguments. Arguments must be places
/// (locals, fields), never temporaries: the builder keeps pointers to them until launch.
/// `$name` is the kernel's bare name, a constant build.rs generates from the kernel sources
/// (`modules::names`): a kernel that no source defines does not compile.
macro_rules! launch {
    ($self:expr, $name:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $self.func($crate::backend::cuda::modules::names::$name)?;
        let mut b = $self.stream.launch_builder(f);
        $( b.arg($arg); )+
        // SAFETY: argument types and counts match the kernel signature in kernels/*.cu.
        unsafe { b.launch($cfg) }
            .map(|_| ())
            .map_err(|e| {
                $crate::backend::cuda::err::drv(e, concat!("launching ", stringify!($name)))
            })
    }};
}

/// `launch!` for a kernel that comes in two storage types, `$f32` and `$f16` (one template
/// body in kernels/*.cu): the one for `$dtype` (a `DType`), with the same arguments.
macro_rules! launch_typed {
    ($self:expr, $dtype:expr, $f32:ident | $f16:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {
        match $dtype {
            $crate::backend::DType::F32 => launch!($self, $f32, $cfg, $($arg),+),
            $crate::backend::DType::F16 => launch!($self, $f16, $cfg, $($arg),+),
        }
    };
}

mod adam;
pub mod alloc;
mod batch;
mod batchnorm;
mod collective;
mod concat;
mod conditional;
mod conv;
mod cudnn;
mod diffaug;
mod dtype;
mod elementwise;
pub mod embedded;
mod err;
pub mod graph;
mod launch;
pub mod libs;
pub mod loader;
mod loss;
mod modules;
mod random;
mod reduce;
mod resample;
mod spectral_norm;

use super::*;
pub use alloc::CudaBuffer;
use alloc::{Pool, PoolStats};
use anyhow::{bail, Result};
pub use collective::nccl_unique_id;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys::CUdevice_attribute, CudaContext, CudaFunction, CudaStream};
use err::drv;
use launch::BLOCK;
pub use libs::{compute_capability, device_count, device_name};
use std::collections::HashMap;
use std::sync::Arc;

pub struct CudaBackend {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    dnn: Option<cudnn::CudnnConv>,
    /// Why cuDNN is not loaded (said once, on the first convolution that asks for it).
    dnn_missing: Option<String>,
    dnn_note: std::sync::Once,
    pool: Arc<Pool>,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Grid cap for grid-stride kernels (enough blocks to fill every SM several times).
    max_blocks: u32,
    poison: bool,
    /// Test hook: the next capture makes a call CUDA forbids while capturing
    /// (`StepCapture::break_next_capture`).
    break_capture: std::sync::atomic::AtomicBool,
}

/// The f32 buffer of `s` (every kernel but the casts takes f32).
fn cb(s: &Storage) -> Result<&CudaBuffer> {
    match s {
        Storage::Cuda(b) => Ok(b),
        other => Err(not_f32_on_cuda(other)),
    }
}

fn cb_mut(s: &mut Storage) -> Result<&mut CudaBuffer> {
    match s {
        Storage::Cuda(b) => Ok(b),
        other => Err(not_f32_on_cuda(other)),
    }
}

fn not_f32_on_cuda(s: &Storage) -> anyhow::Error {
    match s {
        Storage::CudaF16(_) => anyhow::anyhow!("a CUDA f32 kernel was given an f16 tensor"),
        other => anyhow::anyhow!("the CUDA backend was given a tensor on {}", other.device()),
    }
}

impl CudaBackend {
    pub fn new(ordinal: usize) -> Result<Self> {
        // cudarc panics on a missing library: find them all first (cuDNN is optional).
        libs::ensure_libraries(false)?;
        // cuDNN is optional and probed always, so that the switch can be flipped at run time.
        let cudnn_libs = libs::ensure_libraries(true);
        let ctx =
            libs::catch_cudarc_panic("creating the CUDA context", || CudaContext::new(ordinal))?
                .map_err(|e| drv(e, &format!("cuda:{ordinal}: creating the context")))?;
        // One stream, so cudarc's per-allocation events only cost time.
        // SAFETY: nothing has been allocated on this context by us yet; we use one stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| drv(e, "creating the stream"))?;
        let blas = libs::catch_cudarc_panic("loading cuBLAS", || CudaBlas::new(stream.clone()))?
            .map_err(|e| err::blas(e, "creating the cuBLAS handle"))?;
        let dnn = match cudnn_libs {
            Ok(()) => {
                libs::catch_cudarc_panic("loading cuDNN", || cudnn::CudnnConv::new(stream.clone()))
                    .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        let (dnn, dnn_missing) = match dnn {
            Ok(d) => (Some(d), None),
            Err(e) => {
                let msg = format!("{e:#}");
                (
                    None,
                    Some(msg.lines().next().unwrap_or_default().to_string()),
                )
            }
        };
        let funcs = modules::load_all(&ctx)?;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| drv(e, "reading the SM count"))?;
        let pool = Arc::new(Pool::new(stream.clone()));
        Ok(CudaBackend {
            ordinal,
            ctx,
            stream,
            blas,
            dnn,
            dnn_missing,
            dnn_note: std::sync::Once::new(),
            pool,
            funcs,
            max_blocks: (sms.max(1) as u32) * 16,
            poison: std::env::var("ARTGAN_POISON").is_ok_and(|v| v == "1"),
            break_capture: Default::default(),
        })
    }

    /// Allocator counters (driver allocations vs reuses), for tests and benches.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown".into())
    }

    /// Whether convolutions asking for `imp` go through cuDNN.
    pub fn uses_cudnn(&self, imp: ConvImpl) -> bool {
        self.dnn.is_some() && imp == ConvImpl::Cudnn
    }

    /// A buffer of `len` elements, contents unspecified (NaN under `ARTGAN_POISON=1`).
    fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        let slice = self.pool.take(len.max(1))?;
        let mut b = CudaBuffer {
            slice: Some(slice),
            len,
            ordinal: self.ordinal,
            pool: self.pool.clone(),
        };
        if self.poison {
            elementwise::fill(self, &mut b, f32::NAN)?;
        }
        Ok(b)
    }
}

// Each family's impl is in its file; memory is the backend's own.
impl MemoryBackend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn upload_f16(&self, host: &[half::f16]) -> Result<Storage> {
        dtype::upload_f16(self, host)
    }

    fn download_f16(&self, s: &Storage) -> Result<Vec<half::f16>> {
        dtype::download_f16(self, s)
    }

    fn cast(&self, s: &Storage, to: DType) -> Result<Storage> {
        dtype::cast(self, s, to)
    }

    fn upload(&self, host: &[f32]) -> Result<Storage> {
        let mut b = self.alloc(host.len())?;
        if !host.is_empty() {
            self.stream
                .memcpy_htod(host, b.slice_mut())
                .map_err(|e| drv(e, "copying to the GPU"))?;
        }
        Ok(Storage::Cuda(b))
    }

    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        let b = cb(s)?;
        if b.len == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .stream
            .clone_dtoh(&b.slice().slice(0..b.len))
            .map_err(|e| drv(e, "copying from the GPU"))?;
        self.synchronize()?;
        Ok(v)
    }

    fn zeros(&self, len: usize) -> Result<Storage> {
        let mut b = self.alloc(len)?;
        self.stream
            .memset_zeros(b.slice_mut())
            .map_err(|e| drv(e, "memset"))?;
        Ok(Storage::Cuda(b))
    }

    fn full(&self, len: usize, value: f32) -> Result<Storage> {
        let mut b = self.alloc(len)?;
        elementwise::fill(self, &mut b, value)?;
        Ok(Storage::Cuda(b))
    }

    fn copy(&self, s: &Storage) -> Result<Storage> {
        if let Storage::CudaF16(_) = s {
            return dtype::copy_f16(self, s);
        }
        let src = cb(s)?;
        let mut b = self.alloc(src.len)?;
        if src.len > 0 {
            self.stream
                .memcpy_dtod(&src.slice().slice(0..src.len), b.slice_mut())
                .map_err(|e| drv(e, "device copy"))?;
        }
        Ok(Storage::Cuda(b))
    }

    fn write(&self, dst: &mut Storage, host: &[f32]) -> Result<()> {
        let b = cb_mut(dst)?;
        if b.len != host.len() {
            bail!("write: {} values into {}", host.len(), b.len);
        }
        if !host.is_empty() {
            self.stream
                .memcpy_htod(host, &mut b.slice_mut().slice_mut(0..host.len()))
                .map_err(|e| drv(e, "copying to the GPU"))?;
        }
        Ok(())
    }

    fn copy_into(&self, dst: &mut Storage, src: &Storage) -> Result<()> {
        graph::copy_into(self, dst, src)
    }

    fn concat(&self, parts: &[&Storage]) -> Result<Storage> {
        concat::concat(self, parts)
    }

    fn step_capture(&self) -> Option<&dyn crate::backend::capture::StepCapture> {
        Some(self)
    }

    fn peak_memory_bytes(&self) -> Option<u64> {
        Some(self.pool.stats().peak_in_use_bytes)
    }

    fn reset_peak_memory(&self) {
        self.pool.reset_peak()
    }

    fn release_cached_memory(&self) -> Result<()> {
        self.pool.trim()
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| drv(e, "synchronize"))
    }
}
