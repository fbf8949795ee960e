//! CUDA backend: our kernels (`kernels/*.cu`, loaded by [`loader`]), cuBLAS GEMMs for
//! convolutions (or cuDNN, see [`ConvImpl`]), a caching allocator, one stream.
//!
//! This file holds the backend struct, its launch helpers and the `Backend` trait dispatch.
//! The launches of each kernel family `kernels/<family>.cu` live in `<family>.rs` beside it
//! (`adam`, `augment`, `batchnorm`, `conditional`, `conv` (+ `cudnn`), `elementwise`, `loss`,
//! `random`, `reduce`, `spectral_norm`); `modules.rs` lists the kernels each module provides.
//!
//! Every op is queued on the stream and returns at once; only `download` (and `synchronize`)
//! wait. Scalars the trait returns (loss, sigma) stay on the device as one-element buffers.

/// Launches kernel `$name` with the given config and arguments. Arguments must be places
/// (locals, fields), never temporaries: the builder keeps pointers to them until launch.
macro_rules! launch {
    ($self:expr, $name:literal, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $self.func($name)?;
        let mut b = $self.stream.launch_builder(f);
        $( b.arg($arg); )+
        // SAFETY: argument types and counts match the kernel signature in kernels/*.cu.
        unsafe { b.launch($cfg) }
            .map(|_| ())
            .map_err(|e| $crate::backend::cuda::err::drv(e, concat!("launching ", $name)))
    }};
}

mod adam;
pub mod alloc;
mod augment;
mod batchnorm;
mod concat;
mod conditional;
mod conv;
mod cudnn;
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
mod spectral_norm;

use conv::Direction;
pub use conv::{conv_impl, set_conv_impl, ConvImpl};

use super::*;
pub use alloc::CudaBuffer;
use alloc::{Pool, PoolStats};
use anyhow::{bail, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys::CUdevice_attribute, CudaContext, CudaFunction, CudaStream};
use err::drv;
use launch::BLOCK;
pub use libs::{compute_capability, device_name};
use random::SeedFrom;
use std::collections::HashMap;
use std::sync::Arc;

pub struct CudaBackend {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    dnn: Option<cudnn::CudnnConv>,
    pool: Arc<Pool>,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Grid cap for grid-stride kernels (enough blocks to fill every SM several times).
    max_blocks: u32,
    poison: bool,
    /// Test hook: the next capture makes a call CUDA forbids while capturing
    /// (`StepCapture::break_next_capture`).
    break_capture: std::sync::atomic::AtomicBool,
}

fn cb(s: &Storage) -> Result<&CudaBuffer> {
    match s {
        Storage::Cuda(b) => Ok(b),
        other => bail!("the CUDA backend was given a tensor on {}", other.device()),
    }
}

fn cb_mut(s: &mut Storage) -> Result<&mut CudaBuffer> {
    match s {
        Storage::Cuda(b) => Ok(b),
        other => bail!("the CUDA backend was given a tensor on {}", other.device()),
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
        let dnn = match dnn {
            Ok(d) => Some(d),
            Err(e) => {
                if conv_impl() == ConvImpl::Cudnn {
                    let msg = format!("{e:#}");
                    let first = msg.lines().next().unwrap_or_default();
                    eprintln!(
                        "note: cuDNN unavailable ({first}); convolutions use our own kernels"
                    );
                }
                None
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

    /// Whether convolutions currently go through cuDNN.
    pub fn uses_cudnn(&self) -> bool {
        self.dnn.is_some() && conv_impl() == ConvImpl::Cudnn
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

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
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

    fn step_capture(&self) -> Option<&dyn crate::backend::capture::StepCapture> {
        Some(self)
    }

    fn copy_into(&self, dst: &mut Storage, src: &Storage) -> Result<()> {
        graph::copy_into(self, dst, src)
    }

    fn scale_add_assign_by(
        &self,
        acc: &mut Storage,
        a: &Storage,
        x: &Storage,
        b: &Storage,
    ) -> Result<()> {
        // The default `scale_add_assign`'s arithmetic ((acc·a) + (x·b), each rounded), with
        // the factors read on the device, written back into acc's own buffer.
        let mut next = self.scale_by_scalar(acc, a, 1.0)?;
        self.add_assign(&mut next, &self.scale_by_scalar(x, b, 1.0)?)?;
        self.copy_into(acc, &next)
    }

    fn copy(&self, s: &Storage) -> Result<Storage> {
        let src = cb(s)?;
        let mut b = self.alloc(src.len)?;
        if src.len > 0 {
            self.stream
                .memcpy_dtod(&src.slice().slice(0..src.len), b.slice_mut())
                .map_err(|e| drv(e, "device copy"))?;
        }
        Ok(Storage::Cuda(b))
    }

    fn upload_images(&self, pixels: &[u8]) -> Result<Storage> {
        augment::upload_images(self, pixels)
    }

    fn assemble_batch(
        &self,
        images: &Storage,
        image_size: usize,
        indices: &[u32],
        flips: &[bool],
        angles_deg: &[f32],
    ) -> Result<Storage> {
        augment::assemble_batch(self, images, image_size, indices, flips, angles_deg)
    }

    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        elementwise::add(self, a, b)
    }

    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        elementwise::add_assign(self, acc, x)
    }

    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        elementwise::mul(self, a, b)
    }

    fn round_to_f16(&self, a: &Storage) -> Result<Storage> {
        conv::round_to_f16(self, a)
    }
    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage> {
        elementwise::scale(self, a, alpha)
    }

    fn reciprocal(&self, a: &Storage) -> Result<Storage> {
        elementwise::reciprocal(self, a)
    }

    fn concat(&self, parts: &[&Storage]) -> Result<Storage> {
        concat::concat(self, parts)
    }

    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
        elementwise::scale_by_scalar(self, a, s, alpha)
    }

    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage> {
        elementwise::activation(self, act, x)
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        elementwise::activation_backward(self, act, x, y, dy)
    }

    fn sum_rows(&self, x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        reduce::sum_rows(self, x, rows, cols, alpha)
    }

    fn broadcast_rows(&self, g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        reduce::broadcast_rows(self, g, rows, cols, alpha)
    }

    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        conv::run(self, Direction::Forward, x, w, g)
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        conv::run(self, Direction::BackwardData, dy, w, g)
    }
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        conv::run(self, Direction::BackwardFilter, x, dy, g)
    }

    fn add_channel_bias(&self, y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage> {
        reduce::add_channel_bias(self, y, b, d)
    }

    fn channel_sum(&self, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        reduce::channel_sum(self, dy, d)
    }

    fn batch_norm_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        d: ChannelDims,
        momentum: f32,
        eps: f32,
    ) -> Result<BatchNormSaved> {
        let act = BatchNormAct::None;
        self.batch_norm_act_train(
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            momentum,
            eps,
            act,
        )
    }

    fn batch_norm_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
    ) -> Result<Storage> {
        batchnorm::batch_norm_eval(self, x, gamma, beta, running_mean, running_var, d, eps)
    }

    fn batch_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        // Without an activation the kernels do not read beta; gamma stands in for it.
        let act = BatchNormAct::None;
        self.batch_norm_act_backward(x, dy, gamma, gamma, mean, invstd, d, act, true)
    }

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
        batchnorm::batch_norm_act_train(
            self,
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            momentum,
            eps,
            act,
        )
    }

    fn batch_norm_act_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        batchnorm::batch_norm_act_eval(self, x, gamma, beta, running_mean, running_var, d, eps, act)
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
        batchnorm::batch_norm_act_backward(
            self,
            x,
            dy,
            gamma,
            beta,
            mean,
            invstd,
            d,
            act,
            batch_stats,
        )
    }

    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage> {
        random::dropout_mask(self, len, p, SeedFrom::Args { seed, std: 0.0 })
    }

    fn add_gaussian_noise(&self, x: &Storage, std: f32, seed: u64) -> Result<Storage> {
        random::add_gaussian_noise(self, x, SeedFrom::Args { seed, std })
    }

    fn dropout_mask_by(&self, len: usize, p: f32, _seed: u64, values: &Storage) -> Result<Storage> {
        random::dropout_mask(self, len, p, SeedFrom::Device(values))
    }

    fn add_gaussian_noise_by(
        &self,
        x: &Storage,
        _std: f32,
        _seed: u64,
        values: &Storage,
    ) -> Result<Storage> {
        random::add_gaussian_noise(self, x, SeedFrom::Device(values))
    }

    fn spectral_norm_sigma(
        &self,
        w: &Storage,
        u: &mut Storage,
        v: &mut Storage,
        rows: usize,
        cols: usize,
        eps: f32,
        update: bool,
    ) -> Result<Storage> {
        spectral_norm::spectral_norm_sigma(self, w, u, v, rows, cols, eps, update)
    }

    fn spectral_norm_backward(
        &self,
        w: &Storage,
        g: &Storage,
        u: &Storage,
        v: &Storage,
        sigma: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<Storage> {
        spectral_norm::spectral_norm_backward(self, w, g, u, v, sigma, rows, cols)
    }

    fn bce_with_logits(&self, x: &Storage, target: f32) -> Result<(Storage, Storage)> {
        loss::bce_with_logits(self, x, target)
    }
    fn hinge_with_logits(&self, x: &Storage, term: HingeTerm) -> Result<(Storage, Storage)> {
        loss::hinge_with_logits(self, x, term)
    }

    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
        adam::adam_update(self, items, step)
    }

    fn adam_update_scaled(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        adam::adam_update_scaled(self, items, hyper, scale, counters)
    }

    fn adam_update_scaled_with(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scalars: &Storage,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        adam::adam_update_scaled_with(self, items, hyper, scalars, scale, counters)
    }

    fn adam_update_with(
        &self,
        items: &mut [AdamItem<'_>],
        step: AdamStep,
        scalars: &Storage,
    ) -> Result<()> {
        adam::adam_update_with(self, items, step, scalars)
    }

    // ---- conditional models and DiffAugment (issue 13): see `conditional.rs`
    fn embedding(
        &self,
        table: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        conditional::embedding(self, table, labels, classes, dim)
    }
    fn embedding_backward(
        &self,
        dy: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        conditional::embedding_backward(self, dy, labels, classes, dim)
    }
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        d: ChannelDims,
    ) -> Result<Storage> {
        conditional::channel_affine(self, x, scale, shift, d)
    }
    fn channel_affine_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        conditional::channel_affine_backward(self, x, dy, scale, d)
    }
    fn row_dot(&self, a: &Storage, b: &Storage, rows: usize, cols: usize) -> Result<Storage> {
        conditional::row_dot(self, a, b, rows, cols)
    }
    fn row_dot_backward(
        &self,
        a: &Storage,
        b: &Storage,
        g: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        conditional::row_dot_backward(self, a, b, g, rows, cols)
    }
    fn diffaug_color(
        &self,
        x: &Storage,
        params: &Storage,
        d: ChannelDims,
        brightness: bool,
    ) -> Result<Storage> {
        conditional::diffaug_color(self, x, params, d, brightness)
    }
    fn diffaug_translate(
        &self,
        x: &Storage,
        shifts: &Storage,
        dims: [usize; 4],
    ) -> Result<Storage> {
        conditional::diffaug_translate(self, x, shifts, dims)
    }
    fn diffaug_cutout(&self, x: &Storage, boxes: &Storage, dims: [usize; 4]) -> Result<Storage> {
        conditional::diffaug_cutout(self, x, boxes, dims)
    }

    fn release_cached_memory(&self) -> Result<()> {
        self.pool.trim()
    }
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| drv(e, "synchronize"))
    }
}
