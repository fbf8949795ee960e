//! The fast CPU backend: batched im2col + large GEMMs for convolutions (see `conv`), skipped
//! work, in-place parallel optimiser and EMA updates, and rayon over fixed work splits so
//! results never depend on the thread count. It is tested against the plain reference in
//! `crate::backend::reference` (tests/cpu_fast.rs) like any other backend.
//!
//! Its own code, by kernel family: `conv.rs` (on the packed AVX-512/AVX2 GEMM of `gemm.rs`),
//! `batchnorm.rs`, `collective.rs` (threads meeting in memory), `elementwise.rs` (parallel maps, the EMA's in-place update) and `adam.rs`;
//! every other method is its family trait's default, the reference's code.

mod adam;
mod batchnorm;
mod collective;
mod conv;
mod elementwise;
mod gemm;

pub use gemm::{crate_gemm, gemm, gemm_gathered, gemm_nt_with, gemm_with, Gathered, Kernel};

use super::*;
use rayon::prelude::*;
use std::mem::MaybeUninit;

pub struct CpuBackend;

impl CpuBackend {
    /// The backend (the first one made also tunes the allocator: [`keep_freed_memory`]).
    pub(crate) fn new() -> Self {
        keep_freed_memory();
        CpuBackend
    }
}

/// A training step frees and allocates the same tensors step after step. By default glibc
/// gives freed memory at the top of its heap back to the kernel and maps large blocks afresh,
/// so every step page-faulted its buffers in again (about 2,000 faults per dcgan 32 px step,
/// 3% of its time in the kernel). Blocks up to 32 MiB now come from the heap and up to
/// 512 MiB of freed heap is kept: a step reuses its memory (peak RSS unchanged, 59 MiB on that
/// step; benches/train_step 1.03x there, median of 10 interleaved runs; 64 px on par). glibc
/// only.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets two of malloc's parameters; it may be called any time.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
            }
        });
    }
}

/// Convolution kernel calls made by this thread so far: (forward, backward-data,
/// backward-filter). Tests read it to see that autograd skips work nobody needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvCalls {
    pub forward: u64,
    pub backward_data: u64,
    pub backward_filter: u64,
}

thread_local! {
    static CONV_CALLS: std::cell::Cell<ConvCalls> = const {
        std::cell::Cell::new(ConvCalls { forward: 0, backward_data: 0, backward_filter: 0 })
    };
}

/// This thread's convolution kernel calls on the fast CPU backend.
pub fn conv_calls() -> ConvCalls {
    CONV_CALLS.with(|c| c.get())
}

fn count_conv(f: impl FnOnce(&mut ConvCalls)) {
    CONV_CALLS.with(|c| {
        let mut v = c.get();
        f(&mut v);
        c.set(v);
    });
}

pub(super) fn host(s: &Storage) -> Result<&Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        Storage::CpuF16(_) => Err(crate::backend::f16_given("cpu backend")),
        other => bail!("cpu backend got storage on {}", other.device()),
    }
}

pub(super) fn host_mut(s: &mut Storage) -> Result<&mut Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        Storage::CpuF16(_) => Err(crate::backend::f16_given("cpu backend")),
        other => bail!("cpu backend got storage on {}", other.device()),
    }
}

/// Elements per rayon task in elementwise work (each element is computed alone, so the split
/// never changes a result).
pub(super) const ELEMENTWISE_CHUNK: usize = 1 << 14;

type ConvFn = fn(&[f32], &[f32], &ConvGeom, Option<Activation>) -> Vec<f32>;

/// `conv(a, b, g, act)` (conv::forward or conv::backward_data) with the operands and output
/// of mixed precision (`backend::conv::operands`/`output`: f16 under amp). The activation is
/// fused except under amp, where it follows the output's rounding, as the two ops do.
fn conv_then(
    conv: ConvFn,
    a: &Storage,
    b: &Storage,
    g: &ConvGeom,
    act: Option<Activation>,
) -> Result<Storage> {
    let (a, b) = (widened(a), widened(b));
    let (a, b) = super::conv::operands(host(&a)?, host(&b)?, g);
    let fused = if g.f16_operands { None } else { act };
    let y = super::conv::output(conv(&a, &b, g, fused), g, DType::F16);
    match act {
        Some(act) if fused.is_none() => CpuBackend.activation(act, &y),
        _ => Ok(y),
    }
}

/// A new vector of `len` floats written on the rayon pool chunk by chunk, never zeroed first:
/// `fill(i, chunk)` for chunk `i` of `chunk` floats (the last may be shorter), at least
/// `min_chunks` per task. The elementwise maps write through it directly (25-40% faster than
/// rayon's `collect_into_vec`, which writes element by element); other ops through
/// [`par_output`].
///
/// # Safety
/// `fill` must write every element of its chunk: the vector's length is set to `len` after.
pub(super) unsafe fn par_filled(
    len: usize,
    chunk: usize,
    min_chunks: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .with_min_len(min_chunks.max(1))
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: the capacity is at least `len`, and `fill` wrote every element of the chunks
    // that cover it.
    unsafe { out.set_len(len) };
    out
}

/// [`par_filled`] for ops that write through `&mut [f32]` (reading back what they wrote):
/// each chunk is zeroed by the task that then writes it, just before. A `vec![0.0; len]`
/// zeroed the whole output on the calling thread first, a serial memset that left the pool
/// idle (the conv and batch-norm outputs: 1.06-1.08x on a dcgan 32 px step).
pub(super) fn par_output(
    len: usize,
    chunk: usize,
    min_chunks: usize,
    write: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    // SAFETY: the closure writes every float of its chunk (zeros) before `write` sees it.
    unsafe {
        par_filled(len, chunk, min_chunks, |i, c| {
            c.iter_mut().for_each(|v| {
                v.write(0.0);
            });
            // SAFETY: every float of `c` was just written.
            write(i, c.assume_init_mut());
        })
    }
}

/// `dst.copy_from_slice(src)` for short rows: fixed-size copies the compiler turns into a few
/// vector moves for the common lengths (a `memcpy` call per 4-32 float row, as in the conv's
/// split, merge and channel-major copies or a GEMM panel's rows, cost more than the copy).
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    fn fixed<const L: usize>(dst: &mut [f32], src: &[f32]) {
        let dst: &mut [f32; L] = dst.try_into().expect("L floats");
        *dst = *<&[f32; L]>::try_from(src).expect("L floats");
    }
    match src.len() {
        4 => fixed::<4>(dst, src),
        6 => fixed::<6>(dst, src),
        8 => fixed::<8>(dst, src),
        16 => fixed::<16>(dst, src),
        32 => fixed::<32>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

// What the fast path does not speed up (memory moves, batch assembly, reductions, random
// masks, spectral norm, the loss, the conditional models, DiffAugment, resampling, and the rest
// of batch norm and the elementwise maps) is the families' default: the reference's code.
impl BatchBackend for CpuBackend {}
impl ReduceBackend for CpuBackend {}
impl RandomBackend for CpuBackend {}
impl SpectralNormBackend for CpuBackend {}
impl LossBackend for CpuBackend {}
impl ConditionalBackend for CpuBackend {}
impl DiffAugBackend for CpuBackend {}
impl ResampleBackend for CpuBackend {}

impl MemoryBackend for CpuBackend {
    fn copy(&self, s: &Storage) -> Result<Storage> {
        match s {
            Storage::CpuF16(v) => Ok(Storage::CpuF16(v.clone())),
            _ => elementwise::copy(s),
        }
    }
}

impl ElementwiseBackend for CpuBackend {
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        let dtype = one_dtype("add", &[a, b])?;
        Ok(stored_as(
            elementwise::add(&widened(a), &widened(b))?,
            dtype,
        ))
    }
    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        elementwise::mul(a, b)
    }
    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage> {
        elementwise::scale(a, alpha)
    }
    fn reciprocal(&self, a: &Storage) -> Result<Storage> {
        elementwise::reciprocal(a)
    }
    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
        elementwise::scale_by_scalar(a, s, alpha)
    }
    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage> {
        Ok(stored_as(
            elementwise::activation(act, &widened(x))?,
            x.dtype(),
        ))
    }
    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        let dtype = one_dtype("activation_backward", &[x, y, dy])?;
        let (x, y, dy) = (widened(x), widened(y), widened(dy));
        Ok(stored_as(
            elementwise::activation_backward(act, &x, &y, &dy)?,
            dtype,
        ))
    }
    fn scale_add_assign(&self, acc: &mut Storage, a: f32, x: &Storage, b: f32) -> Result<()> {
        elementwise::scale_add_assign(acc, a, x, b)
    }
}

impl ConvBackend for CpuBackend {
    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        count_conv(|c| c.forward += 1);
        conv_then(conv::forward, x, w, g, None)
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        count_conv(|c| c.backward_data += 1);
        conv_then(conv::backward_data, dy, w, g, None)
    }
    fn conv2d_forward_act(
        &self,
        x: &Storage,
        w: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        count_conv(|c| c.forward += 1);
        conv_then(conv::forward, x, w, g, Some(act))
    }
    fn conv2d_backward_data_act(
        &self,
        dy: &Storage,
        w: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        count_conv(|c| c.backward_data += 1);
        conv_then(conv::backward_data, dy, w, g, Some(act))
    }
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        count_conv(|c| c.backward_filter += 1);
        let (x, dy) = (widened(x), widened(dy));
        let (x, dy) = super::conv::operands(host(&x)?, host(&dy)?, g);
        let dy = conv::Grad {
            dy: &dy,
            through: None,
        };
        let dw = conv::backward_filter(&x, dy, g);
        Ok(super::conv::output(dw, g, DType::F32))
    }
    fn conv2d_backward_filter_act(
        &self,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        if g.f16_operands {
            // Mixed precision rounds the operands, so the gradient after the activation's
            // derivative, as the two ops do.
            let dz = self.activation_backward(act, y, y, dy)?;
            return self.conv2d_backward_filter(x, &dz, g);
        }
        count_conv(|c| c.backward_filter += 1);
        let dy = conv::Grad {
            dy: host(dy)?,
            through: Some((act, host(y)?)),
        };
        Ok(Storage::Cpu(conv::backward_filter(host(x)?, dy, g)))
    }
}

// Plain batch norm is the fused one with no activation (the families' default); eval mode is
// the reference's.
impl BatchNormBackend for CpuBackend {
    fn batch_norm_act_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        d: ChannelDims,
        momentum: f32,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        d.check_batch_norm_train()?;
        let dtype = x.dtype();
        let x = widened(x);
        let (y, mean, invstd) = batchnorm::train_act(
            host(&x)?,
            host(gamma)?,
            host(beta)?,
            host_mut(running_mean)?,
            host_mut(running_var)?,
            d,
            momentum,
            eps,
            act,
        );
        Ok(BatchNormSaved {
            y: stored_as(Storage::Cpu(y), dtype),
            mean: Storage::Cpu(mean),
            invstd: Storage::Cpu(invstd),
        })
    }
    fn batch_norm_act_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        beta: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
        act: BatchNormAct,
        batch_stats: bool,
    ) -> Result<(Storage, Storage, Storage)> {
        let dtype = one_dtype("batch_norm_act_backward", &[x, dy])?;
        let (x, dy) = (widened(x), widened(dy));
        let (dx, dg, db) = batchnorm::backward_act(
            host(&x)?,
            host(&dy)?,
            host(gamma)?,
            host(beta)?,
            host(mean)?,
            host(invstd)?,
            d,
            act,
            batch_stats,
        );
        let dx = stored_as(Storage::Cpu(dx), dtype);
        Ok((dx, Storage::Cpu(dg), Storage::Cpu(db)))
    }
}

impl AdamBackend for CpuBackend {
    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
        adam::adam_update(items, step)
    }
}
