//! The run's history of sessions (`sessions.jsonl`): one line per start or resume, with the
//! resumable settings and what changed.

use super::TrainConfig;
use anyhow::{Context, Result};
use std::path::Path;

/// The settings a resume may change, as (name, value) for the run's history.
fn resumable_settings(c: &TrainConfig) -> Vec<(&'static str, String)> {
    vec![
        ("epochs", c.epochs.to_string()),
        ("lr_d", format!("{:e}", c.lr_d)),
        ("lr_g", format!("{:e}", c.lr_g)),
        ("lr_g_detail", format!("{:e}", c.lr_g_detail)),
        ("sample_every", c.sample_every.to_string()),
        ("checkpoint_every", c.checkpoint_every.to_string()),
        ("keep_checkpoints", c.keep_checkpoints.to_string()),
        ("eval_every", c.eval_every.to_string()),
        ("eval_count", c.eval_count.to_string()),
        ("device", c.device.clone()),
        ("diverge_loss", format!("{:e}", c.diverge_loss)),
        ("diverge_steps", c.diverge_steps.to_string()),
    ]
}

/// The resumable settings that differ between `old` and `new`, as `name old -> new`.
pub fn settings_changes(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    resumable_settings(old)
        .into_iter()
        .zip(resumable_settings(new))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| format!("{name} {a} -> {b}"))
        .collect()
}

/// The run's history of sessions, one JSON line per start or resume, only ever appended.
pub const SESSIONS_FILE: &str = "sessions.jsonl";

/// Appends this session to `RUN/sessions.jsonl`: when and by which process it started, from
/// which epoch, with which resumable settings, and what changed since the previous session
/// (`previous`: the run's config before this resume). Earlier lines are never rewritten, so
/// the record of what earlier epochs were trained with survives every resume.
pub fn record_session(
    run_dir: &Path,
    cfg: &TrainConfig,
    previous: Option<&TrainConfig>,
    from_epoch: usize,
) -> Result<()> {
    use std::io::Write;
    let settings: serde_json::Map<String, serde_json::Value> = resumable_settings(cfg)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let line = serde_json::json!({
        "started": crate::run_folder::utc_now(),
        "pid": std::process::id(),
        "resume": previous.is_some(),
        "from_epoch": from_epoch,
        "settings": settings,
        "changed": previous.map(|p| settings_changes(p, cfg)).unwrap_or_default(),
    });
    let path = run_dir.join(SESSIONS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
