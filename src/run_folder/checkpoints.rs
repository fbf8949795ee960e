//! The checkpoint folders of a run, `RUN/checkpoints/epoch-NNNN[+BBBBBB]/`: their names, the
//! listing (newest first), the newest usable one, pruning, and which folder's weights a
//! command uses; writing one whole (into `.partial-NAME/`, renamed when complete). What its
//! files hold, and their manifest, is `crate::checkpoint`'s.

use super::run_of_checkpoints;
use crate::backend::Device;
use crate::checkpoint::{
    self, load_generator_for_sampling, verify_weights, write_synced_with_manifest, CONFIG_FILE,
    GENERATOR_FILE, MANIFEST_FILE,
};
use crate::durable::sync_dir;
use crate::nn::Generator;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

// Checkpoint folders: `RUN/checkpoints/epoch-NNNN/`, each complete in itself.
//
// A checkpoint is written into `RUN/checkpoints/.partial-epoch-NNNN/`, every file fsynced, then a
// `manifest.json` (size and CRC-32 of every file) last, and only then is the folder renamed to
// its final name. A crash or `kill -9` at any moment leaves either no folder of that name or a
// complete one; a leftover `.partial-*` folder is ignored and removed by the next write. The
// manifest also catches a later corruption (a truncated copy, a bad disk): such a checkpoint is
// skipped with a warning and the next older one is used.

/// Folder of a run's checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// The folder name of the checkpoint after `epoch`.
pub fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// The folder name of a mid-epoch checkpoint (an interrupted run): `epoch` epochs complete and
/// `batch` batches of the next one done, `epoch-NNNN+BBBBBB`.
pub fn mid_epoch_checkpoint_name(epoch: usize, batch: usize) -> String {
    if batch == 0 {
        checkpoint_name(epoch)
    } else {
        format!("epoch-{epoch:04}+{batch:06}")
    }
}

/// (epochs complete, batches of the next one done) of a checkpoint folder name.
fn parse_checkpoint_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("epoch-")?;
    match rest.split_once('+') {
        Some((e, b)) => Some((e.parse().ok()?, b.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

/// (epochs complete, batches of the next one done) of checkpoint folder `dir` (0, 0 when the
/// name is not a checkpoint's).
pub fn checkpoint_position(dir: &Path) -> (usize, usize) {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_checkpoint_name)
        .unwrap_or((0, 0))
}

/// Writes a checkpoint folder `RUN/checkpoints/epoch-NNNN` holding `files` (name, bytes)
/// atomically (see above) and returns its path. An existing checkpoint of that epoch is replaced.
pub fn write_checkpoint(
    run_dir: &Path,
    epoch: usize,
    files: &[(&str, Vec<u8>)],
) -> Result<PathBuf> {
    write_checkpoint_at(run_dir, epoch, 0, files)
}

/// [`write_checkpoint`] at a position inside an epoch: `batch` batches after epoch `epoch`
/// (see [`mid_epoch_checkpoint_name`]).
pub fn write_checkpoint_at(
    run_dir: &Path,
    epoch: usize,
    batch: usize,
    files: &[(&str, Vec<u8>)],
) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = mid_epoch_checkpoint_name(epoch, batch);
    let partial = root.join(format!(".partial-{name}"));
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove leftover {}", partial.display()))?;
    }
    fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    write_synced_with_manifest(&partial, files)?;
    sync_dir(&partial);
    let done = root.join(&name);
    if done.exists() {
        // Re-checkpointing an epoch (a resumed run that redoes it): the new one replaces it.
        fs::remove_dir_all(&done).with_context(|| format!("cannot replace {}", done.display()))?;
    }
    fs::rename(&partial, &done)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), done.display()))?;
    sync_dir(&root);
    Ok(done)
}

/// The complete checkpoint folders of a run, newest first (by position: epoch, then batch
/// within the next epoch for a mid-epoch one), as (epochs complete, folder).
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&root).with_context(|| format!("cannot read {}", root.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        let name = entry.file_name();
        if let Some(pos) = name.to_str().and_then(parse_checkpoint_name) {
            if entry.path().is_dir() {
                out.push((pos, entry.path()));
            }
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out.into_iter().map(|((e, _), p)| (e, p)).collect())
}

/// The newest checkpoint of a run that passes [`checkpoint::verify_checkpoint`] and belongs to this run,
/// as (epoch, folder); newer ones that fail are reported on stderr and skipped.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    latest_checkpoint_of(run_dir, false)
}

/// [`latest_checkpoint`]; with `trust` (`--trust-unverified`) a checkpoint without a manifest
/// counts too (one whose manifest does not match never does).
pub fn latest_checkpoint_of(run_dir: &Path, trust: bool) -> Result<Option<(usize, PathBuf)>> {
    let run_id = checkpoint::run_id(run_dir);
    for (epoch, dir) in list_checkpoints(run_dir)? {
        let usable = verify_weights(&dir, trust).and_then(|()| {
            let own = checkpoint::run_id(&dir);
            match (&run_id, &own) {
                (Some(run), Some(own)) if run != own => bail!(
                    "it belongs to another run (run id {own}; {} says {run})",
                    run_dir.join(CONFIG_FILE).display()
                ),
                _ => Ok(()),
            }
        });
        match usable {
            Ok(()) => return Ok(Some((epoch, dir))),
            Err(e) => eprintln!("warning: skipping checkpoint {}: {e:#}", dir.display()),
        }
    }
    Ok(None)
}

/// Deletes all but the newest `keep` checkpoints (by epoch) and any leftover `.partial-*`
/// folder; returns how many checkpoints were removed.
pub fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<usize> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let mut removed = 0;
    let all = list_checkpoints(run_dir)?;
    // A mid-epoch checkpoint is only a way back into an interrupted epoch: once a newer
    // checkpoint exists it has served, and it does not take one of the `keep` places.
    let newest = all.first().map(|(_, d)| checkpoint_position(d));
    let (mid, whole): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(_, d)| checkpoint_position(d).1 > 0);
    let stale_mid = mid
        .into_iter()
        .filter(|(_, d)| Some(checkpoint_position(d)) != newest);
    for (_, dir) in whole.into_iter().skip(keep).chain(stale_mid) {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        removed += 1;
    }
    if root.is_dir() {
        for entry in fs::read_dir(&root)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".partial-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(removed)
}

/// The folder holding the weights to use for `path`, verified (see [`verify_weights`] for
/// `trust`): one checkpoint folder as given; a run's final files; else (a run that is still
/// training or was stopped, or whose final files lack their manifest, saying so) its newest
/// verified checkpoint.
pub fn weights_dir(path: &Path, trust: bool) -> Result<PathBuf> {
    if !path.is_dir() {
        bail!(
            "{} is not a training run folder (no such folder)",
            path.display()
        );
    }
    let is_checkpoint = run_of_checkpoints(path).is_some();
    let finals = path.join(GENERATOR_FILE).is_file();
    if is_checkpoint || (finals && path.join(MANIFEST_FILE).is_file()) {
        verify_weights(path, trust)?;
        return Ok(path.to_path_buf());
    }
    if let Some((_, latest)) = latest_checkpoint(path)? {
        if finals {
            eprintln!(
                "note: the final model files in {} have no {MANIFEST_FILE} (the run stopped \
                 while writing them?): using its newest verified checkpoint {}",
                path.display(),
                latest.display()
            );
        }
        return Ok(latest);
    }
    if finals {
        verify_weights(path, trust)?;
        return Ok(path.to_path_buf());
    }
    if let Some((_, latest)) = latest_checkpoint_of(path, trust)? {
        return Ok(latest);
    }
    bail!(
        "{} holds no trained generator: expected {} or a checkpoint under {}/checkpoints/",
        path.display(),
        GENERATOR_FILE,
        path.display()
    )
}

/// Rebuilds the generator to sample with from a run or checkpoint folder (see
/// [`weights_dir`]): its EMA weights when `ema` and the run has them, else the raw ones.
/// Returns the generator, the folder it was read from and whether it is the EMA one.
pub fn load_sampling_generator(
    path: &Path,
    ema: bool,
    trust: bool,
    device: Device,
) -> Result<(Generator, PathBuf, bool)> {
    let dir = weights_dir(path, trust)?;
    let (g, use_ema) = load_generator_for_sampling(&dir, ema, device)?;
    Ok((g, dir, use_ema))
}
