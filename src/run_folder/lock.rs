//! One writer per run folder: an exclusive advisory lock (`flock`, through std's
//! [`std::fs::File::try_lock`]) on `RUN/.artgan-lock`, held for the whole run.
//!
//! The kernel drops the lock when the holding process dies in any way (`kill -9` included), so a
//! killed run never leaves a stale lock: the file may stay, the lock does not. The holder's PID
//! and start time are written into the file only so that a second process can say who holds it;
//! they never decide anything.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run folder (hidden: not a result of the run).
pub const LOCK_FILE: &str = ".artgan-lock";

/// A held run-folder lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    dir: PathBuf,
    /// The lock file did not exist before this lock: a start that fails removes it again.
    created: bool,
}

impl RunLock {
    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The same lock after its folder was renamed to `dir`.
    pub fn moved_to(mut self, dir: &Path) -> Self {
        self.dir = dir.to_path_buf();
        self
    }

    /// Releases the lock, removing the lock file when this lock created it (a failed start
    /// leaves the folder as it found it).
    pub fn release_and_tidy(self) {
        let path = self.dir.join(LOCK_FILE);
        let created = self.created;
        drop(self);
        if created {
            let _ = fs::remove_file(path);
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Closing the file releases the lock anyway; clear the holder line first so a stale
        // line is never read as a holder.
        let _ = self.file.set_len(0);
    }
}

/// Takes the lock of run folder `dir` (which must exist), or fails at once with
/// "run folder X is in use by process N (started …)".
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK_FILE);
    let open = |create_new: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .open(&path)
    };
    let (file, created) = match open(true) {
        Ok(f) => (Ok(f), true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (open(false), false),
        Err(e) => (Err(e), false),
    };
    let mut file = file.with_context(|| format!("cannot open the run lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = match holder.split_once(' ') {
                Some((pid, started)) => format!("process {pid} (started {started})"),
                None if !holder.is_empty() => format!("process {holder}"),
                None => "another process".to_string(),
            };
            bail!(
                "run folder {} is in use by {who}: wait for it to finish or stop it first",
                dir.display()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    let lock = RunLock {
        file,
        dir: dir.to_path_buf(),
        created,
    };
    let line = format!("{} {}\n", std::process::id(), utc_now());
    let mut f = &lock.file;
    let result = (|| -> std::io::Result<()> {
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(line.as_bytes())?;
        f.flush()
    })();
    if let Err(e) = result {
        // A full disk: a lock file made here goes again rather than stay behind empty.
        lock.release_and_tidy();
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(lock)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The current time as [`utc_string`].
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_string(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_string(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_string(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_string(1_764_607_530), "2025-12-01 16:45:30 UTC");
    }

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_a_dropped_one_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_run_dir(dir.path()).unwrap();
        let e = format!("{:#}", lock_run_dir(dir.path()).unwrap_err());
        assert!(
            e.contains(&format!("is in use by process {}", std::process::id())),
            "{e}"
        );
        assert!(e.contains("(started 20"), "{e}");
        drop(first);
        lock_run_dir(dir.path()).unwrap();
    }
}
