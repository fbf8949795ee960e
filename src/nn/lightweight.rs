//! The `lightweight` preset: a FastGAN-class G/D pair (Liu et al. 2021, "Towards Faster and
//! Stabilized GAN Training for High-fidelity Few-shot Image Synthesis") for small collections,
//! at 64, 128 and 256 px. What differs from the paper and why: README "The lightweight preset".
//!
//! * G: latent → ConvT 4×4 (4×4 px, channels ×2) + BN + GLU; then per doubling an up block
//!   (nearest ×2, conv 3×3 to 2× the channels, BN (class-conditional when conditional), GLU);
//!   skip-layer excitation (SLE) lets the features at r gate the channels of those at 4r
//!   (pool to 4×4, conv 4×4, LeakyReLU 0.1, conv 1×1, sigmoid); conv 3×3 to RGB + tanh.
//! * D: spectral-normalised convs: conv 3×3 at full size, down blocks (conv 4×4 stride 2, BN,
//!   LeakyReLU 0.2) to 8×8, a logit head (conv 1×1, BN, LeakyReLU, conv 4×4: a 5×5 map,
//!   averaged). Two decoders (up blocks, conv 3×3 to RGB, tanh) reconstruct the real image at
//!   half size from the 8×8 features, and one quarter of it from that quarter of the 16×16
//!   features; their L1 loss is added to D's loss on real images ([`LightDiscriminator::reconstruction_loss`]).
//!
//! Channels follow FastGAN's per-resolution table scaled by `ngf` (G) or `ndf` (D).

use super::layers::{
    BatchNorm2d, CondBatchNorm2d, Conv2d, ConvTranspose2d, Layer, Sequential, SpectralNormConv2d,
    StateRef,
};
use super::{Ctx, Module};
use crate::backend::Device;
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// FastGAN's `nfc_multi`: channels at a resolution per unit of width (`nfc[r] = mult · ngf`).
const CHANNEL_TABLE: [(usize, f32); 9] = [
    (4, 16.0),
    (8, 8.0),
    (16, 4.0),
    (32, 2.0),
    (64, 2.0),
    (128, 1.0),
    (256, 0.5),
    (512, 0.25),
    (1024, 0.125),
];

/// The image sizes the preset builds.
pub const SIZES: [usize; 3] = [64, 128, 256];

/// Slope of the excitation's LeakyReLU (FastGAN's paper; its code uses Swish).
const SLE_SLOPE: f32 = 0.1;
/// Slope of D's LeakyReLUs.
const D_SLOPE: f32 = 0.2;

/// Channels at resolution `res` for width `width` (at least 1).
pub fn channels(res: usize, width: usize) -> usize {
    let mult = CHANNEL_TABLE
        .iter()
        .find(|(r, _)| *r == res)
        .map_or(0.125, |(_, m)| *m);
    ((mult * width as f32) as usize).max(1)
}

/// BN, or class-conditional BN when `classes > 0`.
fn norm(c: usize, classes: usize, rng: &mut Rng, dev: Device) -> Result<Layer> {
    Ok(if classes > 0 {
        Layer::CondBn(CondBatchNorm2d::new(c, classes, rng, dev)?)
    } else {
        Layer::Bn(BatchNorm2d::new(c, rng, dev)?)
    })
}

/// FastGAN's `UpBlock`: nearest ×2, conv 3×3 to `2·c_out` (no bias), BN, GLU.
fn up_block(
    c_in: usize,
    c_out: usize,
    spectral: bool,
    classes: usize,
    rng: &mut Rng,
    dev: Device,
) -> Result<Vec<Layer>> {
    let conv = if spectral {
        Layer::SnConv(SpectralNormConv2d::new(c_in, 2 * c_out, 3, 1, 1, rng, dev)?)
    } else {
        Layer::Conv(Conv2d::new(c_in, 2 * c_out, 3, 1, 1, false, rng, dev)?)
    };
    let bn = norm(2 * c_out, classes, rng, dev)?;
    Ok(vec![Layer::Upsample(2), conv, bn, Layer::Glu])
}

fn seq(layers: Vec<Layer>) -> Sequential {
    Sequential { layers }
}

/// Skip-layer excitation: the gate the small feature map gives the large one's channels.
struct Excitation {
    /// Resolution of the features that give the gate ...
    from: usize,
    /// ... and of those it gates (`4 · from`).
    to: usize,
    main: Sequential,
}

/// The lightweight generator (see the module doc).
pub struct LightGenerator {
    init: Sequential,
    /// `(resolution of its output, block)`, 8 px up to the image size.
    ups: Vec<(usize, Sequential)>,
    excitations: Vec<Excitation>,
    to_big: Sequential,
}

impl LightGenerator {
    pub fn new(
        image_size: usize,
        nz: usize,
        ngf: usize,
        classes: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<Self> {
        let ch = |r| channels(r, ngf);
        let init = seq(vec![
            Layer::ConvT(ConvTranspose2d::new(
                nz,
                2 * ch(4),
                4,
                1,
                0,
                false,
                rng,
                dev,
            )?),
            norm(2 * ch(4), classes, rng, dev)?,
            Layer::Glu,
        ]);
        let mut ups = Vec::new();
        let mut r = 8;
        while r <= image_size {
            ups.push((
                r,
                seq(up_block(ch(r / 2), ch(r), false, classes, rng, dev)?),
            ));
            r *= 2;
        }
        // Every feature map from 16 px up is gated by the one a quarter its size: at 64 px
        // 4→16, 8→32, 16→64 (FastGAN's three at 256 px sit 16× apart; see the README).
        let mut excitations = Vec::new();
        let mut to = 16;
        while to <= image_size {
            let from = to / 4;
            let main = seq(vec![
                Layer::AdaptivePool(4),
                Layer::Conv(Conv2d::new(ch(from), ch(to), 4, 1, 0, false, rng, dev)?),
                Layer::LeakyRelu(SLE_SLOPE),
                Layer::Conv(Conv2d::new(ch(to), ch(to), 1, 1, 0, false, rng, dev)?),
                Layer::Sigmoid,
            ]);
            excitations.push(Excitation { from, to, main });
            to *= 2;
        }
        let to_big = seq(vec![
            Layer::Conv(Conv2d::new(ch(image_size), 3, 3, 1, 1, false, rng, dev)?),
            Layer::Tanh,
        ]);
        Ok(LightGenerator {
            init,
            ups,
            excitations,
            to_big,
        })
    }

    /// Latents `[B, nz, 1, 1]` → images (f32 under amp too: the GLU before the output conv
    /// is f32, and the caller casts the output).
    pub fn forward(&self, z: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut feats = vec![(4, self.init.forward(z, ctx)?)];
        for (r, block) in &self.ups {
            let mut h = block.forward(&feats[feats.len() - 1].1, ctx)?;
            if let Some(e) = self.excitations.iter().find(|e| e.to == *r) {
                let small = &feats.iter().find(|(s, _)| *s == e.from).expect("fed").1;
                let gate = e.main.forward(small, ctx)?;
                h = ops::channel_gate(&ops::to_f32(&h)?, &gate)?;
            }
            feats.push((*r, h));
        }
        self.to_big.forward(&feats[feats.len() - 1].1, ctx)
    }
}

impl Module for LightGenerator {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        self.init.visit_state(&format!("{prefix}init."), f);
        for (r, block) in &self.ups {
            block.visit_state(&format!("{prefix}feat_{r}."), f);
        }
        for e in &self.excitations {
            e.main.visit_state(&format!("{prefix}se_{}.main.", e.to), f);
        }
        self.to_big.visit_state(&format!("{prefix}to_big."), f);
    }
}

/// The lightweight discriminator (see the module doc); the projection for conditional runs
/// is the caller's (`models::Discriminator`), on [`LightDiscriminator::features`].
pub struct LightDiscriminator {
    image_size: usize,
    down_from_big: Sequential,
    /// `(resolution of its output, block)`, from half the image size down to 8 px.
    downs: Vec<(usize, Sequential)>,
    rf_big: Sequential,
    decoder_big: Sequential,
    decoder_part: Sequential,
    /// Channels of the 16×16 features the part decoder reads.
    part_channels: usize,
}

/// The quarter of the real batch D's part decoder reconstructs in one step, as a weight per
/// quarter, sample and channel: 1 on the chosen quarter, 0 on the others. They are device
/// tensors that a CUDA graph of the step reads, so that a replay reconstructs its own step's
/// quarter (`nn::draws` writes them before each replay). The chosen crop times 1 plus the
/// others times 0 is that crop exactly, and so are the gradients (zeros added): the numbers
/// are those of cropping the one quarter.
#[derive(Clone)]
pub struct QuarterWeights {
    /// The chosen quarter (0..=3: top left, top right, bottom left, bottom right), as drawn.
    pub quarter: usize,
    /// Per quarter: `[N, C]` for the 16×16 features and `[N, 3]` for the image.
    features: Vec<Tensor>,
    images: Vec<Tensor>,
}

impl QuarterWeights {
    /// Weights choosing `quarter` for `n` samples whose 16×16 features have `c` channels.
    pub fn new(quarter: usize, n: usize, c: usize, device: Device) -> Result<Self> {
        if quarter > 3 {
            bail!("reconstruction: quarter {quarter} of 0..=3");
        }
        let make = |q: usize, width: usize| {
            let w = if q == quarter { 1.0 } else { 0.0 };
            Tensor::full(&[n, width], w, device)
        };
        Ok(QuarterWeights {
            quarter,
            features: (0..4).map(|q| make(q, c)).collect::<Result<_>>()?,
            images: (0..4).map(|q| make(q, 3)).collect::<Result<_>>()?,
        })
    }

    /// Chooses `quarter` instead (writes the device tensors in place).
    pub fn set(&mut self, quarter: usize) -> Result<()> {
        if quarter > 3 {
            bail!("reconstruction: quarter {quarter} of 0..=3");
        }
        self.quarter = quarter;
        for (q, t) in self.features.iter().chain(&self.images).enumerate() {
            let w = if q % 4 == quarter { 1.0 } else { 0.0 };
            t.backend()
                .write(&mut t.storage_mut(), &vec![w; t.numel()])?;
        }
        Ok(())
    }
}

/// `Σ_q crop(q) · weights[q]` (per sample and channel): the chosen quarter's crop.
fn chosen_quarter(weights: &[Tensor], crop: impl Fn(usize) -> Result<Tensor>) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for (q, w) in weights.iter().enumerate() {
        let part = ops::channel_gate(&crop(q)?, w)?;
        sum = Some(match sum {
            None => part,
            Some(s) => ops::add(&s, &part)?,
        });
    }
    sum.ok_or_else(|| anyhow::anyhow!("no quarters"))
}

/// FastGAN's `SimpleDecoder`: up blocks from 8×8 `c_in` features to `out` px, conv 3×3 to RGB,
/// tanh (spectral-normalised like the rest of D).
fn decoder(c_in: usize, out: usize, ndf: usize, rng: &mut Rng, dev: Device) -> Result<Sequential> {
    let mut layers = Vec::new();
    let (mut r, mut c) = (8, c_in);
    while r < out {
        r *= 2;
        layers.extend(up_block(c, channels(r, ndf), true, 0, rng, dev)?);
        c = channels(r, ndf);
    }
    layers.push(Layer::SnConv(SpectralNormConv2d::new(
        c, 3, 3, 1, 1, rng, dev,
    )?));
    layers.push(Layer::Tanh);
    Ok(seq(layers))
}

impl LightDiscriminator {
    pub fn new(image_size: usize, ndf: usize, rng: &mut Rng, dev: Device) -> Result<Self> {
        // The features at resolution r have FastGAN's nfc[2r] channels.
        let ch = |r: usize| channels(2 * r, ndf);
        let down_from_big = seq(vec![
            Layer::SnConv(SpectralNormConv2d::new(
                3,
                ch(image_size),
                3,
                1,
                1,
                rng,
                dev,
            )?),
            Layer::LeakyRelu(D_SLOPE),
        ]);
        let mut downs = Vec::new();
        let mut r = image_size / 2;
        while r >= 8 {
            let block = seq(vec![
                Layer::SnConv(SpectralNormConv2d::new(
                    ch(2 * r),
                    ch(r),
                    4,
                    2,
                    1,
                    rng,
                    dev,
                )?),
                Layer::Bn(BatchNorm2d::new(ch(r), rng, dev)?),
                Layer::LeakyRelu(D_SLOPE),
            ]);
            downs.push((r, block));
            r /= 2;
        }
        let rf_big = seq(vec![
            Layer::SnConv(SpectralNormConv2d::new(ch(8), ch(4), 1, 1, 0, rng, dev)?),
            Layer::Bn(BatchNorm2d::new(ch(4), rng, dev)?),
            Layer::LeakyRelu(D_SLOPE),
            Layer::SnConv(SpectralNormConv2d::new(ch(4), 1, 4, 1, 0, rng, dev)?),
        ]);
        let half = image_size / 2;
        let decoder_big = decoder(ch(8), half, ndf, rng, dev)?;
        let decoder_part = decoder(ch(16), half, ndf, rng, dev)?;
        Ok(LightDiscriminator {
            image_size,
            down_from_big,
            downs,
            rf_big,
            decoder_big,
            decoder_part,
            part_channels: ch(16),
        })
    }

    /// Channels of the 16×16 features (what [`QuarterWeights::new`] needs).
    pub fn part_channels(&self) -> usize {
        self.part_channels
    }

    /// Channels of the 8×8 features (the projection's embedding width).
    pub fn feature_channels(&self, ndf: usize) -> usize {
        channels(16, ndf)
    }

    /// The 16×16 and 8×8 feature maps of `x`.
    pub fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<(Tensor, Tensor)> {
        let mut h = self.down_from_big.forward(x, ctx)?;
        let mut feat_16 = None;
        for (r, block) in &self.downs {
            h = block.forward(&h, ctx)?;
            if *r == 16 {
                feat_16 = Some(h.clone());
            }
        }
        Ok((feat_16.expect("D goes through 16 px"), h))
    }

    /// One logit per image from the 8×8 features: the 5×5 map, averaged (f32).
    pub fn logits(&self, feat_8: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        ops::mean_rows(&ops::to_f32(&self.rf_big.forward(feat_8, ctx)?)?)
    }

    /// The self-supervised loss on the real batch `x` (as D saw it): L1 of the 8×8 features'
    /// decoding against `x` pooled to half size, plus L1 of quarter `quarter` (0 top left, 1
    /// top right, 2 bottom left, 3 bottom right) of the 16×16 features' decoding against that
    /// quarter of `x`.
    pub fn reconstruction_loss(
        &self,
        x: &Tensor,
        feat_16: &Tensor,
        feat_8: &Tensor,
        quarter: &QuarterWeights,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let half = self.image_size / 2;
        let rec_all = ops::to_f32(&self.decoder_big.forward(feat_8, ctx)?)?;
        let whole = ops::l1_loss(&rec_all, &ops::adaptive_avg_pool2d(x, half, half)?)?;
        let feat_16 = ops::to_f32(feat_16)?;
        let part = chosen_quarter(&quarter.features, |q| {
            ops::crop2d(&feat_16, (q / 2) * 8, (q % 2) * 8, 8, 8)
        })?;
        let rec_part = ops::to_f32(&self.decoder_part.forward(&part, ctx)?)?;
        let target = chosen_quarter(&quarter.images, |q| {
            ops::crop2d(x, (q / 2) * half, (q % 2) * half, half, half)
        })?;
        ops::add(&whole, &ops::l1_loss(&rec_part, &target)?)
    }
}

impl Module for LightDiscriminator {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        self.down_from_big
            .visit_state(&format!("{prefix}down_from_big."), f);
        for (r, block) in &self.downs {
            block.visit_state(&format!("{prefix}down_{r}."), f);
        }
        self.rf_big.visit_state(&format!("{prefix}rf_big."), f);
        self.decoder_big
            .visit_state(&format!("{prefix}decoder_big.main."), f);
        self.decoder_part
            .visit_state(&format!("{prefix}decoder_part.main."), f);
    }
}
