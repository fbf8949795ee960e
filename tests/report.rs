//! The run report: charts under plots/ and index.html, from a fake run folder.

mod report_fixture;

use artgan::report::{write_report, PLOT_SIZE};
use report_fixture::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

fn read_index(dir: &Path) -> String {
    fs::read_to_string(dir.join("index.html")).unwrap()
}

/// Every reference is relative, inside the run folder and names a file that exists.
fn assert_references_exist(dir: &Path, html: &str) -> BTreeSet<String> {
    let refs: BTreeSet<String> = references(html).into_iter().collect();
    for r in &refs {
        assert!(
            !r.contains(':') && !r.starts_with('/') && !r.contains(".."),
            "not a link relative to the run folder: {r}"
        );
        assert!(
            dir.join(r).is_file(),
            "index.html links {r}, which is missing"
        );
    }
    refs
}

/// Pixels of a chart that are clearly coloured (series), and that are not white.
fn chart_pixels(path: &Path) -> (usize, usize) {
    let img = image::open(path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), PLOT_SIZE, "{}", path.display());
    let coloured = img
        .pixels()
        .filter(|p| {
            let (lo, hi) = (p.0.iter().min().unwrap(), p.0.iter().max().unwrap());
            hi - lo > 80
        })
        .count();
    let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    (coloured, ink)
}

fn no_temp_files(dir: &Path) {
    for sub in [dir.to_path_buf(), dir.join("plots")] {
        for e in fs::read_dir(&sub).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.ends_with(".tmp"), "left over {name}");
        }
    }
}

#[test]
fn writes_charts_and_a_page_that_links_only_existing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    full_run(dir, 6);
    let files = write_report(dir).unwrap();
    assert_eq!(files.index, dir.join("index.html"));
    assert_eq!(files.epochs, 6);
    assert!(files.notes.is_empty(), "{:?}", files.notes);

    let names: Vec<String> = files
        .plots
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "plots/losses.png",
            "plots/discriminator.png",
            "plots/learning_rates.png",
            "plots/swd.png"
        ]
    );
    let (w, h) = PLOT_SIZE;
    for p in &files.plots {
        let (coloured, ink) = chart_pixels(p);
        // Axes, labels and at least one drawn line; far from an empty canvas.
        assert!(
            coloured > 300,
            "{}: {coloured} coloured pixels",
            p.display()
        );
        assert!(
            ink > (w * h / 50) as usize,
            "{}: only {ink} drawn pixels",
            p.display()
        );
    }

    let html = read_index(dir);
    let refs = assert_references_exist(dir, &html);
    let expected: BTreeSet<String> = names
        .iter()
        .cloned()
        .chain(
            [
                "samples/epoch-0000.png",
                "samples/epoch-0002.png",
                "config.json",
                "metrics.csv",
            ]
            .map(String::from),
        )
        .collect();
    assert_eq!(refs, expected);
    for p in &names {
        assert!(html.contains(&format!("<img src=\"{p}\"")), "{p} not shown");
    }

    // Newest grid first, each captioned.
    let newest = html.find("samples/epoch-0002.png").unwrap();
    let oldest = html.find("samples/epoch-0000.png").unwrap();
    assert!(newest < oldest);
    assert!(html.contains("<figcaption>epoch 2</figcaption>"));
    assert!(html.contains("<figcaption>epoch 0 (untrained)</figcaption>"));

    // Title with the folder name, latest epoch, config table.
    let name = dir.file_name().unwrap().to_string_lossy();
    assert!(html.contains(&format!("<title>{name} ")));
    assert!(html.contains(&format!("<h1>{name}</h1>")));
    assert!(html.contains("<h2>Epoch 6</h2>"));
    assert!(html.contains("epoch 6 of 20"));
    assert!(html.contains("<tr><th>preset</th><td>classical</td></tr>"));
    assert!(html.find("<th>preset</th>").unwrap() < html.find("<th>image_size</th>").unwrap());

    // Escaped everywhere: the only <script> is the page's own.
    assert_eq!(html.matches("<script").count(), 1);
    assert!(!html.contains("alert('x')"));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; 2048 paintings"));
    assert!(html.contains(
        "<th>epoch 3</th><td>generator lr now initial 2.50e-4, detail 6.25e-5 &lt;up&gt;</td>"
    ));
    assert!(!html.contains("<up>"));

    // Latest SWD is from epoch 6 (even); D(x) of epoch 6 is there, so no "epoch N" note on it.
    assert!(html.contains("<dt>SWD ×10³</dt>"));
    no_temp_files(dir);
}

#[test]
fn latest_values_fall_back_to_the_newest_epoch_that_has_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    full_run(dir, 5); // epoch 5 has no SWD: the card shows epoch 4's with a note
    write_report(dir).unwrap();
    let html = read_index(dir);
    let card = html.split("<dt>SWD ×10³</dt>").nth(1).unwrap();
    let card = &card[..card.find("</div>").unwrap()];
    assert!(card.contains("<small>epoch 4</small>"), "{card}");
}

#[test]
fn nan_and_empty_cells_break_lines_without_failing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_config(dir, 3);
    // Every value cell of epoch 2 is empty or NaN; epoch 3 misses trailing cells.
    fs::write(
        dir.join("metrics.csv"),
        "epoch,step,seconds,loss_d,loss_g,d_x,d_g_z,lr_d,lr_g,lr_changes,swd\n\
         1,10,1.5,1.3,0.8,0.6,0.4,0.0002,0.0002,,\n\
         2,20,NaN,NaN,,nan,,,,,\n\
         3,30,4.5,1.1\n",
    )
    .unwrap();
    let files = write_report(dir).unwrap();
    assert_eq!(files.epochs, 3);
    let names: Vec<_> = files.plots.iter().map(|p| p.file_name().unwrap()).collect();
    // No SWD value anywhere: no SWD chart.
    assert_eq!(
        names,
        ["losses.png", "discriminator.png", "learning_rates.png"]
    );
    for p in &files.plots {
        assert!(chart_pixels(p).0 > 20, "{}", p.display());
    }
    let html = read_index(dir);
    assert_references_exist(dir, &html);
    assert!(html.contains("<h2>Epoch 3</h2>"));
    // loss_g's newest value is epoch 1's.
    let card = html.split("<dt>loss G</dt>").nth(1).unwrap();
    assert!(card[..card.find("</div>").unwrap()].contains("<small>epoch 1</small>"));
}

#[test]
fn copes_with_no_epochs_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_config(dir, 20);
    write_metrics(dir, 0, false, false); // header only
    write_grid(dir, 0);
    // A chart left from an earlier report is not kept once its data is gone.
    fs::create_dir_all(dir.join("plots")).unwrap();
    fs::write(dir.join("plots/swd.png"), b"old").unwrap();

    let files = write_report(dir).unwrap();
    assert_eq!(files.epochs, 0);
    assert!(files.plots.is_empty());
    assert!(!dir.join("plots/swd.png").exists());
    let html = read_index(dir);
    let refs = assert_references_exist(dir, &html);
    assert!(refs.contains("samples/epoch-0000.png"));
    assert!(!refs.iter().any(|r| r.starts_with("plots/")));
    assert!(html.contains("0 of 20 epochs"));
    no_temp_files(dir);
}

#[test]
fn copes_with_an_empty_folder_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = write_report(dir).unwrap();
    assert!(files.plots.is_empty());
    assert_eq!(files.notes.len(), 2, "{:?}", files.notes);
    let html = read_index(dir);
    assert!(html.contains("config.json not found"));
    assert!(html.contains("No sample grids yet"));
    assert!(assert_references_exist(dir, &html).is_empty());

    fs::write(dir.join("config.json"), "{\"preset\": ").unwrap();
    fs::write(dir.join("metrics.csv"), "step,loss_d\n1,0.5\n").unwrap();
    let files = write_report(dir).unwrap();
    assert!(files.notes.iter().any(|n| n.contains("config.json is not")));
    assert!(files.notes.iter().any(|n| n.contains("no epoch column")));
    assert_references_exist(dir, &read_index(dir));
}

#[test]
fn the_learning_rate_chart_marks_changes() {
    let gray = |path: &Path| {
        let img = image::open(path).unwrap().to_rgb8();
        img.pixels().filter(|p| p.0 == [230, 159, 0]).count()
    };
    let count = |lr_change: bool| {
        let tmp = tempfile::tempdir().unwrap();
        write_config(tmp.path(), 20);
        write_metrics(tmp.path(), 6, lr_change, false);
        write_report(tmp.path()).unwrap();
        gray(&tmp.path().join("plots/learning_rates.png"))
    };
    let (with, without) = (count(true), count(false));
    // A dashed line over the plot's height plus its legend entry.
    assert!(with > without + 100, "{with} vs {without} mark pixels");
}

#[test]
fn a_hundred_epochs_take_well_under_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    full_run(dir, 100);
    for e in (0..=100).step_by(5) {
        write_grid(dir, e);
    }
    write_report(dir).unwrap(); // warms up the font cache
    let start = std::time::Instant::now();
    let files = write_report(dir).unwrap();
    let took = start.elapsed();
    println!("write_report, 100 epochs, 22 grids: {took:?}");
    assert_eq!(files.plots.len(), 4);
    // Generous: this machine is shared; measured far lower (see the printed time).
    assert!(took.as_secs_f64() < 2.0, "{took:?}");
    let html = read_index(dir);
    assert_eq!(assert_references_exist(dir, &html).len(), 4 + 22 + 2);
}

#[test]
fn the_report_command_prints_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    fs::create_dir(&dir).unwrap();
    full_run(&dir, 4);
    let out = Command::new(env!("CARGO_BIN_EXE_artgan"))
        .arg("report")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim(), dir.join("index.html").to_str().unwrap());
    assert!(dir.join("plots/losses.png").is_file());

    let missing = tmp.path().join("nope");
    let out = Command::new(env!("CARGO_BIN_EXE_artgan"))
        .arg("report")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
}
