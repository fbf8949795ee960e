//! `--class-lr-scale`: in a conditional run G's class parameters (each class's batch-norm
//! gains and biases) learn at a multiple of G's lr, in their own Adam group per stage.

use artgan::backend::Device;
use artgan::data::{ClassEntry, ClassTable, Condition, ConditionArgs, LabelSource};
use artgan::nn::{is_class_parameter, ModelConfig, Module, Preset};
use artgan::tensor::Tensor;
use artgan::train::{TrainConfig, Trainer};

mod common;
use common::{artgan, assert_one_line_error};

fn conditional(preset: Preset, scale: f32) -> TrainConfig {
    let mut cfg = TrainConfig::for_model(ModelConfig {
        preset,
        image_size: 32,
        nz: 16,
        ngf: 8,
        ndf: 8,
    });
    cfg.batch_size = 8;
    cfg.seed = 3;
    cfg.class_lr_scale = scale;
    cfg.condition = ConditionArgs {
        condition: Condition::Artist,
        labels: LabelSource::Subfolder,
        min_images: 1,
    };
    cfg.class_table = Some(ClassTable {
        condition: Condition::Artist,
        classes: (0..3)
            .map(|i| ClassEntry {
                index: i,
                name: format!("painter {i}"),
                images: 8,
            })
            .collect(),
        dropped: Vec::new(),
    });
    cfg
}

fn groups(t: &Trainer) -> Vec<(String, f32, usize)> {
    let g = &t.opt_g.groups;
    g.iter()
        .map(|g| (g.name.clone(), g.lr, g.params.len()))
        .collect()
}

#[test]
fn class_parameters_get_their_own_group_at_the_scaled_lr() {
    // dcgan: G's three hidden conditional batch norms, a gain and a bias table each.
    let t = Trainer::new(conditional(Preset::Dcgan, 10.0), Device::Cpu).unwrap();
    let lr = t.cfg.lr_g;
    assert_eq!(
        groups(&t),
        vec![
            ("main".into(), lr, 4),
            ("main/classes".into(), 10.0 * lr, 6)
        ]
    );
    for p in &t.opt_g.groups[1].params {
        assert!(is_class_parameter(&p.name), "{}", p.name);
        assert_eq!(p.param.shape()[0], 3, "{}: not a per-class table", p.name);
    }
    // Every class table of G is in that group, and nothing else.
    let tables =
        t.g.parameters()
            .iter()
            .filter(|(n, _)| is_class_parameter(n))
            .count();
    assert_eq!(tables, 6);

    // classical: each stage's class parameters at that stage's lr × 10.
    let t = Trainer::new(conditional(Preset::Classical, 10.0), Device::Cpu).unwrap();
    let (lr, detail) = (t.cfg.lr_g, t.cfg.lr_g_detail);
    let names: Vec<(String, f32)> = groups(&t).into_iter().map(|(n, l, _)| (n, l)).collect();
    assert_eq!(
        names,
        vec![
            ("initial".into(), lr),
            ("initial/classes".into(), 10.0 * lr),
            ("detail".into(), detail),
            ("detail/classes".into(), 10.0 * detail),
        ]
    );

    // Scale 1 (runs written before the flag) and unconditional runs: one group per stage, as
    // before.
    let t = Trainer::new(conditional(Preset::Dcgan, 1.0), Device::Cpu).unwrap();
    assert_eq!(groups(&t), vec![("main".into(), lr, 10)]);
    let mut plain = conditional(Preset::Dcgan, 10.0);
    plain.condition = ConditionArgs::default();
    plain.class_table = None;
    let t = Trainer::new(plain, Device::Cpu).unwrap();
    // (Plain batch norms: a weight and a bias each.)
    assert_eq!(groups(&t), vec![("main".into(), lr, 10)]);
}

/// The class tables of G, flattened.
fn class_values(t: &Trainer) -> Vec<f32> {
    t.g.parameters()
        .iter()
        .filter(|(n, _)| is_class_parameter(n))
        .flat_map(|(_, p)| p.to_vec().unwrap())
        .collect()
}

fn largest_move(before: &[f32], after: &[f32]) -> f32 {
    before
        .iter()
        .zip(after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Adam moves a parameter by about lr a step: in three steps the class tables move up to about
/// 3 lr at scale 1, and about ten times that at scale 10 (the dynamic-lr rule, on for classical,
/// keeps the ratio).
#[test]
fn class_parameters_move_ten_times_as_far_per_step() {
    for preset in [Preset::Dcgan, Preset::Classical] {
        let mut moved = Vec::new();
        for scale in [1.0, 10.0] {
            let mut cfg = conditional(preset, scale);
            cfg.d_steps = 1;
            let mut t = Trainer::new(cfg, Device::Cpu).unwrap();
            let before = class_values(&t);
            let mut rng = artgan::rng::Rng::new(9);
            for _ in 0..3 {
                let real = rng.uniform_vec(8 * 3 * 32 * 32, -1.0, 1.0);
                let real = Tensor::from_vec(real, &[8, 3, 32, 32], Device::Cpu).unwrap();
                t.step_labeled(&real, Some(&[0, 1, 2, 0, 1, 2, 0, 1]))
                    .unwrap();
            }
            moved.push(largest_move(&before, &class_values(&t)));
        }
        let lr = conditional(preset, 1.0).lr_g;
        println!("{preset}: class tables moved {moved:?} in 3 steps (lr {lr})");
        assert!(moved[0] <= 3.0 * lr * 1.5, "{preset}: {moved:?}");
        assert!(moved[1] >= 3.0 * lr * 5.0, "{preset}: {moved:?}");
    }
}

#[test]
fn a_config_written_before_the_scale_reads_one() {
    let cfg = conditional(Preset::Dcgan, 10.0);
    let mut json: serde_json::Value = serde_json::to_value(&cfg).unwrap();
    assert_eq!(json["class_lr_scale"], 10.0);
    json.as_object_mut().unwrap().remove("class_lr_scale");
    let old: TrainConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.class_lr_scale, 1.0);
}

#[test]
fn cli_class_lr_scale_must_be_positive_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..4 {
            common::noise_rgb(
                40,
                40,
                i + 10 * class.len() as u32 + class.as_bytes()[0] as u32,
            )
            .save(data.join(class).join(format!("{i}.png")))
            .unwrap();
        }
    }
    let data = data.to_str().unwrap();
    let run = |scale: &str, out: &str| {
        let args = common::tiny_train(&[
            "--data",
            data,
            "--condition",
            "artist",
            "--labels",
            "subfolder",
            "--min-images",
            "1",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--class-lr-scale",
            scale,
            "--out",
            out,
        ]);
        artgan(&args, dir.path())
    };
    assert_one_line_error(
        &run("0", "zero"),
        "--class-lr-scale must be a positive number, got 0",
    );
    assert!(!dir.path().join("zero").exists());
    let o = run("3", "three");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = artgan::train::load_config(&dir.path().join("three")).unwrap();
    assert_eq!(cfg.class_lr_scale, 3.0);
}
