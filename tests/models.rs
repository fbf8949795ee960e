//! Architecture tests: pytorch/examples dcgan state-dict names and shapes, seed 001 parameter
//! counts, output shapes at every supported size.

use artgan::amp::Numerics;
use artgan::backend::Device;
use artgan::nn::{
    Conv2d, Ctx, Discriminator, Generator, Layer, Mode, ModelConfig, Module, Preset, Sequential,
};
use artgan::rng::Rng;
use artgan::tensor::{no_grad, Tensor};

mod common;
use common::tiny_model;

fn bn(prefix: &str, c: usize, out: &mut Vec<(String, Vec<usize>)>) {
    for (n, s) in [
        ("weight", vec![c]),
        ("bias", vec![c]),
        ("running_mean", vec![c]),
        ("running_var", vec![c]),
        ("num_batches_tracked", vec![]),
    ] {
        out.push((format!("{prefix}.{n}"), s));
    }
}

fn w(name: &str, shape: [usize; 4]) -> (String, Vec<usize>) {
    (name.to_string(), shape.to_vec())
}

/// `netG.state_dict()` of pytorch/examples dcgan (nz 100, ngf 64), written out by hand from
/// its `nn.Sequential`: ConvT, BN, ReLU ×4, ConvT, Tanh.
fn pytorch_dcgan_generator() -> Vec<(String, Vec<usize>)> {
    let mut e = vec![w("main.0.weight", [100, 512, 4, 4])];
    bn("main.1", 512, &mut e);
    e.push(w("main.3.weight", [512, 256, 4, 4]));
    bn("main.4", 256, &mut e);
    e.push(w("main.6.weight", [256, 128, 4, 4]));
    bn("main.7", 128, &mut e);
    e.push(w("main.9.weight", [128, 64, 4, 4]));
    bn("main.10", 64, &mut e);
    e.push(w("main.12.weight", [64, 3, 4, 4]));
    e
}

/// `netD.state_dict()` of pytorch/examples dcgan (ndf 64): Conv, LReLU, (Conv, BN, LReLU) ×3,
/// Conv, Sigmoid.
fn pytorch_dcgan_discriminator() -> Vec<(String, Vec<usize>)> {
    let mut e = vec![w("main.0.weight", [64, 3, 4, 4])];
    e.push(w("main.2.weight", [128, 64, 4, 4]));
    bn("main.3", 128, &mut e);
    e.push(w("main.5.weight", [256, 128, 4, 4]));
    bn("main.6", 256, &mut e);
    e.push(w("main.8.weight", [512, 256, 4, 4]));
    bn("main.9", 512, &mut e);
    e.push(w("main.11.weight", [1, 512, 4, 4]));
    e
}

#[test]
fn dcgan_state_dict_names_and_shapes_match_pytorch_examples() {
    let c = ModelConfig::full(Preset::Dcgan);
    let mut rng = Rng::new(0);
    let g = Generator::new(&c, &mut rng, Device::Cpu).unwrap();
    let d = Discriminator::new(&c, &mut rng, Device::Cpu).unwrap();
    assert_eq!(g.state_shapes(), pytorch_dcgan_generator());
    assert_eq!(d.state_shapes(), pytorch_dcgan_discriminator());
    // pytorch/examples' counts: G 3,576,704, D 2,765,568.
    assert_eq!(g.parameter_count(), 3_576_704);
    assert_eq!(d.parameter_count(), 2_765_568);
}

#[test]
fn classical_parameter_counts_match_seed_001() {
    let c = ModelConfig::full(Preset::Classical);
    let mut rng = Rng::new(0);
    let g = Generator::new(&c, &mut rng, Device::Cpu).unwrap();
    let d = Discriminator::new(&c, &mut rng, Device::Cpu).unwrap();
    assert_eq!(g.parameter_count(), 13_245_312);
    assert_eq!(d.parameter_count(), 2_763_776);
    // Two Adam groups: the 1024 and 512 layers, then the rest.
    let groups = g.param_groups();
    let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["initial", "detail"]);
    assert_eq!(groups[0].1[0].1.shape(), &[128, 1024, 4, 4]);
    assert_eq!(groups[0].1[3].1.shape(), &[1024, 512, 4, 4]);
    assert_eq!(groups[1].1[0].1.shape(), &[512, 256, 4, 4]);
    // Spectral norm state as PyTorch names it.
    let shapes = d.state_shapes();
    assert_eq!(
        shapes[0],
        ("main.1.weight_orig".to_string(), vec![64, 3, 4, 4])
    );
    assert_eq!(shapes[1], ("main.1.weight_u".to_string(), vec![64]));
    assert_eq!(shapes[2], ("main.1.weight_v".to_string(), vec![48]));
}

#[test]
fn both_presets_give_the_right_shapes_at_32_64_and_128_px() {
    for preset in [Preset::Dcgan, Preset::Classical] {
        for size in [32, 64, 128] {
            let c = ModelConfig {
                image_size: size,
                ..tiny_model(preset)
            };
            let mut rng = Rng::new(1);
            let g = Generator::new(&c, &mut rng, Device::Cpu).unwrap();
            let d = Discriminator::new(&c, &mut rng, Device::Cpu).unwrap();
            let _guard = no_grad();
            let z = Tensor::randn(&[2, 8, 1, 1], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
            let img = g
                .forward(&z, &mut Ctx::new(Mode::Train, &mut rng, Numerics::FP32))
                .unwrap();
            assert_eq!(img.shape(), &[2, 3, size, size], "{preset} {size}");
            let v = img.to_vec().unwrap();
            assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)), "tanh output");
            let logits = d
                .forward(&img, &mut Ctx::new(Mode::Train, &mut rng, Numerics::FP32))
                .unwrap();
            assert_eq!(logits.shape(), &[2], "{preset} {size}");
        }
    }
}

#[test]
fn unsupported_sizes_are_rejected_with_a_clear_message() {
    let c = ModelConfig {
        image_size: 48,
        ..ModelConfig::full(Preset::Dcgan)
    };
    let err = Generator::new(&c, &mut Rng::new(0), Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("image size 48"), "{err}");
}

#[test]
fn batch_stats_mode_leaves_running_stats_untouched_and_train_mode_moves_them() {
    let c = tiny_model(Preset::Dcgan);
    let mut rng = Rng::new(2);
    let g = Generator::new(&c, &mut rng, Device::Cpu).unwrap();
    let z = Tensor::randn(&[4, 8, 1, 1], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let snapshot = |g: &Generator| {
        let mut v = Vec::new();
        g.visit_state("", &mut |_, s| {
            if let artgan::nn::StateRef::Buffer(t) = s {
                v.extend(t.to_vec().unwrap());
            }
            if let artgan::nn::StateRef::Count(n) = s {
                v.push(n.get() as f32);
            }
        });
        v
    };
    let before = snapshot(&g);
    let _guard = no_grad();
    g.forward(
        &z,
        &mut Ctx::new(Mode::BatchStats, &mut rng, Numerics::FP32),
    )
    .unwrap();
    assert_eq!(snapshot(&g), before);
    g.forward(&z, &mut Ctx::new(Mode::Train, &mut rng, Numerics::FP32))
        .unwrap();
    assert_ne!(snapshot(&g), before);
}

/// `nn::draws` (the form of a step that a CUDA graph replays) takes the same values from the
/// regularizer stream, in the same order, as drawing directly: the classical discriminator's
/// dropout and noise seeds and DiffAugment's parameters, in the step that records them and in
/// a later step whose draws are made up front (`prefill`). A prefilled step that draws
/// otherwise than the recorded one (here: another noise std) is an error, not a silent replay.
#[test]
fn step_draws_take_the_same_values_as_direct_draws() {
    use artgan::nn::draws::StepDraws;
    use artgan::ops;
    let c = tiny_model(Preset::Classical);
    // Two identical discriminators (their spectral-norm vectors move with each forward).
    let d_direct = Discriminator::new(&c, &mut Rng::new(3), Device::Cpu).unwrap();
    let d_drawn = Discriminator::new(&c, &mut Rng::new(3), Device::Cpu).unwrap();
    let policy = ops::DiffAugment::parse("color,translation,cutout").unwrap();
    let x = Tensor::randn(&[3, 3, 32, 32], 0.0, 1.0, &mut Rng::new(4), Device::Cpu).unwrap();
    let _guard = no_grad();
    let (mut direct, mut drawn) = (Rng::new(9), Rng::new(9));
    let mut draws = StepDraws::recording(Device::Cpu);
    for step in 0..3 {
        let a = ops::diff_augment(&x, policy, direct.next_u64()).unwrap();
        let a = d_direct
            .forward(&a, &mut Ctx::new(Mode::Train, &mut direct, Numerics::FP32))
            .unwrap();
        if step > 0 {
            draws.prefill(&mut drawn, 0.1).unwrap();
        }
        // After the recording step the draws come from the prefilled slots: this stream
        // must not be touched.
        let mut unused = Rng::new(0);
        let rng = if step == 0 { &mut drawn } else { &mut unused };
        let b = draws.diff_augment(rng, &x, policy, 0).unwrap();
        let b = d_drawn
            .forward(
                &b,
                &mut Ctx::new(Mode::Train, rng, Numerics::FP32).drawing(Some(&mut draws)),
            )
            .unwrap();
        assert!(draws.all_taken(), "step {step}");
        assert_eq!(unused, Rng::new(0), "step {step}");
        assert_eq!(direct.state(), drawn.state(), "step {step}: streams");
        let bits =
            |t: &Tensor| -> Vec<u32> { t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect() };
        assert_eq!(bits(&a), bits(&b), "step {step}: D outputs");
    }
    draws.prefill(&mut drawn, 0.1).unwrap();
    d_drawn.set_noise_std(0.05);
    let b = draws.diff_augment(&mut drawn, &x, policy, 0).unwrap();
    let Err(err) = d_drawn.forward(
        &b,
        &mut Ctx::new(Mode::Train, &mut drawn, Numerics::FP32).drawing(Some(&mut draws)),
    ) else {
        panic!("another noise std than the prefilled one was accepted");
    };
    assert!(format!("{err:#}").contains("Noise(0.05)"), "{err:#}");
}

/// A conv without bias and the activation after it run as one op (`ops::conv2d_act`: the
/// activation is applied as the output is written): G's last ConvT + Tanh, a Conv + LeakyReLU
/// as D's first layer. A conv with a bias, or a LeakyReLU of negative slope, stays two ops.
#[test]
fn convs_and_their_activations_run_as_one_op() {
    let mut rng = Rng::new(5);
    let c = tiny_model(Preset::Dcgan);
    let g = Generator::new(&c, &mut rng, Device::Cpu).unwrap();
    let z = Tensor::randn(&[2, 8, 1, 1], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let img = g
        .forward(&z, &mut Ctx::new(Mode::Train, &mut rng, Numerics::FP32))
        .unwrap();
    assert_eq!(img.grad_fn_name(), Some("conv_transpose2d_act"));

    let x = Tensor::randn(&[2, 3, 8, 8], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    for (bias, slope, want) in [
        (false, 0.2, "conv2d_act"),
        (true, 0.2, "leaky_relu"),
        (false, -0.1, "leaky_relu"),
    ] {
        let mut seq = Sequential::new();
        let conv = Conv2d::new(3, 4, 4, 2, 1, bias, &mut rng, Device::Cpu).unwrap();
        seq.push(Layer::Conv(conv));
        seq.push(Layer::LeakyRelu(slope));
        let y = seq
            .forward(&x, &mut Ctx::new(Mode::Train, &mut rng, Numerics::FP32))
            .unwrap();
        assert_eq!(y.grad_fn_name(), Some(want), "bias {bias} slope {slope}");
    }
}
