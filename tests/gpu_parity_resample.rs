//! The CUDA kernels of FastGAN's ops (nearest upsampling, adaptive average pooling, crop, the
//! channel gate, the L1/MSE loss) against the plain reference backend, forward and backward, on
//! random inputs (never zeros) of several shapes, odd sizes included.
//!
//! Without a usable GPU each test prints `skipped: <reason>` and passes; with
//! `ARTGAN_REQUIRE_GPU=1` a missing GPU fails it. Outputs are poisoned (`ARTGAN_POISON=1`:
//! NaN), so an element a kernel forgets to write fails the comparison.
//!
//! Error bound, per element: |gpu - cpu| <= atol + rtol * |cpu|. Copies (upsample forward,
//! crop both ways, the gate's forward and dx) must match exactly. Sums are f32 on the GPU and
//! f64 (rounded once) on the reference: k terms of magnitude at most m differ by at most about
//! k·ε₃₂·m, which gives each sum's atol below.

use artgan::backend::{backend, Backend, ChannelDims, ImageDims, PairLoss, Storage, Window};
use artgan::rng::Rng;
use std::rc::Rc;

mod common;

const EPS: f32 = f32::EPSILON;

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

/// Uniform in [-1, 1], exact zeros replaced (zeros hide sign and mask bugs).
fn rand(rng: &mut Rng, len: usize) -> Vec<f32> {
    rng.uniform_vec(len, -1.0, 1.0)
        .into_iter()
        .map(|x| if x == 0.0 { 0.5 } else { x })
        .collect()
}

fn up(b: &Rc<dyn Backend>, v: &[f32]) -> Storage {
    b.upload(v).expect("upload")
}

fn down(b: &Rc<dyn Backend>, s: &Storage) -> Vec<f32> {
    b.download(s).expect("download")
}

/// Runs `f` on both backends with the same host inputs and compares the outputs.
fn compare(
    what: &str,
    g: &Rc<dyn Backend>,
    inputs: &[&[f32]],
    (rtol, atol): (f32, f32),
    f: impl Fn(&Rc<dyn Backend>, &[Storage]) -> Storage,
) {
    let c = cpu();
    let run = |b: &Rc<dyn Backend>| {
        let s: Vec<Storage> = inputs.iter().map(|v| up(b, v)).collect();
        down(b, &f(b, &s))
    };
    close(what, &run(g), &run(&c), rtol, atol);
}

/// Asserts |g - c| <= atol + rtol * |c| everywhere and prints the worst element.
fn close(what: &str, g: &[f32], c: &[f32], rtol: f32, atol: f32) {
    assert_eq!(g.len(), c.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&gv, &cv)) in g.iter().zip(c).enumerate() {
        let err = (gv - cv).abs();
        let ratio = if err.is_nan() {
            f32::INFINITY
        } else if err == 0.0 {
            0.0
        } else {
            err / (atol + rtol * cv.abs())
        };
        if ratio > worst.1 {
            worst = (i, ratio);
        }
    }
    let (i, r) = worst;
    let msg = format!(
        "{what}: n={} worst [{i}] gpu={:e} cpu={:e} (err/bound {r:.3})",
        g.len(),
        g.get(i).unwrap_or(&0.0),
        c.get(i).unwrap_or(&0.0)
    );
    println!("{msg}");
    assert!(r <= 1.0, "{msg}");
}

const EXACT: (f32, f32) = (0.0, 0.0);

#[test]
fn upsample_nearest_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2711);
    for ((n, c, h, w), s) in [
        ((1, 1, 1, 1), 2),
        ((2, 3, 5, 7), 2),
        ((3, 2, 4, 3), 3),
        ((1, 1, 3, 3), 1),
        ((2, 4, 33, 17), 2),
    ] {
        let d = ImageDims { n, c, h, w };
        let x = rand(&mut rng, d.len());
        let dy = rand(&mut rng, d.len() * s * s);
        compare(&format!("upsample {d:?} x{s}"), &g, &[&x], EXACT, |b, a| {
            b.upsample_nearest(&a[0], d, s).unwrap()
        });
        // Each dx sums s² values of magnitude <= 1.
        let tol = (0.0, (s * s) as f32 * EPS);
        compare(
            &format!("upsample dx {d:?} x{s}"),
            &g,
            &[&dy],
            tol,
            |b, a| b.upsample_nearest_backward(&a[0], d, s).unwrap(),
        );
    }
}

#[test]
fn adaptive_avg_pool_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2712);
    for ((n, c, h, w), oh, ow) in [
        ((1, 1, 5, 5), 3, 3),
        ((2, 3, 7, 5), 3, 2),
        ((2, 2, 2, 3), 3, 4),
        ((3, 2, 6, 6), 1, 1),
        ((2, 4, 33, 17), 4, 4),
        ((1, 3, 16, 16), 4, 4),
    ] {
        let d = ImageDims { n, c, h, w };
        let x = rand(&mut rng, d.len());
        let dy = rand(&mut rng, n * c * oh * ow);
        // A bin's mean: at most ceil(h/oh + 1)·ceil(w/ow + 1) terms of magnitude <= 1, divided
        // by their count, so the sum's error over the count stays near ε (2ε for the division).
        let tol = (0.0, 4.0 * EPS);
        let what = format!("pool {d:?} to {oh}x{ow}");
        compare(&what, &g, &[&x], tol, |b, a| {
            b.adaptive_avg_pool(&a[0], d, oh, ow).unwrap()
        });
        // A pixel's dx sums dy / size over at most (oh/h + 2)·(ow/w + 2) bins.
        let bins = (oh / h + 2) * (ow / w + 2);
        let tol = (0.0, 2.0 * bins as f32 * EPS);
        compare(&format!("{what} dx"), &g, &[&dy], tol, |b, a| {
            b.adaptive_avg_pool_backward(&a[0], d, oh, ow).unwrap()
        });
    }
}

#[test]
fn crop_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2713);
    for ((n, c, h, w), [top, left, wh, ww]) in [
        ((1, 1, 1, 1), [0, 0, 1, 1]),
        ((2, 3, 5, 7), [1, 2, 3, 4]),
        ((3, 2, 8, 8), [4, 4, 4, 4]),
        ((2, 1, 5, 5), [0, 0, 5, 5]),
        ((2, 4, 33, 17), [16, 1, 17, 8]),
    ] {
        let d = ImageDims { n, c, h, w };
        let win = Window {
            top,
            left,
            h: wh,
            w: ww,
        };
        let x = rand(&mut rng, d.len());
        let dy = rand(&mut rng, n * c * wh * ww);
        compare(&format!("crop {d:?} {win:?}"), &g, &[&x], EXACT, |b, a| {
            b.crop(&a[0], d, win).unwrap()
        });
        compare(
            &format!("crop dx {d:?} {win:?}"),
            &g,
            &[&dy],
            EXACT,
            |b, a| b.crop_backward(&a[0], d, win).unwrap(),
        );
    }
    // A window past the edge is an error on both, not a read past the buffer.
    let d = ImageDims {
        n: 1,
        c: 1,
        h: 4,
        w: 4,
    };
    let win = Window {
        top: 2,
        left: 0,
        h: 3,
        w: 1,
    };
    for be in [&g, &cpu()] {
        let e = be
            .crop(&up(be, &[1.0; 16]), d, win)
            .err()
            .expect("an error");
        assert_eq!(
            e.to_string(),
            "crop: the window rows 2..5, columns 0..1 does not fit in 4x4 planes"
        );
    }
}

#[test]
fn channel_gate_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2714);
    for (n, c, hw) in [(1, 1, 1), (3, 5, 7), (4, 3, 1), (2, 9, 1025)] {
        let d = ChannelDims { n, c, hw };
        let x = rand(&mut rng, d.len());
        let gate = rand(&mut rng, n * c);
        let dy = rand(&mut rng, d.len());
        compare(&format!("gate {d:?}"), &g, &[&x, &gate], EXACT, |b, a| {
            b.channel_gate(&a[0], &a[1], d).unwrap()
        });
        let backward = |i: usize| {
            move |b: &Rc<dyn Backend>, a: &[Storage]| {
                let (dx, dg) = b.channel_gate_backward(&a[0], &a[1], &a[2], d).unwrap();
                [dx, dg].into_iter().nth(i).unwrap()
            }
        };
        let inputs: [&[f32]; 3] = [&x, &gate, &dy];
        compare(&format!("gate dx {d:?}"), &g, &inputs, EXACT, backward(0));
        // dg sums hw products of magnitude <= 1.
        let tol = (0.0, 2.0 * hw as f32 * EPS);
        compare(&format!("gate dg {d:?}"), &g, &inputs, tol, backward(1));
    }
    // A gate of the wrong length is an error on both.
    let d = ChannelDims { n: 2, c: 3, hw: 5 };
    for be in [&g, &cpu()] {
        let e = be
            .channel_gate(&up(be, &[1.0; 30]), &up(be, &[1.0; 5]), d)
            .err()
            .expect("a short gate");
        assert!(
            e.to_string()
                .starts_with("channel_gate: 30 input values, 5 gate values"),
            "{e}"
        );
    }
}

#[test]
fn l1_and_mse_loss_and_gradient() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2715);
    for len in [1usize, 7, 1000, 3 * 64 * 64 + 5] {
        let a = rand(&mut rng, len);
        let mut b = rand(&mut rng, len);
        b[0] = a[0]; // sign(0) = 0: L1's gradient there is 0 on both.
        for kind in [PairLoss::L1, PairLoss::Mse] {
            let part = |i: usize| {
                move |be: &Rc<dyn Backend>, s: &[Storage]| {
                    let (loss, grad) = be.pair_loss(&s[0], &s[1], kind).unwrap();
                    [loss, grad].into_iter().nth(i).unwrap()
                }
            };
            // The mean of len terms (each <= 4) summed in f32: within about 2ε of the f64 sum's
            // magnitude, relative to a mean that is not small for random inputs.
            compare(
                &format!("{kind:?} loss n={len}"),
                &g,
                &[&a, &b],
                (1e-5, 0.0),
                part(0),
            );
            // L1: ±1/N either way; MSE: 2(a − b)/N with (a − b) rounded once more in f32.
            let tol = (4.0 * EPS, 0.0);
            compare(
                &format!("{kind:?} grad n={len}"),
                &g,
                &[&a, &b],
                tol,
                part(1),
            );
        }
    }
}
