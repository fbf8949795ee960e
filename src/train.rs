//! The GAN training loop (pytorch/examples dcgan's, generalised to `d_steps` D updates per G
//! update), per-epoch metrics, sample grids and the final checkpoint.

use crate::backend::Device;
use crate::checkpoint;
use crate::nn::{Ctx, Discriminator, Generator, Mode, ModelConfig, Module, Preset};
use crate::ops;
use crate::optim::Adam;
use crate::rng::Rng;
use crate::tensor::{no_grad, Tensor};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    /// The next `[B, 3, S, S]` batch in [-1, 1], or `None` at the end of the epoch.
    fn next_batch(&mut self, device: Device) -> Result<Option<Tensor>>;
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
    fn next_batch(&mut self, device: Device) -> Result<Option<Tensor>> {
        crate::data::Loader::next_batch(self, device)
    }
}

/// Side of the fixed-noise sample grid (8×8 = 64 images, as the seeds save).
pub const GRID_SIDE: usize = 8;

/// Classical preset's dynamic learning-rate rule (seed 001 only says "if the discriminator's
/// performance exceeded a predefined threshold, the learning rates of both generator stages were
/// adjusted"): after an epoch whose mean D(x) − D(G(z)) exceeds this gap, both generator stage
/// learning rates grow by [`DYNAMIC_LR_FACTOR`] (at most [`DYNAMIC_LR_MAX`]× their base); after
/// an epoch below it they shrink by the same factor back towards (never below) their base.
pub const DYNAMIC_LR_GAP: f32 = 0.5;
pub const DYNAMIC_LR_FACTOR: f32 = 1.25;
pub const DYNAMIC_LR_MAX: f32 = 4.0;

/// Everything a training run needs; written to `config.json` (with the model config
/// flattened so `sample` can rebuild the generator).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    #[serde(flatten)]
    pub model: ModelConfig,
    pub epochs: usize,
    pub batch_size: usize,
    /// Discriminator lr; generator lr for dcgan and the classical "initial" stage.
    pub lr: f32,
    /// Classical "detail" stage lr (seed: 5e-5 = lr/4); equals `lr` for dcgan.
    pub lr_detail: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub d_steps: usize,
    pub sample_every: usize,
    pub seed: u64,
    /// Classical only: std of D's input noise at the start (linearly decayed to 0).
    pub noise_std: f32,
    pub dynamic_lr: bool,
    /// Human-readable description of the training data.
    pub data: String,
    pub device: String,
}

impl TrainConfig {
    /// The preset's recipe with the given architecture.
    pub fn for_model(model: ModelConfig) -> Self {
        let classical = model.preset == Preset::Classical;
        TrainConfig {
            epochs: 5,
            batch_size: 64,
            lr: 2e-4,
            lr_detail: if classical { 5e-5 } else { 2e-4 },
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
            data: String::new(),
            device: "cpu".to_string(),
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
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if self.d_steps == 0 {
            bail!("--d-steps must be at least 1");
        }
        if self.sample_every == 0 {
            bail!("--sample-every must be at least 1");
        }
        for (name, lr) in [("--lr", self.lr), ("detail lr", self.lr_detail)] {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("{name} must be a positive number, got {lr}");
            }
        }
        Ok(())
    }
}

/// Epoch means, one row of `metrics.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// Batches (D steps) processed so far.
    pub step: usize,
    /// Seconds since training started.
    pub seconds: f64,
    pub loss_d: f32,
    pub loss_g: f32,
    /// Mean D(x) on real images, as a probability.
    pub d_x: f32,
    /// Mean D(G(z)) on the fakes of the D steps, as a probability.
    pub d_g_z: f32,
}

pub struct TrainOutcome {
    pub generator: Generator,
    pub discriminator: Discriminator,
    pub history: Vec<EpochStats>,
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
    let g = Generator::new(model, &mut Rng::derive(seed, "init-generator"), device)?;
    let d = Discriminator::new(model, &mut Rng::derive(seed, "init-discriminator"), device)?;
    Ok((g, d))
}

/// Adam for G: one group per stage (`main`, or `initial` + `detail`).
pub fn generator_optimizer(g: &Generator, cfg: &TrainConfig) -> Result<Adam> {
    let mut opt = Adam::new(cfg.beta1, cfg.beta2, 1e-8);
    for (name, params) in g.param_groups() {
        let lr = if name == "detail" {
            cfg.lr_detail
        } else {
            cfg.lr
        };
        opt.add_group(&name, lr, params)?;
    }
    Ok(opt)
}

pub fn discriminator_optimizer(d: &Discriminator, cfg: &TrainConfig) -> Result<Adam> {
    let mut opt = Adam::new(cfg.beta1, cfg.beta2, 1e-8);
    opt.add_group("main", cfg.lr, d.parameters())?;
    Ok(opt)
}

fn mean_sigmoid(logits: &Tensor) -> Result<f32> {
    let v = logits.to_vec()?;
    Ok(v.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).sum::<f32>() / v.len().max(1) as f32)
}

/// Images of G for `z` with batch statistics, changing no state (see [`Mode::BatchStats`]).
pub fn generate_for_grid(g: &Generator, z: &Tensor) -> Result<Vec<f32>> {
    let _guard = no_grad();
    let mut unused = Rng::new(0);
    g.forward(z, &mut Ctx::new(Mode::BatchStats, &mut unused))?
        .to_vec()
}

/// What one training step did (for metrics).
pub struct StepStats {
    pub loss_d: f32,
    pub d_x: f32,
    pub d_g_z: f32,
    /// Present when this batch also updated G.
    pub loss_g: Option<f32>,
}

/// The models, optimisers and random streams of a run: one call of [`Trainer::step`] per real
/// batch.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub g: Generator,
    pub d: Discriminator,
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub streams: Streams,
    /// D steps since the last G step.
    pending_d_steps: usize,
}

impl Trainer {
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let (g, d) = build_models(&cfg.model, cfg.seed, device)?;
        let opt_g = generator_optimizer(&g, &cfg)?;
        let opt_d = discriminator_optimizer(&d, &cfg)?;
        d.set_noise_std(cfg.noise_std);
        Ok(Trainer {
            streams: Streams {
                latents: Rng::derive(cfg.seed, "latents"),
                regularizers: Rng::derive(cfg.seed, "regularizers"),
            },
            cfg,
            g,
            d,
            opt_g,
            opt_d,
            pending_d_steps: 0,
        })
    }

    /// One D update on `real` (real → 1, G's detached fake → 0) and, every `d_steps`-th call,
    /// one non-saturating G update (D(G(z)) → 1) reusing that fake, as pytorch/examples does.
    pub fn step(&mut self, real: &Tensor) -> Result<StepStats> {
        let b = real.shape()[0];
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
        let out_real = self.d.forward(
            real,
            &mut Ctx::new(Mode::Train, &mut self.streams.regularizers),
        )?;
        let loss_real = ops::bce_with_logits(&out_real, 1.0)?;
        let fake = if update_g {
            // Keep G's graph: the G step below back-propagates through this same fake.
            self.g.forward(
                &z,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers),
            )?
        } else {
            let _guard = no_grad();
            self.g.forward(
                &z,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers),
            )?
        };
        let out_fake = self.d.forward(
            &fake.detach(),
            &mut Ctx::new(Mode::Train, &mut self.streams.regularizers),
        )?;
        let loss_fake = ops::bce_with_logits(&out_fake, 0.0)?;
        let loss_d = ops::add(&loss_real, &loss_fake)?;
        loss_d.backward()?;
        self.opt_d.step()?;
        let mut stats = StepStats {
            loss_d: loss_d.item()?,
            d_x: mean_sigmoid(&out_real)?,
            d_g_z: mean_sigmoid(&out_fake)?,
            loss_g: None,
        };

        // ---- G step
        if update_g {
            self.pending_d_steps = 0;
            self.opt_g.zero_grad();
            let out = self.d.forward(
                &fake,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers),
            )?;
            let loss_g = ops::bce_with_logits(&out, 1.0)?;
            loss_g.backward()?;
            self.opt_g.step()?;
            // D's gradients from this backward are not used: the next D step zeroes them.
            self.d.zero_grad();
            stats.loss_g = Some(loss_g.item()?);
        } else {
            self.pending_d_steps += 1;
        }
        Ok(stats)
    }

    /// Classical input-noise schedule: `noise_std · (1 − progress)`, progress in [0, 1].
    pub fn set_progress(&self, progress: f32) {
        self.d
            .set_noise_std(self.cfg.noise_std * (1.0 - progress.clamp(0.0, 1.0)));
    }

    /// Applies the dynamic lr rule after an epoch; returns a note when the lr changed.
    pub fn adjust_lr(&mut self, stats: &EpochStats) -> Option<String> {
        if !self.cfg.dynamic_lr {
            return None;
        }
        let grow = stats.d_x - stats.d_g_z > DYNAMIC_LR_GAP;
        let mut changed = false;
        for group in &mut self.opt_g.groups {
            let base = if group.name == "detail" {
                self.cfg.lr_detail
            } else {
                self.cfg.lr
            };
            let new = if grow {
                (group.lr * DYNAMIC_LR_FACTOR).min(base * DYNAMIC_LR_MAX)
            } else {
                (group.lr / DYNAMIC_LR_FACTOR).max(base)
            };
            changed |= new != group.lr;
            group.lr = new;
        }
        changed.then(|| {
            let lrs: Vec<String> = self
                .opt_g
                .groups
                .iter()
                .map(|g| format!("{} {:.2e}", g.name, g.lr))
                .collect();
            format!("generator lr now {}", lrs.join(", "))
        })
    }
}

/// Options of [`train`] that are not part of the recipe.
pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    /// Show the progress bar (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Print the per-epoch lines.
    pub verbose: bool,
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
    let images = generate_for_grid(g, z)?;
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

/// Trains for `cfg.epochs` epochs, writing into `opts.out` (which must exist): `config.json`
/// first, `metrics.csv` and `samples/epoch-NNNN.png` as it goes (epoch 0 = untrained G), the
/// two safetensors files at the end.
pub fn train(
    cfg: TrainConfig,
    data: &mut dyn BatchSource,
    opts: &RunOptions,
) -> Result<TrainOutcome> {
    let batches = data.batches_per_epoch();
    if batches == 0 {
        bail!(
            "the dataset has {} images, fewer than one batch of {}: lower --batch-size",
            data.image_count(),
            cfg.batch_size
        );
    }
    let mut trainer = Trainer::new(cfg, opts.device)?;
    let cfg = trainer.cfg.clone();
    checkpoint::save_config(&opts.out, &cfg)?;
    let samples_dir = opts.out.join("samples");
    std::fs::create_dir_all(&samples_dir)
        .with_context(|| format!("cannot create {}", samples_dir.display()))?;
    let fixed = fixed_noise(cfg.seed, cfg.model.nz, opts.device)?;
    save_grid(&trainer.g, &fixed, &samples_dir, 0)?;

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
    let say = |line: &str| {
        if opts.verbose {
            bar.suspend(|| println!("{line}"));
        }
    };

    let start = Instant::now();
    let mut history = Vec::new();
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
        data.start_epoch(epoch - 1);
        let (mut sum_d, mut sum_x, mut sum_gz, mut n_d) = (0f64, 0f64, 0f64, 0usize);
        let (mut sum_g, mut n_g) = (0f64, 0usize);
        while let Some(real) = data.next_batch(opts.device)? {
            trainer.set_progress(step as f32 / total as f32);
            let s = trainer
                .step(&real)
                .with_context(|| format!("training step {}", step + 1))?;
            step += 1;
            sum_d += s.loss_d as f64;
            sum_x += s.d_x as f64;
            sum_gz += s.d_g_z as f64;
            n_d += 1;
            if let Some(lg) = s.loss_g {
                sum_g += lg as f64;
                n_g += 1;
            }
            bar.set_message(format!(
                "loss_d {:.3} loss_g {} D(x) {:.2} D(G(z)) {:.2}",
                s.loss_d,
                s.loss_g.map_or("-".to_string(), |l| format!("{l:.3}")),
                s.d_x,
                s.d_g_z
            ));
            bar.inc(1);
        }
        let n_d = n_d.max(1) as f64;
        let stats = EpochStats {
            epoch,
            step,
            seconds: start.elapsed().as_secs_f64(),
            loss_d: (sum_d / n_d) as f32,
            loss_g: if n_g > 0 {
                (sum_g / n_g as f64) as f32
            } else {
                f32::NAN
            },
            d_x: (sum_x / n_d) as f32,
            d_g_z: (sum_gz / n_d) as f32,
        };
        say(&format!(
            "epoch {:>3}/{}  step {:>6}  {:>7.1}s  loss_d {:.4}  loss_g {:.4}  D(x) {:.3}  D(G(z)) {:.3}",
            stats.epoch, cfg.epochs, stats.step, stats.seconds, stats.loss_d, stats.loss_g,
            stats.d_x, stats.d_g_z
        ));
        if !(stats.loss_d.is_finite() && stats.loss_g.is_finite()) {
            bail!(
                "training diverged in epoch {epoch} (loss_d {}, loss_g {}); try a lower --lr",
                stats.loss_d,
                stats.loss_g
            );
        }
        if let Some(note) = trainer.adjust_lr(&stats) {
            say(&format!("  {note}"));
        }
        history.push(stats);
        write_metrics(&opts.out.join("metrics.csv"), &history)?;
        if epoch % cfg.sample_every == 0 || epoch == cfg.epochs {
            let p = save_grid(&trainer.g, &fixed, &samples_dir, epoch)?;
            say(&format!("  wrote {}", p.display()));
        }
    }
    bar.finish_and_clear();
    checkpoint::save_models(&opts.out, &trainer.g, &trainer.d)?;
    Ok(TrainOutcome {
        generator: trainer.g,
        discriminator: trainer.d,
        history,
    })
}
