//! Commands that use a trained generator: `sample`, `interpolate` and `project`.
//!
//! Shared here: the latent draw (standard normal, optionally truncated), batched generation in
//! eval mode, the pixel conversion of written images, which generator to load
//! ([`GeneratorArgs`], also used by `evaluate`) and the output folder. All three commands draw their
//! random latents from the same stream, so `sample --seed S --count K` and
//! `interpolate --seed S --count K` start from the same K latents.

pub mod interpolate;
pub mod project;
pub mod sample;

use crate::amp::Numerics;
use crate::backend::Device;
use crate::checkpoint;
use crate::flags::DeviceArgs;
use crate::nn::{Ctx, Generator, Mode};
use crate::rng::Rng;
use crate::run_folder;
use crate::tensor::{no_grad, Tensor};
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Most latents pushed through G at once: bounds activation memory whatever `--count` is.
pub const GEN_BATCH: usize = 64;

/// The random stream that `sample` and `interpolate` draw their latents from.
pub const LATENT_STREAM: &str = "sample-latents";

/// Below this truncation a uniform proposal is accepted far more often than a normal one.
const UNIFORM_PROPOSAL_BELOW: f32 = 0.5;

/// `--truncation` as clap parses it: a finite number above 0.
pub fn parse_truncation(s: &str) -> std::result::Result<f32, String> {
    let t: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    check_truncation(t).map_err(|e| e.to_string())?;
    Ok(t)
}

fn check_truncation(t: f32) -> Result<()> {
    if !(t.is_finite() && t > 0.0) {
        bail!("truncation {t} must be a finite number above 0");
    }
    Ok(())
}

/// `len` independent draws of a standard normal, each truncated to `[-t, t]` when `truncation`
/// is `Some(t)` (the "truncation trick" of BigGAN/StyleGAN). Truncation is exact rejection
/// sampling: an out-of-range draw is redrawn, never clamped (clamping would pile mass on ±t).
/// For small `t` the proposal is uniform on `[-t, t]`, accepted with probability
/// `exp(-x²/2)`, because normal draws would almost all be rejected (t = 0.01: 1 in 125
/// accepted). Without truncation this is exactly `rng.normal_vec(len, 0, 1)`.
pub fn truncated_normal(rng: &mut Rng, len: usize, truncation: Option<f32>) -> Result<Vec<f32>> {
    let Some(t) = truncation else {
        return Ok(rng.normal_vec(len, 0.0, 1.0));
    };
    check_truncation(t)?;
    let draw = |rng: &mut Rng| -> f32 {
        if t >= UNIFORM_PROPOSAL_BELOW {
            loop {
                let x = rng.normal();
                if x.abs() <= t {
                    return x;
                }
            }
        }
        loop {
            let x = (2.0 * rng.uniform() - 1.0) * t;
            if rng.uniform() < (-0.5 * x * x).exp() {
                return x;
            }
        }
    };
    Ok((0..len).map(|_| draw(rng)).collect())
}

/// `count` latents `[count, nz, 1, 1]` from `rng`, truncated as [`truncated_normal`].
pub fn draw_latents(
    rng: &mut Rng,
    count: usize,
    nz: usize,
    truncation: Option<f32>,
    device: Device,
) -> Result<Tensor> {
    Tensor::from_vec(
        truncated_normal(rng, count * nz, truncation)?,
        &[count, nz, 1, 1],
        device,
    )
}

/// G's images for latents `z` (`[n, nz, 1, 1]`), NCHW in [-1, 1], computed under `no_grad` in
/// chunks of at most [`GEN_BATCH`] and handed to `each` chunk by chunk (with the index of its
/// first image), so the caller need not hold them all. `Mode::Eval` (running statistics) makes
/// every image a function of its own latent only.
pub fn generate_chunks(
    g: &Generator,
    z: &Tensor,
    mode: Mode,
    numerics: Numerics,
    mut each: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let _guard = no_grad();
    let n = z.shape()[0];
    let nz = g.config.nz;
    let values = z.to_vec()?;
    let mut unused = Rng::new(0);
    for start in (0..n).step_by(GEN_BATCH) {
        let end = (start + GEN_BATCH).min(n);
        let chunk = Tensor::from_vec(
            values[start * nz..end * nz].to_vec(),
            &[end - start, nz, 1, 1],
            z.device(),
        )?;
        let images = g
            .forward(&chunk, &mut Ctx::new(mode, &mut unused, numerics))?
            .to_vec()?;
        each(start, &images)?;
    }
    Ok(())
}

/// All of G's images for `z` in eval mode, as one NCHW vector (see [`generate_chunks`]).
pub fn generate(g: &Generator, z: &Tensor, numerics: Numerics) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    generate_chunks(g, z, Mode::Eval, numerics, |_, images| {
        out.extend_from_slice(images);
        Ok(())
    })?;
    Ok(out)
}

/// Images per grid row for `n` images: a square-ish grid, ceil(sqrt(n)).
pub fn grid_nrow(n: usize) -> usize {
    (1..=n.max(1)).find(|c| c * c >= n).unwrap_or(1)
}

/// One CHW image in [-1, 1] as HWC RGB bytes, with the same rounding as
/// [`write_png`], so a grid or GIF frame has the exact pixels of the PNG files.
pub fn to_rgb_bytes(chw: &[f32], size: usize) -> Vec<u8> {
    let plane = size * size;
    let mut out = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for k in 0..3 {
            out.push(((chw[k * plane + i].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8);
        }
    }
    out
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
    /// Also use weights without a manifest.json to verify them against (hand-made files,
    /// e.g. PyTorch weights copied into a run folder); they are refused otherwise.
    #[arg(long)]
    pub trust_unverified: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl GeneratorArgs {
    /// Resolves the device and loads the generator, saying which weights it reads (the folder,
    /// EMA or raw, the run id). Also returns that folder.
    pub fn load(&self) -> Result<(crate::nn::Generator, Device, PathBuf)> {
        let device = self.device.resolve()?;
        let (g, dir, ema) = run_folder::load_sampling_generator(
            &self.checkpoint,
            !self.no_ema,
            self.trust_unverified,
            device,
        )?;
        if !ema && !self.no_ema {
            eprintln!(
                "note: {} has no EMA weights; using the raw generator",
                dir.display()
            );
        }
        println!(
            "reading the {} generator in {}{}",
            if ema { "EMA" } else { "raw" },
            dir.display(),
            checkpoint::run_id(&dir).map_or(String::new(), |id| format!(" (run {id})"))
        );
        Ok((g, device, dir))
    }

    /// What the generator runs with: f32, convolutions by `--conv-impl` on CUDA.
    pub fn numerics(&self) -> Numerics {
        Numerics::FP32.with_conv_impl(self.device.conv_impl())
    }
}

/// Claims `dir` for a command's results (see [`crate::run_folder::claim`]): created, or an empty
/// folder, or with `force` a non-empty one whose contents are moved aside; never a run folder
/// or inside a run's checkpoints; locked, so a second command writing there is refused. The
/// caller keeps the guard while it writes and calls `keep` when done; a failure in between
/// removes what it wrote.
pub fn prepare_out_dir(dir: &Path, force: bool) -> Result<crate::run_folder::OutDir> {
    crate::run_folder::claim(dir, crate::run_folder::Purpose::Results, force)
}

/// The default folder for a command's results about `checkpoint`: `name` inside the run
/// folder, with the checkpoint's name added when `checkpoint` is one checkpoint of a run
/// (nothing is ever written inside `checkpoints/`, whose folders are pruned).
pub fn default_out(checkpoint: &Path, name: &str) -> PathBuf {
    match crate::run_folder::run_of_checkpoints(checkpoint) {
        Some(run) => {
            let epoch = checkpoint.file_name().unwrap_or_default().to_string_lossy();
            run.join(format!("{name}-{epoch}"))
        }
        None => checkpoint.join(name),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn variance(xs: &[f32]) -> f64 {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        xs.iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n
    }

    #[test]
    fn truncated_normal_stays_in_range_with_the_right_spread() {
        // Variance of N(0,1) truncated to [-t, t]: 1 − 2tφ(t)/(2Φ(t) − 1).
        for (t, want) in [(1.0f32, 0.291_125), (0.1, 0.003_320), (2.0, 0.773_741)] {
            let xs = truncated_normal(&mut Rng::new(5), 100_000, Some(t)).unwrap();
            assert!(xs.iter().all(|x| x.abs() <= t), "t = {t}");
            let v = variance(&xs);
            assert!(
                (v - want).abs() < 0.02 * want,
                "t = {t}: variance {v}, want {want}"
            );
        }
    }

    #[test]
    fn no_truncation_is_the_plain_normal_stream() {
        let plain = Rng::new(9).normal_vec(1000, 0.0, 1.0);
        assert_eq!(
            truncated_normal(&mut Rng::new(9), 1000, None).unwrap(),
            plain
        );
        // A bound no draw reaches resamples nothing, so it changes nothing either.
        assert_eq!(
            truncated_normal(&mut Rng::new(9), 1000, Some(50.0)).unwrap(),
            plain
        );
    }

    #[test]
    fn bad_truncation_is_refused() {
        for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(truncated_normal(&mut Rng::new(0), 4, Some(t)).is_err());
        }
        assert!(parse_truncation("0").unwrap_err().contains("above 0"));
        assert!(parse_truncation("abc").is_err());
        assert_eq!(parse_truncation("0.7"), Ok(0.7));
    }

    #[test]
    fn class_folders_are_distinct_ordered_and_safe() {
        let names = [
            "Ab",
            "a b",
            "a.b",
            "aB",
            "../x",
            "new\nline",
            &"é".repeat(300),
        ];
        let folders: Vec<String> = (0..names.len())
            .map(|i| class_folder(i, names.len(), names[i]))
            .collect();
        assert_eq!(folders[..4], ["00-Ab", "01-a_b", "02-a_b", "03-aB"]);
        assert_eq!(folders[4], "04-___x");
        assert_eq!(folders[5], "05-new_line");
        assert!(folders[6].len() < 255, "{}", folders[6]);
        let distinct: std::collections::HashSet<String> =
            folders.iter().map(|f| f.to_lowercase()).collect();
        assert_eq!(distinct.len(), names.len(), "{folders:?}");
        assert_eq!(class_folder(7, 120, "x"), "007-x");
    }

    #[test]
    fn grid_rows_are_square_ish() {
        let rows: Vec<usize> = [1, 2, 4, 5, 9, 10, 64, 65].map(grid_nrow).to_vec();
        assert_eq!(rows, vec![1, 2, 2, 3, 3, 4, 8, 9]);
    }
}

/// `--class` / `--per-class` of `sample`, `interpolate` and `project` (conditional runs).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClassArgs {
    /// Paint this class of a conditional run: an artist or genre name, matched exactly, else
    /// like `--artists` (case, accents and punctuation do not matter) if only one class matches.
    #[arg(long = "class", value_name = "NAME", conflicts_with = "per_class")]
    pub class: Option<String>,
    /// Conditional runs: N images for every class (sample: one grid row per class, the same N
    /// latents in every row; interpolate: N latents per class; project: N variations per
    /// class; both: one sub-folder NN-name per class) [sample's default for a conditional
    /// run: 8].
    #[arg(long, value_name = "N")]
    pub per_class: Option<usize>,
}

/// What [`ClassArgs`] resolve to for one generator.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassChoice {
    /// An unconditional run.
    None,
    /// One class (index, name).
    One(u32, String),
    /// N images per class of the table.
    PerClass(usize, crate::data::ClassTable),
}

impl ClassArgs {
    /// Checks the options against the run at `checkpoint` (whose generator is `g`), and fixes
    /// `g` to the chosen class for [`ClassChoice::One`].
    pub fn resolve(&self, g: &Generator, checkpoint: &std::path::Path) -> Result<ClassChoice> {
        // A run folder's config.json holds the same class table as its checkpoints'.
        let table = crate::checkpoint::load_class_table(checkpoint)?;
        let Some(table) = table.filter(|_| g.classes > 0) else {
            if self.class.is_some() || self.per_class.is_some() {
                bail!(
                    "{} is an unconditional run: --class and --per-class need a run trained \
                     with --condition artist|genre",
                    checkpoint.display()
                );
            }
            return Ok(ClassChoice::None);
        };
        if let Some(name) = &self.class {
            let k = table.find(name)?;
            g.fixed_class.set(Some(k as u32));
            return Ok(ClassChoice::One(k as u32, table.classes[k].name.clone()));
        }
        match self.per_class {
            Some(0) => bail!("--per-class must be at least 1"),
            Some(n) => Ok(ClassChoice::PerClass(n, table)),
            None => Ok(ClassChoice::PerClass(0, table)),
        }
    }
}

/// [`generate_chunks`] with a class label per latent (`labels`: one per image of `z`).
pub fn generate_chunks_labeled(
    g: &Generator,
    z: &Tensor,
    labels: &[u32],
    mode: Mode,
    numerics: Numerics,
    mut each: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let _guard = no_grad();
    let n = z.shape()[0];
    if labels.len() != n {
        bail!("{} labels for {n} latents", labels.len());
    }
    let nz = g.config.nz;
    let values = z.to_vec()?;
    let mut unused = Rng::new(0);
    for start in (0..n).step_by(GEN_BATCH) {
        let end = (start + GEN_BATCH).min(n);
        let chunk = Tensor::from_vec(
            values[start * nz..end * nz].to_vec(),
            &[end - start, nz, 1, 1],
            z.device(),
        )?;
        let images = g
            .forward(
                &chunk,
                &mut Ctx::new(mode, &mut unused, numerics).labeled(Some(&labels[start..end])),
            )?
            .to_vec()?;
        each(start, &images)?;
    }
    Ok(())
}

/// `interpolate` and `project`: commands that make one run, or with `--per-class N` one run per
/// class of a conditional run, all on the generator loaded once ([`run_command`]).
pub trait ClassCommand: Sized {
    /// Default folder of `--per-class` under the checkpoint (one sub-folder per class).
    const PER_CLASS_DIR: &'static str;
    fn generator(&self) -> &GeneratorArgs;
    fn classes(&self) -> &ClassArgs;
    fn out(&self) -> Option<&Path>;
    /// Checks the flags, before anything is loaded.
    fn check(&self) -> Result<()>;
    /// Checks `--per-class N`, which stands for this command's own count in each class.
    fn check_per_class(&self, _n: usize) -> Result<()> {
        Ok(())
    }
    /// This command for one class: `--class` set, N images, its own output folder.
    fn for_class(&self, classes: ClassArgs, n: usize, out: PathBuf) -> Self;
    /// One run on `g` (its class, if any, already fixed by [`ClassArgs::resolve`]).
    fn run_one(&self, g: &Generator, device: Device) -> Result<()>;
}

/// Checks `a`, loads its generator once, then makes its run or its per-class runs.
pub fn run_command<C: ClassCommand>(a: &C) -> Result<()> {
    a.check()?;
    let (g, device, _) = a.generator().load()?;
    run_on(a, &g, device)
}

/// `a` on the loaded `g`: one run, or one per class (each class's copy checked again). A
/// conditional run without `--class` or `--per-class` is refused, naming its classes.
fn run_on<C: ClassCommand>(a: &C, g: &Generator, device: Device) -> Result<()> {
    let checkpoint = &a.generator().checkpoint;
    let ClassChoice::PerClass(n, table) = a.classes().resolve(g, checkpoint)? else {
        return a.run_one(g, device);
    };
    if n == 0 {
        bail!(
            "{} is a conditional run: pass --class NAME or --per-class N (classes: {})",
            checkpoint.display(),
            table.names().join(", ")
        );
    }
    a.check_per_class(n)?;
    let base = a.out().map_or_else(
        || default_out(checkpoint, C::PER_CLASS_DIR),
        Path::to_path_buf,
    );
    for c in &table.classes {
        let classes = ClassArgs {
            class: Some(c.name.clone()),
            per_class: None,
        };
        let folder = class_folder(c.index, table.len(), &c.name);
        let one = a.for_class(classes, n, base.join(folder));
        one.check()?;
        run_on(&one, g, device)?;
    }
    Ok(())
}

/// Longest class name part of a [`class_folder`], in characters (file names stop at 255 bytes).
const CLASS_FOLDER_NAME_CHARS: usize = 60;

/// The `--per-class` folder of class `index` of a table of `classes`: the index, zero-padded
/// so the folders sort in class order, then the name made file-system safe (`01-Claude_Monet`).
/// The index keeps every folder its own, also where names differ only in punctuation or case
/// (`a b` and `a.b`, on a case-insensitive disk `Ab` and `aB`).
pub fn class_folder(index: usize, classes: usize, name: &str) -> String {
    let width = classes.saturating_sub(1).to_string().len().max(2);
    let safe: String = name
        .chars()
        .take(CLASS_FOLDER_NAME_CHARS)
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{index:0width$}-{safe}")
}
