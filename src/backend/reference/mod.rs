//! The reference backend: plain loops with f64 accumulation, written to be obviously correct,
//! not fast. It is the oracle: the finite-difference checks (tests/grad_check.rs), the GPU
//! parity tests (tests/gpu_parity.rs) and the fast CPU backend's tests (tests/cpu_fast.rs)
//! compare with it. It holds `Storage::Cpu` like the CPU backend; [`backend`] returns it, and
//! `crate::backend::use_reference_cpu` (a test hook: feature `test-hooks`) makes it serve
//! `Device::Cpu` on one thread.
//!
//! Each kernel family `kernels/<family>.cu` has its reference in `<family>.rs` here (batch
//! assembly's is the shared host code in `crate::backend::batch`). The family traits' default
//! methods (`crate::backend::<family>`) run it on host memory, so the reference backend is those
//! defaults and nothing else; this file holds the storage helpers.

pub(crate) mod adam;
pub(crate) mod batchnorm;
pub(crate) mod conditional;
pub(crate) mod conv;
pub(crate) mod diffaug;
pub(crate) mod dtype;
pub(crate) mod elementwise;
pub(crate) mod loss;
pub(crate) mod random;
pub(crate) mod reduce;
pub(crate) mod resample;
pub(crate) mod spectral_norm;

/// The reference backend as a trait object.
pub fn backend() -> std::rc::Rc<dyn Backend> {
    std::rc::Rc::new(ReferenceBackend)
}

use super::*;

pub struct ReferenceBackend;

pub(crate) fn host(s: &Storage) -> Result<&Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        Storage::CpuF16(_) => Err(crate::backend::f16_given("reference backend")),
        other => bail!("reference backend got storage on {}", other.device()),
    }
}

pub(crate) fn host_mut(s: &mut Storage) -> Result<&mut Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        Storage::CpuF16(_) => Err(crate::backend::f16_given("reference backend")),
        other => bail!("reference backend got storage on {}", other.device()),
    }
}

pub(crate) fn scalar(s: &Storage) -> Result<f32> {
    match host(s)?.as_slice() {
        [v] => Ok(*v),
        other => bail!(
            "expected a one-element scalar, got {} elements",
            other.len()
        ),
    }
}

/// Numerically stable logistic function.
pub fn stable_sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

// The oracle is the families' default methods, which run this module's code.
impl MemoryBackend for ReferenceBackend {}
impl BatchBackend for ReferenceBackend {}
impl ElementwiseBackend for ReferenceBackend {}
impl ReduceBackend for ReferenceBackend {}
impl ConvBackend for ReferenceBackend {}
impl BatchNormBackend for ReferenceBackend {}
impl RandomBackend for ReferenceBackend {}
impl SpectralNormBackend for ReferenceBackend {}
impl LossBackend for ReferenceBackend {}
impl AdamBackend for ReferenceBackend {}
impl ConditionalBackend for ReferenceBackend {}
impl DiffAugBackend for ReferenceBackend {}
impl ResampleBackend for ReferenceBackend {}
impl CollectiveBackend for ReferenceBackend {}
