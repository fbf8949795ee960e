//! The charts of `metrics.csv` (losses, scores, learning rates, quality, …) drawn with plotters
//! into `RUN/plots/`.

use super::{format_number, Metrics, PLOT_SIZE};
use std::ops::Range;
use std::path::Path;

use anyhow::Result;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::data::{plot_err, register_font, save_rgb};

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

pub(super) struct ChartSpec {
    pub(super) file: &'static str,
    title: &'static str,
    pub(super) alt: &'static str,
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

pub(super) fn chart_specs(m: &Metrics) -> Vec<ChartSpec> {
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

pub(super) fn draw_chart(spec: &ChartSpec, path: &Path) -> Result<()> {
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
