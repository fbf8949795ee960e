//! Whole training steps of both presets on the GPU against the CPU reference: the same seed
//! gives the same initial weights (drawn on the host), latents, dropout masks and input noise
//! (counter-based, identical on both backends), so the two runs differ only by f32 rounding.
//!
//! Tolerances: the losses and D outputs are sums over the batch and agree to ~1e-4 relative.
//! Weights after Adam steps: Adam's first updates are close to lr·sign(g), so an element whose
//! gradient is almost exactly 0 can move by up to 2·lr·steps differently on the two backends
//! while every other element agrees to float rounding. Hence: every element within
//! 2·lr·steps, and all but 0.1% within 2e-6 + 1e-3·|w|.
//!
//! Without a GPU each test prints `skipped: <reason>`; with ARTGAN_REQUIRE_GPU=1 it fails.

use artgan::backend::{backend, Device};
use artgan::nn::{ModelConfig, Module, Preset};
use artgan::rng::Rng;
use artgan::tensor::Tensor;
use artgan::train::{TrainConfig, Trainer};

fn gpu() -> Option<Device> {
    match backend(Device::Cuda(0)) {
        Ok(_) => Some(Device::Cuda(0)),
        Err(e) => {
            if std::env::var("ARTGAN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("ARTGAN_REQUIRE_GPU=1 but the CUDA backend is unavailable: {e:#}");
            }
            println!(
                "skipped: {}",
                format!("{e:#}").lines().next().unwrap_or_default()
            );
            None
        }
    }
}

fn close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-3)
}

fn compare_weights(what: &str, cpu: &dyn Module, gpu: &dyn Module, bound: f32) {
    let (pc, pg) = (cpu.parameters(), gpu.parameters());
    assert_eq!(pc.len(), pg.len());
    let (mut total, mut loose) = (0usize, 0usize);
    for ((name, a), (_, b)) in pc.iter().zip(&pg) {
        let (a, b) = (a.to_vec().unwrap(), b.to_vec().unwrap());
        for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
            assert!(y.is_finite(), "{what} {name}[{i}] is {y} on the GPU");
            let d = (x - y).abs();
            assert!(
                d <= bound,
                "{what} {name}[{i}]: cpu {x}, gpu {y} differ by more than {bound}"
            );
            if d > 2e-6 + 1e-3 * x.abs() {
                loose += 1;
            }
            total += 1;
        }
    }
    assert!(
        loose * 1000 <= total,
        "{what}: {loose} of {total} weights differ by more than float rounding"
    );
}

fn step_both(preset: Preset, d_steps: usize, steps: usize) {
    let Some(gpu_device) = gpu() else { return };
    let model = ModelConfig {
        preset,
        image_size: 32,
        nz: 16,
        ngf: 8,
        ndf: 8,
    };
    let mut cfg = TrainConfig::for_model(model);
    cfg.batch_size = 8;
    cfg.d_steps = d_steps;
    cfg.seed = 11;
    let mut on_cpu = Trainer::new(cfg.clone(), Device::Cpu).unwrap();
    let mut on_gpu = Trainer::new(cfg.clone(), gpu_device).unwrap();
    compare_weights("initial G", &on_cpu.g, &on_gpu.g, 0.0);

    let mut rng = Rng::new(5);
    for step in 0..steps {
        let real = rng.uniform_vec(8 * 3 * 32 * 32, -1.0, 1.0);
        let shape = [8, 3, 32, 32];
        let a = on_cpu
            .step(&Tensor::from_vec(real.clone(), &shape, Device::Cpu).unwrap())
            .unwrap();
        let b = on_gpu
            .step(&Tensor::from_vec(real, &shape, gpu_device).unwrap())
            .unwrap();
        println!(
            "{preset} step {step}: loss_d cpu {} gpu {}, loss_g cpu {:?} gpu {:?}, D(x) cpu {} gpu {}",
            a.loss_d, b.loss_d, a.loss_g, b.loss_g, a.d_x, b.d_x
        );
        assert!(
            close(a.loss_d, b.loss_d, 1e-3),
            "{preset} step {step}: loss_d"
        );
        assert!(close(a.d_x, b.d_x, 1e-3), "{preset} step {step}: D(x)");
        assert!(
            close(a.d_g_z, b.d_g_z, 1e-3),
            "{preset} step {step}: D(G(z))"
        );
        assert_eq!(a.loss_g.is_some(), b.loss_g.is_some());
        if let (Some(x), Some(y)) = (a.loss_g, b.loss_g) {
            assert!(close(x, y, 1e-3), "{preset} step {step}: loss_g");
        }
    }
    let bound = 2.0 * cfg.lr_d.max(cfg.lr_g) * steps as f32 + 1e-6;
    compare_weights("G", &on_cpu.g, &on_gpu.g, bound);
    compare_weights("D", &on_cpu.d, &on_gpu.d, bound);
}

#[test]
fn dcgan_training_step_gpu_matches_cpu() {
    step_both(Preset::Dcgan, 1, 3);
}

#[test]
fn classical_training_step_gpu_matches_cpu() {
    // d_steps 2: both a D-only step and a D+G step are compared.
    step_both(Preset::Classical, 2, 4);
}

/// Batches of one constant value, made on the device (a huge batch needs no host memory).
struct ConstantBatches {
    batch: usize,
    size: usize,
    served: bool,
}

impl artgan::train::BatchSource for ConstantBatches {
    fn image_count(&self) -> usize {
        self.batch
    }
    fn batches_per_epoch(&self) -> usize {
        1
    }
    fn start_epoch(&mut self, _epoch: usize) {
        self.served = false;
    }
    fn next_batch(&mut self, device: Device) -> anyhow::Result<Option<Tensor>> {
        if std::mem::replace(&mut self.served, true) {
            return Ok(None);
        }
        let s = self.size;
        Tensor::full(&[self.batch, 3, s, s], 0.25, device).map(Some)
    }
}

#[test]
fn out_of_gpu_memory_names_a_batch_size_that_fits() {
    let Some(dev) = gpu() else { return };
    // The published classical model at 128 px with 65536 images per batch: the first
    // discriminator activation alone is 64·64·64·65536·4 bytes = 64 GiB, plus everything else.
    let mut cfg = TrainConfig::for_model(ModelConfig::full(Preset::Classical));
    cfg.batch_size = 65536;
    cfg.epochs = 1;
    cfg.ema = false;
    let dir = tempfile::tempdir().unwrap();
    let mut data = ConstantBatches {
        batch: cfg.batch_size,
        size: cfg.model.image_size,
        served: false,
    };
    let mut opts = artgan::train::RunOptions::new(dir.path().to_path_buf(), dev);
    let Err(err) = artgan::train::train(cfg, &mut data, &mut opts) else {
        panic!("a batch of 65536 at 128 px trained: the test needs a larger batch");
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains("out of GPU memory at batch size 65536"),
        "{msg}"
    );
    let advised: usize = msg
        .split("--batch-size ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --batch-size advice in: {msg}"));
    assert!((2..65536).contains(&advised), "{msg}");
    // The advice holds: one step at that batch size runs.
    let mut cfg = TrainConfig::for_model(ModelConfig::full(Preset::Classical));
    cfg.batch_size = advised;
    cfg.d_steps = 1;
    let mut t = Trainer::new(cfg, dev).unwrap();
    let s = ModelConfig::full(Preset::Classical).image_size;
    let real = Tensor::full(&[advised, 3, s, s], 0.25, dev).unwrap();
    t.step(&real).unwrap();
    println!("out-of-memory advice at 128 px classical: --batch-size {advised}");
}
