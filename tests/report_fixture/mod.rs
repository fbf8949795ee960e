//! A fake run folder as `artgan train` writes it, shared by the report tests.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// The config value that must come out escaped.
pub const HOSTILE_DATA: &str = "<script>alert('x')</script> & 2048 paintings";

/// The learning-rate change of the fixture (a comma inside, so the CSV quotes it).
pub const LR_CHANGE: &str = "generator lr now initial 2.50e-4, detail 6.25e-5 <up>";
pub const LR_CHANGE_EPOCH: usize = 3;

pub fn write_config(dir: &Path, epochs: usize) {
    // Written as text: the key order is the trainer's (serde_json would sort the keys).
    let config = format!(
        r#"{{
  "preset": "classical", "image_size": 32, "nz": 128, "ngf": 16, "ndf": 16,
  "epochs": {epochs}, "batch_size": 64, "lr": 0.0002, "lr_detail": 5e-5,
  "beta1": 0.5, "beta2": 0.999, "d_steps": 4, "sample_every": 1, "seed": 7,
  "noise_std": 0.1, "dynamic_lr": true, "data": {}, "device": "cpu"
}}"#,
        serde_json::to_string(HOSTILE_DATA).unwrap()
    );
    fs::write(dir.join("config.json"), config).unwrap();
}

pub fn write_metrics(dir: &Path, rows: usize, lr_change: bool, swd: bool) {
    let mut csv = String::from(
        "epoch,step,seconds,loss_d,loss_g,d_x,d_g_z,lr_d,lr_g,lr_g_detail,lr_changes,swd\n",
    );
    let mut lr_g = 2e-4f64;
    for e in 1..=rows {
        let t = e as f64;
        let loss_d = 1.4 - 0.5 * (1.0 - (-t / 8.0).exp()) + 0.05 * (t * 1.7).sin();
        let loss_g = if e == 2 {
            "NaN".to_string()
        } else {
            format!(
                "{}",
                0.7 + 1.5 * (1.0 - (-t / 6.0).exp()) + 0.1 * (t * 0.9).cos()
            )
        };
        let d_x = if e == 4 {
            String::new()
        } else {
            format!("{}", 0.55 + 0.25 * (1.0 - (-t / 5.0).exp()))
        };
        let d_g_z = 0.45 - 0.2 * (1.0 - (-t / 5.0).exp());
        let change = lr_change && e == LR_CHANGE_EPOCH;
        let swd = if swd && e % 2 == 0 {
            format!("{}", 80.0 * (-t / 10.0).exp() + 5.0)
        } else {
            String::new()
        };
        let _ = writeln!(
            csv,
            "{e},{},{},{loss_d},{loss_g},{d_x},{d_g_z},0.0002,{lr_g},{},{},{swd}",
            e * 32,
            t * 7.3,
            lr_g / 4.0,
            if change {
                format!("\"{LR_CHANGE}\"")
            } else {
                String::new()
            },
        );
        if change {
            lr_g *= 1.25;
        }
    }
    fs::write(dir.join("metrics.csv"), csv).unwrap();
}

/// A small 2×2 "grid" of coloured squares (2 px padding, as the trainer's grids).
pub fn write_grid(dir: &Path, epoch: usize) {
    let samples = dir.join("samples");
    fs::create_dir_all(&samples).unwrap();
    let img = image::RgbImage::from_fn(38, 38, |x, y| {
        if x % 18 < 2 || y % 18 < 2 {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([(x * 6) as u8, (y * 6) as u8, (40 * epoch) as u8])
        }
    });
    img.save(samples.join(format!("epoch-{epoch:04}.png")))
        .unwrap();
}

/// config.json, `rows` epochs of metrics with one lr change and SWD, grids of epochs 0 and 2.
pub fn full_run(dir: &Path, rows: usize) {
    write_config(dir, 20);
    write_metrics(dir, rows, true, true);
    write_grid(dir, 0);
    write_grid(dir, 2);
}

/// Every `src="…"` and `href="…"` value of the page, unescaped.
pub fn references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in [" src=\"", " href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').expect("closing quote");
            out.push(
                rest[..end]
                    .replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            );
            rest = &rest[end..];
        }
    }
    out
}
