//! Adam against values worked out by hand from PyTorch's formula:
//! m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², p ← p − lr·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + eps).

use approx::assert_relative_eq;
use artgan::backend::Device;
use artgan::ops;
use artgan::optim::Adam;
use artgan::tensor::Tensor;

/// Gives `p` the gradient `g` (loss = Σ p·g).
fn set_grad(p: &Tensor, g: &[f32]) {
    p.zero_grad();
    let c = Tensor::from_vec(g.to_vec(), p.shape(), Device::Cpu).unwrap();
    ops::sum(&ops::mul(p, &c).unwrap())
        .unwrap()
        .backward()
        .unwrap();
}

#[test]
fn adam_matches_hand_computed_bias_corrected_steps() {
    let p = Tensor::parameter(vec![1.0, -2.0], &[2], Device::Cpu).unwrap();
    let mut opt = Adam::new(0.9, 0.999, 1e-8);
    opt.add_group("main", 0.1, vec![("p".into(), p.clone())])
        .unwrap();

    // Step 1, g = (0.5, 0): m = (0.05, 0), v = (0.00025, 0); m̂ = 0.5, v̂ = 0.25, so the
    // first element moves by exactly lr·0.5/0.5 = 0.1 (up to eps); a zero gradient does not
    // move the second.
    set_grad(&p, &[0.5, 0.0]);
    opt.step().unwrap();
    let v = p.to_vec().unwrap();
    assert_relative_eq!(v[0], 0.9, epsilon = 1e-6);
    assert_eq!(v[1], -2.0);

    // Step 2, g = (−1, 0): m = 0.045 − 0.1 = −0.055, v = 0.00024975 + 0.001 = 0.00124975;
    // bias corrections 0.19 and 0.001999: m̂ = −0.289473684, v̂ = 0.625187594,
    // √v̂ = 0.790688051, step = 0.1·0.289473684/0.790688051 = 0.036610354.
    set_grad(&p, &[-1.0, 0.0]);
    opt.step().unwrap();
    assert_relative_eq!(p.to_vec().unwrap()[0], 0.936_610_4, epsilon = 2e-6);
    let state = opt.state_tensors();
    assert_eq!(state[0].0, "p.exp_avg");
    assert_eq!(state[1].0, "p.exp_avg_sq");
    assert_relative_eq!(state[0].1.to_vec().unwrap()[0], -0.055, epsilon = 1e-7);
    // The backend evaluates 1 − β2 in f32 (1.3e-5 relative off 0.001), hence the relative
    // tolerance.
    assert_relative_eq!(
        state[1].1.to_vec().unwrap()[0],
        0.001_249_75,
        max_relative = 5e-5
    );
    assert_eq!(opt.step, 2);
}

#[test]
fn adam_groups_use_their_own_learning_rates_and_skip_params_without_gradients() {
    let a = Tensor::parameter(vec![0.0; 3], &[3], Device::Cpu).unwrap();
    let b = Tensor::parameter(vec![0.0; 3], &[3], Device::Cpu).unwrap();
    let idle = Tensor::parameter(vec![7.0], &[1], Device::Cpu).unwrap();
    // The seeds' betas.
    let mut opt = Adam::new(0.5, 0.999, 1e-8);
    opt.add_group("initial", 2e-4, vec![("a".into(), a.clone())])
        .unwrap();
    opt.add_group(
        "detail",
        5e-5,
        vec![("b".into(), b.clone()), ("idle".into(), idle.clone())],
    )
    .unwrap();
    set_grad(&a, &[1.0, -3.0, 0.25]);
    set_grad(&b, &[1.0, -3.0, 0.25]);
    opt.step().unwrap();
    // First step of Adam moves every coordinate by lr·sign(g) (m̂ = g, √v̂ = |g|).
    let (va, vb) = (a.to_vec().unwrap(), b.to_vec().unwrap());
    for (x, s) in va.iter().zip([-1.0f32, 1.0, -1.0]) {
        assert_relative_eq!(*x, s * 2e-4, max_relative = 1e-4);
    }
    for (x, s) in vb.iter().zip([-1.0f32, 1.0, -1.0]) {
        assert_relative_eq!(*x, s * 5e-5, max_relative = 1e-4);
    }
    assert_eq!(idle.to_vec().unwrap(), [7.0]);

    opt.zero_grad();
    assert!(a.grad().is_none() && b.grad().is_none());
}

#[test]
fn adam_rejects_bad_learning_rates() {
    let p = Tensor::parameter(vec![0.0], &[1], Device::Cpu).unwrap();
    let mut opt = Adam::new(0.5, 0.999, 1e-8);
    assert!(opt
        .add_group("g", 0.0, vec![("p".into(), p.clone())])
        .is_err());
    assert!(opt.add_group("g", f32::NAN, vec![("p".into(), p)]).is_err());
}

/// Mixed precision's loss scaling (PyTorch GradScaler's defaults) on the CPU: the backward is
/// seeded with the scale, a clean step is the plain Adam step on the unscaled gradient, an
/// inf/NaN gradient skips the step (weights, moments and Adam's t untouched) and halves the
/// scale, and 2000 clean steps in a row double it.
#[test]
fn loss_scaled_adam_unscales_skips_on_inf_and_grows_after_2000_clean_steps() {
    use artgan::amp::LossScaler;
    let lr = 0.01;
    let make = |scaled: bool| {
        let p = Tensor::parameter(vec![1.0, -2.0, 0.5], &[3], Device::Cpu).unwrap();
        let mut opt = Adam::new(0.5, 0.999, 1e-8);
        opt.add_group("main", lr, vec![("p".into(), p.clone())])
            .unwrap();
        if scaled {
            opt.scaler = Some(LossScaler::new(Device::Cpu).unwrap());
        }
        (p, opt)
    };
    let (plain_p, mut plain) = make(false);
    let (p, mut opt) = make(true);
    // loss = Σ p·c through each optimiser's backward (the scaled one seeds with the scale).
    let step = |p: &Tensor, opt: &mut Adam, c: &[f32]| {
        p.zero_grad();
        let c = Tensor::from_vec(c.to_vec(), &[3], Device::Cpu).unwrap();
        opt.backward(&ops::sum(&ops::mul(p, &c).unwrap()).unwrap())
            .unwrap();
        opt.step().unwrap();
    };
    let reading = |opt: &Adam| opt.scaler.as_ref().unwrap().read().unwrap();

    step(&p, &mut opt, &[0.5, -0.25, 3.0]);
    assert_eq!(
        p.grad_to_vec().unwrap().unwrap(),
        [32768.0, -16384.0, 196608.0]
    );
    step(&plain_p, &mut plain, &[0.5, -0.25, 3.0]);
    assert_eq!(p.to_vec().unwrap(), plain_p.to_vec().unwrap());
    let r = reading(&opt);
    assert_eq!((r.scale, r.skipped, r.applied), (65536.0, 0, 1));

    for bad in [f32::INFINITY, f32::NAN] {
        let before = p.to_vec().unwrap();
        let moments: Vec<Vec<f32>> = opt
            .state_tensors()
            .iter()
            .filter(|(n, _)| n.starts_with("p."))
            .map(|(_, t)| t.to_vec().unwrap())
            .collect();
        step(&p, &mut opt, &[0.1, bad, 0.1]);
        assert_eq!(
            p.to_vec().unwrap(),
            before,
            "a step with {bad} moved the weights"
        );
        let after: Vec<Vec<f32>> = opt
            .state_tensors()
            .iter()
            .filter(|(n, _)| n.starts_with("p."))
            .map(|(_, t)| t.to_vec().unwrap())
            .collect();
        assert_eq!(after, moments, "a step with {bad} moved Adam's moments");
    }
    let r = reading(&opt);
    assert_eq!((r.scale, r.skipped, r.applied), (16384.0, 2, 1));

    // The next clean step is Adam's step 2 (its bias corrections), as in the plain optimiser.
    step(&p, &mut opt, &[-1.0, 0.5, 0.25]);
    step(&plain_p, &mut plain, &[-1.0, 0.5, 0.25]);
    assert_eq!(p.to_vec().unwrap(), plain_p.to_vec().unwrap());
    assert_eq!(opt.step, 4, "host count: steps attempted");

    // 2000 clean steps since the last skip double the scale (once).
    for i in 1..1999 {
        step(&p, &mut opt, &[0.01, -0.02, 0.03]);
        assert_eq!(
            reading(&opt).scale,
            16384.0,
            "grew early, after {} clean steps",
            i + 1
        );
    }
    step(&p, &mut opt, &[0.01, -0.02, 0.03]);
    let r = reading(&opt);
    assert_eq!((r.scale, r.skipped, r.applied), (32768.0, 2, 2001));
    // Saved with the moments (the optimiser's checkpoint file).
    let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"amp.loss_scale".to_string()), "{names:?}");
    assert!(
        names.contains(&"amp.loss_scale_counters".to_string()),
        "{names:?}"
    );
}
