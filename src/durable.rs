//! Durable file writes: a file replaced atomically (temp file, fsync, rename, folder fsync), so
//! a crash leaves the old file or the new one, never half of one. A leaf module: checkpoints,
//! grids, reports and the data tools all write through it.

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically: a temporary file of its own in the same folder, fsync,
/// rename over `path`, then fsync the folder so the rename itself survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = unique_tmp_path(path)?;
    let result = write_and_sync(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir);
    }
    Ok(())
}

/// `.NAME.PID-N.tmp` beside `path`: unique to this process and this write, so two writers of
/// the same file (a `report` while training writes the same page, two commands in one folder)
/// never rename each other's half-written temporary file. Hidden, so listings skip it.
pub fn unique_tmp_path(path: &Path) -> Result<std::path::PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}-{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Creates `path` with `bytes` and fsyncs it.
fn write_and_sync(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Creates `path` with `bytes` and fsyncs it (for files inside a folder that is renamed into
/// place afterwards).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    write_and_sync(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Fsyncs a folder, so that a rename inside it is durable (best effort).
pub fn sync_dir(dir: &Path) {
    // Directory fsync is not supported everywhere; the files themselves are already synced.
    // Best effort, so a rename is durable where the platform allows.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers of one file (a `report` while training writes the same page) never trip over
    /// each other's temporary file: with one shared `NAME.tmp` some of these renames failed.
    #[test]
    fn concurrent_writers_of_one_file_all_succeed_and_leave_one_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.html");
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..100 {
                        write_atomic(path, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(
            bytes.iter().all(|&b| b == bytes[0]),
            "one writer's whole file"
        );
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }
}
