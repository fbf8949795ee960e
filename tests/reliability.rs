//! Nothing read is trusted, nothing written is shared. Each test here failed before
//! its fix: corrupted or non-finite weights used, a corrupted cache reused, two processes in
//! one run folder, half-made folders after a failed start, one bad symlink refusing a dataset,
//! negative numbers not naming their flag, an absurd lr training on, unclear CSV and
//! read-only-output errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{artgan, assert_error_line, image_folder, stderr, stdout, tiny_train, write_png};

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "failed: {}", stderr(o));
}

/// The tiny quiet CPU run + `extra`, with `--limit 16` unless `extra` sets it.
fn tiny_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = tiny_train(&["--device", "cpu", "--quiet"]);
    args.extend_from_slice(extra);
    if !extra.contains(&"--limit") {
        args.extend(["--limit", "16"]);
    }
    args
}

fn train(cwd: &Path, extra: &[&str]) -> Output {
    artgan(&tiny_args(extra), cwd)
}

/// Flips one byte of a safetensors file's data section (the header stays valid).
fn flip_data_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b[n - 6] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

/// Overwrites the first f32 of tensor `name` with NaN, keeping the file a valid safetensors.
fn poison_tensor(path: &Path, name: &str) {
    common::set_first_f32(path, name, f32::NAN);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Every command that loads a generator, on `run`, in `cwd`, each with `extra` flags.
fn use_generator(cwd: &Path, run: &str, extra: &[&str]) -> Vec<(&'static str, Output)> {
    let commands: [(&'static str, &[&str]); 4] = [
        ("sample", &["--count", "2", "--out", "s", "--force"]),
        (
            "interpolate",
            &["--count", "2", "--steps", "2", "--out", "i", "--force"],
        ),
        ("evaluate", &["--count", "8", "--json", "e.json"]),
        (
            "project",
            &[
                "--image",
                "photo.png",
                "--steps",
                "2",
                "--variations",
                "1",
                "--out",
                "p",
                "--force",
            ],
        ),
    ];
    commands
        .into_iter()
        .map(|(cmd, flags)| {
            let args = [&[cmd, "--checkpoint", run][..], flags, extra].concat();
            (cmd, artgan(&args, cwd))
        })
        .collect()
}

#[test]
fn corrupted_or_non_finite_weights_are_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_png(&d.join("photo.png"), 3);
    assert_ok(&train(
        d,
        &["--epochs", "2", "--checkpoint-every", "1", "--out", "run"],
    ));
    assert!(d.join("run/manifest.json").is_file());
    for (cmd, o) in use_generator(d, "run", &[]) {
        assert!(o.status.success(), "{cmd} on a good run: {}", stderr(&o));
    }

    // A flipped data byte in the final EMA generator: every command refuses the run.
    copy_dir(&d.join("run"), &d.join("flipped"));
    flip_data_byte(&d.join("flipped/generator_ema.safetensors"));
    for (cmd, o) in use_generator(d, "flipped", &[]) {
        assert_error_line(&o, &["flipped/generator_ema.safetensors", "CRC-32"]);
        assert!(!stdout(&o).contains("sliced Wasserstein"), "{cmd} computed");
    }

    // A checkpoint folder that fails its manifest, named directly.
    flip_data_byte(&d.join("run/checkpoints/epoch-0001/generator_ema.safetensors"));
    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            "run/checkpoints/epoch-0001",
            "--out",
            "s1",
        ],
        d,
    );
    assert_error_line(&o, &["epoch-0001/generator_ema.safetensors", "CRC-32"]);
    assert!(!d.join("s1").exists());

    // NaN weights without a manifest (and no checkpoint to fall back on): refused as
    // unverified, and with --trust-unverified refused naming the file and the tensor.
    copy_dir(&d.join("run"), &d.join("nan"));
    std::fs::remove_file(d.join("nan/manifest.json")).unwrap();
    std::fs::remove_dir_all(d.join("nan/checkpoints")).unwrap();
    poison_tensor(&d.join("nan/generator_ema.safetensors"), "main.0.weight");
    for (cmd, o) in use_generator(d, "nan", &[]) {
        assert_error_line(&o, &["nan has no manifest.json", "--trust-unverified"]);
        assert!(!stdout(&o).contains("sliced Wasserstein"), "{cmd} computed");
    }
    for (cmd, o) in use_generator(d, "nan", &["--trust-unverified"]) {
        assert_error_line(
            &o,
            &[
                "nan/generator_ema.safetensors",
                "tensor main.0.weight",
                "non-finite",
            ],
        );
        assert!(!stdout(&o).contains("sliced Wasserstein"), "{cmd} computed");
    }
}

#[test]
fn a_corrupted_cache_is_rebuilt_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image_folder(&d.join("imgs"), 16);
    let args = [
        &tiny_train(&["--device", "cpu"])[..],
        &["--data", "imgs", "--cache-dir", "cache", "--epochs", "1"],
    ]
    .concat();
    let o = artgan(&[&args[..], &["--out", "a"]].concat(), d);
    assert_ok(&o);
    let cache: PathBuf = std::fs::read_dir(d.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "bin"))
        .expect("a cache file");
    let good = std::fs::read(&cache).unwrap();
    // Pixels only: the last bytes are pixels of the last image; the header stays intact.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 100] ^= 0xff;
    std::fs::write(&cache, &bad).unwrap();

    let o = artgan(&[&args[..], &["--out", "b"]].concat(), d);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("rebuilding cache") && err.contains("CRC-32"),
        "the corrupted cache was not rebuilt: {err}"
    );
    assert!(stdout(&o).contains("cache built"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        good,
        "rebuilt cache differs"
    );
    // The two runs trained on the same pixels.
    assert_eq!(
        std::fs::read(d.join("a/generator.safetensors")).unwrap(),
        std::fs::read(d.join("b/generator.safetensors")).unwrap()
    );
}

/// Waits until `run`'s lock file names a process (the run holds its lock).
fn wait_for_lock(run: &Path, child: &mut std::process::Child) -> String {
    for _ in 0..3000 {
        if let Ok(s) = std::fs::read_to_string(run.join(".artgan-lock")) {
            if !s.trim().is_empty() {
                return s;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the run never took its lock");
}

#[test]
fn a_run_folder_has_one_writer_and_resumes_record_their_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = [
        "--epochs",
        "400",
        "--checkpoint-every",
        "1",
        "--limit",
        "32",
        "--out",
        "run",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_artgan"))
        .args(tiny_args(&long))
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let holder = wait_for_lock(&d.join("run"), &mut child);
    let pid = child.id().to_string();
    assert!(holder.starts_with(&pid), "{holder}");
    // Wait for a checkpoint so that the run is resumable after the kill below.
    while std::fs::read_dir(d.join("run/checkpoints")).map_or(true, |mut r| r.next().is_none()) {
        assert!(child.try_wait().unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let config_before = std::fs::read(d.join("run/config.json")).unwrap();
    let in_use = format!("run folder run is in use by process {pid} (started ");

    let o = train(d, &["--epochs", "1", "--out", "run"]);
    assert_error_line(&o, &[&in_use]);
    let o = train(d, &["--epochs", "1", "--out", "run", "--force"]);
    assert_error_line(&o, &[&in_use]);
    let o = artgan(&["train", "--resume", "run", "--lr", "1e-3", "--quiet"], d);
    assert_error_line(&o, &[&in_use]);
    assert_eq!(
        std::fs::read(d.join("run/config.json")).unwrap(),
        config_before,
        "a refused resume rewrote config.json"
    );

    // Killed: the kernel drops the lock, so the run resumes at once.
    child.kill().unwrap();
    child.wait().unwrap();
    let (done, _) = artgan::run_folder::latest_checkpoint(&d.join("run"))
        .unwrap()
        .expect("a checkpoint");
    let epochs = (done + 1).to_string();
    let o = artgan(
        &[
            "train",
            "--resume",
            "run",
            "--lr",
            "1e-3",
            "--epochs",
            &epochs,
            "--sample-every",
            "3",
            "--quiet",
        ],
        d,
    );
    assert_ok(&o);
    let sessions = std::fs::read_to_string(d.join("run/sessions.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = sessions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{sessions}");
    assert_eq!(lines[0]["resume"], false);
    assert_eq!(lines[0]["settings"]["lr_d"], "2e-4");
    assert_eq!(lines[0]["settings"]["epochs"], "400");
    assert_eq!(lines[1]["from_epoch"], done);
    let changed: Vec<&str> = lines[1]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in [
        format!("epochs 400 -> {epochs}"),
        "lr_d 2e-4 -> 1e-3".to_string(),
        "sample_every 1 -> 3".to_string(),
    ] {
        assert!(changed.contains(&want.as_str()), "{changed:?} lacks {want}");
    }
    let metrics = std::fs::read_to_string(d.join("run/metrics.csv")).unwrap();
    assert!(
        metrics.contains("resumed with epochs 400 -> ") && metrics.contains("sample_every 1 -> 3"),
        "{metrics}"
    );
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = train(d, &["--data", "/no/such/folder", "--out", "o"]);
    assert_error_line(&o, &["/no/such/folder"]);
    assert!(!d.join("o").exists(), "a failed start left o/");
    let o = train(d, &["--data", "/no/such/folder"]);
    assert_error_line(&o, &["/no/such/folder"]);
    assert!(!d.join("runs/dcgan-001").exists());

    // Files that all fail to decode: known only after decoding, still nothing left.
    std::fs::create_dir_all(d.join("junk")).unwrap();
    for i in 0..3 {
        std::fs::write(d.join(format!("junk/x{i}.png")), b"not an image").unwrap();
    }
    let o = train(d, &["--data", "junk", "--out", "o"]);
    assert_error_line(&o, &["no usable image"]);
    assert!(!d.join("o").exists(), "a failed start left o/");

    // The corrected command then works, into the same folder.
    image_folder(&d.join("imgs"), 16);
    assert_ok(&train(
        d,
        &["--data", "imgs", "--epochs", "1", "--out", "o"],
    ));

    // An existing empty folder stays (it was not ours), empty but for nothing.
    std::fs::create_dir(d.join("empty")).unwrap();
    let o = train(d, &["--data", "junk", "--out", "empty"]);
    assert_error_line(&o, &["no usable image"]);
    assert!(d.join("empty").is_dir());
    assert!(!d.join("empty/config.json").exists());

    // Numbered folders: taken ones are skipped, the new one is created exclusively.
    std::fs::create_dir_all(d.join("runs/dcgan-001")).unwrap();
    assert_ok(&train(d, &["--epochs", "1"]));
    assert!(d.join("runs/dcgan-002/config.json").is_file());
    assert!(!d.join("runs/dcgan-001/config.json").exists());
}

#[cfg(unix)]
#[test]
fn bad_symlinks_are_skipped_and_listed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = d.join("imgs");
    image_folder(&imgs, 16);
    symlink("self.jpg", imgs.join("self.jpg")).unwrap();
    symlink("nowhere.png", imgs.join("dangling.png")).unwrap();
    std::fs::create_dir(imgs.join("sub")).unwrap();
    symlink("..", imgs.join("sub/up")).unwrap();
    write_png(&imgs.join("sub/img_sub.png"), 99);

    let o = train(d, &["--data", "imgs", "--epochs", "1", "--out", "run"]);
    assert_ok(&o);
    let skipped = std::fs::read_to_string(d.join("run/skipped.csv")).unwrap();
    for name in ["self.jpg", "dangling.png", "sub/up"] {
        assert!(skipped.contains(name), "{name} not listed: {skipped}");
    }
    assert!(skipped.contains("symbolic link loop"), "{skipped}");

    let o = artgan(
        &[
            "explore",
            "--data",
            "imgs",
            "--out",
            "ex",
            "--image-size",
            "32",
        ],
        d,
    );
    assert_ok(&o);
    let skipped = std::fs::read_to_string(d.join("ex/skipped.csv")).unwrap();
    assert!(skipped.contains("dangling.png"), "{skipped}");

    // Only bad entries: an error, naming one of them.
    let bad = d.join("bad");
    std::fs::create_dir(&bad).unwrap();
    symlink("nowhere.png", bad.join("dangling.png")).unwrap();
    let o = train(d, &["--data", "bad", "--out", "o2"]);
    assert_error_line(&o, &["no image files found", "dangling.png"]);
}

#[test]
fn negative_numbers_name_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--batch-size", "-1"], "--batch-size"),
        (&["train", "--lr", "-1"], "--lr"),
        (&["train", "--lr-d", "-1"], "--lr-d"),
        (&["train", "--lr-g", "-1"], "--lr-g"),
        (&["train", "--lr-g-detail", "-1"], "--lr-g-detail"),
        (&["train", "--epochs", "-3"], "--epochs"),
        (&["train", "--seed", "-1"], "--seed"),
        (&["train", "--nz", "-8"], "--nz"),
        (&["train", "--ngf", "-8"], "--ngf"),
        (&["train", "--ndf", "-8"], "--ndf"),
        (&["train", "--image-size", "-32"], "--image-size"),
        (&["train", "--limit", "-5"], "--limit"),
        (&["train", "--rotate", "-5"], "--rotate"),
        (&["train", "--d-steps", "-1"], "--d-steps"),
        (&["train", "--lr-window", "-1"], "--lr-window"),
        (&["train", "--sample-every", "-1"], "--sample-every"),
        (&["train", "--checkpoint-every", "-1"], "--checkpoint-every"),
        (&["train", "--keep-checkpoints", "-1"], "--keep-checkpoints"),
        (&["train", "--eval-every", "-1"], "--eval-every"),
        (&["train", "--eval-count", "-1"], "--eval-count"),
        (&["train", "--ema-half-life", "-1"], "--ema-half-life"),
        (&["train", "--diverge-loss", "-1"], "--diverge-loss"),
        (&["train", "--diverge-steps", "-1"], "--diverge-steps"),
        (&["sample", "--checkpoint", "r", "--count", "-1"], "--count"),
        (&["sample", "--checkpoint", "r", "--seed", "-1"], "--seed"),
        (
            &["sample", "--checkpoint", "r", "--truncation", "-1"],
            "truncation",
        ),
        (
            &["interpolate", "--checkpoint", "r", "--steps", "-1"],
            "--steps",
        ),
        (&["interpolate", "--checkpoint", "r", "--fps", "-1"], "fps"),
        (
            &[
                "project",
                "--checkpoint",
                "r",
                "--image",
                "x",
                "--steps",
                "-1",
            ],
            "--steps",
        ),
        (
            &["project", "--checkpoint", "r", "--image", "x", "--lr", "-1"],
            "lr",
        ),
        (
            &["explore", "--data", "x", "--out", "o", "--top", "-1"],
            "--top",
        ),
        (
            &["evaluate", "--checkpoint", "r", "--count", "-1"],
            "--count",
        ),
    ];
    for (args, flag) in cases {
        let o = artgan(args, d);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains(flag),
            "{args:?}: the error does not name {flag}: {err}"
        );
    }
}

#[test]
fn an_absurd_learning_rate_is_warned_about_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The threshold and the count are settable: ordinary losses (~1.4) above 0.5 for 3 steps.
    let o = train(
        d,
        &[
            "--epochs",
            "5",
            "--diverge-loss",
            "0.5",
            "--diverge-steps",
            "3",
            "--checkpoint-every",
            "1",
            "--out",
            "a",
        ],
    );
    assert_error_line(
        &o,
        &[
            "training diverged at step 3 (epoch 2)",
            "stayed above 0.5 for 3 consecutive steps",
            "a/checkpoints/epoch-0001",
            "artgan train --resume a --lr",
        ],
    );
    // --lr 1e9: warned about at the start, stopped by the default guard (loss > 100 for 200
    // steps) instead of training to the end.
    let o = train(
        d,
        &[
            "--lr", "1e9", "--limit", "64", "--epochs", "100", "--out", "b",
        ],
    );
    let err = stderr(&o);
    assert!(err.contains("warning: learning rate above 1e-2"), "{err}");
    // Which step first exceeds 100 depends on the rounding of the early steps; what matters is
    // that 200 bad steps in a row stop the run before it ends.
    assert_error_line(
        &o,
        &["training diverged at step", "for 200 consecutive steps"],
    );
    let step: usize = err
        .split("training diverged at step ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step number in: {err}"));
    assert!(step >= 200, "stopped after fewer than 200 bad steps: {err}");
    assert!(!d.join("b/generator.safetensors").exists());
}

#[test]
fn semicolon_csv_and_unwritable_results_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = d.join("kaggle");
    image_folder(&k.join("images/images/Foo_Bar"), 4);
    std::fs::write(k.join("artists.csv"), "id;name;years\n0;Foo Bar;1900\n").unwrap();
    let o = train(d, &["--data", "kaggle", "--out", "o"]);
    assert_error_line(
        &o,
        &[
            "artists.csv",
            "the header has one column",
            "another delimiter",
            "';'",
        ],
    );
    assert!(!stderr(&o).contains("missing field"));

    // evaluate checks that its results can be written before computing anything.
    assert_ok(&train(d, &["--epochs", "1", "--out", "run"]));
    let started = std::time::Instant::now();
    let o = artgan(
        &[
            "evaluate",
            "--checkpoint",
            "run",
            "--json",
            "/proc/artgan-evaluate.json",
        ],
        d,
    );
    assert_error_line(
        &o,
        &["cannot write the results to /proc/artgan-evaluate.json"],
    );
    assert!(!stdout(&o).contains("sliced Wasserstein"), "{}", stdout(&o));
    assert!(started.elapsed().as_secs() < 20);
}

#[cfg(unix)]
#[test]
fn a_second_ctrl_c_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Ctrl-C repeated every 20 ms until the process is gone: once the first has been
    // delivered, the next must end it at once, while the step finishes or the checkpoint is
    // written (each takes longer than 20 ms: widths 64, batch 128). A fixed second signal
    // 0.1 s after the first stopped landing in time once the CPU step got faster.
    let mut child = Command::new(env!("CARGO_BIN_EXE_artgan"))
        .args([
            "train",
            "--device",
            "cpu",
            "--quiet",
            "--ngf",
            "64",
            "--ndf",
            "64",
            "--batch-size",
            "128",
            "--limit",
            "512",
            "--epochs",
            "50",
            "--out",
            "run",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&d.join("run"), &mut child);
    while !d.join("run/samples/epoch-0000.png").exists() {
        assert!(child.try_wait().unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut sent = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(sent < 500, "still running after {sent} Ctrl-C");
        // SAFETY: kill(2) on our own child's PID, not reaped yet (try_wait just saw it
        // running; an exited child stays a zombie until we wait for it).
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        sent += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(sent >= 2, "the first Ctrl-C alone ended the run");
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        !err.contains("interrupted at step"),
        "the second Ctrl-C waited: {err}"
    );
}
