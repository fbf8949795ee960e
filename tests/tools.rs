//! The tools that use a trained generator (`sample`, `interpolate`, `project`), on one tiny run
//! trained once through the binary (about a second on 2 cores).

use artgan::amp::Numerics;
use artgan::checkpoint;
use artgan::nn::{Generator, Module};
use artgan::rng::Rng;
use artgan::run_folder;
use artgan::tools::{self, interpolate, project};
use artgan::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod common;
use common::{artgan, stderr};

const NZ: usize = 16;
const SIZE: usize = 32;

fn assert_ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails with one `error: …` line containing `needle` (after any `note:` lines, such as the one
/// saying that the run has no EMA weights).
fn assert_one_line_error(o: &Output, needle: &str) {
    let all = stderr(o);
    assert!(!o.status.success(), "expected failure: {all}");
    let err: Vec<&str> = all.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(err.len(), 1, "not one line: {all}");
    assert!(err[0].starts_with("error: "), "{all}");
    assert!(err[0].contains(needle), "stderr lacks {needle:?}: {all}");
}

/// The tiny run, trained once per test process: 80 steps of batch 8, enough for eval-mode
/// batch norm's running statistics to catch up with the weights (with fewer, every latent gives
/// nearly the same grey image and there is nothing to project or interpolate).
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tools-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let nz = NZ.to_string();
        #[rustfmt::skip]
        let args = [
            "train", "--image-size", "32", "--ngf", "8", "--ndf", "8", "--nz", &nz,
            "--batch-size", "8", "--limit", "160", "--epochs", "4", "--device", "cpu",
            "--quiet", "--out", "run",
        ];
        assert_ok(&artgan(&args, &dir));
        dir.join("run")
    })
}

fn work_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn run_arg() -> &'static str {
    run_dir().to_str().unwrap()
}

fn load_g() -> Generator {
    run_folder::load_sampling_generator(run_dir(), true, false, Device::Cpu)
        .unwrap()
        .0
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
}

fn latents(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    checkpoint::load_tensors(path).unwrap()[name].clone()
}

fn mse(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32
}

/// A photograph-like 48×40 JPEG (not square, so it is centre-cropped): a sky gradient, a sun,
/// a wavy horizon over dark ground, and texture noise.
fn write_photo(path: &Path, seed: u64) {
    let (w, h) = (48u16, 40u16);
    let mut rng = Rng::new(seed);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (f32::from(x) / 48.0, f32::from(y) / 40.0);
            let horizon = 0.6 + 0.08 * (fx * 9.0).sin();
            let mut px = if fy < horizon {
                [60.0 + 180.0 * fy, 110.0 + 80.0 * fy, 230.0 - 120.0 * fy]
            } else {
                [40.0 + 30.0 * fx, 90.0 - 40.0 * fy, 30.0]
            };
            if (fx - 0.7).powi(2) + (fy - 0.25).powi(2) < 0.012 {
                px = [255.0, 230.0, 120.0];
            }
            for c in &mut px {
                data.push((*c + 25.0 * rng.normal()).clamp(0.0, 255.0) as u8);
            }
        }
    }
    jpeg_encoder::Encoder::new_file(path, 90)
        .unwrap()
        .encode(&data, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
}

#[test]
fn help_lists_the_new_commands_and_flags() {
    let d = work_dir();
    let top = assert_ok(&artgan(&["--help"], d.path()));
    assert!(
        top.contains("interpolate") && top.contains("project"),
        "{top}"
    );
    let sample = assert_ok(&artgan(&["sample", "--help"], d.path()));
    assert!(sample.contains("--grid") && sample.contains("--truncation <T>"));
    let interp = assert_ok(&artgan(&["interpolate", "--help"], d.path()));
    for flag in [
        "--steps",
        "--count",
        "--loop",
        "--fps",
        "--no-ema",
        "--conv-impl",
    ] {
        assert!(interp.contains(flag), "interpolate --help lacks {flag}");
    }
    let proj = assert_ok(&artgan(&["project", "--help"], d.path()));
    for flag in [
        "--image",
        "--lr",
        "--variations",
        "--spread",
        "--checkpoint",
    ] {
        assert!(proj.contains(flag), "project --help lacks {flag}");
    }
}

#[test]
fn sample_writes_a_grid_and_truncates_latents() {
    let d = work_dir();
    let p = d.path();
    let o = artgan(
        &[
            "sample",
            "--checkpoint",
            run_arg(),
            "--count",
            "5",
            "--seed",
            "2",
        ]
        .into_iter()
        .chain(["--grid", "--truncation", "0.5", "--out", "t"])
        .collect::<Vec<_>>(),
        p,
    );
    assert_ok(&o);
    // ceil(sqrt(5)) = 3 per row, 2 rows, 32 px + 2 px padding.
    let grid = rgb(&p.join("t/grid.png"));
    assert_eq!(grid.dimensions(), (3 * 34 + 2, 2 * 34 + 2));
    // The grid holds the samples' pixels (top-left image at (2, 2)); the two writers may
    // round a value exactly on .5 differently, hence the tolerance of one level.
    let first = rgb(&p.join("t/sample-0000.png"));
    for (x, y, px) in first.enumerate_pixels() {
        let g = grid.get_pixel(x + 2, y + 2);
        for c in 0..3 {
            assert!(px[c].abs_diff(g[c]) <= 1, "({x}, {y}) {px:?} vs {g:?}");
        }
    }
    let (shape, z) = latents(&p.join("t/latents.safetensors"), "z");
    assert_eq!(shape, vec![5, NZ, 1, 1]);
    assert!(z.iter().all(|v| v.abs() <= 0.5), "{z:?}");

    // Without truncation: the plain normal stream of the same seed, well outside ±0.5.
    assert_ok(&artgan(
        &[
            "sample",
            "--checkpoint",
            run_arg(),
            "--count",
            "5",
            "--seed",
            "2",
        ]
        .into_iter()
        .chain(["--out", "plain"])
        .collect::<Vec<_>>(),
        p,
    ));
    let (_, plain) = latents(&p.join("plain/latents.safetensors"), "z");
    let want = Rng::derive(2, tools::LATENT_STREAM).normal_vec(5 * NZ, 0.0, 1.0);
    assert_eq!(plain, want);
    assert!(plain.iter().any(|v| v.abs() > 1.0));
    assert!(!p.join("plain/grid.png").exists());

    for bad in ["0", "-1", "nan"] {
        let flag = format!("--truncation={bad}");
        let o = artgan(&["sample", "--checkpoint", run_arg(), &flag], p);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains("--truncation") && err.contains("above 0"),
            "{err}"
        );
    }
}

#[test]
fn an_image_depends_only_on_its_latent_across_chunks() {
    // 70 images take two generator batches (64 + 6); the first three are the same latents as
    // a 3-image run and must come out bit for bit the same.
    let d = work_dir();
    let p = d.path();
    for (count, out) in [("70", "many"), ("3", "few")] {
        assert_ok(&artgan(
            &[
                "sample",
                "--checkpoint",
                run_arg(),
                "--count",
                count,
                "--out",
                out,
            ],
            p,
        ));
    }
    for i in 0..3 {
        let f = format!("sample-{i:04}.png");
        assert_eq!(rgb(&p.join("many").join(&f)), rgb(&p.join("few").join(&f)));
    }
    assert!(p.join("many/sample-0069.png").is_file());
}

#[test]
fn interpolation_ends_are_the_samples_of_its_latents() {
    let d = work_dir();
    let p = d.path();
    let common = ["--checkpoint", run_arg(), "--count", "3", "--seed", "4"];
    let common: Vec<&str> = common.into_iter().chain(["--truncation", "1.5"]).collect();
    assert_ok(&artgan(
        &[&["sample"], &common[..], &["--out", "s"]].concat(),
        p,
    ));
    let out = assert_ok(&artgan(
        &[
            &["interpolate"],
            &common[..],
            &["--steps", "5", "--loop", "--fps", "10", "--out", "i"],
        ]
        .concat(),
        p,
    ));
    assert!(out.contains("12 frames"), "{out}");

    // The same seed draws the same key latents as `sample`.
    let (kshape, keys) = latents(&p.join("i/latents.safetensors"), "keys");
    assert_eq!(kshape, vec![3, NZ, 1, 1]);
    assert_eq!(keys, latents(&p.join("s/latents.safetensors"), "z").1);
    let (zshape, path) = latents(&p.join("i/latents.safetensors"), "z");
    assert_eq!(zshape, vec![15, NZ, 1, 1]);

    // 3 looped segments of 5 with shared ends shown once: 3 × 4 = 12 frames; key k is frame 4k.
    assert!(p.join("i/frame-0011.png").is_file());
    assert!(!p.join("i/frame-0012.png").exists());
    for k in 0..3 {
        let frame = rgb(&p.join(format!("i/frame-{:04}.png", 4 * k)));
        let sample = rgb(&p.join(format!("s/sample-{k:04}.png")));
        assert_eq!(frame, sample, "key {k}");
    }
    // In between, the path moves: the middle frame is neither end.
    let mid = rgb(&p.join("i/frame-0002.png"));
    assert_ne!(mid, rgb(&p.join("i/frame-0000.png")));
    assert_ne!(mid, rgb(&p.join("i/frame-0004.png")));
    // The middle latent of a segment stays near the shell (slerp), unlike lerp's midpoint.
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let (a, b) = (norm(&keys[..NZ]), norm(&keys[NZ..2 * NZ]));
    let m = norm(&path[2 * NZ..3 * NZ]);
    assert!(m > 0.9 * a.min(b), "midpoint norm {m}, ends {a} {b}");

    let grid = rgb(&p.join("i/grid.png"));
    assert_eq!(grid.dimensions(), (5 * 34 + 2, 3 * 34 + 2));

    use image::AnimationDecoder;
    let file = std::io::BufReader::new(std::fs::File::open(p.join("i/interpolation.gif")).unwrap());
    let frames = image::codecs::gif::GifDecoder::new(file)
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 12);
    assert_eq!(frames[0].buffer().dimensions(), (32, 32));
    assert_eq!(frames[0].delay().numer_denom_ms(), (100, 1));
    // Palette quantisation changes pixels a little, not the picture.
    let png = rgb(&p.join("i/frame-0000.png"));
    let diff: u32 = frames[0]
        .buffer()
        .pixels()
        .zip(png.pixels())
        .map(|(g, f)| (0..3).map(|c| u32::from(g[c].abs_diff(f[c]))).sum::<u32>())
        .sum();
    assert!(
        diff as f32 / (32.0 * 32.0 * 3.0) < 8.0,
        "mean abs diff {diff}"
    );
}

#[test]
fn interpolation_ends_are_exact_in_floats_across_chunks() {
    // 3 keys, 40 steps, looped: 120 path images in two generator batches.
    let g = load_g();
    let mut rng = Rng::new(11);
    let keys = tools::draw_latents(&mut rng, 3, NZ, None, Device::Cpu).unwrap();
    let key_images = tools::generate(&g, &keys, Numerics::FP32).unwrap();
    let steps = 40;
    let path = interpolate::path_latents(&keys.to_vec().unwrap(), NZ, steps, true);
    let z = Tensor::from_vec(path, &[120, NZ, 1, 1], Device::Cpu).unwrap();
    let images = tools::generate(&g, &z, Numerics::FP32).unwrap();
    let per = 3 * SIZE * SIZE;
    let img = |v: &[f32], i: usize| v[i * per..(i + 1) * per].to_vec();
    for s in 0..3 {
        assert_eq!(
            img(&images, s * steps),
            img(&key_images, s),
            "segment {s} start"
        );
        let end = (s + 1) % 3;
        assert_eq!(
            img(&images, s * steps + steps - 1),
            img(&key_images, end),
            "segment {s} end"
        );
    }
}

#[test]
fn bad_interpolate_input_is_a_clear_error() {
    let d = work_dir();
    let p = d.path();
    let base = ["interpolate", "--checkpoint", run_arg(), "--out", "x"];
    for (extra, msg) in [
        (&["--count", "1"][..], "--count must be at least 2"),
        (&["--steps", "1"], "--steps must be at least 2"),
        (&["--fps", "0"], "--fps 0 must be above 0"),
    ] {
        assert_one_line_error(&artgan(&[&base[..], extra].concat(), p), msg);
    }
    assert!(!p.join("x").exists());
}

#[test]
fn projection_finds_a_generated_image_and_leaves_g_alone() {
    let g = load_g();
    let before = checkpoint::state_dict_bytes(&g, Default::default()).unwrap();
    let mut rng = Rng::new(123);
    let z0 = tools::draw_latents(&mut rng, 2, NZ, None, Device::Cpu).unwrap();
    let both = tools::generate(&g, &z0, Numerics::FP32).unwrap();
    let per = 3 * SIZE * SIZE;
    let (target, other) = (&both[..per], &both[per..]);
    let opts = project::ProjectOptions {
        steps: 300,
        lr: 0.05,
        seed: 5,
        numerics: Numerics::FP32,
    };
    let own = project::project(&g, target, &opts).unwrap();
    // G's weights and batch-norm buffers are untouched, and no gradient is left on them.
    assert_eq!(
        checkpoint::state_dict_bytes(&g, Default::default()).unwrap(),
        before
    );
    assert!(g.parameters().iter().all(|(_, t)| t.grad().is_none()));

    assert_eq!(own.history.len(), 301);
    assert_eq!(own.start_loss, own.history[0].1);
    assert!(
        own.final_loss < 0.3 * own.start_loss,
        "loss {} -> {}",
        own.start_loss,
        own.final_loss
    );
    assert_eq!(own.z.shape(), &[1, NZ, 1, 1]);
    assert_eq!(
        own.image,
        tools::generate(&g, &own.z, Numerics::FP32).unwrap()
    );
    // Much closer to its own target than another random sample of G is.
    let random_gap = mse(target, other);
    assert!(
        own.pixel_mse < 0.2 * random_gap,
        "pixel MSE {} vs random pair {random_gap}",
        own.pixel_mse
    );

    // A photograph is outside what this G can paint: its best match stays far away.
    let d = work_dir();
    let photo = d.path().join("photo.jpg");
    write_photo(&photo, 9);
    let photo_target = project::load_target(&photo, SIZE).unwrap();
    let far = project::project(&g, &photo_target, &opts).unwrap();
    println!(
        "own image: loss {} -> {}, pixel MSE {} (random pair {random_gap}); photo: loss {} -> {}, pixel MSE {}",
        own.start_loss, own.final_loss, own.pixel_mse, far.start_loss, far.final_loss, far.pixel_mse
    );
    assert!(far.final_loss < far.start_loss);
    assert!(
        far.pixel_mse > 10.0 * own.pixel_mse,
        "photo {} vs own {}",
        far.pixel_mse,
        own.pixel_mse
    );
}

#[test]
fn project_command_writes_its_files() {
    let d = work_dir();
    let p = d.path();
    write_photo(&p.join("photo.jpg"), 3);
    let out = assert_ok(&artgan(
        &["project", "--checkpoint", run_arg(), "--image", "photo.jpg"]
            .into_iter()
            .chain(["--steps", "40", "--variations", "5", "--out", "proj"])
            .collect::<Vec<_>>(),
        p,
    ));
    assert!(
        out.contains("start loss") && out.contains("final loss"),
        "{out}"
    );
    let q = p.join("proj");
    for f in [
        "original.png",
        "closest.png",
        "variation-00.png",
        "variation-04.png",
    ] {
        assert_eq!(rgb(&q.join(f)).dimensions(), (32, 32), "{f}");
    }
    assert!(!q.join("variation-05.png").exists());
    assert_eq!(
        rgb(&q.join("variations.png")).dimensions(),
        (3 * 34 + 2, 2 * 34 + 2)
    );
    // The centre crop of the photo: its sky is blue-ish at the top, ground at the bottom.
    let original = rgb(&q.join("original.png"));
    let top = original.get_pixel(16, 2);
    let bottom = original.get_pixel(16, 30);
    assert!(top[2] > bottom[2] + 60, "top {top:?} bottom {bottom:?}");

    let csv = std::fs::read_to_string(q.join("loss.csv")).unwrap();
    let rows: Vec<Vec<f32>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(csv.lines().next(), Some("step,loss,pixel_mse"));
    assert_eq!(rows.len(), 41);
    assert_eq!(rows[40][0], 40.0);
    let best = rows.iter().map(|r| r[1]).fold(f32::INFINITY, f32::min);
    assert!(best < rows[0][1]);

    assert_eq!(
        latents(&q.join("latent.safetensors"), "z").0,
        vec![1, NZ, 1, 1]
    );
    assert_eq!(
        latents(&q.join("latent.safetensors"), "variations").0,
        vec![5, NZ, 1, 1]
    );
    // The output folder is not overwritten without --force.
    let o = artgan(
        &[
            "project",
            "--checkpoint",
            run_arg(),
            "--image",
            "photo.jpg",
            "--out",
            "proj",
        ],
        p,
    );
    assert_one_line_error(&o, "output folder proj is not empty");
}

#[test]
fn project_names_a_bad_image() {
    let d = work_dir();
    let p = d.path();
    let o = artgan(
        &[
            "project",
            "--checkpoint",
            run_arg(),
            "--image",
            "missing.jpg",
            "--out",
            "o",
        ],
        p,
    );
    assert_one_line_error(&o, "cannot use missing.jpg as --image: cannot read");
    std::fs::write(p.join("notes.jpg"), b"these are not pixels").unwrap();
    let o = artgan(
        &[
            "project",
            "--checkpoint",
            run_arg(),
            "--image",
            "notes.jpg",
            "--out",
            "o",
        ],
        p,
    );
    assert_one_line_error(&o, "cannot use notes.jpg as --image: not an image");
    let o = artgan(
        &[
            "project",
            "--checkpoint",
            run_arg(),
            "--image",
            "notes.jpg",
            "--lr",
            "0",
        ],
        p,
    );
    assert_one_line_error(&o, "--lr 0 must be a positive number");
    assert!(!p.join("o").exists(), "output made for a bad image");
}

#[test]
fn a_diverged_project_leaves_nothing_behind() {
    let d = work_dir();
    let p = d.path();
    write_photo(&p.join("photo.jpg"), 5);
    let project = |lr: &str| {
        let rest = [
            "--image",
            "photo.jpg",
            "--steps",
            "3",
            "--lr",
            lr,
            "--out",
            "a/b",
        ];
        let mut args = vec!["project", "--checkpoint", run_arg()];
        args.extend(rest);
        artgan(&args, p)
    };
    // A step this large sends |z|² past f32's range at once.
    assert_one_line_error(&project("1e30"), "projection diverged at step 1");
    assert!(!p.join("a").exists(), "a failed project left a/");
    // The retry needs no --force.
    assert_ok(&project("0.05"));
    assert!(p.join("a/b/original.png").is_file());
}
