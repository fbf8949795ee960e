//! `artgan evaluate`: the sliced Wasserstein distance (see [`crate::quality`]) between a trained
//! generator's images and the real images, optionally with the real-vs-real noise floor.

use crate::amp::Numerics;
use crate::checkpoint;
use crate::data::{self, DataArgs};
use crate::limits;
use crate::quality::{self, SwdParams, SwdReport};
use crate::tools::GeneratorArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Images per set when `--count` is not given: ~10 s at 32 px on 2 CPU cores. The paper's
/// 16384 gives steadier numbers at 8× the time and memory.
pub const DEFAULT_COUNT: usize = 2048;

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// The real images (the built-in paintings without --data, as `train`), loaded at the
    /// generator's image size.
    #[command(flatten)]
    pub data: DataArgs,
    /// Images per set (generated and real; reals are drawn with replacement when the data has
    /// fewer). Progressive GAN reports 16384 (8× the time and memory of the default).
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, default_value_t = DEFAULT_COUNT)]
    pub count: usize,
    /// Seed of the latents, the real draw, the descriptor centres and the directions (and of the
    /// built-in paintings).
    #[arg(long, value_parser = crate::flags::parse_whole::<u64>, default_value_t = 0)]
    pub seed: u64,
    /// Also compute the noise floor: the SWD between two draws of real images (what a perfect
    /// generator would score at this --count).
    #[arg(long)]
    pub floor: bool,
    /// Where to write the results as JSON [default: RUN/evaluate.json, or
    /// RUN/evaluate-epoch-NNNN.json for a checkpoint folder RUN/checkpoints/epoch-NNNN].
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Conditional runs: also an SWD per class (with its own real-vs-real floor) for every class
    /// with at least this many real images; SWD on a few dozen images is mostly noise.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub eval_min_images: usize,
}

/// One class's SWD in a conditional run.
#[derive(serde::Serialize)]
struct ClassSwd {
    class: String,
    real_images: usize,
    swd: SwdReport,
    floor: SwdReport,
    /// The mean SWD of this class's generated images against each other class's real images
    /// (the same images as `swd`; none with a single class): a recognisable class is clearly
    /// closer to its own.
    swd_other_classes: Option<f32>,
    /// How much lower `swd` is than `swd_other_classes`, in % of the latter.
    own_below_others_percent: Option<f32>,
}

/// What `evaluate` writes to its JSON file.
#[derive(serde::Serialize)]
struct Results<'a> {
    checkpoint: String,
    /// Folder the weights came from (a checkpoint folder when the run is still training).
    weights: String,
    ema: bool,
    image_size: usize,
    /// What the real images are.
    data: String,
    real_images: usize,
    count: usize,
    seed: u64,
    params: SwdParams,
    swd: &'a SwdReport,
    floor: Option<&'a SwdReport>,
    /// Conditional runs: per-class SWD of the classes with at least `eval_min_images` reals.
    #[serde(skip_serializing_if = "Option::is_none")]
    per_class: Option<Vec<ClassSwd>>,
    seconds: f64,
}

/// The run folder of `path` (the run itself, or the run of a checkpoint folder under its
/// `checkpoints/`) and the default `--json` file name there (nothing is written inside
/// `checkpoints/`, whose folders are pruned).
fn run_folder_and_json(path: &Path) -> (PathBuf, String) {
    match crate::run_folder::run_of_checkpoints(path) {
        Some(run) => {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            (run, format!("evaluate-{name}.json"))
        }
        None => (path.to_path_buf(), "evaluate.json".to_string()),
    }
}

pub fn run_evaluate(a: &EvaluateArgs) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let params = SwdParams::default();
    let started = Instant::now();
    // Resolved once (a still-training run's newest complete checkpoint), then loaded from there.
    let (g, _device, weights) = a.generator.load()?;
    let numerics = a.generator.numerics();
    let ema = !a.generator.no_ema && weights.join(checkpoint::GENERATOR_EMA_FILE).is_file();
    let size = g.config.image_size;
    if size < params.min_resolution {
        bail!(
            "the generator makes {size}x{size} px images, smaller than the {} px the SWD needs",
            params.min_resolution
        );
    }
    // Memory, from the flags, before anything is made: the generated and real images with their
    // descriptors, and the built-in paintings made for the real set (--limit, else enough).
    let builtin = |n| {
        a.data
            .data
            .is_none()
            .then(|| limits::builtin_bytes(n, size))
    };
    let default_real = if a.floor {
        a.count.saturating_mul(2)
    } else {
        a.count
    };
    let held = limits::sum(&[
        limits::eval_bytes(a.count, size),
        match a.data.limit {
            None => builtin(default_real.max(data::BUILTIN_DEFAULT_COUNT)).unwrap_or(Some(0)),
            Some(_) => Some(0),
        },
    ]);
    let what = "the generated and real images";
    limits::check_output(Path::new("."), "--count", a.count, what, held, Some(0))?;
    if let (Some(n), Some(held)) = (a.data.limit, builtin(a.data.limit.unwrap_or(0))) {
        let what = "the built-in paintings";
        limits::check_output(Path::new("."), "--limit", n, what, held, Some(0))?;
    }
    let (run_dir, json_name) = run_folder_and_json(&a.generator.checkpoint);
    let json = a.json.clone().unwrap_or_else(|| run_dir.join(json_name));
    // Fail now rather than after the computation.
    crate::run_folder::check_not_in_checkpoints(&json, "--json")?;
    if json.is_dir() {
        bail!(
            "--json {} is a folder: give the path of the file to write",
            json.display()
        );
    }
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the folder of --json {}", json.display()))?;
    }
    // …and check the file can be written there (a read-only place fails here, in a second,
    // not after minutes of computing): the probe is the file's own temporary name.
    let probe = crate::durable::unique_tmp_path(&json)?;
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write the results to {}", json.display()))?;
    let _ = std::fs::remove_file(&probe);

    let mut data_args = a.data.clone();
    let needed = if a.floor { 2 * a.count } else { a.count };
    if data_args.data.is_none() && data_args.limit.is_none() {
        // The built-in paintings are unlimited: make enough for disjoint draws.
        data_args.limit = Some(needed.max(data::BUILTIN_DEFAULT_COUNT));
    }
    // The run folder receives skipped.csv (and, for a read-only dataset, the decoded-image cache
    // that `train` made there is reused) just as when training.
    let real = data::load(&data_args, size, a.seed, &run_dir)?;
    let data_desc = match &data_args.data {
        Some(p) => format!("{} images from {}", real.len(), p.display()),
        None => format!(
            "built-in procedural paintings ({} images, seed {})",
            real.len(),
            a.seed
        ),
    };
    if real.len() < needed {
        println!(
            "note: {} real images for {} draws of {}: {}",
            real.len(),
            if a.floor { "two" } else { "one" },
            a.count,
            if real.len() < a.count {
                "drawing with replacement, so images repeat"
            } else {
                "the floor's two draws share images, so it comes out too low"
            }
        );
    }
    println!(
        "evaluate: {} ({} generator, {size}x{size} px), {} generated vs {} real images, seed {}",
        weights.display(),
        if ema { "EMA" } else { "raw" },
        a.count,
        a.count,
        a.seed
    );

    let class_table = checkpoint::load_class_table(&weights)?;
    let labels = class_table
        .as_ref()
        .map(|t| quality::proportional_labels(t, a.count, a.seed));
    if let Some(t) = &class_table {
        println!(
            "conditional generator: {} classes, drawn in proportion to their training images",
            t.len()
        );
    }
    let report = quality::evaluate_generator_labeled(
        &g,
        &real,
        a.count,
        a.seed,
        &params,
        labels.as_deref(),
        numerics,
    )?;
    let floor = if a.floor {
        Some(quality::real_floor(&real, a.count, a.seed, &params)?)
    } else {
        None
    };
    let per_class = match &class_table {
        Some(t) => Some(per_class_swd(a, &g, t, &real, &weights, &params, numerics)?),
        None => None,
    };
    let seconds = started.elapsed().as_secs_f64();

    println!("sliced Wasserstein distance x1e3 (Karras et al. 2018):");
    let header = if floor.is_some() {
        "resolution   generated   real floor"
    } else {
        "resolution   generated"
    };
    println!("{header}");
    let row = |label: String, value: f32, floor: Option<f32>| match floor {
        Some(f) => println!("{label:>10}   {value:>9.3}   {f:>10.3}"),
        None => println!("{label:>10}   {value:>9.3}"),
    };
    for (i, (res, v)) in report.resolutions.iter().zip(&report.per_level).enumerate() {
        row(
            format!("{res} px"),
            *v,
            floor.as_ref().map(|f| f.per_level[i]),
        );
    }
    row("mean".into(), report.mean, floor.as_ref().map(|f| f.mean));

    let results = Results {
        checkpoint: a.generator.checkpoint.display().to_string(),
        weights: weights.display().to_string(),
        ema,
        image_size: size,
        data: data_desc,
        real_images: real.len(),
        count: a.count,
        seed: a.seed,
        params,
        swd: &report,
        floor: floor.as_ref(),
        per_class,
        seconds,
    };
    let mut text = serde_json::to_string_pretty(&results)?;
    text.push('\n');
    checkpoint::write_atomic(&json, text.as_bytes())?;
    println!("wrote {} ({seconds:.1} s)", json.display());
    Ok(())
}

/// Per-class SWD of a conditional generator: the real images are labelled as the run labelled
/// its training data (`config.json`'s conditioning options); every class with at least
/// `--eval-min-images` of them gets `--count` generated images of its class against `--count`
/// draws of its reals, its own real-vs-real floor, and the mean SWD of the same generated
/// images against each other such class's reals (is the class recognisable?).
fn per_class_swd(
    a: &EvaluateArgs,
    g: &crate::nn::Generator,
    table: &data::ClassTable,
    real: &data::ImageSet,
    weights: &Path,
    params: &SwdParams,
    numerics: Numerics,
) -> Result<Vec<ClassSwd>> {
    let cfg = crate::train::load_config(weights)?;
    let Some(labelled) = data::label_images(real, a.data.data.is_some(), &cfg.condition)? else {
        return Ok(Vec::new());
    };
    // The classes with enough real images, with their reals.
    let mut eligible = Vec::new();
    let mut small = Vec::new();
    for c in &table.classes {
        // The real data's own class of that name (its indices may differ from the run's).
        let Some(rk) = labelled.table.classes.iter().find(|r| r.name == c.name) else {
            small.push(format!("{} (0)", c.name));
            continue;
        };
        let keep: Vec<usize> = labelled
            .keep
            .iter()
            .zip(&labelled.labels)
            .filter(|(_, &l)| l as usize == rk.index)
            .map(|(&i, _)| i)
            .collect();
        if keep.len() < a.eval_min_images {
            small.push(format!("{} ({})", c.name, keep.len()));
            continue;
        }
        eligible.push((c, keep.len(), real.subset(&keep)?));
    }
    let mut out = Vec::new();
    for (c, real_images, subset) in &eligible {
        let labels = vec![c.index as u32; a.count];
        let against = |reals: &data::ImageSet| {
            let (count, seed) = (a.count, a.seed);
            quality::evaluate_generator_labeled(
                g,
                reals,
                count,
                seed,
                params,
                Some(&labels),
                numerics,
            )
        };
        let swd = against(subset)?;
        let floor = quality::real_floor(subset, a.count, a.seed, params)?;
        let mut others = Vec::new();
        for (o, _, reals) in &eligible {
            if o.index != c.index {
                others.push(against(reals)?.mean);
            }
        }
        let other = (!others.is_empty()).then(|| others.iter().sum::<f32>() / others.len() as f32);
        let below = other.map(|o| 100.0 * (o - swd.mean) / o);
        println!(
            "class {:<30} {:>5} real images   SWD mean {:>9.3}   real floor {:>9.3}{}",
            c.name,
            real_images,
            swd.mean,
            floor.mean,
            match (other, below) {
                (Some(o), Some(b)) => format!("   other classes {o:>9.3} (own {b:+.1}% lower)"),
                _ => String::new(),
            }
        );
        out.push(ClassSwd {
            class: c.name.clone(),
            real_images: *real_images,
            swd,
            floor,
            swd_other_classes: other,
            own_below_others_percent: below,
        });
    }
    if !small.is_empty() {
        println!(
            "no per-class SWD for {} of {} classes with fewer than {} real images (SWD on so few \
             images is mostly noise): {}",
            small.len(),
            table.len(),
            a.eval_min_images,
            small.join(", ")
        );
    }
    Ok(out)
}
