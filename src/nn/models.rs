//! The model presets (the lightweight one's networks: [`super::lightweight`]).
//!
//! * `dcgan`: pytorch/examples `dcgan/main.py`, names and shapes included, so its weights load
//!   there. At 64 px it is that network exactly; 32 px drops one stride-2 stage and 128 px
//!   adds one (the widths keep doubling: G starts at `ngf·2^(stages-1)`).
//! * `classical`: seed 001 (see README): a two-stage generator (`initial.*` and `detail.*`,
//!   separate Adam groups) and a spectral-normalised discriminator with input noise and
//!   dropout, a 5×5 logit map and global average pooling.
//! * `lightweight`: a FastGAN-class pair for small collections (see [`super::lightweight`]).

use super::layers::{
    forward_layers, BatchNorm2d, ClassEmbedding, CondBatchNorm2d, Conv2d, ConvTranspose2d, Layer,
    Sequential, SpectralNormConv2d, StateRef,
};
use super::lightweight::{self, LightDiscriminator, LightGenerator, QuarterWeights};
use super::{Ctx, Module};
use crate::backend::Device;
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// pytorch/examples DCGAN (nz 100, 64 px, ngf = ndf = 64 at full size).
    Dcgan,
    /// Seed 001: two-stage G, spectral-norm D with noise and dropout (nz 128, 128 px).
    Classical,
    /// Seed 000's DCGAN variant: batch norm on D's first layer too (nz 128, 64 px, batch 128).
    #[serde(rename = "dcgan-kaggle")]
    #[value(name = "dcgan-kaggle")]
    DcganKaggle,
    /// FastGAN-class (skip-layer excitation, self-supervised D; nz 256, 64 px; --full 256 px
    /// and ngf = ndf = 64).
    Lightweight,
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Dcgan => "dcgan",
            Preset::Classical => "classical",
            Preset::DcganKaggle => "dcgan-kaggle",
            Preset::Lightweight => "lightweight",
        })
    }
}

/// Leaky ReLU slope of both discriminators.
pub const LEAKY_SLOPE: f32 = 0.2;
/// Dropout after each hidden conv of the classical discriminator (seed 001 does not publish it).
pub const CLASSICAL_DROPOUT: f32 = 0.3;
/// Initial std of the classical discriminator's input noise (decayed to 0 over training).
pub const CLASSICAL_NOISE_STD: f32 = 0.1;
/// Number of hidden generator layers in the classical "initial" stage (the 1024 and 512 layers
/// at full size).
pub const CLASSICAL_INITIAL_LAYERS: usize = 2;

/// The architecture of a G/D pair: everything needed to rebuild it from a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub preset: Preset,
    pub image_size: usize,
    pub nz: usize,
    pub ngf: usize,
    pub ndf: usize,
}

impl ModelConfig {
    /// The preset at its published size.
    pub fn full(preset: Preset) -> Self {
        match preset {
            Preset::Dcgan => ModelConfig {
                preset,
                image_size: 64,
                nz: 100,
                ngf: 64,
                ndf: 64,
            },
            Preset::Classical => ModelConfig {
                preset,
                image_size: 128,
                nz: 128,
                ngf: 64,
                ndf: 64,
            },
            Preset::DcganKaggle => ModelConfig {
                preset,
                image_size: 64,
                nz: 128,
                ngf: 64,
                ndf: 64,
            },
            Preset::Lightweight => ModelConfig {
                preset,
                image_size: 256,
                nz: 256,
                ngf: 64,
                ndf: 64,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.preset == Preset::Lightweight {
            if !lightweight::SIZES.contains(&self.image_size) {
                bail!(
                    "image size {} is not supported by the lightweight preset: use 64, 128 or 256",
                    self.image_size
                );
            }
        } else if ![32, 64, 128].contains(&self.image_size) {
            bail!(
                "image size {} is not supported: use 32, 64 or 128 (256: --preset lightweight)",
                self.image_size
            );
        }
        for (name, v) in [("nz", self.nz), ("ngf", self.ngf), ("ndf", self.ndf)] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        Ok(())
    }

    /// Hidden generator layers = stride-2 stages before the output layer: 4 px after the
    /// first ConvT, doubled by each of these and by the output layer.
    pub fn g_hidden_layers(&self) -> usize {
        log2(self.image_size) - 2
    }

    /// Generator widths, widest first: `ngf·2^(n-1) … ngf`.
    pub fn g_widths(&self) -> Vec<usize> {
        let n = self.g_hidden_layers();
        (0..n).map(|i| self.ngf << (n - 1 - i)).collect()
    }

    /// Discriminator widths of the stride-2 convs: `ndf … ndf·2^(n-1)`. DCGAN halves down to
    /// 4×4 (log2(size) − 2 convs); classical stops at 8×8 (one fewer) so that its final k4
    /// conv gives the seed's 5×5 map at every size.
    pub fn d_widths(&self) -> Vec<usize> {
        let n = match self.preset {
            Preset::Dcgan | Preset::DcganKaggle => log2(self.image_size) - 2,
            Preset::Classical | Preset::Lightweight => log2(self.image_size) - 3,
        };
        (0..n).map(|i| self.ndf << i).collect()
    }
}

fn log2(n: usize) -> usize {
    n.trailing_zeros() as usize
}

/// Generator: latents `[B, nz, 1, 1]` → images `[B, 3, S, S]` in [-1, 1].
pub struct Generator {
    pub config: ModelConfig,
    /// Classes of a conditional generator (class-conditional batch norm in every hidden
    /// layer); 0 = unconditional.
    pub classes: usize,
    /// The class a conditional generator paints when a forward pass brings no labels (set by
    /// `sample`/`interpolate`/`project --class`).
    pub fixed_class: Cell<Option<u32>>,
    pub body: GeneratorBody,
}

/// The layers of a generator, by architecture.
pub enum GeneratorBody {
    /// Named stages: `main` for dcgan; `initial` and `detail` for classical (each its own Adam
    /// group).
    Stages(Vec<(String, Sequential)>),
    /// The lightweight preset's network (one Adam group, `main`; names without a prefix).
    Lightweight(LightGenerator),
}

fn g_block(
    seq: &mut Sequential,
    conv: ConvTranspose2d,
    classes: usize,
    rng: &mut Rng,
    dev: Device,
) -> Result<()> {
    let c = conv.weight.shape()[1];
    seq.push(Layer::ConvT(conv));
    if classes > 0 {
        seq.push(Layer::CondBn(CondBatchNorm2d::new(c, classes, rng, dev)?));
    } else {
        seq.push(Layer::Bn(BatchNorm2d::new(c, rng, dev)?));
    }
    seq.push(Layer::Relu);
    Ok(())
}

impl Generator {
    pub fn new(config: &ModelConfig, rng: &mut Rng, device: Device) -> Result<Self> {
        Self::conditional(config, 0, rng, device)
    }

    /// A generator for `classes` classes (0: unconditional, exactly [`Generator::new`]): each
    /// hidden BatchNorm becomes a class-conditional one; the rest is unchanged.
    pub fn conditional(
        config: &ModelConfig,
        classes: usize,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Self> {
        config.validate()?;
        if config.preset == Preset::Lightweight {
            let c = config;
            let net = LightGenerator::new(c.image_size, c.nz, c.ngf, classes, rng, device)?;
            return Ok(Generator {
                config: config.clone(),
                classes,
                fixed_class: Cell::new(None),
                body: GeneratorBody::Lightweight(net),
            });
        }
        let widths = config.g_widths();
        // Hidden layers: ConvT-BN-ReLU, the first from the 1×1 latent to 4×4.
        let mut hidden = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            let conv = if i == 0 {
                ConvTranspose2d::new(config.nz, w, 4, 1, 0, false, rng, device)?
            } else {
                ConvTranspose2d::new(widths[i - 1], w, 4, 2, 1, false, rng, device)?
            };
            hidden.push(conv);
        }
        let last = ConvTranspose2d::new(widths[widths.len() - 1], 3, 4, 2, 1, false, rng, device)?;
        let split = match config.preset {
            Preset::Dcgan | Preset::DcganKaggle => hidden.len(),
            _ => CLASSICAL_INITIAL_LAYERS.min(hidden.len()),
        };
        let mut first = Sequential::new();
        let mut second = Sequential::new();
        for (i, conv) in hidden.into_iter().enumerate() {
            let seq = if i < split { &mut first } else { &mut second };
            g_block(seq, conv, classes, rng, device)?;
        }
        let out_seq = match config.preset {
            Preset::Dcgan | Preset::DcganKaggle => &mut first,
            _ => &mut second,
        };
        out_seq.push(Layer::ConvT(last));
        out_seq.push(Layer::Tanh);
        let stages = match config.preset {
            Preset::Dcgan | Preset::DcganKaggle => vec![("main".to_string(), first)],
            _ => vec![
                ("initial".to_string(), first),
                ("detail".to_string(), second),
            ],
        };
        Ok(Generator {
            config: config.clone(),
            classes,
            fixed_class: Cell::new(None),
            body: GeneratorBody::Stages(stages),
        })
    }

    pub fn forward(&self, z: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let nz = self.config.nz;
        let z = match *z.shape() {
            [_, c, 1, 1] if c == nz => z.clone(),
            [b, c] if c == nz => z.reshape(&[b, nz, 1, 1])?,
            ref s => bail!("generator: latents of shape {s:?}, expected [B, {nz}, 1, 1]"),
        };
        if let (true, None, Some(k)) = (self.classes > 0, ctx.labels, self.fixed_class.get()) {
            let labels = vec![k; z.shape()[0]];
            let mut inner = Ctx::new(ctx.mode, &mut *ctx.rng, ctx.numerics)
                .labeled(Some(&labels))
                .in_part(ctx.part)
                .syncing_bn(ctx.sync_bn);
            return self.forward_stages(z, &mut inner);
        }
        self.forward_stages(z, ctx)
    }

    /// The images, f32 also under amp (whose last activation is f16): what D, DiffAugment,
    /// the grids and the samples read.
    fn forward_stages(&self, z: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = match &self.body {
            GeneratorBody::Stages(stages) => {
                let mut h = z;
                for (_, seq) in stages {
                    h = seq.forward(&h, ctx)?;
                }
                h
            }
            GeneratorBody::Lightweight(net) => net.forward(&z, ctx)?,
        };
        ops::to_f32(&h)
    }

    /// Parameters by Adam group: `(stage name, [(full name, tensor)])`.
    pub fn param_groups(&self) -> Vec<(String, Vec<(String, Tensor)>)> {
        let stages = match &self.body {
            GeneratorBody::Stages(stages) => stages,
            GeneratorBody::Lightweight(net) => return vec![("main".into(), net.parameters())],
        };
        stages
            .iter()
            .map(|(name, seq)| {
                let params = seq
                    .parameters()
                    .into_iter()
                    .map(|(n, t)| (format!("{name}.{n}"), t))
                    .collect();
                (name.clone(), params)
            })
            .collect()
    }
}

impl Module for Generator {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        match &self.body {
            GeneratorBody::Stages(stages) => {
                for (name, seq) in stages {
                    seq.visit_state(&format!("{prefix}{name}."), f);
                }
            }
            GeneratorBody::Lightweight(net) => net.visit_state(prefix, f),
        }
    }
}

/// Discriminator: images `[B, 3, S, S]` → one logit per image `[B]` (the sigmoid lives in the
/// fused loss; pytorch/examples' final `Sigmoid` has no state, so names still match).
pub struct Discriminator {
    pub config: ModelConfig,
    pub body: DiscriminatorBody,
    /// Projection discriminator (Miyato & Koyama 2018), conditional runs only:
    /// `logit = psi(phi(x)) + <embed(y), phi(x)>` with phi(x) = the last hidden feature map
    /// summed over its pixels (`[B, C]`) and psi = the unconditional head (`main`'s last conv,
    /// averaged). State-dict name `embed.*`.
    pub embed: Option<ClassEmbedding>,
}

/// The layers of a discriminator, by architecture.
pub enum DiscriminatorBody {
    /// dcgan and classical: one `nn.Sequential`, state-dict prefix `main.`.
    Plain(Sequential),
    /// The lightweight preset's network, with its reconstruction decoders (no prefix).
    Lightweight(LightDiscriminator),
}

impl Discriminator {
    pub fn new(config: &ModelConfig, rng: &mut Rng, device: Device) -> Result<Self> {
        Self::conditional(config, 0, rng, device)
    }

    /// A projection discriminator for `classes` classes (0: exactly [`Discriminator::new`]).
    /// The class embedding is drawn after every other weight, so the shared layers start from
    /// the same values as the unconditional model's.
    pub fn conditional(
        config: &ModelConfig,
        classes: usize,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Self> {
        config.validate()?;
        if config.preset == Preset::Lightweight {
            let net = LightDiscriminator::new(config.image_size, config.ndf, rng, device)?;
            let embed = (classes > 0)
                .then(|| {
                    let c = net.feature_channels(config.ndf);
                    ClassEmbedding::new(classes, c, true, rng, device)
                })
                .transpose()?;
            return Ok(Discriminator {
                config: config.clone(),
                body: DiscriminatorBody::Lightweight(net),
                embed,
            });
        }
        let widths = config.d_widths();
        let mut main = Sequential::new();
        let mut c_in = 3;
        match config.preset {
            Preset::Dcgan | Preset::DcganKaggle => {
                for (i, &w) in widths.iter().enumerate() {
                    main.push(Layer::Conv(Conv2d::new(
                        c_in, w, 4, 2, 1, false, rng, device,
                    )?));
                    // pytorch/examples: no BN on the first layer; seed 000 has one there.
                    if i > 0 || config.preset == Preset::DcganKaggle {
                        main.push(Layer::Bn(BatchNorm2d::new(w, rng, device)?));
                    }
                    main.push(Layer::LeakyRelu(LEAKY_SLOPE));
                    c_in = w;
                }
                main.push(Layer::Conv(Conv2d::new(
                    c_in, 1, 4, 1, 0, false, rng, device,
                )?));
            }
            _ => {
                main.push(Layer::GaussianNoise(Cell::new(CLASSICAL_NOISE_STD)));
                for &w in &widths {
                    main.push(Layer::SnConv(SpectralNormConv2d::new(
                        c_in, w, 4, 2, 1, rng, device,
                    )?));
                    main.push(Layer::LeakyRelu(LEAKY_SLOPE));
                    main.push(Layer::Dropout(CLASSICAL_DROPOUT));
                    c_in = w;
                }
                // The final conv is spectral-normalised too (as in SN-GAN): the seed lists
                // "spectral normalized Conv2d layers" without exception, and an unnormalised
                // last layer would undo the Lipschitz bound of the others.
                main.push(Layer::SnConv(SpectralNormConv2d::new(
                    c_in, 1, 4, 1, 0, rng, device,
                )?));
            }
        }
        let embed = if classes > 0 {
            let spectral = config.preset == Preset::Classical;
            Some(ClassEmbedding::new(classes, c_in, spectral, rng, device)?)
        } else {
            None
        };
        Ok(Discriminator {
            config: config.clone(),
            body: DiscriminatorBody::Plain(main),
            embed,
        })
    }

    /// Classes of a projection discriminator; 0 = unconditional.
    pub fn classes(&self) -> usize {
        match &self.embed {
            Some(ClassEmbedding::Plain(w)) => w.shape()[0],
            Some(ClassEmbedding::Spectral { weight_orig, .. }) => weight_orig.shape()[0],
            None => 0,
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = self.config.image_size;
        match *x.shape() {
            [_, 3, h, w] if h == s && w == s => Ok(()),
            ref shape => {
                bail!("discriminator: images of shape {shape:?}, expected [B, 3, {s}, {s}]")
            }
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.check_input(x)?;
        let main = match &self.body {
            DiscriminatorBody::Plain(main) => main,
            DiscriminatorBody::Lightweight(net) => {
                let (_, feat_8) = net.features(x, ctx)?;
                return self.project(&net.logits(&feat_8, ctx)?, &feat_8, ctx);
            }
        };
        // The logits are f32 also under amp (the loss is f32), as PyTorch autocast's losses.
        if self.embed.is_none() {
            let y = ops::to_f32(&main.forward(x, ctx)?)?;
            // dcgan: [B, 1, 1, 1]; classical: [B, 1, 5, 5] averaged to one logit per image.
            return ops::mean_rows(&y);
        }
        let (last, hidden) = main
            .layers
            .split_last()
            .expect("a discriminator has layers");
        let h = forward_layers(hidden, x, ctx)?;
        let logit = ops::mean_rows(&ops::to_f32(&last.forward(&h, ctx)?)?)?;
        self.project(&logit, &h, ctx)
    }

    /// `logit` plus, in a projection discriminator, `<embed(y), phi(x)>` with phi(x) the last
    /// hidden features `h` summed over their pixels.
    fn project(&self, logit: &Tensor, h: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let Some(embed) = &self.embed else {
            return Ok(logit.clone());
        };
        let [b, c, hh, ww] = *h.shape() else {
            bail!("discriminator: hidden features of shape {:?}", h.shape());
        };
        let labels = ctx.need_labels("the projection discriminator", b)?;
        // phi(x): the features summed over their pixels, [B, C] (in f32).
        let h = ops::to_f32(h)?;
        let phi = ops::sum_rows(&h.reshape(&[b * c, hh * ww])?)?.reshape(&[b, c])?;
        let e = embed.lookup(labels, ctx.mode)?;
        ops::add(logit, &ops::row_dot(&e, &phi)?)
    }

    /// Whether D has the self-supervised decoders (then [`Discriminator::forward_real`] needs a
    /// quarter).
    pub fn reconstructs(&self) -> bool {
        matches!(self.body, DiscriminatorBody::Lightweight(_))
    }

    /// Channels of the features the part decoder crops (a D with decoders), for
    /// [`QuarterWeights::new`].
    pub fn part_channels(&self) -> Option<usize> {
        match &self.body {
            DiscriminatorBody::Lightweight(net) => Some(net.part_channels()),
            DiscriminatorBody::Plain(_) => None,
        }
    }

    /// D on a real batch: the logits and, for a D with decoders, the reconstruction loss of
    /// `x` (with the quarter `quarter` chooses for the part decoder).
    pub fn forward_real(
        &self,
        x: &Tensor,
        quarter: Option<&QuarterWeights>,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (DiscriminatorBody::Lightweight(net), Some(q)) = (&self.body, quarter) else {
            return Ok((self.forward(x, ctx)?, None));
        };
        self.check_input(x)?;
        let (feat_16, feat_8) = net.features(x, ctx)?;
        let logits = self.project(&net.logits(&feat_8, ctx)?, &feat_8, ctx)?;
        let rec = net.reconstruction_loss(x, &feat_16, &feat_8, q, ctx)?;
        Ok((logits, Some(rec)))
    }

    /// Sets the std of the input noise (classical only; a no-op for dcgan).
    pub fn set_noise_std(&self, std: f32) {
        let DiscriminatorBody::Plain(main) = &self.body else {
            return;
        };
        for layer in &main.layers {
            if let Layer::GaussianNoise(s) = layer {
                s.set(std);
            }
        }
    }

    pub fn noise_std(&self) -> Option<f32> {
        let DiscriminatorBody::Plain(main) = &self.body else {
            return None;
        };
        main.layers.iter().find_map(|l| match l {
            Layer::GaussianNoise(s) => Some(s.get()),
            _ => None,
        })
    }
}

impl Module for Discriminator {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        match &self.body {
            DiscriminatorBody::Plain(main) => main.visit_state(&format!("{prefix}main."), f),
            DiscriminatorBody::Lightweight(net) => net.visit_state(prefix, f),
        }
        if let Some(e) = &self.embed {
            e.visit_state(&format!("{prefix}embed."), f);
        }
    }
}
