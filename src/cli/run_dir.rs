//! The run folder of a new run: `--out` or the first free `runs/<preset>-NNN`, claimed
//! (created or checked, and locked) so that two runs never share one.

use crate::nn::Preset;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// A new run folder claimed by this process: created here (`created`) or an existing empty
/// one (or any, with `--force`), locked. Until [`NewRunDir::keep`] a failure removes a folder
/// this process created, so a failed start leaves nothing behind.
pub(super) struct NewRunDir {
    lock: Option<crate::run_lock::RunLock>,
    created: bool,
    /// An existing folder that held nothing but our lock file: what is in it on failure is ours.
    was_empty: bool,
    kept: bool,
}

impl NewRunDir {
    pub(super) fn keep(mut self) -> crate::run_lock::RunLock {
        self.kept = true;
        self.lock.take().expect("held until kept")
    }
}

impl Drop for NewRunDir {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            let dir = lock.dir().to_path_buf();
            drop(lock);
            if !self.kept && self.created {
                let _ = fs::remove_dir_all(&dir);
            } else if !self.kept && self.was_empty {
                for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if e.file_name() != crate::run_lock::LOCK_FILE {
                        let p = e.path();
                        let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
                    }
                }
            }
        }
    }
}

/// Whether `dir` holds anything but our lock file.
fn holds_files(dir: &Path) -> Result<bool> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("cannot read output folder {}", dir.display()))?
        .flatten()
        .any(|e| e.file_name() != crate::run_lock::LOCK_FILE))
}

/// Checks `--out` before anything is created: a file, or a folder with files without
/// `--force`, is refused.
fn check_out_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("output {} exists and is not a folder", dir.display());
        }
        if !force && holds_files(dir)? {
            bail!(
                "output folder {} is not empty: choose another --out or pass --force to overwrite",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Claims the run folder of a new run: `--out` (created, or locked and checked again when it
/// exists), else the first free `runs/<preset>-NNN`, made with an operation that fails if
/// the folder exists (then the next number is tried), so two runs never share one.
pub(super) fn claim_run_dir(
    out: Option<&Path>,
    preset: Preset,
    force: bool,
) -> Result<(PathBuf, NewRunDir)> {
    let claim = |dir: &Path| -> Result<Option<NewRunDir>> {
        let created = match fs::create_dir(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create output folder {}", dir.display()))
            }
        };
        if !created && out.is_none() {
            return Ok(None); // numbered folders: taken, try the next number
        }
        let lock = crate::run_lock::lock_run_dir(dir)?;
        let was_empty = !created && !holds_files(dir)?;
        let guard = NewRunDir {
            lock: Some(lock),
            created,
            was_empty,
            kept: false,
        };
        if !created {
            check_out_dir(dir, force)?;
        }
        // Probe: fail now, not after an hour of training.
        let probe = dir.join(".artgan-write-test");
        fs::write(&probe, b"")
            .with_context(|| format!("output folder {} is not writable", dir.display()))?;
        let _ = fs::remove_file(&probe);
        Ok(Some(guard))
    };
    match out {
        Some(dir) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create output folder {}", dir.display()))?;
            }
            let guard = claim(dir)?.expect("an explicit --out is always claimed");
            Ok((dir.to_path_buf(), guard))
        }
        None => {
            fs::create_dir_all("runs").context("cannot create the folder runs/")?;
            for i in 1.. {
                let dir = PathBuf::from(format!("runs/{preset}-{i:03}"));
                if let Some(guard) = claim(&dir)? {
                    return Ok((dir, guard));
                }
            }
            unreachable!("some run number is free")
        }
    }
}
