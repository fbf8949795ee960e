//! Seeing a run: charts of `metrics.csv` under `plots/` and a static `index.html` in the run
//! folder with the configuration, the latest epoch's numbers, the charts and the sample grids.
//!
//! Training calls [`write_report`] after every epoch, so it reads whatever is there (a missing
//! or header-only `metrics.csv`, empty or NaN cells, columns it does not know) and never fails
//! because of the run's contents, only when it cannot write.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::checkpoint::write_atomic;
use crate::data::{plot_err, register_font, save_rgb};

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
    let grids = sample_grids(&run_dir.join("samples"));

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
struct Metrics {
    columns: Vec<String>,
    epochs: Vec<i64>,
    rows: Vec<Vec<String>>,
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

/// `samples/epoch-NNNN.png`, newest first: (epoch, path relative to the run folder).
fn sample_grids(dir: &Path) -> Vec<(u64, String)> {
    let mut grids: Vec<(u64, String)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("epoch-")?.strip_suffix(".png")?;
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

// ---------------------------------------------------------------------------------------------
// Charts

#[derive(Clone, Copy, PartialEq)]
enum YAxis {
    Auto,
    /// D(x) and D(G(z)) are probabilities.
    Unit,
    Log,
}

struct Line {
    label: String,
    color: RGBColor,
    points: Vec<(i64, Option<f64>)>,
}

struct ChartSpec {
    file: &'static str,
    title: &'static str,
    alt: &'static str,
    y_desc: &'static str,
    y: YAxis,
    lines: Vec<Line>,
    /// Join a line over missing values (SWD is only evaluated on some epochs) instead of
    /// breaking it (a NaN loss is a gap).
    join_gaps: bool,
    /// Epochs marked with a vertical line (learning-rate changes).
    marks: Vec<i64>,
    /// A dashed horizontal reference (0.5 for D's outputs).
    reference: Option<f64>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];
/// Learning-rate changes: a colour no series uses, so the mark stays visible on a grid line.
const MARK_COLOR: RGBColor = RGBColor(230, 159, 0);
const REFERENCE_COLOR: RGBColor = RGBColor(120, 120, 120);

fn chart_specs(m: &Metrics) -> Vec<ChartSpec> {
    let lines = |cols: &[(&str, &str)], positive: bool| -> Vec<Line> {
        cols.iter()
            .enumerate()
            .filter_map(|(i, &(col, label))| {
                let mut points = m.series(m.col(col)?);
                if positive {
                    // A log axis cannot show 0 or less.
                    for p in &mut points {
                        p.1 = p.1.filter(|v| *v > 0.0);
                    }
                }
                points.iter().any(|p| p.1.is_some()).then(|| Line {
                    label: label.to_string(),
                    color: COLORS[i % COLORS.len()],
                    points,
                })
            })
            .collect()
    };
    let lr_cols: Vec<(&str, &str)> = m
        .columns
        .iter()
        .filter(|c| c.starts_with("lr_") && *c != "lr_changes")
        .map(|c| (c.as_str(), c.as_str()))
        .collect();
    let marks = m.col("lr_changes").map_or(Vec::new(), |c| {
        (0..m.rows.len())
            .filter(|&r| !m.cell(r, c).is_empty())
            .map(|r| m.epochs[r])
            .collect()
    });
    let specs = [
        ChartSpec {
            file: "losses.png",
            title: "Losses",
            alt: "loss_d and loss_g per epoch",
            y_desc: "loss (epoch mean)",
            y: YAxis::Auto,
            lines: lines(&[("loss_d", "loss D"), ("loss_g", "loss G")], false),
            join_gaps: false,
            marks: Vec::new(),
            reference: None,
        },
        ChartSpec {
            file: "discriminator.png",
            title: "Discriminator outputs",
            alt: "D(x) and D(G(z)) per epoch",
            y_desc: "probability (epoch mean)",
            y: YAxis::Unit,
            lines: lines(&[("d_x", "D(x)"), ("d_g_z", "D(G(z))")], false),
            join_gaps: false,
            marks: Vec::new(),
            reference: Some(0.5),
        },
        ChartSpec {
            file: "learning_rates.png",
            title: "Learning rates",
            alt: "learning rates per epoch, changes marked",
            y_desc: "learning rate",
            y: YAxis::Log,
            lines: lines(&lr_cols, true),
            join_gaps: false,
            marks,
            reference: None,
        },
        ChartSpec {
            file: "swd.png",
            title: "Sliced Wasserstein distance (lower is better)",
            alt: "SWD per evaluated epoch",
            y_desc: "SWD ×10³",
            y: YAxis::Auto,
            lines: lines(&[("swd", "SWD ×10³")], false),
            join_gaps: true,
            marks: Vec::new(),
            reference: None,
        },
    ];
    specs.into_iter().filter(|s| !s.lines.is_empty()).collect()
}

fn draw_chart(spec: &ChartSpec, path: &Path) -> Result<()> {
    register_font();
    let (w, h) = PLOT_SIZE;
    let values = spec
        .lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let epochs = spec.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (e0, e1) = epochs.fold((i64::MAX, i64::MIN), |(a, b), e| (a.min(e), b.max(e)));
    // One epoch alone still gets an axis around it.
    let x = if e0 < e1 { e0..e1 } else { e0 - 1..e0 + 1 };
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(path))?;
        match spec.y {
            YAxis::Unit => render(&root, spec, x, 0.0..1.0, false, path)?,
            YAxis::Auto => {
                let pad = if hi > lo {
                    (hi - lo) * 0.08
                } else {
                    (lo.abs() * 0.1).max(0.1)
                };
                render(&root, spec, x, lo - pad..hi + pad, false, path)?
            }
            // Less than a decade apart (constant lrs, or the dynamic rule's ×2.44 band): a log
            // axis would get no labelled tick inside that range, a linear one reads better.
            YAxis::Log if hi < lo * 10.0 => {
                let pad = if hi > lo { (hi - lo) * 0.15 } else { lo * 0.25 };
                render(&root, spec, x, (lo - pad).max(0.0)..hi + pad, false, path)?
            }
            YAxis::Log => {
                // From the decade below the smallest value: plotters labels only round values,
                // and a range inside one decade may not have one below the lowest line.
                let a = 10f64.powf((lo / 1.3).log10().floor());
                let b = if hi > lo * 1.5 { hi * 1.3 } else { hi * 2.0 };
                render(&root, spec, x, (a..b).log_scale(), true, path)?
            }
        }
        root.present().map_err(plot_err(path))?;
    }
    save_rgb(buf, w, h, path)
}

fn render<Y>(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    spec: &ChartSpec,
    x: Range<i64>,
    y: Y,
    log: bool,
    path: &Path,
) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let err = plot_err(path);
    let mut chart = ChartBuilder::on(root)
        .caption(spec.title, ("sans-serif", 26))
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(84)
        .build_cartesian_2d(x.clone(), y)
        .map_err(&err)?;
    // plotters 0.3.7's log axis yields each power of ten twice (as the last minor tick of a
    // decade and as the next major one); drawing its label twice makes it look bold.
    let labelled = std::cell::RefCell::new(Vec::<u64>::new());
    let fmt_y = |v: &f64| {
        if log {
            // Only 1, 2 and 5 × 10^k: the other ticks of a decade would overlap.
            let m = v / 10f64.powf(v.log10().floor());
            let first = !labelled.borrow().contains(&v.to_bits());
            labelled.borrow_mut().push(v.to_bits());
            if first && [1.0, 2.0, 5.0].iter().any(|k| (m - k).abs() < 1e-6) {
                format!("{v:.0e}")
            } else {
                String::new()
            }
        } else {
            format_number(*v)
        }
    };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(spec.y_desc)
        .x_labels(12)
        .y_labels(if log { 12 } else { 10 })
        .y_label_formatter(&fmt_y)
        .label_style(("sans-serif", 17))
        .axis_desc_style(("sans-serif", 17))
        .max_light_lines(4)
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(&err)?;
    let (y0, y1) = {
        let r = chart.y_range();
        (r.start, r.end)
    };
    if let Some(v) = spec.reference {
        chart
            .draw_series(DashedLineSeries::new(
                [(x.start, v), (x.end, v)],
                6,
                4,
                REFERENCE_COLOR.stroke_width(1),
            ))
            .map_err(&err)?;
    }
    for (i, &e) in spec.marks.iter().enumerate() {
        let a = chart
            .draw_series(DashedLineSeries::new(
                [(e, y0), (e, y1)],
                8,
                5,
                MARK_COLOR.stroke_width(2),
            ))
            .map_err(&err)?;
        if i == 0 {
            a.label("lr change").legend(|(px, py)| {
                PathElement::new(
                    vec![(px + 10, py - 7), (px + 10, py + 7)],
                    MARK_COLOR.stroke_width(2),
                )
            });
        }
    }
    let n_lines = spec.lines.len();
    for (i, line) in spec.lines.iter().enumerate() {
        // Earlier lines wider, so equal series (lr_d = lr_g) show as a line inside a line.
        let width = 2 + (n_lines - 1 - i).min(2) as u32;
        let style = line.color.stroke_width(width);
        let segments: Vec<Vec<(i64, f64)>> = if spec.join_gaps {
            vec![line
                .points
                .iter()
                .filter_map(|&(e, v)| Some((e, v?)))
                .collect()]
        } else {
            line.points
                .split(|p| p.1.is_none())
                .map(|s| s.iter().map(|&(e, v)| (e, v.unwrap_or_default())).collect())
                .filter(|s: &Vec<_>| !s.is_empty())
                .collect()
        };
        let n: usize = segments.iter().map(Vec::len).sum();
        let mut labelled = false;
        for seg in &segments {
            let a = chart
                .draw_series(LineSeries::new(seg.iter().copied(), style))
                .map_err(&err)?;
            if !labelled {
                let c = line.color;
                a.label(line.label.as_str()).legend(move |(px, py)| {
                    PathElement::new(vec![(px, py), (px + 20, py)], c.stroke_width(width))
                });
                labelled = true;
            }
            // Points when there are few, and always for a lone value between gaps, which a
            // line alone would not show.
            if n <= 40 || seg.len() == 1 {
                chart
                    .draw_series(seg.iter().map(|&p| Circle::new(p, 3, line.color.filled())))
                    .map_err(&err)?;
            }
        }
    }
    // The legend goes into the corner with the least data under it.
    let fx = |e: i64| (e - x.start) as f64 / (x.end - x.start) as f64;
    let fy = |v: f64| {
        if log {
            (v.ln() - y0.ln()) / (y1.ln() - y0.ln())
        } else {
            (v - y0) / (y1 - y0)
        }
    };
    let mut samples = Vec::new();
    for line in &spec.lines {
        let pts: Vec<(f64, f64)> = line
            .points
            .iter()
            .filter_map(|&(e, v)| Some((fx(e), fy(v?))))
            .collect();
        samples.extend(pts.windows(2).flat_map(|w| {
            (0..4).map(move |k| {
                let t = k as f64 / 4.0;
                (
                    w[0].0 + t * (w[1].0 - w[0].0),
                    w[0].1 + t * (w[1].1 - w[0].1),
                )
            })
        }));
        samples.extend(pts.last().copied());
    }
    chart
        .configure_series_labels()
        .position(legend_corner(&samples))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(&err)?;
    Ok(())
}

/// The plot corner (upper right preferred) holding the fewest of `points` (fractions of the
/// plot area, y up).
fn legend_corner(points: &[(f64, f64)]) -> SeriesLabelPosition {
    let (lo, hi) = (0.45, 0.55);
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    corners
        .into_iter()
        .min_by_key(|&(_, right, upper)| {
            points
                .iter()
                .filter(|&&(x, y)| {
                    (if right { x > hi } else { x < lo }) && (if upper { y > 0.7 } else { y < 0.3 })
                })
                .count()
        })
        .map(|c| c.0)
        .unwrap_or(SeriesLabelPosition::UpperRight)
}

// ---------------------------------------------------------------------------------------------
// The page

/// Escapes text for HTML content and double-quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// About four significant digits; scientific notation for very small or large values.
fn format_number(v: f64) -> String {
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

fn format_seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

fn column_label(col: &str) -> &str {
    match col {
        "loss_d" => "loss D",
        "loss_g" => "loss G",
        "d_x" => "D(x)",
        "d_g_z" => "D(G(z))",
        "swd" => "SWD ×10³",
        "seconds" => "time",
        c => c,
    }
}

fn config_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        v => v.to_string(),
    }
}

const STYLE: &str = "
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #1d232a; background: #f4f5f7; }
header { background: #1d2733; color: #fff; padding: 18px 28px; }
header h1 { margin: 0; font-size: 24px; word-break: break-all; }
header p { margin: 4px 0 0; color: #c5ced8; }
main { padding: 8px 28px 32px; max-width: 1500px; }
h2 { font-size: 18px; margin: 26px 0 10px; }
section { margin-bottom: 8px; }
.note { background: #fff6db; border: 1px solid #eed48a; padding: 8px 12px; border-radius: 6px; margin: 12px 0 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 0; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 8px 14px; min-width: 92px; }
.card dt { font-size: 12px; color: #5b6570; }
.card dd { margin: 0; font-size: 20px; font-variant-numeric: tabular-nums; }
.card small { display: block; font-size: 11px; color: #7b858f; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.plots figure, .samples figure { margin: 0; background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 6px; }
.plots img { width: 100%; height: auto; display: block; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
.samples figure:first-child { grid-column: span 2; grid-row: span 2; }
.samples img { width: 100%; height: auto; display: block; image-rendering: pixelated; background: #000; }
figcaption { font-size: 13px; color: #4a535c; text-align: center; padding-top: 4px; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde1e6; }
td, th { padding: 4px 12px; border-bottom: 1px solid #eceef1; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #3a434c; white-space: nowrap; }
td { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 13px; word-break: break-word; }
footer { color: #6b747d; font-size: 13px; margin-top: 28px; }
code { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; }
a { color: #1f5fa8; }
";

/// Only a check for tests and curious readers: once everything has loaded it records on
/// <body> how many images decoded. The page does not need it.
const SCRIPT: &str = "
addEventListener('load', function () {
  var ok = 0, broken = 0, imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
    else if (imgs[i].complete) broken++;
  }
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-broken', broken);
  document.body.setAttribute('data-images-total', imgs.length);
});
";

/// Grids after these many are lazy-loaded, so a long run's page opens quickly.
const EAGER_GRIDS: usize = 12;

fn page(
    run_dir: &Path,
    config: &[(String, Value)],
    m: &Metrics,
    plots: &[(ChartSpec, PathBuf)],
    grids: &[(u64, String)],
    notes: &[String],
) -> String {
    let name = run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| run_dir.display().to_string());
    let e = escape_html;
    let cfg = |k: &str| config.iter().find(|(key, _)| key == k).map(|(_, v)| v);

    // Subtitle: what the run is and how far it got.
    let mut sub = Vec::new();
    if let Some(p) = cfg("preset") {
        sub.push(config_value(p));
    }
    if let Some(s) = cfg("image_size").and_then(Value::as_u64) {
        sub.push(format!("{s}×{s} px"));
    }
    let planned = cfg("epochs").and_then(Value::as_u64);
    match (m.epochs.last(), planned) {
        (Some(ep), Some(n)) => sub.push(format!("epoch {ep} of {n}")),
        (Some(ep), None) => sub.push(format!("epoch {ep}")),
        (None, Some(n)) => sub.push(format!("0 of {n} epochs")),
        (None, None) => {}
    }
    if let Some((_, s)) = m.col("seconds").and_then(|c| m.latest(c)) {
        sub.push(format_seconds(s));
    }
    if let Some(d) = cfg("device") {
        sub.push(format!("device {}", config_value(d)));
    }

    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} · artgan run</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><h1>{}</h1><p>{}</p></header>\n<main>\n",
        e(&name),
        e(&name),
        e(&sub.join(" · "))
    );
    for n in notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", e(n));
    }

    // Latest epoch: every column, the newest value of each (with its epoch when older).
    if let Some(&last) = m.epochs.last() {
        let r = m.rows.len() - 1;
        let _ = writeln!(
            h,
            "<section id=\"latest\"><h2>Epoch {last}</h2><dl class=\"cards\">"
        );
        for (c, col) in m.columns.iter().enumerate() {
            if col == "epoch" || col == "lr_changes" {
                continue;
            }
            let (value, when) = match m.latest(c) {
                Some((ep, v)) => {
                    let text = match col.as_str() {
                        "seconds" => format_seconds(v),
                        "step" => format!("{v}"),
                        _ => format_number(v),
                    };
                    (text, (ep != last).then(|| format!("epoch {ep}")))
                }
                None if !m.cell(r, c).is_empty() => (m.cell(r, c).to_string(), None),
                None => ("–".to_string(), None),
            };
            let _ = write!(
                h,
                "<div class=\"card\"><dt>{}</dt><dd>{}</dd>",
                e(column_label(col)),
                e(&value)
            );
            if let Some(w) = when {
                let _ = write!(h, "<small>{}</small>", e(&w));
            }
            h.push_str("</div>\n");
        }
        h.push_str("</dl>\n");
        if let Some(c) = m.col("lr_changes") {
            let changes: Vec<usize> = (0..m.rows.len())
                .rev()
                .filter(|&r| !m.cell(r, c).is_empty())
                .collect();
            if !changes.is_empty() {
                h.push_str("<h2>Learning-rate changes</h2>\n<table>\n");
                for r in changes {
                    let _ = writeln!(
                        h,
                        "<tr><th>epoch {}</th><td>{}</td></tr>",
                        m.epochs[r],
                        e(m.cell(r, c))
                    );
                }
                h.push_str("</table>\n");
            }
        }
        h.push_str("</section>\n");
    }

    if !plots.is_empty() {
        h.push_str("<section id=\"plots\"><h2>Training curves</h2><div class=\"plots\">\n");
        let (w, ht) = PLOT_SIZE;
        for (spec, _) in plots {
            let _ = writeln!(
                h,
                "<figure><a href=\"plots/{f}\"><img src=\"plots/{f}\" alt=\"{}\" width=\"{w}\" height=\"{ht}\"></a></figure>",
                e(spec.alt),
                f = e(spec.file)
            );
        }
        h.push_str("</div></section>\n");
    }

    h.push_str("<section id=\"samples\"><h2>Samples</h2>\n");
    if grids.is_empty() {
        h.push_str("<p>No sample grids yet.</p>\n");
    } else {
        h.push_str(
            "<p>The same fixed latents after each epoch, newest first (epoch 0 is the untrained \
             generator).</p>\n<div class=\"samples\">\n",
        );
        for (i, (epoch, file)) in grids.iter().enumerate() {
            let caption = if *epoch == 0 {
                "epoch 0 (untrained)".to_string()
            } else {
                format!("epoch {epoch}")
            };
            let lazy = if i >= EAGER_GRIDS {
                " loading=\"lazy\""
            } else {
                ""
            };
            let _ = writeln!(
                h,
                "<figure><a href=\"{f}\"><img src=\"{f}\" alt=\"sample grid, {c}\"{lazy}></a>\
                 <figcaption>{c}</figcaption></figure>",
                f = e(file),
                c = e(&caption)
            );
        }
        h.push_str("</div>\n");
    }
    h.push_str("</section>\n");
    class_grid_section(&mut h, run_dir);

    if !config.is_empty() {
        h.push_str("<section id=\"config\"><h2>Configuration</h2>\n<table>\n");
        for (k, v) in config {
            let _ = writeln!(
                h,
                "<tr><th>{}</th><td>{}</td></tr>",
                e(k),
                e(&config_value(v))
            );
        }
        h.push_str("</table></section>\n");
    }

    // Links only to files that are there now.
    let files: Vec<&str> = [
        "config.json",
        "metrics.csv",
        "generator.safetensors",
        "discriminator.safetensors",
        "skipped.csv",
    ]
    .into_iter()
    .filter(|f| run_dir.join(f).is_file())
    .collect();
    let checkpoints = fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.path().is_dir())
        .count();
    if !files.is_empty() || checkpoints > 0 {
        h.push_str("<section id=\"files\"><h2>Files</h2><p>");
        let links: Vec<String> = files
            .iter()
            .map(|f| format!("<a href=\"{0}\">{0}</a>", e(f)))
            .collect();
        h.push_str(&links.join(" · "));
        if checkpoints > 0 {
            let _ = write!(
                h,
                "{}checkpoints/: {checkpoints} folder{}",
                if links.is_empty() { "" } else { " · " },
                if checkpoints == 1 { "" } else { "s" }
            );
        }
        h.push_str("</p></section>\n");
    }

    let _ = write!(
        h,
        "<footer>Written by artgan after each epoch; <code>artgan report {}</code> rewrites it.</footer>\n\
         </main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
        e(&run_dir.display().to_string())
    );
    h
}

/// Conditional runs (issue 13): `samples/classes-epoch-NNNN.png`, newest first, one row per
/// class (in the order of `config.json`'s `class_table`).
fn class_grid_section(h: &mut String, run_dir: &Path) {
    let mut grids: Vec<(u64, String)> = fs::read_dir(run_dir.join("samples"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("classes-epoch-")?.strip_suffix(".png")?;
            let epoch = n
                .parse()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))?;
            Some((epoch, format!("samples/{name}")))
        })
        .collect();
    if grids.is_empty() {
        return;
    }
    grids.sort_by(|a, b| b.cmp(a));
    let names = crate::checkpoint::load_class_table(run_dir)
        .ok()
        .flatten()
        .map(|t| t.names().join(", "))
        .unwrap_or_default();
    h.push_str("<section id=\"classes\"><h2>Per class</h2>\n");
    let _ = writeln!(
        h,
        "<p>One row per class, the same 8 latents in every row, after each epoch (newest \
         first). Rows from the top: {}.</p>\n<div class=\"samples\">",
        escape_html(&names)
    );
    for (i, (epoch, file)) in grids.iter().enumerate() {
        let lazy = if i >= EAGER_GRIDS {
            " loading=\"lazy\""
        } else {
            ""
        };
        let _ = writeln!(
            h,
            "<figure><a href=\"{f}\"><img src=\"{f}\" alt=\"per-class grid, epoch {epoch}\"{lazy}></a>\
             <figcaption>epoch {epoch}</figcaption></figure>",
            f = escape_html(file)
        );
    }
    h.push_str("</div></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(format_number(0.123456), "0.1235");
        assert_eq!(format_number(12.345), "12.35");
        assert_eq!(format_number(0.0123), "0.0123");
        assert_eq!(format_number(2e-4), "2e-4");
        assert_eq!(format_number(6.25e-5), "6.25e-5");
        assert_eq!(format_number(640.0), "640");
        assert_eq!(format_number(0.5), "0.5");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
