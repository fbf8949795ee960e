//! The GAN training loop (pytorch/examples dcgan's, generalised to `d_steps` D updates per G
//! update) and everything that makes a run survive and report: per-epoch metrics, sample grids,
//! the EMA generator, the dynamic-lr controller, checkpoints every N epochs with resume, the
//! divergence guard and the out-of-memory advice.
//!
//! - [`ema`]: the moving average of G's weights.
//! - [`lr_control`]: the dynamic learning-rate rule.
//! - [`state`]: what a checkpoint holds and how a [`Trainer`] is restored from one.
//! - `config`: the recipe; `trainer`: one step; `graph_step`: that step as a CUDA graph (the
//!   trainer hands it the step); `sample_grids`: what the sample grids show (written as PNG by
//!   `data::save_grid_png`); `sessions`: the run's history of starts and resumes; `stops`:
//!   interrupts, divergence, out of memory.

mod config;
pub mod device_metrics;
pub mod ema;
mod graph_step;
pub mod lr_control;
pub mod parallel;
pub mod quality_log;
mod sample_grids;
mod sessions;
pub mod state;
mod stops;
mod trainer;

pub use config::*;
pub use sample_grids::*;
pub use sessions::*;
pub use stops::*;
pub use trainer::*;

use sample_grids::save_grid;
use stops::{interrupt, last_good, out_of_memory_advice, suggested_lr};

use crate::backend::{self, Device};
use crate::checkpoint;
use crate::nn::{Discriminator, Generator};
use crate::run_folder;
use crate::tensor::Tensor;
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
    /// The same source handing out part `rank` of `ranks` equal parts of each batch (one GPU's
    /// share in data-parallel training), at the same position.
    fn part(&self, rank: usize, ranks: usize) -> Result<Box<dyn BatchSource + Send>> {
        let _ = (rank, ranks);
        bail!("this data source cannot be split across GPUs")
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
    fn part(&self, rank: usize, ranks: usize) -> Result<Box<dyn BatchSource + Send>> {
        Ok(Box::new(crate::data::Loader::part(self, rank, ranks)?))
    }
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
    /// Mixed precision: D's and G's loss scales at the end of the epoch and the optimiser
    /// steps each has skipped so far (inf/NaN gradients); empty under fp32.
    #[serde(default)]
    pub loss_scale_d: Option<f32>,
    #[serde(default)]
    pub loss_scale_g: Option<f32>,
    #[serde(default)]
    pub skipped_steps_d: Option<u64>,
    #[serde(default)]
    pub skipped_steps_g: Option<u64>,
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
/// Computes the quality metric (SWD×10³) of a generator, for `eval_every`.
pub type Evaluator<'a> = dyn FnMut(&Generator) -> Result<f32> + 'a;

/// Options of [`train`] that are not part of the recipe.
pub struct RunOptions<'a> {
    pub out: PathBuf,
    pub device: Device,
    /// More GPUs to train on data-parallel with `device` (see [`parallel`]); empty: one device.
    pub more_devices: Vec<Device>,
    /// Show the progress bar (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Print the per-epoch lines.
    pub verbose: bool,
    /// Continue from this checkpoint folder (see [`run_folder::latest_checkpoint`]).
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
            more_devices: Vec::new(),
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
    if (cfg.eval_every > 0 || cfg.eval_every_images > 0) && opts.evaluator.is_none() {
        bail!("eval_every or eval_every_images is set but no evaluator was given");
    }
    let devices: Vec<Device> = std::iter::once(opts.device)
        .chain(opts.more_devices.iter().copied())
        .collect();
    parallel::check(&cfg, &devices)?;
    let (mut trainer, mut history, seconds_before, mut resume_note, mut partial) =
        match &opts.resume_from {
            Some(dir) => {
                let r = state::restore(cfg, dir, opts.device)?;
                (r.trainer, r.history, r.seconds, r.lr_note, r.partial)
            }
            None => (Trainer::new(cfg, opts.device)?, Vec::new(), 0.0, None, None),
        };
    // Data-parallel: the followers (GPUs 1..) start from the same weights, and this thread
    // (GPU 0) trains on part 0 of each batch.
    let mut own_part = None;
    let followers = if devices.len() > 1 {
        let f = parallel::start(&trainer.cfg, &devices, data, opts.resume_from.clone())?;
        own_part = Some(data.part(0, devices.len())?);
        trainer.part = parallel::Part {
            rank: 0,
            ranks: devices.len(),
        };
        Some(f)
    } else {
        None
    };
    let data: &mut dyn BatchSource = match own_part.as_mut() {
        Some(part) => part.as_mut(),
        None => data,
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
        save_grid(
            trainer.sampling_generator(),
            &fixed,
            trainer.numerics.fp32(),
            &samples_dir,
            0,
        )?;
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

    // A resumed run redoes the evaluations after its checkpoint: their rows go.
    let mut quality = quality_log::read_until(&opts.out, trainer.step)?;
    if opts.out.join(quality_log::QUALITY_FILE).is_file() {
        quality_log::write(&opts.out, &quality)?;
    }
    let start = Instant::now();
    let mut eval_seconds = 0.0;
    let mut last_checkpoint = None;
    for epoch in trainer.epoch + 1..=cfg.epochs {
        bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
        let mut acc = match partial.take() {
            // Resuming inside this epoch: the loader where it was, the sums so far.
            Some(p) => {
                data.seek(epoch - 1, p.batch)?;
                if let Some(f) = &followers {
                    f.seek(epoch - 1, p.batch)?;
                }
                p
            }
            None => {
                data.start_epoch(epoch - 1);
                if let Some(f) = &followers {
                    f.start_epoch(epoch - 1)?;
                }
                state::PartialEpoch::default()
            }
        };
        acc.lr_changes.extend(resume_note.take());
        while let Some(real) = data.next_batch(opts.device)? {
            let progress = trainer.step as f32 / total as f32;
            trainer.set_progress(progress);
            if let Some(f) = &followers {
                f.step(&trainer, progress)?;
            }
            let labels = data.batch_labels();
            match trainer.step_deferred(&real, labels.as_deref()) {
                Ok(()) => {}
                Err(e) if backend::is_out_of_memory(&e) => {
                    let (cfg, device) = (trainer.cfg.clone(), opts.device);
                    drop(trainer);
                    return Err(out_of_memory_advice(e, &cfg, device));
                }
                Err(e) => {
                    let e = match &followers {
                        Some(f) => f.explain(e),
                        None => e,
                    };
                    return Err(e).with_context(|| format!("training step {}", trainer.step + 1));
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
            let batch = cfg.batch_size as u64;
            if quality_log::due(cfg.eval_every_images, trainer.step as u64 * batch, batch) {
                let began = Instant::now();
                let seconds = seconds_before + start.elapsed().as_secs_f64() - eval_seconds;
                let evaluate = opts.evaluator.as_mut().expect("checked above");
                quality_log::record(
                    &trainer,
                    evaluate,
                    batches,
                    seconds,
                    &mut quality,
                    &opts.out,
                )?;
                eval_seconds += began.elapsed().as_secs_f64();
            }
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
        let scales = trainer.loss_scales()?;
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
            loss_scale_d: scales.map(|(d, _)| d.scale),
            loss_scale_g: scales.map(|(_, g)| g.scale),
            skipped_steps_d: scales.map(|(d, _)| d.skipped),
            skipped_steps_g: scales.map(|(_, g)| g.skipped),
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
            let p = save_grid(
                trainer.sampling_generator(),
                &fixed,
                trainer.numerics.fp32(),
                &samples_dir,
                epoch,
            )?;
            say(&format!("  wrote {}", p.display()));
        }
        let stopping = opts.stop_after_epoch == Some(epoch);
        if epoch % cfg.checkpoint_every == 0 || epoch == cfg.epochs || stopping {
            let files = state::checkpoint_files(&trainer, &history)?;
            // A GPU that failed released this one from its collectives (the group was aborted):
            // the weights just read are not one model's, so nothing is written.
            if let Some(f) = &followers {
                f.check()?;
            }
            let dir = run_folder::write_checkpoint(&opts.out, epoch, &files)?;
            run_folder::prune_checkpoints(&opts.out, cfg.keep_checkpoints)?;
            say(&format!("  checkpoint {}", dir.display()));
            last_checkpoint = Some(dir);
        }
        refresh_report(&opts.out, &bar);
        if stopping {
            break;
        }
    }
    bar.finish_and_clear();
    if let Some(f) = followers {
        f.finish(&trainer)?;
    }
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
