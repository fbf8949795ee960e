//! The quality ladder: trains a list of recipes on one dataset for the same number of images
//! seen, with the same training seeds, and compares them by SWD against the real-vs-real floor.
//!
//! cargo bench --bench quality_ladder -- --data PATH --images 100000 --seeds 11,12,13 \
//!     --recipe "dcgan" --recipe "dcgan --loss hinge" [--image-size 64 --ngf 32 --ndf 32 \
//!     --eval-every-images 10000 --eval-count 256 --out benches/results/quality-DATE-NAME]
//!
//! Each recipe is `artgan train` flags (after the shared size, data and seed flags). Per recipe
//! and seed it trains with `--eval-every-images` (the curve: SWD of the raw and the EMA
//! generator in the run's `quality.csv`), then evaluates the final EMA generator at three
//! evaluation seeds (`artgan evaluate --seed 1|2|3`), next to the real-vs-real floor at the same
//! count. It writes into `--out`: `table.md` (recipe, seed, images seen, training seconds,
//! device, SWD at each evaluation seed and their mean, floor; then per recipe the mean and range
//! over seeds), `curves.csv` and `curves.png` (EMA SWD against images seen, per recipe the mean
//! over seeds), `grid-<recipe>.png` (the last grid of the first seed) and `runs/` (every run).

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Options {
    data: Option<String>,
    images: u64,
    seeds: Vec<u64>,
    recipes: Vec<String>,
    /// Shared `train` flags: size, widths, batch, device.
    shared: Vec<String>,
    eval_every_images: u64,
    eval_count: usize,
    out: PathBuf,
}

fn parse() -> Result<Options> {
    let mut o = Options {
        data: None,
        images: 100_000,
        seeds: vec![11, 12, 13],
        recipes: Vec::new(),
        shared: Vec::new(),
        eval_every_images: 0,
        eval_count: 256,
        out: PathBuf::from("benches/results/quality-ladder"),
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => o.data = Some(value()?),
            "--images" => o.images = value()?.parse()?,
            "--seeds" => {
                o.seeds = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--recipe" => o.recipes.push(value()?),
            "--eval-every-images" => o.eval_every_images = value()?.parse()?,
            "--eval-count" => o.eval_count = value()?.parse()?,
            "--out" => o.out = PathBuf::from(value()?),
            "--image-size" | "--ngf" | "--ndf" | "--batch-size" | "--device" | "--limit" => {
                o.shared.extend([flag.clone(), value()?])
            }
            _ => bail!("unknown flag {flag}"),
        }
    }
    if o.recipes.is_empty() {
        o.recipes.push("dcgan".into());
    }
    if o.eval_every_images == 0 {
        o.eval_every_images = (o.images / 10).max(1);
    }
    Ok(o)
}

/// The artgan binary next to this bench's (`cargo bench` builds both into target/release).
fn artgan() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("bench path")?;
    let bin = dir.join("artgan");
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

fn run(bin: &Path, args: &[String]) -> Result<String> {
    let o = Command::new(bin).args(args).output()?;
    if !o.status.success() {
        bail!(
            "artgan {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Images D sees per epoch: the dataset's images (after `--limit`), in whole batches.
fn images_per_epoch(o: &Options) -> Result<u64> {
    let flag = |name: &str, default: usize| -> Result<usize> {
        match o.shared.iter().position(|f| f == name) {
            Some(i) => Ok(o.shared[i + 1].parse()?),
            None => Ok(default),
        }
    };
    let size = flag("--image-size", 32)?;
    let batch = flag("--batch-size", 64)?;
    let limit = o.shared.iter().position(|f| f == "--limit");
    let args = artgan::data::DataArgs {
        data: o.data.as_ref().map(PathBuf::from),
        limit: limit.map(|i| o.shared[i + 1].parse()).transpose()?,
        ..Default::default()
    };
    let set = artgan::data::load(&args, size, 0, &o.out)?;
    Ok((set.len() / batch * batch) as u64)
}

/// A recipe as a file-name part: `dcgan --loss hinge` → `dcgan-loss-hinge`.
fn slug(recipe: &str) -> String {
    let s: String = recipe
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// `mean` of the `swd` (or `floor`) object in an `evaluate --json` file.
fn json_mean(path: &Path, key: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    v[key]["mean"]
        .as_f64()
        .with_context(|| format!("{}: no {key}.mean", path.display()))
}

/// Rows of a run's quality.csv: (images, SWD of the EMA generator, or the raw one without).
fn curve(run: &Path) -> Result<Vec<(f64, f64)>> {
    let mut r = csv::Reader::from_path(run.join("quality.csv"))?;
    let mut out = Vec::new();
    for rec in r.deserialize::<artgan::train::quality_log::QualityRow>() {
        let rec = rec?;
        out.push((rec.images as f64, f64::from(rec.swd_ema.unwrap_or(rec.swd))));
    }
    Ok(out)
}

struct Result1 {
    recipe: String,
    seed: u64,
    images: u64,
    seconds: f64,
    swd: [f64; 3],
    curve: Vec<(f64, f64)>,
}

fn main() -> Result<()> {
    let o = parse()?;
    let bin = artgan()?;
    std::fs::create_dir_all(o.out.join("runs"))?;
    let data: Vec<String> = o
        .data
        .iter()
        .flat_map(|d| ["--data".to_string(), d.clone()])
        .collect();
    let count = o.eval_count.to_string();
    // The same whole epochs for every recipe: the fewest that reach `--images`.
    let per_epoch = images_per_epoch(&o)?;
    let epochs = o.images.div_ceil(per_epoch).max(1);
    eprintln!(
        "{per_epoch} images an epoch: {epochs} epochs, {} images seen",
        epochs * per_epoch
    );
    let mut results = Vec::new();
    let mut floor = None;
    let mut device = String::new();
    for recipe in &o.recipes {
        for &seed in &o.seeds {
            let run_dir = o.out.join("runs").join(format!("{}-s{seed}", slug(recipe)));
            let mut args: Vec<String> = vec!["train".into(), "--quiet".into()];
            args.extend(recipe.split_whitespace().map(|s| {
                // A recipe may start with its preset's name.
                if matches!(s, "dcgan" | "classical" | "dcgan-kaggle" | "lightweight") {
                    format!("--preset={s}")
                } else {
                    s.to_string()
                }
            }));
            args.extend(o.shared.iter().cloned());
            args.extend(data.iter().cloned());
            let run_s = run_dir.to_string_lossy().into_owned();
            for (f, v) in [
                ("--seed", seed.to_string()),
                ("--epochs", epochs.to_string()),
                ("--eval-every-images", o.eval_every_images.to_string()),
                ("--eval-count", count.clone()),
                ("--out", run_s.clone()),
            ] {
                args.extend([f.to_string(), v]);
            }
            args.push("--force".into());
            eprintln!("training {recipe} seed {seed}");
            run(&bin, &args)?;
            let cfg: serde_json::Value =
                serde_json::from_slice(&std::fs::read(run_dir.join("config.json"))?)?;
            device = cfg["device"].as_str().unwrap_or("?").to_string();
            let curve = curve(&run_dir)?;
            let mut swd = [0.0; 3];
            for (k, s) in swd.iter_mut().enumerate() {
                let json = run_dir.join(format!("evaluate-seed-{}.json", k + 1));
                let mut eval: Vec<String> = ["evaluate", "--checkpoint", &run_s, "--count", &count]
                    .map(String::from)
                    .to_vec();
                eval.extend(["--seed".into(), (k + 1).to_string()]);
                eval.extend(["--json".into(), json.to_string_lossy().into_owned()]);
                eval.extend(data.iter().cloned());
                if floor.is_none() {
                    eval.push("--floor".into());
                }
                run(&bin, &eval)?;
                *s = json_mean(&json, "swd")?;
                if floor.is_none() {
                    floor = Some(json_mean(&json, "floor")?);
                }
            }
            // The training seconds of the whole run: metrics.csv's last row.
            let seconds = csv::Reader::from_path(run_dir.join("metrics.csv"))?
                .deserialize::<artgan::train::EpochStats>()
                .last()
                .transpose()?
                .context("no metrics row")?
                .seconds;
            results.push(Result1 {
                recipe: recipe.clone(),
                seed,
                images: epochs * per_epoch,
                seconds,
                swd,
                curve,
            });
        }
        // The first seed's last grid.
        let first = o
            .out
            .join("runs")
            .join(format!("{}-s{}", slug(recipe), o.seeds[0]))
            .join("samples");
        if let Some(grid) = std::fs::read_dir(&first)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("epoch-"))
            .max()
        {
            std::fs::copy(grid, o.out.join(format!("grid-{}.png", slug(recipe))))?;
        }
    }
    let floor = floor.unwrap_or(f64::NAN);
    write_table(&o, epochs * per_epoch, &results, floor, &device)?;
    write_curves(&o, &results, floor)?;
    println!("wrote {}", o.out.join("table.md").display());
    Ok(())
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn write_table(
    o: &Options,
    images: u64,
    results: &[Result1],
    floor: f64,
    device: &str,
) -> Result<()> {
    let mut t =
        format!(
        "# Quality ladder\n\nData: {}. Images seen: {} per run. Device: {device}. SWD×10³ of the \
         EMA generator at evaluation seeds 1, 2, 3 ({} images each); the real-vs-real floor at \
         the same count: {floor:.2}.\n\nCommand: `cargo bench --bench quality_ladder -- {}`\n\n\
         | recipe | seed | images | train s | SWD s1 | s2 | s3 | mean | × floor |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        o.data.as_deref().unwrap_or("built-in paintings"),
        images,
        o.eval_count,
        std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .map(|a| if a.contains(' ') { format!("\"{a}\"") } else { a })
            .collect::<Vec<_>>()
            .join(" ")
    );
    for r in results {
        let m = mean(&r.swd);
        t += &format!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {m:.2} | {:.2} |\n",
            r.recipe,
            r.seed,
            r.images,
            r.seconds,
            r.swd[0],
            r.swd[1],
            r.swd[2],
            m / floor
        );
    }
    t += "\n| recipe | mean SWD over seeds (range) | × floor |\n|---|---|---|\n";
    for recipe in &o.recipes {
        let per: Vec<f64> = results
            .iter()
            .filter(|r| &r.recipe == recipe)
            .map(|r| mean(&r.swd))
            .collect();
        let (lo, hi) = per
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let m = mean(&per);
        t += &format!(
            "| {recipe} | {m:.2} ({lo:.2}–{hi:.2}) | {:.2} |\n",
            m / floor
        );
    }
    std::fs::write(o.out.join("table.md"), t)?;
    Ok(())
}

fn write_curves(o: &Options, results: &[Result1], floor: f64) -> Result<()> {
    let mut csv = String::from("recipe,seed,images,swd_ema\n");
    for r in results {
        for (x, y) in &r.curve {
            csv += &format!("{},{},{x},{y}\n", r.recipe, r.seed);
        }
    }
    std::fs::write(o.out.join("curves.csv"), csv)?;
    // Per recipe, the mean over seeds at each evaluation point (all seeds share the points).
    let series: Vec<(String, Vec<(f64, f64)>)> = o
        .recipes
        .iter()
        .map(|recipe| {
            let runs: Vec<&Result1> = results.iter().filter(|r| &r.recipe == recipe).collect();
            let n = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
            let points = (0..n)
                .map(|i| {
                    let ys: Vec<f64> = runs.iter().map(|r| r.curve[i].1).collect();
                    (runs[0].curve[i].0, mean(&ys))
                })
                .collect();
            (recipe.clone(), points)
        })
        .collect();
    let x_max = o.images as f64;
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(floor, f64::max)
        * 1.1;
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).ok();
    let (w, h) = (900u32, 560u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "SWD×10³ (EMA generator) against images seen",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("images seen")
        .y_desc("SWD×10³")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, floor), (x_max, floor)],
            BLACK.mix(0.5),
        ))?
        .label("real-vs-real floor")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.5)));
    for (i, (recipe, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(recipe.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    drop(chart);
    drop(root);
    image::RgbImage::from_raw(w, h, buf)
        .context("plot buffer")?
        .save(o.out.join("curves.png"))?;
    Ok(())
}
