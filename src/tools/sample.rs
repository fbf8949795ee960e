//! `artgan sample`: images from random latents, one PNG each, optionally a grid of them all.

use super::{draw_latents, generate_chunks, grid_nrow, parse_truncation, GEN_BATCH, LATENT_STREAM};
use super::{prepare_out_dir, write_png, GeneratorArgs};
use crate::checkpoint;
use crate::data::save_grid_png;
use crate::limits;
use crate::nn::Mode;
use crate::rng::Rng;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    #[command(flatten)]
    pub generator: GeneratorArgs,
    #[command(flatten)]
    pub classes: super::ClassArgs,
    /// Number of images [default: 16]. A conditional run takes it with --class; for every
    /// class use --per-class.
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>)]
    pub count: Option<usize>,
    /// Seed of the latents.
    #[arg(long, value_parser = crate::flags::parse_whole::<u64>, default_value_t = 0)]
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
    /// Write into --out even if it already holds files: they are moved aside whole to
    /// OUT.replaced-N first (put back if the command fails).
    #[arg(long)]
    pub force: bool,
}

/// Images of `sample` without `--count`.
const DEFAULT_COUNT: usize = 16;

pub fn run(a: &SampleArgs) -> Result<()> {
    let count = a.count.unwrap_or(DEFAULT_COUNT);
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let mode = if a.batch_stats {
        if count < 2 {
            bail!("--batch-stats needs --count of at least 2");
        }
        Mode::BatchStats
    } else {
        Mode::Eval
    };
    let (g, device, _) = a.generator.load()?;
    let numerics = a.generator.numerics();
    let choice = a.classes.resolve(&g, &a.generator.checkpoint)?;
    if let (super::ClassChoice::PerClass(_, table), Some(_)) = (&choice, a.count) {
        bail!(
            "{} is a conditional run of {} classes: --count K needs --class NAME (K images of \
             one class); for N images of every class pass --per-class N",
            a.generator.checkpoint.display(),
            table.len()
        );
    }
    let out = a.out.clone().unwrap_or_else(|| {
        super::default_out(&a.generator.checkpoint, &format!("samples-seed-{}", a.seed))
    });
    let (flag, value, images) = match &choice {
        super::ClassChoice::PerClass(n, table) => {
            let n = if *n == 0 { 8 } else { *n };
            ("--per-class", n, limits::product(&[n, table.len()]))
        }
        _ => ("--count", count, limits::product(&[count])),
    };
    // The grid keeps every image (f32) until it is written.
    let (size, nz) = (g.config.image_size, g.config.nz);
    let (held, written) = limits::painting_bytes(images, size, nz, if a.grid { 4 } else { 0 });
    limits::check_output(&out, flag, value, "the images and latents", held, written)?;
    let claimed = prepare_out_dir(&out, a.force)?;
    if let super::ClassChoice::PerClass(n, table) = &choice {
        run_per_class(
            a,
            &g,
            device,
            mode,
            &out,
            if *n == 0 { 8 } else { *n },
            table,
        )?;
        claimed.keep();
        return Ok(());
    }
    let mut rng = Rng::derive(a.seed, LATENT_STREAM);
    // Only the grid needs every image at once; the latents are drawn chunk by chunk (the same
    // stream as all at once) and kept for latents.safetensors.
    let mut all = Vec::new();
    let mut latents = Vec::new();
    for start in (0..count).step_by(GEN_BATCH) {
        let n = GEN_BATCH.min(count - start);
        let z = draw_latents(&mut rng, n, nz, a.truncation, device)?;
        generate_chunks(&g, &z, mode, numerics, |_, images| {
            write_samples(&out, start, images, size, a.grid.then_some(&mut all))
        })?;
        latents.extend(z.to_vec()?);
    }
    let z = crate::tensor::Tensor::from_vec(latents, &[count, nz, 1, 1], device)?;
    if a.grid {
        save_grid_png(&all, count, size, grid_nrow(count), &out.join("grid.png"))?;
    }
    checkpoint::save_tensors(&out.join("latents.safetensors"), &[("z", &z)])?;
    claimed.keep();
    println!(
        "wrote {} images{} and latents.safetensors to {}",
        count,
        if a.grid { ", grid.png" } else { "" },
        out.display()
    );
    Ok(())
}

/// A conditional run's samples: the same `n` latents painted for every class, class by class
/// (`sample-NNNN.png` in class order; `grid.png` has one row per class).
fn run_per_class(
    a: &SampleArgs,
    g: &crate::nn::Generator,
    device: crate::backend::Device,
    mode: Mode,
    out: &std::path::Path,
    n: usize,
    table: &crate::data::ClassTable,
) -> Result<()> {
    let mut rng = Rng::derive(a.seed, LATENT_STREAM);
    let z = draw_latents(&mut rng, n, g.config.nz, a.truncation, device)?;
    let zv = z.to_vec()?;
    let k = table.len();
    let mut all_z = Vec::with_capacity(k * zv.len());
    let mut labels = Vec::with_capacity(k * n);
    for c in &table.classes {
        all_z.extend_from_slice(&zv);
        labels.extend(std::iter::repeat_n(c.index as u32, n));
    }
    let all_z = crate::tensor::Tensor::from_vec(all_z, &[k * n, g.config.nz, 1, 1], device)?;
    let size = g.config.image_size;
    let mut all = Vec::new();
    let numerics = a.generator.numerics();
    super::generate_chunks_labeled(g, &all_z, &labels, mode, numerics, |start, images| {
        write_samples(out, start, images, size, a.grid.then_some(&mut all))
    })?;
    if a.grid {
        save_grid_png(&all, k * n, size, n, &out.join("grid.png"))?;
    }
    let classes: Vec<String> = table.classes.iter().map(|c| c.name.clone()).collect();
    crate::data::write_atomic(
        &out.join("classes.txt"),
        (classes.join("\n") + "\n").as_bytes(),
    )?;
    checkpoint::save_tensors(&out.join("latents.safetensors"), &[("z", &z)])?;
    println!(
        "wrote {n} images for each of {k} classes ({} in all; sample-[r*{n}..]{} are class r \
         of classes.txt){}, classes.txt and latents.safetensors to {}",
        k * n,
        if a.grid { " and row r of grid.png" } else { "" },
        if a.grid { ", grid.png" } else { "" },
        out.display()
    );
    Ok(())
}

/// Writes a chunk of images (NCHW in [-1, 1]) as `sample-NNNN.png` from number `start` on,
/// keeping them in `grid` too when given.
fn write_samples(
    out: &std::path::Path,
    start: usize,
    images: &[f32],
    size: usize,
    grid: Option<&mut Vec<f32>>,
) -> Result<()> {
    for (j, img) in images.chunks_exact(3 * size * size).enumerate() {
        write_png(img, size, &out.join(format!("sample-{:04}.png", start + j)))?;
    }
    if let Some(grid) = grid {
        grid.extend_from_slice(images);
    }
    Ok(())
}
