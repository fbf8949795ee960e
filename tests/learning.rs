//! Training works: a tiny dcgan on the built-in paintings, on the CPU, for a fixed number of
//! steps (not timed). Generated images must move clearly toward the data's distribution (by a
//! toy SWD on thumbnails, tracked per epoch, and by Progressive GAN's SWD before and after) and
//! D's scores must behave as a GAN's do.

use artgan::amp::Numerics;
use artgan::amp::Precision;
use artgan::backend::Device;
use artgan::data;
use artgan::nn::{ModelConfig, Preset};
use artgan::quality::{self, SwdParams, SwdReport};
use artgan::rng::Rng;
use artgan::train::{generate_for_grid, TrainConfig, Trainer};

const SIZE: usize = 32;
/// Images are compared as 8×8 colour thumbnails (4×4 average pooling): 192-d vectors that
/// capture layout and colour (sky over ground, sun), which a short run should learn.
const THUMB: usize = 8;

fn thumbnails(images: &[f32], n: usize) -> Vec<Vec<f32>> {
    let f = SIZE / THUMB;
    (0..n)
        .map(|i| {
            let mut t = vec![0f32; 3 * THUMB * THUMB];
            for c in 0..3 {
                for y in 0..SIZE {
                    for x in 0..SIZE {
                        t[(c * THUMB + y / f) * THUMB + x / f] +=
                            images[((i * 3 + c) * SIZE + y) * SIZE + x] / (f * f) as f32;
                    }
                }
            }
            t
        })
        .collect()
}

/// Sliced Wasserstein-1 distance between two equal-size sets of vectors (mean over random
/// unit directions of the mean absolute difference of the sorted projections).
fn sliced_wasserstein(a: &[Vec<f32>], b: &[Vec<f32>], rng: &mut Rng) -> f32 {
    assert_eq!(a.len(), b.len());
    let dim = a[0].len();
    let dirs = 128;
    let mut total = 0.0;
    for _ in 0..dirs {
        let mut d = rng.normal_vec(dim, 0.0, 1.0);
        let norm = d.iter().map(|x| x * x).sum::<f32>().sqrt();
        d.iter_mut().for_each(|x| *x /= norm);
        let proj = |set: &[Vec<f32>]| {
            let mut p: Vec<f32> = set
                .iter()
                .map(|v| v.iter().zip(&d).map(|(x, y)| x * y).sum())
                .collect();
            p.sort_by(|x, y| x.total_cmp(y));
            p
        };
        let (pa, pb) = (proj(a), proj(b));
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f32>() / pa.len() as f32;
    }
    total / dirs as f32
}

/// `count` built-in paintings as NCHW values in [-1, 1].
fn builtin_images(count: usize, seed: u64) -> Vec<f32> {
    let set = data::builtin(count, SIZE, seed);
    let all: Vec<usize> = (0..count).collect();
    data::assemble_batch(&set, &all, &[], &[])
}

/// Images for Progressive GAN's SWD: more than the thumbnails use, as it is noisier.
const SWD_IMAGES: usize = 256;

/// Progressive GAN's SWD (`artgan::quality`, one batch of 128 directions) between `real` and
/// 8-bit `other` images.
fn swd_against(real: &data::ImageSet, other: &[Vec<u8>]) -> SwdReport {
    let real: Vec<&[u8]> = (0..real.len()).map(|i| real.image_u8(i)).collect();
    let other: Vec<&[u8]> = other.iter().map(Vec::as_slice).collect();
    let params = SwdParams {
        repeats: 1,
        ..SwdParams::default()
    };
    quality::swd(&real, &other, SIZE, &params, 11).unwrap()
}

/// The generator's images of latents `z` as 8-bit images.
fn generated_u8(trainer: &Trainer, z: &artgan::Tensor) -> Vec<Vec<u8>> {
    generate_for_grid(&trainer.g, z, Numerics::FP32)
        .unwrap()
        .chunks(3 * SIZE * SIZE)
        .map(|im| quality::to_u8_hwc(im, SIZE))
        .collect()
}

#[test]
fn tiny_dcgan_learns_the_builtin_paintings() {
    learns(Precision::Fp32);
}

/// The same run in mixed precision (convolution operands rounded to f16, loss scaling) must
/// pass the same bars, and skip few of its optimiser steps.
#[test]
fn tiny_dcgan_learns_the_builtin_paintings_in_amp() {
    learns(Precision::Amp);
}

fn learns(precision: Precision) {
    let model = ModelConfig {
        preset: Preset::Dcgan,
        image_size: SIZE,
        nz: 32,
        ngf: 16,
        ndf: 16,
    };
    let mut cfg = TrainConfig::for_model(model);
    cfg.batch_size = 32;
    cfg.seed = 7;
    cfg.precision = precision;
    let count = 512;
    let set = std::sync::Arc::new(data::builtin(count, SIZE, 123));
    let mut data = data::Loader::new(set, cfg.batch_size, data::Augment::NONE, 123);
    let mut trainer = Trainer::new(cfg, Device::Cpu).unwrap();

    // Reference sets: 64 real images vs 64 generated from fixed latents.
    let real_images = builtin_images(64, 999);
    let real = thumbnails(&real_images, 64);
    let z = artgan::train::fixed_noise(5, 32, Device::Cpu).unwrap();
    let distance = |trainer: &Trainer| {
        let fake = thumbnails(
            &generate_for_grid(&trainer.g, &z, Numerics::FP32).unwrap(),
            64,
        );
        sliced_wasserstein(&real, &fake, &mut Rng::new(11))
    };
    let untrained = distance(&trainer);
    let swd_real = data::builtin(SWD_IMAGES, SIZE, 999);
    let swd_z = artgan::Tensor::randn(
        &[SWD_IMAGES, 32, 1, 1],
        0.0,
        1.0,
        &mut Rng::new(5),
        Device::Cpu,
    )
    .unwrap();
    let swd_untrained = swd_against(&swd_real, &generated_u8(&trainer, &swd_z));
    let swd_floor = {
        let other = data::builtin(SWD_IMAGES, SIZE, 4242);
        let other: Vec<Vec<u8>> = (0..SWD_IMAGES)
            .map(|i| other.image_u8(i).to_vec())
            .collect();
        swd_against(&swd_real, &other)
    };
    let noise_floor = {
        let other = builtin_images(64, 4242);
        sliced_wasserstein(&real, &thumbnails(&other, 64), &mut Rng::new(11))
    };

    let epochs = 36;
    let mut per_epoch = Vec::new();
    for epoch in 0..epochs {
        data.start_epoch(epoch);
        let (mut dx, mut dgz, mut n) = (0.0, 0.0, 0.0);
        while let Some(batch) = data.next_batch(Device::Cpu).unwrap() {
            let s = trainer.step(&batch).unwrap();
            assert!(s.loss_d.is_finite() && s.loss_g.unwrap().is_finite());
            dx += s.d_x;
            dgz += s.d_g_z;
            n += 1.0;
        }
        per_epoch.push((dx / n, dgz / n, distance(&trainer)));
    }
    let trained = per_epoch.last().unwrap().2;
    eprintln!("real-vs-real {noise_floor:.3}, untrained {untrained:.3}, per epoch (D(x), D(G(z)), distance): {per_epoch:?}");
    let swd_trained = swd_against(&swd_real, &generated_u8(&trainer, &swd_z));
    eprintln!(
        "SWD x1e3 at 32 / 16 px: real-vs-real {:?}, untrained {:?}, trained {:?}",
        swd_floor.per_level, swd_untrained.per_level, swd_trained.per_level
    );

    // Clearly closer to the data: well below the untrained generator's distance.
    assert!(
        trained < 0.5 * untrained,
        "distance {trained} not well below untrained {untrained}"
    );
    // Progressive GAN's SWD, measured: real-vs-real 15 / 38 (32 / 16 px, mean 26), untrained
    // 271 / 283 (mean 277), trained 248 / 123 (mean 186). The 16-px low-pass level (colour
    // layout) drops clearly; the 32-px detail level (brush-stroke texture) barely moves in a
    // run this short.
    assert!(swd_floor.mean < 0.2 * swd_untrained.mean);
    assert!(
        swd_trained.per_level[1] < 0.6 * swd_untrained.per_level[1],
        "16-px SWD {} not well below untrained {}",
        swd_trained.per_level[1],
        swd_untrained.per_level[1]
    );
    assert!(swd_trained.mean < 0.8 * swd_untrained.mean);
    // D separates real from fake from the start...
    let (dx0, dgz0, _) = per_epoch[0];
    assert!(dx0 > dgz0, "epoch 1: D(x) {dx0} <= D(G(z)) {dgz0}");
    // ...but neither side wins outright: G keeps fooling D some of the time and D keeps
    // scoring reals above chance-level collapse.
    let (dx, dgz, _) = *per_epoch.last().unwrap();
    assert!(dgz > 0.02 && dx < 0.99, "final D(x) {dx}, D(G(z)) {dgz}");
    if let Some((d, g)) = trainer.loss_scales().unwrap() {
        eprintln!(
            "loss scalers after {} steps: D {d:?}, G {g:?}",
            trainer.step
        );
        let steps = trainer.step as u64;
        for (what, r) in [("D", d), ("G", g)] {
            assert_eq!(r.applied + r.skipped, steps, "{what}: {r:?}");
            assert!(
                r.skipped * 20 <= steps,
                "{what} skipped over 5% of its steps: {r:?}"
            );
            assert!(r.scale.is_finite() && r.scale >= 1.0, "{what}: {r:?}");
        }
    }
}
