//! The layers the two presets need, each owning its tensors and knowing their PyTorch names.

use super::{Ctx, Mode, Module};
use crate::backend::{Activation, BatchNormAct, Device};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::Result;
use std::cell::Cell;

/// DCGAN's weight init: N(0, 0.02) for conv weights (pytorch/examples `weights_init`).
pub const CONV_INIT_STD: f32 = 0.02;

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

fn conv_weight(shape: [usize; 4], rng: &mut Rng, device: Device) -> Result<Tensor> {
    Ok(Tensor::randn(&shape, 0.0, CONV_INIT_STD, rng, device)?.requiring_grad())
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
            bias: if bias {
                Some(Tensor::zeros(&[c_out], device)?.requiring_grad())
            } else {
                None
            },
            stride,
            pad,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.pad)
    }

    /// `act(self.forward(x))` as one op, for a conv without bias (see [`Layer::forward_fused`]).
    fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        ops::conv2d_act(x, &self.weight, act, self.stride, self.pad)
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
            bias: if bias {
                Some(Tensor::zeros(&[c_out], device)?.requiring_grad())
            } else {
                None
            },
            stride,
            pad,
            output_padding: 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv_transpose2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.pad,
            self.output_padding,
        )
    }

    /// `act(self.forward(x))` as one op, for a conv without bias (see [`Layer::forward_fused`]).
    fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (s, p, op) = (self.stride, self.pad, self.output_padding);
        ops::conv_transpose2d_act(x, &self.weight, act, s, p, op)
    }
}

/// `nn.BatchNorm2d(c)` (momentum 0.1, eps 1e-5) with DCGAN's init: weight N(1, 0.02), bias 0.
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Cell<i64>,
    pub momentum: f32,
    pub eps: f32,
}

impl BatchNorm2d {
    pub fn new(c: usize, rng: &mut Rng, device: Device) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: Tensor::randn(&[c], 1.0, CONV_INIT_STD, rng, device)?.requiring_grad(),
            bias: Tensor::zeros(&[c], device)?.requiring_grad(),
            running_mean: Tensor::zeros(&[c], device)?,
            running_var: Tensor::full(&[c], 1.0, device)?,
            num_batches_tracked: Cell::new(0),
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.run(mode, |rm, rv, training| {
            ops::batch_norm2d(
                x,
                &self.weight,
                &self.bias,
                rm,
                rv,
                training,
                self.momentum,
                self.eps,
            )
        })
    }

    /// `act(self.forward(x, mode))` for ReLU or LeakyReLU, as one fused op.
    pub fn forward_act(&self, x: &Tensor, mode: Mode, act: Activation) -> Result<Tensor> {
        self.run(mode, |rm, rv, training| {
            ops::batch_norm2d_act(
                x,
                &self.weight,
                &self.bias,
                rm,
                rv,
                training,
                self.momentum,
                self.eps,
                act,
            )
        })
    }

    /// Calls `op(running_mean, running_var, training)` as `mode` needs.
    fn run(
        &self,
        mode: Mode,
        op: impl FnOnce(&Tensor, &Tensor, bool) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match mode {
            Mode::Train => {
                self.num_batches_tracked
                    .set(self.num_batches_tracked.get() + 1);
                op(&self.running_mean, &self.running_var, true)
            }
            Mode::Eval => op(&self.running_mean, &self.running_var, false),
            Mode::BatchStats => {
                // Training-mode normalisation writes the running stats in place; hand it
                // throw-away copies so the real ones stay untouched.
                let rm = scratch_copy(&self.running_mean)?;
                let rv = scratch_copy(&self.running_var)?;
                op(&rm, &rv, true)
            }
        }
    }
}

/// A new tensor (own storage, no graph) holding a copy of `t`'s values.
fn scratch_copy(t: &Tensor) -> Result<Tensor> {
    let s = t.backend().copy(&t.storage())?;
    Tensor::from_storage(s, t.shape())
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
fn random_unit(n: usize, rng: &mut Rng, device: Device) -> Result<Tensor> {
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

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        ops::conv2d(x, &self.weight(mode)?, None, self.stride, self.pad)
    }

    /// `act(self.forward(x, mode))` as one op (see [`Layer::forward_fused`]).
    fn forward_act(&self, x: &Tensor, mode: Mode, act: Activation) -> Result<Tensor> {
        ops::conv2d_act(x, &self.weight(mode)?, act, self.stride, self.pad)
    }
}

/// One entry of a [`Sequential`]; parameter-free modules keep their index like in PyTorch.
pub enum Layer {
    Conv(Conv2d),
    ConvT(ConvTranspose2d),
    SnConv(SpectralNormConv2d),
    Bn(BatchNorm2d),
    /// Class-conditional batch norm (conditional generators, issue 13).
    CondBn(CondBatchNorm2d),
    Relu,
    LeakyRelu(f32),
    Tanh,
    /// Drop probability.
    Dropout(f32),
    /// Additive Gaussian noise whose std is changed during training (decay schedule).
    GaussianNoise(Cell<f32>),
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
    fn forward_fused(&self, next: &Layer, x: &Tensor, mode: Mode) -> Option<Result<Tensor>> {
        let act = next.activation()?;
        let conv_fuses = act.derivative_from_output();
        match self {
            Layer::Bn(bn) if BatchNormAct::fused(act).is_ok() => Some(bn.forward_act(x, mode, act)),
            Layer::Conv(c) if c.bias.is_none() && conv_fuses => Some(c.forward_act(x, act)),
            Layer::ConvT(c) if c.bias.is_none() && conv_fuses => Some(c.forward_act(x, act)),
            Layer::SnConv(c) if conv_fuses => Some(c.forward_act(x, mode, act)),
            _ => None,
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let train = ctx.mode == Mode::Train;
        match self {
            Layer::Conv(c) => c.forward(x),
            Layer::ConvT(c) => c.forward(x),
            Layer::SnConv(c) => c.forward(x, ctx.mode),
            Layer::Bn(b) => b.forward(x, ctx.mode),
            Layer::CondBn(b) => {
                let labels = ctx.need_labels("class-conditional batch norm", x.shape()[0])?;
                b.forward(x, ctx.mode, labels)
            }
            Layer::Relu => ops::relu(x),
            Layer::LeakyRelu(s) => ops::leaky_relu(x, *s),
            Layer::Tanh => ops::tanh(x),
            Layer::Dropout(p) => {
                if !train {
                    return Ok(x.clone());
                }
                ops::dropout(x, *p, ctx.seed(None)?, true)
            }
            Layer::GaussianNoise(std) => {
                if !train || std.get() == 0.0 {
                    return Ok(x.clone());
                }
                ops::gaussian_noise(x, std.get(), ctx.seed(Some(std.get()))?, true)
            }
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
            | Layer::GaussianNoise(_) => {}
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
            .and_then(|next| layers[i].forward_fused(next, &h, ctx.mode));
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

/// Class-conditional batch norm (de Vries et al. 2017, Miyato & Koyama 2018): the batch is
/// normalised like `BatchNorm2d` without its affine, then each image gets its class's gain and
/// bias, rows of two embedding tables `[classes, c]` (`gain.weight`, init N(1, 0.02) as DCGAN's
/// BN weight; `bias.weight`, init 0). Running statistics are shared by all classes.
pub struct CondBatchNorm2d {
    pub gain: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Cell<i64>,
    pub momentum: f32,
    pub eps: f32,
    /// Constant 1 and 0 `[c]`: the plain normalisation's affine (not parameters).
    ones: Tensor,
    zeros: Tensor,
}

impl CondBatchNorm2d {
    pub fn new(c: usize, classes: usize, rng: &mut Rng, device: Device) -> Result<Self> {
        Ok(CondBatchNorm2d {
            gain: Tensor::randn(&[classes, c], 1.0, CONV_INIT_STD, rng, device)?.requiring_grad(),
            bias: Tensor::zeros(&[classes, c], device)?.requiring_grad(),
            running_mean: Tensor::zeros(&[c], device)?,
            running_var: Tensor::full(&[c], 1.0, device)?,
            num_batches_tracked: Cell::new(0),
            momentum: 0.1,
            eps: 1e-5,
            ones: Tensor::full(&[c], 1.0, device)?,
            zeros: Tensor::zeros(&[c], device)?,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode, labels: ops::Labels) -> Result<Tensor> {
        let xhat = match mode {
            Mode::Train => {
                self.num_batches_tracked
                    .set(self.num_batches_tracked.get() + 1);
                ops::batch_norm2d(
                    x,
                    &self.ones,
                    &self.zeros,
                    &self.running_mean,
                    &self.running_var,
                    true,
                    self.momentum,
                    self.eps,
                )?
            }
            Mode::Eval => ops::batch_norm2d(
                x,
                &self.ones,
                &self.zeros,
                &self.running_mean,
                &self.running_var,
                false,
                self.momentum,
                self.eps,
            )?,
            Mode::BatchStats => {
                let rm = scratch_copy(&self.running_mean)?;
                let rv = scratch_copy(&self.running_var)?;
                ops::batch_norm2d(
                    x,
                    &self.ones,
                    &self.zeros,
                    &rm,
                    &rv,
                    true,
                    self.momentum,
                    self.eps,
                )?
            }
        };
        let gain = ops::embedding(&self.gain, labels)?;
        let bias = ops::embedding(&self.bias, labels)?;
        ops::channel_affine(&xhat, &gain, &bias)
    }
}

impl Module for CondBatchNorm2d {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        f(format!("{prefix}gain.weight"), StateRef::Param(&self.gain));
        f(format!("{prefix}bias.weight"), StateRef::Param(&self.bias));
        f(
            format!("{prefix}running_mean"),
            StateRef::Buffer(&self.running_mean),
        );
        f(
            format!("{prefix}running_var"),
            StateRef::Buffer(&self.running_var),
        );
        f(
            format!("{prefix}num_batches_tracked"),
            StateRef::Count(&self.num_batches_tracked),
        );
    }
}

/// The projection discriminator's class embedding (Miyato & Koyama 2018): `[classes, c]`,
/// init N(0, 0.02); spectral-normalised (`weight_orig`, `weight_u` `[classes]`, `weight_v`
/// `[c]`) in a spectral-norm discriminator, as in their SNGAN projection model.
pub enum ClassEmbedding {
    Plain(Tensor),
    Spectral {
        weight_orig: Tensor,
        weight_u: Tensor,
        weight_v: Tensor,
    },
}

impl ClassEmbedding {
    pub fn new(
        classes: usize,
        c: usize,
        spectral: bool,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Self> {
        let w = Tensor::randn(&[classes, c], 0.0, CONV_INIT_STD, rng, device)?.requiring_grad();
        Ok(if spectral {
            ClassEmbedding::Spectral {
                weight_orig: w,
                weight_u: random_unit(classes, rng, device)?,
                weight_v: random_unit(c, rng, device)?,
            }
        } else {
            ClassEmbedding::Plain(w)
        })
    }

    /// The rows of `labels`: `[B, c]`.
    pub fn lookup(&self, labels: ops::Labels, mode: Mode) -> Result<Tensor> {
        match self {
            ClassEmbedding::Plain(w) => ops::embedding(w, labels),
            ClassEmbedding::Spectral {
                weight_orig,
                weight_u,
                weight_v,
            } => {
                let w = ops::spectral_norm_weight(
                    weight_orig,
                    weight_u,
                    weight_v,
                    weight_orig.shape()[0],
                    mode == Mode::Train,
                    1e-12,
                )?;
                ops::embedding(&w, labels)
            }
        }
    }
}

impl Module for ClassEmbedding {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        match self {
            ClassEmbedding::Plain(w) => f(format!("{prefix}weight"), StateRef::Param(w)),
            ClassEmbedding::Spectral {
                weight_orig,
                weight_u,
                weight_v,
            } => {
                f(format!("{prefix}weight_orig"), StateRef::Param(weight_orig));
                f(format!("{prefix}weight_u"), StateRef::Buffer(weight_u));
                f(format!("{prefix}weight_v"), StateRef::Buffer(weight_v));
            }
        }
    }
}
