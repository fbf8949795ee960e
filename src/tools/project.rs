//! `artgan project`: finds the latent whose image is closest to a photograph (GAN inversion by
//! optimising z with G frozen), then paints variations around it — seed 000's "photograph as a
//! blank canvas".

use super::{generate, grid_nrow};
use super::{prepare_out_dir, run_command, write_png, ClassArgs, ClassCommand, GeneratorArgs};
use crate::amp::Numerics;
use crate::backend::Device;
use crate::checkpoint;
use crate::data::{decode_file, save_grid_png, Fit};
use crate::limits;
use crate::nn::{Ctx, Generator, Mode, Module};
use crate::ops;
use crate::optim::Adam;
use crate::rng::Rng;
use crate::tensor::{no_grad, Tensor};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub generator: GeneratorArgs,
    #[command(flatten)]
    pub classes: super::ClassArgs,
    /// The photograph or painting to project (jpg, png, webp, bmp, …); centre-cropped and
    /// resized to the generator's size.
    #[arg(long)]
    pub image: PathBuf,
    /// Adam steps on the latent.
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, default_value_t = 300)]
    pub steps: usize,
    /// Adam learning rate of the latent.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Seed of the starting candidates and of the variations.
    #[arg(long, value_parser = crate::flags::parse_whole::<u64>, default_value_t = 0)]
    pub seed: u64,
    /// Number of variations painted around the projected latent (0: none).
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, default_value_t = 8)]
    pub variations: usize,
    /// Size of the variations' latent offsets: z* + spread·ε with ε ~ N(0, I). 0 repeats the
    /// closest image; around 1 the variations are about as different as random samples.
    #[arg(long, default_value_t = 0.5)]
    pub spread: f32,
    /// Output folder [default: RUN_DIR/project-<image name>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into --out even if it already holds files: they are moved aside whole to
    /// OUT.replaced-N first (put back if the command fails).
    #[arg(long)]
    pub force: bool,
}

/// Random latents tried before optimising; the one with the lowest loss is the start.
pub const START_CANDIDATES: usize = 16;

/// Weight of the latent prior `(|z|²/nz − 1)²`. Training latents are N(0, I), which in nz
/// dimensions lie near the sphere |z|² = nz; G was never trained on latents far from it, and an
/// unconstrained optimiser chasing pixels drifts there, to images that match the target's
/// pixels better but no longer look like G's paintings (and whose variations fall apart). The
/// term is ~0 near the shell, so it only stops the drift.
pub const PRIOR_WEIGHT: f32 = 0.01;

/// Average-pooling factors of the multi-scale terms (besides the full-resolution one).
pub const POOL_FACTORS: [usize; 2] = [2, 4];

/// How the latent is searched.
#[derive(Clone, Debug)]
pub struct ProjectOptions {
    pub steps: usize,
    pub lr: f32,
    pub seed: u64,
    /// What G (and the pooling convolutions) run with.
    pub numerics: Numerics,
}

/// The result of [`project`].
pub struct Projection {
    /// The best latent found, `[1, nz, 1, 1]`.
    pub z: Tensor,
    /// G(z), CHW in [-1, 1].
    pub image: Vec<f32>,
    /// Loss of the starting latent (the best random candidate).
    pub start_loss: f32,
    /// Loss of `z` (the lowest seen).
    pub final_loss: f32,
    /// Plain pixel MSE of `image` against the target.
    pub pixel_mse: f32,
    /// `(step, loss, pixel MSE)` of the latent after `step` updates, `0..=steps`.
    pub history: Vec<(usize, f32, f32)>,
}

/// Reads `path` as the projection target: centre-cropped, resized to `size`×`size` (Lanczos3,
/// as training images are) and scaled to [-1, 1], CHW.
pub fn load_target(path: &Path, size: usize) -> Result<Vec<f32>> {
    let decoded = decode_file(path, size as u32, Fit::Crop)
        .map_err(|reason| anyhow!("cannot use {} as --image: {reason}", path.display()))?;
    let plane = size * size;
    let mut chw = vec![0.0; 3 * plane];
    for (i, px) in decoded.rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = f32::from(px[c]) / 127.5 - 1.0;
        }
    }
    Ok(chw)
}

/// Per-channel box filters `[3, 3, k, k]` (1/k² on the channel's own plane, 0 across
/// channels): conv2d with stride k is then k×k average pooling, with its backward for free.
fn box_kernels(device: crate::Device) -> Result<Vec<(usize, Tensor)>> {
    POOL_FACTORS
        .iter()
        .map(|&k| {
            let mut w = vec![0.0; 3 * 3 * k * k];
            for c in 0..3 {
                let o = (c * 3 + c) * k * k;
                w[o..o + k * k].fill(1.0 / (k * k) as f32);
            }
            Ok((k, Tensor::from_vec(w, &[3, 3, k, k], device)?))
        })
        .collect()
}

/// Loss of each latent in `z [B, nz, 1, 1]` against `target [B, 3, S, S]`: pixel MSE + the MSE
/// of the ×2 and ×4 average-pooled images + the prior. Returns `([B] total, [B] pixel MSE)`.
/// Pooling the difference is pooling both images (it is linear). The coarse terms weight
/// colour and layout, which a small G can match, more than pixel detail, which it cannot, and
/// give the optimiser a smoother signal early on.
fn losses(
    g: &Generator,
    z: &Tensor,
    target: &Tensor,
    boxes: &[(usize, Tensor)],
    numerics: Numerics,
) -> Result<(Tensor, Tensor)> {
    let b = z.shape()[0];
    let image = g.forward(z, &mut Ctx::new(Mode::Eval, &mut Rng::new(0), numerics))?;
    let diff = ops::add(&image, &ops::scale(target, -1.0)?)?;
    let pixel = ops::mean_rows(&ops::mul(&diff, &diff)?)?;
    let mut total = pixel.clone();
    for (k, w) in boxes {
        let pooled = ops::conv2d(&diff, w, None, *k, 0, numerics)?;
        total = ops::add(&total, &ops::mean_rows(&ops::mul(&pooled, &pooled)?)?)?;
    }
    let shell = ops::add(
        &ops::mean_rows(&ops::mul(z, z)?)?,
        &Tensor::full(&[b], -1.0, z.device())?,
    )?;
    let prior = ops::scale(&ops::mul(&shell, &shell)?, PRIOR_WEIGHT)?;
    Ok((ops::add(&total, &prior)?, pixel))
}

/// Projects `target` (CHW in [-1, 1], G's size) into G's latent space: the best of
/// [`START_CANDIDATES`] random latents, then `steps` Adam updates of z alone. G runs in eval
/// mode (running BN statistics, whose backward exists) and its weights and buffers are left
/// exactly as they were.
pub fn project(g: &Generator, target: &[f32], opts: &ProjectOptions) -> Result<Projection> {
    let size = g.config.image_size;
    let (nz, plane) = (g.config.nz, 3 * size * size);
    if target.len() != plane {
        bail!(
            "projection target has {} values, expected 3x{size}x{size}",
            target.len()
        );
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        bail!("--lr {} must be a positive number", opts.lr);
    }
    let device = g.parameters()[0].1.device();
    let boxes = box_kernels(device)?;
    let target_one = Tensor::from_vec(target.to_vec(), &[1, 3, size, size], device)?;

    let start = {
        let _guard = no_grad();
        let mut rng = Rng::derive(opts.seed, "project-start");
        let candidates = rng.normal_vec(START_CANDIDATES * nz, 0.0, 1.0);
        let z = Tensor::from_vec(candidates.clone(), &[START_CANDIDATES, nz, 1, 1], device)?;
        let targets = Tensor::from_vec(
            target.repeat(START_CANDIDATES),
            &[START_CANDIDATES, 3, size, size],
            device,
        )?;
        let l = losses(g, &z, &targets, &boxes, opts.numerics)?.0.to_vec()?;
        let best = (0..START_CANDIDATES)
            .min_by(|&i, &j| l[i].total_cmp(&l[j]))
            .expect("at least one candidate");
        candidates[best * nz..(best + 1) * nz].to_vec()
    };

    let z = Tensor::parameter(start, &[1, nz, 1, 1], device)?;
    // Betas of the usual projection recipes (StyleGAN2's projector), not the GAN's (0.5, …).
    let mut opt = Adam::new(0.9, 0.999, 1e-8);
    opt.add_group("z", opts.lr, vec![("z".to_string(), z.clone())])?;
    let mut history = Vec::with_capacity(opts.steps + 1);
    let mut best: Option<(f32, Vec<f32>)> = None;
    for step in 0..=opts.steps {
        opt.zero_grad();
        let (total, pixel) = losses(g, &z, &target_one, &boxes, opts.numerics)?;
        let (l, p) = (total.item()?, pixel.item()?);
        history.push((step, l, p));
        if !l.is_finite() {
            bail!("projection diverged at step {step} (loss {l}): lower --lr");
        }
        if best.as_ref().is_none_or(|(b, _)| l < *b) {
            best = Some((l, z.to_vec()?));
        }
        if step < opts.steps {
            total.backward()?;
            opt.step()?;
        }
    }
    // The backward passes also filled G's gradients; leave G as it came.
    g.zero_grad();
    let (final_loss, z_best) = best.expect("step 0 always runs");
    let z = Tensor::from_vec(z_best, &[1, nz, 1, 1], device)?;
    let image = generate(g, &z, opts.numerics)?;
    let pixel_mse = image
        .iter()
        .zip(target)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        / plane as f32;
    Ok(Projection {
        z,
        image,
        start_loss: history[0].1,
        final_loss,
        pixel_mse,
        history,
    })
}

pub fn run(a: &ProjectArgs) -> Result<()> {
    run_command(a)
}

impl ClassCommand for ProjectArgs {
    const PER_CLASS_DIR: &'static str = "project-per-class";
    fn generator(&self) -> &GeneratorArgs {
        &self.generator
    }
    fn classes(&self) -> &ClassArgs {
        &self.classes
    }
    fn out(&self) -> Option<&Path> {
        self.out.as_deref()
    }
    fn check(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr {} must be a positive number", self.lr);
        }
        if !(self.spread.is_finite() && self.spread >= 0.0) {
            bail!("--spread {} must be a number of at least 0", self.spread);
        }
        Ok(())
    }
    fn for_class(&self, classes: ClassArgs, n: usize, out: PathBuf) -> Self {
        ProjectArgs {
            classes,
            variations: n,
            out: Some(out),
            ..self.clone()
        }
    }
    fn run_one(&self, g: &Generator, device: Device) -> Result<()> {
        run_one(self, g, device)
    }
}

/// One run on the loaded generator (see [`ClassCommand::run_one`]).
fn run_one(a: &ProjectArgs, g: &Generator, device: Device) -> Result<()> {
    let size = g.config.image_size;
    // Read the image before making the output folder: a typo leaves nothing behind.
    let target = load_target(&a.image, size)?;
    let out = a.out.clone().unwrap_or_else(|| {
        let stem = a
            .image
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy());
        super::default_out(&a.generator.checkpoint, &format!("project-{stem}"))
    });
    // The loss history (a few numbers per step, also in loss.csv) and the variations with
    // their grid are held until written.
    let history = limits::product(&[a.steps, 64]);
    limits::check_output(
        &out,
        "--steps",
        a.steps,
        "the loss history",
        history,
        history,
    )?;
    let (held, written) =
        limits::painting_bytes(limits::product(&[a.variations]), size, g.config.nz, 5);
    let what = "the variations and their latents";
    limits::check_output(&out, "--variations", a.variations, what, held, written)?;
    // Removed again with all it holds if the projection fails (a diverged one, say).
    let claimed = prepare_out_dir(&out, a.force)?;
    project_into(a, g, device, &target, &out)?;
    claimed.keep();
    Ok(())
}

/// Projects `target` and writes every output into `out` (all of them after the projection
/// worked, so a diverged one writes nothing).
fn project_into(
    a: &ProjectArgs,
    g: &Generator,
    device: Device,
    target: &[f32],
    out: &Path,
) -> Result<()> {
    let size = g.config.image_size;
    let opts = ProjectOptions {
        steps: a.steps,
        lr: a.lr,
        seed: a.seed,
        numerics: a.generator.numerics(),
    };
    let p = project(g, target, &opts)?;
    write_png(target, size, &out.join("original.png"))?;
    write_png(&p.image, size, &out.join("closest.png"))?;
    let mut csv = String::from("step,loss,pixel_mse\n");
    for (step, loss, pixel) in &p.history {
        writeln!(csv, "{step},{loss},{pixel}")?;
    }
    checkpoint::write_atomic(&out.join("loss.csv"), csv.as_bytes())?;

    let nz = g.config.nz;
    let mut tensors = vec![("z", p.z.clone())];
    if a.variations > 0 {
        let mut rng = Rng::derive(a.seed, "project-variations");
        let centre = p.z.to_vec()?;
        let zs: Vec<f32> = (0..a.variations)
            .flat_map(|_| {
                let eps = rng.normal_vec(nz, 0.0, 1.0);
                centre
                    .iter()
                    .zip(eps)
                    .map(|(c, e)| c + a.spread * e)
                    .collect::<Vec<_>>()
            })
            .collect();
        let zv = Tensor::from_vec(zs, &[a.variations, nz, 1, 1], device)?;
        let images = generate(g, &zv, opts.numerics)?;
        let per = 3 * size * size;
        for (i, img) in images.chunks_exact(per).enumerate() {
            write_png(img, size, &out.join(format!("variation-{i:02}.png")))?;
        }
        save_grid_png(
            &images,
            a.variations,
            size,
            grid_nrow(a.variations),
            &out.join("variations.png"),
        )?;
        tensors.push(("variations", zv));
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    checkpoint::save_tensors(&out.join("latent.safetensors"), &named)?;
    println!(
        "projected {}: start loss {:.5} (best of {START_CANDIDATES} random latents), final loss {:.5} after {} steps (pixel MSE {:.5})",
        a.image.display(),
        p.start_loss,
        p.final_loss,
        a.steps,
        p.pixel_mse
    );
    println!(
        "wrote original.png, closest.png, {}loss.csv and latent.safetensors to {}",
        if a.variations > 0 {
            "variations.png, variation-NN.png, "
        } else {
            ""
        },
        out.display()
    );
    Ok(())
}
