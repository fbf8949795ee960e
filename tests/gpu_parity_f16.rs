//! The CUDA kernels amp's f16 activations pass through (batch norm, the activations, add and
//! add_assign) against the plain reference backend: f16 in and out, f32 inside. The oracle is
//! the CPU f32 path applied to the widened f16 inputs, its outputs rounded to f16: what the
//! CPU amp reference computes. Random inputs (never zeros, both signs) of several shapes,
//! odd element counts included (an f16 buffer of odd length ends in a padding half).
//!
//! Without a usable GPU each test prints `skipped: <reason>` and passes (`ARTGAN_REQUIRE_GPU=1`
//! fails it instead). Outputs are poisoned (`ARTGAN_POISON=1`: NaN), so an element a kernel
//! forgets to write fails the comparison.
//!
//! The bound, per element: the GPU and the CPU compute the same f32 expression, their f32
//! results G and C differing by ε only where the summation order differs (the statistics). Each
//! is rounded once to f16 (half an f16 ulp each), so |g - c| <= ε + 1 f16 ulp (of the larger of
//! the two). ε is 0 where nothing is summed (add, the activations: there G and C agree to a few
//! f32 ulps, far below an f16 ulp, so g and c are equal or adjacent f16 values), and the f32
//! parity test's bound for the same output where something is (tests/gpu_parity.rs,
//! `batch_norm_forward_and_backward_plain_and_fused`).

use artgan::backend::{backend, Activation, Backend, BatchNormAct, ChannelDims, DType, Storage};
use artgan::rng::Rng;
use half::f16;
use std::rc::Rc;

mod common;

/// The GPU backend with poisoned allocations, or `None` (after printing why) without one.
fn gpu() -> Option<Rc<dyn Backend>> {
    if std::env::var_os("ARTGAN_POISON").is_none() {
        std::env::set_var("ARTGAN_POISON", "1");
    }
    let device = common::gpu_device()?;
    Some(backend(device).expect("the CUDA backend worked a moment ago"))
}

fn cpu() -> Rc<dyn Backend> {
    artgan::backend::reference::backend()
}

/// f16 values uniform in [lo, hi], zeros replaced by `hi / 2` (zeros hide sign and mask bugs).
fn rand16(rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Vec<f16> {
    rng.uniform_vec(len, lo, hi)
        .into_iter()
        .map(|x| match f16::from_f32(x) {
            h if h.to_f32() == 0.0 => f16::from_f32(0.5 * hi),
            h => h,
        })
        .collect()
}

fn widen(v: &[f16]) -> Vec<f32> {
    v.iter().map(|h| h.to_f32()).collect()
}

fn round(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

fn up(b: &Rc<dyn Backend>, v: &[f32]) -> Storage {
    b.upload(v).expect("upload")
}

fn down(b: &Rc<dyn Backend>, s: &Storage) -> Vec<f32> {
    b.download(s).expect("download")
}

/// An f16 tensor on the GPU.
fn up16(g: &Rc<dyn Backend>, v: &[f16]) -> Storage {
    let s = g.upload_f16(v).expect("upload_f16");
    assert_eq!(s.dtype(), DType::F16);
    s
}

/// The values of a GPU result, which must be f16.
fn down16(g: &Rc<dyn Backend>, what: &str, s: &Storage) -> Vec<f16> {
    assert_eq!(s.dtype(), DType::F16, "{what}: the output must stay f16");
    g.download_f16(s).expect("download_f16")
}

/// The CPU oracle's f32 result rounded to f16 (it ran on the widened f16 inputs).
fn down_rounded(c: &Rc<dyn Backend>, s: &Storage) -> Vec<f16> {
    round(&down(c, s))
}

/// The gap from |v| to the next f16 up (2^-24 at zero).
fn ulp16(v: f16) -> f32 {
    let a = f16::from_bits(v.to_bits() & 0x7fff);
    f16::from_bits(a.to_bits() + 1).to_f32() - a.to_f32()
}

/// Asserts |g - c| <= ulp16(max(|g|, |c|)) + atol + rtol * |c| everywhere (the module's bound;
/// atol = rtol = 0 for one f16 step) and prints the worst element and how many differ at all.
fn close16(what: &str, g: &[f16], c: &[f16], rtol: f32, atol: f32) {
    assert_eq!(g.len(), c.len(), "{what}: length");
    let (mut worst, mut bad, mut differ) = ((0usize, 0.0f32), 0usize, 0usize);
    for (i, (&gv, &cv)) in g.iter().zip(c).enumerate() {
        let (gf, cf) = (gv.to_f32(), cv.to_f32());
        let big = if gf.abs() > cf.abs() { gv } else { cv };
        let bound = ulp16(big) + atol + rtol * cf.abs();
        let ratio = if gf.is_nan() || cf.is_nan() {
            f32::INFINITY
        } else {
            (gf - cf).abs() / bound
        };
        differ += usize::from(gv.to_bits() != cv.to_bits());
        if ratio > worst.1 || (i == 0 && ratio.is_infinite()) {
            worst = (i, ratio);
        }
        bad += usize::from(ratio > 1.0);
    }
    let (i, r) = worst;
    let msg = if g.is_empty() {
        format!("{what}: empty")
    } else {
        format!(
            "{what}: n={} worst [{i}] gpu={} cpu={} (err/bound {r:.3}; 1 f16 ulp + rtol {rtol:e}, atol {atol:e}); {differ} not bit-equal, {bad} out of bound",
            g.len(),
            g[i],
            c[i]
        )
    };
    println!("{msg}");
    assert_eq!(bad, 0, "{msg}");
}

/// f32 outputs (statistics, parameter gradients): |g - c| <= atol + rtol * |c|.
fn close(what: &str, g: &[f32], c: &[f32], rtol: f32, atol: f32) {
    assert_eq!(g.len(), c.len(), "{what}: length");
    let bad: Vec<usize> = (0..g.len())
        .filter(|&i| {
            let err = (g[i] - c[i]).abs();
            err.is_nan() || err > atol + rtol * c[i].abs()
        })
        .collect();
    println!("{what}: n={} {} out of bound", g.len(), bad.len());
    if let Some(&i) = bad.first() {
        panic!(
            "{what}: [{i}] gpu={:e} cpu={:e} (rtol {rtol:e}, atol {atol:e})",
            g[i], c[i]
        );
    }
}

/// `k` times the RMS of `c` (the f32 test's magnitude-scaled tolerance for dx).
fn rms_tol(c: &[f16], k: f32) -> f32 {
    let ms = c.iter().map(|h| f64::from(h.to_f32()).powi(2)).sum::<f64>() / c.len().max(1) as f64;
    (ms.sqrt() as f32).max(1e-30) * k
}

/// Shapes (n, c, hw): odd element counts (1295, 2079, 36855), channels of 8 to 12285 values
/// (up to the reductions' 1024-thread rows), and 65 channels (several channel groups).
const BN_SHAPES: [(usize, usize, usize); 5] =
    [(2, 3, 5), (5, 37, 7), (3, 7, 99), (8, 65, 1), (3, 3, 4095)];

/// ε for batch norm's y: G and C differ only through the f32 mean and invstd (sums in another
/// order, a few f32 ulps: about 1e-6 of the mean near 3, and relative 1e-6 of invstd), which
/// moves z = (x - mean) * invstd * gamma + beta by under 1e-6 absolute (|gamma| <= 1.5) plus
/// 1e-5 relative.
const Y_RTOL: f32 = 1e-5;
const Y_ATOL: f32 = 1e-6;

const BN_ACTS: [BatchNormAct; 3] = [
    BatchNormAct::None,
    BatchNormAct::Relu,
    BatchNormAct::LeakyRelu(0.2),
];

/// Train, eval and backward (with batch statistics and with the eval form), plain and fused
/// with ReLU and LeakyReLU: f16 x and dy give f16 y and dx; the statistics and the parameter
/// gradients stay f32, within the f32 test's bounds.
#[test]
fn batch_norm_f16_activation_train_eval_backward_plain_and_fused() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(16);
    for (n, ch, hw) in BN_SHAPES {
        for act in BN_ACTS {
            let plain = act == BatchNormAct::None;
            let d = ChannelDims { n, c: ch, hw };
            let t = format!("{d:?} {act:?}");
            // An offset mean (as a conv output's): a one-pass variance would be visibly wrong.
            let x = rand16(&mut rng, d.len(), 1.0, 5.0);
            let dy = rand16(&mut rng, d.len(), -1.0, 1.0);
            let gamma = rng.uniform_vec(ch, 0.5, 1.5);
            let beta = rng.uniform_vec(ch, -1.0, 1.0);
            let rm0: Vec<f32> = rng.uniform_vec(ch, 2.5, 3.5);
            let rv0 = rng.uniform_vec(ch, 0.5, 2.0);
            let (gx, cx) = (up16(&g, &x), up(&c, &widen(&x)));
            let (gdy, cdy) = (up16(&g, &dy), up(&c, &widen(&dy)));
            let params = |b: &Rc<dyn Backend>| (up(b, &gamma), up(b, &beta));
            let ((gga, gbe), (cga, cbe)) = (params(&g), params(&c));

            let (mut grm, mut grv) = (up(&g, &rm0), up(&g, &rv0));
            let (mut crm, mut crv) = (up(&c, &rm0), up(&c, &rv0));
            let gs = g
                .batch_norm_act_train(&gx, &gga, &gbe, &mut grm, &mut grv, d, 0.1, 1e-5, act)
                .unwrap();
            let cs = c
                .batch_norm_act_train(&cx, &cga, &cbe, &mut crm, &mut crv, d, 0.1, 1e-5, act)
                .unwrap();
            let w = format!("batch_norm f16 train {t}");
            let y = down_rounded(&c, &cs.y);
            close16(
                &format!("{w} y"),
                &down16(&g, "y", &gs.y),
                &y,
                Y_RTOL,
                Y_ATOL,
            );
            for (name, gv, cv, rtol, atol) in [
                ("mean", &gs.mean, &cs.mean, 1e-5, 1e-5),
                ("invstd", &gs.invstd, &cs.invstd, 1e-4, 0.0),
                ("running_mean", &grm, &crm, 1e-5, 1e-6),
                ("running_var", &grv, &crv, 1e-4, 1e-6),
            ] {
                assert_eq!(gv.dtype(), DType::F32, "{w} {name} stays f32");
                close(
                    &format!("{w} {name}"),
                    &down(&g, gv),
                    &down(&c, cv),
                    rtol,
                    atol,
                );
            }

            // Eval from the same running statistics (the CPU's) on both sides.
            let (rm, rv) = (down(&c, &crm), down(&c, &crv));
            let (grm, grv, crm, crv) = (up(&g, &rm), up(&g, &rv), up(&c, &rm), up(&c, &rv));
            let (gy, cy) = if plain {
                (
                    g.batch_norm_eval(&gx, &gga, &gbe, &grm, &grv, d, 1e-5)
                        .unwrap(),
                    c.batch_norm_eval(&cx, &cga, &cbe, &crm, &crv, d, 1e-5)
                        .unwrap(),
                )
            } else {
                (
                    g.batch_norm_act_eval(&gx, &gga, &gbe, &grm, &grv, d, 1e-5, act)
                        .unwrap()
                        .y,
                    c.batch_norm_act_eval(&cx, &cga, &cbe, &crm, &crv, d, 1e-5, act)
                        .unwrap()
                        .y,
                )
            };
            let w = format!("batch_norm f16 eval {t}");
            // Eval has no sums, but 1 / sqrt(running_var + eps) on both sides: y's ε again.
            close16(
                &format!("{w} y"),
                &down16(&g, "y", &gy),
                &down_rounded(&c, &cy),
                Y_RTOL,
                Y_ATOL,
            );

            let m = ((n * hw) as f32).sqrt();
            let eval_invstd: Vec<f32> = rv.iter().map(|v| 1.0 / (v + 1e-5f32).sqrt()).collect();
            for (mode, mean, invstd) in [
                ("train", down(&c, &cs.mean), down(&c, &cs.invstd)),
                ("eval", rm.clone(), eval_invstd),
            ] {
                let batch_stats = mode == "train";
                let backward = |b: &Rc<dyn Backend>, x: &Storage, dy: &Storage| {
                    let (ga, be) = (up(b, &gamma), up(b, &beta));
                    let (mean, invstd) = (up(b, &mean), up(b, &invstd));
                    if plain && batch_stats {
                        b.batch_norm_backward(x, dy, &ga, &mean, &invstd, d)
                    } else {
                        b.batch_norm_act_backward(
                            x,
                            dy,
                            &ga,
                            &be,
                            &mean,
                            &invstd,
                            d,
                            act,
                            batch_stats,
                        )
                    }
                    .unwrap()
                };
                let (gdx, gdg, gdb) = backward(&g, &gx, &gdy);
                let (cdx, cdg, cdb) = backward(&c, &cx, &cdy);
                let w = format!("batch_norm f16 backward {mode} {t}");
                let cdx = down_rounded(&c, &cdx);
                let atol = rms_tol(&cdx, 1e-4);
                close16(
                    &format!("{w} dx"),
                    &down16(&g, "dx", &gdx),
                    &cdx,
                    1e-3,
                    atol,
                );
                close(
                    &format!("{w} dbeta"),
                    &down(&g, &gdb),
                    &down(&c, &cdb),
                    1e-5,
                    1e-6 * m,
                );
                close(
                    &format!("{w} dgamma"),
                    &down(&g, &gdg),
                    &down(&c, &cdg),
                    1e-4,
                    1e-5 * m,
                );
            }
        }
    }
}

const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::LeakyRelu(0.2),
    Activation::Tanh,
    Activation::Sigmoid,
];

/// The four activations forward and backward on f16 tensors: one f16 step at most (ReLU and
/// LeakyReLU bit-equal: one rounding of the same f32 product).
#[test]
fn activation_f16_forward_and_backward_all_four() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(17);
    for len in [1usize, 33, 4097, 70_001] {
        let x = rand16(&mut rng, len, -4.0, 4.0);
        let dy = rand16(&mut rng, len, -1.0, 1.0);
        for act in ACTS {
            let exact = matches!(act, Activation::Relu | Activation::LeakyRelu(_));
            let (gx, cx) = (up16(&g, &x), up(&c, &widen(&x)));
            let gy = down16(&g, "y", &g.activation(act, &gx).unwrap());
            let cy = down_rounded(&c, &c.activation(act, &cx).unwrap());
            let w = format!("{act:?} f16 len {len}");
            close16(&format!("{w} forward"), &gy, &cy, 0.0, 0.0);
            if exact {
                assert_eq!(gy, cy, "{w} forward is one rounding of the same value");
            }
            // Backward from the same f16 y on both sides, so only the backward is compared.
            let gdx = g
                .activation_backward(act, &gx, &up16(&g, &cy), &up16(&g, &dy))
                .unwrap();
            let cdx = c
                .activation_backward(act, &cx, &up(&c, &widen(&cy)), &up(&c, &widen(&dy)))
                .unwrap();
            let (gdx, cdx) = (down16(&g, "dx", &gdx), down_rounded(&c, &cdx));
            close16(&format!("{w} backward"), &gdx, &cdx, 0.0, 0.0);
            if exact {
                assert_eq!(gdx, cdx, "{w} backward is one rounding of the same value");
            }
        }
    }
}

/// add and add_assign on f16 pairs: the f32 sum of two f16 values rounded once, bit-equal to
/// the CPU's. Magnitudes from 2^-6 to 2^4 so that many sums are inexact in f16 (which a
/// kernel adding in f16 steps, or not rounding to nearest even, would get wrong).
#[test]
fn add_and_add_assign_f16_round_the_f32_sum_once() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(18);
    for len in [1usize, 2, 31, 4096, 70_001] {
        let a = rand16(&mut rng, len, -16.0, 16.0);
        let b: Vec<f16> = rand16(&mut rng, len, -1.0, 1.0)
            .iter()
            .map(|h| f16::from_f32(h.to_f32() * 0.25))
            .collect();
        let want = down_rounded(
            &c,
            &c.add(&up(&c, &widen(&a)), &up(&c, &widen(&b))).unwrap(),
        );
        assert!(
            want.iter()
                .zip(&a)
                .any(|(s, a)| s.to_f32() - a.to_f32() != 0.0),
            "the sums change something"
        );
        let sum = g.add(&up16(&g, &a), &up16(&g, &b)).unwrap();
        assert_eq!(down16(&g, "add", &sum), want, "add f16 len {len}");
        let mut acc = up16(&g, &a);
        g.add_assign(&mut acc, &up16(&g, &b)).unwrap();
        assert_eq!(
            down16(&g, "add_assign", &acc),
            want,
            "add_assign f16 len {len}"
        );
        println!("add / add_assign f16 len {len}: bit-equal");
    }
}

/// The layer-to-layer path end to end with f16 tensors on both sides: batch norm fused with
/// ReLU (f16 out), LeakyReLU on it, LeakyReLU's backward from an f16 gradient, then the fused
/// batch norm's backward. The CPU side rounds every intermediate to f16 as the CPU amp
/// reference stores it. Nothing downstream of y reads its value except through masks (y >= 0
/// after ReLU, and both sides' ReLU give exact zeros), so the final bounds are the single ops'.
#[test]
fn f16_activation_chain_bn_relu_then_leaky_relu_backward_matches_cpu() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(19);
    let leaky = Activation::LeakyRelu(0.2);
    for (n, ch, hw) in [(4usize, 5usize, 49usize), (3, 33, 81), (2, 16, 1025)] {
        let d = ChannelDims { n, c: ch, hw };
        let x = rand16(&mut rng, d.len(), -2.0, 3.0);
        let dy = rand16(&mut rng, d.len(), -1.0, 1.0);
        let gamma = rng.uniform_vec(ch, 0.5, 1.5);
        let beta = rng.uniform_vec(ch, -1.0, 1.0);
        let t = format!("{d:?}");
        // Each side's chain; `to16` stores a result as the side keeps its activations.
        let chain =
            |b: &Rc<dyn Backend>, to16: &dyn Fn(Storage) -> Storage, x: Storage, dy: Storage| {
                let (ga, be) = (up(b, &gamma), up(b, &beta));
                let (mut rm, mut rv) = (up(b, &vec![0.0; ch]), up(b, &vec![1.0; ch]));
                let s = b
                    .batch_norm_act_train(
                        &x,
                        &ga,
                        &be,
                        &mut rm,
                        &mut rv,
                        d,
                        0.1,
                        1e-5,
                        BatchNormAct::Relu,
                    )
                    .unwrap();
                let y1 = to16(s.y);
                let y2 = to16(b.activation(leaky, &y1).unwrap());
                let dz = to16(b.activation_backward(leaky, &y1, &y2, &dy).unwrap());
                let (dx, dgamma, dbeta) = b
                    .batch_norm_act_backward(
                        &x,
                        &dz,
                        &ga,
                        &be,
                        &s.mean,
                        &s.invstd,
                        d,
                        BatchNormAct::Relu,
                        true,
                    )
                    .unwrap();
                (y2, dz, to16(dx), dgamma, dbeta)
            };
        let gpu_keeps = |s: Storage| s;
        let cpu_rounds = |s: Storage| up(&c, &widen(&down_rounded(&c, &s)));
        let (gy, gdz, gdx, gdg, gdb) = chain(&g, &gpu_keeps, up16(&g, &x), up16(&g, &dy));
        let (cy, cdz, cdx, cdg, cdb) =
            chain(&c, &cpu_rounds, up(&c, &widen(&x)), up(&c, &widen(&dy)));
        let w = format!("f16 chain {t}");
        close16(
            &format!("{w} leaky(bn_relu(x))"),
            &down16(&g, "y", &gy),
            &round(&down(&c, &cy)),
            Y_RTOL,
            Y_ATOL,
        );
        close16(
            &format!("{w} dz"),
            &down16(&g, "dz", &gdz),
            &round(&down(&c, &cdz)),
            0.0,
            0.0,
        );
        let cdx = round(&down(&c, &cdx));
        let atol = rms_tol(&cdx, 1e-4);
        close16(
            &format!("{w} dx"),
            &down16(&g, "dx", &gdx),
            &cdx,
            1e-3,
            atol,
        );
        let m = ((n * hw) as f32).sqrt();
        close(
            &format!("{w} dbeta"),
            &down(&g, &gdb),
            &down(&c, &cdb),
            1e-5,
            1e-6 * m,
        );
        close(
            &format!("{w} dgamma"),
            &down(&g, &gdg),
            &down(&c, &cdg),
            1e-4,
            1e-5 * m,
        );
    }
}

/// An f16 tensor mixed with an f32 one where the kernels take one dtype: an error naming the
/// op and each tensor's dtype, and nothing launched.
#[test]
fn f16_mixed_with_f32_is_an_error_naming_the_op_and_the_dtypes() {
    let Some(g) = gpu() else { return };
    let h = up16(&g, &[f16::from_f32(1.5); 6]);
    let f = up(&g, &[0.5; 6]);
    let msg = |r: anyhow::Result<Storage>| format!("{:#}", r.err().expect("a mix must fail"));
    assert_eq!(
        msg(g.add(&h, &f)),
        "add: a is f16, b is f32; the CUDA kernels take a, b all f32 or all f16"
    );
    let mut acc = g.copy(&f).unwrap();
    assert_eq!(
        format!("{:#}", g.add_assign(&mut acc, &h).unwrap_err()),
        "add_assign: acc is f32, x is f16; the CUDA kernels take acc, x all f32 or all f16"
    );
    assert_eq!(
        msg(g.activation_backward(Activation::Relu, &h, &h, &f)),
        "activation backward: x is f16, y is f16, dy is f32; the CUDA kernels take x, y, dy all f32 or all f16"
    );
    let d = ChannelDims { n: 2, c: 1, hw: 3 };
    let (ga, be, mean, inv) = (
        up(&g, &[1.0]),
        up(&g, &[0.0]),
        up(&g, &[0.0]),
        up(&g, &[1.0]),
    );
    let e = g
        .batch_norm_act_backward(&h, &f, &ga, &be, &mean, &inv, d, BatchNormAct::Relu, true)
        .err()
        .expect("a mix must fail");
    assert_eq!(
        format!("{e:#}"),
        "batch_norm backward: x is f16, dy is f32; the CUDA kernels take x, dy all f32 or all f16"
    );
}
