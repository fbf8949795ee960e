//! How a run stops other than by finishing: SIGINT/SIGTERM (a mid-epoch checkpoint, then
//! [`Interrupted`]), divergence (a lower learning rate to suggest) and out of memory (the
//! largest batch size that fits, probed).

use super::{state, EpochStats, TrainConfig, Trainer};
use crate::backend::{self, Device};
use crate::run_folder;
use crate::tensor::Tensor;
use anyhow::{Context, Result};
use std::path::Path;

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

/// A lower learning rate to suggest after a divergence: half the D rate, and at most 2e-4.
pub(super) fn suggested_lr(cfg: &TrainConfig) -> f32 {
    (cfg.lr_d / 2.0).min(2e-4)
}

/// Writes the mid-epoch checkpoint of an interrupted run and returns the [`Interrupted`]
/// error saying how to resume.
pub(super) fn interrupt(
    trainer: &Trainer,
    history: &[EpochStats],
    acc: &state::PartialEpoch,
    out: &Path,
    epoch: usize,
    batches: usize,
) -> anyhow::Error {
    let written =
        state::checkpoint_files_mid_epoch(trainer, history, Some(acc)).and_then(|files| {
            let dir = run_folder::write_checkpoint_at(out, trainer.epoch, acc.batch, &files)?;
            run_folder::prune_checkpoints(out, trainer.cfg.keep_checkpoints)?;
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
pub(super) fn last_good(run_dir: &Path) -> String {
    match run_folder::latest_checkpoint(run_dir) {
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
pub(super) fn out_of_memory_advice(
    e: anyhow::Error,
    cfg: &TrainConfig,
    device: Device,
) -> anyhow::Error {
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
