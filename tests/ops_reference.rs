//! Forward values of the ops against direct definitions and values worked out by hand with
//! PyTorch's formulas (design.md, "PyTorch semantics to match").

use approx::assert_relative_eq;
use artgan::amp::Numerics;
use artgan::ops;
use artgan::rng::{self, Rng};
use artgan::tensor::Tensor;
use artgan::Device;

const CPU: Device = Device::Cpu;

fn t(values: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape, CPU).unwrap()
}

/// Direct 7-loop cross-correlation, the definition PyTorch's Conv2d computes.
#[allow(clippy::too_many_arguments)]
fn direct_conv(
    x: &[f32],
    w: &[f32],
    [n, ci, h, wd]: [usize; 4],
    co: usize,
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f64>, usize, usize) {
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (wd + 2 * p - k) / s + 1;
    let mut y = vec![0.0; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f64;
                    for c in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                let xv = x[((b * ci + c) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((o * ci + c) * k + ky) * k + kx];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    y[((b * co + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (y, oh, ow)
}

fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().map(|v| v.abs()).fold(1e-6, f64::max);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= rel * scale,
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn conv2d_forward_matches_direct_definition() {
    let mut rng = Rng::new(10);
    for (shape, co, k, s, p) in [
        ([2, 3, 7, 7], 4, 3, 1, 1),
        ([1, 2, 9, 8], 3, 4, 2, 1),
        ([3, 4, 6, 6], 2, 4, 2, 0),
        ([1, 1, 5, 5], 1, 5, 1, 0),
    ] {
        let x = rng.normal_vec(shape.iter().product(), 0.0, 1.0);
        let w = rng.normal_vec(co * shape[1] * k * k, 0.0, 1.0);
        let b = rng.normal_vec(co, 0.0, 1.0);
        let (mut want, oh, ow) = direct_conv(&x, &w, shape, co, k, s, p);
        for (i, v) in want.iter_mut().enumerate() {
            *v += f64::from(b[(i / (oh * ow)) % co]);
        }
        let y = ops::conv2d(
            &t(x, &shape),
            &t(w, &[co, shape[1], k, k]),
            Some(&t(b, &[co])),
            s,
            p,
            Numerics::FP32,
        )
        .unwrap();
        assert_eq!(y.shape(), [shape[0], co, oh, ow]);
        assert_close(&y.to_vec().unwrap(), &want, 1e-5, "conv2d");
    }
}

#[test]
fn conv_transpose2d_forward_matches_scatter_definition() {
    // PyTorch: y[b, o, iy·s − p + ky, ix·s − p + kx] += x[b, c, iy, ix] · w[c, o, ky, kx].
    let mut rng = Rng::new(11);
    for (n, ci, h, wd, co, k, s, p, op) in [
        (2, 4, 1, 1, 3, 4, 1, 0, 0),
        (1, 3, 4, 4, 2, 4, 2, 1, 0),
        (2, 2, 3, 5, 3, 3, 2, 1, 1),
        (1, 2, 5, 3, 2, 3, 1, 0, 0),
    ] {
        let x = rng.normal_vec(n * ci * h * wd, 0.0, 1.0);
        let w = rng.normal_vec(ci * co * k * k, 0.0, 1.0);
        let oh = (h - 1) * s + k + op - 2 * p;
        let ow = (wd - 1) * s + k + op - 2 * p;
        let mut want = vec![0f64; n * co * oh * ow];
        for b in 0..n {
            for c in 0..ci {
                for iy in 0..h {
                    for ix in 0..wd {
                        for o in 0..co {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let y = (iy * s + ky) as isize - p as isize;
                                    let xx = (ix * s + kx) as isize - p as isize;
                                    if y < 0 || xx < 0 || y as usize >= oh || xx as usize >= ow {
                                        continue;
                                    }
                                    want[((b * co + o) * oh + y as usize) * ow + xx as usize] +=
                                        f64::from(x[((b * ci + c) * h + iy) * wd + ix])
                                            * f64::from(w[((c * co + o) * k + ky) * k + kx]);
                                }
                            }
                        }
                    }
                }
            }
        }
        let y = ops::conv_transpose2d(
            &t(x, &[n, ci, h, wd]),
            &t(w, &[ci, co, k, k]),
            None,
            s,
            p,
            op,
            Numerics::FP32,
        )
        .unwrap();
        assert_eq!(y.shape(), [n, co, oh, ow]);
        assert_close(&y.to_vec().unwrap(), &want, 1e-5, "conv_transpose2d");
    }
}

#[test]
fn batch_norm2d_matches_pytorch_formulas_by_hand() {
    // Two channels, batch 2, 1x2 pixels. Channel 0 holds 1, 2, 3, 4: mean 2.5, biased var 1.25,
    // unbiased var 5/3. Channel 1 holds 10, 10, 10, 14: mean 11, biased var 3, unbiased 4.
    let x = t(
        vec![1.0, 2.0, 10.0, 10.0, 3.0, 4.0, 10.0, 14.0],
        &[2, 2, 1, 2],
    );
    let gamma = t(vec![2.0, 0.5], &[2]);
    let beta = t(vec![0.0, 1.0], &[2]);
    let rm = t(vec![0.0, 0.0], &[2]);
    let rv = t(vec![1.0, 1.0], &[2]);
    let y = ops::batch_norm2d(&x, &gamma, &beta, &rm, &rv, true, 0.1, 1e-5).unwrap();
    let s0 = 2.0 / (1.25f64 + 1e-5).sqrt();
    let s1 = 0.5 / (3.0f64 + 1e-5).sqrt();
    let want = [
        -1.5 * s0,
        -0.5 * s0,
        1.0 - s1,
        1.0 - s1,
        0.5 * s0,
        1.5 * s0,
        1.0 - s1,
        1.0 + 3.0 * s1,
    ];
    assert_close(&y.to_vec().unwrap(), &want, 1e-6, "batch_norm2d train");
    // running_mean = 0.9·0 + 0.1·mean; running_var = 0.9·1 + 0.1·unbiased var.
    let rm_v = rm.to_vec().unwrap();
    let rv_v = rv.to_vec().unwrap();
    assert_relative_eq!(rm_v[0], 0.25, max_relative = 1e-6);
    assert_relative_eq!(rm_v[1], 1.1, max_relative = 1e-6);
    assert_relative_eq!(rv_v[0], 0.9 + 0.1 * 5.0 / 3.0, max_relative = 1e-6);
    assert_relative_eq!(rv_v[1], 0.9 + 0.4, max_relative = 1e-6);
    // Eval mode uses the running stats: (x − rm)/sqrt(rv + eps)·gamma + beta.
    let e = ops::batch_norm2d(&x, &gamma, &beta, &rm, &rv, false, 0.1, 1e-5).unwrap();
    let e0 = e.to_vec().unwrap()[0];
    let want0 = (1.0 - 0.25) / (f64::from(rv_v[0]) + 1e-5).sqrt() * 2.0;
    assert_relative_eq!(f64::from(e0), want0, max_relative = 1e-6);
    // Eval leaves the running stats alone.
    assert_eq!(rm.to_vec().unwrap(), rm_v);
}

#[test]
fn batch_norm2d_training_refuses_one_value_per_channel() {
    // PyTorch: "Expected more than 1 value per channel when training". The unbiased variance
    // would be 0/0; eval mode (running statistics) is fine.
    let x = t(vec![0.5, -1.0], &[1, 2, 1, 1]);
    let gamma = t(vec![1.0, 1.0], &[2]);
    let beta = t(vec![0.0, 0.0], &[2]);
    let rm = t(vec![0.0, 0.0], &[2]);
    let rv = t(vec![1.0, 1.0], &[2]);
    let e = ops::batch_norm2d(&x, &gamma, &beta, &rm, &rv, true, 0.1, 1e-5).unwrap_err();
    assert!(
        format!("{e:#}").contains("more than one value per channel"),
        "{e:#}"
    );
    assert_eq!(rv.to_vec().unwrap(), vec![1.0, 1.0]);
    assert!(ops::batch_norm2d(&x, &gamma, &beta, &rm, &rv, false, 0.1, 1e-5).is_ok());
    // Two values in one channel (batch 1, 2 pixels) are enough.
    let x2 = t(vec![0.5, -1.0], &[1, 1, 1, 2]);
    let (g1, b1) = (t(vec![1.0], &[1]), t(vec![0.0], &[1]));
    let (rm1, rv1) = (t(vec![0.0], &[1]), t(vec![1.0], &[1]));
    ops::batch_norm2d(&x2, &g1, &b1, &rm1, &rv1, true, 0.1, 1e-5).unwrap();
    assert!(rv1.to_vec().unwrap()[0].is_finite());
}

#[test]
fn spectral_norm_matches_power_iteration_by_hand() {
    // W = diag(3, 1), u0 = (1, 1): v = normalize(Wᵀu) = (3, 1)/√10,
    // u = normalize(Wv) = (9, 1)/√82, sigma = uᵀWv = 82/√820 = √8.2.
    let w = t(vec![3.0, 0.0, 0.0, 1.0], &[2, 2]);
    let u = t(vec![1.0, 1.0], &[2]);
    let v = t(vec![0.5, 0.5], &[2]);
    let y = ops::spectral_norm_weight(&w, &u, &v, 2, true, 1e-12).unwrap();
    let sigma = 8.2f64.sqrt();
    assert_close(
        &y.to_vec().unwrap(),
        &[3.0 / sigma, 0.0, 0.0, 1.0 / sigma],
        1e-6,
        "W/sigma",
    );
    assert_close(
        &u.to_vec().unwrap(),
        &[9.0 / 82f64.sqrt(), 1.0 / 82f64.sqrt()],
        1e-6,
        "u",
    );
    assert_close(
        &v.to_vec().unwrap(),
        &[3.0 / 10f64.sqrt(), 1.0 / 10f64.sqrt()],
        1e-6,
        "v",
    );
    // Power iteration converges to the top singular value.
    for _ in 0..30 {
        ops::spectral_norm_weight(&w, &u, &v, 2, true, 1e-12).unwrap();
    }
    let y = ops::spectral_norm_weight(&w, &u, &v, 2, false, 1e-12).unwrap();
    assert_relative_eq!(y.to_vec().unwrap()[0], 1.0, max_relative = 1e-5);
}

#[test]
fn bce_with_logits_is_stable_at_large_logits() {
    // loss = max(x,0) − x·y + log(1 + exp(−|x|)); grad = (σ(x) − y)/N.
    let x = t(vec![50.0, -50.0, 0.0, 2.0], &[4]).requiring_grad();
    let loss = ops::bce_with_logits(&x, 1.0).unwrap();
    let want = (0.0 + 50.0 + 2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 4.0;
    assert_relative_eq!(f64::from(loss.item().unwrap()), want, max_relative = 1e-6);
    loss.backward().unwrap();
    let g = x.grad_to_vec().unwrap().unwrap();
    let sig2 = 1.0 / (1.0 + (-2f64).exp());
    assert_close(
        &g,
        &[0.0, -0.25, -0.125, (sig2 - 1.0) / 4.0],
        1e-6,
        "bce grad y=1",
    );
    let loss0 = ops::bce_with_logits(&t(vec![50.0, -50.0], &[2]), 0.0).unwrap();
    assert_relative_eq!(loss0.item().unwrap(), 25.0, max_relative = 1e-6);
    assert!(loss0.item().unwrap().is_finite());
}

#[test]
fn hinge_loss_terms_match_their_definitions() {
    use artgan::backend::HingeTerm;
    let x = [2.0f32, 0.5, -0.25, -3.0];
    // (term, loss, d loss / d x): D real max(0, 1 − x), D fake max(0, 1 + x), G −x; means.
    let cases: [(HingeTerm, f64, [f64; 4]); 3] = [
        (
            HingeTerm::Real,
            (0.0 + 0.5 + 1.25 + 4.0) / 4.0,
            [0.0, -0.25, -0.25, -0.25],
        ),
        (
            HingeTerm::Fake,
            (3.0 + 1.5 + 0.75 + 0.0) / 4.0,
            [0.25, 0.25, 0.25, 0.0],
        ),
        (
            HingeTerm::Generator,
            (-2.0 - 0.5 + 0.25 + 3.0) / 4.0,
            [-0.25; 4],
        ),
    ];
    for (term, want, grad) in cases {
        let xt = t(x.to_vec(), &[4]).requiring_grad();
        let loss = ops::hinge_loss(&xt, term).unwrap();
        assert_relative_eq!(f64::from(loss.item().unwrap()), want, max_relative = 1e-6);
        loss.backward().unwrap();
        assert_close(
            &xt.grad_to_vec().unwrap().unwrap(),
            &grad,
            1e-7,
            "hinge grad",
        );
    }
}

#[test]
fn dropout_follows_the_counter_based_mask_and_is_identity_in_eval() {
    let mut rng = Rng::new(12);
    let v = rng.normal_vec(1000, 0.0, 1.0);
    let x = t(v.clone(), &[10, 100]);
    let y = ops::dropout(&x, 0.3, 42, true).unwrap().to_vec().unwrap();
    for (i, (&a, &b)) in v.iter().zip(&y).enumerate() {
        assert_eq!(b, a * rng::dropout_value_at(42, i as u64, 0.3));
    }
    let zeros = y.iter().filter(|&&b| b == 0.0).count();
    assert!(
        (200..400).contains(&zeros),
        "{zeros} dropped of 1000 at p=0.3"
    );
    assert_eq!(
        ops::dropout(&x, 0.3, 42, false).unwrap().to_vec().unwrap(),
        v
    );
    assert!(ops::dropout(&x, 1.5, 42, true).is_err());
}

#[test]
fn gaussian_noise_has_the_requested_std_and_is_identity_in_eval() {
    let x = t(vec![1.0; 20_000], &[20_000]);
    let y = ops::gaussian_noise(&x, 0.1, 5, true)
        .unwrap()
        .to_vec()
        .unwrap();
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / 20_000.0;
    let std = (y
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / 20_000.0)
        .sqrt();
    assert!((mean - 1.0).abs() < 0.005, "mean {mean}");
    assert!((std - 0.1).abs() < 0.005, "std {std}");
    assert_eq!(y[3], 1.0 + 0.1 * rng::normal_at(5, 3));
    let e = ops::gaussian_noise(&x, 0.1, 5, false)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(e.iter().all(|&v| v == 1.0));
}

#[test]
fn ops_reject_bad_shapes_with_errors() {
    let x = t(vec![1.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4]);
    let w = t(vec![1.0; 5 * 2 * 3 * 3], &[5, 2, 3, 3]);
    let e = ops::conv2d(&x, &w, None, 1, 1, Numerics::FP32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
    let big = t(vec![1.0; 3 * 3 * 9 * 9], &[3, 3, 9, 9]);
    assert!(ops::conv2d(&x, &big, None, 1, 0, Numerics::FP32).is_err());
    assert!(ops::add(&x, &t(vec![1.0; 4], &[4])).is_err());
    assert!(x.reshape(&[7]).is_err());
}

/// GLU (PyTorch's `F.glu(x, dim=1)`): `a·σ(b)` from the first and last halves of the channels,
/// its gradient that of the sum, `σ(b)` for `a` and `a·σ(b)·(1 − σ(b))` for `b`, in f64; large
/// gates stay finite; an odd channel count or a tensor without channels is refused.
#[test]
fn glu_matches_its_definition_and_refuses_an_odd_channel_count() {
    let mut rng = Rng::new(14);
    for (shape, out) in [
        (vec![2, 6, 3, 5], vec![2, 3, 3, 5]),
        (vec![3, 4], vec![3, 2]),
        (vec![1, 2, 1, 1], vec![1, 1, 1, 1]),
    ] {
        let v = rng.normal_vec(shape.iter().product(), 0.0, 2.0);
        let x = t(v.clone(), &shape).requiring_grad();
        let y = ops::glu(&x).unwrap();
        assert_eq!(y.shape(), out, "glu of {shape:?}");
        let (c, hw) = (out[1], out[2..].iter().product::<usize>());
        let (mut want, mut grad) = (Vec::new(), vec![0.0; v.len()]);
        for n in 0..shape[0] {
            for ch in 0..c {
                for p in 0..hw {
                    let ia = (n * 2 * c + ch) * hw + p;
                    let ib = ia + c * hw;
                    let (a, b) = (f64::from(v[ia]), f64::from(v[ib]));
                    let s = 1.0 / (1.0 + (-b).exp());
                    want.push(a * s);
                    grad[ia] = s;
                    grad[ib] = a * s * (1.0 - s);
                }
            }
        }
        assert_close(&y.to_vec().unwrap(), &want, 1e-6, "glu forward");
        ops::sum(&y).unwrap().backward().unwrap();
        assert_close(&x.grad_to_vec().unwrap().unwrap(), &grad, 1e-6, "glu grad");
    }
    // Gates of ±100: σ saturates to 1 and to (nearly) 0 without an inf or a NaN.
    let x = t(vec![3.0, -2.0, 100.0, -100.0], &[1, 4]).requiring_grad();
    let y = ops::glu(&x).unwrap();
    let yv = y.to_vec().unwrap();
    assert_eq!(yv[0], 3.0);
    assert!(yv[1].abs() < 1e-40, "{}", yv[1]);
    ops::sum(&y).unwrap().backward().unwrap();
    let g = x.grad_to_vec().unwrap().unwrap();
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert_eq!(g[0], 1.0);

    let e = ops::glu(&t(vec![1.0; 2 * 5 * 4 * 4], &[2, 5, 4, 4]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "glu: the channel dimension (dim 1) must be even to split into value and gate halves, \
         got 5 channels in shape [2, 5, 4, 4]"
    );
    let e = ops::glu(&t(vec![1.0; 6], &[6])).unwrap_err().to_string();
    assert_eq!(
        e,
        "glu: expected a tensor [N, 2C, ...] of at least 2 dimensions, got shape [6]"
    );
}

/// The numerics a conv op is given decide its arithmetic, forward and backward: under amp the
/// operands are rounded to f16 and the output is an f16 tensor (an activation: exactly the f32
/// result rounded to f16), the input's gradient has the input's dtype and the weight's is f32
/// of f16 values; the backward, run after the op was recorded, uses the numerics of its
/// forward.
#[test]
fn conv_numerics_travel_with_the_op_into_its_backward() {
    use artgan::amp::Precision;
    use artgan::backend::{ConvImpl, DType};
    let mut rng = Rng::new(31);
    let xv = rng.uniform_vec(2 * 3 * 6 * 6, -1.0, 1.0);
    let wv = rng.uniform_vec(4 * 3 * 3 * 3, -0.5, 0.5);
    let is_f16 = |v: f32| half::f16::from_f32(v).to_f32() == v;
    let run = |numerics: Numerics| {
        let x = t(xv.clone(), &[2, 3, 6, 6]).requiring_grad();
        let w = t(wv.clone(), &[4, 3, 3, 3]).requiring_grad();
        let y = ops::conv2d(&x, &w, None, 2, 1, numerics).unwrap();
        let dtype = y.dtype();
        ops::sum(&ops::to_f32(&y).unwrap())
            .unwrap()
            .backward()
            .unwrap();
        let grads = [&x, &w].map(|p| p.grad_to_vec().unwrap().unwrap());
        (y.to_vec().unwrap(), grads, dtype)
    };
    let amp = Numerics::new(Precision::Amp, ConvImpl::Cudnn);
    let (y32, g32, dtype32) = run(Numerics::FP32);
    let (y16, g16, dtype16) = run(amp);
    assert_eq!((dtype32, dtype16), (DType::F32, DType::F16));
    assert_ne!(y32, y16, "amp rounds the operands");
    assert!(y32.iter().chain(g32.iter().flatten()).any(|&v| !is_f16(v)));
    for (what, v) in [("y", &y16), ("dx", &g16[0]), ("dw", &g16[1])] {
        assert!(v.iter().all(|&x| is_f16(x)), "{what}: not all f16 values");
    }
    // y is the product of the rounded operands in f32, rounded once to f16.
    let round =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
    let x = t(round(&xv), &[2, 3, 6, 6]);
    let w = t(round(&wv), &[4, 3, 3, 3]);
    let y_rounded_operands = ops::conv2d(&x, &w, None, 2, 1, Numerics::FP32).unwrap();
    assert_eq!(y16, round(&y_rounded_operands.to_vec().unwrap()));
}

/// `x`'s gradient after back-propagating `sum(y * dy)` (so `dy` is y's gradient).
fn grad_through(x: &Tensor, y: &Tensor, dy: &[f32]) -> Vec<f32> {
    let r = t(dy.to_vec(), y.shape());
    ops::sum(&ops::mul(y, &r).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    x.grad_to_vec().unwrap().unwrap()
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

/// Nearest upsampling (`F.interpolate(mode="nearest")`): `y[i][j] = x[i / s][j / s]`, and each
/// pixel's gradient is the sum of its `s x s` block, on odd sizes.
#[test]
fn upsample_nearest2d_matches_its_definition() {
    let mut rng = Rng::new(2701);
    for ([n, c, h, w], s) in [([2, 3, 3, 5], 2), ([1, 2, 1, 1], 3), ([1, 1, 2, 3], 1)] {
        let x = t(rng.normal_vec(n * c * h * w, 0.0, 1.0), &[n, c, h, w]).requiring_grad();
        let y = ops::upsample_nearest2d(&x, s).unwrap();
        assert_eq!(y.shape(), [n, c, h * s, w * s]);
        let (xv, yv) = (x.to_vec().unwrap(), y.to_vec().unwrap());
        let (oh, ow) = (h * s, w * s);
        let mut want = Vec::new();
        for p in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    want.push(f64::from(xv[(p * h + i / s) * w + j / s]));
                }
            }
        }
        assert_close(&yv, &want, 0.0, "upsample forward");
        let dy = rng.normal_vec(yv.len(), 0.0, 1.0);
        let mut dx = vec![0f64; xv.len()];
        for p in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    dx[(p * h + i / s) * w + j / s] += f64::from(dy[(p * oh + i) * ow + j]);
                }
            }
        }
        assert_close(&grad_through(&x, &y, &dy), &dx, 1e-6, "upsample grad");
    }
}

/// Adaptive average pooling, worked by hand with PyTorch's bins floor(i·H/oh) ..
/// ceil((i+1)·H/oh): 5x5 to 3x3 (overlapping bins rows 0..2, 1..4, 3..5) and 2x2 to 3x3 (the
/// middle bin spans both rows), then random odd shapes against the direct definition.
#[test]
fn adaptive_avg_pool2d_matches_pytorch_bins() {
    // x[r][c] = 5r + c: each bin's mean is 5·mean(rows) + mean(cols), row means 0.5, 2, 3.5.
    let x = t(ramp(25), &[1, 1, 5, 5]).requiring_grad();
    let y = ops::adaptive_avg_pool2d(&x, 3, 3).unwrap();
    assert_eq!(y.shape(), [1, 1, 3, 3]);
    let want = [3.0, 4.5, 6.0, 10.5, 12.0, 13.5, 18.0, 19.5, 21.0];
    assert_close(&y.to_vec().unwrap(), &want, 1e-7, "pool 5x5 to 3x3");
    // dy = 1: pixel (r, c) gets (Σ 1/|rows of its bins|)·(Σ 1/|cols of its bins|), bins of
    // sizes 2, 3, 2: 1/2, 1/2 + 1/3, 1/3, 1/3 + 1/2, 1/2.
    let a = [0.5, 5.0 / 6.0, 1.0 / 3.0, 5.0 / 6.0, 0.5];
    let dx: Vec<f64> = (0..25).map(|i| a[i / 5] * a[i % 5]).collect();
    assert_close(&grad_through(&x, &y, &[1.0; 9]), &dx, 1e-7, "pool grad");

    // Growing 2x2 to 3x3: x[r][c] = 2r + c + 1, bins rows 0..1, 0..2, 1..2.
    let x = t(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
    let y = ops::adaptive_avg_pool2d(&x, 3, 3).unwrap();
    let want = [1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0];
    assert_close(&y.to_vec().unwrap(), &want, 1e-7, "pool 2x2 to 3x3");

    let mut rng = Rng::new(2702);
    for ([n, c, h, w], oh, ow) in [
        ([2, 3, 7, 5], 3, 2),
        ([1, 2, 3, 4], 5, 6),
        ([2, 1, 6, 6], 1, 1),
    ] {
        let x = t(rng.normal_vec(n * c * h * w, 0.0, 1.0), &[n, c, h, w]).requiring_grad();
        let y = ops::adaptive_avg_pool2d(&x, oh, ow).unwrap();
        assert_eq!(y.shape(), [n, c, oh, ow]);
        let xv = x.to_vec().unwrap();
        let bin = |i: usize, out: usize, len: usize| (i * len / out)..((i + 1) * len).div_ceil(out);
        let dy = rng.normal_vec(n * c * oh * ow, 0.0, 1.0);
        let (mut want, mut dx) = (Vec::new(), vec![0f64; xv.len()]);
        for p in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let (rows, cols) = (bin(i, oh, h), bin(j, ow, w));
                    let size = (rows.len() * cols.len()) as f64;
                    let mut sum = 0f64;
                    for r in rows {
                        for q in cols.clone() {
                            sum += f64::from(xv[(p * h + r) * w + q]);
                            dx[(p * h + r) * w + q] += f64::from(dy[(p * oh + i) * ow + j]) / size;
                        }
                    }
                    want.push(sum / size);
                }
            }
        }
        assert_close(&y.to_vec().unwrap(), &want, 1e-6, "pool forward");
        assert_close(&grad_through(&x, &y, &dy), &dx, 1e-6, "pool grad");
    }
}

/// Crop: `x[:, :, top:top+h, left:left+w]`; its gradient is dy inside the window, 0 outside.
#[test]
fn crop2d_matches_slicing() {
    let x = t(ramp(2 * 5 * 7), &[2, 1, 5, 7]).requiring_grad();
    let y = ops::crop2d(&x, 1, 2, 3, 4).unwrap();
    assert_eq!(y.shape(), [2, 1, 3, 4]);
    let mut want = Vec::new();
    let mut dx = vec![0f64; 70];
    let dy: Vec<f32> = (0..24).map(|i| 100.0 + i as f32).collect();
    for p in 0..2 {
        for r in 1..4 {
            for c in 2..6 {
                let i = (p * 5 + r) * 7 + c;
                dx[i] = f64::from(dy[want.len()]);
                want.push(i as f64);
            }
        }
    }
    assert_close(&y.to_vec().unwrap(), &want, 0.0, "crop forward");
    assert_close(&grad_through(&x, &y, &dy), &dx, 0.0, "crop grad");
}

/// Channel gate: `x[n, c, :, :] · g[n, c]` for a gate of shape `[N, C, 1, 1]` or `[N, C]`;
/// the gate's gradient sums `dy · x` over the pixels.
#[test]
fn channel_gate_matches_its_definition() {
    let mut rng = Rng::new(2703);
    for g_shape in [vec![2, 3, 1, 1], vec![2, 3]] {
        let x = t(rng.normal_vec(2 * 3 * 5, 0.0, 1.0), &[2, 3, 1, 5]);
        let g = t(rng.normal_vec(6, 0.0, 1.0), &g_shape).requiring_grad();
        let y = ops::channel_gate(&x, &g).unwrap();
        assert_eq!(y.shape(), x.shape());
        let (xv, gv) = (x.to_vec().unwrap(), g.to_vec().unwrap());
        let want: Vec<f64> = (0..30).map(|i| f64::from(xv[i] * gv[i / 5])).collect();
        assert_close(&y.to_vec().unwrap(), &want, 0.0, "gate forward");
        let dy = rng.normal_vec(30, 0.0, 1.0);
        let dg: Vec<f64> = (0..6)
            .map(|nc| {
                (0..5)
                    .map(|p| f64::from(dy[nc * 5 + p] * xv[nc * 5 + p]))
                    .sum()
            })
            .collect();
        assert_close(&grad_through(&g, &y, &dy), &dg, 1e-6, "gate grad");
    }
}

/// L1 and MSE by hand (PyTorch's mean reduction), with an element where a = b: L1's gradient
/// there is sign(0)/N = 0, as PyTorch's.
#[test]
fn l1_and_mse_loss_match_pytorch_by_hand() {
    // a − b = −1, 0, 2, −1.
    let (av, bv) = (vec![1.0, 2.0, 3.0, 4.0], vec![2.0, 2.0, 1.0, 5.0]);
    type LossFn = fn(&Tensor, &Tensor) -> anyhow::Result<Tensor>;
    let cases: [(LossFn, f64, [f64; 4]); 2] = [
        (ops::l1_loss, 1.0, [-0.25, 0.0, 0.25, -0.25]),
        (ops::mse_loss, 1.5, [-0.5, 0.0, 1.0, -0.5]),
    ];
    for (loss_fn, want, grad) in cases {
        let a = t(av.clone(), &[1, 1, 2, 2]).requiring_grad();
        let b = t(bv.clone(), &[1, 1, 2, 2]).requiring_grad();
        let loss = loss_fn(&a, &b).unwrap();
        assert_eq!(loss.shape(), [1]);
        assert_relative_eq!(f64::from(loss.item().unwrap()), want, max_relative = 1e-7);
        loss.backward().unwrap();
        assert_close(&a.grad_to_vec().unwrap().unwrap(), &grad, 1e-7, "grad a");
        let neg: Vec<f64> = grad.iter().map(|g| -g).collect();
        assert_close(&b.grad_to_vec().unwrap().unwrap(), &neg, 1e-7, "grad b");
    }
}

/// Each new op refuses bad shapes with one line naming the op and the shapes.
#[test]
fn resample_gate_and_pair_loss_refuse_bad_shapes() {
    let x = t(vec![1.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4]);
    let flat = t(vec![1.0; 6], &[6]);
    let err = |r: anyhow::Result<Tensor>| match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let cases = [
        (
            err(ops::upsample_nearest2d(&x, 0)),
            "upsample_nearest2d: the scale factor must be at least 1, got 0",
        ),
        (
            err(ops::upsample_nearest2d(&flat, 2)),
            "upsample_nearest2d: expected an NCHW tensor, got shape [6]",
        ),
        (
            err(ops::adaptive_avg_pool2d(&x, 0, 2)),
            "adaptive_avg_pool2d: cannot pool input [2, 3, 4, 4] to 0x2 (every size must be at \
             least 1)",
        ),
        (
            err(ops::crop2d(&x, 2, 1, 3, 2)),
            "crop2d: the window rows 2..5, columns 1..3 does not fit in input [2, 3, 4, 4] (4x4 \
             images)",
        ),
        (
            err(ops::channel_gate(&x, &t(vec![1.0; 3], &[1, 3, 1, 1]))),
            "channel_gate: gate of shape [1, 3, 1, 1] for input [2, 3, 4, 4], expected \
             [2, 3, 1, 1] or [2, 3]",
        ),
        (
            err(ops::l1_loss(&x, &flat)),
            "l1_loss: shapes [2, 3, 4, 4] and [6] differ",
        ),
        (
            err(ops::mse_loss(&t(vec![], &[0]), &t(vec![], &[0]))),
            "mse_loss of empty tensors (shape [0])",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
        assert_eq!(got.lines().count(), 1);
    }
}

/// Data-parallel training splits each batch by rows: a part's dropout mask and input noise must
/// be exactly its rows of the whole batch's draw with the same seed (`ops::Seed::part`).
#[test]
fn dropout_and_noise_of_a_part_are_those_rows_of_the_whole_batch_draw() {
    let mut rng = Rng::new(17);
    let whole_x = rng.uniform_vec(4 * 3 * 5 * 5, -1.0, 1.0);
    let whole = t(whole_x.clone(), &[4, 3, 5, 5]);
    let seed = |part| ops::Seed {
        value: 99,
        on_device: None,
        part,
    };
    let whole_drop = ops::dropout(&whole, 0.4, seed(0), true)
        .unwrap()
        .to_vec()
        .unwrap();
    let whole_noise = ops::gaussian_noise(&whole, 0.3, seed(0), true)
        .unwrap()
        .to_vec()
        .unwrap();
    let per_part = whole_x.len() / 2;
    for part in 0..2 {
        let rows = &whole_x[part * per_part..(part + 1) * per_part];
        let x = t(rows.to_vec(), &[2, 3, 5, 5]);
        let d = ops::dropout(&x, 0.4, seed(part), true)
            .unwrap()
            .to_vec()
            .unwrap();
        let n = ops::gaussian_noise(&x, 0.3, seed(part), true)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(
            d,
            whole_drop[part * per_part..(part + 1) * per_part],
            "dropout part {part}"
        );
        assert_eq!(
            n,
            whole_noise[part * per_part..(part + 1) * per_part],
            "noise part {part}"
        );
    }
}
