//! Layers with named parameters and buffers, and the two model presets built from them.
//!
//! Naming follows PyTorch's `state_dict()`: a [`Sequential`] names its children by their index
//! (parameter-free modules such as ReLU still take an index), a layer names its tensors as the
//! PyTorch module does (`weight`, `bias`, `running_mean`, …, `weight_orig`/`weight_u`/`weight_v`
//! under spectral norm), and parameters come before buffers within a module. That keeps our
//! safetensors files loadable with `load_state_dict` in PyTorch.

pub mod draws;
pub mod layers;
pub mod lightweight;
pub mod models;

pub use layers::{
    is_class_parameter, BatchNorm2d, CondBatchNorm2d, Conv2d, ConvTranspose2d, Layer, Sequential,
    SpectralNormConv2d, StateRef,
};
pub use models::{Discriminator, DiscriminatorBody, Generator, GeneratorBody, ModelConfig, Preset};

use crate::amp::Numerics;
use crate::ops::{Labels, Seed};
use crate::rng::Rng;
use draws::StepDraws;

/// How a forward pass behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch statistics (running stats updated), dropout and noise on, one spectral
    /// norm power iteration.
    Train,
    /// Evaluation: running statistics, no dropout or noise, spectral norm `u` frozen.
    Eval,
    /// Batch statistics like `Train`, but nothing is changed: running stats, `u`/`v` and
    /// `num_batches_tracked` stay as they are and dropout/noise are off. Used for the sample
    /// grids during training, where eval-mode BN on a young generator looks much worse than
    /// what training sees (pytorch/examples samples in train mode for the same reason), but a
    /// sample must not disturb the training state.
    BatchStats,
}

/// Per-forward context: the mode, the numerics, and where the seeds of dropout and noise come
/// from. Each dropout/noise call draws a fresh `u64` seed from `rng`, so masks differ per call
/// but a run is reproducible from its seed.
pub struct Ctx<'a> {
    pub mode: Mode,
    pub rng: &'a mut Rng,
    /// Precision and convolution implementation of every op of the pass (and of its backward).
    pub numerics: Numerics,
    /// Class labels of the batch, one per image, for conditional models: the
    /// generator's class-conditional batch norm and the projection discriminator read them.
    pub labels: Option<Labels<'a>>,
    /// In a training step that a CUDA graph replays: where the draws go (see [`draws`]).
    pub draws: Option<&'a mut StepDraws>,
    /// The rank of this pass's part of the batch (data-parallel training; 0 otherwise).
    pub part: usize,
    /// Training-mode batch norm uses the statistics of every GPU's part (`--sync-bn`).
    pub sync_bn: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(mode: Mode, rng: &'a mut Rng, numerics: Numerics) -> Self {
        Ctx {
            mode,
            rng,
            numerics,
            labels: None,
            draws: None,
            part: 0,
            sync_bn: false,
        }
    }

    /// The same context carrying the batch's class labels (None: unconditional).
    pub fn labeled(self, labels: Option<&'a [u32]>) -> Self {
        self.labeled_as(labels.map(Labels::from))
    }

    /// [`Ctx::labeled`] with labels that may also be on the device.
    pub fn labeled_as(mut self, labels: Option<Labels<'a>>) -> Self {
        self.labels = labels;
        self
    }

    /// The same context taking its draws from `draws` when given.
    pub fn drawing(mut self, draws: Option<&'a mut StepDraws>) -> Self {
        self.draws = draws;
        self
    }

    /// The seed of the next dropout mask (`noise_std: None`) or input noise, for this pass's
    /// part of the batch ([`Ctx::in_part`]).
    pub fn seed(&mut self, noise_std: Option<f32>) -> anyhow::Result<Seed> {
        let seed = match self.draws.as_deref_mut() {
            Some(d) => d.seed(self.rng, noise_std)?,
            None => self.rng.next_u64().into(),
        };
        Ok(Seed {
            part: self.part,
            ..seed
        })
    }

    /// The same context for part `rank` of the whole batch (data-parallel training: its masks
    /// and noise are that part's elements of the whole batch's draw).
    pub fn in_part(mut self, rank: usize) -> Self {
        self.part = rank;
        self
    }

    /// The same context with batch norm synchronised over the GPUs (`--sync-bn`) or not.
    pub fn syncing_bn(mut self, sync: bool) -> Self {
        self.sync_bn = sync;
        self
    }

    /// The labels a conditional layer needs, or an error naming `who`.
    pub fn need_labels(&self, who: &str, batch: usize) -> anyhow::Result<Labels<'a>> {
        match self.labels {
            Some(l) if l.host.len() == batch => Ok(l),
            Some(l) => anyhow::bail!(
                "{who}: {} class labels for a batch of {batch}",
                l.host.len()
            ),
            None => anyhow::bail!("{who} is conditional: it needs a class label per image"),
        }
    }
}

/// Anything with a PyTorch-style state dict.
pub trait Module {
    /// Calls `f` with every parameter and buffer, in PyTorch `state_dict()` order, with names
    /// prefixed by `prefix` (e.g. `"main."`).
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>));

    /// `(name, tensor)` of every trainable parameter, in state-dict order.
    fn parameters(&self) -> Vec<(String, crate::tensor::Tensor)> {
        let mut out = Vec::new();
        self.visit_state("", &mut |name, s| {
            if let StateRef::Param(t) = s {
                out.push((name, t.clone()));
            }
        });
        out
    }

    /// Number of trainable scalars (what PyTorch users count with `p.numel()`).
    fn parameter_count(&self) -> usize {
        self.parameters().iter().map(|(_, t)| t.numel()).sum()
    }

    /// `(name, shape)` of every state-dict entry, in order.
    fn state_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        self.visit_state("", &mut |name, s| out.push((name, s.shape())));
        out
    }

    fn zero_grad(&self) {
        for (_, p) in self.parameters() {
            p.zero_grad();
        }
    }
}
