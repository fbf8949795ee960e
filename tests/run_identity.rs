//! No run is ever mistaken for another: `--force` starts empty (the old run moved aside, put
//! back when the start fails), a checkpoint folder is never taken for its run, results never go
//! inside `checkpoints/`, writers never share a temporary file, weights are never used
//! unverified, and stored configurations are checked. Ends with a property test over random
//! sequences of train, force, resume, sample, kill and report on one folder.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

mod common;
use common::{artgan, assert_error_line, stderr, stdout, tiny_train};

/// The tiny quiet CPU run + `extra`, on 16 built-in images.
fn tiny_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = tiny_train(&["--device", "cpu", "--quiet", "--limit", "16"]);
    args.extend_from_slice(extra);
    args
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(o));
    stdout(o)
}

/// Every file under `dir` (relative path, bytes), sorted; the lock file's holder line aside.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name() != ".artgan-lock")
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn run_id(dir: &Path) -> String {
    artgan::checkpoint::run_id(dir).expect("a run id in config.json")
}

#[test]
fn force_starts_empty_and_a_failed_forced_start_puts_the_old_run_back() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(&artgan(
        &tiny_args(&["--out", "run", "--epochs", "2", "--seed", "1"]),
        d,
    ));
    let old = snapshot(&d.join("run"));
    let old_id = run_id(&d.join("run"));

    // A forced start that fails after claiming the folder (3 images, batch 8).
    common::image_folder(&d.join("three"), 3);
    let o = artgan(
        &tiny_args(&[
            "--out", "run", "--force", "--data", "three", "--epochs", "1",
        ]),
        d,
    );
    assert_error_line(&o, &["fewer than one batch"]);
    assert_eq!(
        snapshot(&d.join("run")),
        old,
        "the old run exactly as it was"
    );
    assert!(!d.join("run.replaced-1").exists());

    // A forced start that succeeds: a new run in an empty folder, the old one aside, whole.
    let o = artgan(
        &tiny_args(&["--out", "run", "--force", "--epochs", "1", "--seed", "2"]),
        d,
    );
    ok(&o);
    assert!(
        stderr(&o).contains("moved what was in run to run.replaced-1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&d.join("run.replaced-1")), old);
    let new_id = run_id(&d.join("run"));
    assert_ne!(new_id, old_id);
    let checkpoints: Vec<_> = std::fs::read_dir(d.join("run/checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(checkpoints, ["epoch-0001"], "no checkpoint of the old run");
    // Resume continues the new run, from the new run's weights.
    let o = artgan(&["train", "--resume", "run", "--epochs", "2", "--quiet"], d);
    ok(&o);
    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--count",
            "2",
            "--out",
            "s",
        ],
        d,
    );
    assert!(
        ok(&o).contains(&format!("(run {new_id})")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_checkpoint_folder_is_never_taken_for_its_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(&artgan(&tiny_args(&["--out", "run", "--epochs", "1"]), d));
    let ckpt = d.join("run/checkpoints/epoch-0001");
    let before = snapshot(&ckpt);

    let o = artgan(&["train", "--resume", "run/checkpoints/epoch-0001"], d);
    assert_error_line(&o, &["inside the checkpoints of run", "--resume"]);
    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            "run/checkpoints/epoch-0001",
            "--count",
            "2",
        ],
        d,
    );
    let out = ok(&o);
    assert!(
        out.contains("run/checkpoints/epoch-0001"),
        "says what it reads: {out}"
    );
    assert!(d
        .join("run/samples-seed-0-epoch-0001/sample-0001.png")
        .is_file());
    for out in ["run/checkpoints/mine", "run"] {
        let o = artgan(
            &[
                "sample",
                "--checkpoint",
                "run",
                "--count",
                "2",
                "--out",
                out,
            ],
            d,
        );
        assert_error_line(&o, &["--out"]);
    }
    let o = artgan(&["explore", "--out", "run"], d);
    assert_error_line(&o, &["is a training run's folder"]);
    assert_eq!(snapshot(&ckpt), before, "the checkpoint untouched");

    // Not a run: refused before anything is written (no lock file left in it).
    common::image_folder(&d.join("pictures"), 2);
    let o = artgan(&["train", "--resume", "pictures"], d);
    assert_error_line(&o, &["pictures is not a training run folder"]);
    assert!(!d.join("pictures/.artgan-lock").exists());
    // A conditioning flag given again is refused, `none` too.
    let o = artgan(&["train", "--resume", "run", "--condition", "none"], d);
    assert!(
        !o.status.success() && stderr(&o).contains("--condition"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn weights_and_configurations_are_never_used_unverified() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(&artgan(
        &tiny_args(&["--out", "run", "--epochs", "2", "--checkpoint-every", "1"]),
        d,
    ));
    let sample = |extra: &[&str], out: &str| {
        let args = [
            &[
                "sample",
                "--checkpoint",
                "run",
                "--count",
                "2",
                "--out",
                out,
            ][..],
            extra,
        ];
        artgan(&args.concat(), d)
    };
    // Final files without their manifest: the newest verified checkpoint, said so.
    std::fs::remove_file(d.join("run/manifest.json")).unwrap();
    let o = sample(&[], "a");
    assert!(
        ok(&o).contains("run/checkpoints/epoch-0002"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("have no manifest.json"),
        "{}",
        stderr(&o)
    );
    // …and with no verified checkpoint either: refused, unless trusted.
    for c in ["epoch-0001", "epoch-0002"] {
        std::fs::remove_file(d.join("run/checkpoints").join(c).join("manifest.json")).unwrap();
    }
    assert_error_line(
        &sample(&[], "b"),
        &["cannot be verified", "--trust-unverified"],
    );
    assert!(!d.join("b").exists());
    let o = sample(&["--trust-unverified"], "c");
    ok(&o);
    assert!(stderr(&o).contains("unverified weights"), "{}", stderr(&o));

    // A negative batch-norm variance is refused.
    let t2 = tempfile::tempdir().unwrap();
    let d2 = t2.path();
    ok(&artgan(&tiny_args(&["--out", "run", "--epochs", "1"]), d2));
    let g = d2.join("run/generator_ema.safetensors");
    common::set_first_f32(&g, "main.1.running_var", -1.0);
    common::rewrite_manifest(&d2.join("run"));
    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--count",
            "2",
            "--out",
            "s",
        ],
        d2,
    );
    assert_error_line(&o, &["running_var holds a negative variance"]);

    // Out-of-range stored values are refused by name, before training.
    let config = d2.join("run/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"beta1\": 0.5", "\"beta1\": 7.5")).unwrap();
    let o = artgan(&["train", "--resume", "run", "--epochs", "2"], d2);
    assert_error_line(&o, &["config.json", "beta1 is 7.5"]);
}

#[test]
fn failed_starts_leave_nothing_and_late_failures_are_checked_first() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::image_folder(&d.join("three"), 3);
    let o = artgan(&tiny_args(&["--out", "q/r/s", "--data", "three"]), d);
    assert_error_line(&o, &["fewer than one batch"]);
    assert!(!d.join("q").exists(), "missing parents are removed again");

    std::fs::create_dir(d.join("empty")).unwrap();
    let o = artgan(&tiny_args(&["--out", "empty", "--data", "three"]), d);
    assert_error_line(&o, &["fewer than one batch"]);
    assert_eq!(
        std::fs::read_dir(d.join("empty")).unwrap().count(),
        0,
        "no lock left"
    );

    ok(&artgan(&tiny_args(&["--out", "run", "--epochs", "1"]), d));
    std::fs::create_dir(d.join("folder")).unwrap();
    let o = artgan(
        &[
            "evaluate",
            "--checkpoint",
            "run",
            "--count",
            "8",
            "--json",
            "folder",
        ],
        d,
    );
    assert_error_line(&o, &["--json folder is a folder"]);

    // A resume on changed data says so.
    common::image_folder(&d.join("pics"), 10);
    ok(&artgan(
        &tiny_args(&["--out", "on-pics", "--data", "pics", "--epochs", "1"]),
        d,
    ));
    common::image_folder(&d.join("pics-more"), 12);
    for i in 10..12 {
        let name = format!("img_{i:02}.png");
        std::fs::copy(d.join("pics-more").join(&name), d.join("pics").join(&name)).unwrap();
    }
    let o = artgan(
        &["train", "--resume", "on-pics", "--epochs", "2", "--quiet"],
        d,
    );
    ok(&o);
    assert!(stderr(&o).contains("the data differ"), "{}", stderr(&o));
    assert!(stderr(&o).contains("10 images") && stderr(&o).contains("12 images"));
}

#[test]
fn a_results_folder_has_one_writer() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(&artgan(&tiny_args(&["--out", "run", "--epochs", "1"]), d));
    std::fs::create_dir(d.join("out")).unwrap();
    // Another process writing there holds its lock (this test process stands in for it).
    let held = artgan::run_folder::lock_run_dir(&d.join("out")).unwrap();
    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--count",
            "2",
            "--out",
            "out",
        ],
        d,
    );
    assert_error_line(&o, &["out is in use by process"]);
    drop(held);
    ok(&artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--count",
            "2",
            "--out",
            "out",
        ],
        d,
    ));
}

/// `report RUN` while RUN trains (both write its charts and index.html) never fails.
#[test]
fn report_while_the_run_trains_never_fails() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut args = tiny_train(&["--device", "cpu", "--quiet", "--limit", "64"]);
    args.extend([
        "--epochs",
        "400",
        "--checkpoint-every",
        "50",
        "--out",
        "run",
    ]);
    let mut child = common::artgan_command(&args, d).spawn().unwrap();
    let mut reports = 0;
    while child.try_wait().unwrap().is_none() && reports < 40 {
        if d.join("run/metrics.csv").is_file() {
            let o = artgan(&["report", "run"], d);
            assert!(o.status.success(), "report {reports}: {}", stderr(&o));
            reports += 1;
        }
    }
    let _ = child.kill();
    child.wait().unwrap();
    assert!(reports >= 10, "only {reports} reports while it trained");
}

/// A small deterministic generator for the property test's choices.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The invariants after every command: every checkpoint of the run folder (and of every
/// folder moved aside) verifies and carries its own run's id.
fn check_invariants(d: &Path, history: &str) {
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let run = e.path();
        if !run.join("config.json").is_file() {
            continue;
        }
        let id = artgan::checkpoint::run_id(&run);
        for (_, c) in artgan::run_folder::list_checkpoints(&run).unwrap() {
            artgan::checkpoint::verify_checkpoint(&c)
                .unwrap_or_else(|e| panic!("{} after {history}: {e:#}", c.display()));
            assert_eq!(
                artgan::checkpoint::run_id(&c),
                id,
                "{} belongs to another run, after {history}",
                c.display()
            );
        }
    }
}

/// Random sequences of train, force, resume, sample, kill and report on one folder. Each
/// sample must read the weights of the run that `run/config.json` names at that moment.
/// `ARTGAN_PROPERTY_STEPS` makes it longer (default 16 commands, a few seconds), and
/// `ARTGAN_PROPERTY_SEED` draws another sequence.
#[test]
fn random_command_sequences_never_mix_runs() {
    let steps: usize = std::env::var("ARTGAN_PROPERTY_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let seed: u64 = std::env::var("ARTGAN_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut dice = Dice(seed | 1);
    let mut history: Vec<String> = Vec::new();
    let (mut kills, mut kills_mid_run) = (0, 0);
    let mut epochs = 1;
    // A run of 8 batches an epoch, checkpointed after each: about 50 ms an epoch here, so the
    // kills (after up to 150 ms) land before, during and after checkpoints.
    let new_run = |epochs: &str, seed: &str| {
        let mut args = tiny_train(&["--device", "cpu", "--quiet", "--limit", "64"]);
        args.extend(["--checkpoint-every", "1", "--out", "run", "--force"]);
        args.extend(["--epochs", epochs, "--seed", seed]);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut killed = |args: &[String], dice: &mut Dice| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = common::artgan_command(&args, d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(dice.roll(150)));
        kills += 1;
        if child.try_wait().unwrap().is_none() {
            kills_mid_run += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
    };
    for step in 0..steps {
        let seed = step.to_string();
        let op = if step == 0 { 0 } else { dice.roll(6) };
        match op {
            0 | 1 => {
                epochs = 1 + dice.roll(3) as usize;
                let args = new_run(&epochs.to_string(), &seed);
                if op == 1 {
                    killed(&args, &mut dice);
                    history.push(format!("killed new run (seed {seed})"));
                } else {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    ok(&artgan(&args, d));
                    history.push(format!("new run (seed {seed})"));
                }
            }
            2 | 5 => {
                epochs += 1;
                let e = epochs.to_string();
                let args = ["train", "--resume", "run", "--epochs", &e, "--quiet"];
                if op == 5 {
                    killed(&args.map(String::from), &mut dice);
                    history.push(format!("killed resume to {e}"));
                } else {
                    let o = artgan(&args, d);
                    // A run killed before it wrote its config.json cannot be resumed (it
                    // started nothing); the next new run replaces it.
                    if d.join("run/config.json").is_file() {
                        ok(&o);
                    } else {
                        assert_error_line(&o, &["not a training run folder"]);
                    }
                    history.push(format!("resume to {e}"));
                }
            }
            3 => {
                let out = format!("samples-{step}");
                let id = artgan::checkpoint::run_id(&d.join("run"));
                let o = artgan(
                    &[
                        "sample",
                        "--checkpoint",
                        "run",
                        "--count",
                        "2",
                        "--out",
                        &out,
                    ],
                    d,
                );
                if o.status.success() {
                    let id = id.expect("a run that has weights has an id");
                    let said = stdout(&o);
                    assert!(
                        said.contains(&format!("(run {id})")),
                        "{said} after {history:?}"
                    );
                } else {
                    // Only a run killed before its first checkpoint has nothing to sample.
                    assert!(
                        stderr(&o).contains("holds no trained generator")
                            || stderr(&o).contains("is not a training run folder"),
                        "{} after {history:?}",
                        stderr(&o)
                    );
                    assert!(!d.join(&out).exists());
                }
                history.push("sample".to_string());
            }
            _ => {
                if d.join("run").is_dir() {
                    let o = artgan(&["report", "run"], d);
                    // A run killed before it wrote anything but its lock has nothing to report.
                    if d.join("run/config.json").is_file() {
                        ok(&o);
                    } else {
                        assert_error_line(&o, &["is not a run folder"]);
                    }
                }
                history.push("report".to_string());
            }
        }
        check_invariants(d, &format!("{history:?}"));
    }
    println!("{kills} kills, {kills_mid_run} of a running process: {history:?}");
}
