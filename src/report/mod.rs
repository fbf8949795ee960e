//! Seeing a run: charts of `metrics.csv` under `plots/` and a static `index.html` in the run
//! folder with the configuration, the latest epoch's numbers, the charts and the sample grids.
//!
//! Training calls [`write_report`] after every epoch, so it reads whatever is there (a missing
//! or header-only `metrics.csv`, empty or NaN cells, columns it does not know) and never fails
//! because of the run's contents, only when it cannot write.
//!
//! Here: reading the run folder. `charts.rs`: the PNG charts; `page.rs`: `index.html`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::checkpoint::write_atomic;

mod charts;
mod page;

use charts::{chart_specs, draw_chart};
pub use page::escape_html;
use page::page;

/// Pixel size of every chart under `plots/`.
pub const PLOT_SIZE: (u32, u32) = (900, 450);

/// Chart files this module owns; one that is not drawn this time is removed, so the folder
/// never shows a chart of data that is gone.
const PLOT_FILES: [&str; 4] = [
    "losses.png",
    "discriminator.png",
    "learning_rates.png",
    "swd.png",
];

/// Options of `artgan report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run folder written by `artgan train`.
    #[arg(value_name = "RUN")]
    pub run: PathBuf,
}

/// What [`write_report`] wrote.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    /// `RUN/index.html`.
    pub index: PathBuf,
    /// The charts drawn this time (paths under `RUN/plots/`).
    pub plots: Vec<PathBuf>,
    /// Epochs found in `metrics.csv`.
    pub epochs: usize,
    /// Problems with the run's files, also shown on the page (unreadable CSV, bad JSON, …).
    pub notes: Vec<String>,
}

/// `artgan report RUN`: regenerates the charts and the page, prints the page's path.
pub fn run(args: &ReportArgs) -> Result<()> {
    let dir = &args.run;
    if !dir.is_dir() {
        bail!("run folder {} does not exist", dir.display());
    }
    if !["config.json", "metrics.csv", "samples"]
        .iter()
        .any(|f| dir.join(f).exists())
    {
        bail!(
            "{} is not a run folder (no config.json, metrics.csv or samples/)",
            dir.display()
        );
    }
    let files = write_report(dir)?;
    for n in &files.notes {
        eprintln!("note: {n}");
    }
    println!("{}", files.index.display());
    Ok(())
}

/// (Re)writes `RUN/plots/*.png` and `RUN/index.html`, each atomically.
pub fn write_report(run_dir: &Path) -> Result<ReportFiles> {
    let mut notes = Vec::new();
    let config = read_config(&run_dir.join("config.json"), &mut notes);
    let metrics = read_metrics(&run_dir.join("metrics.csv"), &mut notes);
    let grids = sample_grids(&run_dir.join("samples"), "epoch-");

    let plot_dir = run_dir.join("plots");
    fs::create_dir_all(&plot_dir)
        .with_context(|| format!("cannot create {}", plot_dir.display()))?;
    let mut plots = Vec::new();
    for spec in chart_specs(&metrics) {
        let path = plot_dir.join(spec.file);
        draw_chart(&spec, &path)?;
        plots.push((spec, path));
    }
    for f in PLOT_FILES {
        if !plots.iter().any(|(s, _)| s.file == f) {
            let _ = fs::remove_file(plot_dir.join(f));
        }
    }

    let html = page(run_dir, &config, &metrics, &plots, &grids, &notes);
    let index = run_dir.join("index.html");
    write_atomic(&index, html.as_bytes())?;
    Ok(ReportFiles {
        index,
        plots: plots.into_iter().map(|(_, p)| p).collect(),
        epochs: metrics.rows.len(),
        notes,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading the run folder

/// A JSON object with its keys in file order (serde_json's map sorts them), so the table
/// starts with preset, image size, … as the trainer writes them.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry()? {
                    v.push(e);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn read_config(path: &Path, notes: &mut Vec<String>) -> Vec<(String, Value)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            notes.push("config.json not found".into());
            return Vec::new();
        }
        Err(e) => {
            notes.push(format!("cannot read config.json: {e}"));
            return Vec::new();
        }
    };
    match serde_json::from_slice::<Ordered>(&bytes) {
        Ok(o) => o.0,
        Err(e) => {
            notes.push(format!("config.json is not a JSON object: {e}"));
            Vec::new()
        }
    }
}

/// `metrics.csv` by header name: one row per epoch (the last one wins if an epoch repeats),
/// sorted by epoch; every cell kept as text.
#[derive(Default)]
pub(super) struct Metrics {
    pub(super) columns: Vec<String>,
    pub(super) epochs: Vec<i64>,
    pub(super) rows: Vec<Vec<String>>,
}

impl Metrics {
    fn col(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    fn cell(&self, row: usize, col: usize) -> &str {
        self.rows[row].get(col).map_or("", |s| s.as_str())
    }

    /// (epoch, value) for every row; `None` where the cell is empty, NaN or not a number.
    fn series(&self, col: usize) -> Vec<(i64, Option<f64>)> {
        (0..self.rows.len())
            .map(|r| (self.epochs[r], number(self.cell(r, col))))
            .collect()
    }

    /// The newest row with a number in `col`: (epoch, value).
    fn latest(&self, col: usize) -> Option<(i64, f64)> {
        (0..self.rows.len())
            .rev()
            .find_map(|r| number(self.cell(r, col)).map(|v| (self.epochs[r], v)))
    }
}

fn number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn read_metrics(path: &Path, notes: &mut Vec<String>) -> Metrics {
    let mut m = Metrics::default();
    let mut reader = match csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
    {
        Ok(r) => r,
        Err(e) => {
            if !path.exists() {
                notes.push("metrics.csv not found: no epoch has finished yet".into());
            } else {
                notes.push(format!("cannot read metrics.csv: {e}"));
            }
            return m;
        }
    };
    match reader.headers() {
        Ok(h) => m.columns = h.iter().map(str::to_string).collect(),
        Err(e) => {
            notes.push(format!("cannot read the header of metrics.csv: {e}"));
            return m;
        }
    }
    let Some(epoch_col) = m.col("epoch") else {
        if !m.columns.is_empty() {
            notes.push("metrics.csv has no epoch column".into());
        }
        return m;
    };
    let mut by_epoch = BTreeMap::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!("metrics.csv: stopped at data row {}: {e}", i + 1));
                break;
            }
        };
        let Some(epoch) = rec
            .get(epoch_col)
            .and_then(number)
            .filter(|e| e.fract() == 0.0)
        else {
            notes.push(format!(
                "metrics.csv: data row {} has no epoch number",
                i + 1
            ));
            continue;
        };
        by_epoch.insert(epoch as i64, rec.iter().map(str::to_string).collect());
    }
    (m.epochs, m.rows) = by_epoch.into_iter().unzip();
    m
}

/// About four significant digits; scientific notation for very small or large values.
pub(super) fn format_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = mant.trim_end_matches('0').trim_end_matches('.');
        return format!("{mant}e{exp}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `samples/<prefix>NNNN.png` (`epoch-` or `classes-epoch-`), newest first: (epoch, path
/// relative to the run folder).
pub(super) fn sample_grids(dir: &Path, prefix: &str) -> Vec<(u64, String)> {
    let mut grids: Vec<(u64, String)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix(prefix)?.strip_suffix(".png")?;
            let epoch = n
                .parse()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))?;
            Some((epoch, format!("samples/{name}")))
        })
        .collect();
    grids.sort_by(|a, b| b.cmp(a));
    grids
}
