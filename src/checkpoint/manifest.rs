//! Manifests: the size and CRC-32 of every weight file in a folder, written last and checked
//! before weights are used: for a checkpoint folder (made whole or not at all by
//! `crate::run_folder::write_checkpoint_at`) and for the final model files of a run.

use crate::durable::{sync_dir, write_atomic, write_synced};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

/// Writes a run's final model files (`files`: name and bytes) with a `manifest.json` (size and
/// CRC-32 of each) into `dir`. The old manifest goes first and the new one is written last,
/// each file atomically, so at every moment the folder holds either no manifest or one that
/// matches the files it lists: a crash in between leaves unverified files, never wrong ones
/// passed as checked.
pub fn save_final_models(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    remove_manifest(dir)?;
    let mut manifest = Vec::with_capacity(files.len());
    for (file, bytes) in files {
        write_atomic(&dir.join(file), bytes)?;
        manifest.push(ManifestEntry {
            file: file.to_string(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    write_atomic(
        &dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )
}

/// Removes `dir/manifest.json` (before the files it lists are removed or replaced).
pub fn remove_manifest(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Checks the weights in `dir` (a run folder or a checkpoint folder) against its
/// `manifest.json`. Weights without one are refused unless `trust` (`--trust-unverified`:
/// hand-made files, PyTorch weights copied in), which says on stderr that they are unverified.
pub fn verify_weights(dir: &Path, trust: bool) -> Result<()> {
    if dir.join(MANIFEST_FILE).is_file() {
        return verify_checkpoint(dir);
    }
    if !trust {
        bail!(
            "{} has no {MANIFEST_FILE}, so its weights cannot be verified (a run writes one \
             with every checkpoint and its final files): pass --trust-unverified to use these \
             files anyway, e.g. weights copied in from PyTorch",
            dir.display()
        );
    }
    eprintln!(
        "note: using unverified weights in {} (no {MANIFEST_FILE}; --trust-unverified)",
        dir.display()
    );
    Ok(())
}

/// [`verify_weights`] without trust: every weight file checked against its manifest.
pub fn verify_weights_dir(dir: &Path) -> Result<()> {
    verify_weights(dir, false)
}

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestEntry {
    file: String,
    bytes: u64,
    crc32: u32,
}

/// Writes `files` (name, bytes) into `dir`, each fsynced, and their `manifest.json` last (the
/// checkpoint write: see `crate::run_folder::write_checkpoint_at`).
pub fn write_synced_with_manifest(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let mut manifest = Vec::with_capacity(files.len());
    for (file, bytes) in files {
        write_synced(&dir.join(file), bytes)?;
        manifest.push(ManifestEntry {
            file: file.to_string(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    write_synced(
        &dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )
}

/// Checks a checkpoint folder against its manifest: every file present with its size and CRC.
pub fn verify_checkpoint(dir: &Path) -> Result<()> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&mpath).with_context(|| {
        format!(
            "checkpoint {} has no readable {MANIFEST_FILE}",
            dir.display()
        )
    })?;
    let manifest: Vec<ManifestEntry> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a checkpoint manifest ({e})", mpath.display()))?;
    for m in &manifest {
        let p = dir.join(&m.file);
        let bytes = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if bytes.len() as u64 != m.bytes {
            bail!(
                "{} has {} bytes, its manifest says {}",
                p.display(),
                bytes.len(),
                m.bytes
            );
        }
        if crc32fast::hash(&bytes) != m.crc32 {
            bail!(
                "{} does not match the CRC-32 in its manifest (corrupted)",
                p.display()
            );
        }
    }
    Ok(())
}
