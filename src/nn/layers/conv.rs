//! The convolution layers: `Conv2d`, `ConvTranspose2d` and the spectral-normalised conv, with
//! DCGAN's weight init. Each forward runs with the pass's [`Numerics`].

use super::super::Mode;
use crate::amp::Numerics;
use crate::backend::{Activation, Device};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::Result;

/// DCGAN's weight init: N(0, 0.02) for conv weights (pytorch/examples `weights_init`).
pub const CONV_INIT_STD: f32 = 0.02;

fn conv_weight(shape: [usize; 4], rng: &mut Rng, device: Device) -> Result<Tensor> {
    Ok(Tensor::randn(&shape, 0.0, CONV_INIT_STD, rng, device)?.requiring_grad())
}

/// A conv's bias parameter (zeros, `[c_out]`) when it has one.
fn conv_bias(bias: bool, c_out: usize, device: Device) -> Result<Option<Tensor>> {
    bias.then(|| Ok(Tensor::zeros(&[c_out], device)?.requiring_grad()))
        .transpose()
}

/// `nn.Conv2d(c_in, c_out, k, stride, pad, bias=...)`.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Self> {
        Ok(Conv2d {
            weight: conv_weight([c_out, c_in, k, k], rng, device)?,
            bias: conv_bias(bias, c_out, device)?,
            stride,
            pad,
        })
    }

    pub fn forward(&self, x: &Tensor, numerics: Numerics) -> Result<Tensor> {
        let (s, p) = (self.stride, self.pad);
        ops::conv2d(x, &self.weight, self.bias.as_ref(), s, p, numerics)
    }

    /// `act(self.forward(x))` as one op, for a conv without bias (see
    /// [`super::Layer::forward_fused`]).
    pub(super) fn forward_act(
        &self,
        x: &Tensor,
        act: Activation,
        numerics: Numerics,
    ) -> Result<Tensor> {
        ops::conv2d_act(x, &self.weight, act, self.stride, self.pad, numerics)
    }
}

/// `nn.ConvTranspose2d(c_in, c_out, k, stride, pad, bias=...)`, weight `[c_in, c_out, k, k]`.
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub pad: usize,
    pub output_padding: usize,
}

impl ConvTranspose2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Self> {
        Ok(ConvTranspose2d {
            weight: conv_weight([c_in, c_out, k, k], rng, device)?,
            bias: conv_bias(bias, c_out, device)?,
            stride,
            pad,
            output_padding: 0,
        })
    }

    pub fn forward(&self, x: &Tensor, numerics: Numerics) -> Result<Tensor> {
        let (s, p, op) = (self.stride, self.pad, self.output_padding);
        ops::conv_transpose2d(x, &self.weight, self.bias.as_ref(), s, p, op, numerics)
    }

    /// `act(self.forward(x))` as one op, for a conv without bias (see
    /// [`super::Layer::forward_fused`]).
    pub(super) fn forward_act(
        &self,
        x: &Tensor,
        act: Activation,
        numerics: Numerics,
    ) -> Result<Tensor> {
        let (s, p, op) = (self.stride, self.pad, self.output_padding);
        ops::conv_transpose2d_act(x, &self.weight, act, s, p, op, numerics)
    }
}

/// `torch.nn.utils.spectral_norm(nn.Conv2d(...))`: trainable `weight_orig`, persistent `u`
/// (`[c_out]`) and `v` (`[c_in·k·k]`), one power iteration per training forward, eps 1e-12.
pub struct SpectralNormConv2d {
    pub weight_orig: Tensor,
    pub weight_u: Tensor,
    pub weight_v: Tensor,
    pub stride: usize,
    pub pad: usize,
}

/// A random unit vector, as PyTorch initialises u and v (`normalize(randn(n))`).
pub(super) fn random_unit(n: usize, rng: &mut Rng, device: Device) -> Result<Tensor> {
    let mut v = rng.normal_vec(n, 0.0, 1.0);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    Tensor::from_vec(v, &[n], device)
}

impl SpectralNormConv2d {
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Self> {
        Ok(SpectralNormConv2d {
            weight_orig: conv_weight([c_out, c_in, k, k], rng, device)?,
            weight_u: random_unit(c_out, rng, device)?,
            weight_v: random_unit(c_in * k * k, rng, device)?,
            stride,
            pad,
        })
    }

    /// The normalised weight (moving `u` and `v` in training).
    fn weight(&self, mode: Mode) -> Result<Tensor> {
        let rows = self.weight_orig.shape()[0];
        ops::spectral_norm_weight(
            &self.weight_orig,
            &self.weight_u,
            &self.weight_v,
            rows,
            mode == Mode::Train,
            1e-12,
        )
    }

    pub fn forward(&self, x: &Tensor, mode: Mode, numerics: Numerics) -> Result<Tensor> {
        ops::conv2d(
            x,
            &self.weight(mode)?,
            None,
            self.stride,
            self.pad,
            numerics,
        )
    }

    /// `act(self.forward(x, mode))` as one op (see [`super::Layer::forward_fused`]).
    pub(super) fn forward_act(
        &self,
        x: &Tensor,
        mode: Mode,
        act: Activation,
        numerics: Numerics,
    ) -> Result<Tensor> {
        let w = self.weight(mode)?;
        ops::conv2d_act(x, &w, act, self.stride, self.pad, numerics)
    }
}
