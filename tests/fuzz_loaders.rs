//! Property tests of every loader that reads user files: random truncations, byte flips,
//! overwritten bytes and length fields set to overflowing values must give an error or a clean
//! skip, never a panic; and a corrupted file that carries a checksum (weights, checkpoints, the
//! image cache) is never used.
//!
//! Fixed seed and a fixed number of cases per loader (fast in CI); `ARTGAN_FUZZ_CASES=N` runs
//! N cases per loader by hand, `ARTGAN_FUZZ_SEED=S` another sequence.

use artgan::checkpoint;
use artgan::data::{self, DataArgs, Fit};
use artgan::nn::{Generator, ModelConfig, Preset};
use artgan::rng::Rng;
use artgan::run_folder;
use artgan::Device;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn cases(default: usize) -> usize {
    std::env::var("ARTGAN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rng(loader: &str) -> Rng {
    let seed = std::env::var("ARTGAN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    Rng::derive(seed, loader)
}

/// One random corruption of `good`, and its description (for failure messages).
fn mutate(good: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let mut b = good.to_vec();
    let n = b.len().max(1);
    let what = match rng.below(6) {
        0 => {
            let at = rng.below(n);
            b.truncate(at);
            format!("truncated to {at} bytes")
        }
        1 => {
            let flips = 1 + rng.below(8);
            let mut at = Vec::new();
            for _ in 0..flips {
                let i = rng.below(n);
                if i < b.len() {
                    b[i] ^= 1 << rng.below(8);
                    at.push(i);
                }
            }
            format!("bits flipped at {at:?}")
        }
        2 => {
            // A length field: an 8-byte little-endian count at a random place (the safetensors
            // header length at 0, the cache's at 8), set to an overflowing value.
            let at = if rng.below(2) == 0 { 0 } else { rng.below(n) };
            let v: u64 = match rng.below(4) {
                0 => u64::MAX,
                1 => u64::MAX / 2 + 1,
                2 => b.len() as u64 + 1,
                _ => u32::MAX as u64,
            };
            for (k, byte) in v.to_le_bytes().iter().enumerate() {
                if let Some(x) = b.get_mut(at + k) {
                    *x = *byte;
                }
            }
            format!("u64 {v} written at {at}")
        }
        3 => {
            // A run of random bytes (headers, digits of JSON numbers, delimiters).
            let at = rng.below(n);
            let len = 1 + rng.below(16);
            for i in at..(at + len).min(b.len()) {
                b[i] = rng.next_u32() as u8;
            }
            format!("{len} random bytes at {at}")
        }
        4 => {
            // Large decimal numbers where digits were (JSON sizes, offsets, dimensions).
            let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
            if digits.is_empty() {
                b.clear();
                "emptied".to_string()
            } else {
                let i = digits[rng.below(digits.len())];
                let big = b"99999999999999999999";
                b.splice(i..i + 1, big.iter().copied());
                format!("digit at {i} made huge")
            }
        }
        _ => {
            let at = rng.below(n);
            let extra = 1 + rng.below(64);
            let ins: Vec<u8> = (0..extra).map(|_| rng.next_u32() as u8).collect();
            b.splice(at.min(b.len())..at.min(b.len()), ins);
            format!("{extra} bytes inserted at {at}")
        }
    };
    (b, what)
}

/// Runs `f`, failing the test with the case's description if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("panicked on {what}: {msg}");
        }
    }
}

fn tiny_model() -> ModelConfig {
    ModelConfig {
        preset: Preset::Dcgan,
        image_size: 32,
        nz: 4,
        ngf: 2,
        ndf: 2,
    }
}

/// A tiny trained-looking run folder: config.json, the three model files with a manifest,
/// and one checkpoint folder.
fn run_folder(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let cfg = artgan::train::TrainConfig::for_model(tiny_model());
    checkpoint::save_config(dir, &cfg).unwrap();
    let g = Generator::new(&cfg.model, &mut Rng::new(1), Device::Cpu).unwrap();
    let bytes = checkpoint::state_dict_bytes(&g, checkpoint::model_metadata()).unwrap();
    let files = vec![
        (checkpoint::GENERATOR_FILE, bytes.clone()),
        (checkpoint::GENERATOR_EMA_FILE, bytes),
    ];
    checkpoint::save_final_models(dir, &files).unwrap();
    let mut ck = files.clone();
    ck.push((
        checkpoint::CONFIG_FILE,
        std::fs::read(dir.join(checkpoint::CONFIG_FILE)).unwrap(),
    ));
    run_folder::write_checkpoint(dir, 1, &ck).unwrap();
    files
}

#[test]
fn weights_and_checkpoints_corrupted_are_refused_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let files = run_folder(&run);
    let good = files[0].1.clone();
    let ck = run.join("checkpoints/epoch-0001");
    let mut rng = rng("weights");
    let mut refused = 0;
    for case in 0..cases(150) {
        let (bad, what) = mutate(&good, &mut rng);
        let what = format!("case {case}: generator.safetensors {what}");
        let changed = bad != good;
        // The files a user may hand us: a run's final weights, a checkpoint folder's, and a
        // bare safetensors file without a manifest.
        for target in [
            run.join(checkpoint::GENERATOR_EMA_FILE),
            ck.join(checkpoint::GENERATOR_EMA_FILE),
        ] {
            std::fs::write(&target, &bad).unwrap();
            let folder = target.parent().unwrap();
            let r = no_panic(&what, || {
                run_folder::load_sampling_generator(folder, true, false, Device::Cpu)
            });
            if changed {
                let e = match r {
                    Ok(_) => panic!(
                        "{what}: corrupted weights in {} were used",
                        folder.display()
                    ),
                    Err(e) => format!("{e:#}"),
                };
                assert!(e.contains("generator_ema.safetensors"), "{what}: {e}");
                refused += 1;
            } else {
                r.unwrap();
            }
            std::fs::write(&target, &good).unwrap();
        }
        // Without a manifest: only the safetensors parser and the checks stand guard.
        let g = Generator::new(&tiny_model(), &mut Rng::new(0), Device::Cpu).unwrap();
        let bare = dir.path().join("bare.safetensors");
        std::fs::write(&bare, &bad).unwrap();
        let _ = no_panic(&what, || checkpoint::load_state_dict(&g, &bare, "tiny"));
        let _ = no_panic(&what, || checkpoint::load_tensors(&bare));
    }
    assert!(refused > 0);

    // A corrupted manifest never makes a changed file pass, nor panics.
    let manifest = std::fs::read(ck.join(checkpoint::MANIFEST_FILE)).unwrap();
    for case in 0..cases(150) {
        let (bad, what) = mutate(&manifest, &mut rng);
        let what = format!("case {case}: manifest.json {what}");
        std::fs::write(ck.join(checkpoint::MANIFEST_FILE), &bad).unwrap();
        let _ = no_panic(&what, || checkpoint::verify_checkpoint(&ck));
        let _ = no_panic(&what, || run_folder::latest_checkpoint(&run));
    }
}

#[test]
fn config_json_corrupted_is_an_error_or_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = artgan::train::TrainConfig::for_model(tiny_model());
    checkpoint::save_config(d, &cfg).unwrap();
    let good = std::fs::read(d.join(checkpoint::CONFIG_FILE)).unwrap();
    let mut rng = rng("config");
    for case in 0..cases(300) {
        let (bad, what) = mutate(&good, &mut rng);
        let what = format!("case {case}: config.json {what}");
        std::fs::write(d.join(checkpoint::CONFIG_FILE), &bad).unwrap();
        if let Ok(c) = no_panic(&what, || artgan::train::load_config(d)) {
            let _ = no_panic(&what, || c.validate());
        }
        let _ = no_panic(&what, || checkpoint::load_model_config(d));
    }
}

#[test]
fn artists_csv_corrupted_is_an_error_or_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("artists.csv");
    let good = "id,name,years,genre,nationality,bio,wikipedia,paintings\n\
                0,Amedeo Modigliani,1884 - 1920,Expressionism,Italian,\"Born in Livorno, he \
                painted\",http://en.wikipedia.org/wiki/Amedeo_Modigliani,193\n\
                1,Albrecht Dürer,1471 - 1528,\"Northern Renaissance,Gothic\",German,ʁ IPA,x,328\n"
        .as_bytes()
        .to_vec();
    let mut rng = rng("csv");
    for case in 0..cases(300) {
        let (bad, what) = mutate(&good, &mut rng);
        let what = format!("case {case}: artists.csv {what}");
        std::fs::write(&path, &bad).unwrap();
        let _ = no_panic(&what, || data::read_artists_csv(&path));
    }
}

#[test]
fn image_headers_corrupted_are_skipped() {
    let mut goods = Vec::new();
    let img = image::RgbImage::from_fn(24, 20, |x, y| image::Rgb([x as u8 * 9, y as u8 * 11, 77]));
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::Bmp,
        image::ImageFormat::WebP,
    ] {
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        goods.push((format, bytes));
    }
    let mut rng = rng("images");
    for case in 0..cases(200) {
        for (format, good) in &goods {
            // Most damage is in the header: mutate the first 64 bytes more often.
            let (bad, what) = if rng.below(2) == 0 {
                let head = good.len().min(64);
                let (mut h, w) = mutate(&good[..head], &mut rng);
                h.extend_from_slice(&good[head..]);
                (h, format!("header {w}"))
            } else {
                mutate(good, &mut rng)
            };
            let what = format!("case {case}: {format:?} {what}");
            if let Ok(d) = no_panic(&what, || data::decode_bytes(&bad, 16, Fit::Crop)) {
                assert_eq!(d.rgb.len(), 16 * 16 * 3, "{what}");
            }
        }
    }
}

#[test]
fn a_corrupted_cache_is_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = d.join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for i in 0..6u32 {
        image::RgbImage::from_fn(20, 18, |x, y| image::Rgb([(x * i) as u8, y as u8, 9]))
            .save(imgs.join(format!("p{i}.png")))
            .unwrap();
    }
    let args = DataArgs {
        data: Some(imgs.clone()),
        cache_dir: Some(d.join("cache")),
        ..Default::default()
    };
    let report = d.join("report");
    let first = data::load(&args, 16, 0, &report).unwrap();
    let pixels = first.pixels().to_vec();
    let meta = first.meta.clone();
    let skipped = first.report.skipped.clone();
    let cache = first.report.cache_file.clone().unwrap();
    drop(first);
    let good = std::fs::read(&cache).unwrap();
    let mut rng = rng("cache");
    for case in 0..cases(60) {
        let (bad, what) = mutate(&good, &mut rng);
        let what = format!("case {case}: cache {what}");
        std::fs::write(&cache, &bad).unwrap();
        let set = no_panic(&what, || data::load(&args, 16, 0, &report))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        // Rebuilt or reused: the pixels are always the decoded images, never corrupted ones.
        // (Only the zero padding before the pixels is not checked: it carries nothing.)
        assert_eq!(set.pixels(), &pixels[..], "{what}: corrupted pixels used");
        assert_eq!(set.meta, meta, "{what}: corrupted image list used");
        assert_eq!(
            set.report.skipped, skipped,
            "{what}: corrupted skip list used"
        );
        drop(set);
        std::fs::write(&cache, &good).unwrap();
    }
}
