//! Class names of a conditional run in the tools: `--class` matched exactly, then
//! uniquely case- and punctuation-insensitively; one `--per-class` folder per class, also where
//! names differ only in punctuation; `sample --count` on a conditional run; names with control
//! characters refused when labels are built.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod common;
use common::{artgan, assert_one_line_error, stderr, stdout, tiny_train};

/// Classes whose names differ only in punctuation or case from another one: in class order
/// (sorted by name) `Monet`, `a b`, `a.b`.
const CLASSES: [&str; 3] = ["a b", "a.b", "Monet"];

fn assert_ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(o));
    stdout(o)
}

/// A plain folder with one sub-folder of `per` images per name in `names`, each class its own
/// colour.
fn class_folders(dir: &Path, names: &[&str], per: u32) {
    for (a, name) in names.iter().enumerate() {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..per {
            let img = image::RgbImage::from_fn(20, 20, |x, y| {
                image::Rgb([(a * 90) as u8, (x * 9 + i * 13) as u8, (y * 11) as u8])
            });
            img.save(sub.join(format!("img-{i}.png"))).unwrap();
        }
    }
}

/// The conditional run on [`CLASSES`], trained once per test process.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("class-names-test");
        let _ = std::fs::remove_dir_all(&dir);
        class_folders(&dir.join("art"), &CLASSES, 6);
        #[rustfmt::skip]
        let args = tiny_train(&[
            "--data", "art", "--condition", "artist", "--min-images", "2", "--batch-size", "6",
            "--epochs", "2", "--device", "cpu", "--quiet", "--out", "run",
        ]);
        assert_ok(&artgan(&args, &dir));
        dir.join("run")
    })
}

fn run_arg() -> &'static str {
    run_dir().to_str().unwrap()
}

/// `artgan <command> --checkpoint RUN <rest>` in `cwd`.
fn tool(command: &str, rest: &[&str], cwd: &Path) -> Output {
    let mut args = vec![command, "--checkpoint", run_arg()];
    args.extend_from_slice(rest);
    artgan(&args, cwd)
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
        .into_raw()
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

/// The files directly in `dir`, sorted.
/// The visible files of `dir` (the hidden lock file of a results folder aside).
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn class_is_matched_exactly_then_uniquely() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // Every class painted from the same 2 latents: class r is sample-000{2r, 2r+1}.
    assert_ok(&tool("sample", &["--per-class", "2", "--out", "all"], p));
    assert_eq!(
        std::fs::read_to_string(p.join("all/classes.txt")).unwrap(),
        "Monet\na b\na.b\n"
    );
    // `a.b` is its own class, not the first one that matches it loosely (`a b`).
    let out = assert_ok(&tool(
        "sample",
        &["--class", "a.b", "--count", "2", "--out", "dot"],
        p,
    ));
    assert!(out.contains("wrote 2 images"), "{out}");
    // `--class NAME --count K --out D`: K PNGs directly in D.
    assert_eq!(
        files(&p.join("dot")),
        ["latents.safetensors", "sample-0000.png", "sample-0001.png"]
    );
    let dot = pixels(&p.join("dot/sample-0000.png"));
    let own = max_diff(&dot, &pixels(&p.join("all/sample-0004.png")));
    let space = max_diff(&dot, &pixels(&p.join("all/sample-0002.png")));
    assert!(
        own <= 1 && space > own,
        "a.b: {own} off its row, {space} off a b's"
    );
    // One loose match is enough; two are an error naming both.
    assert_ok(&tool(
        "sample",
        &["--class", "MONET", "--count", "1", "--out", "m"],
        p,
    ));
    let o = tool("sample", &["--class", "A_B", "--out", "x"], p);
    assert_one_line_error(
        &o,
        "--class: 'A_B' matches 2 artists when case and punctuation are ignored: 'a b', 'a.b'; \
         give one of them exactly",
    );
    let o = tool("sample", &["--class", "renoir", "--out", "x"], p);
    assert_one_line_error(
        &o,
        "--class: unknown artist 'renoir' (known: Monet, a b, a.b)",
    );
    assert!(!p.join("x").exists());
}

#[test]
fn per_class_writes_one_folder_per_class() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let rest = ["--per-class", "2", "--steps", "2", "--out", "walk"];
    assert_ok(&tool("interpolate", &rest, p));
    assert_eq!(files(&p.join("walk")), ["00-Monet", "01-a_b", "02-a_b"]);
    let grids: Vec<Vec<u8>> = files(&p.join("walk"))
        .iter()
        .map(|f| pixels(&p.join("walk").join(f).join("grid.png")))
        .collect();
    // Each class's own walk: the same latents, painted as three different classes.
    assert!(grids[0] != grids[1] && grids[1] != grids[2] && grids[0] != grids[2]);
    // The per-class form is checked with its own number.
    let o = tool(
        "interpolate",
        &["--per-class", "1", "--out", "w1", "--force"],
        p,
    );
    assert_one_line_error(
        &o,
        "--per-class 1: each class's walk needs at least 2 latents to go between",
    );
    assert!(!p.join("w1").exists());
}

#[test]
fn conditional_sample_takes_count_only_with_class() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let o = tool("sample", &["--count", "4", "--out", "s"], p);
    assert_one_line_error(
        &o,
        "is a conditional run of 3 classes: --count K needs --class NAME (K images of one \
         class); for N images of every class pass --per-class N",
    );
    assert!(!p.join("s").exists());
    let o = tool(
        "sample",
        &["--count", "4", "--per-class", "2", "--out", "s"],
        p,
    );
    assert_one_line_error(&o, "--count K needs --class NAME");
    // Without --grid no grid is written, and none is named.
    let out = assert_ok(&tool("sample", &["--per-class", "1", "--out", "s"], p));
    assert!(!out.contains("grid"), "{out}");
    assert!(
        out.contains("wrote 1 images for each of 3 classes (3 in all; sample-[r*1..] are class r of classes.txt), classes.txt and latents.safetensors"),
        "{out}"
    );
    assert!(!p.join("s/grid.png").exists());
    let out = assert_ok(&tool(
        "sample",
        &["--per-class", "1", "--grid", "--out", "g"],
        p,
    ));
    assert!(out.contains("and row r of grid.png") && p.join("g/grid.png").is_file());
}

#[test]
fn class_names_with_control_characters_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    class_folders(&p.join("art"), &["plain", "two\nlines"], 4);
    #[rustfmt::skip]
    let args = tiny_train(&[
        "--data", "art", "--condition", "artist", "--min-images", "2", "--epochs", "1",
        "--device", "cpu", "--quiet", "--out", "run",
    ]);
    let o = artgan(&args, p);
    // Before the error, only the data summary (which `--quiet` keeps).
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!o.status.success() && lines.len() == 2, "{err}");
    assert!(lines[0].starts_with("data: "), "{err}");
    assert!(
        lines[1].starts_with(
            "error: class name 'two\\nlines' has a control character, which \
             classes.txt and messages cannot show: rename it (the folder "
        ) && lines[1].ends_with("art/two\\nlines)"),
        "{err}"
    );
}

#[test]
fn artists_filter_matches_folders_exactly_then_uniquely() {
    let d = tempfile::tempdir().unwrap();
    class_folders(&d.path().join("art"), &CLASSES, 2);
    let load = |artists: &str| {
        let args = artgan::data::DataArgs {
            data: Some(d.path().join("art")),
            cache_dir: Some(d.path().join("cache")),
            artists: Some(artists.into()),
            ..Default::default()
        };
        artgan::data::load(&args, 32, 0, d.path())
    };
    let set = load("a.b").unwrap();
    assert_eq!(set.len(), 2);
    assert!((0..2).all(|i| set.artist_of(i) == Some("a.b")));
    assert_eq!(load("monet").unwrap().len(), 2);
    let err = load("A B").unwrap_err().to_string();
    assert!(
        err.contains("--artists: 'A B' matches 2 artists when case and punctuation are ignored: 'a b', 'a.b'"),
        "{err}"
    );
}
