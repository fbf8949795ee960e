//! Every backend kernel, timed at the shapes of the DCGAN-64 (batch 128) and classical-128
//! (batch 64) training steps.
//!
//! ```sh
//! cargo bench --bench kernels                         # auto: the GPU if there is one
//! cargo bench --bench kernels -- --device cuda --conv-impl own --filter conv --peak-tflops 8.1
//! ```
//!
//! Per kernel and shape: the time of one call (median of 5 batches of back-to-back calls, the
//! device synchronised around each batch), the bytes it must move at least (MB; rows ending in
//! `f16` take amp's f16 activations, 2 bytes an element, `--filter f16`) and the resulting
//! GB/s as a % of the device's measured device-to-device copy bandwidth (a 256 MiB copy: DRAM,
//! not L2); for convolutions GFLOP/s and, when the device's fp32 peak is known (a table by name,
//! or `--peak-tflops`), its %. On the CPU or the emulated CUDA device it runs as a smoke test
//! (batch 2, one call per kernel) and says that its figures are not GPU figures.

use artgan::backend::{
    backend, Activation, AdamItem, AdamStep, Backend, BatchNormAct, ChannelDims, ConvGeom,
    ConvImpl, DType, Device, HingeTerm, Storage,
};
use artgan::rng::Rng;
use std::rc::Rc;
use std::time::Instant;

#[path = "kernels/batch_norm.rs"]
mod batch_norm;
#[path = "kernels/fastgan.rs"]
mod fastgan;

struct Opts {
    device: String,
    conv_impl: Option<ConvImpl>,
    filter: Option<String>,
    peak_tflops: Option<f64>,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        device: "auto".into(),
        conv_impl: None,
        filter: None,
        peak_tflops: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--bench" => {} // passed by cargo
            "--device" => o.device = value("--device"),
            "--conv-impl" => o.conv_impl = Some(value("--conv-impl").parse().unwrap()),
            "--filter" => o.filter = Some(value("--filter")),
            "--peak-tflops" => o.peak_tflops = Some(value("--peak-tflops").parse().unwrap()),
            other => panic!(
                "unknown argument {other:?} (--device auto|cpu|cuda, --conv-impl cudnn|own, \
                 --filter TEXT, --peak-tflops X)"
            ),
        }
    }
    o
}

/// fp32 peak (TFLOP/s, no tensor cores) of the GPUs we meet, by name.
fn known_peak(name: &str) -> Option<f64> {
    [
        ("T4", 8.1),
        ("A100", 19.5),
        ("L4", 30.3),
        ("H100 PCIe", 51.2),
        ("H100", 66.9),
        ("H200", 66.9),
    ]
    .iter()
    .find(|(k, _)| name.contains(k))
    .map(|&(_, v)| v)
}

struct Bench {
    be: Rc<dyn Backend>,
    smoke: bool,
    filter: Option<String>,
    copy_gbs: f64,
    peak_tflops: Option<f64>,
    rng: Rng,
    /// `--conv-impl`, else `ARTGAN_CONV_IMPL`: put into every conv geometry.
    conv_impl: ConvImpl,
}

impl Bench {
    fn data(&mut self, len: usize, lo: f32, hi: f32) -> Storage {
        self.be.upload(&self.rng.uniform_vec(len, lo, hi)).unwrap()
    }

    /// `s` as an f16 tensor (amp's activations).
    fn f16(&self, s: &Storage) -> Storage {
        self.be.cast(s, DType::F16).unwrap()
    }

    /// Seconds per call of `f`.
    fn time(&self, mut f: impl FnMut()) -> f64 {
        f(); // warm-up: allocations, cuDNN algorithm choice
        self.be.synchronize().unwrap();
        if self.smoke {
            let t = Instant::now();
            f();
            self.be.synchronize().unwrap();
            return t.elapsed().as_secs_f64();
        }
        // Calls per batch: enough for ~20 ms.
        let t = Instant::now();
        f();
        self.be.synchronize().unwrap();
        let one = t.elapsed().as_secs_f64().max(1e-6);
        let calls = ((0.02 / one) as usize).clamp(1, 1000);
        let mut per_call: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..calls {
                    f();
                }
                self.be.synchronize().unwrap();
                t.elapsed().as_secs_f64() / calls as f64
            })
            .collect();
        per_call.sort_by(f64::total_cmp);
        per_call[2]
    }

    fn report(&self, kernel: &str, shape: &str, secs: f64, bytes: f64, flops: Option<f64>) {
        let gbs = bytes / secs / 1e9;
        let mut line = format!(
            "{kernel:<27} {shape:<22} {:>10.1} us {:>9.3} MB {:>8.1} GB/s {:>5.0}% copy",
            secs * 1e6,
            bytes / 1e6,
            gbs,
            100.0 * gbs / self.copy_gbs
        );
        if let Some(f) = flops {
            let gf = f / secs / 1e9;
            line += &format!(" {gf:>9.1} GFLOP/s");
            if let Some(p) = self.peak_tflops {
                line += &format!(" {:>5.1}% peak", 100.0 * gf / (p * 1e3));
            }
        }
        println!("{line}");
    }

    fn wants(&self, kernel: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| kernel.contains(f))
    }

    fn elementwise(&mut self, n: usize, shape: &str) {
        let b = self.be.clone();
        let (x, y) = (self.data(n, -1.0, 1.0), self.data(n, -1.0, 1.0));
        let s = self.data(1, 0.5, 1.5);
        let f = (n * 4) as f64;
        // The f16 rows (amp's activations and gradients): 2 bytes an element.
        let (x16, y16) = (self.f16(&x), self.f16(&y));
        let h = (n * 2) as f64;
        if self.wants("add") {
            let t = self.time(|| drop(b.add(&x, &y).unwrap()));
            self.report("add", shape, t, 3.0 * f, None);
        }
        if self.wants("add f16") {
            let t = self.time(|| drop(b.add(&x16, &y16).unwrap()));
            self.report("add f16", shape, t, 3.0 * h, None);
        }
        // Gradient accumulation: reads acc and x, writes acc.
        if self.wants("add_assign") {
            let mut acc = b.copy(&x).unwrap();
            let t = self.time(|| b.add_assign(&mut acc, &y).unwrap());
            self.report("add_assign", shape, t, 3.0 * f, None);
        }
        if self.wants("add_assign f16") {
            let mut acc = b.copy(&x16).unwrap();
            let t = self.time(|| b.add_assign(&mut acc, &y16).unwrap());
            self.report("add_assign f16", shape, t, 3.0 * h, None);
        }
        if self.wants("scale_by_scalar") {
            let t = self.time(|| drop(b.scale_by_scalar(&x, &s, 0.5).unwrap()));
            self.report("scale_by_scalar", shape, t, 2.0 * f, None);
        }
        for (name, act) in [
            ("relu", Activation::Relu),
            ("leaky_relu", Activation::LeakyRelu(0.2)),
            ("tanh", Activation::Tanh),
        ] {
            if self.wants(name) {
                let t = self.time(|| drop(b.activation(act, &x).unwrap()));
                self.report(&format!("{name} fwd"), shape, t, 2.0 * f, None);
                let out = b.activation(act, &x).unwrap();
                let t = self.time(|| drop(b.activation_backward(act, &x, &out, &y).unwrap()));
                self.report(&format!("{name} bwd"), shape, t, 4.0 * f, None);
            }
            if self.wants(&format!("{name} f16")) {
                let t = self.time(|| drop(b.activation(act, &x16).unwrap()));
                self.report(&format!("{name} fwd f16"), shape, t, 2.0 * h, None);
                let out = b.activation(act, &x16).unwrap();
                let t = self.time(|| drop(b.activation_backward(act, &x16, &out, &y16).unwrap()));
                self.report(&format!("{name} bwd f16"), shape, t, 4.0 * h, None);
            }
        }
        if self.wants("dropout") {
            let t = self.time(|| drop(b.dropout_mask(n, 0.3, 7, 0).unwrap()));
            self.report("dropout_mask", shape, t, f, None);
        }
        if self.wants("noise") {
            let t = self.time(|| drop(b.add_gaussian_noise(&x, 0.1, 7, 0).unwrap()));
            self.report("gaussian_noise", shape, t, 2.0 * f, None);
        }
    }

    /// GLU over channels (`--filter glu`): `d` is the output, the input twice its size.
    fn glu(&mut self, d: ChannelDims, shape: &str) {
        if !self.wants("glu") {
            return;
        }
        let b = self.be.clone();
        let x = self.data(2 * d.len(), -3.0, 3.0);
        let dy = self.data(d.len(), -1.0, 1.0);
        let f = (d.len() * 4) as f64;
        let t = self.time(|| drop(b.glu(&x, d).unwrap()));
        self.report("glu fwd", shape, t, 3.0 * f, None); // reads x (2), writes y (1)
        let t = self.time(|| drop(b.glu_backward(&x, &dy, d).unwrap()));
        self.report("glu bwd", shape, t, 5.0 * f, None); // reads x (2) and dy (1), writes dx (2)
    }

    fn conv(&mut self, g: &ConvGeom, shape: &str) {
        if !self.wants("conv") {
            return;
        }
        let b = self.be.clone();
        let g = &ConvGeom {
            conv_impl: self.conv_impl,
            ..*g
        };
        let x = self.data(g.input_len(), -1.0, 1.0);
        let w = self.data(g.weight_len(), -0.1, 0.1);
        let dy = self.data(g.output_len(), -1.0, 1.0);
        let flops = 2.0 * (g.output_len() * g.c_in * g.kh * g.kw) as f64;
        let bytes = 4.0 * (g.input_len() + g.weight_len() + g.output_len()) as f64;
        let t = self.time(|| drop(b.conv2d_forward(&x, &w, g).unwrap()));
        self.report("conv forward", shape, t, bytes, Some(flops));
        let t = self.time(|| drop(b.conv2d_backward_data(&dy, &w, g).unwrap()));
        self.report("conv backward-data", shape, t, bytes, Some(flops));
        let t = self.time(|| drop(b.conv2d_backward_filter(&x, &dy, g).unwrap()));
        self.report("conv backward-filter", shape, t, bytes, Some(flops));
    }

    fn spectral_norm(&mut self, rows: usize, cols: usize, shape: &str) {
        if !self.wants("spectral_norm") {
            return;
        }
        let b = self.be.clone();
        let w = self.data(rows * cols, -0.1, 0.1);
        let g = self.data(rows * cols, -1.0, 1.0);
        let (mut u, mut v) = (self.data(rows, -1.0, 1.0), self.data(cols, -1.0, 1.0));
        let f = (rows * cols * 4) as f64;
        // Wᵀu and Wv read W once each, sigma once more.
        let t = self.time(|| {
            drop(
                b.spectral_norm_sigma(&w, &mut u, &mut v, rows, cols, 1e-12, true)
                    .unwrap(),
            )
        });
        self.report("spectral_norm_sigma", shape, t, 2.0 * f, None);
        let sigma = b
            .spectral_norm_sigma(&w, &mut u, &mut v, rows, cols, 1e-12, false)
            .unwrap();
        let t = self.time(|| {
            drop(
                b.spectral_norm_backward(&w, &g, &u, &v, &sigma, rows, cols)
                    .unwrap(),
            )
        });
        self.report("spectral_norm_backward", shape, t, 4.0 * f, None);
    }

    fn adam(&mut self, sizes: &[usize], shape: &str) {
        if !self.wants("adam") {
            return;
        }
        let b = self.be.clone();
        let mut p: Vec<Storage> = sizes.iter().map(|&n| self.data(n, -0.1, 0.1)).collect();
        let g: Vec<Storage> = sizes.iter().map(|&n| self.data(n, -1.0, 1.0)).collect();
        let mut m: Vec<Storage> = sizes.iter().map(|&n| self.data(n, -0.1, 0.1)).collect();
        let mut v: Vec<Storage> = sizes.iter().map(|&n| self.data(n, 0.0, 0.1)).collect();
        let total: usize = sizes.iter().sum();
        let step = AdamStep {
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            bias_correction1: 0.5,
            bias_correction2: 0.001,
        };
        let t = self.time(|| {
            let mut items: Vec<AdamItem<'_>> = p
                .iter_mut()
                .zip(&g)
                .zip(m.iter_mut().zip(v.iter_mut()))
                .map(|((param, grad), (m, v))| AdamItem {
                    param,
                    grad,
                    m,
                    v,
                    lr: 2e-4,
                })
                .collect();
            b.adam_update(&mut items, step).unwrap();
        });
        // Reads p, g, m, v; writes p, m, v.
        self.report("adam_update", shape, t, 7.0 * 4.0 * total as f64, None);
    }

    /// The fused GAN losses (`--filter bce`, `--filter hinge`).
    fn losses(&mut self, n: usize, shape: &str) {
        let b = self.be.clone();
        let x = self.data(n, -3.0, 3.0);
        if self.wants("bce") {
            let t = self.time(|| drop(b.bce_with_logits(&x, 1.0).unwrap()));
            self.report("bce_with_logits", shape, t, 8.0 * n as f64, None);
        }
        if self.wants("hinge") {
            let t = self.time(|| drop(b.hinge_with_logits(&x, HingeTerm::Real).unwrap()));
            self.report("hinge_with_logits", shape, t, 8.0 * n as f64, None);
        }
    }
}

/// A transposed conv of the generator as the geometry of the conv it is the backward-data of.
fn up(n: usize, c_in: usize, hw: usize, c_out: usize, first: bool) -> ConvGeom {
    if first {
        ConvGeom::transposed(n, c_in, hw, hw, c_out, 4, 1, 0, 0).unwrap()
    } else {
        ConvGeom::transposed(n, c_in, hw, hw, c_out, 4, 2, 1, 0).unwrap()
    }
}

fn down(n: usize, c_in: usize, hw: usize, c_out: usize, last: bool) -> ConvGeom {
    if last {
        ConvGeom::conv(n, c_in, hw, hw, c_out, 4, 1, 0).unwrap()
    } else {
        ConvGeom::conv(n, c_in, hw, hw, c_out, 4, 2, 1).unwrap()
    }
}

fn main() {
    let o = parse_args();
    let device = match o.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => artgan::backend::select::resolve(artgan::backend::select::DeviceSpec::Auto).unwrap(),
    };
    let be = backend(device).unwrap_or_else(|e| panic!("{device}: {e:#}"));
    let name = match device {
        Device::Cuda(i) => artgan::backend::cuda::device_name(i),
        Device::Cpu => "cpu".into(),
    };
    let smoke = device == Device::Cpu || name.contains("emulated");
    if smoke {
        println!(
            "SMOKE TEST on {name}: batch 2, one call per kernel. These are not GPU figures; \
             run on a GPU for them."
        );
    }
    let mut b = Bench {
        be: be.clone(),
        smoke,
        filter: o.filter,
        copy_gbs: 1.0,
        peak_tflops: o.peak_tflops.or_else(|| known_peak(&name)),
        rng: Rng::new(1),
        conv_impl: o
            .conv_impl
            .unwrap_or_else(artgan::flags::conv_impl_from_env),
    };
    // Copy bandwidth on a buffer far larger than any L2 (read + write per element).
    let copy_len = if smoke { 1 << 20 } else { 64 << 20 };
    let src = b.data(copy_len, -1.0, 1.0);
    let t = b.time(|| drop(be.copy(&src).unwrap()));
    b.copy_gbs = 8.0 * copy_len as f64 / t / 1e9;
    println!(
        "device {name} ({device}); device-to-device copy of {} MiB: {:.1} GB/s{}",
        (copy_len * 4) >> 20,
        b.copy_gbs,
        b.peak_tflops
            .map(|p| format!("; fp32 peak {p} TFLOP/s"))
            .unwrap_or_default()
    );
    drop(src);

    // DCGAN-64 (pytorch/examples: nz 100, ngf = ndf = 64), batch 128.
    let n = if smoke { 2 } else { 128 };
    println!("\n-- dcgan 64 px, batch {n}");
    let gen = [
        (100, 1, 512, true),
        (512, 4, 256, false),
        (256, 8, 128, false),
        (128, 16, 64, false),
        (64, 32, 3, false),
    ];
    for (ci, hw, co, first) in gen {
        let g = up(n, ci, hw, co, first);
        b.conv(&g, &format!("G convT {ci}->{co} @{}", g.h));
    }
    let disc = [
        (3, 64, 64, false),
        (64, 32, 128, false),
        (128, 16, 256, false),
        (256, 8, 512, false),
        (512, 4, 1, true),
    ];
    for (ci, hw, co, last) in disc {
        b.conv(
            &down(n, ci, hw, co, last),
            &format!("D conv {ci}->{co} @{hw}"),
        );
    }
    for (c, hw) in [(512, 16), (256, 64), (128, 256), (64, 1024)] {
        let d = ChannelDims { n, c, hw };
        b.batch_norm(d, BatchNormAct::Relu, &format!("G bn {c}x{hw}"));
    }
    for (c, hw) in [(128, 256), (256, 64), (512, 16)] {
        let d = ChannelDims { n, c, hw };
        b.batch_norm(d, BatchNormAct::LeakyRelu(0.2), &format!("D bn {c}x{hw}"));
    }
    b.elementwise(n * 64 * 32 * 32, "D act 64x32x32");
    // GLU at a FastGAN-256 generator block's shape (512 channels gated to 256 at 16x16).
    let d = ChannelDims {
        n,
        c: 256,
        hw: 16 * 16,
    };
    b.glu(d, "G glu 512->256 @16");
    b.fastgan_ops(n);
    b.losses(n, "D logits");
    // DCGAN-64 parameter tensors (G then D), as Adam sees them.
    b.adam(
        &[
            100 * 512 * 16,
            512,
            512,
            512 * 256 * 16,
            256,
            256,
            256 * 128 * 16,
            128,
            128,
            128 * 64 * 16,
            64,
            64,
            64 * 3 * 16,
        ],
        "G params (3.6 M)",
    );

    // Classical 128 px (seed 001: latent 128, widths 64), batch 64.
    let n = if smoke { 2 } else { 64 };
    println!("\n-- classical 128 px, batch {n}");
    let gen = [
        (128, 1, 1024, true),
        (1024, 4, 512, false),
        (512, 8, 256, false),
        (256, 16, 128, false),
        (128, 32, 64, false),
        (64, 64, 3, false),
    ];
    for (ci, hw, co, first) in gen {
        let g = up(n, ci, hw, co, first);
        b.conv(&g, &format!("G convT {ci}->{co} @{}", g.h));
    }
    let disc = [
        (3, 128, 64, false),
        (64, 64, 128, false),
        (128, 32, 256, false),
        (256, 16, 512, false),
        (512, 8, 1, true),
    ];
    for (ci, hw, co, last) in disc {
        b.conv(
            &down(n, ci, hw, co, last),
            &format!("D conv {ci}->{co} @{hw}"),
        );
        b.spectral_norm(co, ci * 16, &format!("D sn {co}x{}", ci * 16));
    }
    for (c, hw) in [(1024, 16), (512, 64), (256, 256), (128, 1024), (64, 4096)] {
        let d = ChannelDims { n, c, hw };
        b.batch_norm(d, BatchNormAct::Relu, &format!("G bn {c}x{hw}"));
    }
    b.elementwise(n * 64 * 64 * 64, "D act 64x64x64");
}
