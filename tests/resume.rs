//! Runs that survive: checkpoints, bit-identical resume, crash safety, the divergence guard,
//! the EMA generator and the dynamic-lr log (CPU; one test with CUDA graphs on the GPU).

use artgan::amp::Precision;
use artgan::backend::Device;
use artgan::checkpoint;
use artgan::data::{self, Augment, Loader};
use artgan::nn::{ModelConfig, Module, Preset};
use artgan::run_folder;
use artgan::tensor::Tensor;
use artgan::train::{self, BatchSource, RunOptions, TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

fn tiny_config(preset: Preset) -> TrainConfig {
    let model = ModelConfig {
        preset,
        image_size: 32,
        nz: 8,
        ngf: 4,
        ndf: 4,
    };
    let mut cfg = TrainConfig::for_model(model);
    cfg.epochs = 4;
    cfg.batch_size = 8;
    cfg.seed = 5;
    // 5 batches per epoch with 2 D steps per G step: a G step straddles each epoch boundary.
    cfg.d_steps = 2;
    cfg.checkpoint_every = 1;
    cfg.keep_checkpoints = 2;
    // Decide often and on every window (the thresholds are hit easily by a tiny model).
    cfg.dynamic_lr = true;
    cfg.lr_window = 3;
    cfg.ema = true;
    cfg.augment = Augment {
        flip: true,
        rotate_deg: 5.0,
    };
    cfg
}

fn loader(cfg: &TrainConfig) -> Loader {
    let set = Arc::new(data::builtin(40, cfg.model.image_size, 9));
    Loader::new(set, cfg.batch_size, cfg.augment, cfg.seed)
}

fn run(
    cfg: &TrainConfig,
    out: &Path,
    resume: Option<PathBuf>,
    stop: Option<usize>,
) -> anyhow::Result<train::TrainOutcome> {
    run_on(Device::Cpu, cfg, &mut loader(cfg), out, resume, stop)
}

fn run_on(
    device: Device,
    cfg: &TrainConfig,
    data: &mut Loader,
    out: &Path,
    resume: Option<PathBuf>,
    stop: Option<usize>,
) -> anyhow::Result<train::TrainOutcome> {
    std::fs::create_dir_all(out).unwrap();
    let mut opts = RunOptions::new(out.to_path_buf(), device);
    opts.resume_from = resume;
    opts.stop_after_epoch = stop;
    train::train(cfg.clone(), data, &mut opts)
}

/// Every file of a checkpoint folder except its manifest (whose CRCs follow from the files).
fn checkpoint_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(checkpoint::MANIFEST_FILE))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// `state.json` with the wall-clock seconds blanked (the only thing allowed to differ).
fn without_seconds(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    for row in v["history"].as_array_mut().unwrap() {
        row["seconds"] = serde_json::Value::Null;
    }
    v
}

/// The final weights and the given checkpoint of run `b` are byte-identical to run `a`'s.
fn assert_same_run(a: &Path, b: &Path, checkpoint_name: &str, context: &str) {
    for f in [
        checkpoint::GENERATOR_FILE,
        checkpoint::GENERATOR_EMA_FILE,
        checkpoint::DISCRIMINATOR_FILE,
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{context}: {f} differs from the uninterrupted run"
        );
    }
    assert_same_checkpoints(
        &a.join("checkpoints").join(checkpoint_name),
        &b.join("checkpoints").join(checkpoint_name),
    );
}

fn assert_same_checkpoints(a: &Path, b: &Path) {
    let (fa, fb) = (checkpoint_bytes(a), checkpoint_bytes(b));
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        if name == "state.json" {
            assert_eq!(without_seconds(x), without_seconds(y), "state.json differs");
        } else if name == checkpoint::CONFIG_FILE {
            // Two runs through the CLI have two run ids: the recipe itself must be the same.
            let (mut cx, mut cy): (serde_json::Value, serde_json::Value) = (
                serde_json::from_slice(x).unwrap(),
                serde_json::from_slice(y).unwrap(),
            );
            cx["run_id"] = serde_json::Value::Null;
            cy["run_id"] = serde_json::Value::Null;
            assert_eq!(cx, cy, "config.json differs beyond its run id");
        } else {
            assert!(
                x == y,
                "{name} differs between {} and {}",
                a.display(),
                b.display()
            );
        }
    }
}

fn resume_is_bit_identical(preset: Preset) {
    resume_is_bit_identical_in(preset, Precision::Fp32);
}

fn resume_is_bit_identical_in(preset: Preset, precision: Precision) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(preset);
    cfg.precision = precision;
    let straight = run(&cfg, &dir.path().join("straight"), None, None).unwrap();
    assert_eq!(straight.history.len(), 4);
    for row in &straight.history {
        assert_eq!(row.loss_scale_d.is_some(), precision == Precision::Amp);
        assert_eq!(row.skipped_steps_g.is_some(), precision == Precision::Amp);
    }

    // Stopped twice: after epoch 1 (mid G cycle: 5 D steps, 2 per G step) and after epoch 3.
    let split = dir.path().join("split");
    let first = run(&cfg, &split, None, Some(1)).unwrap();
    assert_eq!(first.history.len(), 1);
    let (epoch, latest) = run_folder::latest_checkpoint(&split).unwrap().unwrap();
    assert_eq!(epoch, 1);
    // A stopped run has no top-level model files yet.
    assert!(!split.join(checkpoint::GENERATOR_FILE).exists());
    run(&cfg, &split, Some(latest), Some(3)).unwrap();
    let (epoch, latest) = run_folder::latest_checkpoint(&split).unwrap().unwrap();
    assert_eq!(epoch, 3);
    let resumed = run(&cfg, &split, Some(latest), None).unwrap();
    assert_eq!(resumed.history.len(), 4);

    for (a, b) in straight.history.iter().zip(&resumed.history) {
        let (mut a, mut b) = (a.clone(), b.clone());
        a.seconds = 0.0;
        b.seconds = 0.0;
        assert_eq!(a, b, "{preset}: metrics differ");
    }
    assert_same_run(
        &dir.path().join("straight"),
        &split,
        "epoch-0004",
        &preset.to_string(),
    );
    // The run exercised what resume must carry: lr changes and EMA weights unlike the raw ones.
    assert!(
        straight.history.iter().any(|h| !h.lr_changes.is_empty()),
        "{preset}: the dynamic-lr rule never fired; the test does not cover its state"
    );
    let raw = std::fs::read(dir.path().join("straight").join(checkpoint::GENERATOR_FILE)).unwrap();
    let ema = std::fs::read(
        dir.path()
            .join("straight")
            .join(checkpoint::GENERATOR_EMA_FILE),
    )
    .unwrap();
    assert_ne!(raw, ema);
    // Only the newest `keep_checkpoints` remain.
    let kept: Vec<usize> = run_folder::list_checkpoints(&split)
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(kept, vec![4, 3]);
}

/// `--cuda-graphs on` on a GPU: a run stopped and resumed twice (its graphs captured afresh
/// each time) ends bit-identical to the uninterrupted one, and both to a run without graphs.
/// (The loader drops a last partial batch; shape changes are covered in gpu_training_step.)
#[test]
fn dcgan_resume_with_cuda_graphs_is_bit_identical() {
    resume_with_cuda_graphs_is_bit_identical(Preset::Dcgan);
}

/// The same for the classical preset, whose captured steps take dropout and input-noise seeds
/// and the decaying noise std from device buffers written before each step.
#[test]
fn classical_resume_with_cuda_graphs_is_bit_identical() {
    resume_with_cuda_graphs_is_bit_identical(Preset::Classical);
}

fn resume_with_cuda_graphs_is_bit_identical(preset: Preset) {
    let Some(gpu) = common::gpu_device() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(preset);
    cfg.cuda_graphs = true;
    let straight = dir.path().join("straight");
    let history = run_on(gpu, &cfg, &mut loader(&cfg), &straight, None, None)
        .unwrap()
        .history;
    let split = dir.path().join("split");
    run_on(gpu, &cfg, &mut loader(&cfg), &split, None, Some(1)).unwrap();
    for stop in [Some(3), None] {
        let (_, latest) = run_folder::latest_checkpoint(&split).unwrap().unwrap();
        run_on(gpu, &cfg, &mut loader(&cfg), &split, Some(latest), stop).unwrap();
    }
    assert_same_run(&straight, &split, "epoch-0004", "resumed with graphs");
    assert!(
        history.iter().any(|h| !h.lr_changes.is_empty()),
        "the dynamic-lr rule never fired; the test does not cover lr changes under graphs"
    );
    let eager_cfg = TrainConfig {
        cuda_graphs: false,
        ..cfg.clone()
    };
    let eager = dir.path().join("eager");
    let eager_history = run_on(gpu, &eager_cfg, &mut loader(&cfg), &eager, None, None)
        .unwrap()
        .history;
    for (a, b) in history.iter().zip(&eager_history) {
        let (mut a, mut b) = (a.clone(), b.clone());
        a.seconds = 0.0;
        b.seconds = 0.0;
        assert_eq!(a, b, "metrics with and without graphs differ");
    }
    for f in [
        checkpoint::GENERATOR_FILE,
        checkpoint::GENERATOR_EMA_FILE,
        checkpoint::DISCRIMINATOR_FILE,
    ] {
        assert!(
            std::fs::read(straight.join(f)).unwrap() == std::fs::read(eager.join(f)).unwrap(),
            "{f} differs between the runs with and without graphs"
        );
    }
}

#[test]
fn dcgan_resume_is_bit_identical() {
    resume_is_bit_identical(Preset::Dcgan);
}

#[test]
fn classical_resume_is_bit_identical() {
    resume_is_bit_identical(Preset::Classical);
}

/// Mixed precision carries more state (each optimiser's loss scale, its clean-step tracker and
/// its counts of applied and skipped steps, which set Adam's bias corrections): saved with the
/// moments, so the resumed run still ends byte-identical, metrics.csv's scale columns included.
#[test]
fn dcgan_amp_resume_is_bit_identical() {
    resume_is_bit_identical_in(Preset::Dcgan, Precision::Amp);
}

#[test]
fn a_crash_mid_checkpoint_leaves_the_previous_one_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Preset::Dcgan);
    let out = dir.path().join("run");
    run(&cfg, &out, None, Some(3)).unwrap();
    let ckpts = out.join("checkpoints");
    // A checkpoint being written when the process died: a partial folder...
    std::fs::create_dir(ckpts.join(".partial-epoch-0004")).unwrap();
    std::fs::write(
        ckpts.join(".partial-epoch-0004/generator.safetensors"),
        b"half",
    )
    .unwrap();
    // ...and the newest complete one damaged afterwards (a truncated copy).
    let g3 = ckpts.join("epoch-0003").join(checkpoint::GENERATOR_FILE);
    let bytes = std::fs::read(&g3).unwrap();
    std::fs::write(&g3, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::verify_checkpoint(&ckpts.join("epoch-0003")).unwrap_err();
    assert!(
        format!("{err:#}").contains("bytes, its manifest says"),
        "{err:#}"
    );

    let (epoch, latest) = run_folder::latest_checkpoint(&out).unwrap().unwrap();
    assert_eq!(epoch, 2, "the damaged epoch-0003 must be skipped");
    // It loads and training goes on from it to the end.
    let resumed = run(&cfg, &out, Some(latest), None).unwrap();
    assert_eq!(resumed.history.len(), 4);
    assert!(
        !ckpts.join(".partial-epoch-0004").exists(),
        "leftover partial folder not cleaned"
    );
    let g = run_folder::load_sampling_generator(&out, true, false, Device::Cpu).unwrap();
    assert!(g.2, "EMA weights expected");
}

/// Real batches, except the one at `bad_step` (0-based) which is all NaN.
struct PoisonedBatches {
    inner: Loader,
    served: usize,
    bad_step: usize,
}

impl BatchSource for PoisonedBatches {
    fn image_count(&self) -> usize {
        self.inner.image_count()
    }
    fn batches_per_epoch(&self) -> usize {
        BatchSource::batches_per_epoch(&self.inner)
    }
    fn start_epoch(&mut self, epoch: usize) {
        BatchSource::start_epoch(&mut self.inner, epoch)
    }
    fn next_batch(&mut self, device: Device) -> anyhow::Result<Option<Tensor>> {
        let Some(b) = BatchSource::next_batch(&mut self.inner, device)? else {
            return Ok(None);
        };
        self.served += 1;
        if self.served - 1 == self.bad_step {
            return Ok(Some(Tensor::full(b.shape(), f32::NAN, device)?));
        }
        Ok(Some(b))
    }
}

#[test]
fn the_divergence_guard_stops_at_the_bad_step_and_keeps_the_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Preset::Dcgan);
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // 5 batches per epoch: step 13 (1-based) is in epoch 3, after checkpoints 1 and 2.
    let mut data = PoisonedBatches {
        inner: loader(&cfg),
        served: 0,
        bad_step: 12,
    };
    let mut opts = RunOptions::new(out.clone(), Device::Cpu);
    let Err(err) = train::train(cfg.clone(), &mut data, &mut opts) else {
        panic!("training on a NaN batch did not stop");
    };
    let msg = format!("{err:#}");
    assert!(msg.contains("diverged at step 13 (epoch 3)"), "{msg}");
    assert!(
        msg.contains("epoch-0002"),
        "message must name the last good checkpoint: {msg}"
    );
    assert!(msg.contains("--resume"), "{msg}");
    let (epoch, latest) = run_folder::latest_checkpoint(&out).unwrap().unwrap();
    assert_eq!(epoch, 2);
    // The good checkpoint holds finite weights and resumes (with clean data) to the end.
    let (g, _, _) =
        run_folder::load_sampling_generator(&latest, false, false, Device::Cpu).unwrap();
    for (name, p) in g.parameters() {
        assert!(p.to_vec().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }
    assert_eq!(
        run(&cfg, &out, Some(latest), None).unwrap().history.len(),
        4
    );
}

#[test]
fn ema_follows_its_formula() {
    let mut cfg = tiny_config(Preset::Dcgan);
    cfg.d_steps = 1;
    cfg.ema_half_life_images = 40.0;
    cfg.ema_rampup = 0.0;
    let mut t = Trainer::new(cfg.clone(), Device::Cpu).unwrap();
    let params = |m: &dyn Module| -> Vec<Vec<f32>> {
        m.parameters()
            .iter()
            .map(|(_, p)| p.to_vec().unwrap())
            .collect()
    };
    // At the start the average is the initial weights.
    assert_eq!(params(t.ema.as_ref().unwrap()), params(&t.g));
    let mut data = loader(&cfg);
    data.start_epoch(0);
    let before = params(t.ema.as_ref().unwrap());
    let batch = BatchSource::next_batch(&mut data, Device::Cpu)
        .unwrap()
        .unwrap();
    t.step(&batch).unwrap();
    let beta = 0.5f64.powf(8.0 / 40.0) as f32;
    let after = params(t.ema.as_ref().unwrap());
    let w = params(&t.g);
    let mut moved = false;
    for ((e0, e1), w) in before.iter().zip(&after).zip(&w) {
        for ((&a, &b), &x) in e0.iter().zip(e1).zip(w) {
            let want = beta * a + (1.0 - beta) * x;
            assert!(
                (b - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{b} vs {want}"
            );
            moved |= b != a;
        }
    }
    assert!(moved, "the EMA did not move");
}

#[test]
fn every_lr_change_is_in_metrics_csv() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Preset::Classical);
    let out = dir.path().join("run");
    let outcome = run(&cfg, &out, None, None).unwrap();
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 4);
    let changes: usize = rows
        .iter()
        .map(|r| {
            r[col("lr_changes")]
                .split("; ")
                .filter(|s| !s.is_empty())
                .count()
        })
        .sum();
    assert!(changes > 0);
    // Each logged change names its step and the new lrs; the epoch's last lr columns match the
    // trainer's bounded rule (lr_g · lr_d = base², whatever the level).
    for r in &rows {
        let (d, g): (f32, f32) = (
            r[col("lr_d")].parse().unwrap(),
            r[col("lr_g")].parse().unwrap(),
        );
        assert!((d * g - cfg.lr_d * cfg.lr_g).abs() < 1e-3 * cfg.lr_d * cfg.lr_g);
        let factor = g / cfg.lr_g;
        assert!(factor <= 1.25f32.powi(4) * 1.0001 && factor >= 1.25f32.powi(-4) * 0.9999);
    }
    for note in rows.iter().flat_map(|r| {
        r[col("lr_changes")]
            .split("; ")
            .map(str::to_string)
            .collect::<Vec<_>>()
    }) {
        if !note.is_empty() {
            assert!(note.starts_with("step ") && note.contains("lr D"), "{note}");
        }
    }
    assert_eq!(
        outcome.history.len(),
        4,
        "the run must have trained every epoch"
    );
}

#[test]
fn oom_advice_finds_the_largest_fitting_batch() {
    for limit in [2usize, 3, 37, 63] {
        let mut probes = 0;
        let got = train::largest_fitting_batch(64, |b| {
            probes += 1;
            Ok(b <= limit)
        })
        .unwrap();
        assert_eq!(got, Some(limit));
        assert!(probes <= 6, "{probes} probes for 64");
    }
    assert_eq!(
        train::largest_fitting_batch(64, |_| Ok(false)).unwrap(),
        None
    );
    assert!(train::largest_fitting_batch(64, |_| anyhow::bail!("probe broke")).is_err());
}

fn artgan(args: &[&str], cwd: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_artgan"));
    c.args(args).current_dir(cwd);
    c.stdout(std::process::Stdio::null());
    c.stderr(std::process::Stdio::piped());
    c
}

const KILL_RUN: &[&str] = &[
    "train",
    "--quiet",
    "--device",
    "cpu",
    "--image-size",
    "32",
    "--nz",
    "8",
    "--ngf",
    "8",
    "--ndf",
    "8",
    "--batch-size",
    "8",
    "--limit",
    "320",
    "--epochs",
    "8",
    "--d-steps",
    "3",
    "--checkpoint-every",
    "1",
    "--keep-checkpoints",
    "2",
    "--dynamic-lr",
    "--lr-window",
    "7",
    "--seed",
    "4",
];

/// The reference for the interruption tests: `KILL_RUN` to its end in `d/straight`; returns
/// how long the run took.
fn train_kill_run_uninterrupted(d: &Path) -> std::time::Duration {
    let start = std::time::Instant::now();
    let o = artgan(&[KILL_RUN, &["--out", "straight"]].concat(), d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    start.elapsed()
}

#[test]
fn kill_9_at_any_moment_leaves_a_resumable_run_that_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_kill_run_uninterrupted(d);

    // SIGKILL after a spread of delays; each restart resumes from whatever is on disk.
    let mut killed_while_running = 0;
    let mut resume_points = std::collections::BTreeSet::new();
    for (i, delay_ms) in [40u64, 250, 500, 900, 1300, 1700].into_iter().enumerate() {
        let args = if i == 0 {
            [KILL_RUN, &["--out", "killed"]].concat()
        } else {
            // --resume takes the run's own recipe; only epochs and cadences may repeat.
            strip_recipe_values(&[KILL_RUN, &["--resume", "killed"]].concat(), true)
        };
        let mut child = artgan(&args, d).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed_while_running += 1;
        }
        child.wait().unwrap();
        if let Some((epoch, _)) = run_folder::latest_checkpoint(&d.join("killed")).unwrap() {
            resume_points.insert(epoch);
        }
    }
    assert!(
        killed_while_running >= 3,
        "only {killed_while_running} kills hit a running process"
    );
    assert!(
        resume_points.len() >= 2,
        "resumed from {resume_points:?} only"
    );
    let args = strip_recipe_values(&[KILL_RUN, &["--resume", "killed"]].concat(), true);
    let o = artgan(&args, d).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(
        &d.join("straight"),
        &d.join("killed"),
        "epoch-0008",
        &format!("resumed from {resume_points:?}"),
    );
}

/// A kill after the last checkpoint but before the final model files are all written (the
/// manifest goes first, then the files one by one): the resume writes them from that
/// checkpoint instead of calling the run finished.
#[test]
fn a_run_killed_before_its_model_files_writes_them_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_kill_run_uninterrupted(d);
    copy_dir(&d.join("straight"), &d.join("cut"));
    for f in [
        checkpoint::MANIFEST_FILE,
        checkpoint::GENERATOR_EMA_FILE,
        checkpoint::DISCRIMINATOR_FILE,
    ] {
        std::fs::remove_file(d.join("cut").join(f)).unwrap();
    }
    let loud: Vec<&str> = strip_recipe_values(&[KILL_RUN, &["--resume", "cut"]].concat(), true)
        .into_iter()
        .filter(|a| *a != "--quiet")
        .collect();
    succeeds_saying(&loud, d, "writing its model files");
    assert!(d.join("cut").join(checkpoint::MANIFEST_FILE).is_file());
    assert_same_run(
        &d.join("straight"),
        &d.join("cut"),
        "epoch-0008",
        "finished on resume",
    );
    checkpoint::verify_weights_dir(&d.join("cut")).unwrap();

    // A finished run (manifest in place) is left alone.
    let again: Vec<&str> = loud
        .iter()
        .map(|a| if *a == "cut" { "straight" } else { a })
        .collect();
    let written = || {
        let generator = d.join("straight").join(checkpoint::GENERATOR_FILE);
        std::fs::metadata(generator).unwrap().modified().unwrap()
    };
    let before = written();
    succeeds_saying(&again, d, "has already trained 8 epochs");
    assert_eq!(
        before,
        written(),
        "a finished run's model files were rewritten"
    );
}

/// `artgan args` in `d` exits 0 and its output says `what`.
fn succeeds_saying(args: &[&str], d: &Path, what: &str) {
    let o = common::artgan(args, d);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains(what), "{}", common::stdout(&o));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// For a resume, drops the flags (and their values) that only a new run may give.
fn strip_recipe_values<'a>(args: &[&'a str], resume: bool) -> Vec<&'a str> {
    if !resume {
        return args.to_vec();
    }
    let with_value = [
        "--image-size",
        "--nz",
        "--ngf",
        "--ndf",
        "--batch-size",
        "--limit",
        "--d-steps",
        "--lr-window",
        "--seed",
    ];
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if with_value.contains(a) {
            skip = true;
        } else if *a != "--dynamic-lr" {
            out.push(*a);
        }
    }
    out
}

#[test]
fn ctrl_c_checkpoints_mid_epoch_and_the_resumed_run_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let whole_run = train_kill_run_uninterrupted(d);

    // SIGINT after a spread of delays; each restart resumes from the interrupt's checkpoint.
    // The delays are shares of the uninterrupted run's time (600, 350, 500, 450 and 700 ms of
    // a 2.7 s run when measured), so that they still fall inside the runs when the machine or
    // the training step is faster or slower: fixed delays let the resumed runs finish first
    // once the CPU step got faster.
    let mut interrupted = 0;
    let mut mid_epoch = 0;
    for (i, share) in [0.22, 0.13, 0.19, 0.17, 0.26].into_iter().enumerate() {
        let delay = whole_run.mul_f64(share);
        let args = if i == 0 {
            [KILL_RUN, &["--out", "int"]].concat()
        } else {
            strip_recipe_values(&[KILL_RUN, &["--resume", "int"]].concat(), true)
        };
        let mut child = artgan(&args, d).spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            // Ctrl-C, and SIGTERM (what `kill` and service managers send) every other time.
            let sig = if i % 2 == 0 {
                libc::SIGINT
            } else {
                libc::SIGTERM
            };
            // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
            assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(130) => {
                interrupted += 1;
                assert!(
                    err.contains("continue with `artgan train --resume int`"),
                    "{err}"
                );
                let names: Vec<String> = std::fs::read_dir(d.join("int/checkpoints"))
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                if names.iter().any(|n| n.contains('+')) {
                    mid_epoch += 1;
                }
            }
            // Finished before the signal, or (a resume still starting up, before the handler
            // is installed) killed by it like `kill -9`: both leave a resumable run.
            Some(0) | None => {}
            other => panic!("exit {other:?}: {err}"),
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} interrupts hit a running process"
    );
    assert!(mid_epoch >= 2, "only {mid_epoch} mid-epoch checkpoints");
    let args = strip_recipe_values(&[KILL_RUN, &["--resume", "int"]].concat(), true);
    let o = artgan(&args, d).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(
        &d.join("straight"),
        &d.join("int"),
        "epoch-0008",
        "interrupted",
    );
    // The mid-epoch checkpoints have served and are gone.
    let left: Vec<_> = std::fs::read_dir(d.join("int/checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains('+'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The loop reads each step's losses and D outputs from the device only at the end of a
/// window (`--lr-window`) and of an epoch; its metrics rows and dynamic-lr decisions must be
/// exactly those of reading every step right after it. A window of 3 over 5-batch epochs puts
/// window ends inside epochs and across their ends, and the thresholds are hit easily by the
/// tiny model, so lr changes (which must come into force on the very next step) happen.
#[test]
fn metrics_read_per_window_equal_an_eager_read_of_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(Preset::Dcgan);
    cfg.epochs = 3;
    let outcome = run(&cfg, &dir.path().join("run"), None, None).unwrap();
    let deferred: Vec<_> = outcome.history.iter().map(common::epoch_row).collect();
    let eager = common::eager_epoch_rows(&cfg, &mut loader(&cfg), Device::Cpu);
    assert!(
        deferred.iter().any(|r| !r.6.is_empty()),
        "no lr change happened, so the test does not show one taking effect on time: {deferred:?}"
    );
    assert_eq!(deferred, eager);
}
