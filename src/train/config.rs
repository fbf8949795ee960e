//! The recipe of a run ([`TrainConfig`]): written to `config.json` and into every checkpoint,
//! checked before training, read back on resume.

use super::{ema, lr_control};
use crate::checkpoint;
use crate::nn::{ModelConfig, Preset};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a training run needs; written to `config.json` (with the model config
/// flattened so `sample` can rebuild the generator) and into every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    #[serde(flatten)]
    pub model: ModelConfig,
    /// Total epochs of the run (a resumed run trains up to this many).
    pub epochs: usize,
    pub batch_size: usize,
    /// Discriminator learning rate.
    pub lr_d: f32,
    /// Generator learning rate (dcgan: all of G; classical: its "initial" stage).
    pub lr_g: f32,
    /// Classical "detail" stage lr (seed 001: 5e-5, a quarter of the initial stage's).
    pub lr_g_detail: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub d_steps: usize,
    pub sample_every: usize,
    pub seed: u64,
    /// Classical only: std of D's input noise at the start (linearly decayed to 0).
    pub noise_std: f32,
    /// The dynamic learning-rate rule of [`lr_control`].
    pub dynamic_lr: bool,
    /// D steps per decision of the dynamic-lr rule.
    pub lr_window: usize,
    /// Keep an exponential moving average of G's weights (see [`ema`]).
    pub ema: bool,
    /// EMA half-life in images (before ramp-up).
    pub ema_half_life_images: f64,
    /// EMA ramp-up: the half-life is at most this fraction of the images seen (0 = none).
    pub ema_rampup: f64,
    /// Write a checkpoint every N epochs (and after the last one).
    pub checkpoint_every: usize,
    /// Checkpoints kept (the newest ones; the last epoch's is always among them).
    pub keep_checkpoints: usize,
    /// Record the SWD quality metric every N epochs (0 = never).
    pub eval_every: usize,
    /// Images per set for that SWD.
    pub eval_count: usize,
    /// Record the SWD of the raw and EMA generators in `quality.csv` every N training images
    /// (0 = never).
    #[serde(default)]
    pub eval_every_images: u64,
    /// Human-readable description of the training data.
    pub data: String,
    /// The data options, so `train --resume` reads the same images.
    #[serde(default)]
    pub data_args: crate::data::DataArgs,
    pub augment: crate::data::Augment,
    pub device: String,
    /// fp32 or amp: the resolved `--precision` (runs from before it existed are fp32). Kept on
    /// resume, also on another device.
    #[serde(default)]
    pub precision: crate::amp::Precision,
    /// Each training step captured as one CUDA graph and replayed (`--cuda-graphs`; CUDA
    /// only). Results are the same either way.
    #[serde(default)]
    pub cuda_graphs: bool,
    /// Data-parallel training normalises batch norm with the whole batch's statistics, all
    /// GPUs' (`--sync-bn`); off: each GPU's own, as PyTorch's DDP by default.
    #[serde(default)]
    pub sync_bn: bool,
    /// Which implementation runs the convolutions on CUDA (`--conv-impl`): this process's
    /// choice, not the run's (results agree to f32 rounding either way), so not recorded.
    #[serde(skip)]
    pub conv_impl: crate::backend::ConvImpl,
    /// Divergence guard: a loss above this ...
    #[serde(default = "default_diverge_loss")]
    pub diverge_loss: f32,
    /// ... for this many consecutive steps stops the run (as a non-finite loss does at once).
    #[serde(default = "default_diverge_steps")]
    pub diverge_steps: usize,
    /// Conditional runs: G's class parameters (the per-class gains and biases of its
    /// conditional batch norms) learn at this multiple of their stage's lr. Adam moves a
    /// parameter by about lr a step, so at 2e-4 the classes' gains could drift apart by at most
    /// 0.13 in 650 steps: that cap, not the data, was why the class showed so late. Runs
    /// written before it existed read 1 (their recipe).
    #[serde(default = "unscaled", skip_serializing_if = "is_unscaled")]
    pub class_lr_scale: f32,
    /// Conditioning options; absent from `config.json` when unconditional.
    #[serde(default, skip_serializing_if = "is_unconditional")]
    pub condition: crate::data::ConditionArgs,
    /// The classes of a conditional run (index → name, image count), filled in once the data
    /// is read; absent when unconditional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_table: Option<crate::data::ClassTable>,
    /// DiffAugment policy applied to every D input (real and fake, D and G steps); absent
    /// from `config.json` when off.
    #[serde(default, skip_serializing_if = "is_off")]
    pub diffaugment: crate::ops::DiffAugment,
    /// The adversarial loss (`--loss`; runs from before it existed are BCE).
    #[serde(default)]
    pub loss: crate::ops::GanLoss,
    /// This run's id ([`checkpoint::new_run_id`]), in every checkpoint's copy too: a checkpoint
    /// of another run is never resumed or sampled as this one's. Empty for runs from before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
}

/// A BCE loss of 100 means logits of about ±100: the model has diverged (ordinary GAN losses
/// stay below about 10).
pub const DEFAULT_DIVERGE_LOSS: f32 = 100.0;
/// Steps a loss may stay above [`DEFAULT_DIVERGE_LOSS`] before the run is stopped.
pub const DEFAULT_DIVERGE_STEPS: usize = 200;

fn default_diverge_loss() -> f32 {
    DEFAULT_DIVERGE_LOSS
}

fn default_diverge_steps() -> usize {
    DEFAULT_DIVERGE_STEPS
}

fn is_unconditional(c: &crate::data::ConditionArgs) -> bool {
    c.condition == crate::data::Condition::None
}

/// [`TrainConfig::class_lr_scale`] of a new run (louvre-genres, 32 and 64 px: see the README's
/// "Conditioning").
pub const DEFAULT_CLASS_LR_SCALE: f32 = 10.0;

/// The end of the name of a G stage's Adam group of class parameters (`main/classes`).
pub const CLASS_GROUP_SUFFIX: &str = "/classes";

fn unscaled() -> f32 {
    1.0
}

fn is_unscaled(x: &f32) -> bool {
    *x == 1.0
}

fn is_off(d: &crate::ops::DiffAugment) -> bool {
    !d.is_on()
}

impl TrainConfig {
    /// The preset's recipe with the given architecture.
    pub fn for_model(model: ModelConfig) -> Self {
        let classical = model.preset == Preset::Classical;
        // FastGAN's recipe: hinge loss and DiffAugment color,translation,cutout.
        let light = model.preset == Preset::Lightweight;
        TrainConfig {
            epochs: 5,
            batch_size: 64,
            lr_d: 2e-4,
            lr_g: 2e-4,
            lr_g_detail: if classical { 5e-5 } else { 2e-4 },
            class_lr_scale: DEFAULT_CLASS_LR_SCALE,
            beta1: 0.5,
            beta2: 0.999,
            d_steps: if classical { 4 } else { 1 },
            sample_every: 1,
            seed: 0,
            noise_std: if classical {
                crate::nn::models::CLASSICAL_NOISE_STD
            } else {
                0.0
            },
            dynamic_lr: classical,
            lr_window: lr_control::DEFAULT_WINDOW,
            ema: true,
            ema_half_life_images: ema::DEFAULT_HALF_LIFE_IMAGES,
            ema_rampup: ema::DEFAULT_RAMPUP,
            checkpoint_every: 5,
            keep_checkpoints: 3,
            eval_every: 0,
            eval_count: 1024,
            eval_every_images: 0,
            data: String::new(),
            data_args: Default::default(),
            augment: crate::data::Augment::NONE,
            device: "cpu".to_string(),
            precision: Default::default(),
            cuda_graphs: false,
            sync_bn: false,
            conv_impl: crate::backend::ConvImpl::default(),
            diverge_loss: DEFAULT_DIVERGE_LOSS,
            diverge_steps: DEFAULT_DIVERGE_STEPS,
            condition: crate::data::ConditionArgs {
                min_images: 8,
                ..Default::default()
            },
            class_table: None,
            diffaugment: if light {
                crate::ops::DiffAugment {
                    color: true,
                    translation: true,
                    cutout: true,
                }
            } else {
                Default::default()
            },
            loss: if light {
                crate::ops::GanLoss::Hinge
            } else {
                Default::default()
            },
            run_id: String::new(),
            model,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if self.batch_size < 2 {
            bail!(
                "batch size {} is too small: batch norm needs at least 2 images per batch",
                self.batch_size
            );
        }
        for (flag, value) in [
            ("--epochs", self.epochs),
            ("--d-steps", self.d_steps),
            ("--sample-every", self.sample_every),
            ("--checkpoint-every", self.checkpoint_every),
            ("--keep-checkpoints", self.keep_checkpoints),
            ("--lr-window", self.lr_window),
            ("--diverge-steps", self.diverge_steps),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        for (flag, lr) in [
            ("--lr-d", self.lr_d),
            ("--lr-g", self.lr_g),
            ("--lr-g-detail", self.lr_g_detail),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("{flag} must be a positive number, got {lr}");
            }
        }
        if !(self.class_lr_scale.is_finite() && self.class_lr_scale > 0.0) {
            bail!(
                "--class-lr-scale must be a positive number, got {}",
                self.class_lr_scale
            );
        }
        if !(self.diverge_loss.is_finite() && self.diverge_loss > 0.0) {
            bail!(
                "--diverge-loss must be a positive number, got {}",
                self.diverge_loss
            );
        }
        if !(self.ema_half_life_images.is_finite() && self.ema_half_life_images > 0.0) {
            bail!("--ema-half-life must be a positive number of images");
        }
        if !(self.ema_rampup.is_finite() && self.ema_rampup >= 0.0) {
            bail!("EMA ramp-up must be 0 or positive");
        }
        if (self.eval_every > 0 || self.eval_every_images > 0) && self.eval_count < 2 {
            bail!("--eval-count must be at least 2");
        }
        Ok(())
    }

    /// [`TrainConfig::validate`] for a configuration read from a file: also the fields no flag
    /// sets (named as in `config.json`), which a hand-edited or damaged file can put out of range.
    fn validate_stored(&self) -> Result<()> {
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(beta.is_finite() && (0.0..1.0).contains(&beta)) {
                bail!("{field} is {beta}: Adam's betas must be in [0, 1)");
            }
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            bail!("noise_std is {}: it must be 0 or positive", self.noise_std);
        }
        let rotate = self.augment.rotate_deg;
        if !(rotate.is_finite() && (0.0..=180.0).contains(&rotate)) {
            bail!("augment.rotate_deg is {rotate}: it must be in [0, 180]");
        }
        self.validate()
    }

    /// Classes of the conditional models (0: unconditional).
    pub fn classes(&self) -> usize {
        self.class_table.as_ref().map_or(0, |t| t.len())
    }

    /// The base lr of a generator parameter group.
    /// The base lr of G's Adam group `group`: a stage (`main`, `initial`, `detail`), or a
    /// stage's class parameters (`<stage>/classes`, [`TrainConfig::class_lr_scale`] × its lr).
    pub(super) fn generator_base_lr(&self, group: &str) -> f32 {
        let (stage, scale) = match group.strip_suffix(CLASS_GROUP_SUFFIX) {
            Some(stage) => (stage, self.class_lr_scale),
            None => (group, 1.0),
        };
        let lr = if stage == "detail" {
            self.lr_g_detail
        } else {
            self.lr_g
        };
        lr * scale
    }
}

/// The training configuration stored in a run folder (or one of its checkpoint folders).
pub fn load_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = run_dir.join(checkpoint::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a training run folder (cannot read {})",
            run_dir.display(),
            path.display()
        )
    })?;
    let cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an artgan training configuration ({e})",
            path.display()
        )
    })?;
    cfg.validate_stored()
        .with_context(|| format!("{}: out-of-range value", path.display()))?;
    Ok(cfg)
}
