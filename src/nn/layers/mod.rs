//! The layers the presets need, each owning its tensors and knowing their PyTorch names.
//!
//! By what they do: [`conv`] (the convolutions and their init), [`norm`] (batch norms),
//! [`class_embedding`]; here the state-dict entries, [`Layer`] and [`Sequential`].

mod class_embedding;
mod conv;
mod norm;

pub use class_embedding::ClassEmbedding;
pub use conv::{Conv2d, ConvTranspose2d, SpectralNormConv2d, CONV_INIT_STD};
pub use norm::{is_class_parameter, BatchNorm2d, CondBatchNorm2d};

use super::{Ctx, Mode, Module};
use crate::backend::{Activation, BatchNormAct};
use crate::ops;
use crate::tensor::Tensor;
use anyhow::Result;
use std::cell::Cell;

/// One state-dict entry.
#[derive(Clone, Copy)]
pub enum StateRef<'a> {
    /// Trainable, f32.
    Param(&'a Tensor),
    /// Persistent, not trained, f32 (running stats, spectral norm's u and v).
    Buffer(&'a Tensor),
    /// An int64 scalar counter (`num_batches_tracked`, shape `[]` in PyTorch).
    Count(&'a Cell<i64>),
}

impl StateRef<'_> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            StateRef::Param(t) | StateRef::Buffer(t) => t.shape().to_vec(),
            StateRef::Count(_) => Vec::new(),
        }
    }
}

/// One entry of a [`Sequential`]; parameter-free modules keep their index like in PyTorch.
pub enum Layer {
    Conv(Conv2d),
    ConvT(ConvTranspose2d),
    SnConv(SpectralNormConv2d),
    Bn(BatchNorm2d),
    /// Class-conditional batch norm (conditional generators).
    CondBn(CondBatchNorm2d),
    Relu,
    LeakyRelu(f32),
    Tanh,
    /// Drop probability.
    Dropout(f32),
    /// Additive Gaussian noise whose std is changed during training (decay schedule).
    GaussianNoise(Cell<f32>),
    /// `nn.Upsample(scale_factor, mode="nearest")`.
    Upsample(usize),
    /// `nn.GLU(dim=1)`: halves the channels.
    Glu,
    /// `nn.AdaptiveAvgPool2d(side)`.
    AdaptivePool(usize),
    /// Kept apart from the fusable activations: nothing fuses a sigmoid yet.
    Sigmoid,
}

impl Layer {
    /// The activation this layer is, if it is one.
    fn activation(&self) -> Option<Activation> {
        match self {
            Layer::Relu => Some(Activation::Relu),
            Layer::LeakyRelu(s) => Some(Activation::LeakyRelu(*s)),
            Layer::Tanh => Some(Activation::Tanh),
            _ => None,
        }
    }

    /// This layer and the activation `next` as one op, where they fuse (the activation is then
    /// applied as the output is written: one pass over it fewer): batch norm with ReLU or
    /// LeakyReLU; a conv without bias with ReLU, LeakyReLU of slope >= 0 or Tanh (its backward
    /// reads the derivative off the output, see `ops::conv2d_act`). `None`: run them apart.
    fn forward_fused(&self, next: &Layer, x: &Tensor, ctx: &Ctx) -> Option<Result<Tensor>> {
        let act = next.activation()?;
        let conv_fuses = act.derivative_from_output();
        let (mode, numerics) = (ctx.mode, ctx.numerics);
        match self {
            Layer::Bn(bn) if BatchNormAct::fused(act).is_ok() => {
                Some(bn.forward_act(x, mode, act, ctx.sync_bn))
            }
            Layer::Conv(c) if c.bias.is_none() && conv_fuses => {
                Some(c.forward_act(x, act, numerics))
            }
            Layer::ConvT(c) if c.bias.is_none() && conv_fuses => {
                Some(c.forward_act(x, act, numerics))
            }
            Layer::SnConv(c) if conv_fuses => Some(c.forward_act(x, mode, act, numerics)),
            _ => None,
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let train = ctx.mode == Mode::Train;
        match self {
            Layer::Conv(c) => c.forward(x, ctx.numerics),
            Layer::ConvT(c) => c.forward(x, ctx.numerics),
            Layer::SnConv(c) => c.forward(x, ctx.mode, ctx.numerics),
            Layer::Bn(b) => b.forward(x, ctx.mode, ctx.sync_bn),
            Layer::CondBn(b) => {
                let labels = ctx.need_labels("class-conditional batch norm", x.shape()[0])?;
                b.forward(x, ctx.mode, labels, ctx.sync_bn)
            }
            Layer::Relu => ops::relu(x),
            Layer::LeakyRelu(s) => ops::leaky_relu(x, *s),
            Layer::Tanh => ops::tanh(x),
            // Dropout and the noise have no f16 form: amp's activations reach them as f32.
            Layer::Dropout(p) => {
                if !train {
                    return Ok(x.clone());
                }
                ops::dropout(&ops::to_f32(x)?, *p, ctx.seed(None)?, true)
            }
            Layer::GaussianNoise(std) => {
                if !train || std.get() == 0.0 {
                    return Ok(x.clone());
                }
                let seed = ctx.seed(Some(std.get()))?;
                ops::gaussian_noise(&ops::to_f32(x)?, std.get(), seed, true)
            }
            // The resampling ops and GLU are f32 only: amp's f16 activations are cast first.
            Layer::Upsample(scale) => ops::upsample_nearest2d(&ops::to_f32(x)?, *scale),
            Layer::Glu => ops::glu(&ops::to_f32(x)?),
            Layer::AdaptivePool(side) => ops::adaptive_avg_pool2d(&ops::to_f32(x)?, *side, *side),
            Layer::Sigmoid => ops::sigmoid(&ops::to_f32(x)?),
        }
    }
}

impl Module for Layer {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        match self {
            Layer::Conv(c) => {
                f(format!("{prefix}weight"), StateRef::Param(&c.weight));
                if let Some(b) = &c.bias {
                    f(format!("{prefix}bias"), StateRef::Param(b));
                }
            }
            Layer::ConvT(c) => {
                f(format!("{prefix}weight"), StateRef::Param(&c.weight));
                if let Some(b) = &c.bias {
                    f(format!("{prefix}bias"), StateRef::Param(b));
                }
            }
            Layer::SnConv(c) => {
                f(
                    format!("{prefix}weight_orig"),
                    StateRef::Param(&c.weight_orig),
                );
                f(format!("{prefix}weight_u"), StateRef::Buffer(&c.weight_u));
                f(format!("{prefix}weight_v"), StateRef::Buffer(&c.weight_v));
            }
            Layer::Bn(b) => {
                f(format!("{prefix}weight"), StateRef::Param(&b.weight));
                f(format!("{prefix}bias"), StateRef::Param(&b.bias));
                f(
                    format!("{prefix}running_mean"),
                    StateRef::Buffer(&b.running_mean),
                );
                f(
                    format!("{prefix}running_var"),
                    StateRef::Buffer(&b.running_var),
                );
                f(
                    format!("{prefix}num_batches_tracked"),
                    StateRef::Count(&b.num_batches_tracked),
                );
            }
            Layer::CondBn(b) => b.visit_state(prefix, f),
            Layer::Relu
            | Layer::LeakyRelu(_)
            | Layer::Tanh
            | Layer::Dropout(_)
            | Layer::GaussianNoise(_)
            | Layer::Upsample(_)
            | Layer::Glu
            | Layer::AdaptivePool(_)
            | Layer::Sigmoid => {}
        }
    }
}

/// `nn.Sequential`: children named by index.
#[derive(Default)]
pub struct Sequential {
    pub layers: Vec<Layer>,
}

impl Sequential {
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }

    pub fn push(&mut self, layer: Layer) {
        self.layers.push(layer);
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        forward_layers(&self.layers, x, ctx)
    }
}

/// Runs `layers` one after another, except that a batch norm or a conv followed by an
/// activation they fuse with runs as one op ([`Layer::forward_fused`]): same values, one pass
/// over the output fewer, and no pre-activation tensor kept for the backward.
pub fn forward_layers(layers: &[Layer], x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
    let mut h = x.clone();
    let mut i = 0;
    while i < layers.len() {
        let fused = layers
            .get(i + 1)
            .and_then(|next| layers[i].forward_fused(next, &h, ctx));
        if let Some(out) = fused {
            h = out?;
            i += 2;
        } else {
            h = layers[i].forward(&h, ctx)?;
            i += 1;
        }
    }
    Ok(h)
}

impl Module for Sequential {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_state(&format!("{prefix}{i}."), f);
        }
    }
}
