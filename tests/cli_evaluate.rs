//! `artgan evaluate` end to end: a tiny trained run is evaluated against the built-in paintings;
//! the printed table and the JSON file agree, the default JSON location follows the checkpoint,
//! and bad input is one clear error line.

use std::path::Path;

mod common;
use common::{artgan, assert_one_line_error, stderr, stdout, tiny_train};

fn row(out: &str, label: &str) -> Vec<f64> {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} row in {out}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn evaluate_prints_the_swd_table_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = tiny_train(&["--limit", "16", "--epochs", "1", "--quiet", "--out", "run"]);
    let o = artgan(&train, d);
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let trained = files(&d.join("run"));

    let o = artgan(
        &[
            "evaluate",
            "--checkpoint",
            "run",
            "--count",
            "64",
            "--seed",
            "2",
            "--floor",
            "--device",
            "cpu",
        ],
        d,
    );
    assert!(o.status.success(), "evaluate failed: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("64 generated vs 64 real images, seed 2"),
        "{out}"
    );
    let (fine, coarse, mean) = (row(&out, "32 px"), row(&out, "16 px"), row(&out, "mean"));
    // Columns: generated, real floor.
    assert_eq!((fine.len(), coarse.len(), mean.len()), (2, 2, 2));
    assert!(((fine[0] + coarse[0]) / 2.0 - mean[0]).abs() < 2e-3);
    // A generator after one epoch on 16 images is far from the paintings.
    assert!(mean[0] > 2.0 * mean[1], "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/evaluate.json")).unwrap())
            .unwrap();
    assert_eq!(json["count"], 64);
    assert_eq!(json["seed"], 2);
    assert_eq!(json["image_size"], 32);
    assert_eq!(json["params"]["directions"], 128);
    assert_eq!(json["swd"]["resolutions"], serde_json::json!([32, 16]));
    assert!((json["swd"]["mean"].as_f64().unwrap() - mean[0]).abs() < 1e-3);
    assert!((json["floor"]["mean"].as_f64().unwrap() - mean[1]).abs() < 1e-3);
    // The built-in set was made large enough for two disjoint draws.
    assert_eq!(json["real_images"], 2048);
    // Only the JSON was added to the run folder.
    let mut expected = trained.clone();
    expected.push("evaluate.json".into());
    expected.sort();
    assert_eq!(files(&d.join("run")), expected);

    // Same seed, same numbers (another process); --json puts the file elsewhere.
    let o = artgan(
        &[
            "evaluate",
            "--checkpoint",
            "run",
            "--count",
            "64",
            "--seed",
            "2",
            "--json",
            "elsewhere/swd.json",
        ],
        d,
    );
    assert!(o.status.success(), "evaluate failed: {}", stderr(&o));
    assert_eq!(row(&stdout(&o), "mean")[0], mean[0]);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("elsewhere/swd.json")).unwrap())
            .unwrap();
    assert_eq!(again["swd"], json["swd"]);
    assert!(again["floor"].is_null());

    // A checkpoint folder: its results go to the run folder, named after the checkpoint.
    let ckpt = d.join("run/checkpoints/epoch-0001");
    let before = files(&ckpt);
    assert!(
        before.contains(&"generator_ema.safetensors".to_string()),
        "{before:?}"
    );
    let o = artgan(
        &[
            "evaluate",
            "--checkpoint",
            "run/checkpoints/epoch-0001",
            "--count",
            "16",
        ],
        d,
    );
    assert!(o.status.success(), "evaluate failed: {}", stderr(&o));
    assert!(d.join("run/evaluate-epoch-0001.json").is_file());
    assert_eq!(
        files(&ckpt),
        before,
        "evaluate wrote into the checkpoint folder"
    );

    let o = artgan(&["evaluate", "--checkpoint", "run", "--count", "0"], d);
    assert_one_line_error(&o, "--count must be at least 1");
}

#[test]
fn evaluate_rejects_missing_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let o = artgan(&["evaluate", "--help"], dir.path());
    assert!(o.status.success());
    assert!(stdout(&o).contains("--floor") && stdout(&o).contains("16384"));
    let o = artgan(&["evaluate", "--checkpoint", "nowhere"], dir.path());
    assert_one_line_error(&o, "nowhere is not a training run folder");
}

#[test]
fn train_eval_every_records_swd_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = artgan(
        &tiny_train(&[
            "--quiet",
            "--device",
            "cpu",
            "--limit",
            "32",
            "--epochs",
            "3",
            "--eval-every",
            "2",
            "--eval-count",
            "16",
            "--out",
            "run",
        ]),
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(d.join("run/metrics.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let col = rdr
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "swd")
        .unwrap();
    let swd: Vec<String> = rdr.records().map(|r| r.unwrap()[col].to_string()).collect();
    // Epoch 2 (every 2nd) and epoch 3 (the last) are evaluated, epoch 1 is not.
    assert_eq!(swd[0], "");
    for v in &swd[1..] {
        let v: f32 = v.parse().unwrap_or_else(|_| panic!("swd cell {v:?}"));
        assert!(v.is_finite() && v > 0.0, "{v}");
    }
    assert!(d.join("run/plots/swd.png").is_file(), "no SWD chart");
}
