//! Data pipeline tests on fixture datasets built in temporary folders: the Kaggle layout with its
//! traps (quoted CSV, mojibake folders, odd colour types, broken files), plain folders, the
//! cache, the filters, explore, the loader and the built-in set.

use std::path::{Path, PathBuf};

mod common;
use common::{noise_rgb, save};
use std::sync::Arc;

use artgan::data::{
    self, assemble_batch, builtin, explore, load, save_grid_png, Augment, AugmentArgs, DataArgs,
    ExploreArgs, Fit, ImageSet, Loader, Source,
};
use artgan::Device;
use image::{ImageBuffer, Luma, Rgb, RgbImage, Rgba};

const CSV: &str = "\
id,name,years,genre,nationality,bio,wikipedia,paintings
0,Vincent van Gogh,1853 – 1890,Post-Impressionism,Dutch,\"Vincent Willem van Gogh (Dutch: [ˈvɪnsɛnt ˈʋɪləm vɑŋ ˈɣɔx]), a painter, who, famously, painted\",http://en.wikipedia.org/wiki/Vincent_van_Gogh,5
1,Albrecht Dürer,1471 – 1528,Northern Renaissance,German,\"Albrecht Dürer (/ˈdjʊərər/; German: [ˈʔalbʁɛçt ˈdyːʁɐ]), painter, printmaker\",http://en.wikipedia.org/wiki/Albrecht_Dürer,2
2,Claude Monet,1840 – 1926,Impressionism,French,\"Oscar-Claude Monet, a founder of French Impressionist painting\",http://en.wikipedia.org/wiki/Claude_Monet,2
3,Pierre-Auguste Renoir,1841 – 1919,Impressionism,French,\"Renoir, a French artist\",http://en.wikipedia.org/wiki/Pierre-Auguste_Renoir,1
4,Frida Kahlo,1907 – 1954,\"Primitivism,Surrealism\",Mexican,\"Magdalena Carmen Frida Kahlo y Calderón, a Mexican painter\",http://en.wikipedia.org/wiki/Frida_Kahlo,120
";

/// "Dürer" with a decomposed ü, read as CP437, and that again as CP850: the archive's names.
const DURER_MOJIBAKE_1: &str = "Albrecht_Du╠êrer";
const DURER_MOJIBAKE_2: &str = "Albrecht_DuÔòá├¬rer";

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A 32×32 CMYK JPEG of pure cyan-free magenta+yellow (red) ink, written by jpeg-encoder.
fn cmyk_jpeg(path: &Path) {
    let mut data = Vec::new();
    for _ in 0..32 * 32 {
        data.extend_from_slice(&[0u8, 255, 255, 0]);
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(&data, 32, 32, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    std::fs::write(path, out).unwrap();
}

/// The Kaggle layout with every trap the real archive (or a user's copy) has.
fn kaggle_fixture(root: &Path) {
    std::fs::write(root.join("artists.csv"), CSV).unwrap();
    let img = root.join("images/images");
    let v = img.join("Vincent_van_Gogh");
    save(&noise_rgb(40, 30, 1), &v.join("Vincent_van_Gogh_1.jpg"));
    let gray: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_pixel(30, 40, Luma([100]));
    gray.save(v.join("Vincent_van_Gogh_2.png")).unwrap();
    cmyk_jpeg(&v.join("Vincent_van_Gogh_3.jpg"));
    for folder in [DURER_MOJIBAKE_1, DURER_MOJIBAKE_2] {
        for n in 1..=2 {
            save(
                &noise_rgb(24, 24, 10 + n),
                &img.join(folder).join(format!("{folder}_{n}.jpg")),
            );
        }
    }
    let m = img.join("Claude_Monet");
    // Left half transparent (stored black), right half opaque red.
    let rgba: ImageBuffer<Rgba<u8>, Vec<u8>> = ImageBuffer::from_fn(32, 32, |x, _| {
        if x < 16 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([255, 0, 0, 255])
        }
    });
    std::fs::create_dir_all(&m).unwrap();
    rgba.save(m.join("Claude_Monet_1.png")).unwrap();
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_pixel(20, 20, Rgb([65535, 32896, 0]));
    deep.save(m.join("Claude_Monet_2.png")).unwrap();
    let r = img.join("Pierre-Auguste_Renoir");
    std::fs::create_dir_all(&r).unwrap();
    let full = jpeg_bytes(&noise_rgb(64, 64, 3));
    std::fs::write(
        r.join("Pierre-Auguste_Renoir_1.jpg"),
        &full[..full.len() / 2],
    )
    .unwrap();
    std::fs::write(r.join("Pierre-Auguste_Renoir_2.jpg"), b"").unwrap();
    std::fs::write(
        r.join("Pierre-Auguste_Renoir_3.jpg"),
        b"this is a text file, not a jpeg\n",
    )
    .unwrap();
    save(
        &noise_rgb(20, 20, 4),
        &r.join("Pierre-Auguste_Renoir_4.bmp"),
    );
    save(
        &noise_rgb(20, 20, 5),
        &img.join("Unknown_Painter/Unknown_Painter_1.jpg"),
    );
    // A stray non-image file is ignored, not skipped.
    std::fs::write(img.join("README.txt"), "notes").unwrap();

    let rs = root.join("resized/resized");
    save(&noise_rgb(30, 20, 6), &rs.join("Vincent_van_Gogh_1.jpg"));
    save(&noise_rgb(20, 30, 7), &rs.join("Vincent_van_Gogh_2.jpg"));
    save(
        &noise_rgb(25, 25, 8),
        &rs.join(format!("{DURER_MOJIBAKE_1}_1.jpg")),
    );
    save(&noise_rgb(25, 25, 9), &rs.join("Claude_Monet_1.png"));
    save(&noise_rgb(25, 25, 10), &rs.join("Claude_Monet_2.webp"));
}

fn args(data: &Path) -> DataArgs {
    DataArgs {
        data: Some(data.to_path_buf()),
        ..DataArgs::default()
    }
}

fn images_args(data: &Path) -> DataArgs {
    DataArgs {
        source: Source::Images,
        ..args(data)
    }
}

fn count_of(set: &ImageSet, artist: &str) -> usize {
    (0..set.len())
        .filter(|&i| set.artist_of(i) == Some(artist))
        .count()
}

fn index_of(set: &ImageSet, path_end: &str) -> usize {
    set.meta
        .iter()
        .position(|m| m.path.ends_with(path_end))
        .unwrap_or_else(|| panic!("{path_end} not loaded: {:?}", set.meta))
}

fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("best-artworks");
    std::fs::create_dir_all(&data).unwrap();
    kaggle_fixture(&data);
    let run = dir.path().join("run");
    (dir, data, run)
}

#[test]
fn kaggle_images_counts_mapping_and_skip_reasons() {
    let (_dir, data, run) = fixture();
    let set = load(&images_args(&data), 16, 0, &run).unwrap();
    let r = &set.report;
    assert!(r.image_root.as_ref().unwrap().ends_with("images/images"));
    // 3 van Gogh + 2 Dürer (second folder's copies dropped) + 2 Monet + 4 Renoir + 1 unknown.
    assert_eq!(r.files_considered, 12);
    assert_eq!(r.duplicates.len(), 2, "{:?}", r.duplicates);
    assert_eq!(set.len(), 9);
    assert_eq!(set.artists.len(), 5);
    assert_eq!(count_of(&set, "Vincent van Gogh"), 3);
    assert_eq!(count_of(&set, "Albrecht Dürer"), 2);
    assert_eq!(count_of(&set, "Claude Monet"), 2);
    assert_eq!(count_of(&set, "Pierre-Auguste Renoir"), 1);
    assert_eq!(
        r.unmatched,
        vec!["Unknown_Painter/Unknown_Painter_1.jpg".to_string()]
    );
    assert_eq!(r.artists_without_images, vec!["Frida Kahlo".to_string()]);
    let frida = set
        .artists
        .iter()
        .find(|a| a.name == "Frida Kahlo")
        .unwrap();
    assert_eq!(frida.genres, vec!["Primitivism", "Surrealism"]);
    assert_eq!(frida.csv_paintings, Some(120));

    let reason = |name: &str| {
        r.skipped
            .iter()
            .find(|s| s.path.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not skipped: {:?}", r.skipped))
            .reason
            .clone()
    };
    assert_eq!(r.skipped.len(), 3);
    assert!(reason("Renoir_1.jpg").contains("truncated"));
    assert!(reason("Renoir_2.jpg").contains("empty file"));
    assert!(reason("Renoir_3.jpg").contains("not an image"));
    let listed = std::fs::read_to_string(run.join("skipped.csv")).unwrap();
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(listed.starts_with("path,reason"));
    assert!(listed.contains("Pierre-Auguste_Renoir/Pierre-Auguste_Renoir_2.jpg,empty file"));
}

#[test]
fn colour_types_become_rgb() {
    let (_dir, data, run) = fixture();
    let set = load(&images_args(&data), 16, 0, &run).unwrap();
    let px = |i: usize, x: usize, y: usize| {
        let img = set.image_u8(i);
        let o = (y * 16 + x) * 3;
        [img[o], img[o + 1], img[o + 2]]
    };
    let gray = index_of(&set, "Vincent_van_Gogh_2.png");
    assert_eq!(px(gray, 8, 8), [100, 100, 100]);
    assert_eq!((set.meta[gray].width, set.meta[gray].height), (30, 40));
    let deep = index_of(&set, "Claude_Monet_2.png");
    assert_eq!(px(deep, 8, 8), [255, 128, 0]);
    let alpha = index_of(&set, "Claude_Monet_1.png");
    // Transparent half composited over white, opaque half stays red.
    assert_eq!(px(alpha, 2, 8), [255, 255, 255]);
    assert_eq!(px(alpha, 13, 8), [255, 0, 0]);
    let cmyk = index_of(&set, "Vincent_van_Gogh_3.jpg");
    let [r, g, b] = px(cmyk, 8, 8);
    assert!(
        r > 200 && g < 60 && b < 60,
        "CMYK magenta+yellow ink should be red, got {r},{g},{b}"
    );
}

#[test]
fn resized_source_is_default_and_maps_file_name_prefixes() {
    let (_dir, data, run) = fixture();
    let set = load(&args(&data), 8, 0, &run).unwrap();
    assert!(set
        .report
        .image_root
        .as_ref()
        .unwrap()
        .ends_with("resized/resized"));
    assert_eq!(set.len(), 5);
    assert_eq!(count_of(&set, "Vincent van Gogh"), 2);
    assert_eq!(count_of(&set, "Albrecht Dürer"), 1);
    assert_eq!(count_of(&set, "Claude Monet"), 2, "webp decodes");
    assert!(set.report.unmatched.is_empty());
    assert!(set.report.skipped.is_empty());
    // Pointing at the image folder alone finds the CSV two levels up.
    let alone = load(&args(&data.join("resized/resized")), 8, 0, &run).unwrap();
    assert_eq!(count_of(&alone, "Albrecht Dürer"), 1);
    assert_eq!(alone.pixels(), set.pixels());
}

#[test]
fn cache_is_reused_mapped_and_rebuilt_when_inputs_change() {
    let (_dir, data, run) = fixture();
    let a = args(&data);
    let first = load(&a, 16, 0, &run).unwrap();
    assert!(!first.report.cache_reused);
    let file = first.report.cache_file.clone().unwrap();
    assert!(
        file.starts_with(data.join(".artgan-cache")),
        "{}",
        file.display()
    );
    let second = load(&a, 16, 0, &run).unwrap();
    assert!(second.report.cache_reused);
    assert!(second.is_memory_mapped());
    assert_eq!(second.pixels(), first.pixels());
    assert_eq!(second.meta, first.meta);
    assert_eq!(second.report.cache_file.as_ref(), Some(&file));

    // Touching a file (new mtime, same bytes) invalidates.
    let target = data.join("resized/resized/Vincent_van_Gogh_1.jpg");
    let f = std::fs::File::options().write(true).open(&target).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let touched = load(&a, 16, 0, &run).unwrap();
    assert!(!touched.report.cache_reused);
    assert_eq!(touched.pixels(), first.pixels());
    assert!(load(&a, 16, 0, &run).unwrap().report.cache_reused);

    // New content: rebuilt and the pixels follow.
    save(&noise_rgb(30, 20, 99), &target);
    let changed = load(&a, 16, 0, &run).unwrap();
    assert!(!changed.report.cache_reused);
    assert_ne!(changed.pixels(), first.pixels());
    // An added image is picked up.
    save(
        &noise_rgb(30, 20, 98),
        &data.join("resized/resized/Claude_Monet_3.jpg"),
    );
    let added = load(&a, 16, 0, &run).unwrap();
    assert!(!added.report.cache_reused);
    assert_eq!(added.len(), 6);

    // Another size or fit is another cache file; the old one stays valid.
    let other = load(&a, 8, 0, &run).unwrap();
    assert!(!other.report.cache_reused);
    assert_ne!(other.report.cache_file, added.report.cache_file);
    let pad = load(
        &DataArgs {
            fit: Fit::Pad,
            ..a.clone()
        },
        16,
        0,
        &run,
    )
    .unwrap();
    assert!(!pad.report.cache_reused);
    assert!(load(&a, 16, 0, &run).unwrap().report.cache_reused);

    // A corrupt cache file is rebuilt, not trusted.
    let slot = added.report.cache_file.clone().unwrap();
    // Replace rather than overwrite in place: `added` still maps the old file.
    std::fs::remove_file(&slot).unwrap();
    std::fs::write(&slot, b"garbage").unwrap();
    let rebuilt = load(&a, 16, 0, &run).unwrap();
    assert!(!rebuilt.report.cache_reused);
    assert_eq!(rebuilt.pixels(), added.pixels());

    // --cache-dir is honoured.
    let custom = run.join("my-cache");
    let c = DataArgs {
        cache_dir: Some(custom.clone()),
        ..a.clone()
    };
    let built = load(&c, 16, 0, &run).unwrap();
    assert!(built.report.cache_file.unwrap().starts_with(&custom));
    assert!(load(&c, 16, 0, &run).unwrap().report.cache_reused);
}

#[test]
fn filters_select_artists_and_genres() {
    let (_dir, data, run) = fixture();
    let base = images_args(&data);
    let two = DataArgs {
        artists: Some("Vincent van Gogh, claude_monet".into()),
        ..base.clone()
    };
    let set = load(&two, 8, 0, &run).unwrap();
    assert_eq!(set.len(), 5);
    assert!((0..set.len()).all(|i| matches!(
        set.artist_of(i),
        Some("Vincent van Gogh") | Some("Claude Monet")
    )));
    let impressionism = DataArgs {
        genre: Some("impressionism".into()),
        ..base.clone()
    };
    let set = load(&impressionism, 8, 0, &run).unwrap();
    // Monet 2 + Renoir's one good file; Post-Impressionism is another genre.
    assert_eq!(set.len(), 3);
    assert_eq!(count_of(&set, "Claude Monet"), 2);
    let both = DataArgs {
        genre: Some("Impressionism".into()),
        artists: Some("Claude Monet,Vincent van Gogh".into()),
        ..base.clone()
    };
    assert_eq!(load(&both, 8, 0, &run).unwrap().len(), 2);
    // Errors name the problem.
    let err = load(
        &DataArgs {
            artists: Some("Rembrandt".into()),
            ..base.clone()
        },
        8,
        0,
        &run,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown artist 'Rembrandt'"), "{err}");
    let err = load(
        &DataArgs {
            genre: Some("Surrealism".into()),
            ..base.clone()
        },
        8,
        0,
        &run,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no image files"), "{err}");
    let err = load(
        &DataArgs {
            genre: Some("Cubism".into()),
            ..base.clone()
        },
        8,
        0,
        &run,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no artist has genre 'Cubism'"), "{err}");
    let limited = load(
        &DataArgs {
            limit: Some(2),
            ..base.clone()
        },
        8,
        0,
        &run,
    )
    .unwrap();
    assert_eq!(limited.report.files_considered, 2);
    assert_eq!(limited.len(), 2);
}

#[test]
fn plain_folders_without_csv() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pics");
    save(&noise_rgb(20, 20, 1), &root.join("cats/a.JPG"));
    save(&noise_rgb(20, 30, 2), &root.join("cats/deeper/b.png"));
    save(&noise_rgb(30, 20, 3), &root.join("dogs/c.bmp"));
    save(&noise_rgb(20, 20, 4), &root.join("loose.jpeg"));
    std::fs::write(root.join("notes.md"), "x").unwrap();
    let run = dir.path().join("run");
    let set = load(&args(&root), 8, 0, &run).unwrap();
    assert_eq!(set.len(), 4);
    assert!(set.report.csv.is_none());
    let names: Vec<&str> = set.artists.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["cats", "dogs"]);
    assert_eq!(count_of(&set, "cats"), 2);
    assert_eq!(set.artist_of(index_of(&set, "loose.jpeg")), None);
    let cats = load(
        &DataArgs {
            artists: Some("cats".into()),
            ..args(&root)
        },
        8,
        0,
        &run,
    )
    .unwrap();
    assert_eq!(cats.len(), 2);
    let err = load(
        &DataArgs {
            genre: Some("x".into()),
            ..args(&root)
        },
        8,
        0,
        &run,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("artists.csv"), "{err}");
}

#[test]
fn no_usable_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bad");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.jpg"), b"").unwrap();
    std::fs::write(root.join("b.png"), b"not png").unwrap();
    let err = load(&args(&root), 8, 0, &dir.path().join("run"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no usable image"), "{err}");
    assert!(err.contains("a.jpg: empty file"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = load(&args(&empty), 8, 0, &dir.path().join("run"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no image files found"), "{err}");
    let err = load(
        &args(&dir.path().join("nope")),
        8,
        0,
        &dir.path().join("run"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no such file or folder"), "{err}");
}

#[test]
fn pad_fit_keeps_the_whole_painting() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("wide");
    let white: RgbImage = ImageBuffer::from_pixel(40, 20, Rgb([255, 255, 255]));
    save(&white, &root.join("w.png"));
    let pad = load(
        &DataArgs {
            fit: Fit::Pad,
            ..args(&root)
        },
        16,
        0,
        &dir.path().join("r"),
    )
    .unwrap();
    let img = pad.image_u8(0);
    let at = |x: usize, y: usize| img[(y * 16 + x) * 3];
    assert_eq!(at(8, 0), 0, "padded band is black");
    assert_eq!(at(8, 8), 255);
    let crop = load(&args(&root), 16, 0, &dir.path().join("r")).unwrap();
    assert!(crop.image_u8(0).iter().all(|&v| v == 255));
}

#[test]
fn explore_writes_tables_charts_grids_and_summary() {
    let (_dir, data, run) = fixture();
    let out = run.join("explore");
    let ex = ExploreArgs {
        data: images_args(&data),
        out: out.clone(),
        top: 2,
        image_size: 16,
        seed: 0,
    };
    explore(&ex).unwrap();
    for chart in [
        "artists.png",
        "genres.png",
        "nationalities.png",
        "image_sizes.png",
        "aspect_ratios.png",
    ] {
        let img = image::open(out.join(chart)).unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert!(img.width() >= 400 && img.height() >= 100, "{chart}");
        // Something was drawn: not a blank canvas.
        let rgb = img.to_rgb8();
        assert!(
            rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 500,
            "{chart}"
        );
    }
    let grids: Vec<_> = std::fs::read_dir(out.join("samples")).unwrap().collect();
    assert_eq!(grids.len(), 2);
    let top = image::open(out.join("samples/01_vincent_van_gogh.png")).unwrap();
    // 3 images in one row, 16 px each, 2 px padding.
    assert_eq!((top.width(), top.height()), (3 * 18 + 2, 18 + 2));
    assert!(out.join("skipped.csv").is_file());

    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["images"], 9);
    let vg = &s["paintings_per_artist"]["Vincent van Gogh"];
    assert_eq!(vg["files"], 3);
    assert_eq!(vg["csv_paintings"], 5);
    assert_eq!(vg["mismatch"], true);
    assert_eq!(s["paintings_per_artist"]["Albrecht Dürer"]["files"], 2);
    assert_eq!(
        s["paintings_per_artist"]["Albrecht Dürer"]["mismatch"],
        false
    );
    assert_eq!(s["paintings_per_artist"]["Frida Kahlo"]["files"], 0);
    assert_eq!(s["genres"]["Impressionism"]["paintings"], 3);
    assert_eq!(s["genres"]["Impressionism"]["artists"], 2);
    assert_eq!(s["nationalities"]["French"]["paintings"], 3);
    assert_eq!(s["skipped"].as_array().unwrap().len(), 3);
    assert!(s["skipped"][0]["reason"].is_string());
    assert_eq!(s["unlabelled_images"], 1);
    assert_eq!(s["artists_without_images"][0], "Frida Kahlo");
    assert_eq!(s["duplicates_dropped"].as_array().unwrap().len(), 2);
    assert_eq!(s["image_sizes"]["width"]["max"], 40);
}

#[test]
fn explore_plain_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pics");
    for i in 0..5 {
        save(&noise_rgb(20, 20, i), &root.join(format!("p{i}.png")));
    }
    let out = dir.path().join("ex");
    explore(&ExploreArgs {
        data: args(&root),
        out: out.clone(),
        top: 3,
        image_size: 8,
        seed: 0,
    })
    .unwrap();
    assert!(out.join("samples/01_all.png").is_file());
    assert!(out.join("image_sizes.png").is_file());
    assert!(out.join("summary.json").is_file());
}

fn tiny_set() -> Arc<ImageSet> {
    Arc::new(builtin(20, 16, 3))
}

fn collect_epoch(loader: &mut Loader, epoch: usize) -> Vec<Vec<f32>> {
    loader.start_epoch(epoch);
    let mut out = Vec::new();
    while let Some(b) = loader.next_batch(Device::Cpu).unwrap() {
        assert_eq!(b.shape(), &[8, 3, 16, 16]);
        out.push(b.to_vec().unwrap());
    }
    out
}

#[test]
fn loader_is_deterministic_and_resumable() {
    let set = tiny_set();
    let aug = Augment {
        flip: true,
        rotate_deg: 5.0,
    };
    let mut a = Loader::new(set.clone(), 8, aug, 42);
    let mut b = Loader::new(set.clone(), 8, aug, 42);
    assert_eq!(
        a.batches_per_epoch(),
        2,
        "20 images, batch 8, last partial batch dropped"
    );
    let ea = collect_epoch(&mut a, 0);
    assert_eq!(ea.len(), 2);
    assert_eq!(ea, collect_epoch(&mut b, 0));
    assert_ne!(ea, collect_epoch(&mut b, 1), "each epoch reshuffles");
    assert_ne!(
        ea,
        collect_epoch(&mut Loader::new(set.clone(), 8, aug, 43), 0)
    );
    // Resuming at batch 1 of epoch 3 gives what running through epoch 3 gives.
    let e3 = collect_epoch(&mut a, 3);
    let mut r = Loader::new(set.clone(), 8, aug, 42);
    r.seek(3, 1);
    assert_eq!(
        r.next_batch(Device::Cpu)
            .unwrap()
            .unwrap()
            .to_vec()
            .unwrap(),
        e3[1]
    );
    assert!(r.next_batch(Device::Cpu).unwrap().is_none());
    for v in ea.iter().flatten() {
        assert!((-1.0..=1.0).contains(v));
    }
    // Shuffle covers distinct images within an epoch.
    let mut l = Loader::new(set.clone(), 8, Augment::NONE, 1);
    let p1 = l.next_plan().unwrap().unwrap();
    let p2 = l.next_plan().unwrap().unwrap();
    let mut all: Vec<usize> = p1.indices.iter().chain(&p2.indices).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 16);
    assert!(p1.flips.iter().all(|f| !f) && p1.angles_deg.iter().all(|&a| a == 0.0));
    // Batch larger than the set: a clear error, not an endless empty epoch.
    let err = Loader::new(set, 64, aug, 0)
        .next_batch(Device::Cpu)
        .unwrap_err();
    assert!(
        err.to_string().contains("fewer than the batch size"),
        "{err}"
    );
}

#[test]
fn augmentation_flips_and_rotates() {
    let set = tiny_set();
    let s = 16;
    let plane = s * s;
    let plain = assemble_batch(&set, &[0, 1], &[false, false], &[0.0, 0.0]);
    // Bytes map to [-1, 1].
    let img0 = set.image_u8(0);
    assert_eq!(plain[0], f32::from(img0[0]) / 127.5 - 1.0);
    assert_eq!(plain[plane + 5], f32::from(img0[5 * 3 + 1]) / 127.5 - 1.0);
    let flipped = assemble_batch(&set, &[0], &[true], &[0.0]);
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                assert_eq!(
                    flipped[c * plane + y * s + x],
                    plain[c * plane + y * s + (s - 1 - x)]
                );
            }
        }
    }
    // A quarter turn counter-clockwise: out(y, x) = in(x, s-1-y).
    let quarter = assemble_batch(&set, &[0], &[false], &[90.0]);
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                let want = plain[c * plane + x * s + (s - 1 - y)];
                assert!((quarter[c * plane + y * s + x] - want).abs() < 1e-4);
            }
        }
    }
    // A small rotation changes the image a little, and reflection fills the corners.
    let small = assemble_batch(&set, &[0], &[false], &[5.0]);
    let diff: f32 = small
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / small.len() as f32;
    assert!(diff > 0.005 && diff < 0.5, "mean change {diff}");
    assert!(small.iter().all(|v| (-1.0..=1.0).contains(v)));

    // The loader applies what its plan says, and both augmentations do happen.
    let mut l = Loader::new(
        set.clone(),
        8,
        Augment {
            flip: true,
            rotate_deg: 5.0,
        },
        9,
    );
    let mut flips = 0;
    let mut angles = Vec::new();
    while let Some(p) = l.next_plan().unwrap() {
        flips += p.flips.iter().filter(|&&f| f).count();
        angles.extend(p.angles_deg.iter().copied());
    }
    assert!(flips > 0 && flips < 16);
    assert!(angles.iter().all(|a| a.abs() <= 5.0) && angles.iter().any(|a| a.abs() > 0.5));
    l.seek(0, 0);
    let plan = l.next_plan().unwrap().unwrap();
    l.seek(0, 0);
    let batch = l
        .next_batch(Device::Cpu)
        .unwrap()
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(
        batch,
        assemble_batch(&set, &plan.indices, &plan.flips, &plan.angles_deg)
    );
    // --no-flip and --rotate resolve as documented.
    let a = AugmentArgs {
        no_flip: true,
        rotate: None,
    }
    .resolve(5.0)
    .unwrap();
    assert_eq!(
        a,
        Augment {
            flip: false,
            rotate_deg: 5.0
        }
    );
    assert!(AugmentArgs {
        no_flip: false,
        rotate: Some(-3.0)
    }
    .resolve(0.0)
    .is_err());
}

#[test]
fn builtin_is_deterministic_and_varied() {
    let a = builtin(12, 32, 7);
    let b = builtin(12, 32, 7);
    assert_eq!(a.pixels(), b.pixels());
    assert_eq!(a.len(), 12);
    assert_ne!(a.pixels(), builtin(12, 32, 8).pixels());
    for i in 0..a.len() {
        let img = a.image_u8(i);
        let mean = img.iter().map(|&v| f64::from(v)).sum::<f64>() / img.len() as f64;
        let var = img
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / img.len() as f64;
        assert!(
            var.sqrt() > 10.0,
            "image {i} is nearly flat (std {})",
            var.sqrt()
        );
        for j in 0..i {
            assert_ne!(img, a.image_u8(j), "images {i} and {j} are identical");
        }
    }
    // Structure: on average the top rows (sky) differ from the bottom rows (ground/sea).
    let rows = |img: &[u8], y0: usize, y1: usize| {
        img[y0 * 32 * 3..y1 * 32 * 3]
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / ((y1 - y0) * 32 * 3) as f64
    };
    let contrast: f64 = (0..a.len())
        .map(|i| (rows(a.image_u8(i), 0, 6) - rows(a.image_u8(i), 26, 32)).abs())
        .sum::<f64>()
        / a.len() as f64;
    assert!(contrast > 20.0, "top/bottom contrast {contrast}");
    // Without --data, load() uses it.
    let dir = tempfile::tempdir().unwrap();
    let set = load(
        &DataArgs {
            limit: Some(10),
            ..DataArgs::default()
        },
        16,
        7,
        dir.path(),
    )
    .unwrap();
    assert_eq!(set.len(), 10);
    assert_eq!(set.image_u8(3), builtin(10, 16, 7).image_u8(3));
}

#[test]
fn grid_png_matches_make_grid_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.png");
    let (n, s) = (6, 4);
    let mut imgs = vec![-1.0f32; n * 3 * s * s];
    // Image 1: all white; image 5 channel 0 = 0.0 (mid grey red).
    imgs[3 * s * s..6 * s * s].fill(1.0);
    imgs[5 * 3 * s * s..5 * 3 * s * s + s * s].fill(0.0);
    save_grid_png(&imgs, n, s, 4, &path).unwrap();
    let g = image::open(&path).unwrap().to_rgb8();
    assert_eq!(g.dimensions(), (4 * 6 + 2, 2 * 6 + 2));
    assert_eq!(g.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(
        g.get_pixel(2 + 6, 2).0,
        [255, 255, 255],
        "image 1 at column 1"
    );
    assert_eq!(
        g.get_pixel(2 + 6 - 1, 2).0,
        [0, 0, 0],
        "padding between images"
    );
    assert_eq!(
        g.get_pixel(2 + 6, 2 + 6).0,
        [128, 0, 0],
        "image 5 at row 1, column 1"
    );
    assert!(save_grid_png(&imgs[1..], n, s, 4, &path).is_err());
    // No temp files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn artist_keys_normalise_spelling() {
    assert_eq!(
        data::artist_key("Pierre-Auguste_Renoir"),
        "pierre auguste renoir"
    );
    assert_eq!(
        data::artist_key("Albrecht Du\u{308}rer"),
        data::artist_key("Albrecht Dürer")
    );
    assert_eq!(
        data::artist_key("  Vincent   van_Gogh "),
        "vincent van gogh"
    );
}
