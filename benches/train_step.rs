//! One training step (D step + G step + EMA, as `artgan train` does per batch) on a fixed random
//! batch, timed after a warm-up. The model and recipe come from the `train` command's own flags
//! after `--`, parsed by the same code (`artgan::cli::train_config`):
//!
//! ```sh
//! cargo bench --bench train_step -- --preset dcgan --image-size 32 --ngf 32 --ndf 32 \
//!     --nz 100 --batch-size 64 --device cpu
//! ```
//!
//! Without flags: the train command's defaults (dcgan 32 px, widths 32, batch 64) on the CPU.
//! `--steps N` fixes the number of timed steps (default: up to 30 within 20 s, at least 5).
//! Prints one line naming the config and ending in `N images/s` (the median step).

use artgan::cli::{train_config, TrainArgs};
use artgan::rng::Rng;
use artgan::tensor::Tensor;
use artgan::train::Trainer;
use clap::Parser;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "train_step")]
struct BenchArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Timed steps (default: up to 30 within 20 s, at least 5).
    #[arg(long)]
    steps: Option<usize>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<String> = std::env::args().collect();
    // The train command defaults to --device auto; the bench defaults to the CPU.
    if !argv
        .iter()
        .any(|a| a == "--device" || a.starts_with("--device="))
    {
        argv.extend(["--device".to_string(), "cpu".to_string()]);
    }
    let args = BenchArgs::parse_from(argv);
    let cfg = train_config(&args.train)?;
    let device = args.train.device.resolve()?;
    let (batch, size) = (cfg.batch_size, cfg.model.image_size);
    let name = format!("{}-{size}px-w{}-b{batch}", cfg.model.preset, cfg.model.ngf);
    let mut trainer = Trainer::new(cfg, device)?;
    let mut rng = Rng::new(1);
    let real = Tensor::from_vec(
        rng.uniform_vec(batch * 3 * size * size, -1.0, 1.0),
        &[batch, 3, size, size],
        device,
    )?;
    for _ in 0..3 {
        trainer.step(&real)?;
    }
    let backend = real.backend();
    backend.synchronize()?;
    let mut times = Vec::new();
    let budget = Instant::now();
    let done = |n: usize, secs: f64| match args.steps {
        Some(s) => n >= s,
        None => n >= 30 || (n >= 5 && secs >= 20.0),
    };
    while !done(times.len(), budget.elapsed().as_secs_f64()) {
        let t = Instant::now();
        trainer.step(&real)?;
        backend.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "train_step/{device}/{name}: median {:.2} ms over {} runs, {:.1} images/s",
        median * 1e3,
        times.len(),
        batch as f64 / median
    );
    Ok(())
}
