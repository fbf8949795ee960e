//! Element types: every op checks its inputs' dtypes and names them when they do not fit, f16 is
//! two-byte storage, and `to_dtype` rounds like `half::f16::from_f32` (ties to even) on the host
//! and on the GPU, with a backward that casts the gradient back.
//!
//! The GPU test skips without a device; `ARTGAN_REQUIRE_GPU=1` (e.g. under `scripts/cuda-emu`)
//! makes a missing one fail it.

use artgan::amp::Numerics;
use artgan::backend::{DType, Device, Storage};
use artgan::ops;
use artgan::rng::Rng;
use artgan::tensor::Tensor;
use half::f16;

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
    assert_eq!(err(ops::relu(&x)), "relu: input is f16; this op takes f32");
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
    let a = Tensor::from_vec(vec![1.0; 16], &[1, 1, 4, 4], Device::Cpu).unwrap();
    assert_eq!(
        err(ops::mul(&a, &x)),
        "mul: a is f32, b is f16; this op takes f32"
    );
    // Both f16 is no better: the op takes f32 today.
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
    assert_eq!(err(ops::tanh(&up)), "tanh: input is f16; this op takes f32");
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
