//! The backend seam. Every numeric kernel the engine needs is a method of [`Backend`]; the CPU
//! reference (`cpu`) and CUDA (`cuda`) implement the same set. Autograd (`crate::ops`) and the
//! models only ever call these methods, so a backend is added without touching them.
//!
//! Layout conventions: f32, NCHW, contiguous. Conv weights `[c_out, c_in, kh, kw]`.

pub mod capture;
pub mod cpu;
pub mod cuda;
mod params;
pub mod reference;
pub mod select;

pub use params::*;

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

/// Element storage. One variant per backend; a backend only ever sees its own variant.
pub enum Storage {
    Cpu(Vec<f32>),
    Cuda(cuda::CudaBuffer),
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            Storage::Cuda(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(b) => Device::Cuda(b.ordinal()),
        }
    }
}

/// The op set. Inputs are validated by the caller (`crate::ops`): lengths agree with the
/// dimensions passed. Every method may fail (device errors, out of memory).
pub trait Backend {
    fn device(&self) -> Device;

    // ---- memory
    fn upload(&self, host: &[f32]) -> Result<Storage>;
    fn download(&self, s: &Storage) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Storage>;
    fn full(&self, len: usize, value: f32) -> Result<Storage>;
    fn copy(&self, s: &Storage) -> Result<Storage>;
    /// Overwrites `dst` with `host` (same length), keeping its device buffer: what a CUDA graph
    /// reads must stay at its address.
    fn write(&self, dst: &mut Storage, host: &[f32]) -> Result<()> {
        if dst.len() != host.len() {
            bail!("write: {} values into {}", host.len(), dst.len());
        }
        *dst = self.upload(host)?;
        Ok(())
    }
    /// Step capture and replay (`--cuda-graphs`); `None`: no graphs on this device.
    fn step_capture(&self) -> Option<&dyn capture::StepCapture> {
        None
    }

    // ---- data (see `augment`)
    /// Image bytes (HWC RGB images one after another) kept on the device, packed four to an
    /// element: `ceil(len / 4)` elements (`reference::augment::pack_bytes`; the CPU holds the same
    /// packing). Only [`Backend::assemble_batch`] reads it.
    fn upload_images(&self, pixels: &[u8]) -> Result<Storage>;
    /// A batch `[B, 3, S, S]` in [-1, 1] from images uploaded by [`Backend::upload_images`]
    /// (`image_size` = S): image `indices[b]`, mirrored left-right when `flips[b]`, rotated by
    /// `angles_deg[b]` about the centre (bilinear, reflected edges). One entry per batch image
    /// in each slice; indices past the last whole image are an error. Same values as
    /// `reference::augment::assemble` (the CPU runs it; the CUDA kernel is expected to be bit-identical).
    fn assemble_batch(
        &self,
        images: &Storage,
        image_size: usize,
        indices: &[u32],
        flips: &[bool],
        angles_deg: &[f32],
    ) -> Result<Storage>;

    // ---- elementwise
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage>;
    /// `acc += x` (gradient accumulation).
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()>;
    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage>;
    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage>;
    /// `1 / a` elementwise (IEEE division). Keeps scalars such as spectral norm's sigma on the
    /// device: inverting one on the host would stall the stream.
    fn reciprocal(&self, a: &Storage) -> Result<Storage>;
    /// Each value rounded to the nearest f16 (ties to even; beyond ±65504 to ±inf), held in
    /// f32: the rounding mixed precision applies to GEMM operands (`half::f16::from_f32`).
    fn round_to_f16(&self, a: &Storage) -> Result<Storage>;
    /// `a * s[0] * alpha` where `s` holds one element (on the device).
    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage>;
    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage>;
    /// dx from the forward input `x`, its output `y` and `dy`.
    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage>;

    // ---- reductions on a `[rows, cols]` view
    /// `out[r] = alpha * sum_c x[r, c]`.
    fn sum_rows(&self, x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage>;
    /// `out[r, c] = alpha * g[r]` (backward of `sum_rows`).
    fn broadcast_rows(&self, g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage>;

    // ---- convolution (cross-correlation, no bias)
    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage>;
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage>;
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage>;
    /// `act(conv2d_forward(x, w))`: a layer's conv and the activation after it. A backend may
    /// apply `act` in the pass that writes the output (the fast CPU backend does); the default
    /// runs the two ops. Either way the values are those of the two ops.
    fn conv2d_forward_act(
        &self,
        x: &Storage,
        w: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        self.activation(act, &self.conv2d_forward(x, w, g)?)
    }
    /// The weight gradient of [`Backend::conv2d_forward_act`]: `conv2d_backward_filter(x, dz)`
    /// with `dz` = `dy` through the derivative of `act`, read off its output `y`
    /// ([`Activation::derivative_from_output`]). A backend may apply the derivative as it reads
    /// `dy`; the default runs `activation_backward` first.
    fn conv2d_backward_filter_act(
        &self,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        self.conv2d_backward_filter(x, &self.activation_backward(act, y, y, dy)?, g)
    }
    /// `act(conv2d_backward_data(dy, w))`: a transposed conv and its activation, as
    /// [`Backend::conv2d_forward_act`].
    fn conv2d_backward_data_act(
        &self,
        dy: &Storage,
        w: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        self.activation(act, &self.conv2d_backward_data(dy, w, g)?)
    }
    /// `y[n, c, :] + b[c]`.
    fn add_channel_bias(&self, y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage>;
    /// `out[c] = sum_{n, hw} dy[n, c, hw]` (bias gradient).
    fn channel_sum(&self, dy: &Storage, d: ChannelDims) -> Result<Storage>;

    // ---- batch norm (PyTorch semantics: biased var to normalise, unbiased into running_var)
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<BatchNormSaved>;
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
    ) -> Result<Storage>;
    /// Returns (dx, dgamma, dbeta) for a training-mode forward.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)>;

    /// Training-mode batch norm followed by `act` in one pass: `y` of the result is the
    /// activated output, the running statistics move as in [`Backend::batch_norm_train`].
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<BatchNormSaved>;
    /// Eval-mode batch norm followed by `act`: `mean` and `invstd` of the result are
    /// `running_mean` and `1 / sqrt(running_var + eps)`, what the backward needs.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<BatchNormSaved>;
    /// (dx, dgamma, dbeta) of the fused forward from its input `x` (the activation's mask comes
    /// from the pre-activation recomputed with [`batch_norm_affine`]). `batch_stats`: the
    /// forward normalised with the batch's own statistics (training), so dx has the terms
    /// through the mean and variance; otherwise (eval) they are constants.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<(Storage, Storage, Storage)>;

    // ---- random (counter-based: element i depends only on seed and i; see crate::rng)
    /// Inverted-dropout mask: `1/(1-p)` where kept, else 0.
    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage>;
    /// `x + std * N(0, 1)`.
    fn add_gaussian_noise(&self, x: &Storage, std: f32, seed: u64) -> Result<Storage>;
    /// [`Backend::dropout_mask`] with the seed already in `values` (written before the step;
    /// layout: [`seed_values`]), which must hold the same seed: the form a CUDA graph replays
    /// (the seed changes every step, a graph's arguments cannot). The host backends ignore
    /// `values`.
    fn dropout_mask_by(&self, len: usize, p: f32, seed: u64, values: &Storage) -> Result<Storage> {
        let _ = values;
        self.dropout_mask(len, p, seed)
    }
    /// [`Backend::add_gaussian_noise`] with the seed and std already in `values` (layout:
    /// [`seed_values`]), like [`Backend::dropout_mask_by`].
    fn add_gaussian_noise_by(
        &self,
        x: &Storage,
        std: f32,
        seed: u64,
        values: &Storage,
    ) -> Result<Storage> {
        let _ = values;
        self.add_gaussian_noise(x, std, seed)
    }

    // ---- spectral norm of `w` viewed as `[rows, cols]`
    /// One power iteration when `update` (v = normalize(Wᵀu), u = normalize(Wv), written
    /// back), then sigma = uᵀWv. Returns sigma as a one-element storage.
    #[allow(clippy::too_many_arguments)]
    fn spectral_norm_sigma(
        &self,
        w: &Storage,
        u: &mut Storage,
        v: &mut Storage,
        rows: usize,
        cols: usize,
        eps: f32,
        update: bool,
    ) -> Result<Storage>;
    /// Gradient of W/sigma(W) with respect to W, u and v held fixed:
    /// `dW = g/sigma - (sum(g*W)/sigma^2) u vᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn spectral_norm_backward(
        &self,
        w: &Storage,
        g: &Storage,
        u: &Storage,
        v: &Storage,
        sigma: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<Storage>;

    // ---- loss
    /// Mean binary cross-entropy with logits against a constant `target`, fused: returns
    /// (loss as one element, d loss / d x).
    fn bce_with_logits(&self, x: &Storage, target: f32) -> Result<(Storage, Storage)>;
    /// Mean hinge loss of logits for one `term`, fused: returns (loss as one element,
    /// d loss / d x).
    fn hinge_with_logits(&self, x: &Storage, term: HingeTerm) -> Result<(Storage, Storage)>;

    // ---- optimiser
    /// Bias-corrected Adam (PyTorch's formula) over every item, in one pass where possible.
    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()>;
    /// Mixed precision's optimiser step: PyTorch's `GradScaler.step(opt)` and `update()` in one
    /// call, without reading anything back. The gradients hold `scale[0]`× the true ones (the
    /// backward was seeded with the scale). If any `g · (1/scale)` is inf or NaN, nothing is
    /// updated, the scale halves, the tracker restarts and `SKIPPED` counts the step; else
    /// Adam runs on `g · (1/scale)` with the bias corrections of step `APPLIED + 1`
    /// (`1 − β^t` in f64), `APPLIED` and the tracker count it and after
    /// [`loss_scale::GROWTH_INTERVAL`] clean steps in a row the scale doubles (if finite).
    /// `counters` has the layout of [`loss_scale`].
    fn adam_update_scaled(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()>;

    /// [`Backend::adam_update_scaled`] with the items' lr already in `scalars` (layout:
    /// [`amp_adam_scalars`]): the form a CUDA graph replays, like [`Backend::adam_update_with`].
    /// The host backends ignore `scalars`.
    fn adam_update_scaled_with(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scalars: &Storage,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        let _ = scalars;
        self.adam_update_scaled(items, hyper, scale, counters)
    }

    /// [`Backend::adam_update`] with the step's scalars already in `scalars` (written by
    /// [`Backend::write`] before the step; layout: [`adam_scalars`]) instead of taken from
    /// `step` and the items' `lr`, which must hold the same values: the form a CUDA graph
    /// replays (the scalars change every step, a graph's arguments cannot). The host
    /// backends ignore `scalars`.
    fn adam_update_with(
        &self,
        items: &mut [AdamItem<'_>],
        step: AdamStep,
        scalars: &Storage,
    ) -> Result<()> {
        let _ = scalars;
        self.adam_update(items, step)
    }

    // ---- conditional models (issue 13): class embeddings, class-conditional batch-norm
    // affine, the projection discriminator's inner product. Class labels travel as f32
    // holding small non-negative integers (exact below 2^24), validated by `crate::ops`.
    /// Embedding lookup: `out[b, :] = table[labels[b], :]`, table `[classes, dim]`, labels
    /// `[B]`, out `[B, dim]`.
    fn embedding(
        &self,
        table: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage>;
    /// Its backward, a scatter-add: `out[k, :] = sum over b with labels[b] = k of dy[b, :]`
    /// (`[classes, dim]`, rows of absent classes 0), summed in batch order (deterministic).
    fn embedding_backward(
        &self,
        dy: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage>;
    /// Per-sample, per-channel affine: `y[n, c, hw] = x[n, c, hw] * scale[n, c] + shift[n, c]`
    /// (class-conditional batch norm: `scale`/`shift` are embedding lookups).
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        d: ChannelDims,
    ) -> Result<Storage>;
    /// Returns (dx, dscale, dshift) of [`Backend::channel_affine`]: `dx = dy * scale[n, c]`,
    /// `dscale[n, c] = sum_hw dy * x`, `dshift[n, c] = sum_hw dy`.
    fn channel_affine_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)>;
    /// Row-wise inner product of two `[rows, cols]` views: `out[r] = sum_c a[r, c] * b[r, c]`
    /// (the projection term `<embed(y), phi(x)>`).
    fn row_dot(&self, a: &Storage, b: &Storage, rows: usize, cols: usize) -> Result<Storage>;
    /// Returns (da, db) of [`Backend::row_dot`]: `da[r, c] = g[r] * b[r, c]`, `db = g[r] * a`.
    fn row_dot_backward(
        &self,
        a: &Storage,
        b: &Storage,
        g: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)>;

    // ---- DiffAugment (Zhao et al. 2020) on NCHW images, per-sample parameters given.
    /// Colour: per sample n with `params[n] = (brightness shift, saturation factor, contrast
    /// factor)`: `x1 = x + b` (only when `brightness`), `x2 = (x1 - mean_c x1) * s + mean_c x1`,
    /// `y = (x2 - mean_chw x2) * k + mean_chw x2`. Without brightness the map is linear and
    /// self-adjoint, so it is also its own backward.
    fn diffaug_color(
        &self,
        x: &Storage,
        params: &Storage,
        d: ChannelDims,
        brightness: bool,
    ) -> Result<Storage>;
    /// Translation with zero padding: `y[n, c, i, j] = x[n, c, i + sy, j + sx]` (0 outside),
    /// `shifts[n] = (sy, sx)` whole numbers held as f32. The backward is the same op with the
    /// shifts negated. `dims` = [n, c, h, w].
    fn diffaug_translate(&self, x: &Storage, shifts: &Storage, dims: [usize; 4])
        -> Result<Storage>;
    /// Cutout: zero where `y0 <= i < y1 && x0 <= j < x1`, `boxes[n] = (y0, y1, x0, x1)` as
    /// f32; a mask, so it is its own backward. `dims` = [n, c, h, w].
    fn diffaug_cutout(&self, x: &Storage, boxes: &Storage, dims: [usize; 4]) -> Result<Storage>;
    /// `acc = a·acc + b·x` in place (the EMA of weights), computed as `(acc·a) + (x·b)` in f32
    /// like `scale`, `scale` and `add_assign` would.
    fn scale_add_assign(&self, acc: &mut Storage, a: f32, x: &Storage, b: f32) -> Result<()> {
        let mut next = self.scale(acc, a)?;
        self.add_assign(&mut next, &self.scale(x, b)?)?;
        *acc = next;
        Ok(())
    }

    /// [`Backend::scale_add_assign`] with `a` and `b` read from one-element buffers (written
    /// before the step: what a CUDA graph replays with new values), `acc` updated in place
    /// (its buffer kept, as a graph needs). Same arithmetic as `scale_add_assign`.
    fn scale_add_assign_by(
        &self,
        acc: &mut Storage,
        a: &Storage,
        x: &Storage,
        b: &Storage,
    ) -> Result<()> {
        let (a, b) = match (a, b) {
            (Storage::Cpu(a), Storage::Cpu(b)) if a.len() == 1 && b.len() == 1 => (a[0], b[0]),
            _ => bail!("scale_add_assign_by: the scalars must be one host element each"),
        };
        self.scale_add_assign(acc, a, x, b)
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
    /// gathers a window's per-step metrics this way, so reading them is one download. This
    /// default serves the host backends; device backends override it.
    fn concat(&self, parts: &[&Storage]) -> Result<Storage> {
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            match p {
                Storage::Cpu(v) => out.extend_from_slice(v),
                other => bail!("concat on the CPU was given a tensor on {}", other.device()),
            }
        }
        Ok(Storage::Cpu(out))
    }

    /// Gives cached device memory back to the driver (after an out-of-memory error).
    fn release_cached_memory(&self) -> Result<()> {
        Ok(())
    }
    /// Waits for queued work (timing, error surfacing). A no-op on the CPU.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

thread_local! {
    static BACKENDS: RefCell<HashMap<Device, Rc<dyn Backend>>> = RefCell::new(HashMap::new());
    static REFERENCE_CPU: RefCell<Option<Rc<dyn Backend>>> = const { RefCell::new(None) };
}

/// While alive, `Device::Cpu` on this thread is served by the reference backend
/// ([`reference`]) instead of the fast CPU one: tests run the same ops on the oracle this way.
/// Tensors made before keep working (both hold `Storage::Cpu`). Restores on drop.
pub struct ReferenceCpuGuard {
    previous: Option<Rc<dyn Backend>>,
}

pub fn use_reference_cpu() -> ReferenceCpuGuard {
    let previous = REFERENCE_CPU.with(|r| r.replace(Some(reference::backend())));
    ReferenceCpuGuard { previous }
}

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
