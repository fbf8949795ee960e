//! What the [`Backend`](super::Backend) methods take besides storage: convolution geometry,
//! per-channel views, activation choices, batch-norm and Adam parameters.

use super::Storage;
use anyhow::{bail, Result};

/// Geometry of one 2-D convolution (cross-correlation, as PyTorch): input `[n, c_in, h, w]`,
/// weight `[c_out, c_in, kh, kw]`, output `[n, c_out, oh, ow]`. A transposed convolution is
/// described by the geometry of the convolution whose backward-data it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
    /// Mixed precision: each primitive multiplies f16 operands (f32 ones are rounded to f16
    /// first) and rounds its output to f16: forward and backward-data give f16 tensors,
    /// backward-filter an f32 tensor of f16 values (see `backend/conv.rs`, "Mixed
    /// precision"). Set by `crate::ops` from the caller's [`crate::amp::Numerics`].
    pub f16_operands: bool,
    /// Which implementation runs this convolution on a CUDA device (the CPU backends have one).
    pub conv_impl: ConvImpl,
}

/// Which implementation runs the convolutions on a CUDA device (`--conv-impl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvImpl {
    /// cuDNN (default; our own kernels where the library is missing).
    #[default]
    Cudnn,
    /// Our im2col/col2im kernels + cuBLAS.
    Own,
}

impl std::str::FromStr for ConvImpl {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cudnn" => Ok(ConvImpl::Cudnn),
            "own" => Ok(ConvImpl::Own),
            _ => bail!("unknown conv implementation {s:?} (expected cudnn or own)"),
        }
    }
}

impl ConvGeom {
    /// Geometry of a forward convolution; errors if the kernel does not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if stride == 0 || k == 0 {
            bail!("conv2d: stride and kernel size must be positive");
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            bail!("conv2d: kernel {k} larger than padded input {h}x{w} (padding {pad})");
        }
        Ok(ConvGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
            f16_operands: false,
            conv_impl: ConvImpl::default(),
        })
    }

    /// The convolution whose backward-data is `conv_transpose2d` of an input `[n, c_in, h, w]`
    /// with weight `[c_in, c_out, k, k]`: its input is the transposed conv's output.
    #[allow(clippy::too_many_arguments)]
    pub fn transposed(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        output_padding: usize,
    ) -> Result<Self> {
        if stride == 0 || k == 0 {
            bail!("conv_transpose2d: stride and kernel size must be positive");
        }
        if output_padding >= stride {
            bail!("conv_transpose2d: output_padding {output_padding} must be smaller than stride {stride}");
        }
        let full_h = (h - 1) * stride + k + output_padding;
        let full_w = (w - 1) * stride + k + output_padding;
        if full_h <= 2 * pad || full_w <= 2 * pad {
            bail!("conv_transpose2d: padding {pad} leaves no output");
        }
        Ok(ConvGeom {
            n,
            c_in: c_out,
            h: full_h - 2 * pad,
            w: full_w - 2 * pad,
            c_out: c_in,
            kh: k,
            kw: k,
            stride,
            pad,
            oh: h,
            ow: w,
            f16_operands: false,
            conv_impl: ConvImpl::default(),
        })
    }

    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.oh * self.ow
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }
}

/// Elementwise nonlinearities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Relu,
    LeakyRelu(f32),
    Tanh,
    Sigmoid,
}

impl Activation {
    /// Whether the derivative can be read off the output (its sign is the input's): all but a
    /// LeakyReLU of negative slope. A conv fuses only these (`ops::conv2d_act`).
    pub fn derivative_from_output(self) -> bool {
        match self {
            Activation::LeakyRelu(slope) => slope >= 0.0,
            _ => true,
        }
    }
}

/// What a batch norm applies after its affine in the same pass: nothing (plain batch norm), or
/// the ReLU / LeakyReLU that follows it in the models (fused: the pre-activation is never stored).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchNormAct {
    None,
    Relu,
    LeakyRelu(f32),
}

impl BatchNormAct {
    /// The fused form of `act`; only ReLU and LeakyReLU fuse.
    pub fn fused(act: Activation) -> Result<Self> {
        match act {
            Activation::Relu => Ok(BatchNormAct::Relu),
            Activation::LeakyRelu(slope) => Ok(BatchNormAct::LeakyRelu(slope)),
            other => bail!("batch norm fuses only ReLU and LeakyReLU, not {other:?}"),
        }
    }

    /// The activation of pre-activation `z`, as the unfused activation computes it.
    pub fn apply(self, z: f32) -> f32 {
        match self {
            BatchNormAct::None => z,
            BatchNormAct::Relu => z.max(0.0),
            BatchNormAct::LeakyRelu(slope) => {
                if z > 0.0 {
                    z
                } else {
                    z * slope
                }
            }
        }
    }

    /// `g` through the activation's derivative at `z`, as the unfused activation's backward.
    pub fn grad(self, z: f32, g: f32) -> f32 {
        match self {
            BatchNormAct::None => g,
            _ if z > 0.0 => g,
            BatchNormAct::Relu => 0.0,
            BatchNormAct::LeakyRelu(slope) => g * slope,
        }
    }
}

/// Batch norm's pre-activation `(x - mean) * scale + shift` (scale = invstd * gamma), rounded
/// step by step; every backend computes it this way so that a fused backward recomputes the
/// forward's exact value for the activation's mask.
pub fn batch_norm_affine(x: f32, mean: f32, scale: f32, shift: f32) -> f32 {
    (x - mean) * scale + shift
}

/// `[n, c, hw]` view of an NCHW tensor for per-channel ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl ChannelDims {
    /// Training-mode batch norm needs at least two values per channel: with one, the unbiased
    /// variance for `running_var` is 0/0. PyTorch refuses such input with this error; both
    /// backends do the same (before, the CPU stored NaN and the GPU the biased 0).
    pub fn check_batch_norm_train(&self) -> Result<()> {
        if self.n * self.hw < 2 {
            bail!(
                "batch norm in training mode needs more than one value per channel, got \
                 {} images of {} channels with {} pixels each",
                self.n,
                self.c,
                self.hw
            );
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An NCHW tensor's dims (the resample family's input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl ImageDims {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Image planes (`n * c`), each `h x w`.
    pub fn planes(&self) -> usize {
        self.n * self.c
    }
}

/// A window of every image plane: rows `top..top + h`, columns `left..left + w` (`crop2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub top: usize,
    pub left: usize,
    pub h: usize,
    pub w: usize,
}

/// What a training-mode batch norm forward saves for its backward.
pub struct BatchNormSaved {
    pub y: Storage,
    /// Per-channel batch mean.
    pub mean: Storage,
    /// Per-channel 1/sqrt(biased var + eps).
    pub invstd: Storage,
}

/// Hyper-parameters of one Adam step, bias corrections already folded in by the optimiser.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1 - beta1^t
    pub bias_correction1: f32,
    /// 1 - beta2^t
    pub bias_correction2: f32,
}

/// Adam's constants without the bias corrections: the mixed-precision step
/// ([`Backend::adam_update_scaled`](super::Backend::adam_update_scaled)) derives those on the
/// device from its count of applied steps.
#[derive(Clone, Copy, Debug)]
pub struct AdamHyper {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

/// The dynamic loss scaler of mixed precision (PyTorch `GradScaler`'s defaults): the scale lives
/// in a one-element buffer (it seeds the backward pass), the rest in a `COUNTERS`-element one,
/// all f32 holding whole numbers (exact below 2^24). Both stay on the device.
pub mod loss_scale {
    /// `init_scale` = 2^16.
    pub const INIT_SCALE: f32 = 65536.0;
    /// Clean steps in a row after which the scale doubles (`growth_interval`).
    pub const GROWTH_INTERVAL: u32 = 2000;
    /// Counter slots: clean steps since the last change of scale (`_growth_tracker`) ...
    pub const GROWTH_TRACKER: usize = 0;
    /// ... 1 while the current step's gradients hold an inf/NaN (reset by the update) ...
    pub const FOUND_INF: usize = 1;
    /// ... steps skipped so far ...
    pub const SKIPPED: usize = 2;
    /// ... and steps applied so far (Adam's `t`, which a skipped step does not advance).
    pub const APPLIED: usize = 3;
    pub const COUNTERS: usize = 4;
}

/// The per-step scalars of an Adam update as
/// [`Backend::adam_update_with`](super::Backend::adam_update_with) reads them:
/// `sqrt(1 - beta2^t)`, then `lr / (1 - beta1^t)` of each item, in item order.
pub fn adam_scalars(step: AdamStep, lrs: impl IntoIterator<Item = f32>) -> Vec<f32> {
    let mut out = vec![step.bias_correction2.sqrt()];
    out.extend(lrs.into_iter().map(|lr| lr / step.bias_correction1));
    out
}

/// The per-step scalars of a mixed-precision Adam update as
/// [`Backend::adam_update_scaled_with`](super::Backend::adam_update_scaled_with) reads them:
/// an unused slot (so that items sit where [`adam_scalars`] puts them), then the lr of each
/// item; the bias corrections come from the device's count of applied steps.
pub fn amp_adam_scalars(lrs: impl IntoIterator<Item = f32>) -> Vec<f32> {
    let mut out = vec![1.0];
    out.extend(lrs);
    out
}

/// One parameter tensor in an Adam update.
pub struct AdamItem<'a> {
    pub param: &'a mut Storage,
    pub grad: &'a Storage,
    pub m: &'a mut Storage,
    pub v: &'a mut Storage,
    pub lr: f32,
}

/// A dropout or noise seed and the noise std as
/// [`Backend::dropout_mask_by`](super::Backend::dropout_mask_by) and
/// [`Backend::add_gaussian_noise_by`](super::Backend::add_gaussian_noise_by) read them: the
/// seed's low and high 32 bits (as f32 bit patterns), then the std (unused by dropout).
pub fn seed_values(seed: u64, std: f32) -> [f32; 3] {
    [
        f32::from_bits(seed as u32),
        f32::from_bits((seed >> 32) as u32),
        std,
    ]
}

/// One term of the hinge loss (Lim & Ye 2017; SAGAN, FastGAN) on D's logits x:
/// D on real images mean(max(0, 1 − x)), D on fakes mean(max(0, 1 + x)), G −mean(x).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HingeTerm {
    Real,
    Fake,
    Generator,
}

impl HingeTerm {
    /// The sign s of the term's form: mean(max(0, 1 − s·x)) when clamped, else mean(−s·x).
    pub fn sign(self) -> f32 {
        match self {
            HingeTerm::Real | HingeTerm::Generator => 1.0,
            HingeTerm::Fake => -1.0,
        }
    }

    /// Whether the term is clamped at 0 (D's terms) or linear (G's).
    pub fn clamped(self) -> bool {
        self != HingeTerm::Generator
    }
}

/// A mean loss between two tensors of one shape (FastGAN's reconstruction loss): `L1` is
/// mean |a − b| (PyTorch's `F.l1_loss`), `Mse` mean (a − b)² (`F.mse_loss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairLoss {
    L1,
    Mse,
}

impl PairLoss {
    /// The kernel's code for it.
    pub fn code(self) -> i32 {
        match self {
            PairLoss::L1 => 0,
            PairLoss::Mse => 1,
        }
    }
}
