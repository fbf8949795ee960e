//! CUDA / cuBLAS / cuDNN errors as anyhow errors; out-of-memory is always spelled
//! "out of GPU memory" so that callers (and users) recognise it.

use cudarc::cublas::result::CublasError;
use cudarc::cudnn::result::CudnnError;
use cudarc::driver::{sys::CUresult, DriverError};

const OOM_HINT: &str = "out of GPU memory (try a smaller --batch-size)";

pub fn drv(e: DriverError, what: &str) -> anyhow::Error {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        anyhow::anyhow!("{what}: {OOM_HINT}")
    } else {
        anyhow::anyhow!("{what}: CUDA error {e:?}")
    }
}

pub fn blas(e: CublasError, what: &str) -> anyhow::Error {
    if format!("{e:?}").contains("ALLOC_FAILED") {
        anyhow::anyhow!("{what}: cuBLAS: {OOM_HINT}")
    } else {
        anyhow::anyhow!("{what}: cuBLAS error {e:?}")
    }
}

pub fn dnn(e: CudnnError, what: &str) -> anyhow::Error {
    if format!("{e:?}").contains("ALLOC") {
        anyhow::anyhow!("{what}: cuDNN: {OOM_HINT}")
    } else {
        anyhow::anyhow!("{what}: cuDNN error {e:?}")
    }
}
