//! The sliced Wasserstein distance of Progressive GAN (`artgan::quality`): the Laplacian
//! pyramid, the distance's behaviour on real and degraded image sets, determinism, errors, and
//! the generator evaluation used by `artgan evaluate` and training.

use artgan::amp::Numerics;
use artgan::backend::Device;
use artgan::data::{self, ImageSet};
use artgan::nn::{Generator, ModelConfig, Preset};
use artgan::quality::{
    evaluate_generator, laplacian_pyramid, pyramid_resolutions, real_floor, reconstruct, swd,
    to_u8_hwc, SwdParams,
};
use artgan::rng::Rng;

fn random_image(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..size * size * 3).map(|_| rng.below(256) as u8).collect()
}

/// HWC bytes → CHW floats, the pyramid's layout.
fn to_chw(image: &[u8], size: usize) -> Vec<f32> {
    let plane = size * size;
    let mut out = vec![0.0; 3 * plane];
    for (p, px) in image.chunks(3).enumerate() {
        for c in 0..3 {
            out[c * plane + p] = f32::from(px[c]);
        }
    }
    out
}

fn images(set: &ImageSet, range: std::ops::Range<usize>) -> Vec<&[u8]> {
    range.map(|i| set.image_u8(i)).collect()
}

/// Faster settings for the behavioural tests (one batch of directions); the default ones are
/// exercised in `the_papers_settings_run_on_a_small_set`.
fn quick() -> SwdParams {
    SwdParams {
        repeats: 1,
        ..SwdParams::default()
    }
}

#[test]
fn pyramid_levels_halve_down_to_16_px_and_add_back_up_to_the_image() {
    assert_eq!(pyramid_resolutions(32, 16), [32, 16]);
    assert_eq!(pyramid_resolutions(64, 16), [64, 32, 16]);
    assert_eq!(pyramid_resolutions(128, 16), [128, 64, 32, 16]);
    assert_eq!(pyramid_resolutions(16, 16), [16]);
    // Odd sides halve rounding up, as cv2.pyrDown.
    assert_eq!(pyramid_resolutions(33, 16), [33, 17]);
    for (size, seed) in [(32, 1), (64, 2), (33, 3), (40, 4)] {
        let image = random_image(size, seed);
        let levels = laplacian_pyramid(&image, size, 16).unwrap();
        let sizes: Vec<usize> = levels.iter().map(|l| l.size).collect();
        assert_eq!(sizes, pyramid_resolutions(size, 16));
        for l in &levels {
            assert_eq!(l.data.len(), 3 * l.size * l.size);
        }
        let back = reconstruct(&levels);
        let worst = back
            .iter()
            .zip(to_chw(&image, size))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{size} px: reconstruction off by {worst}");
        // Detail levels of random noise are far from zero: the test above is not trivial.
        assert!(levels[0].data.iter().any(|v| v.abs() > 50.0));
    }
}

#[test]
fn pyramid_filters_are_cv2s_binomial_with_mirrored_borders() {
    // A flat image has no detail, and its low-pass level is the same flat colour.
    let flat: Vec<u8> = [10u8, 100, 200].repeat(32 * 32);
    let levels = laplacian_pyramid(&flat, 32, 16).unwrap();
    assert!(levels[0].data.iter().all(|v| v.abs() < 1e-4));
    for (c, &v) in [10.0f32, 100.0, 200.0].iter().enumerate() {
        assert!(levels[1].data[c * 256..(c + 1) * 256]
            .iter()
            .all(|x| (x - v).abs() < 1e-4));
    }
    // An impulse: pyrDown keeps even samples of the [1,4,6,4,1]/16 blur in both axes.
    let impulse = |y: usize, x: usize| {
        let mut img = vec![0u8; 32 * 32 * 3];
        img[(y * 32 + x) * 3] = 255;
        laplacian_pyramid(&img, 32, 16).unwrap().pop().unwrap().data
    };
    let low = impulse(16, 16);
    assert!((low[8 * 16 + 8] - 255.0 * 36.0 / 256.0).abs() < 1e-4);
    assert!((low[8 * 16 + 9] - 255.0 * 6.0 / 256.0).abs() < 1e-4);
    assert!(low[8 * 16 + 10].abs() < 1e-6);
    // Next to the corner the mirrored taps (-1 → 1, -2 → 2) count pixel 1 twice per axis:
    // (4+4)/16 squared. Zero padding would give (4/16)², edge-repeating padding (1+4)/16 squared.
    let corner = impulse(1, 1);
    assert!((corner[0] - 255.0 * 64.0 / 256.0).abs() < 1e-4);
}

#[test]
fn a_set_compared_with_itself_scores_exactly_zero() {
    let set = data::builtin(64, 32, 5);
    let all = images(&set, 0..64);
    let r = swd(&all, &all, 32, &quick(), 9).unwrap();
    assert_eq!(r.resolutions, [32, 16]);
    assert_eq!(r.per_level, [0.0, 0.0]);
    assert_eq!(r.mean, 0.0);
    assert_eq!(r.count, 64);
}

/// `image` blurred with the binomial filter (clamped borders), rounded back to bytes.
fn blurred(image: &[u8], size: usize) -> Vec<u8> {
    let k = [1.0f32, 4.0, 6.0, 4.0, 1.0];
    let at = |v: isize| v.clamp(0, size as isize - 1) as usize;
    let mut out = vec![0u8; image.len()];
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let mut s = 0.0;
                for (dy, ky) in k.iter().enumerate() {
                    for (dx, kx) in k.iter().enumerate() {
                        let yy = at(y as isize + dy as isize - 2);
                        let xx = at(x as isize + dx as isize - 2);
                        s += ky * kx * f32::from(image[(yy * size + xx) * 3 + c]);
                    }
                }
                out[(y * size + x) * 3 + c] = (s / 256.0).round() as u8;
            }
        }
    }
    out
}

#[test]
fn disjoint_real_halves_score_low_and_degraded_copies_high() {
    let (n, size) = (256, 32);
    let set = data::builtin(2 * n, size, 21);
    let first = images(&set, 0..n);
    let second = images(&set, n..2 * n);
    let floor = swd(&first, &second, size, &quick(), 1).unwrap();

    let blur: Vec<Vec<u8>> = second.iter().map(|im| blurred(im, size)).collect();
    let blur = swd(
        &first,
        &blur.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        size,
        &quick(),
        1,
    )
    .unwrap();
    // Red and blue swapped: skies turn orange, sunsets blue.
    let swapped: Vec<Vec<u8>> = second
        .iter()
        .map(|im| im.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect())
        .collect();
    let swapped = swd(
        &first,
        &swapped.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        size,
        &quick(),
        1,
    )
    .unwrap();
    // A colour cast: red +40 (clamped). Per-set normalisation removes most of it.
    let cast: Vec<Vec<u8>> = second
        .iter()
        .map(|im| {
            im.chunks(3)
                .flat_map(|p| [p[0].saturating_add(40), p[1], p[2]])
                .collect()
        })
        .collect();
    let cast = swd(
        &first,
        &cast.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        size,
        &quick(),
        1,
    )
    .unwrap();
    // Measured (256 vs 256 images, seed 1): floor 15.3 / 27.8 at 32 / 16 px; blur 64.8 / 29.2;
    // red-blue swap 32.7 / 217.6; red cast 16.8 / 29.1.
    eprintln!("floor {floor:?}\nblur {blur:?}\nswapped {swapped:?}\ncast {cast:?}");
    assert!(floor.per_level.iter().all(|&v| v > 0.0 && v < 50.0));
    // A blur removes fine detail: the 32-px detail level sees it, the 16-px low-pass hardly.
    assert!(blur.per_level[0] > 3.0 * floor.per_level[0]);
    assert!(blur.per_level[1] < 1.3 * floor.per_level[1]);
    // Swapped colours change the colour layout, which the low-pass level sees.
    assert!(swapped.per_level[1] > 3.0 * floor.per_level[1]);
    assert!(swapped.mean > 3.0 * floor.mean);
    // Each set is normalised by its own per-channel mean and std, so a colour cast is
    // (nearly) invisible: a property of the paper's metric, not a bug.
    assert!(cast.mean < 1.3 * floor.mean);
}

#[test]
fn the_seed_fixes_the_result() {
    let set = data::builtin(128, 32, 8);
    let (a, b) = (images(&set, 0..64), images(&set, 64..128));
    let r1 = swd(&a, &b, 32, &quick(), 3).unwrap();
    let r2 = swd(&a, &b, 32, &quick(), 3).unwrap();
    assert_eq!(r1, r2);
    // Other centres and directions: another estimate of the same distance.
    let r3 = swd(&a, &b, 32, &quick(), 4).unwrap();
    assert_ne!(r1.per_level, r3.per_level);
    let rel = (r1.mean - r3.mean).abs() / r1.mean;
    assert!(rel < 0.25, "seeds 3 and 4: {} vs {}", r1.mean, r3.mean);
}

#[test]
fn the_papers_settings_run_on_a_small_set() {
    let params = SwdParams::default();
    assert_eq!(
        (
            params.descriptors_per_image,
            params.patch,
            params.repeats,
            params.directions,
            params.min_resolution
        ),
        (128, 7, 4, 128, 16)
    );
    let set = data::builtin(32, 64, 2);
    let r = swd(&images(&set, 0..16), &images(&set, 16..32), 64, &params, 0).unwrap();
    assert_eq!(r.resolutions, [64, 32, 16]);
    assert_eq!(r.count, 16);
    assert!(r.per_level.iter().all(|&v| v.is_finite() && v > 0.0));
    let mean = r.per_level.iter().sum::<f32>() / 3.0;
    assert!((r.mean - mean).abs() < 1e-4);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["resolutions"], serde_json::json!([64, 32, 16]));
}

#[test]
fn bad_input_is_a_clear_error() {
    let set = data::builtin(4, 32, 0);
    let two = images(&set, 0..2);
    fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }
    assert!(err(swd(&[], &two, 32, &quick(), 0)).contains("needs images in both sets"));
    assert!(err(swd(&two, &images(&set, 0..3), 32, &quick(), 0))
        .contains("equal size, got 2 and 3 images"));
    let short = [&two[0][..10]];
    assert!(err(swd(&short, &two[..1], 32, &quick(), 0))
        .contains("image 0 of the first set has 10 bytes, expected 32x32x3 = 3072"));
    let small = data::builtin(2, 8, 0);
    assert!(err(swd(
        &images(&small, 0..1),
        &images(&small, 1..2),
        8,
        &quick(),
        0
    ))
    .contains("8x8 px images are smaller than the 16 px"));
    let even = SwdParams {
        patch: 6,
        ..quick()
    };
    assert!(err(swd(&two, &two, 32, &even, 0)).contains("patch size must be odd"));
    let none = SwdParams {
        directions: 0,
        ..quick()
    };
    assert!(err(swd(&two, &two, 32, &none, 0)).contains("at least one"));
    assert!(err(laplacian_pyramid(&two[0][..100], 32, 16)).contains("has 100 bytes"));
}

#[test]
fn generated_images_become_bytes_as_pngs_are_written() {
    let size = 16;
    let mut rng = Rng::new(1);
    // Partly beyond [-1, 1] (clamped).
    let mut chw = rng.normal_vec(3 * size * size, 0.0, 0.8);
    chw[..5].copy_from_slice(&[-1.0, 1.0, 0.0, -3.0, 5.0]);
    let bytes = to_u8_hwc(&chw, size);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    artgan::tools::write_png(&chw, size, &path).unwrap();
    let png = image::open(&path).unwrap().to_rgb8();
    assert_eq!(png.as_raw(), &bytes);
    // Red channel of the first five pixels; 0 → 127.5 rounds up.
    let red: Vec<u8> = (0..5).map(|p| bytes[3 * p]).collect();
    assert_eq!(red, [0, 255, 128, 0, 255]);
}

fn tiny_generator(seed: u64) -> Generator {
    let config = ModelConfig {
        preset: Preset::Dcgan,
        image_size: 32,
        nz: 8,
        ngf: 4,
        ndf: 4,
    };
    Generator::new(&config, &mut Rng::new(seed), Device::Cpu).unwrap()
}

#[test]
fn an_untrained_generator_scores_far_above_the_real_floor() {
    let g = tiny_generator(1);
    let real = data::builtin(200, 32, 4);
    // 70: not a multiple of the 64-image generation batch.
    let r = evaluate_generator(&g, &real, 70, 0, &quick(), Numerics::FP32).unwrap();
    assert_eq!((r.count, r.resolutions.clone()), (70, vec![32, 16]));
    assert_eq!(
        r,
        evaluate_generator(&g, &real, 70, 0, &quick(), Numerics::FP32).unwrap()
    );
    let floor = real_floor(&real, 70, 0, &quick()).unwrap();
    // Measured: 300 against a floor of 78 (70 images make a noisy floor).
    eprintln!("untrained {r:?}\nfloor {floor:?}");
    assert!(r.mean > 3.0 * floor.mean);
    // More images than the set has: drawn with replacement.
    let small = data::builtin(10, 32, 4);
    assert_eq!(
        evaluate_generator(&g, &small, 20, 0, &quick(), Numerics::FP32)
            .unwrap()
            .count,
        20
    );
    assert_eq!(real_floor(&small, 20, 0, &quick()).unwrap().count, 20);
    // The real images must have the generator's size.
    let other = data::builtin(10, 64, 4);
    let e = evaluate_generator(&g, &other, 10, 0, &quick(), Numerics::FP32).unwrap_err();
    assert!(format!("{e:#}").contains("64x64 px but the generator makes 32x32 px"));
    assert!(evaluate_generator(&g, &real, 0, 0, &quick(), Numerics::FP32).is_err());
}

mod common;

/// `--eval-every-images N`: a `quality.csv` row (raw and EMA SWD) each time a step crosses a
/// multiple of N images, the same rows after a stop and resume as in one go (timing aside).
#[test]
fn quality_is_recorded_every_n_images_and_resumes_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |extra: &[&str]| {
        let args = common::tiny_train(
            &[
                &["--limit", "16", "--quiet", "--eval-every-images", "24"][..],
                &["--eval-count", "8", "--checkpoint-every", "1"],
                extra,
            ]
            .concat(),
        );
        let o = common::artgan(&args, d);
        assert!(o.status.success(), "{}", common::stderr(&o));
    };
    let rows = |out: &str| -> Vec<Vec<String>> {
        let mut r = csv::Reader::from_path(d.join(out).join("quality.csv")).unwrap();
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(
            header,
            ["images", "step", "epoch", "seconds", "swd", "swd_ema"]
        );
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                // Everything but the seconds.
                rec.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3)
                    .map(|(_, v)| v.to_string())
                    .collect()
            })
            .collect()
    };
    // Batches of 8: 24 and 48 images are crossed in 4 epochs of 16.
    run(&["--epochs", "4", "--out", "straight"]);
    let straight = rows("straight");
    let images: Vec<&str> = straight.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(images, ["24", "48"]);
    for r in &straight {
        let (raw, ema): (f32, f32) = (r[3].parse().unwrap(), r[4].parse().unwrap());
        assert!(
            raw.is_finite() && raw > 0.0 && ema.is_finite() && ema > 0.0,
            "{r:?}"
        );
    }
    // Stopped after epoch 2 (one row), resumed to 4: the same rows.
    run(&["--epochs", "2", "--out", "sliced"]);
    assert_eq!(rows("sliced").len(), 1);
    let o = common::artgan(
        &["train", "--resume", "sliced", "--epochs", "4", "--quiet"],
        d,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(rows("sliced"), straight);
}
