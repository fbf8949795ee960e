//! One training step: the models, optimisers, random streams and controllers of a run
//! ([`Trainer`]), built from the seed, stepping D `d_steps` times per G step.

use super::graph_step::{DeviceStep, StepGraphs, StepInputs, StepOutputs};
use super::parallel::Part;
use super::{device_metrics, ema, lr_control, TrainConfig, GRID_SIDE};
use crate::amp::{LossScaler, Numerics, Precision, ScalerReading};
use crate::backend::Device;
use crate::nn::draws::{quarter_of, StepDraws};
use crate::nn::lightweight::QuarterWeights;
use crate::nn::{Ctx, Discriminator, Generator, Mode, ModelConfig, Module, Preset, StateRef};
use crate::ops::{self, Labels};
use crate::optim::Adam;
use crate::rng::Rng;
use crate::tensor::{no_grad, FrozenParams, Tensor};
use anyhow::{bail, Result};
use lr_control::LrControl;

mod optimizers;
pub mod twin_trace;

pub use optimizers::{discriminator_optimizer, generator_optimizer};
use twin_trace::TraceRecorder;

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
    /// The decay of its next update, on the device.
    ema_decay: Option<ema::DeviceDecay>,
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
    /// The captured steps when `cfg.cuda_graphs` (see `graph_step`).
    graphs: StepGraphs,
    /// What every forward of a step runs with (and so its backward): `cfg.precision` and
    /// `cfg.conv_impl`.
    pub numerics: Numerics,
    /// This replica's share of each batch in a data-parallel run (the whole batch on one
    /// device): it draws the whole batch's latents and DiffAugment parameters and uses its
    /// part, and averages its gradients with the other GPUs' before each Adam step.
    pub part: Part,
    /// The host inputs of each step, kept for the PyTorch twin (off unless turned on).
    pub trace: TraceRecorder,
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
        let mut opt_g = generator_optimizer(&g, &cfg)?;
        let mut opt_d = discriminator_optimizer(&d, &cfg)?;
        if cfg.precision == Precision::Amp {
            opt_g.scaler = Some(LossScaler::new(device)?);
            opt_d.scaler = Some(LossScaler::new(device)?);
        }
        d.set_noise_std(cfg.noise_std);
        if cfg.cuda_graphs && crate::backend::backend(device)?.step_capture().is_none() {
            bail!("--cuda-graphs on needs a CUDA device (this run is on {device})");
        }
        let cfg_graphs = cfg.cuda_graphs;
        let ema_decay = ema
            .as_ref()
            .map(|_| ema::DeviceDecay::new(device))
            .transpose()?;
        Ok(Trainer {
            ema_decay,
            streams: Streams {
                latents: Rng::derive(cfg.seed, "latents"),
                regularizers: Rng::derive(cfg.seed, "regularizers"),
            },
            lr_control: LrControl::new(cfg.lr_window),
            numerics: Numerics::new(cfg.precision, cfg.conv_impl),
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
            graphs: StepGraphs::new(cfg_graphs),
            part: Part::WHOLE,
            trace: TraceRecorder::default(),
        })
    }

    /// Batch shapes whose step is replayed as a CUDA graph (`cfg.cuda_graphs`).
    pub fn captured_step_graphs(&self) -> usize {
        self.graphs.captured()
    }

    /// The generator to sample with: the EMA one when kept.
    pub fn sampling_generator(&self) -> &Generator {
        self.ema.as_ref().unwrap_or(&self.g)
    }

    /// One D update on `real` (real → 1, G's detached fake → 0) and, every `d_steps`-th call,
    /// one non-saturating G update (D(G(z)) → 1) reusing that fake, as pytorch/examples does;
    /// then the EMA update and the dynamic-lr rule.
    pub fn step(&mut self, real: &Tensor) -> Result<StepStats> {
        self.step_labeled(real, None)
    }

    /// The D input: `x` through DiffAugment when the run uses it (fresh per-sample parameters
    /// from the regularizer stream on every call, so a resumed run draws the same ones).
    fn d_input(&mut self, x: &Tensor, draws: Option<&mut StepDraws>) -> Result<Tensor> {
        if !self.cfg.diffaugment.is_on() {
            return Ok(x.clone());
        }
        let rng = &mut self.streams.regularizers;
        // This part's images are `first..` of the whole batch.
        let first = self.part.rank * x.shape()[0];
        let policy = self.cfg.diffaugment;
        match draws {
            Some(d) => d.diff_augment(rng, x, policy, first),
            None => {
                let seed = rng.next_u64();
                self.trace.diff_augment(seed, first, x.shape());
                ops::diff_augment_part(x, policy, seed, first)
            }
        }
    }

    /// The quarter of the real batch D's part decoder reconstructs this step (0..=3), from
    /// the regularizer stream so a resumed run draws the same; `None` when D has no decoders
    /// (the stream then moves exactly as before they existed).
    fn reconstruction_quarter(
        &mut self,
        real: &Tensor,
        draws: Option<&mut StepDraws>,
    ) -> Result<Option<QuarterWeights>> {
        let Some(c) = self.d.part_channels() else {
            self.trace.quarter(None);
            return Ok(None);
        };
        let (rng, n) = (&mut self.streams.regularizers, real.shape()[0]);
        let weights = match draws {
            Some(d) => d.quarter(rng, n, c)?,
            None => QuarterWeights::new(quarter_of(rng.next_u64()), n, c, real.device())?,
        };
        self.trace.quarter(Some(weights.quarter));
        Ok(Some(weights))
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
    ///
    /// A step is a host half (the latents drawn, Adam's scalars written to the device), the
    /// device half ([`Trainer::device_step`], eager or one CUDA graph: `graph_step`) and
    /// the host bookkeeping after it (counters, the EMA update, the metrics record).
    pub fn step_deferred(&mut self, real: &Tensor, labels: Option<&[u32]>) -> Result<()> {
        // After another GPU failed, a step would replay a graph holding an ended communicator.
        if self.part.ranks > 1 && crate::backend::backend(real.device())?.group_aborted() {
            bail!("{}", crate::backend::ABORTED);
        }
        let b = real.shape()[0];
        let classes = self.cfg.classes();
        match labels {
            None if classes > 0 => bail!("a conditional run needs the class labels of each batch"),
            Some(l) if classes == 0 => {
                bail!("{} class labels given to an unconditional run", l.len())
            }
            // Checked here because a replayed step runs none of the ops' own checks.
            Some(l) if l.len() != b => bail!("{} class labels for a batch of {b}", l.len()),
            Some(l) => {
                if let Some(bad) = l.iter().find(|&&k| k as usize >= classes) {
                    bail!("class label {bad} is out of range for {classes} classes");
                }
            }
            None => {}
        }
        let nz = self.cfg.model.nz;
        // The same draws as `Tensor::randn(&[b, nz, 1, 1], 0.0, 1.0, ..)` for the whole batch
        // (of every GPU), of which this part takes its rows.
        let whole = b * self.part.ranks;
        let mut z = self.streams.latents.normal_vec(whole * nz, 0.0, 1.0);
        if self.part.ranks > 1 {
            z = z[self.part.rank * b * nz..(self.part.rank + 1) * b * nz].to_vec();
        }
        self.trace.begin_step(&z);
        let update_g = self.pending_d_steps + 1 >= self.cfg.d_steps;
        self.opt_d.prepare()?;
        if update_g {
            self.opt_g.prepare()?;
            if let Some(decay) = &self.ema_decay {
                let rampup = (self.cfg.ema_rampup > 0.0).then_some(self.cfg.ema_rampup);
                let images = (self.g_steps + 1) * whole as u64;
                decay.set(ema::decay(
                    whole,
                    images,
                    self.cfg.ema_half_life_images,
                    rampup,
                ))?;
            }
        }

        let inputs = StepInputs {
            real,
            labels,
            z_host: &z,
            nz,
            update_g,
            noise_std: self.d.noise_std().unwrap_or(0.0),
        };
        // Taken out while it runs the step (which borrows the whole trainer).
        let mut graphs = std::mem::take(&mut self.graphs);
        let out = graphs.run(self, inputs);
        self.graphs = graphs;
        let out = out?;

        if update_g {
            self.pending_d_steps = 0;
            self.g_steps += 1;
        } else {
            self.pending_d_steps += 1;
        }
        self.step += 1;
        self.metrics.push(
            self.step,
            &out.loss_d,
            out.loss_g.as_ref(),
            &out.out_real,
            &out.out_fake,
        );
        Ok(())
    }

    /// The device half of a step: one D update on `real` (real → 1, G's detached fake of `z`
    /// → 0) and, when `update_g`, one non-saturating G update (D(G(z)) → 1) reusing that
    /// fake, as pytorch/examples does, then the EMA update. Adam's scalars and the EMA decay
    /// must have been written. Its host-side effects are the batch-norm batch counters (and
    /// the EMA's copies of them) and the regularizer draws (taken from `draws` when given; see
    /// `graph_step`).
    fn device_step(
        &mut self,
        real: &Tensor,
        z: &Tensor,
        labels: Option<Labels>,
        update_g: bool,
        mut draws: Option<&mut StepDraws>,
    ) -> Result<StepOutputs> {
        // This GPU's part of the batch (its dropout masks and noise are that part's).
        let rank = self.part.rank;
        let sync_bn = self.cfg.sync_bn && self.part.ranks > 1;
        // ---- D step
        self.opt_d.zero_grad();
        let real_in = self.d_input(real, draws.as_deref_mut())?;
        let quarter = self.reconstruction_quarter(real, draws.as_deref_mut())?;
        let (out_real, reconstruction) = self.d.forward_real(
            &real_in,
            quarter.as_ref(),
            &mut Ctx::new(Mode::Train, &mut self.streams.regularizers, self.numerics)
                .in_part(rank)
                .syncing_bn(sync_bn)
                .labeled_as(labels)
                .drawing(draws.as_deref_mut()),
        )?;
        let mut loss_real = self.cfg.loss.d_real(&out_real)?;
        // A D with decoders (lightweight) also learns to reconstruct the real batch, weight 1.
        if let Some(rec) = reconstruction {
            self.trace.reconstruction(&rec);
            loss_real = ops::add(&loss_real, &rec)?;
        }
        let fake = if update_g {
            // Keep G's graph: the G step below back-propagates through this same fake.
            self.g.forward(
                z,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers, self.numerics)
                    .in_part(rank)
                    .syncing_bn(sync_bn)
                    .labeled_as(labels)
                    .drawing(draws.as_deref_mut()),
            )?
        } else {
            let _guard = no_grad();
            self.g.forward(
                z,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers, self.numerics)
                    .in_part(rank)
                    .syncing_bn(sync_bn)
                    .labeled_as(labels)
                    .drawing(draws.as_deref_mut()),
            )?
        };
        let fake_in = self.d_input(&fake.detach(), draws.as_deref_mut())?;
        let out_fake = self.d.forward(
            &fake_in,
            &mut Ctx::new(Mode::Train, &mut self.streams.regularizers, self.numerics)
                .in_part(rank)
                .syncing_bn(sync_bn)
                .labeled_as(labels)
                .drawing(draws.as_deref_mut()),
        )?;
        let loss_fake = self.cfg.loss.d_fake(&out_fake)?;
        let loss_d = ops::add(&loss_real, &loss_fake)?;
        self.opt_d.backward(&loss_d)?;
        self.opt_d.average_grads()?;
        self.opt_d.apply()?;
        let mut loss_g_on_device = None;

        // ---- G step
        if update_g {
            self.opt_g.zero_grad();
            // D's own gradients are not used by the G step: freezing D's parameters skips their
            // backward-filter and batch-norm parameter gradients (only the input gradients flow).
            let frozen = FrozenParams::new(self.d.parameters().into_iter().map(|(_, t)| t))?;
            let fake_in = self.d_input(&fake, draws.as_deref_mut())?;
            let out = self.d.forward(
                &fake_in,
                &mut Ctx::new(Mode::Train, &mut self.streams.regularizers, self.numerics)
                    .in_part(rank)
                    .syncing_bn(sync_bn)
                    .labeled_as(labels)
                    .drawing(draws),
            )?;
            let loss_g = self.cfg.loss.generator(&out)?;
            self.opt_g.backward(&loss_g)?;
            drop(frozen);
            self.opt_g.average_grads()?;
            self.opt_g.apply()?;
            // D's gradients from this backward are not used: the next D step zeroes them.
            self.d.zero_grad();
            loss_g_on_device = Some(loss_g.detach());
            if let (Some(e), Some(decay)) = (&self.ema, &self.ema_decay) {
                ema::update_by(e, &self.g, decay)?;
            }
        }
        Ok(StepOutputs {
            loss_d: loss_d.detach(),
            loss_g: loss_g_on_device,
            out_real: out_real.detach(),
            out_fake: out_fake.detach(),
        })
    }

    /// The loss scalers' states as (D, G), read back (two small downloads); `None` under fp32.
    pub fn loss_scales(&self) -> Result<Option<(ScalerReading, ScalerReading)>> {
        match (&self.opt_d.scaler, &self.opt_g.scaler) {
            (Some(d), Some(g)) => Ok(Some((d.read()?, g.read()?))),
            _ => Ok(None),
        }
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

/// The trainer's step as the graph step runs it (see `graph_step`).
impl DeviceStep for Trainer {
    fn run(
        &mut self,
        real: &Tensor,
        z: &Tensor,
        labels: Option<Labels>,
        update_g: bool,
        draws: Option<&mut StepDraws>,
    ) -> Result<StepOutputs> {
        self.device_step(real, z, labels, update_g, draws)
    }

    fn regularizers(&mut self) -> &mut Rng {
        &mut self.streams.regularizers
    }

    fn batch_counters(&self) -> Vec<i64> {
        let mut out = Vec::new();
        self.visit_models(&mut |_, s| {
            if let StateRef::Count(c) = s {
                out.push(c.get());
            }
        });
        out
    }

    fn set_batch_counters(&mut self, values: &[i64]) {
        let mut at = 0;
        self.visit_models(&mut |_, s| {
            if let StateRef::Count(c) = s {
                c.set(values[at]);
                at += 1;
            }
        });
    }
}

impl Trainer {
    /// The state of G, D and the EMA generator, in that order.
    fn visit_models<'a>(&'a self, visit: &mut dyn FnMut(String, StateRef<'a>)) {
        self.g.visit_state("", visit);
        self.d.visit_state("", visit);
        if let Some(e) = &self.ema {
            e.visit_state("", visit);
        }
    }
}
