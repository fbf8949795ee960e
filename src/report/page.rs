//! The run's `index.html`: configuration, the latest epoch's numbers, the charts and the sample
//! grids, in one static page.

use super::charts::ChartSpec;
use super::{format_number, Metrics, PLOT_SIZE};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

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

pub(super) fn page(
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

/// Conditional runs: `samples/classes-epoch-NNNN.png`, newest first, one row per
/// class (in the order of `config.json`'s `class_table`).
fn class_grid_section(h: &mut String, run_dir: &Path) {
    let grids = super::sample_grids(&run_dir.join("samples"), "classes-epoch-");
    if grids.is_empty() {
        return;
    }
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
