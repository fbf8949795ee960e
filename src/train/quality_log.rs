//! `--eval-every-images N`: the SWD of the raw and the EMA generator every N training images,
//! in `RUN/quality.csv`, so that recipes compare at equal images seen (not epochs, whose size
//! depends on the dataset and the batch).

use super::{Evaluator, Trainer};
use crate::checkpoint;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file beside `metrics.csv`.
pub const QUALITY_FILE: &str = "quality.csv";

/// One evaluation: after `step` steps (`images` real images seen by D), the SWD×10³ of the raw
/// generator and of the EMA one (empty without EMA).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityRow {
    pub images: u64,
    pub step: usize,
    /// Epochs done, with the fraction of the current one.
    pub epoch: f64,
    /// Seconds of training so far (evaluations not counted).
    pub seconds: f64,
    pub swd: f32,
    pub swd_ema: Option<f32>,
}

/// Whether the step that brought the images seen to `seen` (from `seen − batch`) crossed a
/// multiple of `every`.
pub fn due(every: u64, seen: u64, batch: u64) -> bool {
    every > 0 && seen / every > seen.saturating_sub(batch) / every
}

/// Evaluates the trainer's raw and EMA generators and appends their row to `rows` and to
/// `out/quality.csv`.
pub fn record(
    trainer: &Trainer,
    evaluate: &mut Evaluator,
    batches_per_epoch: usize,
    seconds: f64,
    rows: &mut Vec<QualityRow>,
    out: &Path,
) -> Result<()> {
    let step = trainer.step;
    let swd = evaluate(&trainer.g).context("evaluating SWD")?;
    let swd_ema = match &trainer.ema {
        Some(e) => Some(evaluate(e).context("evaluating SWD")?),
        None => None,
    };
    rows.push(QualityRow {
        images: (step * trainer.cfg.batch_size) as u64,
        step,
        epoch: step as f64 / batches_per_epoch as f64,
        seconds,
        swd,
        swd_ema,
    });
    write(out, rows)
}

/// The rows of `out/quality.csv` up to `step` (a resumed run redoes what came after its
/// checkpoint); none when the file is missing.
pub fn read_until(out: &Path, step: usize) -> Result<Vec<QualityRow>> {
    let path = out.join(QUALITY_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for row in csv::Reader::from_path(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .deserialize()
    {
        let row: QualityRow = row.with_context(|| format!("{}: a bad row", path.display()))?;
        if row.step <= step {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Writes `rows` as `out/quality.csv`, atomically.
pub fn write(out: &Path, rows: &[QualityRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().context("writing quality.csv")?;
    checkpoint::write_atomic(&out.join(QUALITY_FILE), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evaluation_is_due_when_a_step_crosses_a_multiple() {
        // Batches of 64, every 100 images: after 128, 256 (crossing 200), 320 (300), 448, 512.
        let due_at: Vec<u64> = (1..=8)
            .map(|s| s * 64)
            .filter(|&s| due(100, s, 64))
            .collect();
        assert_eq!(due_at, [128, 256, 320, 448, 512]);
        // Every batch when N divides into it or is smaller; never when off.
        assert!((1..=4).all(|s| due(32, s * 64, 64)));
        assert!(!due(0, 640, 64));
    }
}
