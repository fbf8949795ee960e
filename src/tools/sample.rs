//! `artgan sample`: images from random latents, one PNG each, optionally a grid of them all.

use super::{draw_latents, generate_chunks, grid_nrow, parse_truncation, LATENT_STREAM};
use crate::checkpoint;
use crate::cli::{prepare_out_dir, write_png, GeneratorArgs};
use crate::data::save_grid_png;
use crate::nn::Mode;
use crate::rng::Rng;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Number of images.
    #[arg(long, value_parser = crate::cli::parse_whole::<usize>, default_value_t = 16)]
    pub count: usize,
    /// Seed of the latents.
    #[arg(long, value_parser = crate::cli::parse_whole::<u64>, default_value_t = 0)]
    pub seed: u64,
    /// Output folder [default: RUN_DIR/samples-seed-S].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write grid.png: all the images in one square-ish grid.
    #[arg(long)]
    pub grid: bool,
    /// Truncation trick: draw each latent component from a standard normal truncated to
    /// [-T, T] (out-of-range draws are redrawn). Smaller T gives more typical, cleaner images
    /// with less variety; large T is plain sampling. Try 0.5-1.
    #[arg(long, value_name = "T", value_parser = parse_truncation)]
    pub truncation: Option<f32>,
    /// Normalise with the batch's own statistics instead of the running ones (as the training
    /// grids do); images then depend on which others are in the batch (of at most 64).
    #[arg(long)]
    pub batch_stats: bool,
    /// Write into --out even if it already holds files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: &SampleArgs) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let mode = if a.batch_stats {
        if a.count < 2 {
            bail!("--batch-stats needs --count of at least 2");
        }
        Mode::BatchStats
    } else {
        Mode::Eval
    };
    let (g, device) = a.generator.load()?;
    let out = a.out.clone().unwrap_or_else(|| {
        a.generator
            .checkpoint
            .join(format!("samples-seed-{}", a.seed))
    });
    prepare_out_dir(&out, a.force)?;
    let mut rng = Rng::derive(a.seed, LATENT_STREAM);
    let z = draw_latents(&mut rng, a.count, g.config.nz, a.truncation, device)?;
    let size = g.config.image_size;
    let per = 3 * size * size;
    // Only the grid needs every image at once.
    let mut all = Vec::new();
    generate_chunks(&g, &z, mode, |start, images| {
        for (j, img) in images.chunks_exact(per).enumerate() {
            write_png(img, size, &out.join(format!("sample-{:04}.png", start + j)))?;
        }
        if a.grid {
            all.extend_from_slice(images);
        }
        Ok(())
    })?;
    if a.grid {
        save_grid_png(
            &all,
            a.count,
            size,
            grid_nrow(a.count),
            &out.join("grid.png"),
        )?;
    }
    checkpoint::save_tensors(&out.join("latents.safetensors"), &[("z", &z)])?;
    println!(
        "wrote {} images{} and latents.safetensors to {}",
        a.count,
        if a.grid { ", grid.png" } else { "" },
        out.display()
    );
    Ok(())
}
