//! Helpers shared by the test binaries (each `mod common;` compiles its own copy, hence the
//! dead-code allowance: not every binary uses every helper).
#![allow(dead_code)]

use artgan::backend::{backend, Device};
use artgan::nn::{ModelConfig, Preset};
use std::path::Path;
use std::process::{Command, Output};

/// `preset` at the smallest size the tests build models at: 32 px, widths 4, nz 8 (the model
/// [`tiny_train`] trains).
pub fn tiny_model(preset: Preset) -> ModelConfig {
    ModelConfig {
        preset,
        image_size: 32,
        nz: 8,
        ngf: 4,
        ndf: 4,
    }
}

/// `artgan train` on the smallest dcgan the CLI tests use (32 px, widths 4, nz 8), then
/// `extra`; batch 8 unless `extra` sets it (a flag given twice is an error).
pub fn tiny_train<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let model = [
        "--image-size",
        "32",
        "--ngf",
        "4",
        "--ndf",
        "4",
        "--nz",
        "8",
    ];
    let mut args = vec!["train"];
    args.extend(model);
    if !extra.contains(&"--batch-size") {
        args.extend(["--batch-size", "8"]);
    }
    args.extend_from_slice(extra);
    args
}

/// The `artgan` binary with `args`, in `cwd`, not started yet (to spawn and kill).
pub fn artgan_command(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_artgan"));
    c.args(args).current_dir(cwd);
    c
}

/// Runs the `artgan` binary in `cwd`.
pub fn artgan(args: &[&str], cwd: &Path) -> Output {
    artgan_command(args, cwd).output().expect("run artgan")
}

/// A `w`×`h` RGB image of noise that depends on `seed`.
pub fn noise_rgb(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::ImageBuffer::from_fn(w, h, |x, y| {
        let v = (x * 37 + y * 91 + seed * 53) ^ (x * y + seed);
        image::Rgb([
            (v % 256) as u8,
            ((v / 3) % 256) as u8,
            ((v / 7) % 256) as u8,
        ])
    })
}

/// Saves `img` at `path` (the format from its extension), making its folder.
pub fn save(img: &image::RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// Failed with an `error:` line (and no panic) containing every needle.
pub fn assert_error_line(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for n in needles {
        assert!(line.contains(n), "error line lacks {n:?}: {line}");
    }
}

/// A small RGB PNG whose pixels depend on `seed`.
pub fn write_png(path: &Path, seed: u32) {
    let img = image::RgbImage::from_fn(40, 36, |x, y| {
        let v = x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ seed.wrapping_mul(101);
        image::Rgb([v as u8, (v >> 3) as u8, (v >> 5) as u8])
    });
    img.save(path).unwrap();
}

/// A folder of `n` different PNGs, `img_NN.png`.
pub fn image_folder(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        write_png(&dir.join(format!("img_{i:02}.png")), i);
    }
}

/// Sets the first f32 of tensor `name` in a safetensors file, keeping the file valid.
pub fn set_first_f32(path: &Path, name: &str, value: f32) {
    let mut b = std::fs::read(path).unwrap();
    let hlen = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + hlen]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + hlen;
    b[start..start + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

/// Writes `dir/manifest.json` anew for the files it lists (after a test edited one on
/// purpose, so that the manifest still passes and what is checked is the edit itself).
pub fn rewrite_manifest(dir: &Path) {
    let path = dir.join("manifest.json");
    let mut entries: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for e in &mut entries {
        let bytes = std::fs::read(dir.join(e["file"].as_str().unwrap())).unwrap();
        e["bytes"] = bytes.len().into();
        e["crc32"] = crc32fast::hash(&bytes).into();
    }
    std::fs::write(path, serde_json::to_vec_pretty(&entries).unwrap()).unwrap();
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed with exactly one line, `error: …`, containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
}

/// CUDA device 0 when its backend works (printing the device's name, so an emulated run says
/// so), else `None` after printing `skipped: <reason>`; with `ARTGAN_REQUIRE_GPU=1` a missing
/// device fails the test instead.
pub fn gpu_device() -> Option<Device> {
    match backend(Device::Cuda(0)) {
        Ok(_) => {
            println!("device: {}", artgan::backend::cuda::device_name(0));
            Some(Device::Cuda(0))
        }
        Err(e) => {
            if std::env::var("ARTGAN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("ARTGAN_REQUIRE_GPU=1 but the CUDA backend is unavailable: {e:#}");
            }
            let msg = format!("{e:#}");
            println!("skipped: {}", msg.lines().next().unwrap_or_default());
            None
        }
    }
}

/// Calls by this thread that made it wait for the device so far, as the emulated device counts
/// them (`None` on a real GPU, whose driver does not count them). Per thread, so the other tests
/// running at the same time do not count.
pub fn emulated_host_syncs() -> Option<u64> {
    let name = c"artgan_emu_host_syncs";
    // SAFETY: looks up a symbol of the already loaded (emulated) libcuda; its signature is
    // `unsigned long long (void)`.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        if f.is_null() {
            return None;
        }
        let f: extern "C" fn() -> u64 = std::mem::transmute(f);
        Some(f())
    }
}

/// What a run's `metrics.csv` row holds per epoch, apart from timing: loss_d, loss_g, D(x),
/// D(G(z)), lr D, lr G and the dynamic-lr notes.
pub type EpochRow = (f32, Option<f32>, f32, f32, f32, f32, String);

pub fn epoch_row(s: &artgan::train::EpochStats) -> EpochRow {
    let r = (s.loss_d, s.loss_g, s.d_x, s.d_g_z, s.lr_d, s.lr_g);
    (r.0, r.1, r.2, r.3, r.4, r.5, s.lr_changes.clone())
}

/// The rows of `cfg.epochs` epochs computed the eager way: every step's numbers read right after
/// the step ([`artgan::train::Trainer::step_labeled`]) and summed as the training loop sums
/// them. The loop itself reads them from the device only at the ends of windows; the two must
/// agree exactly.
pub fn eager_epoch_rows(
    cfg: &artgan::train::TrainConfig,
    data: &mut dyn artgan::train::BatchSource,
    device: Device,
) -> Vec<EpochRow> {
    use artgan::train::{state::PartialEpoch, Trainer};
    let mut t = Trainer::new(cfg.clone(), device).unwrap();
    let total = (cfg.epochs * data.batches_per_epoch()) as f32;
    let mut rows = Vec::new();
    for epoch in 0..cfg.epochs {
        data.start_epoch(epoch);
        let mut acc = PartialEpoch::default();
        while let Some(real) = data.next_batch(device).unwrap() {
            t.set_progress(t.step as f32 / total);
            let labels = data.batch_labels();
            let s = t.step_labeled(&real, labels.as_deref()).unwrap();
            acc.add(&s);
            acc.lr_changes.extend(s.lr_change);
        }
        let n_d = acc.n_d.max(1) as f64;
        let (lr_d, lr_g, _) = t.lrs();
        rows.push((
            (acc.sum_d / n_d) as f32,
            (acc.n_g > 0).then(|| (acc.sum_g / acc.n_g as f64) as f32),
            (acc.sum_x / n_d) as f32,
            (acc.sum_gz / n_d) as f32,
            lr_d,
            lr_g,
            acc.lr_changes.join("; "),
        ));
    }
    rows
}
