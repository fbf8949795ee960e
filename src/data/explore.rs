//! `artgan explore`: what is in the dataset — printed tables, PNG charts, sample grids and a
//! summary.json with every number.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde_json::json;

use super::grid_png::{save_grid_png_u8, write_atomic};
use super::{load, DataArgs, ImageSet};

/// Options of `artgan explore`.
#[derive(clap::Args, Clone, Debug)]
pub struct ExploreArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Folder for the charts, sample grids, summary.json and skipped.csv.
    #[arg(long, value_name = "DIR", default_value = "explore")]
    pub out: PathBuf,
    /// Sample grids for the N artists with the most paintings.
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Size of the preprocessed images (the same size as training shares the cache).
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, value_name = "PX", default_value_t = 64)]
    pub image_size: usize,
    /// Seed (only matters for the built-in set).
    #[arg(long, value_parser = crate::flags::parse_whole::<u64>, default_value_t = 0)]
    pub seed: u64,
}

/// Images per sample grid, and per grid row.
const GRID_IMAGES: usize = 32;
const GRID_ROW: usize = 8;

#[derive(Default, Clone)]
struct Counts {
    paintings: usize,
    artists: usize,
}

/// Runs the exploration and writes its files into `args.out`.
pub fn explore(args: &ExploreArgs) -> Result<()> {
    crate::run_folder::check_place(&args.out, crate::run_folder::Purpose::Results, "--out")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    let set = load(&args.data, args.image_size, args.seed, &args.out)?;

    // Paintings per artist, from the files.
    let mut per_artist = vec![0usize; set.artists.len()];
    let mut unlabelled = 0usize;
    for m in &set.meta {
        match m.artist {
            Some(a) => per_artist[a] += 1,
            None => unlabelled += 1,
        }
    }
    let mut order: Vec<usize> = (0..set.artists.len()).collect();
    order.sort_by(|&a, &b| per_artist[b].cmp(&per_artist[a]).then(a.cmp(&b)));

    println!();
    println!("{:<32} {:>8} {:>8}  note", "artist", "files", "csv");
    let mut mismatches = Vec::new();
    for &a in &order {
        let art = &set.artists[a];
        let csv = art
            .csv_paintings
            .map(|p| p.to_string())
            .unwrap_or("-".into());
        let differs = art
            .csv_paintings
            .is_some_and(|p| p as usize != per_artist[a]);
        if differs {
            mismatches.push(art.name.clone());
        }
        println!(
            "{:<32} {:>8} {:>8}  {}",
            art.name,
            per_artist[a],
            csv,
            if differs { "MISMATCH" } else { "" }
        );
    }
    if unlabelled > 0 {
        println!("{:<32} {:>8}", "(no artist)", unlabelled);
    }

    let genres = breakdown(&set, &per_artist, |a| &a.genres);
    let nations = breakdown(&set, &per_artist, |a| &a.nationalities);
    print_breakdown("genre", &genres);
    print_breakdown("nationality", &nations);

    // Image sizes of the original files.
    let mut widths: Vec<u32> = set.meta.iter().map(|m| m.width).collect();
    let mut heights: Vec<u32> = set.meta.iter().map(|m| m.height).collect();
    widths.sort_unstable();
    heights.sort_unstable();
    let buckets: [(&str, f64, f64); 7] = [
        ("< 0.6 (tall)", 0.0, 0.6),
        ("0.6-0.8", 0.6, 0.8),
        ("0.8-0.95", 0.8, 0.95),
        ("0.95-1.05 (square)", 0.95, 1.05),
        ("1.05-1.25", 1.05, 1.25),
        ("1.25-1.67", 1.25, 1.67),
        (">= 1.67 (wide)", 1.67, f64::INFINITY),
    ];
    let mut aspect = vec![0usize; buckets.len()];
    for m in &set.meta {
        let r = f64::from(m.width) / f64::from(m.height.max(1));
        if let Some(b) = buckets.iter().position(|&(_, lo, hi)| r >= lo && r < hi) {
            aspect[b] += 1;
        }
    }
    let stat = |v: &[u32]| {
        json!({"min": v.first(), "median": v.get(v.len() / 2), "max": v.last(),
               "mean": v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64})
    };
    println!();
    println!(
        "image sizes: width {}..{} (median {}), height {}..{} (median {})",
        widths.first().unwrap_or(&0),
        widths.last().unwrap_or(&0),
        widths.get(widths.len() / 2).unwrap_or(&0),
        heights.first().unwrap_or(&0),
        heights.last().unwrap_or(&0),
        heights.get(heights.len() / 2).unwrap_or(&0)
    );
    println!("aspect ratio (width/height):");
    for (b, &(name, _, _)) in buckets.iter().enumerate() {
        println!("  {:<20} {:>8}", name, aspect[b]);
    }
    let r = &set.report;
    println!();
    println!("skipped files: {}", r.skipped.len());
    for s in &r.skipped {
        println!("  {}: {}", s.path, s.reason);
    }
    if !r.unmatched.is_empty() {
        println!("images matching no artist: {}", r.unmatched.len());
    }
    if !r.artists_without_images.is_empty() {
        println!(
            "artists without images: {}",
            r.artists_without_images.join(", ")
        );
    }
    if !r.duplicates.is_empty() {
        println!("duplicate copies dropped: {}", r.duplicates.len());
    }
    if let Some(csv) = &r.csv {
        if !r.duplicate_artists.is_empty() {
            println!(
                "artists on more than one row: {}",
                r.duplicate_artists.len()
            );
        }
        for d in &r.duplicate_artists {
            println!("  {}", d.describe(csv));
        }
    }

    // Charts.
    let artist_bars: Vec<(String, f64)> = order
        .iter()
        .map(|&a| (set.artists[a].name.clone(), per_artist[a] as f64))
        .collect();
    let mut charts = Vec::new();
    let mut chart = |file: &str, title: &str, bars: &[(String, f64)], unit: &str| -> Result<()> {
        if bars.is_empty() {
            return Ok(());
        }
        let path = args.out.join(file);
        bar_chart(&path, title, bars, unit)?;
        charts.push(file.to_string());
        Ok(())
    };
    chart(
        "artists.png",
        "Paintings per artist",
        &artist_bars,
        "paintings",
    )?;
    let to_bars = |m: &BTreeMap<String, Counts>| {
        let mut v: Vec<(String, f64)> = m
            .iter()
            .map(|(k, c)| (k.clone(), c.paintings as f64))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    };
    chart(
        "genres.png",
        "Paintings per genre",
        &to_bars(&genres),
        "paintings",
    )?;
    chart(
        "nationalities.png",
        "Paintings per nationality",
        &to_bars(&nations),
        "paintings",
    )?;
    let aspect_bars: Vec<(String, f64)> = buckets
        .iter()
        .zip(&aspect)
        .map(|(b, &n)| (b.0.to_string(), n as f64))
        .collect();
    chart(
        "aspect_ratios.png",
        "Aspect ratio (width / height)",
        &aspect_bars,
        "images",
    )?;
    let sizes: Vec<(f64, f64)> = set
        .meta
        .iter()
        .map(|m| (f64::from(m.width), f64::from(m.height)))
        .collect();
    scatter_chart(
        &args.out.join("image_sizes.png"),
        "Original image sizes",
        &sizes,
    )?;
    charts.push("image_sizes.png".into());

    // Sample grids.
    let grid_dir = args.out.join("samples");
    std::fs::create_dir_all(&grid_dir)
        .with_context(|| format!("cannot create {}", grid_dir.display()))?;
    let mut grids = Vec::new();
    let groups: Vec<(String, Vec<usize>)> = if set.artists.is_empty() || unlabelled == set.len() {
        vec![("all".into(), (0..set.len()).collect())]
    } else {
        order
            .iter()
            .filter(|&&a| per_artist[a] > 0)
            .take(args.top)
            .map(|&a| {
                let idx = (0..set.len())
                    .filter(|&i| set.meta[i].artist == Some(a))
                    .collect();
                (set.artists[a].name.clone(), idx)
            })
            .collect()
    };
    for (rank, (name, idx)) in groups.iter().enumerate() {
        // Evenly spaced through the artist's images, so a grid is not one series.
        let take = idx.len().min(GRID_IMAGES);
        let pick: Vec<&[u8]> = (0..take)
            .map(|k| set.image_u8(idx[k * idx.len() / take]))
            .collect();
        let file = format!("{:02}_{}.png", rank + 1, file_safe(name));
        save_grid_png_u8(&pick, set.size, GRID_ROW, &grid_dir.join(&file))?;
        grids.push(format!("samples/{file}"));
    }

    let artists_json: serde_json::Map<String, serde_json::Value> = order
        .iter()
        .map(|&a| {
            let art = &set.artists[a];
            (
                art.name.clone(),
                json!({
                    "files": per_artist[a],
                    "csv_paintings": art.csv_paintings,
                    "mismatch": art.csv_paintings.is_some_and(|p| p as usize != per_artist[a]),
                    "years": art.years,
                    "genres": art.genres,
                    "nationalities": art.nationalities,
                }),
            )
        })
        .collect();
    let counts_json = |m: &BTreeMap<String, Counts>| -> serde_json::Value {
        m.iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    json!({"paintings": c.paintings, "artists": c.artists}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let summary = json!({
        "data": args.data.data.as_ref().map(|p| p.display().to_string()),
        "image_root": r.image_root.as_ref().map(|p| p.display().to_string()),
        "csv": r.csv.as_ref().map(|p| p.display().to_string()),
        "image_size": set.size,
        "images": set.len(),
        "files_considered": r.files_considered,
        "paintings_per_artist": artists_json,
        "unlabelled_images": unlabelled,
        "csv_mismatches": mismatches,
        "genres": counts_json(&genres),
        "nationalities": counts_json(&nations),
        "image_sizes": {"width": stat(&widths), "height": stat(&heights)},
        "aspect_ratios": buckets.iter().zip(&aspect)
            .map(|(b, &n)| (b.0.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "skipped": r.skipped,
        "unmatched_images": r.unmatched,
        "artists_without_images": r.artists_without_images,
        "duplicates_dropped": r.duplicates,
        "duplicate_artist_rows": r.duplicate_artists,
        "charts": charts,
        "sample_grids": grids,
        "cache_file": r.cache_file.as_ref().map(|p| p.display().to_string()),
    });
    let path = args.out.join("summary.json");
    write_atomic(&path, &serde_json::to_vec_pretty(&summary)?)?;
    println!();
    println!(
        "explore: wrote {} charts, {} sample grids and {} to {}",
        charts.len(),
        grids.len(),
        path.file_name().unwrap_or_default().to_string_lossy(),
        args.out.display()
    );
    Ok(())
}

fn breakdown(
    set: &ImageSet,
    per_artist: &[usize],
    field: impl Fn(&super::Artist) -> &Vec<String>,
) -> BTreeMap<String, Counts> {
    let mut m: BTreeMap<String, Counts> = BTreeMap::new();
    for (a, art) in set.artists.iter().enumerate() {
        // A painter listed under several genres counts towards each.
        for g in field(art) {
            let c = m.entry(g.clone()).or_default();
            c.paintings += per_artist[a];
            c.artists += 1;
        }
    }
    m
}

fn print_breakdown(what: &str, m: &BTreeMap<String, Counts>) {
    if m.is_empty() {
        return;
    }
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.paintings.cmp(&a.1.paintings).then(a.0.cmp(b.0)));
    println!();
    println!("{:<32} {:>9} {:>8}", what, "paintings", "artists");
    for (k, c) in v {
        println!("{:<32} {:>9} {:>8}", k, c.paintings, c.artists);
    }
}

fn file_safe(name: &str) -> String {
    let k = super::artist_key(name).replace(' ', "_");
    if k.is_empty() {
        "unnamed".into()
    } else {
        k
    }
}

/// Plotters needs a font for text; the DejaVu font is compiled in so charts draw the same on a
/// machine without any system fonts. Shared with the run report's charts.
pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

pub(crate) fn plot_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e}", path.display())
}

/// Encodes a chart's RGB buffer to PNG in memory, then writes it atomically.
pub(crate) fn save_rgb(buf: Vec<u8>, w: u32, h: u32, path: &Path) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).context("chart buffer size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    write_atomic(path, &out.into_inner())
}

/// Horizontal bar chart, one labelled bar per item, largest first as given.
fn bar_chart(path: &Path, title: &str, items: &[(String, f64)], unit: &str) -> Result<()> {
    register_font();
    let n = items.len();
    let (w, h) = (1000u32, (90 + 20 * n) as u32);
    let max = items.iter().map(|x| x.1).fold(1.0, f64::max);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let err = plot_err(path);
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(230)
            .build_cartesian_2d(0f64..max * 1.12, (0..n).into_segmented())
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => items.get(*i).map(|x| x.0.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(unit)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(&err)?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
                let mut r = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*v, SegmentValue::Exact(i + 1)),
                    ],
                    RGBColor(70, 110, 170).filled(),
                );
                r.set_margin(3, 3, 0, 0);
                r
            }))
            .map_err(&err)?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
                Text::new(
                    format!("{v}"),
                    (*v + max * 0.01, SegmentValue::CenterOf(i)),
                    ("sans-serif", 12),
                )
            }))
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    save_rgb(buf, w, h, path)
}

/// Width against height of every original image.
fn scatter_chart(path: &Path, title: &str, points: &[(f64, f64)]) -> Result<()> {
    register_font();
    let (w, h) = (800u32, 700u32);
    let maxw = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let maxh = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let err = plot_err(path);
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..maxw, 0f64..maxh)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("width (px)")
            .y_desc("height (px)")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(&err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 2, RGBColor(70, 110, 170).mix(0.4).filled())),
            )
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    save_rgb(buf, w, h, path)
}
