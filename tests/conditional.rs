//! Conditional training: labels from the data, class-conditional G and projection
//! D for every preset, DiffAugment in the training step, the class table in config.json and
//! checkpoints, bit-identical resume, and the tools' --class / --per-class (CPU).

use artgan::amp::Numerics;
use artgan::backend::Device;
use artgan::checkpoint;
use artgan::data::{self, Augment, Condition, ConditionArgs, LabelSource, Loader};
use artgan::nn::{Ctx, Discriminator, Generator, Mode, ModelConfig, Module, Preset};
use artgan::ops::DiffAugment;
use artgan::rng::Rng;
use artgan::run_folder;
use artgan::tensor::Tensor;
use artgan::train::{self, RunOptions, TrainConfig};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{artgan, tiny_train};
use std::sync::Arc;

fn model(preset: Preset) -> ModelConfig {
    let mut m = ModelConfig::full(preset);
    m.image_size = 32;
    m.nz = 8;
    m.ngf = 4;
    m.ndf = 4;
    m
}

#[test]
fn unconditional_models_are_unchanged_and_conditional_ones_add_named_tables() {
    for preset in [Preset::Dcgan, Preset::Classical, Preset::DcganKaggle] {
        let m = model(preset);
        let g0 = Generator::new(&m, &mut Rng::new(1), Device::Cpu).unwrap();
        let gc = Generator::conditional(&m, 0, &mut Rng::new(1), Device::Cpu).unwrap();
        assert_eq!(g0.state_shapes(), gc.state_shapes());
        let g = Generator::conditional(&m, 5, &mut Rng::new(1), Device::Cpu).unwrap();
        let names: Vec<String> = g.state_shapes().into_iter().map(|(n, _)| n).collect();
        // Every hidden BN became class-conditional: [5, c] gain and bias tables, no weight.
        let first = if preset == Preset::Classical {
            "initial.1"
        } else {
            "main.1"
        };
        let shapes: std::collections::HashMap<_, _> = g.state_shapes().into_iter().collect();
        assert_eq!(shapes[&format!("{first}.gain.weight")][0], 5);
        assert_eq!(shapes[&format!("{first}.bias.weight")][0], 5);
        assert!(names.contains(&format!("{first}.running_mean")));
        assert!(!names.contains(&format!("{first}.weight")));

        let d0 = Discriminator::new(&m, &mut Rng::new(2), Device::Cpu).unwrap();
        let d = Discriminator::conditional(&m, 5, &mut Rng::new(2), Device::Cpu).unwrap();
        assert_eq!(d.classes(), 5);
        let mut extra: Vec<(String, Vec<usize>)> = d.state_shapes();
        extra.retain(|(n, _)| n.starts_with("embed."));
        let want: Vec<&str> = if preset == Preset::Classical {
            vec!["embed.weight_orig", "embed.weight_u", "embed.weight_v"]
        } else {
            vec!["embed.weight"]
        };
        assert_eq!(
            extra.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            want
        );
        // The shared layers start from the unconditional model's values (embedding drawn last).
        for ((n0, t0), (n1, t1)) in d0.parameters().iter().zip(d.parameters()) {
            assert_eq!(n0, &n1);
            assert_eq!(t0.to_vec().unwrap(), t1.to_vec().unwrap(), "{preset} {n0}");
        }
    }
}

#[test]
fn dcgan_kaggle_has_batch_norm_on_the_first_discriminator_layer() {
    let m = ModelConfig::full(Preset::DcganKaggle);
    assert_eq!((m.image_size, m.nz), (64, 128));
    let d = Discriminator::new(&m, &mut Rng::new(0), Device::Cpu).unwrap();
    let names: Vec<String> = d.state_shapes().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"main.1.weight".to_string()), "{names:?}");
    assert!(names.contains(&"main.1.running_var".to_string()));
    let plain = Discriminator::new(
        &ModelConfig::full(Preset::Dcgan),
        &mut Rng::new(0),
        Device::Cpu,
    )
    .unwrap();
    assert!(!plain
        .state_shapes()
        .iter()
        .any(|(n, _)| n == "main.1.running_var"));
}

#[test]
fn conditional_models_depend_on_the_label_and_need_one() {
    for preset in [Preset::Dcgan, Preset::Classical] {
        let m = model(preset);
        let g = Generator::conditional(&m, 3, &mut Rng::new(1), Device::Cpu).unwrap();
        let d = Discriminator::conditional(&m, 3, &mut Rng::new(2), Device::Cpu).unwrap();
        // Make the class tables differ clearly (init has them nearly equal).
        for (name, t) in g.parameters().into_iter().chain(d.parameters()) {
            if name.contains("gain") || name.contains("bias.weight") || name.starts_with("embed") {
                let v: Vec<f32> = (0..t.numel()).map(|i| (i as f32 * 0.37).sin()).collect();
                t.set_values(&v).unwrap();
            }
        }
        let z = Tensor::randn(&[2, 8, 1, 1], 0.0, 1.0, &mut Rng::new(3), Device::Cpu).unwrap();
        let mut rng = Rng::new(0);
        let err = g
            .forward(&z, &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("class label"), "{err:#}");
        let a = g
            .forward(
                &z,
                &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32).labeled(Some(&[0, 1])),
            )
            .unwrap()
            .to_vec()
            .unwrap();
        let b = g
            .forward(
                &z,
                &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32).labeled(Some(&[2, 1])),
            )
            .unwrap()
            .to_vec()
            .unwrap();
        let half = a.len() / 2;
        assert_ne!(
            a[..half],
            b[..half],
            "{preset}: class 0 and 2 paint the same"
        );
        assert_eq!(a[half..], b[half..], "{preset}: eval mode mixes images");
        // A fixed class stands in for missing labels (the tools' --class).
        g.fixed_class.set(Some(2));
        let c = g
            .forward(&z, &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32))
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(c[..half], b[..half]);
        let x = Tensor::from_vec(a.clone(), &[2, 3, 32, 32], Device::Cpu).unwrap();
        let l0 = d
            .forward(
                &x,
                &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32).labeled(Some(&[0, 0])),
            )
            .unwrap()
            .to_vec()
            .unwrap();
        let l1 = d
            .forward(
                &x,
                &mut Ctx::new(Mode::Eval, &mut rng, Numerics::FP32).labeled(Some(&[1, 0])),
            )
            .unwrap()
            .to_vec()
            .unwrap();
        assert_ne!(l0[0], l1[0]);
        assert_eq!(l0[1], l1[1]);
    }
}

/// A plain folder `<artist>_<title>.png` (popart layout): `counts[i]` images of artist i.
fn prefix_folder(dir: &Path, counts: &[usize]) {
    std::fs::create_dir_all(dir).unwrap();
    for (a, &n) in counts.iter().enumerate() {
        for i in 0..n {
            let img = image::RgbImage::from_fn(20, 16, |x, y| {
                image::Rgb([
                    (a * 80 % 256) as u8,
                    ((x * 7 + y * 3 + i as u32 * 11) % 256) as u8,
                    (255 - a * 60 % 256) as u8,
                ])
            });
            img.save(dir.join(format!("artist-{a}_title-{i}.png")))
                .unwrap();
        }
    }
}

fn condition(c: Condition, labels: LabelSource, min: usize) -> ConditionArgs {
    ConditionArgs {
        condition: c,
        labels,
        min_images: min,
    }
}

#[test]
fn labels_from_file_name_prefixes_drop_small_classes() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("art");
    prefix_folder(&imgs, &[6, 2, 5]);
    let args = data::DataArgs {
        data: Some(imgs.clone()),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let set = data::load(&args, 32, 0, dir.path()).unwrap();
    assert!(data::label_images(
        &set,
        true,
        &condition(Condition::None, LabelSource::Prefix, 8)
    )
    .unwrap()
    .is_none());
    let l = data::label_images(
        &set,
        true,
        &condition(Condition::Artist, LabelSource::Prefix, 3),
    )
    .unwrap()
    .unwrap();
    assert_eq!(l.table.names(), vec!["artist-0", "artist-2"]);
    assert_eq!(
        l.table.classes.iter().map(|c| c.images).collect::<Vec<_>>(),
        vec![6, 5]
    );
    assert_eq!(l.table.dropped.len(), 1);
    assert_eq!(l.table.dropped[0].name, "artist-1");
    assert_eq!(l.keep.len(), 11);
    for (&i, &lab) in l.keep.iter().zip(&l.labels) {
        let want = if set.meta[i].path.starts_with("artist-0") {
            0
        } else {
            1
        };
        assert_eq!(lab, want, "{}", set.meta[i].path);
    }
    assert_eq!(l.table.find("Artist 2").unwrap(), 1);
    let err = l.table.find("monet").unwrap_err().to_string();
    assert!(
        err.contains("unknown artist 'monet'") && err.contains("artist-0, artist-2"),
        "{err}"
    );
    // Files not in sub-folders: the subfolder rule finds no class and says what to do.
    let err = data::label_images(
        &set,
        true,
        &condition(Condition::Artist, LabelSource::Subfolder, 1),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--labels prefix"), "{err}");
    let err = data::label_images(
        &set,
        true,
        &condition(Condition::Genre, LabelSource::Prefix, 1),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("artists.csv"), "{err}");
    let err = data::label_images(
        &set,
        true,
        &condition(Condition::Artist, LabelSource::Prefix, 50),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--min-images 50"), "{err}");
}

fn tiny_config(preset: Preset) -> TrainConfig {
    let mut cfg = TrainConfig::for_model(model(preset));
    cfg.epochs = 3;
    cfg.batch_size = 8;
    cfg.seed = 4;
    cfg.d_steps = 2;
    cfg.checkpoint_every = 1;
    cfg.ema = true;
    cfg.augment = Augment {
        flip: true,
        rotate_deg: 0.0,
    };
    cfg.condition = condition(Condition::Artist, LabelSource::Subfolder, 1);
    cfg.class_table = Some(data::ClassTable {
        condition: Condition::Artist,
        classes: (0..3)
            .map(|i| data::ClassEntry {
                index: i,
                name: format!("painter {i}"),
                images: 8,
            })
            .collect(),
        dropped: Vec::new(),
    });
    cfg.diffaugment = DiffAugment::parse("color,translation,cutout").unwrap();
    cfg
}

fn labelled_loader(cfg: &TrainConfig) -> Loader {
    let set = Arc::new(data::builtin(24, 32, 9));
    let labels = (0..24u32).map(|i| i % 3).collect();
    Loader::new(set, cfg.batch_size, cfg.augment, cfg.seed)
        .with_labels(labels)
        .unwrap()
}

fn run(cfg: &TrainConfig, out: &Path, resume: Option<PathBuf>, stop: Option<usize>) {
    std::fs::create_dir_all(out).unwrap();
    let mut opts = RunOptions::new(out.to_path_buf(), Device::Cpu);
    opts.resume_from = resume;
    opts.stop_after_epoch = stop;
    train::train(cfg.clone(), &mut labelled_loader(cfg), &mut opts).unwrap();
}

#[test]
fn conditional_diffaugment_runs_resume_bit_identically() {
    for preset in [Preset::Dcgan, Preset::Classical] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny_config(preset);
        let straight = dir.path().join("straight");
        run(&cfg, &straight, None, None);
        let split = dir.path().join("split");
        run(&cfg, &split, None, Some(1));
        let (_, latest) = run_folder::latest_checkpoint(&split).unwrap().unwrap();
        run(&cfg, &split, Some(latest), None);
        for f in [
            checkpoint::GENERATOR_FILE,
            checkpoint::GENERATOR_EMA_FILE,
            checkpoint::DISCRIMINATOR_FILE,
        ] {
            assert!(
                std::fs::read(straight.join(f)).unwrap() == std::fs::read(split.join(f)).unwrap(),
                "{preset}: {f} differs after resume"
            );
        }
        // The class table is in config.json and in every checkpoint's copy.
        let table = checkpoint::load_class_table(&straight).unwrap().unwrap();
        assert_eq!(table.len(), 3);
        let ck = straight.join("checkpoints/epoch-0003");
        assert_eq!(checkpoint::load_class_table(&ck).unwrap().unwrap(), table);
        let text = std::fs::read_to_string(straight.join("config.json")).unwrap();
        assert!(
            text.contains("\"diffaugment\"") && text.contains("\"min_images\": 1"),
            "{text}"
        );
        // The per-class grid: one row of 8 per class.
        let grid = image::open(straight.join("samples/classes-epoch-0003.png")).unwrap();
        let plain = image::open(straight.join("samples/epoch-0003.png")).unwrap();
        assert_eq!(grid.width(), plain.width());
        assert!(grid.height() * 8 > plain.height() * 3 - 8 * 8 && grid.height() < plain.height());
        // The run report shows them, with the class names.
        let html = std::fs::read_to_string(straight.join("index.html")).unwrap();
        assert!(
            html.contains("samples/classes-epoch-0003.png") && html.contains("painter 2"),
            "index.html lacks the per-class grid"
        );
        // The trained generator loads back as a conditional one.
        let g = checkpoint::load_generator(&straight, Device::Cpu).unwrap();
        assert_eq!(g.classes, 3);
        let d = checkpoint::load_discriminator(&straight, Device::Cpu).unwrap();
        assert_eq!(d.classes(), 3);
    }
}

#[test]
fn diffaugment_changes_training_and_unconditional_config_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(Preset::Dcgan);
    cfg.epochs = 1;
    cfg.condition = ConditionArgs {
        min_images: 8,
        ..Default::default()
    };
    cfg.class_table = None;
    let mut plain = cfg.clone();
    plain.diffaugment = DiffAugment::default();
    let set = || Arc::new(data::builtin(24, 32, 9));
    let mut outs = Vec::new();
    for (name, c) in [("aug", &cfg), ("plain", &plain)] {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let mut opts = RunOptions::new(out.clone(), Device::Cpu);
        let mut l = Loader::new(set(), c.batch_size, c.augment, c.seed);
        train::train(c.clone(), &mut l, &mut opts).unwrap();
        outs.push(out);
    }
    let g = |o: &PathBuf| std::fs::read(o.join(checkpoint::GENERATOR_FILE)).unwrap();
    assert_ne!(g(&outs[0]), g(&outs[1]));
    let text = std::fs::read_to_string(outs[1].join("config.json")).unwrap();
    for key in ["condition", "class_table", "diffaugment"] {
        assert!(
            !text.contains(key),
            "unconditional config.json mentions {key}: {text}"
        );
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert!(e.starts_with("error: ") && e.lines().count() == 1, "{e}");
    e
}

#[test]
fn cli_conditional_train_sample_interpolate_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prefix_folder(&p.join("art"), &[9, 9, 3]);
    let out = ok(&artgan(
        &tiny_train(&[
            "--data",
            "art",
            "--condition",
            "artist",
            "--labels",
            "prefix",
            "--batch-size",
            "6",
            "--epochs",
            "1",
            "--diffaugment",
            "color,cutout",
            "--out",
            "run",
            "--quiet",
        ]),
        p,
    ));
    let _ = out;
    let table = checkpoint::load_class_table(&p.join("run"))
        .unwrap()
        .unwrap();
    assert_eq!(table.names(), vec!["artist-0", "artist-1"]);
    assert_eq!(table.dropped[0].name, "artist-2");
    // One row per class in the grid, the same latents in each row.
    ok(&artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--per-class",
            "3",
            "--grid",
            "--out",
            "s",
        ],
        p,
    ));
    let grid = image::open(p.join("s/grid.png")).unwrap();
    assert!(grid.width() > grid.height(), "3 per row, 2 rows");
    assert!(p.join("s/sample-0005.png").is_file() && !p.join("s/sample-0006.png").exists());
    ok(&artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--class",
            "Artist 1",
            "--count",
            "2",
            "--out",
            "one",
        ],
        p,
    ));
    assert!(p.join("one/sample-0001.png").is_file());
    let e = one_line_error(&artgan(
        &[
            "sample",
            "--checkpoint",
            "run",
            "--class",
            "monet",
            "--out",
            "x",
        ],
        p,
    ));
    assert!(
        e.contains("unknown artist 'monet'") && e.contains("artist-0, artist-1"),
        "{e}"
    );
    ok(&artgan(
        &[
            "interpolate",
            "--checkpoint",
            "run",
            "--per-class",
            "2",
            "--steps",
            "2",
            "--out",
            "walk",
        ],
        p,
    ));
    assert!(
        p.join("walk/00-artist-0/grid.png").is_file()
            && p.join("walk/01-artist-1/grid.png").is_file()
    );
    let e = one_line_error(&artgan(
        &["interpolate", "--checkpoint", "run", "--out", "w2"],
        p,
    ));
    assert!(e.contains("--class NAME"), "{e}");
    let text = ok(&artgan(
        &[
            "evaluate",
            "--checkpoint",
            "run",
            "--data",
            "art",
            "--count",
            "16",
            "--eval-min-images",
            "9",
        ],
        p,
    ));
    assert!(
        text.contains("class artist-0") && text.contains("real floor"),
        "{text}"
    );
    // Each class's images are also measured against the other classes' reals.
    assert!(text.contains("other classes"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.join("run/evaluate.json")).unwrap()).unwrap();
    let classes = json["per_class"].as_array().unwrap();
    assert_eq!(classes.len(), 2, "{json}");
    for c in classes {
        let (own, other) = (
            c["swd"]["mean"].as_f64().unwrap(),
            c["swd_other_classes"].as_f64(),
        );
        let other = other.unwrap_or_else(|| panic!("no other-class SWD: {c}"));
        assert!(other.is_finite() && other > 0.0, "{c}");
        let below = c["own_below_others_percent"].as_f64().unwrap();
        assert!((below - 100.0 * (other - own) / other).abs() < 1e-3, "{c}");
    }
}

#[test]
fn kaggle_layout_labels_by_artist_and_first_genre() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("best-artworks");
    let rs = root.join("resized/resized");
    std::fs::create_dir_all(&rs).unwrap();
    std::fs::write(
        root.join("artists.csv"),
        "id,name,years,genre,nationality,bio,wikipedia,paintings\n\
         0,Frida Kahlo,1907 – 1954,\"Primitivism,Surrealism\",Mexican,\"a, b\",http://x,3\n\
         1,Claude Monet,1840 – 1926,Impressionism,French,c,http://x,2\n\
         2,Pierre-Auguste Renoir,1841 – 1919,Impressionism,French,d,http://x,2\n",
    )
    .unwrap();
    let img = image::RgbImage::from_fn(20, 20, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, 77]));
    for (name, n) in [
        ("Frida_Kahlo", 3),
        ("Claude_Monet", 2),
        ("Pierre-Auguste_Renoir", 2),
        ("Unknown_Painter", 1),
    ] {
        for i in 1..=n {
            img.save(rs.join(format!("{name}_{i}.png"))).unwrap();
        }
    }
    let args = data::DataArgs {
        data: Some(root.clone()),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let set = data::load(&args, 32, 0, dir.path()).unwrap();
    let by_artist = data::label_images(
        &set,
        true,
        &condition(Condition::Artist, LabelSource::Prefix, 1),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        by_artist.table.names(),
        vec!["Claude Monet", "Frida Kahlo", "Pierre-Auguste Renoir"]
    );
    assert_eq!(by_artist.unlabelled, 1);
    assert_eq!(by_artist.keep.len(), 7);
    // A painter with several genres takes the first one listed.
    let by_genre = data::label_images(
        &set,
        true,
        &condition(Condition::Genre, LabelSource::Subfolder, 1),
    )
    .unwrap()
    .unwrap();
    assert_eq!(by_genre.table.names(), vec!["Impressionism", "Primitivism"]);
    assert_eq!(
        by_genre
            .table
            .classes
            .iter()
            .map(|c| c.images)
            .collect::<Vec<_>>(),
        vec![4, 3]
    );
    assert_eq!(by_genre.table.find("impressionism").unwrap(), 0);
    let err = by_genre.table.find("Surrealism").unwrap_err().to_string();
    assert!(err.contains("unknown genre 'Surrealism'"), "{err}");
}
