//! The trace the PyTorch twin of `--preset lightweight` replays (`artgan::train::twin_trace`,
//! `cargo bench --bench twin_trace`; the replay itself needs PyTorch and is run by hand:
//! `scripts/twin-check`): the files and their shapes, the state dicts loading into the
//! preset's models, the recorded draws being the ones the trainer's streams gave, and two runs
//! writing the same bytes.

use artgan::checkpoint::{load_state_dict, load_tensors, HostTensor};
use artgan::nn::{Module, StateRef};
use artgan::ops::diffaug_params;
use artgan::rng::Rng;
use artgan::train::build_models;
use artgan::train::twin_trace::{twin_config, write_twin_trace, DIFF_AUGMENT_CALLS};
use artgan::Device;
use std::collections::HashMap;
use std::path::Path;

const FILES: [&str; 6] = [
    "twin.json",
    "generator_init.safetensors",
    "discriminator_init.safetensors",
    "generator_final.safetensors",
    "discriminator_final.safetensors",
    "trace.safetensors",
];

/// Every f32 value of a module's state, by name (counts as f32).
fn state_values(m: &dyn Module) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    m.visit_state("", &mut |name, s| {
        let v = match s {
            StateRef::Param(t) | StateRef::Buffer(t) => t.to_vec().unwrap(),
            StateRef::Count(c) => vec![c.get() as f32],
        };
        out.insert(name, v);
    });
    out
}

fn trace(dir: &Path) -> HashMap<String, HostTensor> {
    load_tensors(&dir.join("trace.safetensors")).unwrap()
}

#[test]
fn the_twin_trace_holds_each_steps_inputs_as_the_trainer_drew_them() {
    let dir = tempfile::tempdir().unwrap();
    let (steps, seed) = (2, 5);
    let cfg = twin_config(seed);
    let (b, s, nz, k) = (
        cfg.batch_size,
        cfg.model.image_size,
        cfg.model.nz,
        DIFF_AUGMENT_CALLS,
    );
    write_twin_trace(dir.path(), cfg.clone(), steps).unwrap();
    for f in FILES {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let recipe: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("twin.json")).unwrap()).unwrap();
    assert_eq!(recipe["preset"], "lightweight");
    assert_eq!(recipe["loss"], "hinge");
    assert_eq!(recipe["diffaugment"], "color,translation,cutout");
    assert_eq!(recipe["steps"], steps);

    let t = trace(dir.path());
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("real", vec![steps, b, 3, s, s]),
        ("z", vec![steps, b, nz]),
        ("color", vec![steps, k, b, 3]),
        ("shifts", vec![steps, k, b, 2]),
        ("boxes", vec![steps, k, b, 4]),
        ("quarter", vec![steps]),
        ("loss_d", vec![steps]),
        ("loss_g", vec![steps]),
        ("reconstruction", vec![steps]),
    ];
    assert_eq!(t.len(), shapes.len(), "{:?}", t.keys());
    for (name, shape) in &shapes {
        assert_eq!(&t[*name].0, shape, "{name}");
    }
    assert!(t["real"].1.iter().all(|v| (-1.0..=1.0).contains(v)));
    // D's loss on real images includes the reconstruction loss; the hinge terms are >= 0.
    for i in 0..steps {
        let (rec, loss_d) = (t["reconstruction"].1[i], t["loss_d"].1[i]);
        assert!(rec > 0.0 && rec <= loss_d, "step {i}: {rec} {loss_d}");
    }

    // The draws are those of the run's streams, in the trainer's order: per step the latents,
    // then from the regularizer stream D's real batch's DiffAugment, the quarter, D's fake
    // batch's and G's fake batch's DiffAugment.
    let mut latents = Rng::derive(seed, "latents");
    let mut regularizers = Rng::derive(seed, "regularizers");
    for i in 0..steps {
        let z = latents.normal_vec(b * nz, 0.0, 1.0);
        assert_eq!(
            z,
            t["z"].1[i * b * nz..(i + 1) * b * nz],
            "step {i}: latents"
        );
        let mut seeds = [0u64; 4];
        seeds.iter_mut().for_each(|x| *x = regularizers.next_u64());
        let quarter = (seeds[1] % 4) as f32;
        assert_eq!(t["quarter"].1[i], quarter, "step {i}: quarter");
        for (call, seed) in [seeds[0], seeds[2], seeds[3]].into_iter().enumerate() {
            let p = diffaug_params(seed, 0, b, s, s);
            let at = |n: usize| (i * k + call) * b * n..(i * k + call + 1) * b * n;
            assert_eq!(p.color, t["color"].1[at(3)], "step {i} call {call}");
            let ints = |v: &[f32]| v.iter().map(|&x| x as i32).collect::<Vec<_>>();
            assert_eq!(
                p.shifts,
                ints(&t["shifts"].1[at(2)]),
                "step {i} call {call}"
            );
            assert_eq!(p.boxes, ints(&t["boxes"].1[at(4)]), "step {i} call {call}");
        }
    }

    // The initial state dicts are the seed's models (every name, shape and value); the final
    // ones load into the same models and differ from them.
    let (g0, d0) = build_models(&cfg.model, seed, Device::Cpu).unwrap();
    let (g, d) = build_models(&cfg.model, seed + 1, Device::Cpu).unwrap();
    let what = "the twin's lightweight models";
    load_state_dict(&g, &dir.path().join("generator_init.safetensors"), what).unwrap();
    load_state_dict(&d, &dir.path().join("discriminator_init.safetensors"), what).unwrap();
    assert!(state_values(&g) == state_values(&g0));
    assert!(state_values(&d) == state_values(&d0));
    load_state_dict(&g, &dir.path().join("generator_final.safetensors"), what).unwrap();
    load_state_dict(
        &d,
        &dir.path().join("discriminator_final.safetensors"),
        what,
    )
    .unwrap();
    let trained = state_values(&d);
    assert_ne!(
        trained["rf_big.3.weight_orig"],
        state_values(&d0)["rf_big.3.weight_orig"]
    );
    // Three D forwards a step in training mode: batch norm counts each.
    assert_eq!(
        trained["down_8.1.num_batches_tracked"],
        [3.0 * steps as f32]
    );
}

#[test]
fn two_twin_traces_of_the_same_run_are_the_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&a, &b] {
        write_twin_trace(dir.path(), twin_config(1), 2).unwrap();
    }
    for f in FILES {
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(f)).unwrap();
        assert!(read(&a) == read(&b), "{f} differs between two runs");
    }
}

#[test]
fn the_twin_trace_refuses_a_run_it_cannot_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = twin_config(0);
    cfg.d_steps = 2;
    let err = write_twin_trace(dir.path(), cfg, 1)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the twin trace is of --preset lightweight with d_steps 1 and no EMA"
    );
}
