//! The fast CPU backend against the plain reference backend (`artgan::backend::reference`), like
//! any other backend: random inputs, odd sizes, several chunks. Also: results do not depend on
//! the thread count, and autograd skips the gradients nobody needs.
//!
//! Conv error bound: a float sum of `m` products differs from the exact one by at most
//! `γ_m·Σ|aᵢbᵢ|` with `γ_m ≈ m·ε₃₂` (Higham, Accuracy and Stability, §3.1); the reference is
//! accumulated in f64, so it is exact to well within that. `Σ|aᵢbᵢ|` per element is the same
//! op on the absolute values, computed by the reference.

use artgan::amp::Numerics;
use artgan::backend::cpu::conv_calls;
use artgan::backend::{
    backend, reference, Activation, AdamItem, AdamStep, Backend, BatchNormAct, ChannelDims,
    ConvGeom, Device, Storage,
};
use artgan::nn::{ModelConfig, Module, Preset};
use artgan::ops;
use artgan::rng::Rng;
use artgan::tensor::{FrozenParams, Tensor};
use artgan::train::{TrainConfig, Trainer};
use std::rc::Rc;

fn fast() -> Rc<dyn Backend> {
    backend(Device::Cpu).expect("CPU backend")
}

fn host(s: &Storage) -> Vec<f32> {
    match s {
        Storage::Cpu(v) => v.clone(),
        _ => panic!("not CPU storage"),
    }
}

fn rand(rng: &mut Rng, len: usize) -> Vec<f32> {
    rng.uniform_vec(len, -1.0, 1.0)
}

fn abs(v: &[f32]) -> Storage {
    Storage::Cpu(v.iter().map(|x| x.abs()).collect())
}

/// `|got − want| ≤ (m + 2)·ε₃₂·bound` per element (see the module comment).
fn within_sum_bound(what: &str, got: &[f32], want: &[f32], bound: &[f32], m: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let tol = (m + 2) as f32 * f32::EPSILON * b + f32::MIN_POSITIVE;
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: fast {g}, reference {w}, tolerance {tol}"
        );
    }
}

fn conv_case(geom: &ConvGeom, seed: u64) {
    let (f, r) = (fast(), reference::backend());
    let mut rng = Rng::new(seed);
    let x = rand(&mut rng, geom.input_len());
    let w = rand(&mut rng, geom.weight_len());
    let dy = rand(&mut rng, geom.output_len());
    let (xs, ws, dys) = (
        Storage::Cpu(x.clone()),
        Storage::Cpu(w.clone()),
        Storage::Cpu(dy.clone()),
    );
    let k = geom.c_in * geom.kh * geom.kw;
    let tag = format!("{geom:?}");

    let got = host(&f.conv2d_forward(&xs, &ws, geom).unwrap());
    let want = host(&r.conv2d_forward(&xs, &ws, geom).unwrap());
    let bound = host(&r.conv2d_forward(&abs(&x), &abs(&w), geom).unwrap());
    within_sum_bound(&format!("forward {tag}"), &got, &want, &bound, k);

    let got = host(&f.conv2d_backward_data(&dys, &ws, geom).unwrap());
    let want = host(&r.conv2d_backward_data(&dys, &ws, geom).unwrap());
    let bound = host(&r.conv2d_backward_data(&abs(&dy), &abs(&w), geom).unwrap());
    within_sum_bound(
        &format!("backward-data {tag}"),
        &got,
        &want,
        &bound,
        geom.c_out * geom.kh * geom.kw,
    );

    let got = host(&f.conv2d_backward_filter(&xs, &dys, geom).unwrap());
    let want = host(&r.conv2d_backward_filter(&xs, &dys, geom).unwrap());
    let bound = host(&r.conv2d_backward_filter(&abs(&x), &abs(&dy), geom).unwrap());
    within_sum_bound(
        &format!("backward-filter {tag}"),
        &got,
        &want,
        &bound,
        geom.n * geom.oh * geom.ow,
    );
}

#[test]
fn conv_matches_reference() {
    let cases = [
        // (n, c_in, h, w, c_out, k, stride, pad)
        (3, 3, 9, 7, 5, 3, 1, 1),
        (5, 4, 8, 8, 6, 4, 2, 1),
        (2, 5, 6, 6, 3, 4, 1, 0),
        // 64 images at once: dcgan's D layers fit one chunk.
        (64, 8, 8, 8, 16, 4, 2, 1),
        // One image's columns fill a chunk (1024 rows x 992 columns): three chunks (an odd
        // height, so backward-data takes the column path, not sub-pixel).
        (3, 64, 63, 64, 4, 4, 2, 1),
        // Stride 3 with padding 2: taps whose first valid output is not the first.
        (2, 3, 11, 10, 4, 5, 3, 2),
        // Stride 2 without padding on odd sides: the split planes' last phase rows and
        // columns hold no input pixel.
        (2, 3, 9, 7, 4, 3, 2, 0),
        // Stride 2, pad 1, 3x3 on odd sides: the taps reach the padding after the last column
        // and row (a zero the split writes alone, not from the input row).
        (2, 5, 7, 9, 3, 3, 2, 1),
        // At least 64 output channels and 256 taps: backward-filter gathers colᵀ into the
        // packed GEMM (strided, padded stride 1, and unpadded stride 1 read in place).
        (3, 16, 9, 7, 64, 4, 2, 1),
        (2, 32, 7, 5, 65, 3, 1, 1),
        (2, 30, 6, 7, 64, 3, 1, 0),
        // Stride 2, 4x4, pad 1 on even sides and at least 8 input channels: backward-data
        // runs as four sub-pixel GEMMs (odd counts and a non-square plane).
        (3, 9, 6, 10, 5, 4, 2, 1),
        (1, 8, 2, 4, 1, 4, 2, 1),
        // The same at a width the split unrolls (16 wide, its padded dy 8 wide).
        (2, 8, 8, 16, 3, 4, 2, 1),
        // Kernels that cover the whole input (D's last layer): one GEMM, no im2col.
        (5, 7, 4, 4, 3, 4, 1, 0),
        (3, 5, 3, 3, 1, 3, 2, 0),
    ];
    for (i, &(n, c, h, w, co, k, s, p)) in cases.iter().enumerate() {
        conv_case(&ConvGeom::conv(n, c, h, w, co, k, s, p).unwrap(), i as u64);
    }
    // Transposed convs as G uses them: 1x1 latent to 4x4, and stride-2 upsampling.
    let transposed = [
        (7, 16, 1, 8, 4, 1, 0),
        (3, 8, 5, 3, 4, 2, 1),
        // Sub-pixel (the conv it is the backward-data of has 11 input channels).
        (3, 5, 3, 11, 4, 2, 1),
    ];
    for (i, &(n, c_in, h, c_out, k, s, p)) in transposed.iter().enumerate() {
        let g = ConvGeom::transposed(n, c_in, h, h, c_out, k, s, p, 0).unwrap();
        conv_case(&g, 100 + i as u64);
    }
}

#[test]
fn conv_of_an_empty_batch_is_empty_and_zero_gradients() {
    // A strided conv, and one whose kernel covers the input (the dense path).
    for g in [
        ConvGeom::conv(0, 3, 8, 8, 4, 4, 2, 1).unwrap(),
        ConvGeom::conv(0, 3, 4, 4, 2, 4, 1, 0).unwrap(),
    ] {
        let f = fast();
        let empty = Storage::Cpu(Vec::new());
        let w = Storage::Cpu(vec![1.0; g.weight_len()]);
        assert!(host(&f.conv2d_forward(&empty, &w, &g).unwrap()).is_empty());
        assert!(host(&f.conv2d_backward_data(&empty, &w, &g).unwrap()).is_empty());
        let dw = host(&f.conv2d_backward_filter(&empty, &empty, &g).unwrap());
        assert_eq!(dw, vec![0.0; g.weight_len()]);
    }
}

#[test]
fn elementwise_adam_and_ema_equal_the_reference_bit_for_bit() {
    let (f, r) = (fast(), reference::backend());
    let mut rng = Rng::new(7);
    // Longer than one parallel chunk (16384), with a ragged end.
    let n = 40_000 + 13;
    let a = Storage::Cpu(rand(&mut rng, n));
    let b = Storage::Cpu(rand(&mut rng, n));
    assert_eq!(host(&f.copy(&a).unwrap()), host(&a));
    assert_eq!(host(&f.add(&a, &b).unwrap()), host(&r.add(&a, &b).unwrap()));
    assert_eq!(host(&f.mul(&a, &b).unwrap()), host(&r.mul(&a, &b).unwrap()));
    assert_eq!(
        host(&f.scale(&a, 0.3).unwrap()),
        host(&r.scale(&a, 0.3).unwrap())
    );
    for act in [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Tanh,
        Activation::Sigmoid,
    ] {
        let y = f.activation(act, &a).unwrap();
        assert_eq!(host(&y), host(&r.activation(act, &a).unwrap()), "{act:?}");
        assert_eq!(
            host(&f.activation_backward(act, &a, &y, &b).unwrap()),
            host(&r.activation_backward(act, &a, &y, &b).unwrap()),
            "{act:?} backward"
        );
    }

    let mut acc_f = Storage::Cpu(host(&a));
    let mut acc_r = Storage::Cpu(host(&a));
    f.scale_add_assign(&mut acc_f, 0.99, &b, 0.01).unwrap();
    r.scale_add_assign(&mut acc_r, 0.99, &b, 0.01).unwrap();
    assert_eq!(host(&acc_f), host(&acc_r), "EMA blend");

    let step = AdamStep {
        beta1: 0.5,
        beta2: 0.999,
        eps: 1e-8,
        bias_correction1: 1.0 - 0.5f32.powi(3),
        bias_correction2: 1.0 - 0.999f32.powi(3),
    };
    let run = |be: &Rc<dyn Backend>| {
        let mut rng = Rng::new(9);
        let mut p = [
            Storage::Cpu(rand(&mut rng, n)),
            Storage::Cpu(rand(&mut rng, 5)),
        ];
        let g = [
            Storage::Cpu(rand(&mut rng, n)),
            Storage::Cpu(rand(&mut rng, 5)),
        ];
        let mut m = [
            Storage::Cpu(rand(&mut rng, n)),
            Storage::Cpu(rand(&mut rng, 5)),
        ];
        let mut v: Vec<Storage> = (0..2)
            .map(|i| Storage::Cpu(rng.uniform_vec([n, 5][i], 0.0, 1.0)))
            .collect();
        let [p0, p1] = &mut p;
        let [m0, m1] = &mut m;
        let [v0, v1] = &mut v[..] else { unreachable!() };
        let mut items = vec![
            AdamItem {
                param: p0,
                grad: &g[0],
                m: m0,
                v: v0,
                lr: 2e-4,
            },
            AdamItem {
                param: p1,
                grad: &g[1],
                m: m1,
                v: v1,
                lr: 5e-5,
            },
        ];
        be.adam_update(&mut items, step).unwrap();
        [&p[0], &p[1], &m[0], &m[1], &v[0], &v[1]].map(host)
    };
    assert_eq!(run(&f), run(&r), "adam");
}

/// Training-mode batch norm, forward and backward: the fast path sums in f64 like the reference
/// (in another order) and applies the input gradient in f32, so each output is within a few
/// f32 roundings of the reference's, relative to the size of the terms that make it up.
#[test]
fn batch_norm_matches_reference() {
    let (f, r) = (fast(), reference::backend());
    for (case, &(n, c, h, w)) in [
        (4, 3, 2, 2),
        (2, 5, 3, 5),
        (5, 1, 1, 1),
        (64, 16, 4, 4),
        (3, 70, 11, 9),
    ]
    .iter()
    .enumerate()
    {
        let d = ChannelDims { n, c, hw: h * w };
        let mut rng = Rng::new(40 + case as u64);
        // Off-centre values, so the variance is a difference of large terms.
        let x = rng.normal_vec(d.len(), 3.0, 2.0);
        let dy = rand(&mut rng, d.len());
        let gamma = rng.normal_vec(c, 1.0, 0.3);
        let beta = rand(&mut rng, c);
        let (rm0, rv0) = (rand(&mut rng, c), rng.uniform_vec(c, 0.5, 2.0));
        for act in [
            BatchNormAct::None,
            BatchNormAct::Relu,
            BatchNormAct::LeakyRelu(0.2),
        ] {
            let tag = format!("{n}x{c}x{h}x{w} {act:?}");
            // The backward runs from the statistics given (the reference's for both), so both
            // recompute the same pre-activations and take the same activation mask.
            let run = |be: &Rc<dyn Backend>, stats: Option<&(Vec<f32>, Vec<f32>)>| {
                let (mut rm, mut rv) = (Storage::Cpu(rm0.clone()), Storage::Cpu(rv0.clone()));
                let (xs, gs, bs) = (
                    Storage::Cpu(x.clone()),
                    Storage::Cpu(gamma.clone()),
                    Storage::Cpu(beta.clone()),
                );
                let s = be
                    .batch_norm_act_train(&xs, &gs, &bs, &mut rm, &mut rv, d, 0.1, 1e-5, act)
                    .unwrap();
                let (mean, invstd) = (host(&s.mean), host(&s.invstd));
                let (sm, si) = match stats {
                    Some((m, i)) => (Storage::Cpu(m.clone()), Storage::Cpu(i.clone())),
                    None => (s.mean, s.invstd),
                };
                let dys = Storage::Cpu(dy.clone());
                let backward = |batch_stats| {
                    be.batch_norm_act_backward(&xs, &dys, &gs, &bs, &sm, &si, d, act, batch_stats)
                        .unwrap()
                };
                let (dx, dg, db) = backward(true);
                let (dx_eval, _, _) = backward(false);
                [
                    host(&s.y),
                    mean,
                    invstd,
                    host(&rm),
                    host(&rv),
                    host(&dx),
                    host(&dg),
                    host(&db),
                    host(&dx_eval),
                ]
            };
            let want = run(&r, None);
            let got = run(&f, Some(&(want[1].clone(), want[2].clone())));
            check_batch_norm_case(&tag, d, &x, &dy, &gamma, &beta, &got, &want);
        }
    }
}

/// Fast vs reference outputs of one fused batch-norm case (see `batch_norm_matches_reference`):
/// y, mean, invstd, running_mean, running_var, dx, dgamma, dbeta, and dx of eval mode.
#[allow(clippy::too_many_arguments)]
fn check_batch_norm_case(
    tag: &str,
    d: ChannelDims,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    got: &[Vec<f32>; 9],
    want: &[Vec<f32>; 9],
) {
    let eps32 = f32::EPSILON as f64;
    let close = |what: &str, got: &[f32], want: &[f32], bound: &[f64]| {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
            let tol = 8.0 * eps32 * b + f64::from(f32::MIN_POSITIVE);
            assert!(
                (f64::from(g) - f64::from(w)).abs() <= tol,
                "{what}: element {i}: fast {g}, reference {w}, tolerance {tol}"
            );
        }
    };
    let ChannelDims { n, c, hw } = d;
    {
        let [_, mean, invstd, rm, rv, dx, dg, db, dx_eval] = want;
        let chan = |i: usize| (i / d.hw) % c;
        let mag = |v: &[f32]| v.iter().map(|&a| f64::from(a).abs()).collect::<Vec<_>>();
        let names = ["y", "mean", "invstd", "running_mean", "running_var"];
        // y = (x − mean)·invstd·gamma + beta: bound by the size of each term.
        let y_bound: Vec<f64> = (0..d.len())
            .map(|i| {
                let k = chan(i);
                let s = f64::from(invstd[k] * gamma[k]).abs();
                (f64::from(x[i]).abs() + f64::from(mean[k]).abs()) * s + f64::from(beta[k]).abs()
            })
            .collect();
        let max_x = x.iter().fold(0f32, |a, &v| a.max(v.abs())) as f64;
        let bounds = [
            y_bound,
            vec![max_x; c],
            mag(invstd),
            rm.iter().map(|&v| f64::from(v).abs() + max_x).collect(),
            rv.iter()
                .map(|&v| f64::from(v).abs() + max_x * max_x)
                .collect(),
        ];
        for (j, name) in names.iter().enumerate() {
            close(&format!("{name} {tag}"), &got[j], &want[j], &bounds[j]);
        }
        // dx = a·dy + b + k·(x − mean): bound by each term.
        let m = (n * hw) as f64;
        let dx_bound: Vec<f64> = (0..d.len())
            .map(|i| {
                let k = chan(i);
                let a = f64::from(gamma[k] * invstd[k]).abs();
                let xhat = (f64::from(x[i]) - f64::from(mean[k])) * f64::from(invstd[k]);
                a * (f64::from(dy[i]).abs()
                    + f64::from(db[k]).abs() / m
                    + xhat.abs() * f64::from(dg[k]).abs() / m)
            })
            .collect();
        close(&format!("dx {tag}"), &got[5], dx, &dx_bound);
        // Channel sums of |dy·xhat| and |dy| bound dgamma and dbeta.
        let sum_bound = |xhat: bool| -> Vec<f64> {
            (0..c)
                .map(|k| {
                    (0..d.len())
                        .filter(|&i| chan(i) == k)
                        .map(|i| {
                            let g = f64::from(dy[i]).abs();
                            if xhat {
                                g * ((f64::from(x[i]) - f64::from(mean[k])) * f64::from(invstd[k]))
                                    .abs()
                            } else {
                                g
                            }
                        })
                        .sum()
                })
                .collect()
        };
        close(&format!("dgamma {tag}"), &got[6], dg, &sum_bound(true));
        close(&format!("dbeta {tag}"), &got[7], db, &sum_bound(false));
        // Eval: dx = gamma·invstd·dz, one rounding of each factor.
        let eval_bound: Vec<f64> = (0..d.len())
            .map(|i| f64::from(gamma[chan(i)] * invstd[chan(i)] * dy[i]).abs())
            .collect();
        close(&format!("dx eval {tag}"), &got[8], dx_eval, &eval_bound);
    }
}

/// Two training steps of the default dcgan at a small size, run on a rayon pool of `threads`
/// threads: the losses and every parameter after them.
/// A CPU trainer for a small dcgan (32 px, nz 16, widths 8) and one batch of `batch` random
/// images drawn with `seed`.
fn small_dcgan_trainer(batch: usize, seed: u64) -> (Trainer, Tensor) {
    let model = ModelConfig {
        preset: Preset::Dcgan,
        image_size: 32,
        nz: 16,
        ngf: 8,
        ndf: 8,
    };
    let mut cfg = TrainConfig::for_model(model);
    cfg.batch_size = batch;
    let trainer = Trainer::new(cfg, Device::Cpu).unwrap();
    let mut rng = Rng::new(seed);
    let shape = [batch, 3, 32, 32];
    let real = Tensor::from_vec(
        rng.uniform_vec(batch * 3 * 32 * 32, -1.0, 1.0),
        &shape,
        Device::Cpu,
    )
    .unwrap();
    (trainer, real)
}

fn train_on(threads: usize) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let (mut trainer, real) = small_dcgan_trainer(12, 3);
        let mut out = Vec::new();
        for _ in 0..2 {
            let s = trainer.step(&real).unwrap();
            out.push(vec![s.loss_d, s.loss_g.unwrap(), s.d_x, s.d_g_z]);
        }
        for (_, p) in trainer
            .g
            .parameters()
            .into_iter()
            .chain(trainer.d.parameters())
        {
            out.push(p.to_vec().unwrap());
        }
        out
    })
}

#[test]
fn training_is_bit_identical_whatever_the_thread_count() {
    let one = train_on(1);
    assert_eq!(one, train_on(2), "1 vs 2 threads");
    assert_eq!(one, train_on(3), "1 vs 3 threads");
}

#[test]
fn conv_backward_skips_input_gradients_nobody_needs() {
    let mut rng = Rng::new(11);
    let image =
        Tensor::from_vec(rand(&mut rng, 2 * 3 * 8 * 8), &[2, 3, 8, 8], Device::Cpu).unwrap();
    let w = Tensor::parameter(rand(&mut rng, 4 * 3 * 4 * 4), &[4, 3, 4, 4], Device::Cpu).unwrap();
    let before = conv_calls();
    ops::sum(&ops::conv2d(&image, &w, None, 2, 1, Numerics::FP32).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let after = conv_calls();
    assert_eq!(
        after.backward_data - before.backward_data,
        0,
        "no backward-data for an image"
    );
    assert_eq!(after.backward_filter - before.backward_filter, 1);
    assert!(w.grad_to_vec().unwrap().is_some());

    // A leaf that requires gradients gets its backward-data.
    let x = image.requiring_grad();
    let before = conv_calls();
    ops::sum(&ops::conv2d(&x, &w, None, 2, 1, Numerics::FP32).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let after = conv_calls();
    assert_eq!(after.backward_data - before.backward_data, 1);
    assert!(x.grad_to_vec().unwrap().is_some());

    // Frozen weight: the input gradient only, no backward-filter, no weight gradient.
    w.zero_grad();
    x.zero_grad();
    {
        let _frozen = FrozenParams::new([w.clone()]).unwrap();
        assert!(!w.requires_grad());
        let before = conv_calls();
        ops::sum(&ops::conv2d(&x, &w, None, 2, 1, Numerics::FP32).unwrap())
            .unwrap()
            .backward()
            .unwrap();
        let after = conv_calls();
        assert_eq!(after.backward_filter - before.backward_filter, 0);
        assert_eq!(after.backward_data - before.backward_data, 1);
    }
    assert!(
        w.requires_grad(),
        "the flag comes back when the guard drops"
    );
    assert!(w.grad_to_vec().unwrap().is_none());
    assert!(x.grad_to_vec().unwrap().is_some());
    // Only leaves can be frozen.
    let y = ops::scale(&x, 2.0).unwrap();
    assert!(FrozenParams::new([y]).is_err());

    // A latent into a transposed conv: its gradient (a conv forward) is not computed.
    let z = Tensor::from_vec(rand(&mut rng, 2 * 5), &[2, 5, 1, 1], Device::Cpu).unwrap();
    let wt = Tensor::parameter(rand(&mut rng, 5 * 3 * 4 * 4), &[5, 3, 4, 4], Device::Cpu).unwrap();
    let y = ops::conv_transpose2d(&z, &wt, None, 1, 0, 0, Numerics::FP32).unwrap();
    let before = conv_calls();
    ops::sum(&y).unwrap().backward().unwrap();
    let after = conv_calls();
    assert_eq!(
        after.forward - before.forward,
        0,
        "no input gradient for a latent"
    );
    assert_eq!(after.backward_filter - before.backward_filter, 1);
}

#[test]
fn a_training_step_runs_only_the_conv_kernels_it_needs() {
    let (mut trainer, real) = small_dcgan_trainer(4, 5);
    let before = conv_calls();
    trainer.step(&real).unwrap();
    let after = conv_calls();
    // dcgan 32 px: G = 4 transposed convs (forward = backward-data kernel), D = 4 convs.
    // Forward kernels: D on real, on the detached fake and on the fake again (3 x 4), plus G's
    // input gradients in the G step (3: none for the latent) = 15.
    // Backward-data: G's forward (4), D's input gradients in the D step (3 per pass, none for
    // the images: 6) and in the G step (4: the fake needs its gradient) = 14.
    // Backward-filter: D in the D step (2 x 4), G in the G step (4), none for the frozen D in
    // the G step = 12.
    let d = |a: u64, b: u64| a - b;
    assert_eq!(
        (
            d(after.forward, before.forward),
            d(after.backward_data, before.backward_data),
            d(after.backward_filter, before.backward_filter)
        ),
        (15, 14, 12)
    );
}
