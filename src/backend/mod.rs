//! The backend seam, with three backends: the reference (`reference`, plain loops: the oracle
//! the tests compare with), the fast CPU backend (`cpu`) and CUDA (`cuda`). Every numeric
//! kernel the engine needs is a method of [`Backend`], the sum of one trait per op family, each
//! declared in `<family>.rs` here (the family's autograd ops are `crate::ops::<family>`).
//! Autograd and the models only ever call these methods, so a backend is added without
//! touching them.
//!
//! Layout conventions: NCHW, contiguous; elements f32 unless a tensor's [`DType`] says f16.
//! Conv weights `[c_out, c_in, kh, kw]`.

// One file per op family: its backend trait, with host defaults that run the reference.
mod adam;
pub mod batch;
mod batchnorm;
mod collective;
mod conditional;
mod conv;
mod diffaug;
mod dtype;
mod elementwise;
mod loss;
mod memory;
mod random;
mod reduce;
mod resample;
mod spectral_norm;

pub mod capture;
pub mod cpu;
pub mod cuda;
mod params;
pub mod reference;
pub mod select;

pub use adam::AdamBackend;
pub use batch::BatchBackend;
pub use batchnorm::BatchNormBackend;
pub use collective::{CollectiveBackend, NcclId, ABORTED};
pub use conditional::ConditionalBackend;
pub use conv::ConvBackend;
pub use diffaug::DiffAugBackend;
pub use dtype::DType;
pub use elementwise::ElementwiseBackend;
pub use loss::LossBackend;
pub use memory::MemoryBackend;
pub use params::*;
pub use random::RandomBackend;
pub use reduce::ReduceBackend;
pub use resample::ResampleBackend;
pub use spectral_norm::SpectralNormBackend;

use anyhow::{bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Element storage: one variant per backend memory and element type (a backend only ever sees
/// its own memory). f16 is two bytes an element in both memories.
pub enum Storage {
    Cpu(Vec<f32>),
    CpuF16(Vec<half::f16>),
    /// f32 on a CUDA device.
    Cuda(cuda::CudaBuffer),
    /// f16 on a CUDA device (`CudaBuffer::units` for its allocation).
    CudaF16(cuda::CudaBuffer),
}

impl Storage {
    /// Elements (of [`Storage::dtype`]).
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            Storage::CpuF16(v) => v.len(),
            Storage::Cuda(b) | Storage::CudaF16(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) | Storage::CpuF16(_) => Device::Cpu,
            Storage::Cuda(b) | Storage::CudaF16(b) => Device::Cuda(b.ordinal()),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(_) | Storage::Cuda(_) => DType::F32,
            Storage::CpuF16(_) | Storage::CudaF16(_) => DType::F16,
        }
    }

    /// Bytes the elements take (`len * dtype.size()`).
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().size()
    }
}

/// The whole op set: the sum of the op families' traits, each declared (and its methods
/// documented) in this module's `<family>.rs`. Inputs are validated by the
/// caller (`crate::ops`): lengths agree with the dimensions passed. Every method may fail
/// (device errors, out of memory). Implemented for every type that implements the families.
pub trait Backend:
    MemoryBackend
    + BatchBackend
    + ElementwiseBackend
    + ReduceBackend
    + ConvBackend
    + BatchNormBackend
    + RandomBackend
    + SpectralNormBackend
    + LossBackend
    + AdamBackend
    + ConditionalBackend
    + DiffAugBackend
    + ResampleBackend
    + CollectiveBackend
{
}

impl<T> Backend for T where
    T: MemoryBackend
        + BatchBackend
        + ElementwiseBackend
        + ReduceBackend
        + ConvBackend
        + BatchNormBackend
        + RandomBackend
        + SpectralNormBackend
        + LossBackend
        + AdamBackend
        + ConditionalBackend
        + DiffAugBackend
        + ResampleBackend
        + CollectiveBackend
{
}

/// The host defaults' view of `s`: the family traits' default methods run the reference code
/// on host memory, so a backend that keeps tensors elsewhere and lacks its own `op` fails here
/// with an error naming both, instead of reading memory it cannot.
pub(crate) fn on_host<'a>(op: &str, s: &'a Storage) -> Result<&'a Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        Storage::CpuF16(_) => Err(f16_given(op)),
        other => bail!(
            "{op}: this backend has no implementation for tensors on {} (only the host default)",
            other.device()
        ),
    }
}

/// A host kernel that takes f32 was given f16 storage (the ops layer checks dtypes first, so
/// this is a backend-level guard).
pub(crate) fn f16_given(who: &str) -> anyhow::Error {
    anyhow::anyhow!("{who}: given an f16 tensor; this kernel takes f32")
}

/// Host storage as the f32 the host kernels compute in: f16 widened (exact), f32 as it is.
/// With [`stored_as`], how the host defaults and the fast CPU backend take f16 tensors: they
/// compute in f32 and round on store, as the CUDA f16 kernels do (f16 in, f32 inside, f16 out).
pub(crate) fn widened(s: &Storage) -> Widened<'_> {
    match s {
        Storage::CpuF16(v) => Widened::Wide(Storage::Cpu(v.iter().map(|h| h.to_f32()).collect())),
        other => Widened::Same(other),
    }
}

/// What [`widened`] gives: the storage itself, or its f32 copy.
pub(crate) enum Widened<'a> {
    Same(&'a Storage),
    Wide(Storage),
}

impl std::ops::Deref for Widened<'_> {
    type Target = Storage;
    fn deref(&self) -> &Storage {
        match self {
            Widened::Same(s) => s,
            Widened::Wide(s) => s,
        }
    }
}

/// A host result stored as `dtype`: each value rounded to the nearest f16 (ties to even) when
/// that is f16, else as it is.
pub(crate) fn stored_as(s: Storage, dtype: DType) -> Storage {
    match (s, dtype) {
        (Storage::Cpu(v), DType::F16) => {
            Storage::CpuF16(v.into_iter().map(half::f16::from_f32).collect())
        }
        (s, _) => s,
    }
}

/// The one dtype of an op's tensor operands (x, dy, y...): a mix is an error naming the op.
pub(crate) fn one_dtype(op: &str, parts: &[&Storage]) -> Result<DType> {
    let d = parts[0].dtype();
    if let Some(other) = parts.iter().find(|p| p.dtype() != d) {
        bail!(
            "{op}: given {d} and {} tensors; they must share one dtype",
            other.dtype()
        );
    }
    Ok(d)
}

/// [`on_host`] for every part (the defaults that pass `Storage` on to the reference).
pub(crate) fn all_on_host(op: &str, parts: &[&Storage]) -> Result<()> {
    parts.iter().try_for_each(|s| on_host(op, s).map(|_| ()))
}

thread_local! {
    static BACKENDS: RefCell<HashMap<Device, Rc<dyn Backend>>> = RefCell::new(HashMap::new());
}

// A test hook (the `test-hooks` feature, which the integration tests enable): the binary has
// no switch that changes which code does the arithmetic.
#[cfg(feature = "test-hooks")]
thread_local! {
    static REFERENCE_CPU: RefCell<Option<Rc<dyn Backend>>> = const { RefCell::new(None) };
}

/// While alive, `Device::Cpu` on this thread is served by the reference backend
/// ([`reference`]) instead of the fast CPU one: tests run the same ops on the oracle this way.
/// Tensors made before keep working (both hold `Storage::Cpu`). Restores on drop.
#[cfg(feature = "test-hooks")]
pub struct ReferenceCpuGuard {
    previous: Option<Rc<dyn Backend>>,
}

#[cfg(feature = "test-hooks")]
pub fn use_reference_cpu() -> ReferenceCpuGuard {
    let previous = REFERENCE_CPU.with(|r| r.replace(Some(reference::backend())));
    ReferenceCpuGuard { previous }
}

#[cfg(feature = "test-hooks")]
impl Drop for ReferenceCpuGuard {
    fn drop(&mut self) {
        REFERENCE_CPU.with(|r| *r.borrow_mut() = self.previous.take());
    }
}

/// A device allocation failed for lack of memory. Typed, so the training loop can tell it from
/// other errors and say which batch size would fit.
#[derive(Debug)]
pub struct OutOfMemory {
    /// What was being allocated or run.
    pub what: String,
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: out of GPU memory", self.what)?;
        if let (Some(free), Some(total)) = (self.free_bytes, self.total_bytes) {
            write!(f, " ({} MiB free of {} MiB)", free >> 20, total >> 20)?;
        }
        Ok(())
    }
}

impl std::error::Error for OutOfMemory {}

/// Whether `e` (or anything in its context chain) is an [`OutOfMemory`].
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<OutOfMemory>())
}

/// The backend for `device`, created on first use (which is where a missing GPU or library is
/// reported).
pub fn backend(device: Device) -> Result<Rc<dyn Backend>> {
    #[cfg(feature = "test-hooks")]
    if device == Device::Cpu {
        if let Some(r) = REFERENCE_CPU.with(|r| r.borrow().clone()) {
            return Ok(r);
        }
    }
    if let Some(b) = BACKENDS.with(|m| m.borrow().get(&device).cloned()) {
        return Ok(b);
    }
    let b: Rc<dyn Backend> = match device {
        Device::Cpu => Rc::new(cpu::CpuBackend::new()),
        Device::Cuda(ordinal) => Rc::new(cuda::CudaBackend::new(ordinal)?),
    };
    BACKENDS.with(|m| m.borrow_mut().insert(device, b.clone()));
    Ok(b)
}
