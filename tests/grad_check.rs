//! Finite-difference checks of every op's backward, on the plain reference backend (the oracle
//! the GPU and the fast CPU path are compared with) and on the fast CPU backend.
//!
//! The engine computes in f32, so the check is done in f32 with a tolerance derived from the
//! arithmetic rather than picked: for the probe loss L = Σ y·R (R fixed and random), central
//! differences (L(x+h) − L(x−h))/2h carry a rounding error of about ε₃₂·Σ|y·R|/h (each
//! evaluation of L is a sum of f32 outputs, each within a few ε₃₂ of exact, accumulated in f64
//! here), plus a truncation error O(h²·L‴) that is under 1e-3 relative for the smooth ops at the
//! step sizes used. The tolerance is `4·ε₃₂·Σ|y·R|/h + 2e-3·|g|` per element. Inputs of kinked
//! ops (relu, leaky relu) are kept further than h from the kink.

use artgan::amp::Numerics;
use artgan::backend::{Activation, BatchNormAct};
use artgan::ops;
use artgan::rng::Rng;
use artgan::tensor::{no_grad, Tensor};
use artgan::Device;

const CPU: Device = Device::Cpu;

struct Input {
    values: Vec<f32>,
    shape: Vec<usize>,
    /// Compare this input's gradient.
    check: bool,
}

fn input(values: Vec<f32>, shape: &[usize]) -> Input {
    Input {
        values,
        shape: shape.to_vec(),
        check: true,
    }
}

fn fixed(values: Vec<f32>, shape: &[usize]) -> Input {
    Input {
        check: false,
        ..input(values, shape)
    }
}

fn randn(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
    rng.normal_vec(shape.iter().product(), 0.0, 1.0)
}

/// Values in ±[0.1, 1.1]: never within the finite-difference step of 0.
fn away_from_zero(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
    let n = shape.iter().product();
    (0..n)
        .map(|_| {
            let m = 0.1 + rng.uniform();
            if rng.uniform() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect()
}

/// Runs `f` on the inputs, back-propagates Σ f(x)·R, and compares the gradients of the checked
/// inputs with central differences at up to `max_probes` random elements each.
fn check_grad(name: &str, inputs: Vec<Input>, h: f32, f: impl Fn(&[Tensor]) -> Tensor) {
    {
        let _reference = artgan::backend::use_reference_cpu();
        check_grad_once(&format!("{name} (reference)"), &inputs, h, &f);
    }
    check_grad_once(&format!("{name} (fast cpu)"), &inputs, h, &f);
}

fn check_grad_once(name: &str, inputs: &[Input], h: f32, f: &impl Fn(&[Tensor]) -> Tensor) {
    let mut rng = Rng::derive(0x9e37, name.split(' ').next().unwrap_or(name));
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|i| {
            let t = Tensor::from_vec(i.values.clone(), &i.shape, CPU).unwrap();
            if i.check {
                t.requiring_grad()
            } else {
                t
            }
        })
        .collect();
    let y = f(&leaves);
    let r_values = rng.normal_vec(y.numel(), 0.0, 1.0);
    let r = Tensor::from_vec(r_values.clone(), y.shape(), CPU).unwrap();
    let loss = ops::sum(&ops::mul(&y, &r).unwrap()).unwrap();
    loss.backward().unwrap();

    let probe_loss = |values: &[Vec<f32>]| -> (f64, f64) {
        let _g = no_grad();
        let ts: Vec<Tensor> = values
            .iter()
            .zip(inputs)
            .map(|(v, i)| Tensor::from_vec(v.clone(), &i.shape, CPU).unwrap())
            .collect();
        let out = f(&ts).to_vec().unwrap();
        let l = out
            .iter()
            .zip(&r_values)
            .map(|(&a, &b)| f64::from(a) * f64::from(b));
        let abs = out
            .iter()
            .zip(&r_values)
            .map(|(&a, &b)| f64::from((a * b).abs()));
        (l.sum(), abs.sum())
    };

    let mut checked = 0;
    for (k, inp) in inputs.iter().enumerate() {
        if !inp.check {
            continue;
        }
        let analytic = leaves[k]
            .grad_to_vec()
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: input {k} got no gradient"));
        assert_eq!(analytic.len(), inp.values.len(), "{name}: gradient length");
        let n = inp.values.len();
        let probes: Vec<usize> = if n <= 48 {
            (0..n).collect()
        } else {
            (0..48).map(|_| rng.below(n)).collect()
        };
        for &i in &probes {
            let mut values: Vec<Vec<f32>> = inputs.iter().map(|x| x.values.clone()).collect();
            values[k][i] = inp.values[i] + h;
            let (plus, mag) = probe_loss(&values);
            values[k][i] = inp.values[i] - h;
            let (minus, _) = probe_loss(&values);
            let numeric = (plus - minus) / (2.0 * f64::from(h));
            let a = f64::from(analytic[i]);
            let tol = 4.0 * f64::from(f32::EPSILON) * mag / f64::from(h) + 2e-3 * numeric.abs();
            assert!(
                (a - numeric).abs() <= tol,
                "{name}: input {k} element {i}: analytic {a}, finite difference {numeric}, tolerance {tol}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{name}: nothing was checked");
}

#[test]
fn conv2d_grad_matches_finite_difference() {
    let mut rng = Rng::new(1);
    // (n, c_in, h, w, c_out, k, stride, pad, bias)
    let cases = [
        (2, 3, 5, 5, 4, 3, 1, 1, true),
        (1, 2, 7, 6, 3, 4, 2, 1, false),
        (3, 1, 4, 4, 2, 4, 1, 0, true),
        (2, 2, 9, 9, 2, 3, 2, 0, false),
    ];
    for (n, ci, h, w, co, k, s, p, bias) in cases {
        let mut inputs = vec![
            input(randn(&mut rng, &[n, ci, h, w]), &[n, ci, h, w]),
            input(randn(&mut rng, &[co, ci, k, k]), &[co, ci, k, k]),
        ];
        if bias {
            inputs.push(input(randn(&mut rng, &[co]), &[co]));
        }
        check_grad(
            &format!("conv2d {n}x{ci}x{h}x{w} k{k} s{s} p{p}"),
            inputs,
            0.25,
            |t| ops::conv2d(&t[0], &t[1], t.get(2), s, p, Numerics::FP32).unwrap(),
        );
    }
}

#[test]
fn conv_transpose2d_grad_matches_finite_difference() {
    let mut rng = Rng::new(2);
    // (n, c_in, h, w, c_out, k, stride, pad, output_padding, bias)
    let cases = [
        (2, 3, 1, 1, 4, 4, 1, 0, 0, false),
        (1, 2, 3, 5, 3, 4, 2, 1, 0, true),
        (2, 2, 4, 3, 2, 3, 2, 1, 1, false),
        (1, 3, 5, 5, 2, 3, 1, 1, 0, true),
    ];
    for (n, ci, h, w, co, k, s, p, op, bias) in cases {
        let mut inputs = vec![
            input(randn(&mut rng, &[n, ci, h, w]), &[n, ci, h, w]),
            input(randn(&mut rng, &[ci, co, k, k]), &[ci, co, k, k]),
        ];
        if bias {
            inputs.push(input(randn(&mut rng, &[co]), &[co]));
        }
        let name = format!("conv_transpose2d {n}x{ci}x{h}x{w} k{k} s{s} p{p} op{op}");
        check_grad(&name, inputs, 0.25, |t| {
            ops::conv_transpose2d(&t[0], &t[1], t.get(2), s, p, op, Numerics::FP32).unwrap()
        });
    }
}

/// conv2d and conv_transpose2d with a fused activation: the smooth ones (a kinked activation
/// would meet its kink within the step somewhere; `conv_act_equals_conv_then_activation`
/// covers those exactly).
#[test]
fn conv_act_grad_matches_finite_difference() {
    let mut rng = Rng::new(3);
    for act in [Activation::Tanh, Activation::Sigmoid] {
        // (n, c_in, h, w, c_out, k, stride, pad): strided with odd sides, and dense.
        for (n, ci, h, w, co, k, s, p) in [(2, 3, 7, 5, 4, 4, 2, 1), (3, 2, 4, 4, 3, 4, 1, 0)] {
            let inputs = vec![
                input(randn(&mut rng, &[n, ci, h, w]), &[n, ci, h, w]),
                input(rng.normal_vec(co * ci * k * k, 0.0, 0.3), &[co, ci, k, k]),
            ];
            check_grad(
                &format!("conv2d_act {act:?} {n}x{ci}x{h}x{w} k{k} s{s} p{p}"),
                inputs,
                0.01,
                |t| ops::conv2d_act(&t[0], &t[1], act, s, p, Numerics::FP32).unwrap(),
            );
        }
        // (n, c_in, h, w, c_out, k, stride, pad): G's last layer, and its first (1x1 input).
        for (n, ci, h, w, co, k, s, p) in [(2, 3, 3, 4, 2, 4, 2, 1), (2, 4, 1, 1, 3, 4, 1, 0)] {
            let inputs = vec![
                input(randn(&mut rng, &[n, ci, h, w]), &[n, ci, h, w]),
                input(rng.normal_vec(ci * co * k * k, 0.0, 0.3), &[ci, co, k, k]),
            ];
            check_grad(
                &format!("conv_transpose2d_act {act:?} {n}x{ci}x{h}x{w} k{k} s{s} p{p}"),
                inputs,
                0.01,
                |t| ops::conv_transpose2d_act(&t[0], &t[1], act, s, p, 0, Numerics::FP32).unwrap(),
            );
        }
    }
}

/// How `conv_act_run` runs its conv: transposed or not, stride, padding, and whether x needs
/// a gradient (without, only w's: the backward-filter that applies the activation's
/// derivative as it reads dy).
#[derive(Clone, Copy, Debug)]
struct ConvRun {
    transposed: bool,
    stride: usize,
    pad: usize,
    need_dx: bool,
}

/// Output and gradients (x if asked for, w) of `act(conv(x, w))` for the loss sum(y * r),
/// fused or as the two ops.
fn conv_act_run(
    x: &Tensor,
    w: &Tensor,
    r: &[f32],
    act: Activation,
    run: ConvRun,
    fused: bool,
) -> Vec<Vec<f32>> {
    let x = if run.need_dx {
        x.detach().requiring_grad()
    } else {
        x.detach()
    };
    let w = w.detach().requiring_grad();
    let (s, p) = (run.stride, run.pad);
    let y = match (run.transposed, fused) {
        (false, true) => ops::conv2d_act(&x, &w, act, s, p, Numerics::FP32),
        (true, true) => ops::conv_transpose2d_act(&x, &w, act, s, p, 0, Numerics::FP32),
        (false, false) => ops::conv2d(&x, &w, None, s, p, Numerics::FP32),
        (true, false) => ops::conv_transpose2d(&x, &w, None, s, p, 0, Numerics::FP32),
    }
    .unwrap();
    let y = match (fused, act) {
        (true, _) => y,
        (false, Activation::Relu) => ops::relu(&y).unwrap(),
        (false, Activation::LeakyRelu(s)) => ops::leaky_relu(&y, s).unwrap(),
        (false, Activation::Tanh) => ops::tanh(&y).unwrap(),
        (false, Activation::Sigmoid) => ops::sigmoid(&y).unwrap(),
    };
    let rt = Tensor::from_vec(r[..y.numel()].to_vec(), y.shape(), CPU).unwrap();
    ops::sum(&ops::mul(&y, &rt).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let grad = |t: &Tensor| t.grad_to_vec().unwrap().unwrap();
    let mut out = vec![y.to_vec().unwrap(), grad(&w)];
    if run.need_dx {
        out.push(grad(&x));
    }
    out
}

/// The fused conv + activation is the two ops it replaces, bit for bit on both CPU backends:
/// the same conv output goes through the same activation, and the backward's derivative read
/// off the output is the one read off the input (same sign for slopes >= 0), whether it is
/// applied first or as backward-filter reads dy (x needing no gradient).
#[test]
fn conv_act_equals_conv_then_activation() {
    let mut rng = Rng::new(36);
    let mut t = |shape: &[usize]| Tensor::from_vec(randn(&mut rng, shape), shape, CPU).unwrap();
    // (x, w, transposed, stride, pad): stride-2 4x4 kernels as the GAN layers, odd sides
    // (about half the outputs negative); a kernel covering the input (the dense path); 64
    // output channels and 256 taps (backward-filter gathers its columns); even sides and 8
    // channels where the input gradient (a transposed conv's output) is the sub-pixel path.
    let cases = [
        (t(&[3, 4, 9, 7]), t(&[5, 4, 4, 4]), false, 2, 1),
        (t(&[3, 4, 9, 7]), t(&[4, 5, 4, 4]), true, 2, 1),
        (t(&[2, 9, 3, 5]), t(&[9, 8, 4, 4]), true, 2, 1),
        (t(&[2, 8, 6, 10]), t(&[5, 8, 4, 4]), false, 2, 1),
        (t(&[3, 4, 4, 4]), t(&[5, 4, 4, 4]), false, 1, 0),
        (t(&[2, 16, 6, 5]), t(&[64, 16, 4, 4]), false, 2, 1),
    ];
    let r = randn(&mut Rng::new(37), &[3 * 5 * 18 * 14]);
    let acts = [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::LeakyRelu(0.0),
        Activation::Tanh,
        Activation::Sigmoid,
    ];
    for reference in [true, false] {
        let _guard = reference.then(artgan::backend::use_reference_cpu);
        for (x, w, transposed, stride, pad) in &cases {
            for need_dx in [true, false] {
                let run = ConvRun {
                    transposed: *transposed,
                    stride: *stride,
                    pad: *pad,
                    need_dx,
                };
                for act in acts {
                    let fused = conv_act_run(x, w, &r, act, run, true);
                    let plain = conv_act_run(x, w, &r, act, run, false);
                    assert_eq!(fused, plain, "reference {reference} {act:?} {run:?}");
                }
            }
        }
    }
}

#[test]
fn conv_act_refuses_a_negative_leaky_slope() {
    let x = Tensor::from_vec(vec![0.5; 2 * 8 * 8], &[1, 2, 8, 8], CPU).unwrap();
    let w = Tensor::from_vec(vec![0.1; 3 * 2 * 16], &[3, 2, 4, 4], CPU).unwrap();
    let err =
        ops::conv2d_act(&x, &w, Activation::LeakyRelu(-0.5), 2, 1, Numerics::FP32).unwrap_err();
    assert!(err.to_string().contains("slope >= 0"), "{err}");
}

fn bn_params(rng: &mut Rng, c: usize) -> Vec<Input> {
    vec![
        input(rng.normal_vec(c, 1.0, 0.3), &[c]),
        input(randn(rng, &[c]), &[c]),
    ]
}

#[test]
fn batch_norm2d_training_grad_matches_finite_difference() {
    let mut rng = Rng::new(3);
    for shape in [[4, 3, 2, 2], [2, 2, 3, 5], [5, 1, 1, 1], [3, 4, 3, 3]] {
        let c = shape[1];
        let mut inputs = vec![input(
            rng.normal_vec(shape.iter().product(), 0.5, 2.0),
            &shape,
        )];
        inputs.extend(bn_params(&mut rng, c));
        check_grad(
            &format!("batch_norm2d train {shape:?}"),
            inputs,
            1e-2,
            |t| {
                let rm = Tensor::zeros(&[c], CPU).unwrap();
                let rv = Tensor::full(&[c], 1.0, CPU).unwrap();
                ops::batch_norm2d(&t[0], &t[1], &t[2], &rm, &rv, true, 0.1, 1e-5).unwrap()
            },
        );
    }
}

#[test]
fn batch_norm2d_eval_grad_matches_finite_difference() {
    let mut rng = Rng::new(4);
    for shape in [[2, 3, 2, 2], [1, 2, 3, 5], [3, 1, 4, 1]] {
        let c = shape[1];
        let mut inputs = vec![input(randn(&mut rng, &shape), &shape)];
        inputs.extend(bn_params(&mut rng, c));
        let rm = rng.normal_vec(c, 0.0, 0.5);
        let rv = rng.uniform_vec(c, 0.5, 2.0);
        check_grad(&format!("batch_norm2d eval {shape:?}"), inputs, 1e-2, |t| {
            let rm = Tensor::from_vec(rm.clone(), &[c], CPU).unwrap();
            let rv = Tensor::from_vec(rv.clone(), &[c], CPU).unwrap();
            ops::batch_norm2d(&t[0], &t[1], &t[2], &rm, &rv, false, 0.1, 1e-5).unwrap()
        });
    }
}

/// x `[shape]`, gamma and beta for a fused batch norm + activation whose pre-activations are all
/// at least 0.1 from the kink (redrawn until they are), so a step of 1e-2 in any input (it moves
/// a pre-activation by well under 0.1) never crosses it. `stats`: the normalising (mean, var)
/// per channel, or `None` for the batch's own (training).
fn bn_act_inputs(rng: &mut Rng, shape: [usize; 4], stats: Option<(&[f32], &[f32])>) -> Vec<Input> {
    let [n, c, h, w] = shape;
    let hw = h * w;
    loop {
        let x = rng.normal_vec(n * c * hw, 0.5, 2.0);
        let gamma = rng.normal_vec(c, 1.0, 0.3);
        let beta = randn(rng, &[c]);
        let clear = (0..c).all(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw])
                .map(|&v| f64::from(v))
                .collect();
            let (mean, var) = match stats {
                Some((m, v)) => (f64::from(m[ch]), f64::from(v[ch])),
                None => {
                    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                    let var =
                        vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                    (mean, var)
                }
            };
            let scale = f64::from(gamma[ch]) / (var + 1e-5).sqrt();
            vals.iter()
                .all(|v| ((v - mean) * scale + f64::from(beta[ch])).abs() >= 0.1)
        });
        if clear {
            return vec![input(x, &shape), input(gamma, &[c]), input(beta, &[c])];
        }
    }
}

#[test]
fn batch_norm2d_act_training_grad_matches_finite_difference() {
    let mut rng = Rng::new(31);
    for act in [Activation::Relu, Activation::LeakyRelu(0.2)] {
        for shape in [[4, 3, 2, 2], [2, 2, 3, 5], [5, 1, 1, 1], [3, 2, 3, 1]] {
            let c = shape[1];
            let inputs = bn_act_inputs(&mut rng, shape, None);
            check_grad(
                &format!("batch_norm2d_act train {act:?} {shape:?}"),
                inputs,
                1e-2,
                |t| {
                    let rm = Tensor::zeros(&[c], CPU).unwrap();
                    let rv = Tensor::full(&[c], 1.0, CPU).unwrap();
                    ops::batch_norm2d_act(&t[0], &t[1], &t[2], &rm, &rv, true, 0.1, 1e-5, act)
                        .unwrap()
                },
            );
        }
    }
}

/// The synchronised batch norm (`--sync-bn`) has its own backward (the whole batch's sums
/// all-reduced, then the per-channel correction through the eval-mode normalisation): on one
/// device it is plain batch norm, and its gradient must match finite differences.
#[test]
fn batch_norm2d_synced_grad_matches_finite_difference() {
    let mut rng = Rng::new(37);
    for act in [
        BatchNormAct::None,
        BatchNormAct::Relu,
        BatchNormAct::LeakyRelu(0.2),
    ] {
        for shape in [[4, 3, 2, 2], [2, 2, 3, 5], [3, 2, 3, 1]] {
            let c = shape[1];
            let inputs = bn_act_inputs(&mut rng, shape, None);
            check_grad(
                &format!("batch_norm2d_synced {act:?} {shape:?}"),
                inputs,
                1e-2,
                |t| {
                    let rm = Tensor::zeros(&[c], CPU).unwrap();
                    let rv = Tensor::full(&[c], 1.0, CPU).unwrap();
                    ops::batch_norm2d_synced(&t[0], &t[1], &t[2], &rm, &rv, 0.1, 1e-5, act).unwrap()
                },
            );
        }
    }
}

#[test]
fn batch_norm2d_act_eval_grad_matches_finite_difference() {
    let mut rng = Rng::new(32);
    for act in [Activation::Relu, Activation::LeakyRelu(0.2)] {
        for shape in [[2, 3, 2, 2], [1, 2, 3, 5], [3, 1, 4, 1]] {
            let c = shape[1];
            let rm = rng.normal_vec(c, 0.5, 0.5);
            let rv = rng.uniform_vec(c, 2.0, 6.0);
            let inputs = bn_act_inputs(&mut rng, shape, Some((&rm, &rv)));
            check_grad(
                &format!("batch_norm2d_act eval {act:?} {shape:?}"),
                inputs,
                1e-2,
                |t| {
                    let rm = Tensor::from_vec(rm.clone(), &[c], CPU).unwrap();
                    let rv = Tensor::from_vec(rv.clone(), &[c], CPU).unwrap();
                    ops::batch_norm2d_act(&t[0], &t[1], &t[2], &rm, &rv, false, 0.1, 1e-5, act)
                        .unwrap()
                },
            );
        }
    }
}

/// Values, gradients (x, gamma, beta) and running statistics of `act(batch_norm(x))` for the
/// loss sum(y * r), fused or as the two ops.
fn bn_act_run(
    x: &[f32],
    r: &[f32],
    shape: [usize; 4],
    training: bool,
    act: Activation,
    fused: bool,
) -> Vec<Vec<f32>> {
    let c = shape[1];
    let mut rng = Rng::new(34);
    let leaf = |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s, CPU).unwrap().requiring_grad();
    let xt = leaf(x.to_vec(), &shape);
    let gt = leaf(rng.normal_vec(c, 1.0, 0.3), &[c]);
    let bt = leaf(randn(&mut rng, &[c]), &[c]);
    let rm = Tensor::from_vec(rng.normal_vec(c, 0.5, 0.5), &[c], CPU).unwrap();
    let rv = Tensor::from_vec(rng.uniform_vec(c, 0.5, 2.0), &[c], CPU).unwrap();
    let y = if fused {
        ops::batch_norm2d_act(&xt, &gt, &bt, &rm, &rv, training, 0.1, 1e-5, act).unwrap()
    } else {
        let z = ops::batch_norm2d(&xt, &gt, &bt, &rm, &rv, training, 0.1, 1e-5).unwrap();
        match act {
            Activation::Relu => ops::relu(&z).unwrap(),
            Activation::LeakyRelu(s) => ops::leaky_relu(&z, s).unwrap(),
            other => panic!("{other:?} does not fuse"),
        }
    };
    let rt = Tensor::from_vec(r.to_vec(), &shape, CPU).unwrap();
    ops::sum(&ops::mul(&y, &rt).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let grad = |t: &Tensor| t.grad_to_vec().unwrap().unwrap();
    vec![
        y.to_vec().unwrap(),
        grad(&xt),
        grad(&gt),
        grad(&bt),
        rm.to_vec().unwrap(),
        rv.to_vec().unwrap(),
    ]
}

/// The fused op is the two ops it replaces. Training: the same values, gradients and running
/// statistics bit for bit on both CPU backends (the same f32 formulas, the mask taken from the
/// same pre-activation). Eval: within a few f32 roundings, since it multiplies by
/// 1/sqrt(var + eps) where the plain op divides by sqrt(var + eps).
#[test]
fn batch_norm2d_act_equals_batch_norm_then_activation() {
    let shape = [4, 3, 5, 3];
    let mut rng = Rng::new(35);
    let x = rng.normal_vec(shape.iter().product(), 0.5, 2.0);
    let r = randn(&mut rng, &shape);
    for reference in [true, false] {
        let _guard = reference.then(artgan::backend::use_reference_cpu);
        for act in [Activation::Relu, Activation::LeakyRelu(0.2)] {
            for training in [true, false] {
                let what = format!("reference {reference} {act:?} training {training}");
                let fused = bn_act_run(&x, &r, shape, training, act, true);
                let plain = bn_act_run(&x, &r, shape, training, act, false);
                if training {
                    assert_eq!(fused, plain, "{what}");
                    continue;
                }
                for (f, p) in fused.iter().zip(&plain) {
                    let scale = p.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for (a, b) in f.iter().zip(p) {
                        assert!((a - b).abs() <= 1e-6 * scale, "{what}: {a} vs {b}");
                    }
                }
            }
        }
    }
}

fn check_unary(name: &str, kinked: bool, h: f32, f: impl Fn(&Tensor) -> Tensor) {
    let mut rng = Rng::derive(5, name);
    for shape in [vec![7], vec![2, 3, 5], vec![3, 2, 3, 3]] {
        let values = if kinked {
            away_from_zero(&mut rng, &shape)
        } else {
            rng.normal_vec(shape.iter().product(), 0.0, 2.0)
        };
        check_grad(
            &format!("{name} {shape:?}"),
            vec![input(values, &shape)],
            h,
            |t| f(&t[0]),
        );
    }
}

#[test]
fn relu_grad_matches_finite_difference() {
    check_unary("relu", true, 1e-2, |x| ops::relu(x).unwrap());
}

#[test]
fn leaky_relu_grad_matches_finite_difference() {
    check_unary("leaky_relu", true, 1e-2, |x| {
        ops::leaky_relu(x, 0.2).unwrap()
    });
}

#[test]
fn tanh_grad_matches_finite_difference() {
    check_unary("tanh", false, 1e-2, |x| ops::tanh(x).unwrap());
}

#[test]
fn sigmoid_grad_matches_finite_difference() {
    check_unary("sigmoid", false, 1e-2, |x| ops::sigmoid(x).unwrap());
}

/// GLU over channels, on NCHW, `[N, 2C]` and one-channel-pair shapes (odd C and odd sizes).
#[test]
fn glu_grad_matches_finite_difference() {
    let mut rng = Rng::new(36);
    for shape in [vec![2, 6, 3, 5], vec![3, 4], vec![1, 2, 1, 7]] {
        let values = rng.normal_vec(shape.iter().product(), 0.0, 2.0);
        check_grad(
            &format!("glu {shape:?}"),
            vec![input(values, &shape)],
            1e-2,
            |t| ops::glu(&t[0]).unwrap(),
        );
    }
}

#[test]
fn dropout_grad_matches_finite_difference() {
    check_unary("dropout", false, 0.25, |x| {
        ops::dropout(x, 0.3, 99, true).unwrap()
    });
}

#[test]
fn gaussian_noise_grad_matches_finite_difference() {
    check_unary("gaussian_noise", false, 0.25, |x| {
        ops::gaussian_noise(x, 0.1, 7, true).unwrap()
    });
}

#[test]
fn spectral_norm_grad_matches_finite_difference() {
    // The gradient treats u and v as constants (as PyTorch, which computes them without
    // gradient), so the forward is checked with the power iteration frozen (`training` false)
    // after a few warm-up iterations on the same weight.
    let mut rng = Rng::new(6);
    for (shape, rows) in [
        (vec![4, 3, 2, 2], 4),
        (vec![3, 5], 3),
        (vec![2, 3, 3, 3], 2),
        (vec![1, 2, 4, 4], 1),
    ] {
        let n: usize = shape.iter().product();
        let cols = n / rows;
        let w = randn(&mut rng, &shape);
        let u = Tensor::from_vec(randn(&mut rng, &[rows]), &[rows], CPU).unwrap();
        let v = Tensor::from_vec(randn(&mut rng, &[cols]), &[cols], CPU).unwrap();
        let w_t = Tensor::from_vec(w.clone(), &shape, CPU).unwrap();
        for _ in 0..3 {
            ops::spectral_norm_weight(&w_t, &u, &v, rows, true, 1e-12).unwrap();
        }
        let (u0, v0) = (u.to_vec().unwrap(), v.to_vec().unwrap());
        check_grad(
            &format!("spectral_norm {shape:?}"),
            vec![input(w, &shape)],
            1e-2,
            |t| {
                let u = Tensor::from_vec(u0.clone(), &[rows], CPU).unwrap();
                let v = Tensor::from_vec(v0.clone(), &[cols], CPU).unwrap();
                ops::spectral_norm_weight(&t[0], &u, &v, rows, false, 1e-12).unwrap()
            },
        );
    }
}

#[test]
fn bce_with_logits_grad_matches_finite_difference() {
    let mut rng = Rng::new(7);
    for (shape, target) in [(vec![5], 1.0), (vec![4, 1, 1, 1], 0.0), (vec![3, 7], 0.9)] {
        let values = rng.normal_vec(shape.iter().product(), 0.0, 3.0);
        check_grad(
            &format!("bce_with_logits {shape:?} y={target}"),
            vec![input(values, &shape)],
            1e-2,
            |t| ops::bce_with_logits(&t[0], target).unwrap(),
        );
    }
}

#[test]
fn hinge_loss_grad_matches_finite_difference() {
    use artgan::backend::HingeTerm;
    let mut rng = Rng::new(17);
    for shape in [vec![5], vec![4, 1, 1, 1], vec![3, 7]] {
        for term in [HingeTerm::Real, HingeTerm::Fake, HingeTerm::Generator] {
            // Logits at least 0.1 from the kink at 1 − s·x = 0, where the loss is not
            // differentiable (the finite-difference step is far smaller).
            let values: Vec<f32> = rng
                .normal_vec(shape.iter().product(), 0.0, 2.0)
                .into_iter()
                .map(|v| {
                    if (1.0 - term.sign() * v).abs() < 0.1 {
                        v + 0.3
                    } else {
                        v
                    }
                })
                .collect();
            check_grad(
                &format!("hinge_loss {shape:?} {term:?}"),
                vec![input(values, &shape)],
                1e-2,
                |t| ops::hinge_loss(&t[0], term).unwrap(),
            );
        }
    }
}

#[test]
fn sum_mean_and_mean_rows_grads_match_finite_difference() {
    let mut rng = Rng::new(8);
    for shape in [vec![5], vec![2, 3, 4], vec![3, 1, 5, 5]] {
        let v = randn(&mut rng, &shape);
        check_grad("sum", vec![input(v.clone(), &shape)], 0.25, |t| {
            ops::sum(&t[0]).unwrap()
        });
        check_grad("mean", vec![input(v.clone(), &shape)], 0.25, |t| {
            ops::mean(&t[0]).unwrap()
        });
        check_grad("mean_rows", vec![input(v, &shape)], 0.25, |t| {
            ops::mean_rows(&t[0]).unwrap()
        });
    }
}

#[test]
fn reshape_add_mul_scale_grads_match_finite_difference() {
    let mut rng = Rng::new(9);
    for shape in [vec![6], vec![2, 3, 2], vec![3, 1, 3, 3]] {
        let n: usize = shape.iter().product();
        let (a, b) = (randn(&mut rng, &shape), randn(&mut rng, &shape));
        check_grad("reshape", vec![input(a.clone(), &shape)], 0.25, |t| {
            t[0].reshape(&[n]).unwrap()
        });
        check_grad(
            "add",
            vec![input(a.clone(), &shape), input(b.clone(), &shape)],
            0.25,
            |t| ops::add(&t[0], &t[1]).unwrap(),
        );
        check_grad(
            "mul",
            vec![input(a.clone(), &shape), input(b.clone(), &shape)],
            1e-2,
            |t| ops::mul(&t[0], &t[1]).unwrap(),
        );
        check_grad(
            "scale",
            vec![input(a, &shape), fixed(b, &shape)],
            0.25,
            |t| ops::scale(&t[0], -1.7).unwrap(),
        );
    }
}

#[test]
fn shared_input_gradients_accumulate() {
    // y = x·x + x: dy/dx = 2x + 1, with x used three times in the graph.
    let x = Tensor::parameter(vec![0.5, -2.0, 3.0], &[3], CPU).unwrap();
    let y = ops::add(&ops::mul(&x, &x).unwrap(), &x).unwrap();
    ops::sum(&y).unwrap().backward().unwrap();
    assert_eq!(x.grad_to_vec().unwrap().unwrap(), vec![2.0, -3.0, 7.0]);
    // A second backward accumulates into the same leaf.
    let y = ops::sum(&ops::scale(&x, 2.0).unwrap()).unwrap();
    y.backward().unwrap();
    assert_eq!(x.grad_to_vec().unwrap().unwrap(), vec![4.0, -1.0, 9.0]);
    x.zero_grad();
    assert!(x.grad_to_vec().unwrap().is_none());
}

#[test]
fn no_grad_and_detach_record_nothing() {
    let x = Tensor::parameter(vec![1.0, 2.0], &[2], CPU).unwrap();
    {
        let _g = no_grad();
        let y = ops::tanh(&x).unwrap();
        assert!(!y.requires_grad());
        assert!(ops::sum(&y).unwrap().backward().is_err());
    }
    let y = ops::tanh(&x.detach()).unwrap();
    assert!(!y.requires_grad());
    let z = ops::tanh(&x).unwrap();
    assert_eq!(z.grad_fn_name(), Some("tanh"));
}

// ---- conditional-model ops and DiffAugment

#[test]
fn embedding_grad_matches_finite_difference() {
    let mut rng = Rng::new(31);
    // 5 classes, 7-wide; labels repeat (scatter-add) and class 3 is absent (zero gradient).
    let labels = [0u32, 4, 1, 0, 2, 4, 4];
    check_grad(
        "embedding",
        vec![input(randn(&mut rng, &[5, 7]), &[5, 7])],
        1e-2,
        |t| ops::embedding(&t[0], &labels).unwrap(),
    );
}

#[test]
fn channel_affine_grad_matches_finite_difference() {
    let mut rng = Rng::new(32);
    check_grad(
        "channel_affine",
        vec![
            input(randn(&mut rng, &[3, 5, 3, 2]), &[3, 5, 3, 2]),
            input(randn(&mut rng, &[3, 5]), &[3, 5]),
            input(randn(&mut rng, &[3, 5]), &[3, 5]),
        ],
        1e-2,
        |t| ops::channel_affine(&t[0], &t[1], &t[2]).unwrap(),
    );
}

#[test]
fn conditional_batch_norm_through_embeddings_matches_finite_difference() {
    // The generator's class-conditional BN: gain and bias are embedding lookups.
    let mut rng = Rng::new(33);
    let labels = [2u32, 0, 2, 1];
    check_grad(
        "conditional_bn_affine",
        vec![
            input(randn(&mut rng, &[4, 3, 2, 3]), &[4, 3, 2, 3]),
            input(randn(&mut rng, &[3, 3]), &[3, 3]),
            input(randn(&mut rng, &[3, 3]), &[3, 3]),
        ],
        1e-2,
        |t| {
            let gain = ops::embedding(&t[1], &labels).unwrap();
            let bias = ops::embedding(&t[2], &labels).unwrap();
            ops::channel_affine(&t[0], &gain, &bias).unwrap()
        },
    );
}

#[test]
fn row_dot_grad_matches_finite_difference() {
    let mut rng = Rng::new(34);
    check_grad(
        "row_dot",
        vec![
            input(randn(&mut rng, &[6, 9]), &[6, 9]),
            input(randn(&mut rng, &[6, 9]), &[6, 9]),
        ],
        1e-2,
        |t| ops::row_dot(&t[0], &t[1]).unwrap(),
    );
}

#[test]
fn diffaugment_grads_match_finite_difference() {
    let mut rng = Rng::new(35);
    let shape = [3, 3, 8, 7];
    check_grad(
        "diffaug_color",
        vec![input(randn(&mut rng, &shape), &shape)],
        1e-2,
        |t| {
            let p = ops::diffaug_params(11, 0, 3, 8, 7);
            ops::diffaug_color(&t[0], &p.color).unwrap()
        },
    );
    check_grad(
        "diffaug_translate",
        vec![input(randn(&mut rng, &shape), &shape)],
        1e-2,
        |t| ops::diffaug_translate(&t[0], &[1, -1, -2, 0, 0, 2]).unwrap(),
    );
    check_grad(
        "diffaug_cutout",
        vec![input(randn(&mut rng, &shape), &shape)],
        1e-2,
        |t| ops::diffaug_cutout(&t[0], &[0, 4, 2, 6, 3, 8, 0, 3, 5, 6, 6, 7]).unwrap(),
    );
    check_grad(
        "diff_augment_all",
        vec![input(randn(&mut rng, &shape), &shape)],
        1e-2,
        |t| {
            let all = ops::DiffAugment::parse("color,translation,cutout").unwrap();
            ops::diff_augment(&t[0], all, 12).unwrap()
        },
    );
}

#[test]
fn diffaugment_parameters_follow_the_paper_ranges() {
    let (h, w) = (64, 64);
    let p = ops::diffaug_params(7, 0, 2000, h, w);
    for c in p.color.chunks(3) {
        assert!((-0.5..0.5).contains(&c[0]), "brightness {}", c[0]);
        assert!((0.0..2.0).contains(&c[1]), "saturation {}", c[1]);
        assert!((0.5..1.5).contains(&c[2]), "contrast {}", c[2]);
    }
    // int(64/8 + 0.5) = 8: shifts in [-8, 8], every value reached.
    let mut seen = std::collections::BTreeSet::new();
    for &s in &p.shifts {
        assert!((-8..=8).contains(&s));
        seen.insert(s);
    }
    assert_eq!(seen.len(), 17);
    for b in p.boxes.chunks(4) {
        assert!(
            0 <= b[0] && b[0] < b[1] && b[1] <= 64 && b[1] - b[0] <= 32,
            "{b:?}"
        );
        assert!(
            0 <= b[2] && b[2] < b[3] && b[3] <= 64 && b[3] - b[2] <= 32,
            "{b:?}"
        );
    }
    assert!(p
        .boxes
        .chunks(4)
        .any(|b| b[1] - b[0] == 32 && b[3] - b[2] == 32));
    // Same seed, same parameters; another seed, others.
    assert_eq!(p, ops::diffaug_params(7, 0, 2000, h, w));
    assert_ne!(p.color, ops::diffaug_params(8, 0, 2000, h, w).color);
    let x = Tensor::from_vec(vec![0.25; 2 * 3 * 4 * 4], &[2, 3, 4, 4], CPU).unwrap();
    // Cutout of half the side on a constant image zeroes exactly a quarter at most.
    let y = ops::diffaug_cutout(&x, &[0, 2, 0, 2, 1, 3, 2, 4])
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(y.iter().filter(|&&v| v == 0.0).count(), 2 * 3 * 4);
}

/// Nearest upsampling: scales 1, 2 and 3 on odd sizes (each pixel's gradient sums its block).
#[test]
fn upsample_nearest2d_grad_matches_finite_difference() {
    let mut rng = Rng::new(271);
    for (shape, scale) in [([2, 3, 3, 5], 2), ([1, 2, 1, 1], 3), ([2, 1, 4, 3], 1)] {
        check_grad(
            &format!("upsample_nearest2d {shape:?} x{scale}"),
            vec![input(randn(&mut rng, &shape), &shape)],
            0.25,
            |t| ops::upsample_nearest2d(&t[0], scale).unwrap(),
        );
    }
}

/// Adaptive average pooling: divisible, odd (overlapping bins: 5 to 3, 7 to 2), growing
/// (2 to 3, bins repeating rows) and global (to 1x1) cases.
#[test]
fn adaptive_avg_pool2d_grad_matches_finite_difference() {
    let mut rng = Rng::new(272);
    for (shape, oh, ow) in [
        ([2, 3, 4, 4], 2, 2),
        ([1, 2, 5, 7], 3, 2),
        ([2, 1, 2, 3], 3, 4),
        ([3, 2, 3, 5], 1, 1),
    ] {
        check_grad(
            &format!("adaptive_avg_pool2d {shape:?} to {oh}x{ow}"),
            vec![input(randn(&mut rng, &shape), &shape)],
            0.25,
            |t| ops::adaptive_avg_pool2d(&t[0], oh, ow).unwrap(),
        );
    }
}

/// Crop: an inner window, one touching the corner, the whole image and a 1x1 window.
#[test]
fn crop2d_grad_matches_finite_difference() {
    let mut rng = Rng::new(273);
    for (shape, [top, left, h, w]) in [
        ([2, 3, 5, 7], [1, 2, 3, 4]),
        ([1, 2, 4, 4], [2, 2, 2, 2]),
        ([2, 1, 3, 3], [0, 0, 3, 3]),
        ([3, 1, 5, 5], [4, 0, 1, 1]),
    ] {
        check_grad(
            &format!("crop2d {shape:?} at {top},{left} {h}x{w}"),
            vec![input(randn(&mut rng, &shape), &shape)],
            0.25,
            |t| ops::crop2d(&t[0], top, left, h, w).unwrap(),
        );
    }
}

/// Channel gate: both inputs, the gate as `[N, C, 1, 1]` and as `[N, C]`, odd sizes.
#[test]
fn channel_gate_grad_matches_finite_difference() {
    let mut rng = Rng::new(274);
    for (x, g) in [
        (vec![2, 3, 3, 5], vec![2, 3, 1, 1]),
        (vec![3, 5, 1, 1], vec![3, 5]),
        (vec![1, 1, 4, 7], vec![1, 1, 1, 1]),
    ] {
        check_grad(
            &format!("channel_gate {x:?} by {g:?}"),
            vec![
                input(randn(&mut rng, &x), &x),
                input(randn(&mut rng, &g), &g),
            ],
            1e-2,
            |t| ops::channel_gate(&t[0], &t[1]).unwrap(),
        );
    }
}

/// L1 and MSE, gradients of both operands; `a − b` kept at least 0.1 from L1's kink at 0.
#[test]
fn l1_and_mse_loss_grads_match_finite_difference() {
    let mut rng = Rng::new(275);
    for shape in [vec![7], vec![2, 3, 3, 5], vec![1, 1, 1, 1]] {
        let a = randn(&mut rng, &shape);
        let b: Vec<f32> = a
            .iter()
            .zip(away_from_zero(&mut rng, &shape))
            .map(|(&a, d)| a - d)
            .collect();
        check_grad(
            &format!("l1_loss {shape:?}"),
            vec![input(a.clone(), &shape), input(b.clone(), &shape)],
            1e-2,
            |t| ops::l1_loss(&t[0], &t[1]).unwrap(),
        );
        check_grad(
            &format!("mse_loss {shape:?}"),
            vec![input(a, &shape), input(b, &shape)],
            1e-2,
            |t| ops::mse_loss(&t[0], &t[1]).unwrap(),
        );
    }
}
