//! Convolution as im2col/col2im (kernels/conv.cu) + cuBLAS SGEMM, or cuDNN where the geometry
//! asks for it (`ConvGeom::conv_impl`) and the library is loaded.
//!
//! cuBLAS is column-major: a row-major `[r, c]` matrix is, to cuBLAS, a `c x r` matrix with
//! leading dimension `c`. Every GEMM below is written as the column-major product of those
//! transposed views (comments give the row-major meaning). Per chunk of `nb` images,
//! K = c_in*kh*kw, L = oh*ow:
//! - forward:  y_n[c_out, L] = W[c_out, K] . col_n[K, L]           (batched over the chunk)
//! - bwd data: col_n[K, L]  = W^T[K, c_out] . dy_n[c_out, L], then col2im (a gather)
//! - bwd filt: dW[c_out, K] += dyt[c_out, nb*L] . col^T[nb*L, K]   (one GEMM per chunk)
//!
//! Mixed precision (`ConvGeom::f16_operands`, `backend/conv.rs`): with cuDNN selected, both
//! operands as f16 tensors (an f16 activation as it is, an f32 one converted by `f32_to_f16`,
//! round to nearest even) and cuDNN on f16 tensors with f32 accumulation (`cudnn.rs`), whose
//! f16 output is the result (widened to f32 for a weight gradient). Our kernels keep im2col,
//! col2im and the dy gather in f32 (they only move values: an f16 input is widened first,
//! exactly) and run the same GEMMs with both operands converted to f16 buffers and
//! `cublasGemmStridedBatchedEx` (fp16 A/B, fp32 C, `CUBLAS_COMPUTE_32F`: tensor cores, f32
//! accumulation); the f32 result is then rounded to f16 like cuDNN's.

use super::elementwise::fill;
use super::err::blas;
use super::{cb, CudaBackend, CudaBuffer};
use crate::backend::{ConvBackend, ConvGeom, ConvImpl, DType, MemoryBackend, Storage};
use anyhow::Result;
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

/// The three convolution primitives.
#[derive(Clone, Copy, Debug)]
pub(super) enum Direction {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// One convolution direction, through cuDNN when it is loaded and the geometry selects it,
/// else our kernels.
/// `a`, `b` are the trait method's inputs (x and w, dy and w, x and dy); the result is y, dx
/// or dw. With no output pixel (an empty batch) nothing flows back: dx and dw are zero, as on
/// the CPU (our chunk loop would leave them unwritten, and cuDNN rejects an empty batch).
/// Under mixed precision the inputs may be f16 and the result is rounded to f16: y and dx are
/// f16 tensors, dw an f32 tensor of f16 values (`backend/conv.rs`).
pub(super) fn run(
    be: &CudaBackend,
    dir: Direction,
    a: &Storage,
    b: &Storage,
    g: &ConvGeom,
) -> Result<Storage> {
    let len = match dir {
        Direction::Forward => g.output_len(),
        Direction::BackwardData => g.input_len(),
        Direction::BackwardFilter => g.weight_len(),
    };
    let cudnn = match g.conv_impl {
        ConvImpl::Cudnn => cudnn(be),
        ConvImpl::Own => None,
    };
    if !g.f16_operands {
        let (a, b) = (cb(a)?, cb(b)?);
        let mut out = be.alloc(len)?;
        if len > 0 && g.output_len() == 0 {
            fill(be, &mut out, 0.0)?;
        } else if len > 0 {
            match cudnn {
                Some(d) => d.run(dir, a, b, &mut out, g)?,
                None => own(be, dir, a, b, &mut out, g)?,
            }
        }
        return Ok(Storage::Cuda(out));
    }
    match cudnn {
        Some(d) if len > 0 && g.output_len() > 0 => {
            // cuDNN on f16 tensors: an f16 input as it is, an f32 one rounded first.
            let (ah, bh) = (as_dtype(be, a, DType::F16)?, as_dtype(be, b, DType::F16)?);
            let ah = buffer(ah.as_ref().unwrap_or(a))?;
            let bh = buffer(bh.as_ref().unwrap_or(b))?;
            let mut out = super::dtype::alloc_f16(be, len)?;
            d.run(dir, ah, bh, &mut out, g)?;
            amp_result(be, dir, Storage::CudaF16(out))
        }
        _ => {
            // Our kernels move f32 (im2col, col2im) and round the GEMM operands themselves.
            let (aw, bw) = (as_dtype(be, a, DType::F32)?, as_dtype(be, b, DType::F32)?);
            let (a, b) = (cb(aw.as_ref().unwrap_or(a))?, cb(bw.as_ref().unwrap_or(b))?);
            let mut out = be.alloc(len)?;
            if len > 0 && g.output_len() == 0 {
                fill(be, &mut out, 0.0)?;
            } else if len > 0 {
                own(be, dir, a, b, &mut out, g)?;
            }
            let out = be.cast(&Storage::Cuda(out), DType::F16)?;
            amp_result(be, dir, out)
        }
    }
}

/// Our kernels' direction `dir` (f32 in and out; f16 GEMM operands under mixed precision).
fn own(
    be: &CudaBackend,
    dir: Direction,
    a: &CudaBuffer,
    b: &CudaBuffer,
    out: &mut CudaBuffer,
    g: &ConvGeom,
) -> Result<()> {
    match dir {
        Direction::Forward => forward(be, a, b, out, g),
        Direction::BackwardData => backward_data(be, a, b, out, g),
        Direction::BackwardFilter => backward_filter(be, a, b, out, g),
    }
}

/// A mixed-precision result (f16) as the direction gives it: y and dx f16, dw widened to f32.
fn amp_result(be: &CudaBackend, dir: Direction, out: Storage) -> Result<Storage> {
    match dir {
        Direction::BackwardFilter => be.cast(&out, DType::F32),
        Direction::Forward | Direction::BackwardData => Ok(out),
    }
}

/// `s` converted to `dtype` when it is not that already (`None`: use `s`).
fn as_dtype(be: &CudaBackend, s: &Storage, dtype: DType) -> Result<Option<Storage>> {
    if s.dtype() == dtype {
        return Ok(None);
    }
    Ok(Some(be.cast(s, dtype)?))
}

/// The device buffer of CUDA storage of either dtype.
fn buffer(s: &Storage) -> Result<&CudaBuffer> {
    match s {
        Storage::Cuda(b) | Storage::CudaF16(b) => Ok(b),
        other => anyhow::bail!("the CUDA backend was given a tensor on {}", other.device()),
    }
}

/// cuDNN for a convolution that asks for it, if loaded (else says once why not).
fn cudnn(be: &CudaBackend) -> Option<&super::cudnn::CudnnConv> {
    if let Some(why) = &be.dnn_missing {
        be.dnn_note.call_once(|| {
            eprintln!("note: cuDNN unavailable ({why}); convolutions use our own kernels")
        });
    }
    be.dnn.as_ref()
}

/// `x` rounded to f16 and back ([`crate::backend::Backend::round_to_f16`]): the two
/// conversions the cuDNN path makes, so their parity test covers both kernels.
pub(super) fn round_to_f16(be: &CudaBackend, x: &Storage) -> Result<Storage> {
    let x = cb(x)?;
    let h = to_f16(be, x.slice().device_ptr(&be.stream).0, x.len())?;
    let mut y = be.alloc(x.len())?;
    widen_f16(be, &h, &mut y)?;
    Ok(Storage::Cuda(y))
}

/// `out` = the f32 values of the first `out.len()` halves in `h` (exact).
fn widen_f16(be: &CudaBackend, h: &CudaBuffer, out: &mut CudaBuffer) -> Result<()> {
    let n = out.len() as u64;
    if n > 0 {
        launch!(be, f16_to_f32, be.grid(n), h.slice(), &n, out.slice_mut())?;
    }
    Ok(())
}

/// The f16 copy (round to nearest even) of the `n` floats at device address `src`: a buffer of
/// ⌈n/2⌉ f32 slots holding n halves, for `GemmEx`.
fn to_f16(be: &CudaBackend, src: u64, n: usize) -> Result<CudaBuffer> {
    let mut out = be.alloc(n.div_ceil(2))?;
    let n = n as u64;
    if n > 0 {
        launch!(be, f32_to_f16, be.grid(n), &src, &n, out.slice_mut())?;
    }
    Ok(out)
}

/// The GEMM `cfg` describes (cuBLAS column-major terms, alpha 1) on f16 copies of A and B with
/// f32 accumulation into the f32 C: `cublasGemmStridedBatchedEx`, `CUBLAS_COMPUTE_32F`.
/// `a`, `b`, `c` are device addresses.
fn gemm_f16(
    be: &CudaBackend,
    cfg: StridedBatchedConfig<f32>,
    a: u64,
    b: u64,
    c: u64,
    what: &str,
) -> Result<()> {
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
    let gm = cfg.gemm;
    // Elements a (maybe strided-batched) column-major operand spans.
    let span = |ld: i32, cols: i32, stride: i64| {
        let one = ld as usize * cols as usize;
        if stride == 0 {
            one
        } else {
            stride as usize * (cfg.batch_size as usize - 1) + one
        }
    };
    let a_cols = if gm.transa == CUBLAS_OP_N { gm.k } else { gm.m };
    let b_cols = if gm.transb == CUBLAS_OP_N { gm.n } else { gm.k };
    let ah = to_f16(be, a, span(gm.lda, a_cols, cfg.stride_a))?;
    let bh = to_f16(be, b, span(gm.ldb, b_cols, cfg.stride_b))?;
    let (alpha, beta) = (gm.alpha, gm.beta);
    let (ap, bp) = (
        ah.slice().device_ptr(&be.stream).0,
        bh.slice().device_ptr(&be.stream).0,
    );
    // SAFETY: the operands span what the GEMM reads (computed above from the same config), C
    // is a live f32 buffer of the caller's extent, alpha/beta are host values (host pointer
    // mode), and everything runs on the handle's stream.
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *be.blas.handle(),
            gm.transa,
            gm.transb,
            gm.m,
            gm.n,
            gm.k,
            (&alpha as *const f32).cast(),
            ap as *const std::ffi::c_void,
            cudaDataType_t::CUDA_R_16F,
            gm.lda,
            cfg.stride_a,
            bp as *const std::ffi::c_void,
            cudaDataType_t::CUDA_R_16F,
            gm.ldb,
            cfg.stride_b,
            (&beta as *const f32).cast(),
            c as *mut std::ffi::c_void,
            cudaDataType_t::CUDA_R_32F,
            gm.ldc,
            cfg.stride_c,
            cfg.batch_size,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| blas(e, what))
}

/// Upper bound on the column buffer (elements): the batch is processed in chunks below it.
const COL_LIMIT: usize = 1 << 25; // 128 MiB

struct Dims {
    k: usize,
    l: usize,
    nb: usize,
}

fn dims(g: &ConvGeom) -> Dims {
    let k = g.c_in * g.kh * g.kw;
    let l = g.oh * g.ow;
    let nb = (COL_LIMIT / (k * l).max(1)).clamp(1, g.n.max(1));
    Dims { k, l, nb }
}

fn int(x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow::anyhow!("convolution dimension {x} exceeds i32"))
}

/// Launches im2col for images `n0..n0+nb` with the given column layout strides.
#[allow(clippy::too_many_arguments)]
fn im2col(
    be: &CudaBackend,
    x: &CudaBuffer,
    g: &ConvGeom,
    n0: usize,
    nb: usize,
    nstride: u64,
    kstride: u64,
    col: &mut CudaBuffer,
) -> Result<()> {
    let (n0, nb) = (int(n0)?, int(nb)?);
    let (c_in, h, w, kh, kw) = (int(g.c_in)?, int(g.h)?, int(g.w)?, int(g.kh)?, int(g.kw)?);
    let (stride, pad, oh, ow) = (int(g.stride)?, int(g.pad)?, int(g.oh)?, int(g.ow)?);
    let total = (nb as u64) * (g.c_in * g.kh * g.kw * g.oh * g.ow) as u64;
    let cfg = be.grid(total);
    launch!(
        be,
        im2col_f32,
        cfg,
        x.slice(),
        &n0,
        &nb,
        &c_in,
        &h,
        &w,
        &kh,
        &kw,
        &stride,
        &pad,
        &oh,
        &ow,
        &nstride,
        &kstride,
        col.slice_mut()
    )
}

fn forward(
    be: &CudaBackend,
    x: &CudaBuffer,
    w: &CudaBuffer,
    y: &mut CudaBuffer,
    g: &ConvGeom,
) -> Result<()> {
    let Dims { k, l, nb } = dims(g);
    let mut col = be.alloc(nb * k * l)?;
    let mut n0 = 0;
    while n0 < g.n {
        let cur = nb.min(g.n - n0);
        im2col(be, x, g, n0, cur, (k * l) as u64, l as u64, &mut col)?;
        let cfg = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: CUBLAS_OP_N,
                transb: CUBLAS_OP_N,
                m: int(l)?,
                n: int(g.c_out)?,
                k: int(k)?,
                alpha: 1.0f32,
                lda: int(l)?,
                ldb: int(k)?,
                beta: 0.0f32,
                ldc: int(l)?,
            },
            batch_size: int(cur)?,
            stride_a: (k * l) as i64,
            stride_b: 0,
            stride_c: (g.c_out * l) as i64,
        };
        let off = n0 * g.c_out * l;
        let mut out = y.slice_mut().slice_mut(off..off + cur * g.c_out * l);
        if g.f16_operands {
            let (a, b) = (
                col.slice().device_ptr(&be.stream).0,
                w.slice().device_ptr(&be.stream).0,
            );
            let c = out.device_ptr_mut(&be.stream).0;
            gemm_f16(be, cfg, a, b, c, "conv forward GEMM (f16 operands)")?;
        } else {
            // SAFETY: the views cover exactly the extents the GEMM reads and writes.
            unsafe {
                be.blas.gemm_strided_batched(
                    cfg,
                    &col.slice().slice(..cur * k * l),
                    w.slice(),
                    &mut out,
                )
            }
            .map_err(|e| blas(e, "conv forward GEMM"))?;
        }
        n0 += cur;
    }
    Ok(())
}

fn backward_data(
    be: &CudaBackend,
    dy: &CudaBuffer,
    w: &CudaBuffer,
    dx: &mut CudaBuffer,
    g: &ConvGeom,
) -> Result<()> {
    let Dims { k, l, nb } = dims(g);
    let mut col = be.alloc(nb * k * l)?;
    let mut n0 = 0;
    while n0 < g.n {
        let cur = nb.min(g.n - n0);
        let cfg = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: CUBLAS_OP_N,
                transb: CUBLAS_OP_T,
                m: int(l)?,
                n: int(k)?,
                k: int(g.c_out)?,
                alpha: 1.0f32,
                lda: int(l)?,
                ldb: int(k)?,
                beta: 0.0f32,
                ldc: int(l)?,
            },
            batch_size: int(cur)?,
            stride_a: (g.c_out * l) as i64,
            stride_b: 0,
            stride_c: (k * l) as i64,
        };
        let off = n0 * g.c_out * l;
        let a = dy.slice().slice(off..off + cur * g.c_out * l);
        {
            let mut c = col.slice_mut().slice_mut(..cur * k * l);
            if g.f16_operands {
                let (a, b) = (
                    a.device_ptr(&be.stream).0,
                    w.slice().device_ptr(&be.stream).0,
                );
                let c = c.device_ptr_mut(&be.stream).0;
                gemm_f16(be, cfg, a, b, c, "conv backward-data GEMM (f16 operands)")?;
            } else {
                // SAFETY: the views cover exactly the extents the GEMM reads and writes.
                unsafe { be.blas.gemm_strided_batched(cfg, &a, w.slice(), &mut c) }
                    .map_err(|e| blas(e, "conv backward-data GEMM"))?;
            }
        }
        let (n0i, nbi) = (int(n0)?, int(cur)?);
        let (c_in, h, wd, kh, kw) = (int(g.c_in)?, int(g.h)?, int(g.w)?, int(g.kh)?, int(g.kw)?);
        let (stride, pad, oh, ow) = (int(g.stride)?, int(g.pad)?, int(g.oh)?, int(g.ow)?);
        let lcfg = be.grid((cur * g.c_in * g.h * g.w) as u64);
        launch!(
            be,
            col2im_f32,
            lcfg,
            col.slice(),
            &n0i,
            &nbi,
            &c_in,
            &h,
            &wd,
            &kh,
            &kw,
            &stride,
            &pad,
            &oh,
            &ow,
            dx.slice_mut()
        )?;
        n0 += cur;
    }
    Ok(())
}

fn backward_filter(
    be: &CudaBackend,
    x: &CudaBuffer,
    dy: &CudaBuffer,
    dw: &mut CudaBuffer,
    g: &ConvGeom,
) -> Result<()> {
    let Dims { k, l, nb } = dims(g);
    let mut col = be.alloc(nb * k * l)?;
    let mut dyt = be.alloc(nb * g.c_out * l)?;
    let mut n0 = 0;
    while n0 < g.n {
        let cur = nb.min(g.n - n0);
        let cols = cur * l;
        // col as [K, cur*L], dy gathered as [c_out, cur*L]: the chunk is one GEMM.
        im2col(be, x, g, n0, cur, l as u64, cols as u64, &mut col)?;
        let (n0i, nbi, c_out, l64) = (int(n0)?, int(cur)?, int(g.c_out)?, l as u64);
        let lcfg = be.grid((g.c_out * cols) as u64);
        launch!(
            be,
            gather_dy_f32,
            lcfg,
            dy.slice(),
            &n0i,
            &nbi,
            &c_out,
            &l64,
            dyt.slice_mut()
        )?;
        let cfg = GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: int(k)?,
            n: int(g.c_out)?,
            k: int(cols)?,
            alpha: 1.0f32,
            lda: int(cols)?,
            ldb: int(cols)?,
            beta: if n0 == 0 { 0.0f32 } else { 1.0 },
            ldc: int(k)?,
        };
        if g.f16_operands {
            let one = StridedBatchedConfig {
                gemm: cfg,
                batch_size: 1,
                stride_a: 0,
                stride_b: 0,
                stride_c: 0,
            };
            let (a, b) = (
                col.slice().device_ptr(&be.stream).0,
                dyt.slice().device_ptr(&be.stream).0,
            );
            let c = dw.slice_mut().device_ptr_mut(&be.stream).0;
            gemm_f16(be, one, a, b, c, "conv backward-filter GEMM (f16 operands)")?;
        } else {
            // SAFETY: the views cover exactly the extents the GEMM reads and writes.
            unsafe {
                be.blas.gemm(
                    cfg,
                    &col.slice().slice(..k * cols),
                    &dyt.slice().slice(..g.c_out * cols),
                    dw.slice_mut(),
                )
            }
            .map_err(|e| blas(e, "conv backward-filter GEMM"))?;
        }
        n0 += cur;
    }
    Ok(())
}

// The `_act` forms are the trait's defaults: the conv, then the activation's kernel.
impl ConvBackend for CudaBackend {
    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        run(self, Direction::Forward, x, w, g)
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        run(self, Direction::BackwardData, dy, w, g)
    }
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        run(self, Direction::BackwardFilter, x, dy, g)
    }
}
