//! What a checkpoint holds, and restoring a [`Trainer`] from one.
//!
//! A checkpoint folder (written atomically by [`run_folder::write_checkpoint`]) holds:
//! - `config.json`: the run's [`TrainConfig`] (so the folder is usable on its own);
//! - `generator.safetensors`, `generator_ema.safetensors` (when kept), `discriminator.safetensors`:
//!   state dicts with PyTorch names (parameters, batch-norm statistics, spectral-norm vectors);
//! - `optimizer_g.safetensors`, `optimizer_d.safetensors`: Adam's `exp_avg`/`exp_avg_sq` per
//!   parameter;
//! - `state.json`: [`TrainState`], the counters, both random streams' positions, the lr
//!   controller and the metrics so far.
//!
//! Learning rates are not stored: they follow from the config's base lrs and the controller's
//! level ([`Trainer::apply_lrs`]), so a resume with new base lrs (`--lr`) takes effect cleanly.
//! The data order needs no state either: the loader derives each epoch's shuffle and
//! augmentation from the seed and the epoch number. Restoring therefore reproduces the
//! uninterrupted run bit for bit on the CPU.

use super::{EpochStats, TrainConfig, Trainer};
use crate::backend::Device;
use crate::checkpoint::{self, describe};
use crate::nn::Module;
use crate::optim::Adam;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_G_FILE: &str = "optimizer_g.safetensors";
pub const OPTIMIZER_D_FILE: &str = "optimizer_d.safetensors";
/// Bumped when the layout of [`TrainState`] changes incompatibly.
pub const STATE_FORMAT: u32 = 1;

/// The training counters and controller state of a checkpoint (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    pub epoch: usize,
    pub step: usize,
    pub g_steps: u64,
    pub pending_d_steps: usize,
    /// Adam's completed steps (G, D).
    pub adam_steps: (u64, u64),
    /// `(seed, position)` of the latent and regulariser streams.
    pub latents_rng: (u64, u64),
    pub regularizers_rng: (u64, u64),
    pub lr_control: super::LrControl,
    pub history: Vec<EpochStats>,
    /// Consecutive steps with a loss above the divergence threshold.
    #[serde(default)]
    pub high_loss_steps: usize,
    /// A mid-epoch checkpoint (an interrupted run): how far into epoch `epoch + 1` it is and
    /// the sums of that epoch's metrics so far. `None` at an epoch boundary.
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
}

/// The running sums of an epoch's metrics and how many of its batches are done; saved in a
/// mid-epoch checkpoint so the resumed epoch's row of `metrics.csv` is the uninterrupted one.
/// Sums are stored as f64 bit patterns: JSON decimals need not read back to the same bits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Batches of the epoch done (the loader resumes at this batch).
    pub batch: usize,
    #[serde(with = "f64_bits")]
    pub sum_d: f64,
    #[serde(with = "f64_bits")]
    pub sum_x: f64,
    #[serde(with = "f64_bits")]
    pub sum_gz: f64,
    pub n_d: usize,
    #[serde(with = "f64_bits")]
    pub sum_g: f64,
    pub n_g: usize,
    /// Dynamic-lr decisions (and resume notes) of the epoch so far.
    pub lr_changes: Vec<String>,
}

impl PartialEpoch {
    /// Adds one step's numbers.
    pub fn add(&mut self, s: &super::StepStats) {
        self.batch += 1;
        self.sum_d += s.loss_d as f64;
        self.sum_x += s.d_x as f64;
        self.sum_gz += s.d_g_z as f64;
        self.n_d += 1;
        if let Some(lg) = s.loss_g {
            self.sum_g += lg as f64;
            self.n_g += 1;
        }
    }
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// The files of a checkpoint of `t` (see the module docs). Refuses to checkpoint non-finite
/// weights, so a diverged run never overwrites a good checkpoint.
pub fn checkpoint_files(
    t: &Trainer,
    history: &[EpochStats],
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    checkpoint_files_mid_epoch(t, history, None)
}

/// [`checkpoint_files`] of a trainer stopped inside an epoch, `partial` of the way.
pub fn checkpoint_files_mid_epoch(
    t: &Trainer,
    history: &[EpochStats],
    partial: Option<&PartialEpoch>,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    for (what, module) in [("generator", &t.g as &dyn Module), ("discriminator", &t.d)] {
        for (name, p) in module.parameters() {
            if p.to_vec()?.iter().any(|v| !v.is_finite()) {
                bail!(
                    "training diverged: {what} weight {name} holds NaN/Inf after step {}; not \
                     checkpointing",
                    t.step
                );
            }
        }
    }
    let meta = checkpoint::model_metadata;
    let mut text = serde_json::to_string_pretty(&t.cfg)?;
    text.push('\n');
    let mut files = vec![
        (checkpoint::CONFIG_FILE, text.into_bytes()),
        (
            checkpoint::GENERATOR_FILE,
            checkpoint::state_dict_bytes(&t.g, meta())?,
        ),
        (
            checkpoint::DISCRIMINATOR_FILE,
            checkpoint::state_dict_bytes(&t.d, meta())?,
        ),
        (OPTIMIZER_G_FILE, optimizer_bytes(&t.opt_g)?),
        (OPTIMIZER_D_FILE, optimizer_bytes(&t.opt_d)?),
    ];
    if let Some(e) = &t.ema {
        files.push((
            checkpoint::GENERATOR_EMA_FILE,
            checkpoint::state_dict_bytes(e, meta())?,
        ));
    }
    let state = TrainState {
        format: STATE_FORMAT,
        epoch: t.epoch,
        step: t.step,
        g_steps: t.g_steps,
        pending_d_steps: t.pending_d_steps,
        adam_steps: (t.opt_g.step, t.opt_d.step),
        latents_rng: t.streams.latents.state(),
        regularizers_rng: t.streams.regularizers.state(),
        lr_control: t.lr_control.clone(),
        history: history.to_vec(),
        high_loss_steps: t.high_loss_steps,
        partial: partial.cloned(),
    };
    files.push((STATE_FILE, serde_json::to_vec_pretty(&state)?));
    Ok(files)
}

fn optimizer_bytes(opt: &Adam) -> Result<Vec<u8>> {
    let tensors = opt.state_tensors();
    let refs: Vec<(&str, &crate::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::tensors_bytes(&refs)
}

fn load_optimizer(opt: &Adam, path: &Path) -> Result<()> {
    let mut stored = checkpoint::load_tensors(path)?;
    let mut staged = Vec::new();
    for (name, t) in opt.state_tensors() {
        let (shape, values) = stored
            .remove(&name)
            .with_context(|| format!("{}: tensor {name} is missing", path.display()))?;
        if shape != t.shape() {
            bail!(
                "{}: tensor {name} has shape {shape:?}, expected {:?}",
                path.display(),
                t.shape()
            );
        }
        staged.push((t, values));
    }
    if let Some(extra) = stored.keys().next() {
        bail!("{}: unexpected tensor {extra}", path.display());
    }
    for (t, values) in staged {
        t.set_values(&values)?;
    }
    Ok(())
}

/// A trainer rebuilt from a checkpoint.
pub struct Restored {
    pub trainer: Trainer,
    /// The metrics so far.
    pub history: Vec<EpochStats>,
    /// Training seconds so far.
    pub seconds: f64,
    /// Set when the resume changed the base learning rates or other settings (for
    /// `metrics.csv`).
    pub lr_note: Option<String>,
    /// Where inside the next epoch a mid-epoch checkpoint was taken.
    pub partial: Option<PartialEpoch>,
}

/// Rebuilds the trainer saved in checkpoint folder `dir` (written for a run with the same model
/// and recipe as `cfg`; `cfg`'s epochs, lrs and cadences win).
pub fn restore(cfg: TrainConfig, dir: &Path, device: Device) -> Result<Restored> {
    checkpoint::verify_checkpoint(dir)?;
    let spath = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&spath)
        .with_context(|| format!("cannot read {}", spath.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a training state ({e})", spath.display()))?;
    if state.format != STATE_FORMAT {
        bail!(
            "{}: training state format {} is not supported (this artgan writes {STATE_FORMAT})",
            spath.display(),
            state.format
        );
    }
    let stored = super::load_config(dir)?;
    if stored.model != cfg.model {
        bail!(
            "checkpoint {} is of another model ({}) than the run's config ({})",
            dir.display(),
            describe(&stored.model),
            describe(&cfg.model)
        );
    }
    let (was, now) = (
        (stored.lr_d, stored.lr_g, stored.lr_g_detail),
        (cfg.lr_d, cfg.lr_g, cfg.lr_g_detail),
    );
    let mut notes: Vec<String> = (was != now)
        .then(|| {
            format!(
                "resumed with base lrs D {:.3e} G {:.3e} detail {:.3e} (were {:.3e}, {:.3e}, {:.3e})",
                now.0, now.1, now.2, was.0, was.1, was.2
            )
        })
        .into_iter()
        .collect();
    let others: Vec<String> = super::settings_changes(&stored, &cfg)
        .into_iter()
        .filter(|c| !c.starts_with("lr_"))
        .collect();
    if !others.is_empty() {
        notes.push(format!("resumed with {}", others.join(", ")));
    }
    let lr_note = (!notes.is_empty()).then(|| notes.join("; "));
    let mut t = Trainer::new(cfg, device)?;
    let what = describe(&t.cfg.model);
    checkpoint::load_state_dict(&t.g, &dir.join(checkpoint::GENERATOR_FILE), &what)?;
    checkpoint::load_state_dict(&t.d, &dir.join(checkpoint::DISCRIMINATOR_FILE), &what)?;
    if let Some(e) = &t.ema {
        let path = dir.join(checkpoint::GENERATOR_EMA_FILE);
        if path.is_file() {
            checkpoint::load_state_dict(e, &path, &what)?;
        } else {
            // The run kept no average so far: start it from the current weights.
            super::ema::reset(e, &t.g)?;
        }
    }
    load_optimizer(&t.opt_g, &dir.join(OPTIMIZER_G_FILE))?;
    load_optimizer(&t.opt_d, &dir.join(OPTIMIZER_D_FILE))?;
    t.opt_g.step = state.adam_steps.0;
    t.opt_d.step = state.adam_steps.1;
    t.streams.latents = Rng::from_state(state.latents_rng.0, state.latents_rng.1);
    t.streams.regularizers = Rng::from_state(state.regularizers_rng.0, state.regularizers_rng.1);
    t.lr_control = state.lr_control;
    t.lr_control.window = t.cfg.lr_window;
    t.apply_lrs();
    t.epoch = state.epoch;
    t.step = state.step;
    t.g_steps = state.g_steps;
    t.pending_d_steps = state.pending_d_steps;
    t.high_loss_steps = state.high_loss_steps;
    let seconds = state.history.last().map_or(0.0, |h| h.seconds);
    Ok(Restored {
        trainer: t,
        history: state.history,
        seconds,
        lr_note,
        partial: state.partial,
    })
}
