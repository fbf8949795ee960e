//! Checkpoint round trip and the errors of bad checkpoint files.

use artgan::amp::Numerics;
use artgan::backend::Device;
use artgan::checkpoint::{self, load_state_dict, save_state_dict, write_atomic};
use artgan::nn::{Ctx, Discriminator, Generator, Mode, ModelConfig, Module, Preset, StateRef};
use artgan::rng::Rng;
use artgan::tensor::{no_grad, Tensor};
use artgan::train::{self, TrainConfig};
use std::collections::HashMap;

mod common;
use common::tiny_model;

fn eval_outputs(g: &Generator, d: &Discriminator, z: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let _guard = no_grad();
    let mut rng = Rng::new(0);
    let img = g
        .forward(z, &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32))
        .unwrap();
    let logits = d
        .forward(&img, &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32))
        .unwrap();
    (img.to_vec().unwrap(), logits.to_vec().unwrap())
}

/// Moves every running stat, `u`/`v` and counter away from its init (a few train-mode
/// forwards), so the round trip checks buffers too, not only weights.
fn exercise(g: &Generator, d: &Discriminator, seed: u64) {
    let _guard = no_grad();
    let mut rng = Rng::new(seed);
    for _ in 0..2 {
        let z = Tensor::randn(&[4, g.config.nz, 1, 1], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
        let img = g
            .forward(&z, &mut Ctx::new(Mode::Train, &mut rng, Numerics::FP32))
            .unwrap();
        d.forward(&img, &mut Ctx::new(Mode::Train, &mut rng, Numerics::FP32))
            .unwrap();
    }
}

#[test]
fn save_then_load_gives_identical_outputs_for_both_presets() {
    for preset in [Preset::Dcgan, Preset::Classical] {
        let dir = tempfile::tempdir().unwrap();
        let c = tiny_model(preset);
        let cfg = TrainConfig::for_model(c.clone());
        let (g, d) = train::build_models(&c, 1, Device::Cpu).unwrap();
        exercise(&g, &d, 5);
        checkpoint::save_config(dir.path(), &cfg).unwrap();
        checkpoint::save_models(dir.path(), &g, &d).unwrap();

        let g2 = checkpoint::load_generator(dir.path(), Device::Cpu).unwrap();
        let d2 = checkpoint::load_discriminator(dir.path(), Device::Cpu).unwrap();
        let z = Tensor::randn(&[3, 8, 1, 1], 0.0, 1.0, &mut Rng::new(9), Device::Cpu).unwrap();
        assert_eq!(
            eval_outputs(&g, &d, &z),
            eval_outputs(&g2, &d2, &z),
            "{preset}"
        );
        // Counters survive too (int64 in the file).
        let counts = |m: &dyn Module| {
            let mut v = Vec::new();
            m.visit_state("", &mut |_, s| {
                if let StateRef::Count(n) = s {
                    v.push(n.get());
                }
            });
            v
        };
        assert_eq!(counts(&g), counts(&g2));
        if preset == Preset::Dcgan {
            assert!(counts(&g).iter().all(|&n| n == 2));
        }
    }
}

#[test]
fn num_batches_tracked_is_stored_as_int64_scalar() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _) = train::build_models(&tiny_model(Preset::Dcgan), 1, Device::Cpu).unwrap();
    let path = dir.path().join("g.safetensors");
    save_state_dict(&g, &path, HashMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("main.1.num_batches_tracked").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    assert!(t.shape().is_empty());
    assert_eq!(
        st.tensor("main.0.weight").unwrap().dtype(),
        safetensors::Dtype::F32
    );
}

#[test]
fn loading_a_checkpoint_of_another_shape_names_the_tensor_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generator.safetensors");
    let (g_wide, _) = train::build_models(
        &ModelConfig {
            ngf: 8,
            ..tiny_model(Preset::Dcgan)
        },
        1,
        Device::Cpu,
    )
    .unwrap();
    save_state_dict(&g_wide, &path, HashMap::new()).unwrap();
    let (g, _) = train::build_models(&tiny_model(Preset::Dcgan), 2, Device::Cpu).unwrap();
    let before = g.parameters()[0].1.to_vec().unwrap();
    let err = load_state_dict(&g, &path, "preset dcgan, ngf 4")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor main.0.weight has shape [8, 32, 4, 4], expected [8, 16, 4, 4]"),
        "{err}"
    );
    assert!(err.contains("preset dcgan, ngf 4"), "{err}");
    assert_eq!(g.parameters()[0].1.to_vec().unwrap(), before);
}

#[test]
fn loading_a_checkpoint_of_another_preset_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let (_, d_classical) =
        train::build_models(&tiny_model(Preset::Classical), 1, Device::Cpu).unwrap();
    save_state_dict(&d_classical, &path, HashMap::new()).unwrap();
    let (_, d) = train::build_models(&tiny_model(Preset::Dcgan), 1, Device::Cpu).unwrap();
    let err = load_state_dict(&d, &path, "preset dcgan")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected tensor main."), "{err}");
}

#[test]
fn non_safetensors_and_truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _) = train::build_models(&tiny_model(Preset::Dcgan), 1, Device::Cpu).unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is a PNG, honest").unwrap();
    let err = load_state_dict(&g, &junk, "x").unwrap_err().to_string();
    assert!(err.contains("is not a safetensors file"), "{err}");

    let good = dir.path().join("good.safetensors");
    save_state_dict(&g, &good, HashMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_state_dict(&g, &cut, "x").unwrap_err().to_string();
    assert!(err.contains("is not a safetensors file"), "{err}");

    let missing = dir.path().join("nope.safetensors");
    let err = format!("{:#}", load_state_dict(&g, &missing, "x").unwrap_err());
    assert!(err.contains("cannot read checkpoint"), "{err}");
}

#[test]
fn atomic_write_replaces_the_file_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    write_atomic(&path, b"old").unwrap();
    write_atomic(&path, b"new contents").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["config.json"]);
    // A folder that does not exist: an error, and nothing is created.
    let bad = dir.path().join("missing").join("x.json");
    assert!(write_atomic(&bad, b"x").is_err());
    assert!(!dir.path().join("missing").exists());
}

#[test]
fn latents_round_trip_through_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let z = Tensor::randn(&[5, 7, 1, 1], 0.0, 1.0, &mut Rng::new(3), Device::Cpu).unwrap();
    let path = dir.path().join("latents.safetensors");
    checkpoint::save_tensors(&path, &[("z", &z)]).unwrap();
    let loaded = checkpoint::load_tensors(&path).unwrap();
    let (shape, values) = &loaded["z"];
    assert_eq!(shape, &vec![5, 7, 1, 1]);
    assert_eq!(values, &z.to_vec().unwrap());
}

#[test]
fn the_same_weights_give_byte_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = tiny_model(Preset::Classical);
    let (g, d) = train::build_models(&c, 4, Device::Cpu).unwrap();
    let (g2, d2) = train::build_models(&c, 4, Device::Cpu).unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    checkpoint::save_models(&dir.path().join("a"), &g, &d).unwrap();
    checkpoint::save_models(&dir.path().join("b"), &g2, &d2).unwrap();
    for f in [checkpoint::GENERATOR_FILE, checkpoint::DISCRIMINATOR_FILE] {
        let a = std::fs::read(dir.path().join("a").join(f)).unwrap();
        let b = std::fs::read(dir.path().join("b").join(f)).unwrap();
        assert!(a == b, "{f} differs between two saves of the same weights");
    }
}
