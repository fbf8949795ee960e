//! Absurd sizes are refused from the flags, before anything is allocated or made:
//! one `error: …` line naming the flag and the estimate, exit 1 or 2 (never an
//! allocation abort, 134, or a panic, 101), and no folder left behind.

use artgan::checkpoint;
use artgan::rng::Rng;
use artgan::tools::{truncated_normal, LATENT_STREAM};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod common;
use common::{artgan, stderr, tiny_train};

/// Refused with one line naming `flag` and telling to lower it (after any `note:` lines and
/// the stdout line saying which device `auto` picked).
fn assert_refused(o: &Output, flag: &str) {
    let all = stderr(o);
    let code = o.status.code();
    assert!(matches!(code, Some(1 | 2)), "exit {code:?}: {all}");
    assert!(!all.contains("panicked"), "{all}");
    let err: Vec<&str> = all.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(err.len(), 1, "not one line: {all}");
    assert!(err[0].starts_with(&format!("error: {flag} ")), "{all}");
    assert!(err[0].contains("needs "), "no estimate: {all}");
    assert!(err[0].ends_with(&format!("lower {flag}")), "{all}");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn absurd_training_sizes_are_refused_before_the_run_folder_is_made() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, extra) in [
        ("--ngf", "1000000", &[][..]),
        ("--nz", "100000000000", &[]),
        // 2^62: the widest layer's width (2^62 << 2) wraps a usize; "needs more than 2^128
        // bytes".
        ("--ngf", "4611686018427387904", &[]),
        ("--limit", "18446744073709551615", &[]),
        ("--eval-count", "100000000", &["--eval-every", "1"]),
        ("--batch-size", "1000000000", &[]),
    ] {
        let mut args = vec!["train", "--device", "cpu", "--epochs", "1", flag, value];
        args.extend_from_slice(extra);
        let o = artgan(&args, dir.path());
        assert_refused(&o, flag);
        assert!(stderr(&o).contains(&format!("{flag} {value} needs ")));
        assert!(
            entries(dir.path()).is_empty(),
            "{flag} {value} left {:?}",
            entries(dir.path())
        );
    }
    // Nothing blocks the retry with a sane size.
    let o = artgan(
        &tiny_train(&[
            "--limit", "16", "--epochs", "1", "--device", "cpu", "--quiet",
        ]),
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A tiny run for the tools, trained once per test process.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("limits-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args = tiny_train(&[
            "--limit", "16", "--epochs", "1", "--device", "cpu", "--quiet", "--out", "run",
        ]);
        let o = artgan(&args, &dir);
        assert!(o.status.success(), "{}", stderr(&o));
        dir.join("run")
    })
}

#[test]
fn absurd_tool_sizes_are_refused_before_the_output_folder_is_made() {
    let run = run_dir().to_str().unwrap();
    let before = entries(run_dir());
    let work = tempfile::tempdir().unwrap();
    let image = format!("{run}/samples/{}", entries(&run_dir().join("samples"))[0]);
    let cases: [(&str, &[&str]); 7] = [
        // Default --out: inside the run.
        ("--count", &["sample", "--count", "100000000000"]),
        (
            "--count",
            &["sample", "--count", "100000000000", "--out", "d"],
        ),
        (
            "--steps",
            &["interpolate", "--steps", "100000000", "--out", "d"],
        ),
        (
            "--steps",
            &[
                "project",
                "--image",
                &image,
                "--steps",
                "100000000000000",
                "--out",
                "d",
            ],
        ),
        (
            "--variations",
            &[
                "project",
                "--image",
                &image,
                "--variations",
                "100000000000",
                "--out",
                "d",
            ],
        ),
        ("--count", &["evaluate", "--count", "100000000"]),
        ("--limit", &["evaluate", "--limit", "18446744073709551615"]),
    ];
    for (flag, args) in cases {
        let mut all = args.to_vec();
        all.extend(["--checkpoint", run, "--device", "cpu"]);
        let o = artgan(&all, work.path());
        assert_refused(&o, flag);
        assert!(
            entries(work.path()).is_empty(),
            "{args:?} left {:?}",
            entries(work.path())
        );
        assert_eq!(entries(run_dir()), before, "{args:?} wrote into the run");
    }
}

#[test]
fn sample_draws_its_latents_chunk_by_chunk_as_one_stream() {
    // 70 images: two chunks of generation (64 + 6). The latents are those of one draw of 70.
    let work = tempfile::tempdir().unwrap();
    let run = run_dir().to_str().unwrap();
    let args = [
        "sample",
        "--checkpoint",
        run,
        "--count",
        "70",
        "--out",
        "d",
        "--device",
        "cpu",
    ];
    let o = artgan(&args, work.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = work.path().join("d");
    assert!(out.join("sample-0069.png").is_file());
    assert!(!out.join("sample-0070.png").exists());
    let (shape, z) =
        checkpoint::load_tensors(&out.join("latents.safetensors")).unwrap()["z"].clone();
    let nz = 8;
    assert_eq!(shape, vec![70, nz, 1, 1]);
    let want = truncated_normal(&mut Rng::derive(0, LATENT_STREAM), 70 * nz, None).unwrap();
    assert_eq!(z, want);
}

#[test]
fn absurd_per_class_counts_are_refused_before_the_output_folder_is_made() {
    // A conditional run of two artists (file-name prefixes), trained for one epoch.
    let dir = tempfile::tempdir().unwrap();
    let art = dir.path().join("art");
    std::fs::create_dir(&art).unwrap();
    for a in 0..2u8 {
        for i in 0..6u32 {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([a * 100, ((x * 7 + y * 3 + i * 11) % 256) as u8, 40])
            });
            img.save(art.join(format!("artist-{a}_title-{i}.png")))
                .unwrap();
        }
    }
    let args = tiny_train(&[
        "--data",
        "art",
        "--condition",
        "artist",
        "--labels",
        "prefix",
        "--min-images",
        "2",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        "run",
    ]);
    let o = artgan(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let before = entries(dir.path());
    // (interpolate --per-class N runs --count N per class: refused the same way, under the name
    // that the per-class options give it.)
    let args = [
        "sample",
        "--checkpoint",
        "run",
        "--per-class",
        "100000000000",
        "--out",
        "d",
        "--device",
        "cpu",
    ];
    let o = artgan(&args, dir.path());
    assert_refused(&o, "--per-class");
    assert_eq!(entries(dir.path()), before, "a folder was made");
}

#[test]
fn sample_beyond_the_free_disk_is_refused_with_the_estimate_and_the_free_space() {
    let work = tempfile::tempdir().unwrap();
    let free = artgan::limits::free_disk(work.path()).expect("free space of the temp folder");
    let memory = artgan::limits::host_memory().expect("MemTotal");
    // Twice what fits on the disk: 32 px PNGs of at most 3 KiB + 1 KiB each (plus latents).
    let count = free / (3 * 32 * 32 + 1024) * 2;
    let (held, _) = artgan::limits::painting_bytes(Some(count as u128), 32, 8, 0);
    if held.unwrap() > u128::from(memory) {
        println!("skipped: {count} latents do not fit this machine's memory either");
        return;
    }
    let run = run_dir().to_str().unwrap();
    let count = count.to_string();
    let args = [
        "sample",
        "--checkpoint",
        run,
        "--count",
        &count,
        "--out",
        "d",
        "--device",
        "cpu",
    ];
    let o = artgan(&args, work.path());
    assert_refused(&o, "--count");
    assert!(
        stderr(&o).contains("of disk for the images and latents (d has "),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(" free)"), "{}", stderr(&o));
    assert!(entries(work.path()).is_empty());
}
