//! `train --resume RUN`: which run and which of its checkpoints to continue, checked before
//! anything is locked or written.

use super::train::{apply_overrides, TrainArgs};
use crate::backend::Device;
use crate::checkpoint;
use crate::run_folder;
use crate::train::{self, TrainConfig};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A run opened for resuming: its recipe with the new options, its lock, the recipe as it was,
/// and the checkpoint to continue from (`None`: no complete one yet, start again).
pub(super) struct Resumed {
    pub cfg: TrainConfig,
    pub lock: run_folder::RunLock,
    pub previous: TrainConfig,
    pub from: Option<PathBuf>,
}

/// Opens `run` for `train --resume`; `None` when it has already trained `--epochs` (said).
pub(super) fn open(a: &TrainArgs, run: &Path, device: Device) -> Result<Option<Resumed>> {
    // --condition/--labels/--min-images given with --resume are refused by clap (the run's
    // config.json has them), `--condition none` too.
    if a.data.data.is_some() || a.data.artists.is_some() || a.data.genre.is_some() {
        bail!(
            "--resume reads the data options from {}/config.json; do not give them again",
            run.display()
        );
    }
    run_folder::check_resume_target(run)?;
    // Before anything is read for keeps or written: one process per run.
    let lock = run_folder::lock_run_dir(run)?;
    let previous = train::load_config(run)?;
    let mut cfg = previous.clone();
    apply_overrides(&mut cfg, a);
    cfg.validate()
        .with_context(|| format!("resuming {}", run.display()))?;
    crate::limits::check_training(&cfg, device)?;
    let latest = run_folder::latest_checkpoint_of(run, a.trust_unverified)?;
    // The final model files' manifest is written last: without it a run killed after
    // its last checkpoint has not written (all) its model files yet.
    let finished = run.join(checkpoint::MANIFEST_FILE).is_file();
    match &latest {
        Some((epoch, _)) if *epoch > cfg.epochs || (*epoch == cfg.epochs && finished) => {
            println!(
                "{} has already trained {epoch} epochs (of {}): pass --epochs with a larger total to train on",
                run.display(),
                cfg.epochs
            );
            return Ok(None);
        }
        Some((epoch, _)) if *epoch == cfg.epochs && !a.quiet => println!(
            "{} stopped after its last checkpoint (epoch {epoch}): writing its model files",
            run.display()
        ),
        Some((epoch, dir)) if !a.quiet => {
            let batch = run_folder::checkpoint_position(dir).1;
            println!(
                "resuming {} after epoch {epoch}{} ({})",
                run.display(),
                if batch > 0 {
                    format!(" and {batch} batches of the next")
                } else {
                    String::new()
                },
                dir.display()
            )
        }
        None if !a.quiet => println!(
            "{} has no complete checkpoint yet: starting it again from epoch 0",
            run.display()
        ),
        _ => {}
    }
    Ok(Some(Resumed {
        cfg,
        lock,
        previous,
        from: latest.map(|(_, d)| d),
    }))
}
