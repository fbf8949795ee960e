//! The `artgan` binary: bad input gives one clear `error:` line and a non-zero exit without
//! touching existing files; a tiny train + sample run works end to end.

mod common;
use common::{artgan, assert_one_line_error, stderr, tiny_train};
use std::process::Output;

/// Fails with exactly one `error:` line containing `needle`.
fn assert_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// One epoch of 16 images, quiet.
fn tiny() -> Vec<&'static str> {
    tiny_train(&["--limit", "16", "--epochs", "1", "--quiet"])
}

#[test]
fn help_works_on_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["train", "--help"],
        &["sample", "--help"],
        &["explore", "--help"],
    ] {
        let o = artgan(args, dir.path());
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage"));
    }
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // clap rejects unknown presets itself (exit code 2), naming the valid ones.
    let o = artgan(&["train", "--preset", "stylegan"], d);
    assert_error(&o, "invalid value 'stylegan'");
    assert!(stderr(&o).contains("dcgan") && stderr(&o).contains("classical"));

    let o = artgan(&["train", "--batch-size", "0"], d);
    assert_one_line_error(&o, "batch size must be at least 1");
    let o = artgan(&["train", "--image-size", "100"], d);
    assert_one_line_error(&o, "image size 100 is not supported: use 32, 64 or 128");
    let o = artgan(&["train", "--device", "tpu"], d);
    assert_one_line_error(&o, "bad device \"tpu\": expected auto, cpu, cuda or cuda:N");
    let o = artgan(&["train", "--device", "cpu", "--cuda-graphs", "on"], d);
    assert_one_line_error(
        &o,
        "--cuda-graphs on needs a CUDA device; this run is on cpu",
    );

    // Unwritable output: a path below a regular file.
    std::fs::write(d.join("file"), b"x").unwrap();
    let o = artgan(&["train", "--out", "file/run"], d);
    assert_one_line_error(&o, "cannot create output folder file/run");
    // Nothing ran: no default run folder was made.
    assert!(!d.join("runs").exists());
}

#[test]
fn an_existing_run_is_never_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("run")).unwrap();
    std::fs::write(d.join("run/generator.safetensors"), b"precious").unwrap();
    let o = artgan(&[&tiny()[..], &["--out", "run"]].concat(), d);
    assert_one_line_error(&o, "output folder run is not empty");
    assert_eq!(
        std::fs::read(d.join("run/generator.safetensors")).unwrap(),
        b"precious"
    );
}

#[test]
fn sample_rejects_missing_and_foreign_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = artgan(&["sample", "--checkpoint", "nowhere"], d);
    assert_one_line_error(&o, "nowhere is not a training run folder");

    // A run folder whose generator file is not safetensors.
    std::fs::create_dir(d.join("fake")).unwrap();
    std::fs::write(
        d.join("fake/config.json"),
        r#"{"preset":"dcgan","image_size":32,"nz":8,"ngf":4,"ndf":4}"#,
    )
    .unwrap();
    std::fs::write(d.join("fake/generator.safetensors"), b"GIF89a not a tensor").unwrap();
    let o = artgan(&["sample", "--checkpoint", "fake", "--out", "s"], d);
    assert_one_line_error(
        &o,
        "fake has no manifest.json, so its weights cannot be verified",
    );
    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            "fake",
            "--out",
            "s",
            "--trust-unverified",
        ],
        d,
    );
    assert!(stderr(&o).contains("note: using unverified weights in fake"));
    assert!(
        stderr(&o)
            .contains("error: checkpoint fake/generator.safetensors is not a safetensors file"),
        "{}",
        stderr(&o)
    );
    assert!(
        !d.join("s").exists(),
        "output made before the checkpoint was checked"
    );
}

#[test]
fn tiny_train_then_sample_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Not quiet: the startup lines must say which data it uses and how to change that.
    let args: Vec<&str> = tiny().into_iter().filter(|a| *a != "--quiet").collect();
    let o = artgan(&[&args[..], &["--out", "run", "--seed", "3"]].concat(), d);
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("built-in procedural paintings"), "{stdout}");
    assert!(stdout.contains("--data PATH"), "{stdout}");
    assert!(stdout.contains("epoch   1/1"), "{stdout}");
    for f in [
        "config.json",
        "metrics.csv",
        "generator.safetensors",
        "discriminator.safetensors",
        "samples/epoch-0000.png",
        "samples/epoch-0001.png",
        "generator_ema.safetensors",
        "checkpoints/epoch-0001/state.json",
        "plots/losses.png",
        "index.html",
    ] {
        assert!(d.join("run").join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(d.join("run/metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    assert_eq!(
        lines.next(),
        Some(
            "epoch,step,seconds,loss_d,loss_g,d_x,d_g_z,lr_d,lr_g,lr_g_detail,lr_changes,swd,\
             loss_scale_d,loss_scale_g,skipped_steps_d,skipped_steps_g"
        )
    );
    // --precision auto (the default) on the CPU is fp32: recorded as resolved, no loss scales.
    let config = std::fs::read_to_string(d.join("run/config.json")).unwrap();
    assert!(config.contains(r#""precision": "fp32""#), "{config}");
    assert!(lines.next().unwrap().starts_with("1,2,"));
    let grid = image::open(d.join("run/samples/epoch-0001.png")).unwrap();
    assert_eq!(grid.width(), 8 * (32 + 2) + 2);

    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--count",
            "3",
            "--seed",
            "1",
            "--out",
            "out",
        ],
        d,
    );
    assert!(o.status.success(), "sample failed: {}", stderr(&o));
    for i in 0..3 {
        let img = image::open(d.join(format!("out/sample-{i:04}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
    }
    let latents = artgan::checkpoint::load_tensors(&d.join("out/latents.safetensors")).unwrap();
    assert_eq!(latents["z"].0, vec![3, 8, 1, 1]);

    // A checkpoint of another shape: the config says ngf 8, the weights are ngf 4.
    let cfg = std::fs::read_to_string(d.join("run/config.json")).unwrap();
    // The resolved --cuda-graphs is recorded: on for a CUDA device, off on the CPU.
    let recorded: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let on_cuda = recorded["device"].as_str().unwrap().starts_with("cuda");
    assert_eq!(recorded["cuda_graphs"], serde_json::json!(on_cuda), "{cfg}");
    std::fs::write(
        d.join("run/config.json"),
        cfg.replace("\"ngf\": 4", "\"ngf\": 8"),
    )
    .unwrap();
    let o = artgan(&["sample", "--checkpoint", "run", "--out", "out2"], d);
    assert_one_line_error(
        &o,
        "tensor main.0.weight has shape [8, 16, 4, 4], expected [8, 32, 4, 4]",
    );
}

#[test]
fn precision_amp_is_recorded_logged_and_kept_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = artgan(
        &[&tiny()[..], &["--out", "run", "--precision", "amp"]].concat(),
        d,
    );
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let config = std::fs::read_to_string(d.join("run/config.json")).unwrap();
    assert!(config.contains(r#""precision": "amp""#), "{config}");
    let o = artgan(&["train", "--resume", "run", "--precision", "fp32"], d);
    assert_error(&o, "--precision");
    let o = artgan(&["train", "--resume", "run", "--epochs", "2", "--quiet"], d);
    assert!(o.status.success(), "resume failed: {}", stderr(&o));
    let config = std::fs::read_to_string(d.join("run/config.json")).unwrap();
    assert!(config.contains(r#""precision": "amp""#), "{config}");
    let mut rdr = csv::Reader::from_path(d.join("run/metrics.csv")).unwrap();
    let header = rdr.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        // A few steps from 2^16: halved once per skipped step, never grown (2000 clean steps).
        let scale: f32 = r[col("loss_scale_d")].parse().unwrap();
        let skipped: u32 = r[col("skipped_steps_d")].parse().unwrap();
        assert_eq!(scale, 65536.0 / 2f32.powi(skipped as i32), "{r:?}");
        let scale: f32 = r[col("loss_scale_g")].parse().unwrap();
        let skipped: u32 = r[col("skipped_steps_g")].parse().unwrap();
        assert_eq!(scale, 65536.0 / 2f32.powi(skipped as i32), "{r:?}");
    }
}

/// `--loss hinge` trains with the hinge loss (D's loss starts near 2, where BCE's starts near
/// 2·ln 2), is recorded in config.json, and a resume keeps it (and refuses `--loss` again).
#[test]
fn the_hinge_loss_trains_is_recorded_and_kept_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first_loss_d = |run: &str| -> f32 {
        let metrics = std::fs::read_to_string(d.join(run).join("metrics.csv")).unwrap();
        let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
        let col = header.iter().position(|h| *h == "loss_d").unwrap();
        let row: Vec<&str> = metrics.lines().nth(1).unwrap().split(',').collect();
        row[col].parse().unwrap()
    };
    for (run, loss) in [("hinge", "hinge"), ("bce", "bce")] {
        let o = artgan(
            &[&tiny()[..], &["--out", run, "--loss", loss, "--seed", "4"]].concat(),
            d,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let config = std::fs::read_to_string(d.join(run).join("config.json")).unwrap();
        assert!(
            config.contains(&format!("\"loss\": \"{loss}\"")),
            "{config}"
        );
    }
    let (hinge, bce) = (first_loss_d("hinge"), first_loss_d("bce"));
    assert!((1.0..3.0).contains(&hinge), "hinge loss_d {hinge}");
    assert!((0.7..2.0).contains(&bce), "bce loss_d {bce}");
    assert_ne!(
        std::fs::read(d.join("hinge/generator.safetensors")).unwrap(),
        std::fs::read(d.join("bce/generator.safetensors")).unwrap()
    );
    let o = artgan(&["train", "--resume", "hinge", "--loss", "bce"], d);
    assert_error(&o, "--loss");
    let o = artgan(
        &["train", "--resume", "hinge", "--epochs", "2", "--quiet"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let config = std::fs::read_to_string(d.join("hinge/config.json")).unwrap();
    assert!(config.contains("\"loss\": \"hinge\""), "{config}");
}
