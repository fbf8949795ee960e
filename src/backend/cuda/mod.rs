//! CUDA backend: our kernels (`kernels/*.cu`, loaded by [`loader`]), cuBLAS GEMMs for
//! convolutions (or cuDNN, see [`ConvImpl`]), a caching allocator, one stream.
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

pub mod alloc;
mod concat;
mod conditional;
mod conv;
mod cudnn;
mod err;
pub mod libs;
pub mod loader;
mod modules;

pub use conv::{conv_impl, set_conv_impl, ConvImpl};

use super::*;
use alloc::{Pool, PoolStats};
use anyhow::{anyhow, bail, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    sys::CUdevice_attribute, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use err::drv;
use std::collections::HashMap;
use std::sync::Arc;

/// Device memory of one tensor. Dropping it returns the memory to the backend's pool.
pub struct CudaBuffer {
    /// Always `Some` until drop. Holds at least one element (a zero-length tensor still owns a
    /// one-element allocation, so that no zero-byte driver allocation is ever made).
    slice: Option<CudaSlice<f32>>,
    len: usize,
    ordinal: usize,
    pool: Arc<Pool>,
}

impl CudaBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn slice(&self) -> &CudaSlice<f32> {
        self.slice.as_ref().expect("live buffer")
    }
    pub fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        self.slice.as_mut().expect("live buffer")
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.pool.give(s);
        }
    }
}

/// Threads per block for elementwise kernels and per-row/per-channel reductions.
const BLOCK: u32 = 256;
/// Elements one Adam block updates.
const ADAM_CHUNK: u32 = 4096;
const ADAM_MAX_ITEMS: usize = 64;

/// Kernel parameter of `adam_multi_f32`; must match `struct AdamTable` in kernels/adam.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct AdamTable {
    param: [u64; ADAM_MAX_ITEMS],
    grad: [u64; ADAM_MAX_ITEMS],
    m: [u64; ADAM_MAX_ITEMS],
    v: [u64; ADAM_MAX_ITEMS],
    len: [u32; ADAM_MAX_ITEMS],
    block_start: [u32; ADAM_MAX_ITEMS + 1],
    step: [f32; ADAM_MAX_ITEMS],
    n_items: u32,
}

// SAFETY: plain-old-data with the C layout of the kernel's struct (checked by a size test).
unsafe impl DeviceRepr for AdamTable {}

/// Batch images one `assemble_batch_u8` launch makes.
const AUG_MAX_IMAGES: usize = 128;
const AUG_FLIP: u32 = 1;
const AUG_ROTATE: u32 = 2;

/// Kernel parameter of `assemble_batch_u8`; must match `struct AugTable` in kernels/augment.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct AugTable {
    index: [u32; AUG_MAX_IMAGES],
    flags: [u32; AUG_MAX_IMAGES],
    sin: [f32; AUG_MAX_IMAGES],
    cos: [f32; AUG_MAX_IMAGES],
    count: u32,
}

// SAFETY: plain-old-data with the C layout of the kernel's struct (checked by a size test).
unsafe impl DeviceRepr for AugTable {}

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
}

/// The name of CUDA device `ordinal` as the driver reports it ("NVIDIA T4", or on the emulated
/// device "artgan emulated CUDA device (CPU, not a GPU)"); "unknown" if it cannot be read.
pub fn device_name(ordinal: usize) -> String {
    libs::catch_cudarc_panic("reading the device name", || {
        CudaContext::new(ordinal).and_then(|c| c.name())
    })
    .ok()
    .and_then(|r| r.ok())
    .unwrap_or_else(|| "unknown".into())
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

fn act_code(act: Activation) -> (i32, f32) {
    match act {
        Activation::Relu => (0, 0.0),
        Activation::LeakyRelu(s) => (1, s),
        Activation::Tanh => (2, 0.0),
        Activation::Sigmoid => (3, 0.0),
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

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| anyhow!("kernel {name} not loaded"))
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
            self.fill(&mut b, f32::NAN)?;
        }
        Ok(b)
    }

    fn fill(&self, b: &mut CudaBuffer, value: f32) -> Result<()> {
        let n = b.len as u64;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.grid(n);
        launch!(self, "fill_f32", cfg, b.slice_mut(), &value, &n)
    }

    /// Grid-stride launch over `n` elements.
    fn grid(&self, n: u64) -> LaunchConfig {
        let blocks = n
            .div_ceil(u64::from(BLOCK))
            .clamp(1, u64::from(self.max_blocks)) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// One block per row/channel (capped; the kernels loop), `threads` per block.
    fn per_row(&self, rows: u64, threads: u32) -> LaunchConfig {
        let blocks = rows.clamp(1, 65_535) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn single_block(threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Threads for a block that reduces `count` elements.
    fn reduce_threads(count: u64) -> u32 {
        if count >= 8192 {
            1024
        } else {
            BLOCK
        }
    }

    fn binary(&self, name: BinaryOp, a: &Storage, b: &Storage) -> Result<Storage> {
        let (a, b) = (cb(a)?, cb(b)?);
        if a.len != b.len {
            bail!("{name:?}: lengths differ ({} vs {})", a.len, b.len);
        }
        let mut y = self.alloc(a.len)?;
        let n = a.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            match name {
                BinaryOp::Add => launch!(
                    self,
                    "add_f32",
                    cfg,
                    a.slice(),
                    b.slice(),
                    y.slice_mut(),
                    &n
                )?,
                BinaryOp::Mul => launch!(
                    self,
                    "mul_f32",
                    cfg,
                    a.slice(),
                    b.slice(),
                    y.slice_mut(),
                    &n
                )?,
            }
        }
        Ok(Storage::Cuda(y))
    }

    /// `sum(a * b)` into a one-element buffer: two deterministic stages (fixed grid for a
    /// given length, then one block over the partials).
    fn dot(&self, a: &CudaBuffer, b: &CudaBuffer) -> Result<CudaBuffer> {
        let n = a.len as u64;
        let cfg = self.grid(n);
        let parts = u64::from(cfg.grid_dim.0);
        let mut partials = self.alloc(parts as usize)?;
        let mut out = self.alloc(1)?;
        launch!(
            self,
            "dot_partials_f32",
            cfg,
            a.slice(),
            b.slice(),
            &n,
            partials.slice_mut()
        )?;
        launch!(
            self,
            "sum_partials_f32",
            Self::single_block(BLOCK),
            partials.slice(),
            &parts,
            out.slice_mut()
        )?;
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy)]
enum BinaryOp {
    Add,
    Mul,
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
        self.fill(&mut b, value)?;
        Ok(Storage::Cuda(b))
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
        let mut b = self.alloc(pixels.len().div_ceil(4))?;
        if !pixels.is_empty() {
            // SAFETY: bytes have no invalid bit patterns; the view covers `pixels.len()` bytes
            // of the `4 * ceil(len / 4)` allocated.
            let mut bytes = unsafe { b.slice_mut().transmute_mut::<u8>(pixels.len()) }
                .ok_or_else(|| anyhow!("upload_images: byte view larger than the buffer"))?;
            self.stream
                .memcpy_htod(pixels, &mut bytes)
                .map_err(|e| drv(e, "copying the image set to the GPU"))?;
            // Once per data set: make sure the (possibly memory-mapped) source has been read
            // before returning, whatever the driver does with pageable copies.
            self.synchronize()?;
        }
        Ok(Storage::Cuda(b))
    }

    fn assemble_batch(
        &self,
        images: &Storage,
        image_size: usize,
        indices: &[u32],
        flips: &[bool],
        angles_deg: &[f32],
    ) -> Result<Storage> {
        let imgs = cb(images)?;
        augment::check_batch(imgs.len, image_size, indices, flips, angles_deg)?;
        let per_image = 3 * image_size * image_size;
        let mut out = self.alloc(indices.len() * per_image)?;
        let size = image_size as u32;
        let mut first = 0usize;
        while first < indices.len() {
            let count = (indices.len() - first).min(AUG_MAX_IMAGES);
            let mut t = AugTable {
                index: [0; AUG_MAX_IMAGES],
                flags: [0; AUG_MAX_IMAGES],
                sin: [0.0; AUG_MAX_IMAGES],
                cos: [0.0; AUG_MAX_IMAGES],
                count: count as u32,
            };
            for k in 0..count {
                let b = first + k;
                t.index[k] = indices[b];
                let mut flags = if flips[b] { AUG_FLIP } else { 0 };
                if let Some((sin, cos)) = augment::rotation(angles_deg[b]) {
                    flags |= AUG_ROTATE;
                    t.sin[k] = sin;
                    t.cos[k] = cos;
                }
                t.flags[k] = flags;
            }
            let n = (count * per_image) as u64;
            let first64 = first as u64;
            let cfg = self.grid(n);
            launch!(
                self,
                "assemble_batch_u8",
                cfg,
                imgs.slice(),
                out.slice_mut(),
                &t,
                &size,
                &first64,
                &n
            )?;
            first += count;
        }
        Ok(Storage::Cuda(out))
    }

    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        self.binary(BinaryOp::Add, a, b)
    }

    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        let x = cb(x)?;
        let acc = cb_mut(acc)?;
        if acc.len != x.len {
            bail!("add_assign: lengths differ ({} vs {})", acc.len, x.len);
        }
        let n = x.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(self, "add_assign_f32", cfg, acc.slice_mut(), x.slice(), &n)?;
        }
        Ok(())
    }

    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        self.binary(BinaryOp::Mul, a, b)
    }

    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage> {
        let a = cb(a)?;
        let mut y = self.alloc(a.len)?;
        let n = a.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(self, "scale_f32", cfg, a.slice(), &alpha, y.slice_mut(), &n)?;
        }
        Ok(Storage::Cuda(y))
    }

    fn reciprocal(&self, a: &Storage) -> Result<Storage> {
        let a = cb(a)?;
        let mut y = self.alloc(a.len)?;
        let n = a.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(self, "reciprocal_f32", cfg, a.slice(), y.slice_mut(), &n)?;
        }
        Ok(Storage::Cuda(y))
    }

    fn concat(&self, parts: &[&Storage]) -> Result<Storage> {
        self.concat_on_device(parts)
    }

    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
        let (a, s) = (cb(a)?, cb(s)?);
        if s.len != 1 {
            bail!("scale_by_scalar: the scalar has {} elements", s.len);
        }
        let mut y = self.alloc(a.len)?;
        let n = a.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(
                self,
                "scale_by_scalar_f32",
                cfg,
                a.slice(),
                s.slice(),
                &alpha,
                y.slice_mut(),
                &n
            )?;
        }
        Ok(Storage::Cuda(y))
    }

    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage> {
        let x = cb(x)?;
        let (kind, slope) = act_code(act);
        let mut y = self.alloc(x.len)?;
        let n = x.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(
                self,
                "act_forward_f32",
                cfg,
                &kind,
                &slope,
                x.slice(),
                y.slice_mut(),
                &n
            )?;
        }
        Ok(Storage::Cuda(y))
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        let (x, y, dy) = (cb(x)?, cb(y)?, cb(dy)?);
        let (kind, slope) = act_code(act);
        let mut dx = self.alloc(x.len)?;
        let n = x.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(
                self,
                "act_backward_f32",
                cfg,
                &kind,
                &slope,
                x.slice(),
                y.slice(),
                dy.slice(),
                dx.slice_mut(),
                &n
            )?;
        }
        Ok(Storage::Cuda(dx))
    }

    fn sum_rows(&self, x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        let x = cb(x)?;
        let mut out = self.alloc(rows)?;
        let (r, c) = (rows as u64, cols as u64);
        if r > 0 {
            let cfg = self.per_row(r, Self::reduce_threads(c));
            launch!(
                self,
                "sum_rows_f32",
                cfg,
                x.slice(),
                &r,
                &c,
                &alpha,
                out.slice_mut()
            )?;
        }
        Ok(Storage::Cuda(out))
    }

    fn broadcast_rows(&self, g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        let g = cb(g)?;
        let mut out = self.alloc(rows * cols)?;
        let (r, c) = (rows as u64, cols as u64);
        if r * c > 0 {
            let cfg = self.grid(r * c);
            launch!(
                self,
                "broadcast_rows_f32",
                cfg,
                g.slice(),
                &r,
                &c,
                &alpha,
                out.slice_mut()
            )?;
        }
        Ok(Storage::Cuda(out))
    }

    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let (x, w) = (cb(x)?, cb(w)?);
        let mut y = self.alloc(g.output_len())?;
        if g.output_len() > 0 {
            match &self.dnn {
                Some(d) if conv_impl() == ConvImpl::Cudnn => d.forward(self, x, w, &mut y, g)?,
                _ => conv::forward(self, x, w, &mut y, g)?,
            }
        }
        Ok(Storage::Cuda(y))
    }

    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let (dy, w) = (cb(dy)?, cb(w)?);
        let mut dx = self.alloc(g.input_len())?;
        if g.input_len() > 0 && g.output_len() == 0 {
            self.fill(&mut dx, 0.0)?; // nothing flows back from an empty output
        } else if g.input_len() > 0 {
            match &self.dnn {
                Some(d) if conv_impl() == ConvImpl::Cudnn => {
                    d.backward_data(self, dy, w, &mut dx, g)?
                }
                _ => conv::backward_data(self, dy, w, &mut dx, g)?,
            }
        }
        Ok(Storage::Cuda(dx))
    }

    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        let (x, dy) = (cb(x)?, cb(dy)?);
        let mut dw = self.alloc(g.weight_len())?;
        if g.weight_len() > 0 && g.output_len() == 0 {
            // No output pixel (an empty batch): the gradient is zero, as on the CPU. The chunk
            // loop would not run and leave `dw` unwritten, and cuDNN rejects an empty batch.
            self.fill(&mut dw, 0.0)?;
        } else if g.weight_len() > 0 {
            match &self.dnn {
                Some(d) if conv_impl() == ConvImpl::Cudnn => {
                    d.backward_filter(self, x, dy, &mut dw, g)?
                }
                _ => conv::backward_filter(self, x, dy, &mut dw, g)?,
            }
        }
        Ok(Storage::Cuda(dw))
    }

    fn add_channel_bias(&self, y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage> {
        let (y, b) = (cb(y)?, cb(b)?);
        let mut out = self.alloc(d.len())?;
        let (c, hw, total) = (d.c as u64, d.hw as u64, d.len() as u64);
        if total > 0 {
            let cfg = self.grid(total);
            launch!(
                self,
                "add_channel_bias_f32",
                cfg,
                y.slice(),
                b.slice(),
                &c,
                &hw,
                out.slice_mut(),
                &total
            )?;
        }
        Ok(Storage::Cuda(out))
    }

    fn channel_sum(&self, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        let dy = cb(dy)?;
        let mut out = self.alloc(d.c)?;
        let (n, c, hw) = (d.n as u64, d.c as u64, d.hw as u64);
        if c > 0 {
            let cfg = self.per_row(c, Self::reduce_threads(n * hw));
            launch!(
                self,
                "channel_sum_f32",
                cfg,
                dy.slice(),
                &n,
                &c,
                &hw,
                out.slice_mut()
            )?;
        }
        Ok(Storage::Cuda(out))
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
        d.check_batch_norm_train()?;
        let (x, gamma, beta) = (cb(x)?, cb(gamma)?, cb(beta)?);
        let rm = cb_mut(running_mean)?;
        let (n, c, hw, total) = (d.n as u64, d.c as u64, d.hw as u64, d.len() as u64);
        let mut mean = self.alloc(d.c)?;
        let mut invstd = self.alloc(d.c)?;
        let mut y = self.alloc(d.len())?;
        if total == 0 {
            bail!("batch_norm: empty input");
        }
        {
            let rv = cb_mut(running_var)?;
            let cfg = self.per_row(c, Self::reduce_threads(n * hw));
            let f = self.func("bn_stats_f32")?;
            let mut b = self.stream.launch_builder(f);
            b.arg(x.slice())
                .arg(&n)
                .arg(&c)
                .arg(&hw)
                .arg(&momentum)
                .arg(&eps)
                .arg(mean.slice_mut())
                .arg(invstd.slice_mut())
                .arg(rm.slice_mut())
                .arg(rv.slice_mut());
            // SAFETY: matches bn_stats_f32's signature.
            unsafe { b.launch(cfg) }.map_err(|e| drv(e, "launching bn_stats_f32"))?;
        }
        let cfg = self.grid(total);
        launch!(
            self,
            "bn_apply_f32",
            cfg,
            x.slice(),
            mean.slice(),
            invstd.slice(),
            gamma.slice(),
            beta.slice(),
            &c,
            &hw,
            y.slice_mut(),
            &total
        )?;
        Ok(BatchNormSaved {
            y: Storage::Cuda(y),
            mean: Storage::Cuda(mean),
            invstd: Storage::Cuda(invstd),
        })
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
        let (x, gamma, beta) = (cb(x)?, cb(gamma)?, cb(beta)?);
        let (rm, rv) = (cb(running_mean)?, cb(running_var)?);
        let mut y = self.alloc(d.len())?;
        let (c, hw, total) = (d.c as u64, d.hw as u64, d.len() as u64);
        if total > 0 {
            let cfg = self.grid(total);
            launch!(
                self,
                "bn_eval_f32",
                cfg,
                x.slice(),
                rm.slice(),
                rv.slice(),
                gamma.slice(),
                beta.slice(),
                &eps,
                &c,
                &hw,
                y.slice_mut(),
                &total
            )?;
        }
        Ok(Storage::Cuda(y))
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
        let (x, dy, gamma) = (cb(x)?, cb(dy)?, cb(gamma)?);
        let (mean, invstd) = (cb(mean)?, cb(invstd)?);
        let (n, c, hw, total) = (d.n as u64, d.c as u64, d.hw as u64, d.len() as u64);
        let mut dx = self.alloc(d.len())?;
        let mut dgamma = self.alloc(d.c)?;
        let mut dbeta = self.alloc(d.c)?;
        if total == 0 {
            bail!("batch_norm backward: empty input");
        }
        let cfg = self.per_row(c, Self::reduce_threads(n * hw));
        launch!(
            self,
            "bn_backward_reduce_f32",
            cfg,
            x.slice(),
            dy.slice(),
            mean.slice(),
            invstd.slice(),
            &n,
            &c,
            &hw,
            dgamma.slice_mut(),
            dbeta.slice_mut()
        )?;
        let cfg = self.grid(total);
        launch!(
            self,
            "bn_backward_dx_f32",
            cfg,
            x.slice(),
            dy.slice(),
            gamma.slice(),
            mean.slice(),
            invstd.slice(),
            dgamma.slice(),
            dbeta.slice(),
            &n,
            &c,
            &hw,
            dx.slice_mut()
        )?;
        Ok((
            Storage::Cuda(dx),
            Storage::Cuda(dgamma),
            Storage::Cuda(dbeta),
        ))
    }

    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage> {
        let mut out = self.alloc(len)?;
        // The same f32 expressions as crate::rng::dropout_value_at.
        let keep = 1.0f32 - p;
        let scale = 1.0f32 / (1.0f32 - p);
        let n = len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(
                self,
                "dropout_mask_f32",
                cfg,
                out.slice_mut(),
                &n,
                &seed,
                &keep,
                &scale
            )?;
        }
        Ok(Storage::Cuda(out))
    }

    fn add_gaussian_noise(&self, x: &Storage, std: f32, seed: u64) -> Result<Storage> {
        let x = cb(x)?;
        let mut out = self.alloc(x.len)?;
        let n = x.len as u64;
        if n > 0 {
            let cfg = self.grid(n);
            launch!(
                self,
                "gaussian_noise_f32",
                cfg,
                x.slice(),
                out.slice_mut(),
                &n,
                &seed,
                &std
            )?;
        }
        Ok(Storage::Cuda(out))
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
        let w = cb(w)?;
        let (r, c) = (rows as u64, cols as u64);
        if r == 0 || c == 0 {
            bail!("spectral_norm: empty weight ({rows}x{cols})");
        }
        let mut sigma = self.alloc(1)?;
        let mut wv = self.alloc(rows)?;
        if update {
            // v = normalize(W^T u)
            let mut t = self.alloc(cols)?;
            {
                let u = cb(u)?;
                let cfg = self.grid(c);
                launch!(
                    self,
                    "sn_wt_u_f32",
                    cfg,
                    w.slice(),
                    u.slice(),
                    &r,
                    &c,
                    t.slice_mut()
                )?;
            }
            let v = cb_mut(v)?;
            launch!(
                self,
                "sn_normalize_f32",
                Self::single_block(1024),
                t.slice(),
                &c,
                &eps,
                v.slice_mut()
            )?;
        }
        {
            let v = cb(v)?;
            let cfg = self.per_row(r, Self::reduce_threads(c));
            launch!(
                self,
                "sn_w_v_f32",
                cfg,
                w.slice(),
                v.slice(),
                &r,
                &c,
                wv.slice_mut()
            )?;
        }
        let u = cb_mut(u)?;
        if update {
            // u = normalize(W v)
            launch!(
                self,
                "sn_normalize_f32",
                Self::single_block(1024),
                wv.slice(),
                &r,
                &eps,
                u.slice_mut()
            )?;
        }
        launch!(
            self,
            "sn_sigma_f32",
            Self::single_block(1024),
            u.slice(),
            wv.slice(),
            &r,
            sigma.slice_mut()
        )?;
        Ok(Storage::Cuda(sigma))
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
        let (w, g, u, v, sigma) = (cb(w)?, cb(g)?, cb(u)?, cb(v)?, cb(sigma)?);
        let (r, c) = (rows as u64, cols as u64);
        let mut dw = self.alloc(rows * cols)?;
        if r * c > 0 {
            let gw = self.dot(g, w)?;
            let cfg = self.grid(r * c);
            launch!(
                self,
                "sn_backward_f32",
                cfg,
                g.slice(),
                u.slice(),
                v.slice(),
                sigma.slice(),
                gw.slice(),
                &r,
                &c,
                dw.slice_mut()
            )?;
        }
        Ok(Storage::Cuda(dw))
    }

    fn bce_with_logits(&self, x: &Storage, target: f32) -> Result<(Storage, Storage)> {
        let x = cb(x)?;
        if x.len == 0 {
            bail!("bce_with_logits: empty input");
        }
        let mut loss = self.alloc(1)?;
        let mut grad = self.alloc(x.len)?;
        let n = x.len as u64;
        launch!(
            self,
            "bce_logits_f32",
            Self::single_block(Self::reduce_threads(n)),
            x.slice(),
            &n,
            &target,
            loss.slice_mut(),
            grad.slice_mut()
        )?;
        Ok((Storage::Cuda(loss), Storage::Cuda(grad)))
    }

    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
        let bc2_sqrt = step.bias_correction2.sqrt();
        let live: Vec<usize> = (0..items.len())
            .filter(|&i| !items[i].param.is_empty())
            .collect();
        for group in live.chunks(ADAM_MAX_ITEMS) {
            let mut t = AdamTable {
                param: [0; ADAM_MAX_ITEMS],
                grad: [0; ADAM_MAX_ITEMS],
                m: [0; ADAM_MAX_ITEMS],
                v: [0; ADAM_MAX_ITEMS],
                len: [0; ADAM_MAX_ITEMS],
                block_start: [0; ADAM_MAX_ITEMS + 1],
                step: [0.0; ADAM_MAX_ITEMS],
                n_items: group.len() as u32,
            };
            let mut blocks: u32 = 0;
            for (k, &i) in group.iter().enumerate() {
                let it = &mut items[i];
                let len = it.param.len();
                if it.grad.len() != len || it.m.len() != len || it.v.len() != len {
                    bail!("adam: item {i} has mismatched lengths");
                }
                let len32 = u32::try_from(len).map_err(|_| anyhow!("adam: tensor too large"))?;
                // Event tracking is off, so these raw pointers carry no synchronisation duty.
                t.grad[k] = cb(it.grad)?.slice().device_ptr(&self.stream).0;
                t.param[k] = cb_mut(it.param)?.slice_mut().device_ptr_mut(&self.stream).0;
                t.m[k] = cb_mut(it.m)?.slice_mut().device_ptr_mut(&self.stream).0;
                t.v[k] = cb_mut(it.v)?.slice_mut().device_ptr_mut(&self.stream).0;
                t.len[k] = len32;
                t.step[k] = it.lr / step.bias_correction1;
                t.block_start[k] = blocks;
                blocks += len32.div_ceil(ADAM_CHUNK);
            }
            t.block_start[group.len()] = blocks;
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let chunk = ADAM_CHUNK;
            launch!(
                self,
                "adam_multi_f32",
                cfg,
                &t,
                &chunk,
                &step.beta1,
                &step.beta2,
                &step.eps,
                &bc2_sqrt
            )?;
        }
        Ok(())
    }

    // ---- conditional models and DiffAugment (issue 13): see `conditional.rs`
    fn embedding(
        &self,
        table: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        self.cond_embedding(table, labels, classes, dim)
    }
    fn embedding_backward(
        &self,
        dy: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        self.cond_embedding_backward(dy, labels, classes, dim)
    }
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        d: ChannelDims,
    ) -> Result<Storage> {
        self.cond_channel_affine(x, scale, shift, d)
    }
    fn channel_affine_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        self.cond_channel_affine_backward(x, dy, scale, d)
    }
    fn row_dot(&self, a: &Storage, b: &Storage, rows: usize, cols: usize) -> Result<Storage> {
        self.cond_row_dot(a, b, rows, cols)
    }
    fn row_dot_backward(
        &self,
        a: &Storage,
        b: &Storage,
        g: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        self.cond_row_dot_backward(a, b, g, rows, cols)
    }
    fn diffaug_color(
        &self,
        x: &Storage,
        params: &Storage,
        d: ChannelDims,
        brightness: bool,
    ) -> Result<Storage> {
        self.cond_diffaug_color(x, params, d, brightness)
    }
    fn diffaug_translate(
        &self,
        x: &Storage,
        shifts: &Storage,
        dims: [usize; 4],
    ) -> Result<Storage> {
        self.cond_diffaug_translate(x, shifts, dims)
    }
    fn diffaug_cutout(&self, x: &Storage, boxes: &Storage, dims: [usize; 4]) -> Result<Storage> {
        self.cond_diffaug_cutout(x, boxes, dims)
    }

    fn release_cached_memory(&self) -> Result<()> {
        self.pool.trim()
    }
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| drv(e, "synchronize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_table_matches_the_kernel_struct_size() {
        // 4 pointer arrays, len, block_start (65), step, n_items: see kernels/adam.cu.
        let expect = 4 * 8 * ADAM_MAX_ITEMS
            + 4 * ADAM_MAX_ITEMS
            + 4 * (ADAM_MAX_ITEMS + 1)
            + 4 * ADAM_MAX_ITEMS
            + 4;
        assert_eq!(std::mem::size_of::<AdamTable>(), expect.next_multiple_of(8));
        assert!(
            std::mem::size_of::<AdamTable>() + 24 <= 4096,
            "kernel parameter limit"
        );
    }

    #[test]
    fn aug_table_matches_the_kernel_struct_size() {
        // index, flags, sin, cos (4 bytes each per image), count: see kernels/augment.cu.
        let expect = 4 * 4 * AUG_MAX_IMAGES + 4;
        assert_eq!(std::mem::size_of::<AugTable>(), expect);
        // + images and out pointers, size, first, n.
        assert!(
            std::mem::size_of::<AugTable>() + 8 + 8 + 8 + 8 + 8 <= 4096,
            "kernel parameter limit"
        );
    }
}
