//! `artgan train`: its flags, the recipe they ask for (new run or resume) and the run itself.

use crate::backend::Device;
use crate::checkpoint;
use crate::data::{self, AugmentArgs, DataArgs};
use crate::flags::DeviceArgs;
use crate::nn::{ModelConfig, Preset};
use crate::run_folder::claim_run_dir;
use crate::train::{self, RunOptions, TrainConfig};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Epochs of a plain `artgan train` (2048 built-in images, 640 steps at batch 64): a few
/// minutes on a 2-core CPU at the default size, enough for the built-in paintings'
/// sky/horizon/ground layout to appear in the grids.
pub const DEFAULT_EPOCHS: usize = 20;

/// Image size, widths and epochs default to a small configuration that trains in minutes on a
/// 2-core CPU; `--full` selects the preset's published architecture instead. With `--resume RUN`
/// the run's own configuration is used; only the epochs, learning rates, cadences, device and
/// output options may be given again.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Continue the run in this folder from its newest complete checkpoint (`--epochs` is then
    /// the run's new total).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "ConditionArgs")]
    pub resume: Option<PathBuf>,
    /// Model recipe: dcgan (pytorch/examples), classical (seed 001) or dcgan-kaggle (seed 000:
    /// dcgan with batch norm on D's first layer, nz 128; --full: 64 px, batch 128) or
    /// lightweight (FastGAN-class, for small collections: 64 px, nz 256, hinge loss,
    /// DiffAugment color,translation,cutout; --full: 256 px, ngf = ndf = 64).
    #[arg(long, value_enum, default_value_t = Preset::Dcgan, conflicts_with = "resume")]
    pub preset: Preset,
    /// Use the preset's published sizes (dcgan: 64 px, ngf = ndf = 64; classical: 128 px,
    /// ngf = ndf = 64). Explicit --image-size/--ngf/--ndf still override.
    #[arg(long, conflicts_with = "resume")]
    pub full: bool,
    /// Passes over the data (the total, also when resuming) [default: 20].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>)]
    pub epochs: Option<usize>,
    /// Images per batch [default: 64; dcgan-kaggle with --full: 128, as seed 000].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, conflicts_with = "resume")]
    pub batch_size: Option<usize>,
    /// Adam learning rate of D and G [default: 2e-4]; classical: G's detail stage gets a
    /// quarter of it (the seed's 2e-4 and 5e-5). --lr-d/--lr-g/--lr-g-detail override.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Discriminator learning rate [default: --lr].
    #[arg(long)]
    pub lr_d: Option<f32>,
    /// Generator learning rate (classical: its initial stage) [default: --lr].
    #[arg(long)]
    pub lr_g: Option<f32>,
    /// Classical generator's detail-stage learning rate [default: --lr / 4 for classical].
    #[arg(long)]
    pub lr_g_detail: Option<f32>,
    /// Conditional runs: G's class parameters (each class's batch-norm gains and biases) learn
    /// at this multiple of G's lr, so that the classes tell apart early [default: 10; 1 is the
    /// recipe before 2026-12-08].
    #[arg(long, value_name = "X", conflicts_with = "resume")]
    pub class_lr_scale: Option<f32>,
    /// Dynamic learning rates (seed 001): every --lr-window D steps, if D(x) − D(G(z)) > 0.6 G's
    /// lrs go up and D's down by ×1.25 (below 0.1 the reverse), at most 4 notches either way
    /// [default: on for classical, off for dcgan].
    #[arg(long, overrides_with = "no_dynamic_lr", conflicts_with = "resume")]
    pub dynamic_lr: bool,
    /// Turn the dynamic learning-rate rule off.
    #[arg(long, conflicts_with = "resume")]
    pub no_dynamic_lr: bool,
    /// D steps per decision of the dynamic learning-rate rule.
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, default_value_t = train::lr_control::DEFAULT_WINDOW, conflicts_with = "resume")]
    pub lr_window: usize,
    /// Latent size [default: 100 for dcgan, 128 for classical and dcgan-kaggle].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, conflicts_with = "resume")]
    pub nz: Option<usize>,
    /// Generator width (channels of its last hidden layer) [default: 32, --full 64].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, conflicts_with = "resume")]
    pub ngf: Option<usize>,
    /// Discriminator width (channels of its first layer) [default: 32, --full 64].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, conflicts_with = "resume")]
    pub ndf: Option<usize>,
    /// Image side: 32, 64 or 128; lightweight: 64, 128 or 256 [default: 32, lightweight 64;
    /// --full: 64 dcgan, 128 classical, 256 lightweight].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, conflicts_with = "resume")]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Arithmetic: fp32, amp (convolution GEMMs on f16 operands with f32 accumulation; with
    /// --conv-impl cudnn on f16 tensors, outputs f16 too; f32 weights, batch norm and loss,
    /// dynamic loss scaling) or auto (amp on CUDA devices of
    /// compute capability 7.0 or more, fp32 on the CPU). Recorded in config.json; a resumed run
    /// keeps its own.
    #[arg(long, value_enum, default_value_t = crate::amp::PrecisionArg::Auto, conflicts_with = "resume")]
    pub precision: crate::amp::PrecisionArg,
    /// Capture each training step as one CUDA graph and replay it (fewer launches; the same
    /// results bit for bit; a batch shape whose capture fails runs eagerly, with a note):
    /// on|off [default: on for a CUDA device, off on the CPU].
    #[arg(long, value_enum, value_name = "on|off")]
    pub cuda_graphs: Option<Switch>,
    /// With several GPUs (--device cuda:0,1): normalise batch norm with the whole batch's
    /// statistics, all GPUs' (as one GPU with the whole batch would), instead of each GPU's own.
    #[arg(long)]
    pub sync_bn: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub augment: AugmentArgs,
    #[command(flatten)]
    pub condition: data::ConditionArgs,
    /// DiffAugment (Zhao et al. 2020) on every discriminator input, real and fake, in both
    /// steps: any of color,translation,cutout (comma separated), or none [default: none;
    /// lightweight: color,translation,cutout].
    #[arg(long, value_name = "LIST", conflicts_with = "resume")]
    pub diffaugment: Option<String>,
    /// Adversarial loss: bce (binary cross-entropy with logits, non-saturating for G: the
    /// seeds' and pytorch/examples' loss) or hinge (D: max(0, 1 − D(x)) + max(0, 1 + D(G(z))),
    /// G: −D(G(z)); SAGAN, FastGAN) [default: bce; lightweight: hinge].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub loss: Option<crate::ops::GanLoss>,
    /// Seed of every random stream (init, latents, dropout/noise, data order).
    #[arg(long, value_parser = crate::flags::parse_whole::<u64>, default_value_t = 0, conflicts_with = "resume")]
    pub seed: u64,
    /// Run folder [default: runs/<preset>-NNN, the first free number].
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Write the fixed-noise grid every N epochs (and always after the last one).
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>)]
    pub sample_every: Option<usize>,
    /// Write a checkpoint (models, optimiser states, random streams) every N epochs and after
    /// the last one [default: 5].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>)]
    pub checkpoint_every: Option<usize>,
    /// How many of the newest checkpoints to keep [default: 3].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>)]
    pub keep_checkpoints: Option<usize>,
    /// Record the SWD quality metric (see `artgan evaluate`) of the sampling generator in
    /// metrics.csv every N epochs and after the last one (0 = never) [default: 0].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>)]
    pub eval_every: Option<usize>,
    /// Images per set for that SWD (compare numbers only at equal counts) [default: 1024].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>)]
    pub eval_count: Option<usize>,
    /// Record the SWD of the raw and the EMA generator in quality.csv every N training images
    /// (images seen by D), so that runs compare at equal images seen (0 = never) [default: 0].
    #[arg(long, value_parser = crate::flags::parse_whole::<u64>, value_name = "N")]
    pub eval_every_images: Option<u64>,
    /// Do not keep the exponential moving average of the generator's weights (grids and
    /// `sample` then use the raw generator).
    #[arg(long, conflicts_with = "resume")]
    pub no_ema: bool,
    /// Half-life of that average, in training images.
    #[arg(long, default_value_t = train::ema::DEFAULT_HALF_LIFE_IMAGES, conflicts_with = "resume")]
    pub ema_half_life: f64,
    /// Discriminator updates per generator update [default: 1 for dcgan, 4 for classical].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, conflicts_with = "resume")]
    pub d_steps: Option<usize>,
    /// Divergence guard: stop when a loss stays above this for --diverge-steps consecutive
    /// steps (a BCE of 100 means logits of about ±100) [default: 100].
    #[arg(long, value_name = "LOSS")]
    pub diverge_loss: Option<f32>,
    /// Consecutive steps above --diverge-loss that stop the run [default: 200].
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, value_name = "N")]
    pub diverge_steps: Option<usize>,
    /// Start a new run in --out even if it already holds files: they are moved aside whole
    /// to OUT.replaced-N first (put back if the start fails).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// With --resume: also use a checkpoint without a manifest.json (hand-made or copied
    /// files); one whose manifest does not match is still refused.
    #[arg(long, requires = "resume")]
    pub trust_unverified: bool,
    /// No per-epoch lines and no progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The model and recipe a `train` command asks for (a new run).
/// An on/off flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `--cuda-graphs` for a run on `device`: on by default on CUDA; `on` on the CPU is an error.
pub fn resolve_cuda_graphs(a: &TrainArgs, device: Device) -> Result<bool> {
    let cuda = matches!(device, Device::Cuda(_));
    match a.cuda_graphs {
        Some(Switch::On) if !cuda => bail!(
            "--cuda-graphs on needs a CUDA device; this run is on {device} (use --device cuda, \
             or leave --cuda-graphs out)"
        ),
        Some(s) => Ok(s == Switch::On),
        None => Ok(cuda),
    }
}

pub fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let full = ModelConfig::full(a.preset);
    let light = a.preset == Preset::Lightweight;
    let model = ModelConfig {
        preset: a.preset,
        image_size: a.image_size.unwrap_or(match (a.full, light) {
            (true, _) => full.image_size,
            (false, true) => 64,
            (false, false) => 32,
        }),
        nz: a.nz.unwrap_or(full.nz),
        ngf: a.ngf.unwrap_or(if a.full { full.ngf } else { 32 }),
        ndf: a.ndf.unwrap_or(if a.full { full.ndf } else { 32 }),
    };
    model.validate()?;
    let batch_size = a
        .batch_size
        .unwrap_or(if a.full && a.preset == Preset::DcganKaggle {
            128
        } else {
            64
        });
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut cfg = TrainConfig::for_model(model);
    cfg.epochs = DEFAULT_EPOCHS;
    cfg.batch_size = batch_size;
    cfg.condition = a.condition.clone();
    // Unset: the preset's (lightweight: DiffAugment color,translation,cutout, hinge loss).
    if let Some(p) = &a.diffaugment {
        cfg.diffaugment = crate::ops::DiffAugment::parse(p)?;
    }
    if let Some(loss) = a.loss {
        cfg.loss = loss;
    }
    cfg.lr_d = 2e-4;
    cfg.lr_g = 2e-4;
    cfg.lr_g_detail = if a.preset == Preset::Classical {
        5e-5
    } else {
        2e-4
    };
    if let Some(k) = a.d_steps {
        cfg.d_steps = k;
    }
    if a.dynamic_lr {
        cfg.dynamic_lr = true;
    }
    if a.no_dynamic_lr {
        cfg.dynamic_lr = false;
    }
    cfg.lr_window = a.lr_window;
    if let Some(x) = a.class_lr_scale {
        cfg.class_lr_scale = x;
    }
    if a.condition.condition == crate::data::Condition::None {
        // No class parameters: config.json stays as it was before the flag.
        cfg.class_lr_scale = 1.0;
    }
    cfg.ema = !a.no_ema;
    cfg.ema_half_life_images = a.ema_half_life;
    cfg.seed = a.seed;
    cfg.data_args = a.data.clone();
    // Seed 001 rotates by at most 5 degrees; pytorch/examples does not rotate.
    let default_rotate = if a.preset == Preset::Classical {
        5.0
    } else {
        0.0
    };
    cfg.augment = a.augment.resolve(default_rotate)?;
    apply_overrides(&mut cfg, a);
    cfg.validate()?;
    Ok(cfg)
}

/// The learning-rate flags as given, each checked under its own name (a derived value's
/// check would name another flag: `--lr -1` must not say "--lr-d").
fn check_lr_flags(a: &TrainArgs) -> Result<()> {
    for (flag, lr) in [
        ("--lr", a.lr),
        ("--lr-d", a.lr_d),
        ("--lr-g", a.lr_g),
        ("--lr-g-detail", a.lr_g_detail),
    ] {
        if let Some(lr) = lr {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("{flag} must be a positive number, got {lr}");
            }
        }
    }
    Ok(())
}

/// Learning rates above this train on, but almost always diverge: said once at the start.
pub const HIGH_LR: f32 = 1e-2;

/// One warning line per learning rate above [`HIGH_LR`].
fn warn_high_lrs(cfg: &TrainConfig) {
    let high: Vec<String> = [
        ("D", cfg.lr_d),
        ("G", cfg.lr_g),
        ("G detail", cfg.lr_g_detail),
    ]
    .iter()
    .filter(|(_, lr)| *lr > HIGH_LR)
    .map(|(what, lr)| format!("{what} {lr:e}"))
    .collect();
    if !high.is_empty() {
        eprintln!(
            "warning: learning rate above {HIGH_LR:e} ({}): GANs train at about 1e-4 to 1e-3 and \
             diverge at rates like this; the divergence guard stops the run if the losses blow up",
            high.join(", ")
        );
    }
}

/// The options that may change when a run is resumed (and that set a new run's values).
pub(super) fn apply_overrides(cfg: &mut TrainConfig, a: &TrainArgs) {
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(lr) = a.lr {
        cfg.lr_d = lr;
        cfg.lr_g = lr;
        cfg.lr_g_detail = if cfg.model.preset == Preset::Classical {
            lr / 4.0
        } else {
            lr
        };
    }
    if let Some(lr) = a.lr_d {
        cfg.lr_d = lr;
    }
    if let Some(lr) = a.lr_g {
        cfg.lr_g = lr;
        if cfg.model.preset != Preset::Classical {
            cfg.lr_g_detail = lr;
        }
    }
    if let Some(lr) = a.lr_g_detail {
        cfg.lr_g_detail = lr;
    }
    if let Some(n) = a.sample_every {
        cfg.sample_every = n;
    }
    if let Some(n) = a.checkpoint_every {
        cfg.checkpoint_every = n;
    }
    if let Some(n) = a.keep_checkpoints {
        cfg.keep_checkpoints = n;
    }
    if let Some(n) = a.eval_every {
        cfg.eval_every = n;
    }
    if let Some(n) = a.eval_count {
        cfg.eval_count = n;
    }
    if let Some(n) = a.eval_every_images {
        cfg.eval_every_images = n;
    }
    if let Some(x) = a.diverge_loss {
        cfg.diverge_loss = x;
    }
    if let Some(n) = a.diverge_steps {
        cfg.diverge_steps = n;
    }
    cfg.device = a.device.device.clone();
}

fn describe_augment(augment: data::Augment) -> String {
    match (augment.flip, augment.rotate_deg > 0.0) {
        (false, false) => "none".to_string(),
        (true, false) => "random horizontal flip".to_string(),
        (false, true) => format!("random rotation up to {} degrees", augment.rotate_deg),
        (true, true) => format!(
            "random horizontal flip and rotation up to {} degrees",
            augment.rotate_deg
        ),
    }
}

pub fn run_train(a: &TrainArgs) -> Result<()> {
    // Everything that can be checked is checked before any folder is made or touched: a bad
    // flag, device or dataset must leave nothing behind.
    check_lr_flags(a)?;
    let devices = a.device.resolve_list()?;
    let device = devices[0];
    if a.sync_bn && devices.len() < 2 {
        bail!(
            "--sync-bn synchronises batch norm across GPUs: give several, e.g. --device cuda:0,1"
        );
    }
    let cuda_graphs = resolve_cuda_graphs(a, device)?;
    let (mut cfg, out, resume_from, lock, previous, new_run) = match &a.resume {
        Some(run) => match super::resume::open(a, run, device)? {
            Some(r) => (
                r.cfg,
                run.clone(),
                r.from,
                Some(r.lock),
                Some(r.previous),
                None,
            ),
            None => return Ok(()), // already trained that far
        },
        None => {
            let mut cfg = train_config(a)?;
            cfg.device = device.to_string();
            cfg.precision = crate::amp::resolve(a.precision, device)?;
            cfg.run_id = checkpoint::new_run_id();
            // Data found, images left after the filters (decoding comes later).
            data::check_data(&cfg.data_args)?;
            crate::limits::check_training(&cfg, device)?;
            crate::train::parallel::check(&cfg, &devices)?;
            // Locks the folder before looking into it: a second `train` into a running
            // run's folder is told so, not that the folder is not empty.
            let (out, claimed) = claim_run_dir(a.out.as_deref(), a.preset, a.force)?;
            // First thing in the folder: from here on a killed start is resumable (a start
            // that fails below removes it again, and puts back what --force moved aside).
            checkpoint::save_config(&out, &cfg)?;
            (cfg, out, None, None, None, Some(claimed))
        }
    };
    // The device that really runs (what `auto` resolved to), for config.json and the report;
    // several GPUs as a list.
    cfg.device = devices
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    cfg.cuda_graphs = cuda_graphs;
    cfg.sync_bn = a.sync_bn;
    cfg.conv_impl = a.device.conv_impl();
    warn_high_lrs(&cfg);
    let size = cfg.model.image_size;
    let set = data::load_shared(&cfg.data_args, size, cfg.seed, &out)?;
    let (set, labels) =
        match data::label_images(&set, cfg.data_args.data.is_some(), &cfg.condition)? {
            None => (set, None),
            Some(l) => {
                if let Some(stored) = &cfg.class_table {
                    if *stored != l.table {
                        bail!(
                        "the data's classes differ from the run's class table in {}/config.json \
                         ({} classes now, {} then): resume with the same data",
                        out.display(),
                        l.table.len(),
                        stored.len()
                    );
                    }
                }
                if !a.quiet {
                    println!(
                        "classes: {} {}s with at least {} images ({} images){}{}",
                        l.table.len(),
                        match l.table.condition {
                            data::Condition::Genre => "genre",
                            _ => "artist",
                        },
                        cfg.condition.min_images,
                        l.keep.len(),
                        if l.table.dropped.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; dropped (fewer images): {}",
                                l.table
                                    .dropped
                                    .iter()
                                    .map(|c| format!("{} ({})", c.name, c.images))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        },
                        if l.unlabelled > 0 {
                            format!("; {} images without a class left out", l.unlabelled)
                        } else {
                            String::new()
                        }
                    );
                }
                let set = if l.keep.len() == set.len() {
                    set
                } else {
                    std::sync::Arc::new(set.subset(&l.keep)?)
                };
                cfg.class_table = Some(l.table);
                (set, Some(l.labels))
            }
        };
    cfg.data = match &cfg.data_args.data {
        Some(path) => format!("{} images from {}", set.len(), path.display()),
        None => format!(
            "built-in procedural paintings ({} images, seed {})",
            set.len(),
            cfg.seed
        ),
    };
    if let Some(then) = previous
        .as_ref()
        .map(|p| &p.data)
        .filter(|d| **d != cfg.data)
    {
        eprintln!(
            "warning: the data differ from when {} was trained (then: {then}; now: {}): the run \
             goes on with the images found now",
            out.display(),
            cfg.data
        );
    }
    if set.len() < cfg.batch_size {
        bail!(
            "the dataset has {} images, fewer than one batch of {}: lower --batch-size",
            set.len(),
            cfg.batch_size
        );
    }
    // config.json again, now with the data's description and the resolved device.
    checkpoint::save_config(&out, &cfg)?;
    let _lock = match (lock, new_run) {
        (Some(l), _) => l,
        (None, Some(claimed)) => claimed.keep(),
        (None, None) => unreachable!("a run folder is always locked"),
    };
    let from_epoch = match &resume_from {
        Some(dir) => crate::run_folder::checkpoint_position(dir).0,
        None => 0,
    };
    train::record_session(&out, &cfg, previous.as_ref(), from_epoch)?;
    let eval_set = set.clone();
    let mut data = data::Loader::new(set, cfg.batch_size, cfg.augment, cfg.seed);
    if let Some(labels) = labels {
        data = data.with_labels(labels)?;
    }
    let m = &cfg.model;
    if !a.quiet {
        println!(
            "artgan train: preset {}, {}x{} px, nz {}, ngf {}, ndf {}, batch {}, {} epochs, lr D {} G {}{}, {} D step(s) per G step, device {}, precision {}, seed {}",
            m.preset, m.image_size, m.image_size, m.nz, m.ngf, m.ndf, cfg.batch_size, cfg.epochs,
            cfg.lr_d, cfg.lr_g,
            if m.preset == Preset::Classical { format!(" (detail {})", cfg.lr_g_detail) } else { String::new() },
            cfg.d_steps, cfg.device, cfg.precision, cfg.seed
        );
        println!(
            "loss: {}; augmentation: {}; DiffAugment: {}; EMA generator: {}; dynamic lr: {}; checkpoint every {} epoch(s), keeping {}",
            cfg.loss,
            describe_augment(cfg.augment),
            cfg.diffaugment.describe(),
            if cfg.ema { "on" } else { "off" },
            if cfg.dynamic_lr { "on" } else { "off" },
            cfg.checkpoint_every,
            cfg.keep_checkpoints
        );
        if cfg.classes() > 0 {
            println!(
                "conditional: {} classes (class-conditional batch norm in G, projection D); G's \
                 class parameters learn at {}x its lr (--class-lr-scale)",
                cfg.classes(),
                cfg.class_lr_scale
            );
        }
        println!("writing to {}", out.display());
    }
    let mut opts = RunOptions::new(out.clone(), device);
    opts.more_devices = devices[1..].to_vec();
    opts.progress = !a.quiet;
    opts.verbose = !a.quiet;
    opts.resume_from = resume_from;
    opts.interrupt = Some(train::install_interrupt_handler()?);
    if cfg.eval_every > 0 || cfg.eval_every_images > 0 {
        // The same latents and real draw at every evaluation, so the numbers compare.
        let (count, seed) = (cfg.eval_count, cfg.seed);
        let eval_classes = cfg.class_table.clone();
        // Evaluation runs in f32, with the run's convolution implementation.
        let numerics = crate::amp::Numerics::FP32.with_conv_impl(cfg.conv_impl);
        opts.evaluator = Some(Box::new(move |g: &crate::nn::Generator| {
            let params = crate::quality::SwdParams::default();
            let labels = eval_classes
                .as_ref()
                .map(|t| crate::quality::proportional_labels(t, count, seed));
            Ok(crate::quality::evaluate_generator_labeled(
                g,
                &eval_set,
                count,
                seed,
                &params,
                labels.as_deref(),
                numerics,
            )?
            .mean)
        }));
    }
    train::train(cfg, &mut data, &mut opts)?;
    if !a.quiet {
        println!(
            "done: {}/generator.safetensors, generator_ema.safetensors, discriminator.safetensors, metrics.csv, samples/, checkpoints/",
            out.display()
        );
    }
    Ok(())
}
