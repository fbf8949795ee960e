//! Element types: every op checks its inputs' dtypes and names them when they do not fit, f16 is
//! two-byte storage, and `to_dtype` rounds like `half::f16::from_f32` (ties to even) on the host
//! and on the GPU, with a backward that casts the gradient back.
//!
//! The GPU test skips without a device; `ARTGAN_REQUIRE_GPU=1` (e.g. under `scripts/cuda-emu`)
//! makes a missing one fail it.

use artgan::amp::{Numerics, Precision};
use artgan::backend::{
    Activation, Backend, BatchNormAct, ChannelDims, ConvImpl, DType, Device, Storage,
};
use artgan::ops;
use artgan::rng::Rng;
use artgan::tensor::Tensor;
use half::f16;
use std::rc::Rc;

mod common;

fn halves(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

fn err(r: anyhow::Result<Tensor>) -> String {
    format!("{:#}", r.expect_err("a dtype mismatch must fail"))
}

#[test]
fn a_one_input_op_names_itself_and_the_dtype() {
    let x = Tensor::from_f16(halves(&[1.0, -2.0]), &[2], Device::Cpu).unwrap();
    assert_eq!(
        err(ops::scale(&x, 2.0)),
        "scale: input is f16; this op takes f32"
    );
    assert_eq!(err(ops::sum(&x)), "sum: input is f16; this op takes f32");
    assert_eq!(
        err(ops::bce_with_logits(&x, 1.0)),
        "bce_with_logits: logits is f16; this op takes f32"
    );
}

#[test]
fn a_mixed_op_names_every_input_and_its_dtype() {
    let x = Tensor::from_f16(halves(&[0.5; 16]), &[1, 1, 4, 4], Device::Cpu).unwrap();
    let w = Tensor::from_vec(vec![0.25; 9], &[1, 1, 3, 3], Device::Cpu).unwrap();
    assert_eq!(
        err(ops::conv2d(&x, &w, None, 1, 1, Numerics::FP32)),
        "conv2d: input is f16, weight is f32; this op takes f32"
    );
    // Under amp a convolution takes an f16 activation, never an f16 weight.
    let amp = Numerics::new(Precision::Amp, ConvImpl::Cudnn);
    let w16 = ops::to_dtype(&w, DType::F16).unwrap();
    assert_eq!(
        err(ops::conv2d(&x, &w16, None, 1, 1, amp)),
        "conv2d: input is f16, weight is f16; this op takes f32 (or input f16, weight f32)"
    );
    assert_eq!(
        ops::conv2d(&x, &w, None, 1, 1, amp).unwrap().dtype(),
        DType::F16
    );
    let a = Tensor::from_vec(vec![1.0; 16], &[1, 1, 4, 4], Device::Cpu).unwrap();
    assert_eq!(
        err(ops::mul(&a, &x)),
        "mul: a is f32, b is f16; this op takes f32"
    );
    // Both f16 is no better: `add` takes f32 (amp's activations never reach it).
    let x2 = Tensor::from_f16(halves(&[0.5; 16]), &[1, 1, 4, 4], Device::Cpu).unwrap();
    assert_eq!(
        err(ops::add(&x, &x2)),
        "add: a is f16, b is f16; this op takes f32"
    );
}

/// Below the ops layer: a host kernel given f16 storage says so instead of misreading it.
#[test]
fn a_host_kernel_given_f16_storage_says_so() {
    let h = Storage::CpuF16(halves(&[1.0, 2.0]));
    for be in [
        artgan::backend::reference::backend(),
        artgan::backend::backend(Device::Cpu).unwrap(),
    ] {
        let e = format!(
            "{:#}",
            be.scale(&h, 2.0).err().expect("f16 into an f32 kernel")
        );
        assert!(
            e.ends_with("given an f16 tensor; this kernel takes f32"),
            "{e}"
        );
    }
}

#[test]
fn f16_is_two_bytes_and_round_trips_exactly() {
    let mut rng = Rng::new(5);
    // Every finite f16 bit pattern's value, and random ones: f16 -> f32 -> f16 is the identity.
    let all: Vec<f16> = (0..=u16::MAX)
        .map(f16::from_bits)
        .filter(|h| h.is_finite())
        .collect();
    let x = Tensor::from_f16(all.clone(), &[all.len()], Device::Cpu).unwrap();
    assert_eq!(x.dtype(), DType::F16);
    assert_eq!(x.storage().bytes(), 2 * all.len());
    let wide = ops::to_dtype(&x, DType::F32).unwrap();
    assert_eq!(wide.dtype(), DType::F32);
    assert_eq!(wide.storage().bytes(), 4 * all.len());
    let back = ops::to_dtype(&wide, DType::F16)
        .unwrap()
        .to_vec_f16()
        .unwrap();
    let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back), bits(&all));
    assert_eq!(
        wide.to_vec().unwrap(),
        all.iter().map(|h| h.to_f32()).collect::<Vec<_>>()
    );
    let r = rng.uniform_vec(101, -3.0, 3.0);
    let t = Tensor::from_vec(r.clone(), &[101], Device::Cpu).unwrap();
    let h = ops::to_dtype(&t, DType::F16).unwrap();
    assert_eq!(bits(&h.to_vec_f16().unwrap()), bits(&halves(&r)));
}

#[test]
fn f32_to_f16_rounds_to_nearest_even_overflows_to_inf_and_keeps_subnormals() {
    let tiny = 2f32.powi(-24); // the smallest f16 subnormal
    let cases: &[(f32, f32)] = &[
        (1.0 + 2f32.powi(-11), 1.0), // tie: down to the even 1.0
        (1.0 + 3.0 * 2f32.powi(-11), 1.0 + 2f32.powi(-9)), // tie: up to the even neighbour
        (1.0 + 1.1 * 2f32.powi(-11), 1.0 + 2f32.powi(-10)), // above the tie
        (65504.0, 65504.0),
        (65519.99, 65504.0),
        (65520.0, f32::INFINITY), // the tie above the largest f16 goes to inf
        (-1e6, f32::NEG_INFINITY),
        (tiny, tiny),
        (2f32.powi(-25), 0.0),        // tie between 0 and the smallest: to 0
        (1.5 * 2f32.powi(-25), tiny), // above it
        (3.0 * 2f32.powi(-25), 2.0 * tiny), // tie between subnormals 1 and 2: to 2
        (6.0e-5, 1007.0 * tiny),      // a subnormal
        (-0.0, -0.0),
    ];
    let x: Vec<f32> = cases.iter().map(|c| c.0).chain([f32::NAN]).collect();
    let t = Tensor::from_vec(x.clone(), &[x.len()], Device::Cpu).unwrap();
    let got = ops::to_dtype(&t, DType::F16).unwrap().to_vec().unwrap();
    for (&(input, want), g) in cases.iter().zip(&got) {
        assert_eq!(
            g.to_bits(),
            want.to_bits(),
            "f16({input:e}) = {g:e}, want {want:e}"
        );
    }
    assert!(got.last().unwrap().is_nan());
}

/// `loss = Σ w · f32(f16(x))`: d loss / d x goes back through both casts, so it is `w` rounded
/// to f16 (the gradient takes each tensor's dtype on its way back), and a central difference
/// with a step of whole f16 ulps (x in [1, 2): ulp 2⁻¹⁰) agrees with it.
#[test]
fn to_dtype_backward_casts_the_gradient_back_and_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let n = 37;
    let x0: Vec<f32> = halves(&rng.uniform_vec(n, 1.25, 1.75))
        .iter()
        .map(|h| h.to_f32())
        .collect();
    let wv = rng.uniform_vec(n, -2.0, 2.0);
    let w = Tensor::from_vec(wv.clone(), &[n], Device::Cpu).unwrap();
    let loss = |x: &Tensor| {
        let h = ops::to_dtype(x, DType::F16).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        ops::sum(&ops::mul(&ops::to_dtype(&h, DType::F32).unwrap(), &w).unwrap()).unwrap()
    };
    let x = Tensor::parameter(x0.clone(), &[n], Device::Cpu).unwrap();
    loss(&x).backward().unwrap();
    let grad = x.grad_to_vec().unwrap().unwrap();
    let rounded: Vec<f32> = halves(&wv).iter().map(|h| h.to_f32()).collect();
    assert_eq!(grad, rounded);
    let step = 2f32.powi(-10);
    for i in [0, 5, n - 1] {
        let at = |d: f32| {
            let mut v = x0.clone();
            v[i] += d;
            loss(&Tensor::from_vec(v, &[n], Device::Cpu).unwrap())
                .item()
                .unwrap() as f64
        };
        let fd = (at(step) - at(-step)) / (2.0 * step as f64);
        assert!(
            (fd - wv[i] as f64).abs() < 1e-3 * (1.0 + wv[i].abs() as f64),
            "x[{i}]: fd {fd}, w {}",
            wv[i]
        );
    }
    // An f16 leaf gets an f16 gradient.
    let xh = Tensor::from_f16(halves(&x0), &[n], Device::Cpu)
        .unwrap()
        .requiring_grad();
    ops::sum(&ops::mul(&ops::to_dtype(&xh, DType::F32).unwrap(), &w).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(xh.grad().unwrap().as_ref().unwrap().dtype(), DType::F16);
    assert_eq!(xh.grad_to_vec().unwrap().unwrap(), rounded);
}

/// The CUDA casts (`f32_to_f16`, `f16_to_f32`) and f16 upload/download against the host: bit
/// for bit, several sizes (odd ones leave half a 4-byte unit), values from subnormal to beyond
/// f16's range, never zero.
#[test]
fn cuda_casts_match_the_host_bit_for_bit() {
    if std::env::var_os("ARTGAN_POISON").is_none() {
        std::env::set_var("ARTGAN_POISON", "1");
    }
    let Some(gpu) = common::gpu_device() else {
        return;
    };
    let mut rng = Rng::new(29);
    let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
    for (k, n) in [1usize, 2, 3, 7, 64, 1001, 4097, 65_537]
        .into_iter()
        .enumerate()
    {
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let mag = 2f32.powi((i % 46) as i32 - 28) * (1.0 + rng.uniform());
                if (i + k) % 2 == 0 {
                    mag
                } else {
                    -mag
                }
            })
            .collect();
        let host = Tensor::from_vec(v.clone(), &[n], Device::Cpu).unwrap();
        let dev = host.to_device(gpu).unwrap();
        let h_dev = ops::to_dtype(&dev, DType::F16).unwrap();
        assert_eq!(h_dev.dtype(), DType::F16);
        assert_eq!(h_dev.storage().bytes(), 2 * n);
        let want = halves(&v);
        assert_eq!(
            bits(&h_dev.to_vec_f16().unwrap()),
            bits(&want),
            "f32 -> f16, n = {n}"
        );
        // Upload/download of f16, and the exact widening, on the device.
        let up = Tensor::from_f16(want.clone(), &[n], gpu).unwrap();
        assert_eq!(
            bits(&up.to_vec_f16().unwrap()),
            bits(&want),
            "f16 round trip, n = {n}"
        );
        let wide = ops::to_dtype(&up, DType::F32).unwrap();
        assert_eq!(wide.dtype(), DType::F32);
        let want_wide: Vec<u32> = want.iter().map(|h| h.to_f32().to_bits()).collect();
        let got_wide: Vec<u32> = wide.to_vec().unwrap().iter().map(|x| x.to_bits()).collect();
        assert_eq!(got_wide, want_wide, "f16 -> f32, n = {n}");
        // A device f16 copy (the gradient path's `copy`) and moving f16 back to the host.
        let copied = up.backend().copy(&up.storage()).unwrap();
        assert_eq!(
            bits(&up.backend().download_f16(&copied).unwrap()),
            bits(&want)
        );
        assert_eq!(
            bits(&up.to_device(Device::Cpu).unwrap().to_vec_f16().unwrap()),
            bits(&want)
        );
    }
    // An f32 kernel given a device f16 tensor is refused at the op, and below it.
    let up = Tensor::from_f16(halves(&[1.0, 2.0, 3.0]), &[3], gpu).unwrap();
    assert_eq!(
        err(ops::scale(&up, 2.0)),
        "scale: input is f16; this op takes f32"
    );
    let e = format!(
        "{:#}",
        up.backend().scale(&up.storage(), 2.0).err().unwrap()
    );
    assert_eq!(e, "a CUDA f32 kernel was given an f16 tensor");
}

/// A tensor keeps its dtype: `backward()` seeds an f16 output with f16 ones (an f32 seed is
/// refused by name), and `set_values` (checkpoint loading) rounds into an f16 tensor instead of
/// turning it into f32.
#[test]
fn backward_seeds_and_set_values_keep_the_dtype() {
    let x = Tensor::parameter(vec![0.1, 0.2, 0.3], &[3], Device::Cpu).unwrap();
    let h = ops::to_dtype(&x, DType::F16).unwrap();
    h.backward().unwrap();
    assert_eq!(x.grad_to_vec().unwrap().unwrap(), vec![1.0; 3]);
    let seed = Storage::Cpu(vec![1.0; 3]);
    let e = format!("{:#}", h.backward_with(seed).unwrap_err());
    assert_eq!(
        e,
        "backward seed is f32, the tensor f16 (a gradient has its tensor's dtype)"
    );

    let t = Tensor::from_f16(halves(&[0.0; 2]), &[2], Device::Cpu).unwrap();
    t.set_values(&[1.0 + 2f32.powi(-11), 65520.0]).unwrap();
    assert_eq!(t.dtype(), DType::F16);
    assert_eq!(t.to_vec().unwrap(), vec![1.0, f32::INFINITY]);
}

/// f16 host storage of `v` rounded.
fn f16_storage(v: &[f32]) -> Storage {
    Storage::CpuF16(halves(v))
}

/// The bits of storage of either dtype, as f32 values (an f16's widened, exactly).
fn bits(s: &Storage) -> Vec<u32> {
    match s {
        Storage::Cpu(v) => v.iter().map(|x| x.to_bits()).collect(),
        Storage::CpuF16(v) => v.iter().map(|x| x.to_f32().to_bits()).collect(),
        other => panic!("host storage expected, got {}", other.device()),
    }
}

/// `s` (f32) rounded to f16, as the f16 path stores it.
fn rounded(s: &Storage) -> Vec<u32> {
    match s {
        Storage::Cpu(v) => v
            .iter()
            .map(|&x| f16::from_f32(x).to_f32().to_bits())
            .collect(),
        other => panic!("f32 host storage expected, got {}", other.dtype()),
    }
}

/// The CPU amp reference is f16 because its tensors are: both CPU backends (the reference and
/// the fast one) take f16 activations into batch norm (fused or not), the activations, their
/// backwards and gradient accumulation, compute exactly what they compute on the same values in
/// f32, and round the result once on store to f16 (statistics and parameter gradients stay
/// f32). Odd sizes (an f16 buffer of odd length), every activation.
#[test]
fn f16_activation_ops_on_both_cpu_backends_compute_in_f32_and_round_on_store() {
    let backends: [Rc<dyn Backend>; 2] = [
        artgan::backend::reference::backend(),
        artgan::backend::backend(Device::Cpu).unwrap(),
    ];
    let mut rng = Rng::new(41);
    for (i, be) in backends.iter().enumerate() {
        for d in [
            ChannelDims { n: 3, c: 5, hw: 7 },
            ChannelDims { n: 4, c: 2, hw: 9 },
        ] {
            let as_f16 = |v: Vec<f32>| -> Vec<f32> {
                v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
            };
            let x = as_f16(rng.uniform_vec(d.len(), -2.0, 3.0));
            let dy = as_f16(rng.uniform_vec(d.len(), -1.0, 1.0));
            let gamma = Storage::Cpu(rng.uniform_vec(d.c, 0.5, 1.5));
            let beta = Storage::Cpu(rng.uniform_vec(d.c, -0.5, 0.5));
            let t = format!("backend {i} {d:?}");
            for act in [
                BatchNormAct::None,
                BatchNormAct::Relu,
                BatchNormAct::LeakyRelu(0.2),
            ] {
                let stats = || (Storage::Cpu(vec![0.1; d.c]), Storage::Cpu(vec![0.9; d.c]));
                let (mut rm16, mut rv16) = stats();
                let (mut rm32, mut rv32) = stats();
                let s16 = be
                    .batch_norm_act_train(
                        &f16_storage(&x),
                        &gamma,
                        &beta,
                        &mut rm16,
                        &mut rv16,
                        d,
                        0.1,
                        1e-5,
                        act,
                    )
                    .unwrap();
                let s32 = be
                    .batch_norm_act_train(
                        &Storage::Cpu(x.clone()),
                        &gamma,
                        &beta,
                        &mut rm32,
                        &mut rv32,
                        d,
                        0.1,
                        1e-5,
                        act,
                    )
                    .unwrap();
                assert_eq!(s16.y.dtype(), DType::F16, "{t} {act:?}");
                assert_eq!(bits(&s16.y), rounded(&s32.y), "bn y {t} {act:?}");
                for (a, b) in [(&s16.mean, &s32.mean), (&s16.invstd, &s32.invstd)] {
                    assert_eq!(bits(a), bits(b), "bn statistics {t} {act:?}");
                }
                assert_eq!(bits(&rv16), bits(&rv32), "running_var {t} {act:?}");
                let back = |x: &Storage, dy: &Storage, s: &artgan::backend::BatchNormSaved| {
                    be.batch_norm_act_backward(
                        x, dy, &gamma, &beta, &s.mean, &s.invstd, d, act, true,
                    )
                    .unwrap()
                };
                let (dx16, dg16, db16) = back(&f16_storage(&x), &f16_storage(&dy), &s16);
                let (dx32, dg32, db32) =
                    back(&Storage::Cpu(x.clone()), &Storage::Cpu(dy.clone()), &s32);
                assert_eq!(dx16.dtype(), DType::F16);
                assert_eq!(bits(&dx16), rounded(&dx32), "bn dx {t} {act:?}");
                assert_eq!(bits(&dg16), bits(&dg32), "bn dgamma {t} {act:?}");
                assert_eq!(bits(&db16), bits(&db32), "bn dbeta {t} {act:?}");
            }
            for act in [
                Activation::Relu,
                Activation::LeakyRelu(0.2),
                Activation::Tanh,
                Activation::Sigmoid,
            ] {
                let y16 = be.activation(act, &f16_storage(&x)).unwrap();
                let y32 = be.activation(act, &Storage::Cpu(x.clone())).unwrap();
                assert_eq!(bits(&y16), rounded(&y32), "{act:?} {t}");
                // The backward reads the f16 output, as it is stored.
                let y = Storage::Cpu(bits(&y16).into_iter().map(f32::from_bits).collect());
                let (xs, dys) = (Storage::Cpu(x.clone()), Storage::Cpu(dy.clone()));
                let dx32 = be.activation_backward(act, &xs, &y, &dys).unwrap();
                let dx16 = be
                    .activation_backward(act, &f16_storage(&x), &y16, &f16_storage(&dy))
                    .unwrap();
                assert_eq!(bits(&dx16), rounded(&dx32), "{act:?} backward {t}");
            }
            let mut acc16 = f16_storage(&x);
            be.add_assign(&mut acc16, &f16_storage(&dy)).unwrap();
            let mut acc32 = Storage::Cpu(x.clone());
            be.add_assign(&mut acc32, &Storage::Cpu(dy.clone()))
                .unwrap();
            assert_eq!(bits(&acc16), rounded(&acc32), "add_assign {t}");
            let e = be
                .add_assign(&mut acc16, &Storage::Cpu(dy.clone()))
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "add_assign: given f16 and f32 tensors; they must share one dtype"
            );
        }
    }
}

/// Layer to layer under amp the activations are f16 tensors: a generator's hidden layers
/// (ConvT, batch norm + ReLU) hand f16 to the next conv, their gradients are f16 too, and what
/// leaves the models is f32 (G's images, D's logits). The same layers under fp32 are f32.
#[test]
fn amp_models_pass_f16_activations_between_layers_and_give_f32_images_and_logits() {
    use artgan::nn::layers::forward_layers;
    use artgan::nn::{
        Ctx, Discriminator, Generator, GeneratorBody, Mode, ModelConfig, Module, Preset,
    };
    let model = ModelConfig {
        preset: Preset::Dcgan,
        image_size: 32,
        nz: 8,
        ngf: 4,
        ndf: 4,
    };
    let mut rng = Rng::new(3);
    let g = Generator::new(&model, &mut rng, Device::Cpu).unwrap();
    let d = Discriminator::new(&model, &mut rng, Device::Cpu).unwrap();
    let z = Tensor::from_vec(rng.normal_vec(4 * 8, 0.0, 1.0), &[4, 8, 1, 1], Device::Cpu).unwrap();
    for (numerics, hidden) in [
        (Numerics::new(Precision::Amp, ConvImpl::Cudnn), DType::F16),
        (Numerics::FP32, DType::F32),
    ] {
        let mut ctx = Ctx::new(Mode::Train, &mut rng, numerics);
        let GeneratorBody::Stages(stages) = &g.body else {
            panic!("dcgan has stages")
        };
        let layers = &stages[0].1.layers;
        // ConvT, BN + ReLU (fused), ConvT, BN + ReLU: the second block's output.
        let h = forward_layers(&layers[..6], &z, &mut ctx).unwrap();
        assert_eq!(h.dtype(), hidden, "{:?}", numerics.precision);
        let images = g.forward(&z, &mut ctx).unwrap();
        assert_eq!(images.dtype(), DType::F32);
        let logits = d.forward(&images, &mut ctx).unwrap();
        assert_eq!((logits.dtype(), logits.shape()), (DType::F32, &[4][..]));
        ops::sum(&images).unwrap().backward().unwrap();
        for (name, p) in g.parameters() {
            let grad = p.grad_to_vec().unwrap();
            let grad = grad.unwrap_or_else(|| panic!("{name} has a gradient"));
            assert!(grad.iter().all(|v| v.is_finite()), "{name}");
            assert_eq!(p.dtype(), DType::F32, "{name}: weights stay f32");
        }
    }
}
