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
    assert_relative_eq!(p.to_vec().unwrap()[0], 0.936_610_35, epsilon = 2e-6);
    let state = opt.state_tensors();
    assert_eq!(state[0].0, "p.exp_avg");
    assert_eq!(state[1].0, "p.exp_avg_sq");
    assert_relative_eq!(state[0].1.to_vec().unwrap()[0], -0.055, epsilon = 1e-7);
    assert_relative_eq!(
        state[1].1.to_vec().unwrap()[0],
        0.001_249_75,
        epsilon = 1e-9
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
