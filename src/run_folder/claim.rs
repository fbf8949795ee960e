//! Claiming an output folder (a new run's, or the results of `sample`, `interpolate` and
//! `project`): created or checked, locked for this process, and with `--force` started empty,
//! the earlier contents moved aside whole. Until [`OutDir::keep`] a failure undoes it all: the
//! folders made here go, and what was moved aside comes back, so a failed start leaves the
//! place exactly as it found it.

use super::{lock_run_dir, RunLock, CHECKPOINTS_DIR, LOCK_FILE};
use crate::checkpoint::CONFIG_FILE;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// What an output folder is for: what may be in its place already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A training run: `--force` may replace an earlier run (moved aside).
    Run,
    /// A command's results: never a run folder itself, never inside a run's `checkpoints/`.
    Results,
}

/// An output folder claimed by this process (see the module comment).
#[derive(Debug)]
pub struct OutDir {
    lock: Option<RunLock>,
    /// Folders made here, outermost first (missing parents of `--out q/r/s` too).
    made: Vec<PathBuf>,
    /// With `--force`: where the earlier contents went, their lock still held.
    aside: Option<(PathBuf, RunLock)>,
    /// An existing folder that held nothing: on failure what is in it is ours to remove.
    was_empty: bool,
    kept: bool,
}

impl OutDir {
    /// The claimed folder.
    pub fn path(&self) -> &Path {
        self.lock.as_ref().expect("held until kept").dir()
    }

    /// The start succeeded: keep the folder (and its lock, held until dropped).
    pub fn keep(mut self) -> RunLock {
        self.kept = true;
        if let Some((_, lock)) = self.aside.take() {
            lock.release_and_tidy();
        }
        self.lock.take().expect("held until kept")
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let lock = self.lock.take();
        if let Some(lock) = lock {
            if self.was_empty {
                // What is in it now is ours.
                for e in fs::read_dir(lock.dir()).into_iter().flatten().flatten() {
                    if e.file_name() != LOCK_FILE {
                        let p = e.path();
                        let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
                    }
                }
            }
            lock.release_and_tidy();
        }
        if let Some(dir) = self.made.pop() {
            let _ = fs::remove_dir_all(&dir);
            for parent in self.made.iter().rev() {
                let _ = fs::remove_dir(parent); // only while empty
            }
            if let Some((aside, lock)) = self.aside.take() {
                match fs::rename(&aside, &dir) {
                    Ok(()) => lock.moved_to(&dir).release_and_tidy(),
                    Err(e) => eprintln!(
                        "warning: could not move {} back to {}: {e}",
                        aside.display(),
                        dir.display()
                    ),
                }
            }
        }
    }
}

/// Whether `dir` holds anything but a lock file.
fn holds_files(dir: &Path) -> Result<bool> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("cannot read output folder {}", dir.display()))?
        .flatten()
        .any(|e| e.file_name() != LOCK_FILE))
}

/// `path` made absolute, through symbolic links where it exists.
fn absolute(path: &Path) -> PathBuf {
    fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Whether `dir` is a training run's folder: its `config.json` beside its lock, its
/// checkpoints or its model files.
pub fn is_run_folder(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
        && (dir.join(LOCK_FILE).exists()
            || dir.join(CHECKPOINTS_DIR).is_dir()
            || dir.join(crate::checkpoint::GENERATOR_FILE).is_file())
}

/// The run whose `checkpoints/` holds `path` (the folder itself, a checkpoint or anything in
/// one), if any: spelled as `path` is where its own words show it, else absolute.
pub fn run_of_checkpoints(path: &Path) -> Option<PathBuf> {
    let find = |p: &Path| {
        p.ancestors().find_map(|a| {
            let run = a.parent()?;
            (a.file_name()? == CHECKPOINTS_DIR && run.join(CONFIG_FILE).is_file())
                .then(|| run.to_path_buf())
        })
    };
    find(path).or_else(|| find(&absolute(path)))
}

/// Refuses a place inside a run's `checkpoints/` for what `flag` writes: pruning would delete
/// it, and a checkpoint must stay as it was written.
pub fn check_not_in_checkpoints(path: &Path, flag: &str) -> Result<()> {
    if let Some(run) = run_of_checkpoints(path) {
        bail!(
            "{flag} {} is inside the checkpoints of run {}: checkpoints are pruned, so nothing \
             is written there; choose a place outside {}",
            path.display(),
            run.display(),
            run.join(CHECKPOINTS_DIR).display()
        );
    }
    Ok(())
}

/// Refuses an output folder inside a run's `checkpoints/` ([`check_not_in_checkpoints`]), and
/// for `Purpose::Results` a run folder itself (results never mix with a run's files).
pub fn check_place(dir: &Path, purpose: Purpose, flag: &str) -> Result<()> {
    check_not_in_checkpoints(dir, flag)?;
    if purpose == Purpose::Results && is_run_folder(dir) {
        bail!(
            "{flag} {} is a training run's folder: choose another folder (a run folder holds \
             only its own files)",
            dir.display()
        );
    }
    Ok(())
}

/// Claims `dir`, a folder the caller has just created (a numbered run folder), for this
/// process: locked, and removed again on failure.
pub fn claim_created(dir: &Path) -> Result<OutDir> {
    let mut out = OutDir {
        lock: None,
        made: vec![dir.to_path_buf()],
        aside: None,
        was_empty: false,
        kept: false,
    };
    out.lock = Some(lock_run_dir(dir)?);
    Ok(out)
}

/// The first free `DIR.replaced-N` beside `dir`.
fn aside_name(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    (1..)
        .map(|i| dir.with_file_name(format!("{name}.replaced-{i}")))
        .find(|p| !p.exists())
        .expect("some number is free")
}

/// Claims `dir` as an output folder for `purpose`: created (with missing parents), or an
/// existing empty one, or with `force` any existing one, whose contents are moved aside whole
/// to `DIR.replaced-N` (said on stderr) and the folder started empty. Locked before it is
/// looked into, so a second writer is told the folder is in use.
pub fn claim(dir: &Path, purpose: Purpose, force: bool) -> Result<OutDir> {
    check_place(dir, purpose, "--out")?;
    if dir.exists() && !dir.is_dir() {
        bail!("output {} exists and is not a folder", dir.display());
    }
    let mut out = OutDir {
        lock: None,
        made: Vec::new(),
        aside: None,
        was_empty: false,
        kept: false,
    };
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect();
    for folder in missing.into_iter().rev() {
        fs::create_dir(folder)
            .with_context(|| format!("cannot create output folder {}", folder.display()))?;
        out.made.push(folder.to_path_buf());
    }
    out.lock = Some(lock_run_dir(dir)?);
    let made_here = out.made.last().is_some_and(|m| m == dir);
    let existing_files = !made_here && holds_files(dir)?;
    out.was_empty = !made_here && !existing_files;
    if existing_files {
        if !force {
            bail!(
                "output folder {} is not empty: choose another --out, or pass --force to start \
                 it empty (its contents are then moved aside to {})",
                dir.display(),
                aside_name(dir).display()
            );
        }
        let aside = aside_name(dir);
        fs::rename(dir, &aside).with_context(|| {
            format!("cannot move {} aside to {}", dir.display(), aside.display())
        })?;
        // The lock moved with the folder: it keeps the earlier contents ours until kept.
        let lock = out.lock.take().expect("just taken").moved_to(&aside);
        out.aside = Some((aside.clone(), lock));
        fs::create_dir(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        out.made.push(dir.to_path_buf());
        out.lock = Some(lock_run_dir(dir)?);
        eprintln!(
            "note: --force: moved what was in {} to {} (delete it once you no longer need it)",
            dir.display(),
            aside.display()
        );
    }
    // Probe: fail now, not after an hour of work.
    let probe = dir.join(".artgan-write-test");
    fs::write(&probe, b"")
        .with_context(|| format!("output folder {} is not writable", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `dir` with its bytes, sorted.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = walkdir::WalkDir::new(dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let p = e.path().to_path_buf();
                (
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn old_run(dir: &Path) {
        fs::create_dir_all(dir.join("checkpoints/epoch-0009")).unwrap();
        fs::write(dir.join("config.json"), b"{old}").unwrap();
        fs::write(
            dir.join("checkpoints/epoch-0009/generator.safetensors"),
            b"old",
        )
        .unwrap();
    }

    #[test]
    fn a_refused_or_failed_claim_leaves_everything_as_it_was() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        old_run(&run);
        let before = snapshot(&run);
        let e = format!("{:#}", claim(&run, Purpose::Run, false).unwrap_err());
        assert!(e.contains("is not empty"), "{e}");
        assert_eq!(snapshot(&run), before);

        // --force, then a failure before keep: the old contents come back, nothing else stays.
        let claimed = claim(&run, Purpose::Run, true).unwrap();
        assert!(t.path().join("run.replaced-1/config.json").is_file());
        assert_eq!(
            snapshot(&run),
            vec![(PathBuf::from(LOCK_FILE), snapshot(&run)[0].1.clone())]
        );
        fs::write(run.join("config.json"), b"{new}").unwrap();
        drop(claimed);
        assert_eq!(snapshot(&run), before);
        assert!(!t.path().join("run.replaced-1").exists());

        // Missing parents made for `--out q/r/s` go too.
        let deep = t.path().join("q/r/s");
        let claimed = claim(&deep, Purpose::Run, false).unwrap();
        fs::write(deep.join("config.json"), b"{}").unwrap();
        drop(claimed);
        assert!(!t.path().join("q").exists());

        // An existing empty folder is emptied again, its new lock file included.
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        drop(claim(&empty, Purpose::Run, false).unwrap());
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
    }

    #[test]
    fn a_kept_forced_claim_starts_empty_with_the_old_run_aside() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        old_run(&run);
        let before = snapshot(&run);
        let lock = claim(&run, Purpose::Run, true).unwrap().keep();
        let aside = t.path().join("run.replaced-1");
        assert_eq!(snapshot(&aside), before, "moved aside whole");
        assert!(
            !aside.join(LOCK_FILE).exists(),
            "the lock it took there is tidied"
        );
        let names: Vec<_> = fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [LOCK_FILE], "the new run starts empty");
        fs::write(run.join("config.json"), b"{second}").unwrap();
        drop(lock);
        // A second force picks the next free name.
        claim(&run, Purpose::Run, true).unwrap().keep();
        assert!(t.path().join("run.replaced-2").is_dir());
    }

    #[test]
    fn results_never_go_into_a_run_or_its_checkpoints() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        old_run(&run);
        for inside in [
            "checkpoints",
            "checkpoints/epoch-0009",
            "checkpoints/epoch-0009/x",
        ] {
            let e = format!(
                "{:#}",
                claim(&run.join(inside), Purpose::Results, false).unwrap_err()
            );
            assert!(e.contains("inside the checkpoints of run"), "{e}");
            let e = format!(
                "{:#}",
                claim(&run.join(inside), Purpose::Run, true).unwrap_err()
            );
            assert!(e.contains("inside the checkpoints of run"), "{e}");
        }
        let e = format!("{:#}", claim(&run, Purpose::Results, true).unwrap_err());
        assert!(e.contains("is a training run's folder"), "{e}");
        assert!(!t.path().join("run.replaced-1").exists());
        claim(&run.join("samples-seed-0"), Purpose::Results, false)
            .unwrap()
            .keep();
    }
}
