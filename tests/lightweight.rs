//! The lightweight (FastGAN-class) preset: shapes at 64/128/256 px, state-dict names, the
//! decoders' reconstruction loss reaching D's weights, conditional models, and whole CLI runs
//! (train, sample, conditional, amp, 256 px grids).

use artgan::amp::Numerics;
use artgan::backend::Device;
use artgan::nn::{Ctx, Discriminator, Generator, Mode, ModelConfig, Module, Preset};
use artgan::ops::GanLoss;
use artgan::rng::Rng;
use artgan::tensor::{no_grad, Tensor};
use artgan::train::{TrainConfig, Trainer};
use std::collections::HashMap;
use std::path::Path;

use artgan::nn::lightweight::QuarterWeights;

mod common;
use common::{artgan, assert_one_line_error, image_folder, stderr, tiny_model};

fn light(size: usize) -> ModelConfig {
    ModelConfig {
        image_size: size,
        ..tiny_model(Preset::Lightweight)
    }
}

fn ctx(rng: &mut Rng) -> Ctx<'_> {
    Ctx::new(Mode::Train, rng, Numerics::FP32)
}

#[test]
fn lightweight_models_give_the_right_shapes_at_64_128_and_256_px() {
    for size in [64, 128, 256] {
        for classes in [0, 3] {
            let c = light(size);
            let mut rng = Rng::new(1);
            let g = Generator::conditional(&c, classes, &mut rng, Device::Cpu).unwrap();
            let d = Discriminator::conditional(&c, classes, &mut rng, Device::Cpu).unwrap();
            assert!(d.reconstructs());
            let _guard = no_grad();
            let labels = [0, 2];
            let labels = (classes > 0).then_some(&labels[..]);
            let z = Tensor::randn(&[2, 8, 1, 1], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
            let mut r = Rng::new(2);
            let img = g.forward(&z, &mut ctx(&mut r).labeled(labels)).unwrap();
            assert_eq!(img.shape(), &[2, 3, size, size], "{size} px");
            let v = img.to_vec().unwrap();
            assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)), "tanh output");
            let logits = d.forward(&img, &mut ctx(&mut r).labeled(labels)).unwrap();
            assert_eq!(logits.shape(), &[2], "{size} px");
            for quarter in 0..4 {
                let c = d.part_channels().expect("a D with decoders");
                let q = QuarterWeights::new(quarter, 2, c, Device::Cpu).unwrap();
                let (l, rec) = d
                    .forward_real(&img, Some(&q), &mut ctx(&mut r).labeled(labels))
                    .unwrap();
                assert_eq!(l.shape(), &[2]);
                let rec = rec.expect("a reconstruction loss").to_vec().unwrap();
                assert!(
                    rec.len() == 1 && rec[0].is_finite() && rec[0] > 0.0,
                    "{rec:?}"
                );
            }
        }
    }
}

#[test]
fn lightweight_state_dict_follows_fastgan_names_and_channel_table() {
    // ngf = ndf = 4: FastGAN's nfc at 4, 8, 16, 32, 64, 128 px is 64, 32, 16, 8, 8, 4.
    let c = light(64);
    let mut rng = Rng::new(0);
    let g = Generator::new(&c, &mut rng, Device::Cpu).unwrap();
    let d = Discriminator::new(&c, &mut rng, Device::Cpu).unwrap();
    let gs: HashMap<String, Vec<usize>> = g.state_shapes().into_iter().collect();
    for (name, shape) in [
        ("init.0.weight", vec![8, 128, 4, 4]),
        ("init.1.running_var", vec![128]),
        ("feat_8.1.weight", vec![64, 64, 3, 3]),
        ("feat_16.1.weight", vec![32, 32, 3, 3]),
        ("feat_64.2.weight", vec![16]),
        // Excitation 4 -> 16, 8 -> 32, 16 -> 64.
        ("se_16.main.1.weight", vec![16, 64, 4, 4]),
        ("se_16.main.3.weight", vec![16, 16, 1, 1]),
        ("se_32.main.1.weight", vec![8, 32, 4, 4]),
        ("se_64.main.1.weight", vec![8, 16, 4, 4]),
        ("to_big.0.weight", vec![3, 8, 3, 3]),
    ] {
        assert_eq!(gs.get(name), Some(&shape), "G {name}");
    }
    assert!(!gs.contains_key("se_128.main.1.weight"));
    let groups: Vec<String> = g.param_groups().into_iter().map(|(n, _)| n).collect();
    assert_eq!(groups, ["main"]);
    let ds: HashMap<String, Vec<usize>> = d.state_shapes().into_iter().collect();
    for (name, shape) in [
        ("down_from_big.0.weight_orig", vec![4, 3, 3, 3]),
        ("down_32.0.weight_orig", vec![8, 4, 4, 4]),
        ("down_16.0.weight_orig", vec![8, 8, 4, 4]),
        ("down_8.0.weight_orig", vec![16, 8, 4, 4]),
        ("down_8.1.running_mean", vec![16]),
        ("rf_big.0.weight_orig", vec![32, 16, 1, 1]),
        ("rf_big.3.weight_orig", vec![1, 32, 4, 4]),
        // Decoders to 32 px (half the image): 8 -> 16 -> 32, then RGB.
        ("decoder_big.main.1.weight_orig", vec![32, 16, 3, 3]),
        ("decoder_big.main.5.weight_orig", vec![16, 16, 3, 3]),
        ("decoder_big.main.8.weight_orig", vec![3, 8, 3, 3]),
        ("decoder_part.main.1.weight_orig", vec![32, 8, 3, 3]),
    ] {
        assert_eq!(ds.get(name), Some(&shape), "D {name}");
    }
}

#[test]
fn a_training_step_trains_the_decoders_on_the_real_batch() {
    let mut cfg = TrainConfig::for_model(light(64));
    assert_eq!(cfg.loss, GanLoss::Hinge);
    assert!(cfg.diffaugment.is_on());
    cfg.batch_size = 4;
    let mut t = Trainer::new(cfg, Device::Cpu).unwrap();
    let decoders = |t: &Trainer| -> Vec<Vec<f32>> {
        t.d.parameters()
            .into_iter()
            .filter(|(n, _)| n.starts_with("decoder_"))
            .map(|(_, p)| p.to_vec().unwrap())
            .collect()
    };
    let before = decoders(&t);
    assert!(!before.is_empty());
    let real = Tensor::randn(&[4, 3, 64, 64], 0.0, 0.5, &mut Rng::new(4), Device::Cpu).unwrap();
    let stats = t.step(&real).unwrap();
    assert!(stats.loss_d.is_finite() && stats.loss_g.is_some());
    let after = decoders(&t);
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(
            b, a,
            "every decoder layer learns from the reconstruction loss"
        );
    }
}

#[test]
fn lightweight_rejects_sizes_outside_64_128_256() {
    let err = Generator::new(&light(32), &mut Rng::new(0), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("use 64, 128 or 256"), "{err}");
    let c = ModelConfig {
        image_size: 256,
        ..tiny_model(Preset::Dcgan)
    };
    let err = Generator::new(&c, &mut Rng::new(0), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("256: --preset lightweight"), "{err}");
}

fn light_train<'a>(size: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--preset",
        "lightweight",
        "--image-size",
        size,
        "--ngf",
        "4",
        "--ndf",
        "4",
        "--nz",
        "8",
        "--batch-size",
        "4",
        "--quiet",
    ];
    if !extra.contains(&"--epochs") {
        args.extend(["--epochs", "1"]);
    }
    args.extend_from_slice(extra);
    args
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

fn png_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn cli_lightweight_trains_with_fastgan_defaults_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    image_folder(&p.join("art"), 8);
    ok(&artgan(
        &light_train("64", &["--data", "art", "--out", "run"]),
        p,
    ));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("run/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["preset"], "lightweight");
    assert_eq!(cfg["loss"], "hinge");
    assert_eq!(cfg["diffaugment"]["cutout"], true);
    assert_eq!(cfg["cuda_graphs"], false);
    ok(&artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--count",
            "2",
            "--out",
            "s",
        ],
        p,
    ));
    assert_eq!(png_size(&p.join("s/sample-0000.png")), (64, 64));
    // The defaults give way to explicit flags.
    let args = ["--data", "art", "--out", "run2", "--loss", "bce"];
    ok(&artgan(
        &light_train("64", &[&args[..], &["--diffaugment", "none"]].concat()),
        p,
    ));
    let cfg = std::fs::read_to_string(p.join("run2/config.json")).unwrap();
    assert!(cfg.contains("\"loss\": \"bce\""), "{cfg}");
    assert!(!cfg.contains("diffaugment"), "{cfg}");
}

#[test]
fn cli_lightweight_at_256_px_writes_256_px_grids_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    image_folder(&p.join("art"), 4);
    ok(&artgan(
        &light_train("256", &["--data", "art", "--out", "run"]),
        p,
    ));
    let (w, h) = png_size(&p.join("run/samples/epoch-0001.png"));
    // 8 × 8 images of 256 px and the grid's padding (2 px around and between).
    assert_eq!((w, h), (8 * 256 + 9 * 2, 8 * 256 + 9 * 2));
    ok(&artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--count",
            "1",
            "--out",
            "s",
        ],
        p,
    ));
    assert_eq!(png_size(&p.join("s/sample-0000.png")), (256, 256));
    let report = std::fs::read_to_string(p.join("run/index.html")).unwrap();
    assert!(report.contains("256×256 px"), "the report names the size");
}

#[test]
fn cli_lightweight_conditional_and_amp_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("art")).unwrap();
    for a in 0..2 {
        for i in 0..4u32 {
            let img = common::noise_rgb(20, 16, a * 10 + i);
            common::save(&img, &p.join(format!("art/artist-{a}_title-{i}.png")));
        }
    }
    let cond = [
        "--data",
        "art",
        "--condition",
        "artist",
        "--labels",
        "prefix",
        "--min-images",
        "2",
        "--out",
        "cond",
    ];
    ok(&artgan(&light_train("64", &cond), p));
    ok(&artgan(
        &[
            "sample",
            "--checkpoint",
            "cond",
            "--per-class",
            "2",
            "--out",
            "s",
        ],
        p,
    ));
    let amp = ["--data", "art", "--precision", "amp", "--out", "amp"];
    ok(&artgan(&light_train("64", &amp), p));
    let cfg = std::fs::read_to_string(p.join("amp/config.json")).unwrap();
    assert!(cfg.contains("\"precision\": \"amp\""), "{cfg}");
}

#[test]
fn cli_lightweight_at_an_unsupported_size_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(&dir.path().join("art"), 4);
    let o = artgan(&light_train("32", &["--data", "art"]), dir.path());
    assert_one_line_error(
        &o,
        "image size 32 is not supported by the lightweight preset: use 64, 128 or 256",
    );
}

/// The quarter D's part decoder reconstructs is drawn from the regulariser stream, which a
/// checkpoint saves: a run stopped after epoch 1 and resumed ends with the same bytes as one
/// trained straight through.
#[test]
fn cli_lightweight_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    image_folder(&p.join("art"), 8);
    let every = ["--data", "art", "--checkpoint-every", "1"];
    let straight = [&every[..], &["--epochs", "2", "--out", "straight"]].concat();
    ok(&artgan(&light_train("64", &straight), p));
    let split = [&every[..], &["--epochs", "1", "--out", "split"]].concat();
    ok(&artgan(&light_train("64", &split), p));
    let resume = ["train", "--resume", "split", "--epochs", "2", "--quiet"];
    ok(&artgan(&resume, p));
    for f in [
        "generator.safetensors",
        "generator_ema.safetensors",
        "discriminator.safetensors",
    ] {
        let (a, b) = (p.join("straight").join(f), p.join("split").join(f));
        assert!(
            std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
            "{f} differs from the uninterrupted run"
        );
    }
}
