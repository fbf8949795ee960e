//! The trace of a short fp32 CPU run of `--preset lightweight` that its PyTorch twin replays
//! (`benches/pytorch_lightweight.py`, run by `scripts/twin-check`): the initial and final state
//! dicts of G and D, and per step every input the step draws on the host (the real batch as D
//! gets it before DiffAugment, the latents, each DiffAugment parameter set, the quarter the part
//! decoder reconstructs) with the losses it gave. The run is the real [`Trainer`]; what it
//! draws inside its step is taken by the [`TraceRecorder`] it carries (off in training).
//!
//! Files written into the folder: `twin.json` (the recipe), `generator_init.safetensors`,
//! `discriminator_init.safetensors`, `generator_final.safetensors`,
//! `discriminator_final.safetensors` (PyTorch state-dict names, with spectral norm's u and v
//! and batch norm's buffers) and `trace.safetensors` (f32; N steps, B images, K = 3 DiffAugment
//! calls per step: D's real batch, D's fake batch, G's fake batch):
//! `real [N, B, 3, S, S]`, `z [N, B, nz]`, `color [N, K, B, 3]`, `shifts [N, K, B, 2]`,
//! `boxes [N, K, B, 4]`, `quarter [N]`, `loss_d [N]`, `loss_g [N]`, `reconstruction [N]`.

use super::Trainer;
use crate::backend::Device;
use crate::checkpoint::{model_metadata, state_dict_bytes, tensors_bytes, write_atomic};
use crate::data::{self, Augment, Loader};
use crate::nn::{ModelConfig, Preset};
use crate::ops::{diffaug_params, DiffAugmentParams};
use crate::tensor::Tensor;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// DiffAugment calls per step: D's real batch, D's fake batch, G's fake batch.
pub const DIFF_AUGMENT_CALLS: usize = 3;

/// The host inputs of each step, recorded when turned on ([`TraceRecorder::on`]); the
/// trainer's calls are no-ops otherwise.
#[derive(Default)]
pub struct TraceRecorder {
    on: bool,
    pub steps: Vec<TracedStep>,
}

/// What one step drew and computed besides its losses.
pub struct TracedStep {
    /// `[B, nz]`, row-major.
    pub latents: Vec<f32>,
    /// One per DiffAugment call, in call order.
    pub diff_augment: Vec<DiffAugmentParams>,
    pub quarter: Option<usize>,
    /// D's reconstruction loss on the real batch (a `[1]` tensor).
    pub reconstruction: Option<Tensor>,
}

impl TraceRecorder {
    pub fn on() -> Self {
        TraceRecorder {
            on: true,
            steps: Vec::new(),
        }
    }

    fn last(&mut self) -> Option<&mut TracedStep> {
        self.steps.last_mut().filter(|_| self.on)
    }

    pub(super) fn begin_step(&mut self, latents: &[f32]) {
        if self.on {
            self.steps.push(TracedStep {
                latents: latents.to_vec(),
                diff_augment: Vec::new(),
                quarter: None,
                reconstruction: None,
            });
        }
    }

    /// DiffAugment of images `first..` of a batch of `shape` with parameters from `seed`.
    pub(super) fn diff_augment(&mut self, seed: u64, first: usize, shape: &[usize]) {
        if let (Some(s), &[n, _, h, w]) = (self.last(), shape) {
            s.diff_augment.push(diffaug_params(seed, first, n, h, w));
        }
    }

    pub(super) fn quarter(&mut self, quarter: Option<usize>) {
        if let Some(s) = self.last() {
            s.quarter = quarter;
        }
    }

    pub(super) fn reconstruction(&mut self, loss: &Tensor) {
        if let Some(s) = self.last() {
            s.reconstruction = Some(loss.detach());
        }
    }
}

/// The twin's run: `--preset lightweight` at 64 px, widths 8, nz 256, batch 8, with the
/// preset's recipe (hinge loss, DiffAugment color,translation,cutout, Adam 2e-4 (0.5, 0.999))
/// and random flips; no EMA (the twin compares G and D).
pub fn twin_config(seed: u64) -> TrainConfig {
    let model = ModelConfig {
        preset: Preset::Lightweight,
        image_size: 64,
        nz: ModelConfig::full(Preset::Lightweight).nz,
        ngf: 8,
        ndf: 8,
    };
    let mut cfg = TrainConfig::for_model(model);
    cfg.batch_size = 8;
    cfg.seed = seed;
    cfg.ema = false;
    cfg.augment = Augment {
        flip: true,
        rotate_deg: 0.0,
    };
    cfg
}

/// Images in the built-in set the twin trains on (4 batches an epoch).
const TWIN_IMAGES: usize = 32;

/// Runs `steps` CPU fp32 steps of `cfg` on the built-in paintings and writes the trace (see
/// the module doc) into `out`.
pub fn write_twin_trace(out: &Path, cfg: TrainConfig, steps: usize) -> Result<()> {
    if cfg.model.preset != Preset::Lightweight || cfg.d_steps != 1 || cfg.ema {
        bail!("the twin trace is of --preset lightweight with d_steps 1 and no EMA");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (b, s, nz) = (cfg.batch_size, cfg.model.image_size, cfg.model.nz);
    let set = Arc::new(data::builtin(TWIN_IMAGES, s, cfg.seed));
    let mut loader = Loader::new(set, b, cfg.augment, cfg.seed);
    let mut t = Trainer::new(cfg, Device::Cpu)?;
    t.trace = TraceRecorder::on();
    // Written with the rest once the run is complete, so a failed run leaves no partial trace.
    let init = model_files(&t, "init")?;

    let mut real = Vec::with_capacity(steps * b * 3 * s * s);
    let (mut loss_d, mut loss_g) = (Vec::new(), Vec::new());
    let mut epoch = 0;
    while loss_d.len() < steps {
        let Some(batch) = loader.next_batch(Device::Cpu)? else {
            epoch += 1;
            loader.start_epoch(epoch);
            continue;
        };
        real.extend(batch.to_vec()?);
        let stats = t.step(&batch)?;
        loss_d.push(stats.loss_d);
        loss_g.push(stats.loss_g.context("every twin step updates G")?);
    }

    let k = DIFF_AUGMENT_CALLS;
    let (mut color, mut shifts, mut boxes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut z, mut quarter, mut reconstruction) = (Vec::new(), Vec::new(), Vec::new());
    for (i, st) in t.trace.steps.iter().enumerate() {
        let (Some(q), Some(rec), true) =
            (st.quarter, &st.reconstruction, st.diff_augment.len() == k)
        else {
            bail!(
                "twin trace: step {i} recorded {} of {k} DiffAugment calls, quarter {:?}, \
                 reconstruction loss recorded: {}",
                st.diff_augment.len(),
                st.quarter,
                st.reconstruction.is_some()
            );
        };
        z.extend(&st.latents);
        quarter.push(q as f32);
        reconstruction.extend(rec.to_vec()?);
        for p in &st.diff_augment {
            color.extend(&p.color);
            shifts.extend(p.shifts.iter().map(|&v| v as f32));
            boxes.extend(p.boxes.iter().map(|&v| v as f32));
        }
    }
    let n = t.trace.steps.len();
    if n != steps {
        bail!("twin trace: {n} steps recorded for {steps} run");
    }
    let host = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, Device::Cpu);
    let tensors = [
        ("real", host(real, &[n, b, 3, s, s])?),
        ("z", host(z, &[n, b, nz])?),
        ("color", host(color, &[n, k, b, 3])?),
        ("shifts", host(shifts, &[n, k, b, 2])?),
        ("boxes", host(boxes, &[n, k, b, 4])?),
        ("quarter", host(quarter, &[n])?),
        ("loss_d", host(loss_d, &[n])?),
        ("loss_g", host(loss_g, &[n])?),
        ("reconstruction", host(reconstruction, &[n])?),
    ];
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(name, t)| (*name, t)).collect();
    let mut files = vec![
        ("twin.json".to_string(), recipe_json(&t, steps).into_bytes()),
        ("trace.safetensors".into(), tensors_bytes(&named)?),
    ];
    files.extend(init);
    files.extend(model_files(&t, "final")?);
    for (name, bytes) in files {
        write_atomic(&out.join(name), &bytes)?;
    }
    Ok(())
}

/// G's and D's state dicts as `generator_{when}.safetensors`, `discriminator_{when}...`.
fn model_files(t: &Trainer, when: &str) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(vec![
        (
            format!("generator_{when}.safetensors"),
            state_dict_bytes(&t.g, model_metadata())?,
        ),
        (
            format!("discriminator_{when}.safetensors"),
            state_dict_bytes(&t.d, model_metadata())?,
        ),
    ])
}

/// The recipe the twin rebuilds the models and optimisers from (Adam's as the trainer set it).
fn recipe_json(t: &Trainer, steps: usize) -> String {
    let (cfg, m, opt) = (&t.cfg, &t.cfg.model, &t.opt_d);
    serde_json::json!({
        "preset": m.preset.to_string(),
        "image_size": m.image_size,
        "nz": m.nz,
        "ngf": m.ngf,
        "ndf": m.ndf,
        "batch_size": cfg.batch_size,
        "steps": steps,
        "seed": cfg.seed,
        "loss": cfg.loss.to_string(),
        "diffaugment": cfg.diffaugment.describe(),
        "lr_d": opt.groups[0].lr,
        "lr_g": t.opt_g.groups[0].lr,
        "beta1": opt.beta1,
        "beta2": opt.beta2,
        "adam_eps": opt.eps,
        "reconstruction_weight": 1.0,
    })
    .to_string()
}
