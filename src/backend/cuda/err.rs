//! CUDA / cuBLAS / cuDNN errors as anyhow errors; out-of-memory is always spelled
//! "out of GPU memory" and typed [`OutOfMemory`], so that callers (and users) recognise it.

use crate::backend::OutOfMemory;
use cudarc::cublas::result::CublasError;
use cudarc::cudnn::result::CudnnError;
use cudarc::driver::{sys::CUresult, DriverError};

fn oom(what: String) -> anyhow::Error {
    let (free, total) = cudarc::driver::result::mem_get_info()
        .map(|(f, t)| (Some(f as u64), Some(t as u64)))
        .unwrap_or((None, None));
    anyhow::Error::new(OutOfMemory {
        what,
        free_bytes: free,
        total_bytes: total,
    })
}

pub fn drv(e: DriverError, what: &str) -> anyhow::Error {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        oom(what.to_string())
    } else {
        anyhow::anyhow!("{what}: CUDA error {e:?}")
    }
}

pub fn blas(e: CublasError, what: &str) -> anyhow::Error {
    if format!("{e:?}").contains("ALLOC_FAILED") {
        oom(format!("{what} (cuBLAS)"))
    } else {
        anyhow::anyhow!("{what}: cuBLAS error {e:?}")
    }
}

pub fn dnn(e: CudnnError, what: &str) -> anyhow::Error {
    if format!("{e:?}").contains("ALLOC") {
        oom(format!("{what} (cuDNN)"))
    } else {
        anyhow::anyhow!("{what}: cuDNN error {e:?}")
    }
}
