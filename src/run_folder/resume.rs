//! The target of `train --resume RUN`, checked before anything is locked or written. (Which
//! checkpoint it continues from: [`super::latest_checkpoint_of`].)

use super::run_of_checkpoints;
use crate::checkpoint::CONFIG_FILE;
use anyhow::{bail, Result};
use std::path::Path;

/// Refuses, before anything is locked or written, a `--resume` target that is not a run
/// folder: a checkpoint folder (naming its run) or a folder without `config.json`.
pub fn check_resume_target(run: &Path) -> Result<()> {
    if let Some(owner) = run_of_checkpoints(run) {
        bail!(
            "{} is inside the checkpoints of run {}: resume the run itself with --resume {} \
             (it continues from its newest complete checkpoint)",
            run.display(),
            owner.display(),
            owner.display()
        );
    }
    if !run.is_dir() {
        bail!(
            "{} is not a training run folder (no such folder)",
            run.display()
        );
    }
    if !run.join(CONFIG_FILE).is_file() {
        bail!(
            "{} is not a training run folder (it has no {})",
            run.display(),
            CONFIG_FILE
        );
    }
    Ok(())
}
