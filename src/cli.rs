//! The `artgan` command line: `train`, `sample` and `explore`.

use crate::backend::{select, Device};
use crate::checkpoint;
use crate::data::{self, AugmentArgs, DataArgs, ExploreArgs};
use crate::nn::{Mode, ModelConfig, Preset};
use crate::rng::Rng;
use crate::tensor::{no_grad, Tensor};
use crate::train::{self, RunOptions, TrainConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::fs;
use std::path::{Path, PathBuf};

/// Epochs of a plain `artgan train` (2048 built-in images, 640 steps at batch 64): a few
/// minutes on a 2-core CPU at the default size, enough for the built-in paintings'
/// sky/horizon/ground layout to appear in the grids.
pub const DEFAULT_EPOCHS: usize = 20;

/// Train GANs that paint artworks, on a hand-written tensor engine (CPU reference and CUDA).
#[derive(Parser, Debug)]
#[command(name = "artgan", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a generator/discriminator pair (built-in paintings unless --data is given).
    Train(TrainArgs),
    /// Generate images with a trained generator.
    Sample(SampleArgs),
    /// Explore a dataset: counts per artist, genres, nationalities, image sizes, charts and
    /// sample grids.
    Explore(ExploreArgs),
    /// Measure a trained generator: the sliced Wasserstein distance (Progressive GAN) between
    /// its images and the real ones, per pyramid level.
    Evaluate(crate::cli_evaluate::EvaluateArgs),
}

/// `--device` and `--conv-impl`, shared by every command that computes.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Compute device: auto (CUDA when it works, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Convolution implementation on CUDA: cudnn, or own (im2col kernels + cuBLAS)
    /// [default: cudnn, or ARTGAN_CONV_IMPL].
    #[arg(long, value_enum)]
    pub conv_impl: Option<ConvImplArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvImplArg {
    Cudnn,
    Own,
}

impl DeviceArgs {
    /// Applies `--conv-impl` and resolves `--device` (printing why when auto picks the CPU).
    pub fn resolve(&self) -> Result<Device> {
        use crate::backend::cuda::{set_conv_impl, ConvImpl};
        match self.conv_impl {
            Some(ConvImplArg::Cudnn) => set_conv_impl(ConvImpl::Cudnn),
            Some(ConvImplArg::Own) => set_conv_impl(ConvImpl::Own),
            None => {}
        }
        select::resolve(select::parse_device(&self.device)?)
    }
}

/// Image size, widths and epochs default to a small configuration that trains in minutes on a
/// 2-core CPU; `--full` selects the preset's published architecture instead.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model recipe: dcgan (pytorch/examples) or classical (seed 001).
    #[arg(long, value_enum, default_value_t = Preset::Dcgan)]
    pub preset: Preset,
    /// Use the preset's published sizes (dcgan: 64 px, ngf = ndf = 64; classical: 128 px,
    /// ngf = ndf = 64). Explicit --image-size/--ngf/--ndf still override.
    #[arg(long)]
    pub full: bool,
    /// Passes over the data [default: 20].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam learning rate of D and G (classical: G's initial stage; its detail stage gets
    /// lr/4, i.e. the seed's 2e-4 and 5e-5).
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f32,
    /// Latent size [default: 100 for dcgan, 128 for classical].
    #[arg(long)]
    pub nz: Option<usize>,
    /// Generator width (channels of its last hidden layer) [default: 32, --full 64].
    #[arg(long)]
    pub ngf: Option<usize>,
    /// Discriminator width (channels of its first layer) [default: 32, --full 64].
    #[arg(long)]
    pub ndf: Option<usize>,
    /// Image side: 32, 64 or 128 [default: 32; --full: 64 dcgan, 128 classical].
    #[arg(long)]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub augment: AugmentArgs,
    /// Seed of every random stream (init, latents, dropout/noise, data order).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder [default: runs/<preset>-NNN, the first free number].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the fixed-noise grid every N epochs (and always after the last one).
    #[arg(long, default_value_t = 1)]
    pub sample_every: usize,
    /// Discriminator updates per generator update [default: 1 for dcgan, 4 for classical].
    #[arg(long)]
    pub d_steps: Option<usize>,
    /// Train into --out even if it already holds files (they are overwritten).
    #[arg(long)]
    pub force: bool,
    /// No per-epoch lines and no progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Which trained generator to use, shared by the commands that use one.
#[derive(Args, Debug, Clone)]
pub struct GeneratorArgs {
    /// Run folder written by `artgan train` (its final weights, or its newest checkpoint while
    /// it is still training), or one checkpoint folder RUN/checkpoints/epoch-NNNN.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Use the raw generator instead of the exponential moving average of its weights.
    #[arg(long)]
    pub no_ema: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl GeneratorArgs {
    /// Resolves the device and loads the generator (saying which weights when not the EMA).
    pub fn load(&self) -> Result<(crate::nn::Generator, Device)> {
        let device = self.device.resolve()?;
        let (g, ema) = checkpoint::load_sampling_generator(&self.checkpoint, !self.no_ema, device)?;
        if !ema && !self.no_ema {
            eprintln!(
                "note: {} has no EMA weights; using the raw generator",
                self.checkpoint.display()
            );
        }
        Ok((g, device))
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Number of images.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Seed of the latents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder [default: RUN_DIR/samples-seed-S].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Normalise with the batch's own statistics instead of the running ones (as the training
    /// grids do); images then depend on which others are in the batch.
    #[arg(long)]
    pub batch_stats: bool,
    /// Write into --out even if it already holds files.
    #[arg(long)]
    pub force: bool,
}

/// Creates `dir` (and parents) and checks it can take our files. An existing non-empty folder
/// is refused unless `force`, so an earlier run is never overwritten by accident.
pub fn prepare_out_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("output {} exists and is not a folder", dir.display());
        }
        let non_empty = fs::read_dir(dir)
            .with_context(|| format!("cannot read output folder {}", dir.display()))?
            .next()
            .is_some();
        if non_empty && !force {
            bail!(
                "output folder {} is not empty: choose another --out or pass --force to overwrite",
                dir.display()
            );
        }
    } else {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    }
    // Probe: fail now, not after an hour of training.
    let probe = dir.join(".artgan-write-test");
    fs::write(&probe, b"")
        .with_context(|| format!("output folder {} is not writable", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// `runs/<preset>-NNN`, the first that does not exist.
fn default_run_dir(preset: Preset) -> PathBuf {
    (1..)
        .map(|i| PathBuf::from(format!("runs/{preset}-{i:03}")))
        .find(|p| !p.exists())
        .expect("some run number is free")
}

/// The model and recipe a `train` command asks for.
pub fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let full = ModelConfig::full(a.preset);
    let model = ModelConfig {
        preset: a.preset,
        image_size: a
            .image_size
            .unwrap_or(if a.full { full.image_size } else { 32 }),
        nz: a.nz.unwrap_or(full.nz),
        ngf: a.ngf.unwrap_or(if a.full { full.ngf } else { 32 }),
        ndf: a.ndf.unwrap_or(if a.full { full.ndf } else { 32 }),
    };
    model.validate()?;
    if a.batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut cfg = TrainConfig::for_model(model);
    cfg.epochs = a.epochs.unwrap_or(DEFAULT_EPOCHS);
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr;
    if a.preset == Preset::Classical {
        cfg.lr_detail = a.lr / 4.0;
    } else {
        cfg.lr_detail = a.lr;
    }
    if let Some(k) = a.d_steps {
        cfg.d_steps = k;
    }
    cfg.sample_every = a.sample_every;
    cfg.seed = a.seed;
    cfg.device = a.device.device.clone();
    cfg.validate()?;
    Ok(cfg)
}

pub fn run_train(a: &TrainArgs) -> Result<()> {
    let mut cfg = train_config(a)?;
    // Seed 001 rotates by at most 5 degrees; pytorch/examples does not rotate.
    let default_rotate = if a.preset == Preset::Classical {
        5.0
    } else {
        0.0
    };
    let augment = a.augment.resolve(default_rotate)?;
    let device = a.device.resolve()?;
    let out = a.out.clone().unwrap_or_else(|| default_run_dir(a.preset));
    prepare_out_dir(&out, a.force)?;
    let size = cfg.model.image_size;
    let set = data::load_shared(&a.data, size, cfg.seed, &out)?;
    cfg.data = match &a.data.data {
        Some(path) => format!("{} images from {}", set.len(), path.display()),
        None => format!(
            "built-in procedural paintings ({} images, seed {})",
            set.len(),
            cfg.seed
        ),
    };
    if set.len() < cfg.batch_size {
        bail!(
            "the dataset has {} images, fewer than one batch of {}: lower --batch-size",
            set.len(),
            cfg.batch_size
        );
    }
    let mut data = data::Loader::new(set, cfg.batch_size, augment, cfg.seed);
    let m = &cfg.model;
    if !a.quiet {
        println!(
            "artgan train: preset {}, {}x{} px, nz {}, ngf {}, ndf {}, batch {}, {} epochs, lr {}, {} D step(s) per G step, device {}, seed {}",
            m.preset, m.image_size, m.image_size, m.nz, m.ngf, m.ndf, cfg.batch_size, cfg.epochs,
            cfg.lr, cfg.d_steps, device, cfg.seed
        );
        println!(
            "augmentation: {}",
            match (augment.flip, augment.rotate_deg > 0.0) {
                (false, false) => "none".to_string(),
                (true, false) => "random horizontal flip".to_string(),
                (false, true) => format!("random rotation up to {} degrees", augment.rotate_deg),
                (true, true) => format!(
                    "random horizontal flip and rotation up to {} degrees",
                    augment.rotate_deg
                ),
            }
        );
        println!("writing to {}", out.display());
    }
    let opts = RunOptions {
        out: out.clone(),
        device,
        progress: !a.quiet,
        verbose: !a.quiet,
    };
    train::train(cfg, &mut data, &opts)?;
    if !a.quiet {
        println!(
            "done: {}/generator.safetensors, discriminator.safetensors, metrics.csv, samples/",
            out.display()
        );
    }
    Ok(())
}

pub fn run_sample(a: &SampleArgs) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let (g, device) = a.generator.load()?;
    let out = a.out.clone().unwrap_or_else(|| {
        a.generator
            .checkpoint
            .join(format!("samples-seed-{}", a.seed))
    });
    prepare_out_dir(&out, a.force)?;
    let nz = g.config.nz;
    let mut rng = Rng::derive(a.seed, "sample-latents");
    let z = Tensor::randn(&[a.count, nz, 1, 1], 0.0, 1.0, &mut rng, device)?;
    let mode = if a.batch_stats {
        if a.count < 2 {
            bail!("--batch-stats needs --count of at least 2");
        }
        Mode::BatchStats
    } else {
        Mode::Eval
    };
    let images = {
        let _guard = no_grad();
        g.forward(&z, &mut crate::nn::Ctx::new(mode, &mut Rng::new(0)))?
            .to_vec()?
    };
    let size = g.config.image_size;
    let per = 3 * size * size;
    for i in 0..a.count {
        let path = out.join(format!("sample-{i:04}.png"));
        write_png(&images[i * per..(i + 1) * per], size, &path)?;
    }
    checkpoint::save_tensors(&out.join("latents.safetensors"), &[("z", &z)])?;
    println!(
        "wrote {} images and latents.safetensors to {}",
        a.count,
        out.display()
    );
    Ok(())
}

/// One CHW image in [-1, 1] as an RGB PNG, written atomically.
pub fn write_png(chw: &[f32], size: usize, path: &Path) -> Result<()> {
    let plane = size * size;
    let img = image::RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let i = y as usize * size + x as usize;
        image::Rgb(
            [0, 1, 2].map(|k| ((chw[k * plane + i].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8),
        )
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    checkpoint::write_atomic(path, &bytes)
}

pub fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Train(a) => run_train(a),
        Command::Sample(a) => run_sample(a),
        Command::Explore(a) => data::explore(a),
        Command::Evaluate(a) => crate::cli_evaluate::run_evaluate(a),
    }
}
