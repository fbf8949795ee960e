//! Mixed precision (`--precision`): which precision a run trains in, the
//! [`Numerics`] every forward pass is given (precision and convolution implementation, passed
//! down explicitly to the ops), and the dynamic loss scaler of each optimiser.
//!
//! Under amp, as under PyTorch autocast, the activations between layers are f16 tensors: each
//! convolution gives an f16 output (`crate::backend::conv` says where it rounds), batch norm
//! and the activations take f16 and give f16 (f32 statistics and arithmetic inside, rounded on
//! store), and so do their gradients. Master weights, Adam's moments, batch norm's running
//! statistics, the loss and the loss scale stay f32; so do the images a generator gives and the
//! logits a discriminator gives (`crate::nn::models`), and the ops that have no f16 form
//! (dropout, input noise, the conditional layers) get f32 (`crate::nn::layers`).
//!
//! **Loss scaling** follows PyTorch's `GradScaler` defaults (initial scale 2^16, ×0.5 and the
//! step skipped when a gradient holds inf/NaN, ×2 after 2000 clean steps) with **one scaler
//! per optimiser** (D and G), as PyTorch's DCGAN AMP recipe does with `scaler_d`/`scaler_g`:
//! D and G are stepped separately (and D `--d-steps` times per G step), their gradients have
//! different magnitudes, and a G overflow must not shrink D's scale or skip D's step. The
//! backward pass is seeded with the scale (the same as back-propagating `loss × scale`), and
//! the check, the skip and the update happen on the device
//! ([`crate::backend::Backend::adam_update_scaled`]): nothing is read back per step.

use crate::backend::{backend, loss_scale, ConvGeom, ConvImpl, Device};
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The precision a run trains in (the resolved `--precision`, recorded in `config.json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (runs from before `--precision` are this).
    #[default]
    Fp32,
    /// Convolution GEMMs on f16 operands with f32 accumulation, dynamic loss scaling.
    Amp,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Amp => "amp",
        })
    }
}

/// `--precision` as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Amp,
    /// amp on CUDA devices of compute capability 7.0 or more (tensor cores), else fp32.
    Auto,
}

/// Compute capability from which `auto` picks amp (Volta's tensor cores).
pub const AMP_MIN_COMPUTE_CAPABILITY: (i32, i32) = (7, 0);

/// What `arg` means on `device` (`auto` asks the GPU its compute capability).
pub fn resolve(arg: PrecisionArg, device: Device) -> Result<Precision> {
    Ok(match (arg, device) {
        (PrecisionArg::Fp32, _) => Precision::Fp32,
        (PrecisionArg::Amp, _) => Precision::Amp,
        (PrecisionArg::Auto, Device::Cpu) => Precision::Fp32,
        (PrecisionArg::Auto, Device::Cuda(i)) => {
            if crate::backend::cuda::compute_capability(i)? >= AMP_MIN_COMPUTE_CAPABILITY {
                Precision::Amp
            } else {
                Precision::Fp32
            }
        }
    })
}

/// How a model's arithmetic is done: chosen once per run or tool from its flags, carried by
/// [`crate::nn::Ctx`] into every forward and by each convolution's [`ConvGeom`] into its
/// backend and its backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numerics {
    /// Under `Amp` convolutions multiply f16 operands and give f16 activations (see
    /// `backend/conv.rs`).
    pub precision: Precision,
    /// Which implementation runs convolutions on a CUDA device (`--conv-impl`).
    pub conv_impl: ConvImpl,
}

impl Numerics {
    /// f32 throughout, cuDNN convolutions on CUDA (the default `--conv-impl`).
    pub const FP32: Numerics = Numerics::new(Precision::Fp32, ConvImpl::Cudnn);

    pub const fn new(precision: Precision, conv_impl: ConvImpl) -> Self {
        Numerics {
            precision,
            conv_impl,
        }
    }

    /// The same numerics in f32 (evaluation, sampling: only training steps use amp).
    pub fn fp32(self) -> Self {
        Numerics::new(Precision::Fp32, self.conv_impl)
    }

    /// The same numerics with convolutions by `conv_impl` on CUDA.
    pub fn with_conv_impl(self, conv_impl: ConvImpl) -> Self {
        Numerics { conv_impl, ..self }
    }

    /// `g` as a convolution runs under these numerics.
    pub fn conv(self, g: ConvGeom) -> ConvGeom {
        ConvGeom {
            f16_operands: self.precision == Precision::Amp,
            conv_impl: self.conv_impl,
            ..g
        }
    }
}

/// One optimiser's dynamic loss scale and counters, on its parameters' device (the layout of
/// [`loss_scale`]). Saved in the optimiser's checkpoint file.
pub struct LossScaler {
    /// `[1]`: the current scale.
    pub scale: Tensor,
    /// `[loss_scale::COUNTERS]`.
    pub counters: Tensor,
}

/// What a scaler's state says, read back (epoch ends, tests).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerReading {
    pub scale: f32,
    pub skipped: u64,
    pub applied: u64,
}

impl LossScaler {
    pub fn new(device: Device) -> Result<Self> {
        Ok(LossScaler {
            scale: Tensor::full(&[1], loss_scale::INIT_SCALE, device)?,
            counters: Tensor::zeros(&[loss_scale::COUNTERS], device)?,
        })
    }

    /// Back-propagates `loss × scale` (the seed gradient is the scale, on the device).
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        if loss.device() != self.scale.device() {
            bail!(
                "loss on {} but its loss scaler on {}",
                loss.device(),
                self.scale.device()
            );
        }
        let be = backend(loss.device())?;
        let ones = be.full(loss.numel(), 1.0)?;
        let seed = be.scale_by_scalar(&ones, &self.scale.storage(), 1.0)?;
        loss.backward_with(seed)
    }

    /// Reads the state back (one download each: not for every step).
    pub fn read(&self) -> Result<ScalerReading> {
        let c = self.counters.to_vec()?;
        Ok(ScalerReading {
            scale: self.scale.item()?,
            skipped: c[loss_scale::SKIPPED] as u64,
            applied: c[loss_scale::APPLIED] as u64,
        })
    }

    /// Named tensors for the optimiser's checkpoint file.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("amp.loss_scale".to_string(), self.scale.clone()),
            ("amp.loss_scale_counters".to_string(), self.counters.clone()),
        ]
    }
}
