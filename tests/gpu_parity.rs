//! Every CUDA backend method against the plain reference backend, on random inputs (never zeros) of
//! several shapes including odd sizes.
//!
//! Without a usable GPU each test prints `skipped: <reason>` and passes; with
//! `ARTGAN_REQUIRE_GPU=1` a missing GPU fails it. Outputs are poisoned: the helper turns on
//! `ARTGAN_POISON=1`, so the CUDA allocator fills every buffer it hands out with NaN, and an
//! element a kernel forgets to write fails the comparison.
//!
//! Error bound used throughout: |gpu - cpu| <= atol + rtol * |cpu| per element, stated per test.
//! Run with `--nocapture` to see the worst element of every comparison.

use artgan::backend::{
    backend, loss_scale, Activation, AdamHyper, AdamItem, AdamStep, Backend, BatchNormAct,
    ChannelDims, ConvGeom, ConvImpl, Device, Storage,
};
use artgan::rng::{self, Rng};
use std::rc::Rc;

mod common;
use common::emulated_host_syncs;

/// The cases of a parity loop: all of them, or with `ARTGAN_PARITY_ONE_SHAPE=1` only the
/// last case of each list (its largest), so slow runs such as compute-sanitizer's
/// still launch every kernel once (`gpu-carry/run.sh` sets it for its sanitizer passes).
fn shapes<T: Clone>(all: impl AsRef<[T]>) -> Vec<T> {
    let all = all.as_ref();
    if std::env::var("ARTGAN_PARITY_ONE_SHAPE").is_ok_and(|v| v == "1") {
        all.last().cloned().into_iter().collect()
    } else {
        all.to_vec()
    }
}

/// The GPU backend, or `None` (after printing why) when there is none and it is not required.
fn gpu() -> Option<Rc<dyn Backend>> {
    // Must be set before this thread's backend is created (backends are per thread). The
    // runner (gpu-carry/run.sh) exports it already; setting it only when absent avoids
    // touching the environment while other test threads read it.
    if std::env::var_os("ARTGAN_POISON").is_none() {
        std::env::set_var("ARTGAN_POISON", "1");
    }
    let device = common::gpu_device()?;
    Some(backend(device).expect("the CUDA backend worked a moment ago"))
}

/// The oracle: the plain reference backend (not the fast CPU one, which is tested against the
/// same reference in tests/cpu_fast.rs).
fn cpu() -> Rc<dyn Backend> {
    artgan::backend::reference::backend()
}

/// Uniform in [-scale, scale], with exact zeros replaced (zeros hide sign and mask bugs).
fn rand(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    rng.uniform_vec(len, -scale, scale)
        .into_iter()
        .map(|x| if x == 0.0 { 0.5 * scale } else { x })
        .collect()
}

fn positive(rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    rng.uniform_vec(len, lo, hi)
}

fn up(b: &Rc<dyn Backend>, v: &[f32]) -> Storage {
    b.upload(v).expect("upload")
}

/// The values of `s` (an f16 tensor's widened, exactly).
fn down(b: &Rc<dyn Backend>, s: &Storage) -> Vec<f32> {
    match s.dtype() {
        artgan::backend::DType::F32 => b.download(s).expect("download"),
        artgan::backend::DType::F16 => {
            let h = b.download_f16(s).expect("download f16");
            h.iter().map(|v| v.to_f32()).collect()
        }
    }
}

/// Asserts |g - c| <= atol + rtol * |c| everywhere and prints the worst element.
fn close(what: &str, g: &[f32], c: &[f32], rtol: f32, atol: f32) {
    assert_eq!(
        g.len(),
        c.len(),
        "{what}: length {} vs {}",
        g.len(),
        c.len()
    );
    let mut worst = (0usize, 0.0f32);
    let mut bad = 0usize;
    let mut first_bad = None;
    for (i, (&gv, &cv)) in g.iter().zip(c).enumerate() {
        let err = (gv - cv).abs();
        let ratio = if err.is_nan() || gv.is_nan() != cv.is_nan() {
            f32::INFINITY
        } else {
            err / (atol + rtol * cv.abs())
        };
        if ratio > worst.1 || (i == 0 && ratio.is_infinite()) {
            worst = (i, ratio);
        }
        if ratio > 1.0 || gv.is_nan() {
            bad += 1;
            first_bad.get_or_insert(i);
        }
    }
    let (i, r) = worst;
    let msg = if g.is_empty() {
        format!("{what}: empty")
    } else {
        format!(
            "{what}: n={} worst [{i}] gpu={:e} cpu={:e} (err/bound {r:.3}; rtol {rtol:e}, atol {atol:e}); {bad} out of bound{}",
            g.len(),
            g[i],
            c[i],
            first_bad.map_or(String::new(), |f| format!(", first at [{f}] gpu={:e} cpu={:e}", g[f], c[f]))
        )
    };
    println!("{msg}");
    assert_eq!(bad, 0, "{msg}");
}

/// Magnitude-scaled absolute tolerance: `k` times the RMS of the reference.
fn rms_tol(c: &[f32], k: f32) -> f32 {
    let ms = c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / c.len().max(1) as f64;
    (ms.sqrt() as f32).max(1e-30) * k
}

/// An empty batch: the filter gradient is zero on both backends and both conv impls (the GPU
/// used to return the uninitialised buffer: the chunk loop never ran, and cuDNN rejects n = 0).
#[test]
fn conv2d_empty_batch_gives_zero_gradients() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    for imp in [ConvImpl::Own, ConvImpl::Cudnn] {
        for geom in [
            ConvGeom::conv(0, 3, 9, 7, 5, 3, 2, 1).unwrap(),
            ConvGeom::transposed(0, 4, 3, 3, 2, 4, 2, 1, 0).unwrap(),
        ] {
            let geom = ConvGeom {
                conv_impl: imp,
                ..geom
            };
            let x: Vec<f32> = Vec::new();
            let dy: Vec<f32> = Vec::new();
            let gw = g
                .conv2d_backward_filter(&up(&g, &x), &up(&g, &dy), &geom)
                .unwrap();
            let cw = c
                .conv2d_backward_filter(&up(&c, &x), &up(&c, &dy), &geom)
                .unwrap();
            let (gw, cw) = (down(&g, &gw), down(&c, &cw));
            assert_eq!(gw.len(), geom.weight_len());
            assert!(cw.iter().all(|&v| v == 0.0), "{imp:?}: cpu {cw:?}");
            assert!(gw.iter().all(|&v| v == 0.0), "{imp:?}: gpu {gw:?}");
        }
    }
}

/// One value per channel in training mode: both backends refuse, as PyTorch does (the CPU used
/// to store running_var = 0/0 = NaN, the GPU the biased 0).
#[test]
fn batch_norm_train_with_one_value_per_channel_is_an_error() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let d = ChannelDims { n: 1, c: 3, hw: 1 };
    for b in [&g, &c] {
        let (mut rm, mut rv) = (up(b, &[0.1; 3]), up(b, &[1.0; 3]));
        let e = b
            .batch_norm_train(
                &up(b, &[0.5, -1.0, 2.0]),
                &up(b, &[1.0; 3]),
                &up(b, &[0.0; 3]),
                &mut rm,
                &mut rv,
                d,
                0.1,
                1e-5,
            )
            .err()
            .expect("one value per channel must be refused");
        let msg = format!("{e:#}");
        assert!(msg.contains("more than one value per channel"), "{msg}");
        // Nothing was updated.
        assert_eq!(down(b, &rv), vec![1.0; 3]);
    }
}

#[test]
fn memory_upload_download_zeros_full_copy() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(1);
    for len in shapes([1usize, 7, 1000, 65_537]) {
        let v = rand(&mut rng, len, 3.0);
        let s = up(&g, &v);
        assert_eq!(down(&g, &s), v, "upload/download len {len}");
        assert_eq!(down(&g, &g.copy(&s).unwrap()), v, "copy len {len}");
        assert_eq!(down(&g, &g.zeros(len).unwrap()), vec![0.0; len], "zeros");
        assert_eq!(
            down(&g, &g.full(len, -2.5).unwrap()),
            vec![-2.5; len],
            "full"
        );
    }
    assert!(down(&g, &g.zeros(0).unwrap()).is_empty());
}

#[test]
fn elementwise_add_mul_scale_add_assign() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(2);
    for len in shapes([1usize, 31, 257, 100_003]) {
        let a = rand(&mut rng, len, 2.0);
        let b = rand(&mut rng, len, 2.0);
        let (ga, gb, ca, cb) = (up(&g, &a), up(&g, &b), up(&c, &a), up(&c, &b));
        let t = format!("len {len}");
        close(
            &format!("add {t}"),
            &down(&g, &g.add(&ga, &gb).unwrap()),
            &down(&c, &c.add(&ca, &cb).unwrap()),
            1e-6,
            0.0,
        );
        close(
            &format!("mul {t}"),
            &down(&g, &g.mul(&ga, &gb).unwrap()),
            &down(&c, &c.mul(&ca, &cb).unwrap()),
            1e-6,
            0.0,
        );
        close(
            &format!("scale {t}"),
            &down(&g, &g.scale(&ga, -0.37).unwrap()),
            &down(&c, &c.scale(&ca, -0.37).unwrap()),
            1e-6,
            0.0,
        );
        let (mut gacc, mut cacc) = (g.copy(&ga).unwrap(), c.copy(&ca).unwrap());
        g.add_assign(&mut gacc, &gb).unwrap();
        c.add_assign(&mut cacc, &cb).unwrap();
        close(
            &format!("add_assign {t}"),
            &down(&g, &gacc),
            &down(&c, &cacc),
            1e-6,
            0.0,
        );
    }
}

#[test]
fn elementwise_scale_by_scalar() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(3);
    for len in shapes([1usize, 129, 40_000]) {
        let a = rand(&mut rng, len, 2.0);
        let s = [1.7f32];
        let gy = g.scale_by_scalar(&up(&g, &a), &up(&g, &s), -0.5).unwrap();
        let cy = c.scale_by_scalar(&up(&c, &a), &up(&c, &s), -0.5).unwrap();
        close(
            &format!("scale_by_scalar len {len}"),
            &down(&g, &gy),
            &down(&c, &cy),
            1e-6,
            0.0,
        );
    }
}

#[test]
fn elementwise_reciprocal_is_ieee_division() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(31);
    for len in shapes([1usize, 127, 40_001]) {
        // Away from 0, both signs, several binades.
        let a: Vec<f32> = rand(&mut rng, len, 3.0)
            .iter()
            .map(|v| v + v.signum() * 0.01)
            .collect();
        let gy = down(&g, &g.reciprocal(&up(&g, &a)).unwrap());
        let cy = down(&c, &c.reciprocal(&up(&c, &a)).unwrap());
        close(&format!("reciprocal len {len}"), &gy, &cy, 0.0, 0.0);
    }
}

/// Spectral norm inside a training step keeps sigma on the device: its forward and backward
/// make the host wait for nothing (it used to download sigma to invert it).
#[test]
fn spectral_norm_does_not_wait_for_the_device() {
    if gpu().is_none() {
        return;
    }
    use artgan::ops;
    use artgan::tensor::Tensor;
    let dev = Device::Cuda(0);
    let mut rng = Rng::new(32);
    let (rows, cols) = (16usize, 27usize);
    let w = Tensor::parameter(rand(&mut rng, rows * cols, 1.0), &[rows, 3, 3, 3], dev).unwrap();
    let u = Tensor::from_vec(rand(&mut rng, rows, 1.0), &[rows], dev).unwrap();
    let v = Tensor::from_vec(rand(&mut rng, cols, 1.0), &[cols], dev).unwrap();
    let before = emulated_host_syncs();
    let y = ops::spectral_norm_weight(&w, &u, &v, rows, true, 1e-12).unwrap();
    ops::sum(&y).unwrap().backward().unwrap();
    let after = emulated_host_syncs();
    let pooled = !std::env::var("ARTGAN_CUDA_POOL").is_ok_and(|v| v == "off");
    match (before, after) {
        // Without the pool (the memory-checker mode) every free is a cuMemFree, which waits.
        (Some(_), Some(_)) if !pooled => {
            println!("ARTGAN_CUDA_POOL=off: frees wait for the device; host waits not checked")
        }
        (Some(b), Some(a)) => assert_eq!(a, b, "spectral norm made the host wait {} times", a - b),
        _ => println!("host waits are counted only on the emulated device; ran without counting"),
    }
    assert!(w
        .grad_to_vec()
        .unwrap()
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
}

#[test]
fn activations_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(4);
    let acts = [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Tanh,
        Activation::Sigmoid,
    ];
    for len in shapes([1usize, 33, 70_001]) {
        let x = rand(&mut rng, len, 4.0);
        let dy = rand(&mut rng, len, 1.0);
        for act in acts {
            let (gx, cx) = (up(&g, &x), up(&c, &x));
            let gy = g.activation(act, &gx).unwrap();
            let cy = c.activation(act, &cx).unwrap();
            // tanhf/expf are within a few ulp of the CPU's libm.
            close(
                &format!("{act:?} forward len {len}"),
                &down(&g, &gy),
                &down(&c, &cy),
                1e-5,
                1e-7,
            );
            // Backward from the same y on both sides, so only the backward formula is compared.
            let y = down(&c, &cy);
            let gdx = g
                .activation_backward(act, &gx, &up(&g, &y), &up(&g, &dy))
                .unwrap();
            let cdx = c
                .activation_backward(act, &cx, &up(&c, &y), &up(&c, &dy))
                .unwrap();
            close(
                &format!("{act:?} backward len {len}"),
                &down(&g, &gdx),
                &down(&c, &cdx),
                1e-5,
                1e-7,
            );
        }
    }
}

/// GLU over channels: odd channel counts and sizes, the `[N, 2C]` case (hw 1) and a larger one.
/// Both sides compute σ(b) (expf against libm's exp, a few ulp) then multiply in the same order
/// with one rounding each; the backward's `1 − σ(b)` loses up to 6 bits at |b| ≤ 4 (σ ≤ 0.982),
/// so it gets 2e-5 where the forward gets 1e-5.
#[test]
fn glu_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(1601);
    for (n, ch, hw) in shapes([(1usize, 1usize, 1usize), (3, 5, 7), (4, 3, 1), (2, 9, 1025)]) {
        let d = ChannelDims { n, c: ch, hw };
        let x = rand(&mut rng, 2 * d.len(), 4.0);
        let dy = rand(&mut rng, d.len(), 1.0);
        let gy = g.glu(&up(&g, &x), d).unwrap();
        let cy = c.glu(&up(&c, &x), d).unwrap();
        close(
            &format!("glu {d:?}"),
            &down(&g, &gy),
            &down(&c, &cy),
            1e-5,
            1e-7,
        );
        let gdx = g.glu_backward(&up(&g, &x), &up(&g, &dy), d).unwrap();
        let cdx = c.glu_backward(&up(&c, &x), &up(&c, &dy), d).unwrap();
        close(
            &format!("glu dx {d:?}"),
            &down(&g, &gdx),
            &down(&c, &cdx),
            2e-5,
            1e-7,
        );
    }
    // A gradient of the wrong length is an error on both, not a read past its end.
    let d = ChannelDims { n: 2, c: 3, hw: 5 };
    let x = rand(&mut rng, 2 * d.len(), 1.0);
    let short = rand(&mut rng, d.len() - 1, 1.0);
    for be in [&g, &c] {
        let e = be
            .glu_backward(&up(be, &x), &up(be, &short), d)
            .err()
            .expect("a short dy");
        assert!(
            e.to_string()
                .starts_with("glu_backward: 60 input values and 29 gradient"),
            "{e}"
        );
    }
}

#[test]
fn reductions_sum_rows_and_broadcast_rows() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(5);
    for (rows, cols) in shapes([
        (1usize, 1usize),
        (7, 13),
        (64, 1000),
        (3, 70_000),
        (1000, 3),
    ]) {
        let x = rand(&mut rng, rows * cols, 1.0);
        let gs = g.sum_rows(&up(&g, &x), rows, cols, 0.5).unwrap();
        let cs = c.sum_rows(&up(&c, &x), rows, cols, 0.5).unwrap();
        let cv = down(&c, &cs);
        // Summation order differs (tree vs sequential): bound by sqrt(cols) ulps of the terms.
        close(
            &format!("sum_rows {rows}x{cols}"),
            &down(&g, &gs),
            &cv,
            1e-5,
            1e-6 * (cols as f32).sqrt(),
        );
        let r = rand(&mut rng, rows, 1.0);
        let gb = g.broadcast_rows(&up(&g, &r), rows, cols, -2.0).unwrap();
        let cb = c.broadcast_rows(&up(&c, &r), rows, cols, -2.0).unwrap();
        close(
            &format!("broadcast_rows {rows}x{cols}"),
            &down(&g, &gb),
            &down(&c, &cb),
            1e-6,
            0.0,
        );
    }
}

#[test]
fn reductions_add_channel_bias_and_channel_sum() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(6);
    for (n, ch, hw) in shapes([
        (1usize, 1usize, 1usize),
        (3, 5, 7),
        (64, 3, 4096),
        (2, 512, 16),
    ]) {
        let d = ChannelDims { n, c: ch, hw };
        let y = rand(&mut rng, d.len(), 1.0);
        let b = rand(&mut rng, ch, 1.0);
        let gy = g.add_channel_bias(&up(&g, &y), &up(&g, &b), d).unwrap();
        let cy = c.add_channel_bias(&up(&c, &y), &up(&c, &b), d).unwrap();
        close(
            &format!("add_channel_bias {d:?}"),
            &down(&g, &gy),
            &down(&c, &cy),
            1e-6,
            0.0,
        );
        let gs = g.channel_sum(&up(&g, &y), d).unwrap();
        let cs = c.channel_sum(&up(&c, &y), d).unwrap();
        close(
            &format!("channel_sum {d:?}"),
            &down(&g, &gs),
            &down(&c, &cs),
            1e-5,
            1e-6 * ((n * hw) as f32).sqrt(),
        );
    }
}

/// (n, c_in, h, w, c_out, k, stride, pad): odd sizes, stride 1/2, pad 0/1, 1x1 outputs.
/// (n, c_in, h, w, c_out, k, stride, pad).
type ConvShape = (usize, usize, usize, usize, usize, usize, usize, usize);

const CONV_SHAPES: &[ConvShape] = &[
    (2, 3, 9, 9, 4, 3, 1, 1),
    (3, 5, 17, 17, 7, 4, 2, 1),
    (1, 1, 5, 5, 1, 1, 1, 0),
    (5, 3, 13, 11, 6, 3, 2, 0),
    (4, 8, 16, 16, 16, 4, 2, 1),
    (2, 16, 4, 4, 8, 4, 1, 0),
    (3, 64, 8, 8, 32, 4, 2, 1),
];

fn conv_case(g: &Rc<dyn Backend>, c: &Rc<dyn Backend>, geom: &ConvGeom, rng: &mut Rng, tag: &str) {
    let x = rand(rng, geom.input_len(), 1.0);
    let w = rand(rng, geom.weight_len(), 0.5);
    let dy = rand(rng, geom.output_len(), 1.0);
    // Sums of K products: bound relative to the output's RMS, growing with sqrt(K).
    let k = (geom.c_in * geom.kh * geom.kw) as f32;
    let (gx, gw, gdy) = (up(g, &x), up(g, &w), up(g, &dy));
    let (cx, cw, cdy) = (up(c, &x), up(c, &w), up(c, &dy));

    let cy = down(c, &c.conv2d_forward(&cx, &cw, geom).unwrap());
    let gy = down(g, &g.conv2d_forward(&gx, &gw, geom).unwrap());
    close(
        &format!("conv2d_forward {tag} {geom:?}"),
        &gy,
        &cy,
        1e-4,
        rms_tol(&cy, 1e-5 * k.sqrt()),
    );

    let cdx = down(c, &c.conv2d_backward_data(&cdy, &cw, geom).unwrap());
    let gdx = down(g, &g.conv2d_backward_data(&gdy, &gw, geom).unwrap());
    let kd = (geom.c_out * geom.kh * geom.kw) as f32;
    close(
        &format!("conv2d_backward_data {tag} {geom:?}"),
        &gdx,
        &cdx,
        1e-4,
        rms_tol(&cdx, 1e-5 * kd.sqrt()),
    );

    let cdw = down(c, &c.conv2d_backward_filter(&cx, &cdy, geom).unwrap());
    let gdw = down(g, &g.conv2d_backward_filter(&gx, &gdy, geom).unwrap());
    let kf = (geom.n * geom.oh * geom.ow) as f32;
    close(
        &format!("conv2d_backward_filter {tag} {geom:?}"),
        &gdw,
        &cdw,
        1e-4,
        rms_tol(&cdw, 1e-5 * kf.sqrt()),
    );
}

#[test]
fn conv2d_forward_backward_data_backward_filter_both_impls() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    for imp in [ConvImpl::Own, ConvImpl::Cudnn] {
        let mut rng = Rng::new(7);
        for (n, ci, h, w, co, k, s, p) in shapes(CONV_SHAPES) {
            let geom = ConvGeom {
                conv_impl: imp,
                ..ConvGeom::conv(n, ci, h, w, co, k, s, p).unwrap()
            };
            conv_case(&g, &c, &geom, &mut rng, &format!("{imp:?}"));
        }
    }
}

#[test]
fn conv_transpose2d_geometries_both_impls() {
    // conv_transpose2d runs as conv2d_backward_data of the transposed geometry (and its
    // backward as conv2d_forward / backward_filter): the DCGAN generator's shapes.
    let Some(g) = gpu() else { return };
    let c = cpu();
    // (n, c_in, h, w, c_out, k, stride, pad, output_padding)
    let shapes_all = [
        (
            2usize, 16usize, 1usize, 1usize, 8usize, 4usize, 1usize, 0usize, 0usize,
        ),
        (3, 8, 4, 4, 4, 4, 2, 1, 0),
        (2, 5, 7, 7, 3, 4, 2, 1, 0),
        (2, 4, 5, 5, 3, 3, 2, 1, 1),
    ];
    for imp in [ConvImpl::Own, ConvImpl::Cudnn] {
        let mut rng = Rng::new(8);
        for (n, ci, h, w, co, k, s, p, op) in shapes(shapes_all) {
            let geom = ConvGeom {
                conv_impl: imp,
                ..ConvGeom::transposed(n, ci, h, w, co, k, s, p, op).unwrap()
            };
            conv_case(&g, &c, &geom, &mut rng, &format!("{imp:?} transposed"));
        }
    }
}

/// Batch norm, plain (`BatchNormAct::None`: the plain trait methods) and fused with ReLU /
/// LeakyReLU, training and eval, forward and backward, against the reference. Eval and the
/// backward run from the CPU's statistics on both sides, so both recompute the same
/// pre-activations (same f32 formula, no FMA) and take the same activation mask.
#[test]
fn batch_norm_forward_and_backward_plain_and_fused() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(9);
    for (n, ch, hw) in shapes([
        (2usize, 3usize, 5usize),
        (5, 37, 7),
        (8, 1024, 1),
        (3, 70, 99),
        (64, 16, 16),
        (4, 3, 4096),
    ]) {
        for act in [
            BatchNormAct::None,
            BatchNormAct::Relu,
            BatchNormAct::LeakyRelu(0.2),
        ] {
            let plain = act == BatchNormAct::None;
            let d = ChannelDims { n, c: ch, hw };
            // An offset mean makes a one-pass variance visibly wrong.
            let x: Vec<f32> = rand(&mut rng, d.len(), 1.0)
                .iter()
                .map(|v| v * 2.0 + 3.0)
                .collect();
            let gamma = positive(&mut rng, ch, 0.5, 1.5);
            // Shifts of both signs, so both sides of the kink are well populated.
            let beta = rand(&mut rng, ch, 1.0);
            let rm0: Vec<f32> = rand(&mut rng, ch, 0.5).iter().map(|v| v + 3.0).collect();
            let rv0 = positive(&mut rng, ch, 0.5, 2.0);
            let dy = rand(&mut rng, d.len(), 1.0);
            let t = format!("{d:?} {act:?}");
            let (mut grm, mut grv) = (up(&g, &rm0), up(&g, &rv0));
            let (mut crm, mut crv) = (up(&c, &rm0), up(&c, &rv0));
            let train = |b: &Rc<dyn Backend>, rm: &mut Storage, rv: &mut Storage| {
                let (x, ga, be) = (up(b, &x), up(b, &gamma), up(b, &beta));
                if plain {
                    b.batch_norm_train(&x, &ga, &be, rm, rv, d, 0.1, 1e-5)
                } else {
                    b.batch_norm_act_train(&x, &ga, &be, rm, rv, d, 0.1, 1e-5, act)
                }
                .unwrap()
            };
            let gs = train(&g, &mut grm, &mut grv);
            let cs = train(&c, &mut crm, &mut crv);
            let pairs = [
                ("y", &gs.y, &cs.y, 1e-4, 1e-4),
                ("mean", &gs.mean, &cs.mean, 1e-5, 1e-5),
                ("invstd", &gs.invstd, &cs.invstd, 1e-4, 0.0),
                ("running_mean", &grm, &crm, 1e-5, 1e-6),
                ("running_var", &grv, &crv, 1e-4, 1e-6),
            ];
            for (name, gv, cv, rtol, atol) in pairs {
                let what = format!("batch_norm train {name} {t}");
                close(&what, &down(&g, gv), &down(&c, cv), rtol, atol);
            }

            // Eval from the same running statistics (the CPU's) on both sides.
            let (rm, rv) = (down(&c, &crm), down(&c, &crv));
            let eval = |b: &Rc<dyn Backend>| {
                let (x, ga, be) = (up(b, &x), up(b, &gamma), up(b, &beta));
                let (rm, rv) = (up(b, &rm), up(b, &rv));
                if plain {
                    let y = b.batch_norm_eval(&x, &ga, &be, &rm, &rv, d, 1e-5).unwrap();
                    (down(b, &y), Vec::new(), Vec::new())
                } else {
                    let s = b
                        .batch_norm_act_eval(&x, &ga, &be, &rm, &rv, d, 1e-5, act)
                        .unwrap();
                    (down(b, &s.y), down(b, &s.mean), down(b, &s.invstd))
                }
            };
            let ((gy, gmean, ginv), (cy, cmean, cinv)) = (eval(&g), eval(&c));
            close(&format!("batch_norm eval y {t}"), &gy, &cy, 1e-4, 1e-4);
            close(
                &format!("batch_norm eval invstd {t}"),
                &ginv,
                &cinv,
                1e-6,
                0.0,
            );
            assert_eq!(gmean, cmean, "eval mean {t}");

            let m = ((n * hw) as f32).sqrt();
            // The plain eval's backward is composed of other ops (ops/batchnorm.rs); the
            // kernels' eval form is still run here, without an activation.
            let eval_invstd = if plain {
                rv.iter().map(|v| 1.0 / (v + 1e-5f32).sqrt()).collect()
            } else {
                cinv
            };
            let stats = [
                ("train", down(&c, &cs.mean), down(&c, &cs.invstd)),
                ("eval", rm.clone(), eval_invstd),
            ];
            for (mode, mean, invstd) in stats {
                let batch_stats = mode == "train";
                let backward = |b: &Rc<dyn Backend>| {
                    let (x, dy, ga, be) = (up(b, &x), up(b, &dy), up(b, &gamma), up(b, &beta));
                    let (mean, invstd) = (up(b, &mean), up(b, &invstd));
                    let (dx, dg, db) = if plain && batch_stats {
                        b.batch_norm_backward(&x, &dy, &ga, &mean, &invstd, d)
                    } else {
                        b.batch_norm_act_backward(
                            &x,
                            &dy,
                            &ga,
                            &be,
                            &mean,
                            &invstd,
                            d,
                            act,
                            batch_stats,
                        )
                    }
                    .unwrap();
                    [down(b, &dx), down(b, &dg), down(b, &db)]
                };
                let ([gdx, gdg, gdb], [cdx, cdg, cdb]) = (backward(&g), backward(&c));
                let w = format!("batch_norm backward {mode} {t}");
                close(&format!("{w} dbeta"), &gdb, &cdb, 1e-5, 1e-6 * m);
                close(&format!("{w} dgamma"), &gdg, &cdg, 1e-4, 1e-5 * m);
                close(&format!("{w} dx"), &gdx, &cdx, 1e-3, rms_tol(&cdx, 1e-4));
            }
        }
    }
}

/// FNV-1a of the bits of every batch-norm output (plain and fused, forward and backward) for
/// shapes whose channel groups outnumber the blocks: the grid strides.
fn batch_norm_output_hash(g: &Rc<dyn Backend>) -> (usize, u64) {
    let mut rng = Rng::new(92);
    let mut bits = Vec::new();
    for (n, ch, hw) in [(3usize, 300usize, 9usize), (2, 41, 1000), (64, 5, 64)] {
        let d = ChannelDims { n, c: ch, hw };
        let x = rand(&mut rng, d.len(), 2.0);
        let dy = rand(&mut rng, d.len(), 1.0);
        let gamma = positive(&mut rng, ch, 0.5, 1.5);
        let beta = rand(&mut rng, ch, 1.0);
        let (gx, gdy, gg, gb) = (up(g, &x), up(g, &dy), up(g, &gamma), up(g, &beta));
        for act in [BatchNormAct::None, BatchNormAct::LeakyRelu(0.2)] {
            let (mut rm, mut rv) = (up(g, &vec![0.0; ch]), up(g, &vec![1.0; ch]));
            let s = g
                .batch_norm_act_train(&gx, &gg, &gb, &mut rm, &mut rv, d, 0.1, 1e-5, act)
                .unwrap();
            let (dx, dgamma, dbeta) = g
                .batch_norm_act_backward(&gx, &gdy, &gg, &gb, &s.mean, &s.invstd, d, act, true)
                .unwrap();
            for out in [&s.y, &s.mean, &s.invstd, &rm, &rv, &dx, &dgamma, &dbeta] {
                bits.extend(down(g, out).iter().map(|v| v.to_bits()));
            }
        }
    }
    let hash = bits.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (bits.len(), hash)
}

/// The per-channel reductions sum in an order fixed by the channel's size, not by the grid:
/// the same outputs, bit for bit, on devices with 1, 2 (this process) and 5 SMs (the emulated
/// device's `ARTGAN_EMU_SMS`; the backend caps the grid at 16 blocks per SM). Children run
/// this test again with the other SM count; on a real GPU the knob does nothing.
#[test]
fn batch_norm_outputs_do_not_depend_on_the_grid_size() {
    let Some(g) = gpu() else { return };
    let (len, hash) = batch_norm_output_hash(&g);
    let line = format!("batch norm outputs: {len} values, hash {hash:016x}");
    println!("{line}");
    if std::env::var_os("ARTGAN_BN_GRID_CHILD").is_some() {
        let sms = cudarc::driver::CudaContext::new(0)
            .unwrap()
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .unwrap();
        println!("SMs: {sms}");
        return;
    }
    let emulated = artgan::backend::cuda::device_name(0).contains("emulated");
    for sms in ["1", "5"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "batch_norm_outputs_do_not_depend_on_the_grid_size",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("ARTGAN_EMU_SMS", sms)
            .env("ARTGAN_BN_GRID_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child with {sms} SMs failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if emulated {
            assert!(
                text.contains(&format!("SMs: {sms}\n")),
                "the SM count did not take: {text}"
            );
        }
        assert!(
            text.contains(&line),
            "with {sms} SMs the outputs differ: {text}"
        );
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Also at an offset `first` into the whole batch's draw (a part on one GPU of several): the
/// mask is then exactly elements `first..` of the whole's.
#[test]
fn dropout_mask_exactly_matches_rng_formula_and_cpu() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    for (len, p, seed, first) in shapes([
        (1usize, 0.3f32, 1u64, 0u64),
        (1001, 0.5, 42, 3003),
        (100_000, 0.3, u64::MAX - 3, 7),
    ]) {
        let gm = down(&g, &g.dropout_mask(len, p, seed, first).unwrap());
        let want: Vec<f32> = (first..first + len as u64)
            .map(|i| rng::dropout_value_at(seed, i, p))
            .collect();
        let first_diff = gm
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            first_diff.is_none(),
            "dropout_mask len {len} p {p} seed {seed} first {first}: first difference at {first_diff:?}"
        );
        assert_eq!(
            gm,
            down(&c, &c.dropout_mask(len, p, seed, first).unwrap()),
            "vs CPU backend"
        );
        // The graph form reads the seed from the device (the argument is another seed here,
        // to show it is not the one used): the same bits.
        let values = up(&g, &artgan::backend::seed_values(seed, 0.0));
        let by = down(
            &g,
            &g.dropout_mask_by(len, p, seed.wrapping_add(1), first, &values)
                .unwrap(),
        );
        assert!(
            bits(&by) == bits(&gm),
            "dropout_mask_by len {len} p {p} seed {seed}"
        );
        let kept = gm.iter().filter(|&&v| v > 0.0).count();
        println!("dropout_mask len {len} p {p} first {first}: exact; kept {kept}");
    }
}

#[test]
fn gaussian_noise_matches_rng_formula_and_cpu() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(10);
    for (len, std, seed, first) in shapes([
        (1usize, 0.1f32, 3u64, 0u64),
        (777, 1.0, 9, 1554),
        (200_000, 0.05, 1 << 40, 11),
    ]) {
        let x = rand(&mut rng, len, 1.0);
        let gy = down(
            &g,
            &g.add_gaussian_noise(&up(&g, &x), std, seed, first).unwrap(),
        );
        let want: Vec<f32> = (0..len)
            .map(|i| x[i] + std * rng::normal_at(seed, first + i as u64))
            .collect();
        // logf/cosf on the GPU vs the CPU's libm: a few ulp of the noise term.
        close(
            &format!("gaussian_noise vs rng len {len} first {first}"),
            &gy,
            &want,
            1e-6,
            4e-7 * std * 5.0,
        );
        // The graph form reads seed and std from the device (other arguments here, to show
        // they are not the ones used): the same bits.
        let values = up(&g, &artgan::backend::seed_values(seed, std));
        let x_dev = up(&g, &x);
        let by = down(
            &g,
            &g.add_gaussian_noise_by(&x_dev, std * 2.0, seed.wrapping_add(1), first, &values)
                .unwrap(),
        );
        assert!(bits(&by) == bits(&gy), "gaussian_noise_by len {len}");
        let cy = down(
            &c,
            &c.add_gaussian_noise(&up(&c, &x), std, seed, first).unwrap(),
        );
        close(
            &format!("gaussian_noise vs cpu len {len}"),
            &gy,
            &cy,
            1e-6,
            4e-7 * std * 5.0,
        );
    }
}

#[test]
fn spectral_norm_sigma_u_v_and_backward() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(11);
    for (rows, cols) in shapes([(1usize, 1usize), (3, 7), (64, 48), (512, 4096), (1, 8192)]) {
        let w = rand(&mut rng, rows * cols, 0.1);
        let u0 = rand(&mut rng, rows, 1.0);
        let v0 = rand(&mut rng, cols, 1.0);
        let (gw, cw) = (up(&g, &w), up(&c, &w));
        let (mut gu, mut gv) = (up(&g, &u0), up(&g, &v0));
        let (mut cu, mut cv) = (up(&c, &u0), up(&c, &v0));
        let t = format!("{rows}x{cols}");
        for (step, update) in [(0, true), (1, true), (2, false)] {
            let gs = g
                .spectral_norm_sigma(&gw, &mut gu, &mut gv, rows, cols, 1e-12, update)
                .unwrap();
            let cs = c
                .spectral_norm_sigma(&cw, &mut cu, &mut cv, rows, cols, 1e-12, update)
                .unwrap();
            close(
                &format!("spectral_norm sigma {t} step {step}"),
                &down(&g, &gs),
                &down(&c, &cs),
                1e-4,
                0.0,
            );
            close(
                &format!("spectral_norm u {t} step {step}"),
                &down(&g, &gu),
                &down(&c, &cu),
                1e-3,
                1e-5,
            );
            close(
                &format!("spectral_norm v {t} step {step}"),
                &down(&g, &gv),
                &down(&c, &cv),
                1e-3,
                1e-5,
            );
        }
        // Backward with identical u, v, sigma on both sides.
        let (uu, vv) = (down(&c, &cu), down(&c, &cv));
        let sigma = down(
            &c,
            &c.spectral_norm_sigma(&cw, &mut cu, &mut cv, rows, cols, 1e-12, false)
                .unwrap(),
        );
        let grad = rand(&mut rng, rows * cols, 1.0);
        let gd = g
            .spectral_norm_backward(
                &gw,
                &up(&g, &grad),
                &up(&g, &uu),
                &up(&g, &vv),
                &up(&g, &sigma),
                rows,
                cols,
            )
            .unwrap();
        let cd = c
            .spectral_norm_backward(
                &cw,
                &up(&c, &grad),
                &up(&c, &uu),
                &up(&c, &vv),
                &up(&c, &sigma),
                rows,
                cols,
            )
            .unwrap();
        let cdv = down(&c, &cd);
        // dW = g/σ - (Σg·W/σ²) u vᵀ can cancel to 0 (a 1x1 weight: W/σ is constant), so the
        // f32 error scales with the terms g/σ, not with the result (the emulated device showed
        // a 1-ulp residue against an exact 0).
        let terms: Vec<f32> = grad.iter().map(|x| x / sigma[0]).collect();
        close(
            &format!("spectral_norm_backward {t}"),
            &down(&g, &gd),
            &cdv,
            1e-4,
            rms_tol(&terms, 1e-5),
        );
    }
}

#[test]
fn bce_with_logits_loss_and_grad() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(12);
    for len in shapes([1usize, 64, 1000, 5001]) {
        // Wide range of logits, including saturated ones.
        let x = rand(&mut rng, len, 12.0);
        for target in [0.0f32, 1.0, 0.9] {
            let (gl, gg) = g.bce_with_logits(&up(&g, &x), target).unwrap();
            let (cl, cg) = c.bce_with_logits(&up(&c, &x), target).unwrap();
            let t = format!("len {len} target {target}");
            close(
                &format!("bce_with_logits loss {t}"),
                &down(&g, &gl),
                &down(&c, &cl),
                1e-5,
                1e-7,
            );
            close(
                &format!("bce_with_logits grad {t}"),
                &down(&g, &gg),
                &down(&c, &cg),
                1e-5,
                1e-9,
            );
        }
    }
}

#[test]
fn hinge_loss_and_grad() {
    use artgan::backend::HingeTerm;
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(13);
    for len in shapes([1usize, 64, 1000, 5001]) {
        // Logits on both sides of every term's kink (at ±1).
        let x = rand(&mut rng, len, 3.0);
        for term in [HingeTerm::Real, HingeTerm::Fake, HingeTerm::Generator] {
            let (gl, gg) = g.hinge_with_logits(&up(&g, &x), term).unwrap();
            let (cl, cg) = c.hinge_with_logits(&up(&c, &x), term).unwrap();
            let t = format!("len {len} {term:?}");
            close(
                &format!("hinge loss {t}"),
                &down(&g, &gl),
                &down(&c, &cl),
                1e-5,
                1e-7,
            );
            close(
                &format!("hinge grad {t}"),
                &down(&g, &gg),
                &down(&c, &cg),
                1e-6,
                1e-9,
            );
        }
    }
}

/// One Adam item per tensor of the parallel lists.
fn adam_items<'a>(
    params: &'a mut [Storage],
    grads: &'a [Storage],
    m: &'a mut [Storage],
    v: &'a mut [Storage],
    lrs: &[f32],
) -> Vec<AdamItem<'a>> {
    params
        .iter_mut()
        .zip(grads)
        .zip(m.iter_mut().zip(v.iter_mut()))
        .zip(lrs)
        .map(|(((param, grad), (m, v)), &lr)| AdamItem {
            param,
            grad,
            m,
            v,
            lr,
        })
        .collect()
}

/// One item's (param, m, v) on the GPU and on the CPU agree (the Adam tests' bounds).
fn close_adam_state(
    what: &str,
    g: &Rc<dyn Backend>,
    c: &Rc<dyn Backend>,
    (gp, gm, gv): (&Storage, &Storage, &Storage),
    (cp, cm, cv): (&Storage, &Storage, &Storage),
) {
    close(
        &format!("{what} param"),
        &down(g, gp),
        &down(c, cp),
        1e-5,
        1e-7,
    );
    close(&format!("{what} m"), &down(g, gm), &down(c, cm), 1e-5, 1e-9);
    close(
        &format!("{what} v"),
        &down(g, gv),
        &down(c, cv),
        1e-5,
        1e-12,
    );
}

fn adam_case(g: &Rc<dyn Backend>, c: &Rc<dyn Backend>, lens: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let params: Vec<Vec<f32>> = lens.iter().map(|&l| rand(&mut rng, l, 1.0)).collect();
    let lrs: Vec<f32> = (0..lens.len())
        .map(|i| if i % 2 == 0 { 2e-4 } else { 5e-5 })
        .collect();
    let mk = |b: &Rc<dyn Backend>, vs: &[Vec<f32>]| -> Vec<Storage> {
        vs.iter().map(|v| up(b, v)).collect()
    };
    let zeros: Vec<Vec<f32>> = lens.iter().map(|&l| vec![0.0; l]).collect();
    let (mut gp, mut gm, mut gv) = (mk(g, &params), mk(g, &zeros), mk(g, &zeros));
    let (mut cp, mut cm, mut cv) = (mk(c, &params), mk(c, &zeros), mk(c, &zeros));
    let (b1, b2) = (0.5f32, 0.999f32);
    for t in 1..=3 {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&l| rand(&mut rng, l, 0.1)).collect();
        let (gg, cg) = (mk(g, &grads), mk(c, &grads));
        let step = AdamStep {
            beta1: b1,
            beta2: b2,
            eps: 1e-8,
            bias_correction1: 1.0 - b1.powi(t),
            bias_correction2: 1.0 - b2.powi(t),
        };
        g.adam_update(&mut adam_items(&mut gp, &gg, &mut gm, &mut gv, &lrs), step)
            .unwrap();
        c.adam_update(&mut adam_items(&mut cp, &cg, &mut cm, &mut cv, &lrs), step)
            .unwrap();
    }
    for k in 0..lens.len() {
        let t = format!("item {k} len {}", lens[k]);
        let (on_gpu, on_cpu) = ((&gp[k], &gm[k], &gv[k]), (&cp[k], &cm[k], &cv[k]));
        close_adam_state(&format!("adam {t}"), g, c, on_gpu, on_cpu);
    }
}

#[test]
fn adam_multi_tensor_update() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    adam_case(&g, &c, &[1, 7, 4096, 4097, 10_000, 3, 65_537], 13);
}

#[test]
fn adam_multi_tensor_more_items_than_one_launch_holds() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let lens: Vec<usize> = (0..70).map(|i| 1 + (i * 37) % 300).collect();
    adam_case(&g, &c, &lens, 14);
}

/// Mixed precision's optimiser step (`adam_update_scaled`) against the reference over four
/// steps starting one clean step before the growth interval: clean (the scale doubles), an inf
/// in one item (skipped, halved), clean, a NaN (skipped). Scale and counters must agree exactly,
/// weights and moments as in the plain Adam test; skipped steps leave every tensor unchanged.
fn adam_scaled_case(g: &Rc<dyn Backend>, c: &Rc<dyn Backend>, lens: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let params: Vec<Vec<f32>> = lens.iter().map(|&l| rand(&mut rng, l, 1.0)).collect();
    let lrs: Vec<f32> = (0..lens.len())
        .map(|i| if i % 2 == 0 { 2e-4 } else { 5e-5 })
        .collect();
    let mk = |b: &Rc<dyn Backend>, vs: &[Vec<f32>]| -> Vec<Storage> {
        vs.iter().map(|v| up(b, v)).collect()
    };
    let zeros: Vec<Vec<f32>> = lens.iter().map(|&l| vec![0.0; l]).collect();
    let mut counters = vec![0.0f32; loss_scale::COUNTERS];
    counters[loss_scale::GROWTH_TRACKER] = (loss_scale::GROWTH_INTERVAL - 1) as f32;
    let scale0 = [loss_scale::INIT_SCALE];
    let mut state: Vec<_> = [g, c]
        .iter()
        .map(|b| {
            let tensors = (mk(b, &params), mk(b, &zeros), mk(b, &zeros));
            (tensors, up(b, &scale0), up(b, &counters))
        })
        .collect();
    let hyper = AdamHyper {
        beta1: 0.5,
        beta2: 0.999,
        eps: 1e-8,
    };
    let mut scale = loss_scale::INIT_SCALE;
    for (t, bad) in [None, Some(f32::INFINITY), None, Some(f32::NAN)]
        .iter()
        .enumerate()
    {
        let mut grads: Vec<Vec<f32>> = lens
            .iter()
            .map(|&l| rand(&mut rng, l, 0.1).iter().map(|x| x * scale).collect())
            .collect();
        if let Some(bad) = bad {
            let k = lens.len() / 2;
            let i = lens[k] / 2;
            grads[k][i] = *bad;
        }
        let before: Vec<Vec<f32>> = state[0].0 .0.iter().map(|s| down(g, s)).collect();
        for (b, ((p, m, v), sc, cn)) in [g, c].iter().zip(state.iter_mut()) {
            let gs = mk(b, &grads);
            let mut items = adam_items(p, &gs, m, v, &lrs);
            b.adam_update_scaled(&mut items, hyper, sc, cn).unwrap();
        }
        let ((gp, gm, gv), gs, gc) = &state[0];
        let ((cp, cm, cv), cs, cc) = &state[1];
        assert_eq!(down(g, gs), down(c, cs), "step {t}: scale");
        assert_eq!(down(g, gc), down(c, cc), "step {t}: counters");
        scale = down(c, cs)[0];
        if bad.is_some() {
            let after: Vec<Vec<f32>> = gp.iter().map(|s| down(g, s)).collect();
            assert!(
                after == before,
                "step {t}: a skipped step moved the weights"
            );
        }
        for k in 0..lens.len() {
            let what = format!("step {t} item {k} len {}", lens[k]);
            let (on_gpu, on_cpu) = ((&gp[k], &gm[k], &gv[k]), (&cp[k], &cm[k], &cv[k]));
            close_adam_state(&format!("amp adam {what}"), g, c, on_gpu, on_cpu);
        }
    }
    // Grown, halved, kept, halved; two applied and two skipped.
    assert_eq!(scale, loss_scale::INIT_SCALE / 2.0);
    let cc = down(c, &state[1].2);
    assert_eq!(
        (cc[loss_scale::APPLIED], cc[loss_scale::SKIPPED]),
        (2.0, 2.0)
    );
}

#[test]
fn adam_loss_scaled_update() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    adam_scaled_case(&g, &c, &[1, 7, 4096, 4097, 10_000, 3, 65_537], 15);
    let lens: Vec<usize> = (0..70).map(|i| 1 + (i * 37) % 300).collect();
    adam_scaled_case(&g, &c, &lens, 16);
}

#[test]
fn allocator_reuses_buffers_in_steady_state() {
    use artgan::backend::{ElementwiseBackend, MemoryBackend};
    if gpu().is_none() {
        return;
    }
    let be = artgan::backend::cuda::CudaBackend::new(0).expect("CUDA backend");
    let step = |be: &artgan::backend::cuda::CudaBackend| {
        let a = be.full(1000, 1.0).unwrap();
        let b = be.full(4097, 2.0).unwrap();
        let s = be.scale(&a, 3.0).unwrap();
        let t = be.add(&s, &a).unwrap();
        drop((a, b, s, t));
    };
    step(&be);
    let after_first = be.pool_stats();
    for _ in 0..5 {
        step(&be);
    }
    let after = be.pool_stats();
    println!("allocator: after first step {after_first:?}, after six {after:?}");
    // The high-water mark: a, b, s and t (1000, 4097, 1000, 1000 floats) live at once, and
    // nothing is held between steps, in both pool modes.
    assert_eq!(after.in_use_bytes, 0);
    assert_eq!(after.peak_in_use_bytes, 4 * (3 * 1000 + 4097));
    let kept = be.full(10, 0.5).unwrap();
    be.reset_peak_memory();
    assert_eq!(be.pool_stats().peak_in_use_bytes, 40);
    step(&be);
    assert_eq!(
        be.pool_stats().peak_in_use_bytes,
        40 + 4 * (3 * 1000 + 4097)
    );
    drop(kept);
    // f16 buffers take two bytes an element, in the pool's 4-byte units (an odd count leaves
    // half a unit): 1001 halves hold 2004 bytes, their f32 cast 4004.
    be.reset_peak_memory();
    let halves = vec![half::f16::from_f32(0.75); 1001];
    let h = be.upload_f16(&halves).unwrap();
    assert_eq!(h.bytes(), 2002);
    assert_eq!(be.pool_stats().in_use_bytes, 2004);
    let w = be.cast(&h, artgan::backend::DType::F32).unwrap();
    assert_eq!(be.pool_stats().in_use_bytes, 2004 + 4004);
    assert_eq!(be.download(&w).unwrap(), vec![0.75; 1001]);
    drop((h, w));
    assert_eq!(be.pool_stats().in_use_bytes, 0);
    assert_eq!(be.pool_stats().peak_in_use_bytes, 2004 + 4004);
    if std::env::var("ARTGAN_CUDA_POOL").is_ok_and(|v| v == "off") {
        // The memory-checker mode: nothing cached, every buffer a fresh exact-size allocation.
        assert_eq!(after.reuses, 0);
        assert_eq!(after.cached_elems, 0);
        assert_eq!(after.driver_allocs, 6 * after_first.driver_allocs);
        return;
    }
    assert_eq!(
        after.driver_allocs, after_first.driver_allocs,
        "steady state must not allocate"
    );
    assert!(after.reuses > after_first.reuses);
}

#[test]
fn out_of_memory_is_reported_clearly() {
    let Some(g) = gpu() else { return };
    // 2^40 floats = 4 TiB: more than any GPU has.
    let e = g
        .zeros(1 << 40)
        .err()
        .expect("a 4 TiB allocation must fail");
    let msg = format!("{e:#}");
    println!("oom message: {msg}");
    assert!(msg.contains("out of GPU memory"), "{msg}");
}

/// `count` random `size`×`size` RGB images (bytes in 1..=255) for batch assembly.
fn random_images(rng: &mut Rng, count: usize, size: usize) -> artgan::data::ImageSet {
    let pixels: Vec<u8> = (0..count * size * size * 3)
        .map(|_| 1 + (rng.next_u32() % 255) as u8)
        .collect();
    let meta = (0..count)
        .map(|i| artgan::data::ImageMeta {
            path: format!("random/{i}"),
            artist: None,
            width: size as u32,
            height: size as u32,
        })
        .collect();
    artgan::data::ImageSet::from_pixels(size, pixels, meta).expect("image set")
}

/// Batch assembly (gather, flip, rotation with bilinear sampling and reflected edges, bytes to
/// [-1, 1]) from images kept on the GPU, against the CPU reference `data::assemble_batch`.
///
/// The kernel repeats the reference's f32 operations in order with round-to-nearest
/// intrinsics (sin/cos come from the host), so the output is expected to be bit-identical
/// (the count of differing elements is printed). Asserted bound: |gpu - cpu| <= 1e-6
/// (atol, rtol 0): a 1-ulp disagreement in a bilinear weight moves a value by at most
/// 255 * 2^-24 / 127.5 ≈ 1.2e-7, so the bound allows a few of those while any indexing, flip
/// or rotation error is orders of magnitude larger. Odd sizes give a padded packing tail;
/// 300 images exceed one launch's table (128).
#[test]
fn assemble_batch_gpu_matches_cpu() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let angles = [0.0f32, 5.0, -5.0, 90.0, 2.7, -0.3, 180.0, -37.5, 1e-3];
    let mut rng = Rng::new(41);
    for (size, count, batch) in shapes([
        (5usize, 7usize, 20usize),
        (17, 5, 18),
        (32, 4, 36),
        (64, 9, 64),
        (1, 3, 9),
        (5, 11, 300),
    ]) {
        let set = random_images(&mut rng, count, size);
        let indices: Vec<u32> = (0..batch)
            .map(|b| match b {
                0 => count as u32 - 1,
                1 => 0,
                _ => ((b * 7 + 3) % count) as u32,
            })
            .collect();
        let flips: Vec<bool> = (0..batch).map(|b| (b / angles.len()) % 2 == 1).collect();
        let ang: Vec<f32> = (0..batch).map(|b| angles[b % angles.len()]).collect();
        let idx: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        let want = artgan::data::assemble_batch(&set, &idx, &flips, &ang);
        let images = g.upload_images(set.pixels()).expect("upload_images");
        assert_eq!(images.len(), set.pixels().len().div_ceil(4));
        let out = g
            .assemble_batch(&images, size, &indices, &flips, &ang)
            .expect("assemble_batch");
        let got = down(&g, &out);
        let differing = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        println!("assemble_batch {size}px x{batch}: {differing} elements not bit-identical");
        close(
            &format!("assemble_batch {size}px x{batch}"),
            &got,
            &want,
            0.0,
            1e-6,
        );
        // The CPU backend's op is the reference itself.
        let ci = c.upload_images(set.pixels()).unwrap();
        let cw = down(
            &c,
            &c.assemble_batch(&ci, size, &indices, &flips, &ang).unwrap(),
        );
        assert_eq!(cw, want);
    }
    // Out-of-range indices are refused before any launch.
    let set = random_images(&mut rng, 2, 5);
    let images = g.upload_images(set.pixels()).unwrap();
    assert!(g
        .assemble_batch(&images, 5, &[2], &[false], &[0.0])
        .is_err());
}

/// The loader on the GPU (set uploaded once, batches made there) gives the CPU loader's batches.
#[test]
fn loader_on_gpu_matches_cpu() {
    if gpu().is_none() {
        return;
    }
    use artgan::data::{builtin, Augment, Loader};
    let set = std::sync::Arc::new(builtin(40, 32, 5));
    let aug = Augment {
        flip: true,
        rotate_deg: 5.0,
    };
    let mut on_gpu = Loader::new(set.clone(), 16, aug, 3);
    let mut on_cpu = Loader::new(set, 16, aug, 3);
    for epoch in 0..2 {
        on_gpu.start_epoch(epoch);
        on_cpu.start_epoch(epoch);
        while let Some(gb) = on_gpu.next_batch(Device::Cuda(0)).unwrap() {
            assert_eq!(on_gpu.resident_device(), Some(Device::Cuda(0)));
            assert_eq!(gb.device(), Device::Cuda(0));
            let cb = on_cpu.next_batch(Device::Cpu).unwrap().unwrap();
            assert_eq!(gb.shape(), cb.shape());
            close(
                &format!("loader epoch {epoch}"),
                &gb.to_vec().unwrap(),
                &cb.to_vec().unwrap(),
                0.0,
                1e-6,
            );
        }
        assert!(on_cpu.next_batch(Device::Cpu).unwrap().is_none());
    }
}

// ---- conditional-model ops and DiffAugment

/// Labels as the ops upload them: class indices held as f32.
fn labels(rng: &mut Rng, batch: usize, classes: usize) -> Vec<f32> {
    (0..batch).map(|_| rng.below(classes) as f32).collect()
}

#[test]
fn embedding_lookup_and_scatter_add_backward() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(1301);
    for (batch, classes, dim) in shapes([
        (1usize, 1usize, 1usize),
        (7, 5, 13),
        (64, 61, 512),
        (3, 50, 3),
    ]) {
        let table = rand(&mut rng, classes * dim, 1.0);
        let l = labels(&mut rng, batch, classes);
        let what = format!("embedding b{batch} k{classes} d{dim}");
        let ge = g
            .embedding(&up(&g, &table), &up(&g, &l), classes, dim)
            .unwrap();
        let ce = c
            .embedding(&up(&c, &table), &up(&c, &l), classes, dim)
            .unwrap();
        close(&what, &down(&g, &ge), &down(&c, &ce), 0.0, 0.0);
        let dy = rand(&mut rng, batch * dim, 1.0);
        let gb = g
            .embedding_backward(&up(&g, &dy), &up(&g, &l), classes, dim)
            .unwrap();
        let cb = c
            .embedding_backward(&up(&c, &dy), &up(&c, &l), classes, dim)
            .unwrap();
        // Same summation order (batch order) on both: bit-identical.
        close(
            &format!("{what} backward"),
            &down(&g, &gb),
            &down(&c, &cb),
            0.0,
            0.0,
        );
    }
}

#[test]
fn channel_affine_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(1302);
    for (n, ch, hw) in shapes([
        (1usize, 1usize, 1usize),
        (3, 5, 7),
        (16, 64, 64),
        (2, 3, 4097),
    ]) {
        let d = ChannelDims { n, c: ch, hw };
        let x = rand(&mut rng, d.len(), 2.0);
        let s = rand(&mut rng, n * ch, 1.5);
        let t = rand(&mut rng, n * ch, 1.0);
        let gy = g
            .channel_affine(&up(&g, &x), &up(&g, &s), &up(&g, &t), d)
            .unwrap();
        let cy = c
            .channel_affine(&up(&c, &x), &up(&c, &s), &up(&c, &t), d)
            .unwrap();
        close(
            &format!("channel_affine {d:?}"),
            &down(&g, &gy),
            &down(&c, &cy),
            1e-6,
            1e-6,
        );
        let dy = rand(&mut rng, d.len(), 1.0);
        let (gdx, gds, gdt) = g
            .channel_affine_backward(&up(&g, &x), &up(&g, &dy), &up(&g, &s), d)
            .unwrap();
        let (cdx, cds, cdt) = c
            .channel_affine_backward(&up(&c, &x), &up(&c, &dy), &up(&c, &s), d)
            .unwrap();
        close(
            &format!("channel_affine dx {d:?}"),
            &down(&g, &gdx),
            &down(&c, &cdx),
            1e-6,
            0.0,
        );
        let atol = 1e-5 * (hw as f32).sqrt();
        close(
            &format!("channel_affine dscale {d:?}"),
            &down(&g, &gds),
            &down(&c, &cds),
            1e-5,
            atol,
        );
        close(
            &format!("channel_affine dshift {d:?}"),
            &down(&g, &gdt),
            &down(&c, &cdt),
            1e-5,
            atol,
        );
    }
}

#[test]
fn row_dot_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(1303);
    for (rows, cols) in shapes([(1usize, 1usize), (7, 13), (64, 512), (3, 9000)]) {
        let a = rand(&mut rng, rows * cols, 1.0);
        let b = rand(&mut rng, rows * cols, 1.0);
        let gy = g.row_dot(&up(&g, &a), &up(&g, &b), rows, cols).unwrap();
        let cy = c.row_dot(&up(&c, &a), &up(&c, &b), rows, cols).unwrap();
        close(
            &format!("row_dot {rows}x{cols}"),
            &down(&g, &gy),
            &down(&c, &cy),
            1e-5,
            1e-5 * (cols as f32).sqrt(),
        );
        let gr = rand(&mut rng, rows, 1.0);
        let (gda, gdb) = g
            .row_dot_backward(&up(&g, &a), &up(&g, &b), &up(&g, &gr), rows, cols)
            .unwrap();
        let (cda, cdb) = c
            .row_dot_backward(&up(&c, &a), &up(&c, &b), &up(&c, &gr), rows, cols)
            .unwrap();
        close(
            &format!("row_dot da {rows}x{cols}"),
            &down(&g, &gda),
            &down(&c, &cda),
            0.0,
            0.0,
        );
        close(
            &format!("row_dot db {rows}x{cols}"),
            &down(&g, &gdb),
            &down(&c, &cdb),
            0.0,
            0.0,
        );
    }
}

#[test]
fn diffaugment_color_translation_cutout() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(1304);
    for (n, ch, h, w) in shapes([
        (1usize, 3usize, 1usize, 1usize),
        (3, 3, 9, 7),
        (16, 3, 64, 64),
        (2, 1, 5, 33),
    ]) {
        let d = ChannelDims {
            n,
            c: ch,
            hw: h * w,
        };
        let dims = [n, ch, h, w];
        let x = rand(&mut rng, d.len(), 1.0);
        let p = artgan::ops::diffaug_params(rng.next_u64(), 0, n, h, w);
        for brightness in [true, false] {
            let gy = g
                .diffaug_color(&up(&g, &x), &up(&g, &p.color), d, brightness)
                .unwrap();
            let cy = c
                .diffaug_color(&up(&c, &x), &up(&c, &p.color), d, brightness)
                .unwrap();
            close(
                &format!("diffaug_color {dims:?} brightness {brightness}"),
                &down(&g, &gy),
                &down(&c, &cy),
                1e-5,
                1e-5,
            );
        }
        // Every shift sign and size, including shifts past the whole image.
        let mut shifts: Vec<f32> = p.shifts.iter().map(|&s| s as f32).collect();
        shifts[0] = h as f32 + 1.0;
        let gy = g
            .diffaug_translate(&up(&g, &x), &up(&g, &shifts), dims)
            .unwrap();
        let cy = c
            .diffaug_translate(&up(&c, &x), &up(&c, &shifts), dims)
            .unwrap();
        close(
            &format!("diffaug_translate {dims:?}"),
            &down(&g, &gy),
            &down(&c, &cy),
            0.0,
            0.0,
        );
        let boxes: Vec<f32> = p.boxes.iter().map(|&v| v as f32).collect();
        let gy = g
            .diffaug_cutout(&up(&g, &x), &up(&g, &boxes), dims)
            .unwrap();
        let cy = c
            .diffaug_cutout(&up(&c, &x), &up(&c, &boxes), dims)
            .unwrap();
        close(
            &format!("diffaug_cutout {dims:?}"),
            &down(&g, &gy),
            &down(&c, &cy),
            0.0,
            0.0,
        );
    }
}

/// f32 → f16 rounding on the device (the kernels that feed cuBLAS `GemmEx`) is bit-identical to
/// `half::f16::from_f32`: ties to even, subnormals, the overflow threshold, signed zeros,
/// infinities and NaN, plus random values over f16's whole range and beyond.
#[test]
fn round_to_f16_is_bit_identical_to_the_half_crate() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + 2f32.powi(-11),       // tie: to 1.0 (even)
        1.0 + 3.0 * 2f32.powi(-11), // tie: up
        65504.0,
        65519.99,
        65520.0, // ties to inf
        -70000.0,
        6.1035156e-5,         // smallest normal f16
        6.0e-5,               // subnormal
        2f32.powi(-24),       // smallest subnormal
        2f32.powi(-25),       // tie: to 0
        1.5 * 2f32.powi(-25), // above the tie: smallest subnormal
        3.0 * 2f32.powi(-25), // tie between subnormals 1 and 2: to 2
        1e-30,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let mut rng = Rng::new(21);
    for e in -28..18 {
        let scale = 2f32.powi(e);
        v.extend(rand(&mut rng, 97, scale));
    }
    let want = down(&c, &c.round_to_f16(&up(&c, &v)).unwrap());
    let got = down(&g, &g.round_to_f16(&up(&g, &v)).unwrap());
    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "round_to_f16({:e}) = {a:e} on the GPU, {b:e} on the CPU",
            v[i]
        );
    }
}

/// Mixed-precision convolutions (`ConvGeom::f16_operands`) against the reference rounding at the
/// same points: our own kernels (f16 copies of both operands into cuBLAS
/// `GemmStridedBatchedEx`, fp16 A/B, fp32 C, COMPUTE_32F) and the cuDNN path (f16 tensors,
/// f32 accumulation, f16 output). The products of f16 values are exact in f32, so our kernels
/// and the reference differ only by summation order: per element at most `(γ_K + u) · Σ|a·b|`
/// with K the products summed, `u = 2⁻²⁴`, `γ_K = K·u / (1 − K·u)` (f32 accumulation in any
/// order) plus the reference's own final rounding to f32; `Σ|a·b|` is the reference
/// convolution of the absolute values. Both sides then round that sum to f16 (y and dx are f16
/// tensors, dw f32 ones of f16 values, with either implementation): `2⁻¹¹` relative each, or
/// `2⁻²⁵` absolute in f16's subnormal range, so sums on either side of a rounding boundary
/// end one f16 unit apart; and every value returned must be an f16. The same bound must fail for the unrounded f32 convolution somewhere, so
/// the test sees whether rounding happens at all.
#[test]
fn amp_convolutions_match_the_rounding_reference_both_impls() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    for imp in [ConvImpl::Own, ConvImpl::Cudnn] {
        amp_convolutions_match_the_rounding_reference(&g, &c, imp);
    }
}

/// Layer to layer under amp, a convolution's activation input (x, or dy going back) is the
/// f16 tensor the previous layer gave: the result must be exactly that of the same values
/// given as f32 (which the convolution rounds to f16 itself), with both implementations; and
/// y and dx come out as f16 tensors, dw as f32.
#[test]
fn f16_activation_inputs_to_amp_convolutions_equal_their_f32_values_both_impls() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(37);
    let geoms = [
        ConvGeom::conv(3, 5, 9, 9, 4, 4, 2, 1).unwrap(),
        ConvGeom::conv(2, 3, 7, 5, 3, 3, 1, 1).unwrap(),
        ConvGeom::transposed(3, 7, 4, 4, 3, 4, 2, 1, 0).unwrap(),
    ];
    let as_f16 =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
    let up_f16 = |v: &[f32]| {
        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        g.upload_f16(&h).unwrap()
    };
    for imp in [ConvImpl::Own, ConvImpl::Cudnn] {
        for plain in geoms {
            let geom = ConvGeom {
                f16_operands: true,
                conv_impl: imp,
                ..plain
            };
            let x = as_f16(&rand(&mut rng, geom.input_len(), 1.0));
            let w = rand(&mut rng, geom.weight_len(), 0.5);
            let dy = as_f16(&rand(&mut rng, geom.output_len(), 1.0));
            let y_f32_in = g.conv2d_forward(&up(&g, &x), &up(&g, &w), &geom).unwrap();
            let y_f16_in = g.conv2d_forward(&up_f16(&x), &up(&g, &w), &geom).unwrap();
            let dx_f32_in = g.conv2d_backward_data(&up(&g, &dy), &up(&g, &w), &geom);
            let dx_f16_in = g.conv2d_backward_data(&up_f16(&dy), &up(&g, &w), &geom);
            let dw_f32_in = g.conv2d_backward_filter(&up(&g, &x), &up(&g, &dy), &geom);
            let dw_f16_in = g.conv2d_backward_filter(&up_f16(&x), &up_f16(&dy), &geom);
            let (dx_f32_in, dx_f16_in) = (dx_f32_in.unwrap(), dx_f16_in.unwrap());
            let (dw_f32_in, dw_f16_in) = (dw_f32_in.unwrap(), dw_f16_in.unwrap());
            let t = format!("{imp:?} {plain:?}");
            use artgan::backend::DType;
            for (what, a, b, dtype) in [
                ("y", &y_f32_in, &y_f16_in, DType::F16),
                ("dx", &dx_f32_in, &dx_f16_in, DType::F16),
                ("dw", &dw_f32_in, &dw_f16_in, DType::F32),
            ] {
                assert_eq!((a.dtype(), b.dtype()), (dtype, dtype), "{what} {t}: dtypes");
                assert_eq!(bits(&down(&g, a)), bits(&down(&g, b)), "{what} {t}");
            }
        }
    }
}

type Prim = fn(&dyn Backend, &Storage, &Storage, &ConvGeom) -> Storage;
/// One convolution primitive: its name, its two operands, the products each output sums, the
/// call.
type AmpCase<'a> = (&'a str, &'a [f32], &'a [f32], usize, Prim);

/// The three primitives of `geom` on x, w and dy.
fn amp_cases<'a>(x: &'a [f32], w: &'a [f32], dy: &'a [f32], geom: &ConvGeom) -> [AmpCase<'a>; 3] {
    [
        (
            "forward",
            x,
            w,
            geom.c_in * geom.kh * geom.kw,
            |b, a, w, g| b.conv2d_forward(a, w, g).unwrap(),
        ),
        (
            "backward_data",
            dy,
            w,
            geom.c_out * geom.kh * geom.kw,
            |b, a, w, g| b.conv2d_backward_data(a, w, g).unwrap(),
        ),
        (
            "backward_filter",
            x,
            dy,
            geom.n * geom.oh * geom.ow,
            |b, a, w, g| b.conv2d_backward_filter(a, w, g).unwrap(),
        ),
    ]
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|a| a.abs()).collect()
}

/// Whether `v` is exactly an f16 value (what cuDNN's f16 outputs widen to).
fn is_f16(v: f32) -> bool {
    half::f16::from_f32(v).to_f32().to_bits() == v.to_bits()
}

fn amp_convolutions_match_the_rounding_reference(
    g: &Rc<dyn Backend>,
    c: &Rc<dyn Backend>,
    imp: ConvImpl,
) {
    let (g, c) = (g.clone(), c.clone());
    let mut rng = Rng::new(23);
    let mut geoms: Vec<ConvGeom> = shapes(CONV_SHAPES)
        .into_iter()
        .map(|(n, ci, h, w, co, k, s, p)| ConvGeom::conv(n, ci, h, w, co, k, s, p).unwrap())
        .collect();
    geoms.push(ConvGeom::transposed(3, 8, 4, 4, 4, 4, 2, 1, 0).unwrap());
    geoms.push(ConvGeom::transposed(2, 5, 7, 7, 3, 4, 2, 1, 0).unwrap());
    let mut rounding_seen = false;
    for plain in geoms {
        let geom = ConvGeom {
            f16_operands: true,
            conv_impl: imp,
            ..plain
        };
        let x = rand(&mut rng, geom.input_len(), 1.0);
        let w = rand(&mut rng, geom.weight_len(), 0.5);
        let dy = rand(&mut rng, geom.output_len(), 1.0);
        for (what, a, b, k, prim) in amp_cases(&x, &w, &dy, &geom) {
            let want = down(&c, &prim(&*c, &up(&c, a), &up(&c, b), &geom));
            let got = down(&g, &prim(&*g, &up(&g, a), &up(&g, b), &geom));
            let f32_result = down(&c, &prim(&*c, &up(&c, a), &up(&c, b), &plain));
            let magnitude = down(&c, &prim(&*c, &up(&c, &abs(a)), &up(&c, &abs(b)), &geom));
            let u = 2f64.powi(-24);
            let gamma = k as f64 * u / (1.0 - k as f64 * u);
            let bound = |i: usize| {
                let sum_err = (gamma + u) * f64::from(magnitude[i]);
                // Both sides round their sum to f16: half an f16 unit each.
                let out_err =
                    2.0 * (2f64.powi(-11) * (f64::from(want[i].abs()) + sum_err) + 2f64.powi(-25));
                (sum_err + out_err) as f32
            };
            let mut worst = 0.0f32;
            for i in 0..want.len() {
                assert!(
                    is_f16(got[i]),
                    "amp {imp:?} {what} {geom:?}[{i}]: {} is not an f16 value",
                    got[i]
                );
                let err = (got[i] - want[i]).abs();
                worst = worst.max(err / bound(i).max(f32::MIN_POSITIVE));
                assert!(
                    err <= bound(i),
                    "amp {imp:?} {what} {geom:?}[{i}]: gpu {} reference {} differ by {err:e} > {:e}",
                    got[i],
                    want[i],
                    bound(i)
                );
                rounding_seen |= (f32_result[i] - want[i]).abs() > bound(i);
            }
            println!("amp {imp:?} {what} {plain:?}: worst err/bound {worst:.3}");
        }
    }
    assert!(
        rounding_seen,
        "the f32 convolution met the f16 bound everywhere: rounding is not tested"
    );
}

/// Uniform in [-scale, scale] with every value at least 2⁻¹³ in magnitude: normal f16 values
/// once rounded, so that rounding is relative (f16's subnormals would add an absolute error).
fn rand_normal_f16(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    rand(rng, len, scale)
        .into_iter()
        .map(|x| {
            if x.abs() < 2f32.powi(-13) {
                0.5 * scale
            } else {
                x
            }
        })
        .collect()
}

/// `--precision amp --conv-impl cudnn` (f16 tensors in and out, f32 accumulation) against the
/// plain f32 reference, forward and both backwards, of convolutions and transposed
/// convolutions including odd sizes, within a bound derived from f16's unit roundoff
/// `u₁₆ = 2⁻¹¹` (cuDNN does not specify its internal rounding, so nothing tighter is assumed
/// than its pseudo-half configuration: f16 operands, products summed in f32, f16 result).
/// With M = Σ|a·b| over the K products of one output (the reference on absolute values):
/// - operand rounding: a·(1+δ₁)·b·(1+δ₂), |δ| ≤ u₁₆ (normal f16 inputs), so each product is
///   off by at most (2u₁₆ + u₁₆²)·|a·b|;
/// - f32 accumulation of K products in any order: γ_K·Σ|ã·b̃| ≤ γ_K·(1+u₁₆)²·M, with
///   `γ_K = K·u/(1−K·u)`, `u = 2⁻²⁴`; together E = (2u₁₆ + u₁₆² + γ_K(1+u₁₆)²)·M;
/// - the f16 output: u₁₆·(|Σab| + E), plus 2⁻²⁵ absolute in f16's subnormal range;
/// - the reference's own rounding to f32: u·|Σab|.
///
/// Also: every value is an f16 (the f16 output really ran) and the results are not the f32
/// ones (the operands really were rounded).
#[test]
fn amp_cudnn_convolutions_match_fp32_within_an_f16_derived_bound() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = Rng::new(29);
    let mut geoms: Vec<ConvGeom> = shapes(CONV_SHAPES)
        .into_iter()
        .map(|(n, ci, h, w, co, k, s, p)| ConvGeom::conv(n, ci, h, w, co, k, s, p).unwrap())
        .collect();
    geoms.push(ConvGeom::transposed(2, 16, 1, 1, 8, 4, 1, 0, 0).unwrap());
    geoms.push(ConvGeom::transposed(2, 5, 7, 7, 3, 4, 2, 1, 0).unwrap());
    geoms.push(ConvGeom::transposed(2, 4, 5, 5, 3, 3, 2, 1, 1).unwrap());
    let (uh, u) = (2f64.powi(-11), 2f64.powi(-24));
    let mut differs = 0usize;
    for plain in geoms {
        let amp = ConvGeom {
            f16_operands: true,
            conv_impl: ConvImpl::Cudnn,
            ..plain
        };
        let x = rand_normal_f16(&mut rng, plain.input_len(), 1.0);
        let w = rand_normal_f16(&mut rng, plain.weight_len(), 0.5);
        let dy = rand_normal_f16(&mut rng, plain.output_len(), 1.0);
        for (what, a, b, k, prim) in amp_cases(&x, &w, &dy, &plain) {
            let reference = down(&c, &prim(&*c, &up(&c, a), &up(&c, b), &plain));
            let got = down(&g, &prim(&*g, &up(&g, a), &up(&g, b), &amp));
            let fp32_gpu = down(&g, &prim(&*g, &up(&g, a), &up(&g, b), &plain));
            let magnitude = down(&c, &prim(&*c, &up(&c, &abs(a)), &up(&c, &abs(b)), &plain));
            let gamma = k as f64 * u / (1.0 - k as f64 * u);
            let mut worst = 0.0f64;
            for i in 0..reference.len() {
                // M as computed carries its own f32 rounding: (1 + 2u) covers it.
                let m = f64::from(magnitude[i]) * (1.0 + 2.0 * u);
                let r = f64::from(reference[i].abs()) * (1.0 + 2.0 * u);
                let e = (2.0 * uh + uh * uh + gamma * (1.0 + uh) * (1.0 + uh)) * m;
                let bound = e + uh * (r + e) + 2f64.powi(-25) + u * r;
                let err = (f64::from(got[i]) - f64::from(reference[i])).abs();
                worst = worst.max(err / bound);
                assert!(
                    err <= bound,
                    "amp cudnn {what} {plain:?}[{i}]: gpu {} fp32 reference {} differ by {err:e} > {bound:e}",
                    got[i],
                    reference[i]
                );
                assert!(
                    is_f16(got[i]),
                    "amp cudnn {what} {plain:?}[{i}]: {} is not an f16 value",
                    got[i]
                );
                differs += usize::from(got[i] != fp32_gpu[i]);
            }
            println!("amp cudnn vs fp32 {what} {plain:?}: worst err/bound {worst:.3}");
        }
    }
    assert!(
        differs > 0,
        "the amp results equal the f32 ones: f16 did not run"
    );
}

/// A family method the CUDA backend forgot falls to its trait's host default, which must fail
/// loudly on device tensors, naming the op and the device, instead of reading them.
#[test]
fn host_defaults_refuse_device_tensors() {
    use artgan::backend::{ConvBackend, ElementwiseBackend, ReduceBackend};
    let Some(g) = gpu() else { return };
    struct HostOnly;
    impl ElementwiseBackend for HostOnly {}
    impl ReduceBackend for HostOnly {}
    impl ConvBackend for HostOnly {}
    let x = up(&g, &[1.0, -2.0, 3.0, 4.0]);
    let refused = |op: &str| {
        format!(
            "{op}: this backend has no implementation for tensors on {} (only the host default)",
            g.device()
        )
    };
    let err = HostOnly.add(&x, &x).err().expect("add on device memory");
    assert_eq!(err.to_string(), refused("add"));
    let err = HostOnly.sum_rows(&x, 2, 2, 1.0).err().expect("sum_rows");
    assert_eq!(err.to_string(), refused("sum_rows"));
    let geom = ConvGeom::conv(1, 1, 2, 2, 1, 1, 1, 0).expect("a 1x1 conv");
    let err = HostOnly.conv2d_forward(&x, &x, &geom).err().expect("conv");
    assert_eq!(err.to_string(), refused("conv2d_forward"));
    // The same defaults serve host memory.
    let host = Storage::Cpu(vec![1.0, -2.0, 3.0, 4.0]);
    match HostOnly.add(&host, &host).expect("add on the host") {
        Storage::Cpu(v) => assert_eq!(v, [2.0, -4.0, 6.0, 8.0]),
        other => panic!("host add gave a tensor on {}", other.device()),
    }
}
