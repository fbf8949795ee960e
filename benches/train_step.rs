//! CPU training step of a small dcgan (32 px, ngf = ndf = 16, batch 16): one D step plus one G
//! step, as `artgan train` does per batch. Prints the median over timed runs after a warm-up,
//! in images per second, so regressions in any op show up here.

use artgan::backend::Device;
use artgan::nn::{ModelConfig, Preset};
use artgan::rng::Rng;
use artgan::tensor::Tensor;
use artgan::train::{TrainConfig, Trainer};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let model = ModelConfig {
        preset: Preset::Dcgan,
        image_size: 32,
        nz: 100,
        ngf: 16,
        ndf: 16,
    };
    let batch = 16;
    let mut cfg = TrainConfig::for_model(model);
    cfg.batch_size = batch;
    let mut trainer = Trainer::new(cfg, Device::Cpu)?;
    let mut rng = Rng::new(1);
    let real = Tensor::from_vec(
        rng.uniform_vec(batch * 3 * 32 * 32, -1.0, 1.0),
        &[batch, 3, 32, 32],
        Device::Cpu,
    )?;
    for _ in 0..3 {
        trainer.step(&real)?;
    }
    let mut times = Vec::new();
    let budget = Instant::now();
    while times.len() < 30 && (times.len() < 5 || budget.elapsed().as_secs_f64() < 20.0) {
        let t = Instant::now();
        trainer.step(&real)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "train_step/cpu/dcgan-32px-w16-b{batch}: median {:.2} ms over {} runs, {:.1} images/s",
        median * 1e3,
        times.len(),
        batch as f64 / median
    );
    Ok(())
}
