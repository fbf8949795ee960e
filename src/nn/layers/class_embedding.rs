//! The projection discriminator's class embedding.

use super::super::{Mode, Module};
use super::conv::random_unit;
use super::{StateRef, CONV_INIT_STD};
use crate::backend::Device;
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::Result;

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
