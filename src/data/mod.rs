//! The data pipeline: the Kaggle "Best Artworks of All Time" layout or any folder of images,
//! decoded once into an on-disk cache of preprocessed 8-bit RGB images, a deterministic batch
//! loader with augmentation, the built-in procedural "paintings", `artgan explore`, and the
//! PNG sample-grid writer the trainer uses.
//!
//! Pixel layout: an [`ImageSet`] holds `count` images of `size`×`size` RGB, 8 bits per channel,
//! each image HWC (row-major, channels interleaved) and stored one after another. Batches made
//! from it are NCHW f32 in [-1, 1].
//!
//! The cache lives in `--cache-dir` when given, else in a `.artgan-cache` folder inside the data
//! folder (so every run on the same data shares it), else — when the data folder is read-only —
//! in `<report_dir>/.artgan-cache`.

mod artists_csv;
mod builtin;
mod cache;
mod decode;
mod explore;
mod grid_png;
mod kaggle;
mod labels;
mod loader;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

pub use artists_csv::{read_artists_csv, ArtistsCsv, DuplicateArtist};
pub use builtin::builtin;
pub use decode::{decode_bytes, decode_file, preprocess, Decoded};
pub use explore::{explore, ExploreArgs};
pub(crate) use explore::{plot_err, register_font, save_rgb};
pub use grid_png::{save_grid_png, save_grid_png_u8, write_atomic};
pub use kaggle::{artist_key, Artist};
pub use labels::{
    label_images, ClassEntry, ClassTable, Condition, ConditionArgs, LabelSource, Labelled,
};
pub use loader::{assemble_batch, BatchPlan, Loader};

/// How many built-in images `load` makes when `--data` is absent and no `--limit` is given.
pub const BUILTIN_DEFAULT_COUNT: usize = 2048;

/// Which of the two Kaggle image folders to read.
#[derive(
    clap::ValueEnum,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `images/images/<Artist>/…`: full-size paintings.
    Images,
    /// `resized/resized/…`: smaller copies (faster to decode).
    #[default]
    Resized,
}

/// How a non-square painting becomes a square training image.
#[derive(
    clap::ValueEnum,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Resize the shorter side to the training size and keep the centre.
    #[default]
    Crop,
    /// Resize the longer side to the training size and pad with black.
    Pad,
}

/// Dataset options shared by `train`, `explore` and `evaluate` (stored in a run's
/// `config.json` so `train --resume` reads the same data).
#[derive(clap::Args, Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DataArgs {
    /// Dataset: the Kaggle "Best Artworks of All Time" root (holding artists.csv), one of its
    /// image folders, or any folder of images (searched recursively: jpg, jpeg, png, webp, bmp).
    /// Without it the built-in procedural paintings are used.
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Which Kaggle image folder to use.
    #[arg(long, value_enum, default_value_t = Source::Resized)]
    pub source: Source,
    /// Only these artists, comma separated, as written in artists.csv (or folder names).
    #[arg(long, value_name = "A,B")]
    pub artists: Option<String>,
    /// Only artists whose genre list (artists.csv) contains this genre.
    #[arg(long, value_name = "GENRE")]
    pub genre: Option<String>,
    /// Square training images by centre crop or by padding.
    #[arg(long, value_enum, default_value_t = Fit::Crop)]
    pub fit: Fit,
    /// Use only the first N images (in sorted path order, after the filters).
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, value_name = "N")]
    pub limit: Option<usize>,
    /// Where the decoded-image cache goes [default: <data>/.artgan-cache, or
    /// <out>/.artgan-cache when the data folder is read-only].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Augmentation switches on the command line.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AugmentArgs {
    /// Do not flip training images horizontally at random.
    #[arg(long)]
    pub no_flip: bool,
    /// Rotate training images by a random angle in [-DEG, DEG] (edges filled by reflection)
    /// [default: the preset's: 0 for dcgan, 5 for classical].
    #[arg(long, value_name = "DEG")]
    pub rotate: Option<f32>,
}

impl AugmentArgs {
    /// The augmentation to use, with `default_rotate_deg` when `--rotate` was not given.
    pub fn resolve(&self, default_rotate_deg: f32) -> Result<Augment> {
        let rotate_deg = self.rotate.unwrap_or(default_rotate_deg);
        if !rotate_deg.is_finite() || !(0.0..=180.0).contains(&rotate_deg) {
            bail!("--rotate must be between 0 and 180 degrees, got {rotate_deg}");
        }
        Ok(Augment {
            flip: !self.no_flip,
            rotate_deg,
        })
    }
}

/// Augmentation applied by the [`Loader`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random horizontal flip with probability 1/2.
    pub flip: bool,
    /// Maximum absolute rotation in degrees (0 = none).
    pub rotate_deg: f32,
}

impl Augment {
    pub const NONE: Augment = Augment {
        flip: false,
        rotate_deg: 0.0,
    };
}

/// One image's provenance.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageMeta {
    /// Path relative to the scanned image folder ("builtin/N" for the built-in set).
    pub path: String,
    /// Index into [`ImageSet::artists`], if the image was matched to one.
    pub artist: Option<usize>,
    /// Size of the original file's image before preprocessing.
    pub width: u32,
    pub height: u32,
}

/// A file that was left out, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What loading found besides the images themselves.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Folder the images were read from (None for the built-in set).
    pub image_root: Option<PathBuf>,
    /// artists.csv that was used, if any.
    pub csv: Option<PathBuf>,
    /// Files that could not be used.
    pub skipped: Vec<Skipped>,
    /// Images whose folder or file name matched no artist of the CSV (kept unless filtering).
    pub unmatched: Vec<String>,
    /// CSV artists with no image at all (before filters).
    pub artists_without_images: Vec<String>,
    /// Copies of the same painting (e.g. the second, mojibake-named Dürer folder) dropped.
    pub duplicates: Vec<String>,
    /// Artists that artists.csv names on more than one row (merged into the first row).
    pub duplicate_artists: Vec<DuplicateArtist>,
    /// Cache file used, and whether it was reused (false: built now).
    pub cache_file: Option<PathBuf>,
    pub cache_reused: bool,
    /// Files considered (after filters and --limit), decodable or not.
    pub files_considered: usize,
}

enum Pixels {
    Owned(Vec<u8>),
    Mapped { map: memmap2::Mmap, offset: usize },
}

/// Preprocessed images in memory or memory-mapped from the cache.
pub struct ImageSet {
    /// Width and height of every image in pixels.
    pub size: usize,
    /// Number of images.
    pub count: usize,
    pixels: Pixels,
    /// Per image, in the same order as the pixels.
    pub meta: Vec<ImageMeta>,
    /// Artist table: rows of artists.csv, or class folders for a plain image folder.
    pub artists: Vec<Artist>,
    pub report: LoadReport,
}

impl std::fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSet")
            .field("size", &self.size)
            .field("count", &self.count)
            .field("artists", &self.artists.len())
            .finish()
    }
}

impl ImageSet {
    /// An in-memory set; `pixels` holds `count` HWC RGB images of `size`×`size`.
    pub fn from_pixels(size: usize, pixels: Vec<u8>, meta: Vec<ImageMeta>) -> Result<ImageSet> {
        let per = size * size * 3;
        if per == 0 || !pixels.len().is_multiple_of(per) || pixels.len() / per != meta.len() {
            bail!(
                "image set: {} bytes do not hold {} images of {size}x{size} RGB",
                pixels.len(),
                meta.len()
            );
        }
        Ok(ImageSet {
            size,
            count: meta.len(),
            pixels: Pixels::Owned(pixels),
            meta,
            artists: Vec::new(),
            report: LoadReport::default(),
        })
    }

    fn from_map(size: usize, map: memmap2::Mmap, offset: usize, meta: Vec<ImageMeta>) -> Self {
        ImageSet {
            size,
            count: meta.len(),
            pixels: Pixels::Mapped { map, offset },
            meta,
            artists: Vec::new(),
            report: LoadReport::default(),
        }
    }

    /// All pixels: `count` images of `size*size*3` bytes, HWC RGB.
    pub fn pixels(&self) -> &[u8] {
        let n = self.count * self.image_bytes();
        match &self.pixels {
            Pixels::Owned(v) => &v[..n],
            Pixels::Mapped { map, offset } => &map[*offset..*offset + n],
        }
    }

    /// Bytes per image.
    pub fn image_bytes(&self) -> usize {
        self.size * self.size * 3
    }

    /// One preprocessed image, `size*size*3` bytes, HWC RGB.
    pub fn image_u8(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels()[i * n..(i + 1) * n]
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the pixels are memory-mapped from the cache file.
    pub fn is_memory_mapped(&self) -> bool {
        matches!(self.pixels, Pixels::Mapped { .. })
    }

    /// Artist name of image `i`, if known.
    pub fn artist_of(&self, i: usize) -> Option<&str> {
        self.meta[i]
            .artist
            .and_then(|a| self.artists.get(a))
            .map(|a| a.name.as_str())
    }
}

/// Checks what [`load`] will read without writing anything: the dataset is found and files are
/// left after the filters and `--limit` (whether they decode is only known when they are
/// decoded). For the built-in set: the options that need a dataset are absent.
pub fn check_data(args: &DataArgs) -> Result<()> {
    match &args.data {
        None => {
            if args.artists.is_some() || args.genre.is_some() {
                bail!("--artists and --genre need a dataset: pass --data PATH");
            }
            if args.limit == Some(0) {
                bail!("--limit 0 leaves no images");
            }
            Ok(())
        }
        Some(data) => kaggle::scan(data, args).map(|_| ()),
    }
}

/// Loads what `args` says, or the built-in set when `--data` is absent. Prints one summary line.
/// `report_dir` (created if needed) receives `skipped.csv` (path,reason of every unusable file).
pub fn load(args: &DataArgs, size: usize, seed: u64, report_dir: &Path) -> Result<ImageSet> {
    if !(4..=1024).contains(&size) {
        bail!("image size {size} is out of range (4..=1024)");
    }
    let Some(data) = &args.data else {
        if args.artists.is_some() || args.genre.is_some() {
            bail!("--artists and --genre need a dataset: pass --data PATH");
        }
        let count = args.limit.unwrap_or(BUILTIN_DEFAULT_COUNT);
        if count == 0 {
            bail!("--limit 0 leaves no images");
        }
        println!(
            "data: no --data given, using {count} built-in procedural paintings ({size}x{size}); \
             point it at real data with --data PATH (the Kaggle \"Best Artworks of All Time\" \
             folder or any folder of images)"
        );
        return Ok(builtin(count, size, seed));
    };
    let scan = kaggle::scan(data, args)?;
    if let Some(csv) = &scan.csv {
        for d in &scan.duplicate_artists {
            eprintln!("warning: {}", d.describe(csv));
        }
    }
    let set = cache::load_or_build(&scan, args, size, report_dir)?;
    write_skipped_csv(&set.report.skipped, report_dir)?;
    let r = &set.report;
    let mut line = format!(
        "data: {} images from {} ({} artists",
        set.count,
        r.image_root.as_deref().unwrap_or(Path::new("?")).display(),
        set.meta
            .iter()
            .filter_map(|m| m.artist)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    if !r.unmatched.is_empty() {
        line += &format!(", {} unmatched to an artist", r.unmatched.len());
    }
    if !r.duplicates.is_empty() {
        line += &format!(", {} duplicates dropped", r.duplicates.len());
    }
    line += &format!(
        "), {} skipped (listed in {}), cache {} {}",
        r.skipped.len(),
        report_dir.join("skipped.csv").display(),
        if r.cache_reused { "reused" } else { "built" },
        r.cache_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(in memory only)".into())
    );
    println!("{line}");
    Ok(set)
}

/// Same as [`load`] but shared, for the [`Loader`].
pub fn load_shared(
    args: &DataArgs,
    size: usize,
    seed: u64,
    report_dir: &Path,
) -> Result<Arc<ImageSet>> {
    load(args, size, seed, report_dir).map(Arc::new)
}

fn write_skipped_csv(skipped: &[Skipped], report_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(report_dir)
        .with_context(|| format!("cannot create report folder {}", report_dir.display()))?;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["path", "reason"])?;
    for s in skipped {
        w.write_record([&s.path, &s.reason])?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(&report_dir.join("skipped.csv"), &bytes)
}
