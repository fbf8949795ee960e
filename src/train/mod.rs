//! The GAN training loop (pytorch/examples dcgan's, generalised to `d_steps` D updates per G
//! update) and everything that makes a run survive and report: per-epoch metrics, sample grids,
//! the EMA generator, the dynamic-lr controller, checkpoints every N epochs with resume, the
//! divergence guard and the out-of-memory advice.
//!
//! - [`ema`]: the moving average of G's weights.
//! - [`lr_control`]: the dynamic learning-rate rule.
//! - [`state`]: what a checkpoint holds and how a [`Trainer`] is restored from one.

pub mod device_metrics;
pub mod ema;
pub mod lr_control;
pub mod state;

use crate::backend::{self, Device};
use crate::checkpoint;
use crate::nn::{Ctx, Discriminator, Generator, Mode, ModelConfig, Module, Preset};
use crate::ops;
use crate::optim::Adam;
use crate::rng::Rng;
use crate::tensor::{no_grad, FrozenParams, Tensor};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lr_control::LrControl;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where real images come from: the seam between the training loop and the data pipeline.
pub trait BatchSource {
    /// Images in the set (after `--limit`).
    fn image_count(&self) -> usize;
    fn batches_per_epoch(&self) -> usize;
    /// Reshuffles for epoch `epoch` (0-based) and rewinds.
    fn start_epoch(&mut self, epoch: usize);
    /// Positions the source at batch `batch` of epoch `epoch` (a mid-epoch resume). The default
    /// draws and drops the batches before it.
    fn seek(&mut self, epoch: usize, batch: usize) -> Result<()> {
        self.start_epoch(epoch);
        for _ in 0..batch {
            self.next_batch(Device::Cpu)?;
        }
        Ok(())
    }
    /// The next `[B, 3, S, S]` batch in [-1, 1], or `None` at the end of the epoch.
    fn next_batch(&mut self, device: Device) -> Result<Option<Tensor>>;
    /// The class labels of the last batch (conditional runs); None when unlabelled.
    fn batch_labels(&self) -> Option<Vec<u32>> {
        None
    }
}

impl BatchSource for crate::data::Loader {
    fn image_count(&self) -> usize {
        self.set().len()
    }
    fn batches_per_epoch(&self) -> usize {
        crate::data::Loader::batches_per_epoch(self)
    }
    fn start_epoch(&mut self, epoch: usize) {
        crate::data::Loader::start_epoch(self, epoch)
    }
    fn seek(&mut self, epoch: usize, batch: usize) -> Result<()> {
        crate::data::Loader::seek(self, epoch, batch);
        Ok(())
    }
    fn next_batch(&mut self, device: Device) -> Result<Option<Tensor>> {
        crate::data::Loader::next_batch(self, device)
    }
    fn batch_labels(&self) -> Option<Vec<u32>> {
        self.last_labels()
    }
}

/// Side of the fixed-noise sample grid (8×8 = 64 images, as the seeds save).
pub const GRID_SIDE: usize = 8;

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
    /// Human-readable description of the training data.
    pub data: String,
    /// The data options, so `train --resume` reads the same images.
    #[serde(default)]
    pub data_args: crate::data::DataArgs,
    pub augment: crate::data::Augment,
    pub device: String,
    /// Divergence guard: a loss above this ...
    #[serde(default = "default_diverge_loss")]
    pub diverge_loss: f32,
    /// ... for this many consecutive steps stops the run (as a non-finite loss does at once).
    #[serde(default = "default_diverge_steps")]
    pub diverge_steps: usize,
    /// Conditioning options (issue 13); absent from `config.json` when unconditional.
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

fn is_off(d: &crate::ops::DiffAugment) -> bool {
    !d.is_on()
}

impl TrainConfig {
    /// The preset's recipe with the given architecture.
    pub fn for_model(model: ModelConfig) -> Self {
        let classical = model.preset == Preset::Classical;
        TrainConfig {
            epochs: 5,
            batch_size: 64,
            lr_d: 2e-4,
            lr_g: 2e-4,
            lr_g_detail: if classical { 5e-5 } else { 2e-4 },
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
            data: String::new(),
            data_args: Default::default(),
            augment: crate::data::Augment::NONE,
            device: "cpu".to_string(),
            diverge_loss: DEFAULT_DIVERGE_LOSS,
            diverge_steps: DEFAULT_DIVERGE_STEPS,
            condition: crate::data::ConditionArgs {
                min_images: 8,
                ..Default::default()
            },
            class_table: None,
            diffaugment: Default::default(),
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
        if self.eval_every > 0 && self.eval_count < 2 {
            bail!("--eval-count must be at least 2");
        }
        Ok(())
    }

    /// Classes of the conditional models (0: unconditional).
    pub fn classes(&self) -> usize {
        self.class_table.as_ref().map_or(0, |t| t.len())
    }

    /// The base lr of a generator parameter group.
    fn generator_base_lr(&self, group: &str) -> f32 {
        if group == "detail" {
            self.lr_g_detail
        } else {
            self.lr_g
        }
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
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an artgan training configuration ({e})",
            path.display()
        )
    })
}

/// The settings a resume may change, as (name, value) for the run's history.
fn resumable_settings(c: &TrainConfig) -> Vec<(&'static str, String)> {
    vec![
        ("epochs", c.epochs.to_string()),
        ("lr_d", format!("{:e}", c.lr_d)),
        ("lr_g", format!("{:e}", c.lr_g)),
        ("lr_g_detail", format!("{:e}", c.lr_g_detail)),
        ("sample_every", c.sample_every.to_string()),
        ("checkpoint_every", c.checkpoint_every.to_string()),
        ("keep_checkpoints", c.keep_checkpoints.to_string()),
        ("eval_every", c.eval_every.to_string()),
        ("eval_count", c.eval_count.to_string()),
        ("device", c.device.clone()),
        ("diverge_loss", format!("{:e}", c.diverge_loss)),
        ("diverge_steps", c.diverge_steps.to_string()),
    ]
}

/// The resumable settings that differ between `old` and `new`, as `name old -> new`.
pub fn settings_changes(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    resumable_settings(old)
        .into_iter()
        .zip(resumable_settings(new))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| format!("{name} {a} -> {b}"))
        .collect()
}

/// The run's history of sessions, one JSON line per start or resume, only ever appended.
pub const SESSIONS_FILE: &str = "sessions.jsonl";

/// Appends this session to `RUN/sessions.jsonl`: when and by which process it started, from
/// which epoch, with which resumable settings, and what changed since the previous session
/// (`previous`: the run's config before this resume). Earlier lines are never rewritten, so
/// the record of what earlier epochs were trained with survives every resume.
pub fn record_session(
    run_dir: &Path,
    cfg: &TrainConfig,
    previous: Option<&TrainConfig>,
    from_epoch: usize,
) -> Result<()> {
    use std::io::Write;
    let settings: serde_json::Map<String, serde_json::Value> = resumable_settings(cfg)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let line = serde_json::json!({
        "started": crate::run_lock::utc_now(),
        "pid": std::process::id(),
        "resume": previous.is_some(),
        "from_epoch": from_epoch,
        "settings": settings,
        "changed": previous.map(|p| settings_changes(p, cfg)).unwrap_or_default(),
    });
    let path = run_dir.join(SESSIONS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A run stopped by SIGINT/SIGTERM after writing a mid-epoch checkpoint: the CLI prints it and
/// exits with status 130.
#[derive(Debug)]
pub struct Interrupted {
    pub message: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

/// Installs (once per process) the SIGINT/SIGTERM handlers of a training run and returns the
/// flag they set: the loop finishes its step, checkpoints and stops. A second signal while
/// the flag is set exits at once with status 130 (signal-hook's conditional shutdown).
pub fn install_interrupt_handler() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, OnceLock};
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the exit action runs only when the flag was already set before this
        // signal, then the flag is set.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
            .context("cannot install the interrupt handler")?;
        signal_hook::flag::register(sig, flag.clone())
            .context("cannot install the interrupt handler")?;
    }
    Ok(FLAG.get_or_init(|| flag).clone())
}

/// Epoch means, one row of `metrics.csv` (empty cells for absent values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// Batches (D steps) processed so far.
    pub step: usize,
    /// Seconds of training so far (summed over resumed sessions).
    pub seconds: f64,
    pub loss_d: f32,
    /// Absent when no G step happened in the epoch.
    pub loss_g: Option<f32>,
    /// Mean D(x) on real images, as a probability.
    pub d_x: f32,
    /// Mean D(G(z)) on the fakes of the D steps, as a probability.
    pub d_g_z: f32,
    /// Learning rates at the end of the epoch.
    pub lr_d: f32,
    pub lr_g: f32,
    pub lr_g_detail: f32,
    /// The dynamic-lr decisions of the epoch, `; `-separated (empty when none).
    pub lr_changes: String,
    /// SWD×10³ of the sampling generator (empty when not evaluated this epoch).
    pub swd: Option<f32>,
}

pub struct TrainOutcome {
    pub generator: Generator,
    /// The EMA generator (when the run keeps one).
    pub generator_ema: Option<Generator>,
    pub discriminator: Discriminator,
    pub history: Vec<EpochStats>,
    /// The newest checkpoint folder written.
    pub last_checkpoint: Option<PathBuf>,
}

/// The random streams of a run, derived from its seed so they never shift each other.
pub struct Streams {
    pub latents: Rng,
    pub regularizers: Rng,
}

/// The 64 fixed latents of the sample grids (drawn once from the seed).
pub fn fixed_noise(seed: u64, nz: usize, device: Device) -> Result<Tensor> {
    let mut rng = Rng::derive(seed, "fixed-noise");
    Tensor::randn(
        &[GRID_SIDE * GRID_SIDE, nz, 1, 1],
        0.0,
        1.0,
        &mut rng,
        device,
    )
}

/// G and D initialised from the seed.
pub fn build_models(
    model: &ModelConfig,
    seed: u64,
    device: Device,
) -> Result<(Generator, Discriminator)> {
    build_conditional_models(model, 0, seed, device)
}

/// G and D for `classes` classes (0: [`build_models`]) initialised from the seed.
pub fn build_conditional_models(
    model: &ModelConfig,
    classes: usize,
    seed: u64,
    device: Device,
) -> Result<(Generator, Discriminator)> {
    let g = Generator::conditional(
        model,
        classes,
        &mut Rng::derive(seed, "init-generator"),
        device,
    )?;
    let d = Discriminator::conditional(
        model,
        classes,
        &mut Rng::derive(seed, "init-discriminator"),
        device,
    )?;
    Ok((g, d))
}

/// Adam for G: one group per stage (`main`, or `initial` + `detail`).
pub fn generator_optimizer(g: &Generator, cfg: &TrainConfig) -> Result<Adam> {
    let mut opt = Adam::new(cfg.beta1, cfg.beta2, 1e-8);
    for (name, params) in g.param_groups() {
        opt.add_group(&name, cfg.generator_base_lr(&name), params)?;
    }
    Ok(opt)
}

pub fn discriminator_optimizer(d: &Discriminator, cfg: &TrainConfig) -> Result<Adam> {
    let mut opt = Adam::new(cfg.beta1, cfg.beta2, 1e-8);
    opt.add_group("main", cfg.lr_d, d.parameters())?;
    Ok(opt)
}

/// Images of G for `z` with batch statistics, changing no state (see [`Mode::BatchStats`]).
pub fn generate_for_grid(g: &Generator, z: &Tensor) -> Result<Vec<f32>> {
    generate_for_grid_labeled(g, z, None)
}

/// [`generate_for_grid`] with one class label per latent (conditional generators).
pub fn generate_for_grid_labeled(
    g: &Generator,
    z: &Tensor,
    labels: Option<&[u32]>,
) -> Result<Vec<f32>> {
    let _guard = no_grad();
    let mut unused = Rng::new(0);
    g.forward(
        z,
        &mut Ctx::new(Mode::BatchStats, &mut unused).labeled(labels),
    )?
    .to_vec()
}

/// Labels of the fixed 8×8 grid of a conditional run: row r shows class r (mod the classes).
pub fn grid_labels(classes: usize) -> Option<Vec<u32>> {
    (classes > 0).then(|| {
        (0..GRID_SIDE * GRID_SIDE)
            .map(|i| ((i / GRID_SIDE) % classes) as u32)
            .collect()
    })
}

/// The per-class grid of a conditional run: one row per class, the first 8 fixed latents in
/// every row (so the columns compare classes at equal latents), generated 8 classes at a time.
pub fn class_grid_images(g: &Generator, fixed: &Tensor) -> Result<Vec<f32>> {
    let nz = g.config.nz;
    let z_all = fixed.to_vec()?;
    let row = &z_all[..GRID_SIDE * nz];
    let mut out = Vec::new();
    let classes: Vec<u32> = (0..g.classes as u32).collect();
    for chunk in classes.chunks(GRID_SIDE) {
        let mut z = Vec::with_capacity(chunk.len() * row.len());
        let mut labels = Vec::with_capacity(chunk.len() * GRID_SIDE);
        for &k in chunk {
            z.extend_from_slice(row);
            labels.extend(std::iter::repeat_n(k, GRID_SIDE));
        }
        let z = Tensor::from_vec(z, &[labels.len(), nz, 1, 1], fixed.device())?;
        out.extend(generate_for_grid_labeled(g, &z, Some(&labels))?);
    }
    Ok(out)
}

/// What one training step did (for metrics).
pub struct StepStats {
    pub loss_d: f32,
    pub d_x: f32,
    pub d_g_z: f32,
    /// Present when this batch also updated G.
    pub loss_g: Option<f32>,
    /// Present when the dynamic-lr rule changed the lrs after this step.
    pub lr_change: Option<String>,
}

/// The models, optimisers, random streams and controllers of a run: one call of
/// [`Trainer::step`] per real batch. Everything here is saved in a checkpoint ([`state`]).
pub struct Trainer {
    pub cfg: TrainConfig,
    pub g: Generator,
    pub d: Discriminator,
    /// Moving average of `g`'s weights (when `cfg.ema`).
    pub ema: Option<Generator>,
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub streams: Streams,
    pub lr_control: LrControl,
    /// D steps since the last G step.
    pub pending_d_steps: usize,
    /// D steps (batches) done.
    pub step: usize,
    /// G steps done.
    pub g_steps: u64,
    /// Epochs completed.
    pub epoch: usize,
    /// Consecutive steps with a loss above `cfg.diverge_loss` (the divergence guard).
    pub high_loss_steps: usize,
    /// Metrics of the steps not read yet (kept on the device; see [`device_metrics`]).
    pub metrics: device_metrics::DeviceMetrics,
}

impl Trainer {
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let classes = cfg.classes();
        let (g, d) = build_conditional_models(&cfg.model, classes, cfg.seed, device)?;
        let ema = if cfg.ema {
            let e = Generator::conditional(&cfg.model, classes, &mut Rng::new(0), device)?;
            ema::reset(&e, &g)?;
            Some(e)
        } else {
            None
        };
        let opt_g = generator_optimizer(&g, &cfg)?;
        let opt_d = discriminator_optimizer(&d, &cfg)?;
        d.set_noise_std(cfg.noise_std);
        Ok(Trainer {
            streams: Streams {
                latents: Rng::derive(cfg.seed, "latents"),
                regularizers: Rng::derive(cfg.seed, "regularizers"),
            },
            lr_control: LrControl::new(cfg.lr_window),
            cfg,
            g,
            d,
            ema,
            opt_g,
            opt_d,
            pending_d_steps: 0,
            step: 0,
            g_steps: 0,
            epoch: 0,
            high_loss_steps: 0,
            metrics: Default::default(),
        })
    }

    /// The generator to sample with: the EMA one when kept.
    pub fn sampling_generator(&self) -> &Generator {
        self.ema.as_ref().unwrap_or(&self.g)
    }

    /// Sets every group's lr from the config's base lrs and the controller's level.
    pub fn apply_lrs(&mut self) {
        let (gs, ds) = if self.cfg.dynamic_lr {
            (
                self.lr_control.generator_scale(),
                self.lr_control.discriminator_scale(),
            )
        } else {
            (1.0, 1.0)
        };
        for group in &mut self.opt_g.groups {
            group.lr = self.cfg.generator_base_lr(&group.name) * gs;
        }
        for group in &mut self.opt_d.groups {
            group.lr = self.cfg.lr_d * ds;
        }
    }

    /// Current lrs as (D, G main/initial, G detail).
    pub fn lrs(&self) -> (f32, f32, f32) {
        let g = |name: &str| self.opt_g.groups.iter().find(|g| g.name == name);
        let main = g("main")
            .or_else(|| g("initial"))
            .map_or(f32::NAN, |g| g.lr);
        let detail = g("detail").map_or(main, |g| g.lr);
        (self.opt_d.groups[0].lr, main, detail)
    }

    /// One D update on `real` (real → 1, G's detached fake → 0) and, every `d_steps`-th call,
    /// one non-saturating G update (D(G(z)) → 1) reusing that fake, as pytorch/examples does;
    /// then the EMA update and the dynamic-lr rule.
    pub fn step(&mut self, real: &Tensor) -> Result<StepStats> {
        self.step_labeled(real, None)
    }

    /// The D input: `x` through DiffAugment when the run uses it (fresh per-sample parameters
    /// from the regularizer stream on every call, so a resumed run draws the same ones).
    fn d_input(&mut self, x: &Tensor) -> Result<Tensor> {
        if !self.cfg.diffaugment.is_on() {
            return Ok(x.clone());
        }
        let seed = self.streams.regularizers.next_u64();
        ops::diff_augment(x, self.cfg.diffaugment, seed)
    }

    /// [`Trainer::step`] for a conditional run: `labels` are the real batch's classes, and
    /// the fakes of this step are drawn for the same classes (so classes are sampled in
    /// proportion to the data).
    pub fn step_labeled(&mut self, real: &Tensor, labels: Option<&[u32]>) -> Result<StepStats> {
        self.step_deferred(real, labels)?;
        let last = self.read_metrics()?.pop().expect("the step just recorded");
        Ok(last.stats)
    }

    /// [`Trainer::step_labeled`] without reading anything back: the step's losses and D outputs
    /// stay on the device in [`Trainer::metrics`] until [`Trainer::read_metrics`], and the
    /// dynamic-lr rule runs there. Makes the host wait for the device nowhere.
    pub fn step_deferred(&mut self, real: &Tensor, labels: Option<&[u32]>) -> Result<()> {
        let b = real.shape()[0];
        let classes = self.cfg.classes();
        match labels {
            None if classes > 0 => bail!("a conditional run needs the class labels of each batch"),
            Some(l) if classes == 0 => {
                bail!("{} class labels given to an unconditional run", l.len())
            }
            _ => {}
        }
        let nz = self.cfg.model.nz;
        let z = Tensor::randn(
            &[b, nz, 1, 1],
            0.0,
            1.0,
            &mut self.streams.latents,
            real.device(),
        )?;
        let update_g = self.pending_d_steps + 1 >= self.cfg.d_steps;

        // ---- D step
        self.opt_d.zero_grad();
        let real_in = self.d_input(real)?;
        let out_real = self.d.forward(
            &real_in,
            &mut Ctx::new(Mode::Train, &mut self.streams.regularizers).labeled(labels),
        )?;
        let loss_real = ops::bce_with_logits(&out_real, 1.0)?;
        let fake = if update_g {
            // Keep G's graph: the G step below back-propagates through this same fake.
            self.g.forward(
                &z,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers).labeled(labels),
            )?
        } else {
            let _guard = no_grad();
            self.g.forward(
                &z,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers).labeled(labels),
            )?
        };
        let fake_in = self.d_input(&fake.detach())?;
        let out_fake = self.d.forward(
            &fake_in,
            &mut Ctx::new(Mode::Train, &mut self.streams.regularizers).labeled(labels),
        )?;
        let loss_fake = ops::bce_with_logits(&out_fake, 0.0)?;
        let loss_d = ops::add(&loss_real, &loss_fake)?;
        loss_d.backward()?;
        self.opt_d.step()?;
        let mut loss_g_on_device = None;

        // ---- G step
        if update_g {
            self.pending_d_steps = 0;
            self.opt_g.zero_grad();
            // D's own gradients are not used by the G step: freezing D's parameters skips their
            // backward-filter and batch-norm parameter gradients (only the input gradients flow).
            let frozen = FrozenParams::new(self.d.parameters().into_iter().map(|(_, t)| t))?;
            let fake_in = self.d_input(&fake)?;
            let out = self.d.forward(
                &fake_in,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers).labeled(labels),
            )?;
            let loss_g = ops::bce_with_logits(&out, 1.0)?;
            loss_g.backward()?;
            drop(frozen);
            self.opt_g.step()?;
            // D's gradients from this backward are not used: the next D step zeroes them.
            self.d.zero_grad();
            loss_g_on_device = Some(loss_g);
            self.g_steps += 1;
            if let Some(e) = &self.ema {
                let rampup = (self.cfg.ema_rampup > 0.0).then_some(self.cfg.ema_rampup);
                let images = self.g_steps * b as u64;
                let beta = ema::decay(b, images, self.cfg.ema_half_life_images, rampup);
                ema::update(e, &self.g, beta)?;
            }
        } else {
            self.pending_d_steps += 1;
        }
        self.step += 1;
        self.metrics.push(
            self.step,
            &loss_d,
            loss_g_on_device.as_ref(),
            &out_real,
            &out_fake,
        );
        Ok(())
    }

    /// Whether the loop must read the metrics after this step: the end of a window of
    /// `--lr-window` steps (the dynamic-lr rule decides there, and the divergence guard looks).
    pub fn metrics_due(&self) -> bool {
        let pending = self.metrics.len();
        pending > 0
            && (self.step.is_multiple_of(self.cfg.lr_window.max(1))
                || (self.cfg.dynamic_lr
                    && self.lr_control.gap_steps + pending >= self.lr_control.window))
    }

    /// Reads the pending steps' metrics (one download) and runs the dynamic-lr rule over them
    /// in order, as if each had been read right after its step.
    pub fn read_metrics(&mut self) -> Result<Vec<device_metrics::StepRecord>> {
        let mut records = self.metrics.read()?;
        if !self.cfg.dynamic_lr {
            return Ok(records);
        }
        let last = records.len().saturating_sub(1);
        for (i, r) in records.iter_mut().enumerate() {
            let stats = &mut r.stats;
            if let Some(ch) = self.lr_control.observe(stats.d_x, stats.d_g_z) {
                if i != last {
                    bail!(
                        "the dynamic-lr window ended at step {} but the metrics were read only \
                         after step {} (its new lrs would have come late)",
                        r.step,
                        self.step
                    );
                }
                self.apply_lrs();
                let (d, g, detail) = self.lrs();
                let detail = if self.cfg.model.preset == Preset::Classical {
                    format!(" detail {detail:.3e}")
                } else {
                    String::new()
                };
                stats.lr_change = Some(format!(
                    "step {}: mean D(x)-D(G(z)) {:.3}, level {} -> {}: lr D {d:.3e} G {g:.3e}{detail}",
                    r.step, ch.mean_gap, ch.old_level, ch.new_level
                ));
            }
        }
        Ok(records)
    }

    /// Classical input-noise schedule: `noise_std · (1 − progress)`, progress in [0, 1].
    pub fn set_progress(&self, progress: f32) {
        self.d
            .set_noise_std(self.cfg.noise_std * (1.0 - progress.clamp(0.0, 1.0)));
    }
}

/// Computes the quality metric (SWD×10³) of a generator, for `eval_every`.
pub type Evaluator<'a> = dyn FnMut(&Generator) -> Result<f32> + 'a;

/// Options of [`train`] that are not part of the recipe.
pub struct RunOptions<'a> {
    pub out: PathBuf,
    pub device: Device,
    /// Show the progress bar (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Print the per-epoch lines.
    pub verbose: bool,
    /// Continue from this checkpoint folder (see [`checkpoint::latest_checkpoint`]).
    pub resume_from: Option<PathBuf>,
    /// Stop after this epoch's checkpoint as if the process had been stopped (tests, and
    /// training in slices); `cfg.epochs` still sets the schedule.
    pub stop_after_epoch: Option<usize>,
    /// Needed when `cfg.eval_every > 0`.
    pub evaluator: Option<Box<Evaluator<'a>>>,
    /// Set (by a signal handler) to stop after the current step with a mid-epoch checkpoint.
    pub interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Called after every step with the step count (tests watch what a step costs with it).
    pub on_step: Option<Box<dyn FnMut(usize) + 'a>>,
}

impl RunOptions<'_> {
    pub fn new(out: PathBuf, device: Device) -> Self {
        RunOptions {
            out,
            device,
            progress: false,
            verbose: false,
            resume_from: None,
            stop_after_epoch: None,
            evaluator: None,
            interrupt: None,
            on_step: None,
        }
    }
}

fn write_metrics(path: &Path, rows: &[EpochStats]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().context("writing metrics.csv")?;
    checkpoint::write_atomic(path, &bytes)
}

fn save_grid(g: &Generator, z: &Tensor, dir: &Path, epoch: usize) -> Result<PathBuf> {
    if g.classes > 0 {
        let images = class_grid_images(g, z)?;
        crate::data::save_grid_png(
            &images,
            g.classes * GRID_SIDE,
            g.config.image_size,
            GRID_SIDE,
            &dir.join(format!("classes-epoch-{epoch:04}.png")),
        )?;
    }
    let labels = grid_labels(g.classes);
    let images = generate_for_grid_labeled(g, z, labels.as_deref())?;
    let path = dir.join(format!("epoch-{epoch:04}.png"));
    crate::data::save_grid_png(
        &images,
        GRID_SIDE * GRID_SIDE,
        g.config.image_size,
        GRID_SIDE,
        &path,
    )?;
    Ok(path)
}

/// Trains up to `cfg.epochs` epochs, writing into `opts.out` (which must exist): `config.json`
/// first, then per epoch a row of `metrics.csv`, `samples/epoch-NNNN.png` (epoch 0 = untrained
/// G) and every `checkpoint_every` epochs a checkpoint folder; at the end the model files
/// (`generator.safetensors`, `generator_ema.safetensors`, `discriminator.safetensors`).
/// With `opts.resume_from` it continues from that checkpoint instead of starting afresh.
pub fn train(
    cfg: TrainConfig,
    data: &mut dyn BatchSource,
    opts: &mut RunOptions,
) -> Result<TrainOutcome> {
    let batches = data.batches_per_epoch();
    if batches == 0 {
        bail!(
            "the dataset has {} images, fewer than one batch of {}: lower --batch-size",
            data.image_count(),
            cfg.batch_size
        );
    }
    if cfg.eval_every > 0 && opts.evaluator.is_none() {
        bail!("eval_every is set but no evaluator was given");
    }
    let (mut trainer, mut history, seconds_before, mut resume_note, mut partial) =
        match &opts.resume_from {
            Some(dir) => {
                let r = state::restore(cfg, dir, opts.device)?;
                (r.trainer, r.history, r.seconds, r.lr_note, r.partial)
            }
            None => (Trainer::new(cfg, opts.device)?, Vec::new(), 0.0, None, None),
        };
    let resumed = opts.resume_from.is_some();
    let cfg = trainer.cfg.clone();
    checkpoint::save_config(&opts.out, &cfg)?;
    let samples_dir = opts.out.join("samples");
    std::fs::create_dir_all(&samples_dir)
        .with_context(|| format!("cannot create {}", samples_dir.display()))?;
    let fixed = fixed_noise(cfg.seed, cfg.model.nz, opts.device)?;
    if !resumed {
        // A folder trained into again (--force): the old final weights' manifest must not
        // vouch for anything of this run.
        checkpoint::remove_manifest(&opts.out)?;
        save_grid(trainer.sampling_generator(), &fixed, &samples_dir, 0)?;
        crate::report::write_report(&opts.out).context("writing the run's index.html")?;
    } else {
        // Resumed: epochs after the checkpoint are redone, so their rows go.
        write_metrics(&opts.out.join("metrics.csv"), &history)?;
        // The top-level model files belong to the finished run; they are rewritten at the end
        // (their manifest first, so no manifest ever vouches for missing files).
        checkpoint::remove_manifest(&opts.out)?;
        for f in [
            checkpoint::GENERATOR_FILE,
            checkpoint::GENERATOR_EMA_FILE,
            checkpoint::DISCRIMINATOR_FILE,
        ] {
            let _ = std::fs::remove_file(opts.out.join(f));
        }
    }

    let total = (cfg.epochs * batches) as u64;
    let bar = if opts.progress && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(trainer.step as u64);
    let verbose = opts.verbose;
    let say = |line: &str| {
        if verbose {
            bar.suspend(|| println!("{line}"));
        }
    };

    let start = Instant::now();
    let mut last_checkpoint = None;
    for epoch in trainer.epoch + 1..=cfg.epochs {
        bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
        let mut acc = match partial.take() {
            // Resuming inside this epoch: the loader where it was, the sums so far.
            Some(p) => {
                data.seek(epoch - 1, p.batch)?;
                p
            }
            None => {
                data.start_epoch(epoch - 1);
                state::PartialEpoch::default()
            }
        };
        acc.lr_changes.extend(resume_note.take());
        while let Some(real) = data.next_batch(opts.device)? {
            trainer.set_progress(trainer.step as f32 / total as f32);
            let labels = data.batch_labels();
            match trainer.step_deferred(&real, labels.as_deref()) {
                Ok(()) => {}
                Err(e) if backend::is_out_of_memory(&e) => {
                    let (cfg, device) = (trainer.cfg.clone(), opts.device);
                    drop(trainer);
                    return Err(out_of_memory_advice(e, &cfg, device));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("training step {}", trainer.step + 1))
                }
            };
            let interrupted = opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
            // The host waits for the device only here: at the end of a window, or to write
            // the interrupted epoch's sums.
            if interrupted || trainer.metrics_due() {
                absorb_metrics(&mut trainer, &mut acc, epoch, &opts.out, &say, &bar)?;
            }
            bar.inc(1);
            if let Some(on_step) = opts.on_step.as_mut() {
                on_step(trainer.step);
            }
            if interrupted {
                bar.finish_and_clear();
                return Err(interrupt(
                    &trainer, &history, &acc, &opts.out, epoch, batches,
                ));
            }
        }
        absorb_metrics(&mut trainer, &mut acc, epoch, &opts.out, &say, &bar)?;
        trainer.epoch = epoch;
        let state::PartialEpoch {
            sum_d,
            sum_x,
            sum_gz,
            n_d,
            sum_g,
            n_g,
            lr_changes,
            ..
        } = acc;
        let n_d = n_d.max(1) as f64;
        let (lr_d, lr_g, lr_g_detail) = trainer.lrs();
        let mut stats = EpochStats {
            epoch,
            step: trainer.step,
            seconds: seconds_before + start.elapsed().as_secs_f64(),
            loss_d: (sum_d / n_d) as f32,
            loss_g: (n_g > 0).then(|| (sum_g / n_g as f64) as f32),
            d_x: (sum_x / n_d) as f32,
            d_g_z: (sum_gz / n_d) as f32,
            lr_d,
            lr_g,
            lr_g_detail,
            lr_changes: lr_changes.join("; "),
            swd: None,
        };
        if cfg.eval_every > 0 && (epoch % cfg.eval_every == 0 || epoch == cfg.epochs) {
            let evaluate = opts.evaluator.as_mut().expect("checked above");
            stats.swd = Some(evaluate(trainer.sampling_generator()).context("evaluating SWD")?);
        }
        say(&format!(
            "epoch {:>3}/{}  step {:>6}  {:>7.1}s  loss_d {:.4}  loss_g {}  D(x) {:.3}  D(G(z)) {:.3}{}",
            stats.epoch,
            cfg.epochs,
            stats.step,
            stats.seconds,
            stats.loss_d,
            stats.loss_g.map_or("-".to_string(), |l| format!("{l:.4}")),
            stats.d_x,
            stats.d_g_z,
            stats.swd.map_or(String::new(), |s| format!("  SWD {s:.2}"))
        ));
        history.push(stats);
        write_metrics(&opts.out.join("metrics.csv"), &history)?;
        if epoch % cfg.sample_every == 0 || epoch == cfg.epochs {
            let p = save_grid(trainer.sampling_generator(), &fixed, &samples_dir, epoch)?;
            say(&format!("  wrote {}", p.display()));
        }
        let stopping = opts.stop_after_epoch == Some(epoch);
        if epoch % cfg.checkpoint_every == 0 || epoch == cfg.epochs || stopping {
            let files = state::checkpoint_files(&trainer, &history)?;
            let dir = checkpoint::write_checkpoint(&opts.out, epoch, &files)?;
            checkpoint::prune_checkpoints(&opts.out, cfg.keep_checkpoints)?;
            say(&format!("  checkpoint {}", dir.display()));
            last_checkpoint = Some(dir);
        }
        refresh_report(&opts.out, &bar);
        if stopping {
            break;
        }
    }
    bar.finish_and_clear();
    if trainer.epoch == cfg.epochs {
        let meta = checkpoint::model_metadata;
        let mut files = vec![
            (
                checkpoint::GENERATOR_FILE,
                checkpoint::state_dict_bytes(&trainer.g, meta())?,
            ),
            (
                checkpoint::DISCRIMINATOR_FILE,
                checkpoint::state_dict_bytes(&trainer.d, meta())?,
            ),
        ];
        if let Some(e) = &trainer.ema {
            files.push((
                checkpoint::GENERATOR_EMA_FILE,
                checkpoint::state_dict_bytes(e, meta())?,
            ));
        }
        checkpoint::save_final_models(&opts.out, &files)?;
    }
    refresh_report(&opts.out, &bar);
    Ok(TrainOutcome {
        generator: trainer.g,
        generator_ema: trainer.ema,
        discriminator: trainer.d,
        history,
        last_checkpoint,
    })
}

/// Reads the steps' metrics kept on the device (one download) and takes them in order: the
/// divergence guard (naming the first bad step), the epoch's sums, dynamic-lr notes and the
/// progress bar's line.
fn absorb_metrics(
    trainer: &mut Trainer,
    acc: &mut state::PartialEpoch,
    epoch: usize,
    out: &Path,
    say: &dyn Fn(&str),
    bar: &ProgressBar,
) -> Result<()> {
    let records = trainer.read_metrics()?;
    let cfg = &trainer.cfg;
    for r in records {
        let s = r.stats;
        let loss_above = |l: f32| l > cfg.diverge_loss;
        if loss_above(s.loss_d) || s.loss_g.is_some_and(loss_above) {
            trainer.high_loss_steps += 1;
        } else {
            trainer.high_loss_steps = 0;
        }
        if trainer.high_loss_steps >= cfg.diverge_steps {
            bail!(
                "training diverged at step {} (epoch {epoch}): a loss stayed above {} for \
                 {} consecutive steps (loss_d {}, loss_g {}). Nothing after the last good \
                 checkpoint was saved ({}); resume from it with a lower learning rate, e.g. \
                 `artgan train --resume {} --lr {:.1e}`",
                r.step,
                cfg.diverge_loss,
                cfg.diverge_steps,
                s.loss_d,
                s.loss_g.map_or("-".to_string(), |l| l.to_string()),
                last_good(out),
                out.display(),
                suggested_lr(cfg)
            );
        }
        if !s.loss_d.is_finite() || s.loss_g.is_some_and(|l| !l.is_finite()) {
            bail!(
                "training diverged at step {} (epoch {epoch}): loss_d {}, loss_g {}. Nothing \
                 after the last good checkpoint was saved ({}); resume from it with a lower \
                 learning rate, e.g. `artgan train --resume {} --lr {:.1e}`",
                r.step,
                s.loss_d,
                s.loss_g.map_or("-".to_string(), |l| l.to_string()),
                last_good(out),
                out.display(),
                suggested_lr(cfg)
            );
        }
        acc.add(&s);
        if let Some(note) = s.lr_change {
            say(&format!("  {note}"));
            acc.lr_changes.push(note);
        }
        bar.set_message(format!(
            "loss_d {:.3} loss_g {} D(x) {:.2} D(G(z)) {:.2}",
            s.loss_d,
            s.loss_g.map_or("-".to_string(), |l| format!("{l:.3}")),
            s.d_x,
            s.d_g_z
        ));
    }
    Ok(())
}

/// Rewrites the run's charts and `index.html`. A failure here (a full disk, say) is reported
/// but does not stop training: the next epoch tries again.
fn refresh_report(run_dir: &Path, bar: &ProgressBar) {
    if let Err(e) = crate::report::write_report(run_dir) {
        bar.suspend(|| eprintln!("warning: could not update the run report: {e:#}"));
    }
}

/// A lower learning rate to suggest after a divergence: half the D rate, and at most 2e-4.
fn suggested_lr(cfg: &TrainConfig) -> f32 {
    (cfg.lr_d / 2.0).min(2e-4)
}

/// Writes the mid-epoch checkpoint of an interrupted run and returns the [`Interrupted`]
/// error saying how to resume.
fn interrupt(
    trainer: &Trainer,
    history: &[EpochStats],
    acc: &state::PartialEpoch,
    out: &Path,
    epoch: usize,
    batches: usize,
) -> anyhow::Error {
    let written =
        state::checkpoint_files_mid_epoch(trainer, history, Some(acc)).and_then(|files| {
            let dir = checkpoint::write_checkpoint_at(out, trainer.epoch, acc.batch, &files)?;
            checkpoint::prune_checkpoints(out, trainer.cfg.keep_checkpoints)?;
            Ok(dir)
        });
    match written {
        Ok(dir) => Interrupted {
            message: format!(
                "interrupted at step {} (epoch {epoch}, batch {} of {batches}): wrote checkpoint \
                 {}; continue with `artgan train --resume {}`",
                trainer.step,
                acc.batch,
                dir.display(),
                out.display()
            ),
        }
        .into(),
        Err(e) => e.context(format!(
            "interrupted at step {}, but the checkpoint could not be written; the last good one \
             is {}",
            trainer.step,
            last_good(out)
        )),
    }
}

/// The newest complete checkpoint of a run, for messages.
fn last_good(run_dir: &Path) -> String {
    match checkpoint::latest_checkpoint(run_dir) {
        Ok(Some((_, p))) => p.display().to_string(),
        _ => "there is none yet".to_string(),
    }
}

/// The largest batch size in `[2, failed)` for which `fits` holds, assuming that whatever fits
/// at some size also fits at every smaller one: a bisection, `log2(failed)` probes.
pub fn largest_fitting_batch(
    failed: usize,
    mut fits: impl FnMut(usize) -> Result<bool>,
) -> Result<Option<usize>> {
    // Invariant: everything < lo + 1 known to fit (lo = 1: none known), hi known not to.
    let (mut lo, mut hi) = (1usize, failed);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((lo >= 2).then_some(lo))
}

/// Turns an out-of-memory error of a training step into advice: it probes (one throw-away
/// step on random images per try) for the largest batch size that fits on this device.
fn out_of_memory_advice(e: anyhow::Error, cfg: &TrainConfig, device: Device) -> anyhow::Error {
    let release = || {
        if let Ok(b) = backend::backend(device) {
            let _ = b.release_cached_memory();
        }
    };
    release();
    let probe = |batch: usize| -> Result<bool> {
        let mut c = cfg.clone();
        c.batch_size = batch;
        c.d_steps = 1; // the probe step must include G's update
        let result = (|| {
            let mut t = Trainer::new(c, device)?;
            let s = cfg.model.image_size;
            // Filled on the device: the values do not matter, only the memory.
            let real = Tensor::full(&[batch, 3, s, s], 0.5, device)?;
            // A conditional run's step needs labels; any class will do for the memory.
            let labels = vec![0u32; batch];
            t.step_labeled(&real, (cfg.classes() > 0).then_some(labels.as_slice()))?;
            backend::backend(device)?.synchronize()
        })();
        release();
        match result {
            Ok(()) => Ok(true),
            Err(e) if backend::is_out_of_memory(&e) => Ok(false),
            Err(e) => Err(e),
        }
    };
    let advice = match largest_fitting_batch(cfg.batch_size, probe) {
        Ok(Some(b)) => format!(
            "a batch of {b} fits on this device: rerun with --batch-size {b} (or lower, to \
             leave room)"
        ),
        Ok(None) => {
            "not even a batch of 2 fits: choose a smaller --image-size or --ngf/--ndf".to_string()
        }
        Err(probe_err) => format!("could not probe a smaller batch ({probe_err:#})"),
    };
    anyhow::anyhow!(
        "out of GPU memory at batch size {} ({} px, ngf {}, ndf {}): {advice}. Cause: {e:#}",
        cfg.batch_size,
        cfg.model.image_size,
        cfg.model.ngf,
        cfg.model.ndf
    )
}
