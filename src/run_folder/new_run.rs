//! The run folder of a new run: `--out` or the first free `runs/<preset>-NNN`, claimed
//! (created or checked, and locked: [`super::claim`]) so that two runs never share one.

use super::{claim, claim_created, OutDir, Purpose};
use crate::nn::Preset;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Claims the run folder of a new run: `--out` (created, or locked and checked when it exists;
/// with `force` an earlier run there is moved aside whole), else the first free
/// `runs/<preset>-NNN`, made with an operation that fails if the folder exists (then the next
/// number is tried), so two runs never share one.
pub fn claim_run_dir(out: Option<&Path>, preset: Preset, force: bool) -> Result<(PathBuf, OutDir)> {
    if let Some(dir) = out {
        return Ok((dir.to_path_buf(), claim(dir, Purpose::Run, force)?));
    }
    fs::create_dir_all("runs").context("cannot create the folder runs/")?;
    for i in 1.. {
        let dir = PathBuf::from(format!("runs/{preset}-{i:03}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((dir.clone(), claim_created(&dir)?)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create output folder {}", dir.display()))
            }
        }
    }
    unreachable!("some run number is free")
}
