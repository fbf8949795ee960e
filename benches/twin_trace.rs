//! Writes the trace of a short fp32 CPU run of `--preset lightweight` for its PyTorch twin
//! (`artgan::train::twin_trace`; replayed by `benches/pytorch_lightweight.py`, both run by
//! `scripts/twin-check`):
//!
//! ```sh
//! cargo bench --bench twin_trace -- --out DIR [--steps 50] [--seed 0]
//! ```

use artgan::train::twin_trace::{twin_config, write_twin_trace};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "twin_trace")]
struct Args {
    /// Folder the trace is written into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Training steps traced.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// The run's seed (models, latents, DiffAugment, data order, flips).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    write_twin_trace(&args.out, twin_config(args.seed), args.steps)?;
    println!("{} steps traced into {}", args.steps, args.out.display());
    Ok(())
}
