//! Checkpoints: safetensors files with PyTorch `state_dict()` names (f32 tensors, int64
//! `num_batches_tracked`), plus the run's `config.json`. Every file is written atomically
//! (temp file in the same folder, fsync, rename), so a crash leaves the previous file or the new
//! one, never half of one (`crate::durable`).
//!
//! Here: state dicts and tensor files. `load.rs`: a run's `config.json` and the models
//! rebuilt from its weights. `manifest.rs`: manifests (writing and checking them). Where
//! the folders are, which one to use and writing a checkpoint folder whole: `crate::run_folder`
//! (which uses this module; this one uses none of it).

use crate::nn::{Discriminator, Generator, ModelConfig, Module, StateRef};
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs;
use std::path::Path;

mod load;
mod manifest;

pub use crate::durable::write_atomic;
pub use load::*;
pub use manifest::*;

pub const GENERATOR_FILE: &str = "generator.safetensors";
/// The exponential moving average of the generator's weights (used for sampling by default).
pub const GENERATOR_EMA_FILE: &str = "generator_ema.safetensors";
pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";
pub const CONFIG_FILE: &str = "config.json";

enum Owned {
    F32(Vec<usize>, Vec<u8>),
    I64(Vec<u8>),
}

/// The state dict of `module` as safetensors bytes, with `metadata` in the header.
pub fn state_dict_bytes(module: &dyn Module, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut entries: Vec<(String, StateRef)> = Vec::new();
    module.visit_state("", &mut |name, s| entries.push((name, s)));
    let mut owned: Vec<(String, Owned)> = Vec::with_capacity(entries.len());
    for (name, s) in entries {
        let o = match s {
            StateRef::Param(t) | StateRef::Buffer(t) => Owned::F32(
                t.shape().to_vec(),
                bytemuck::cast_slice::<f32, u8>(&t.to_vec()?).to_vec(),
            ),
            StateRef::Count(c) => Owned::I64(c.get().to_le_bytes().to_vec()),
        };
        owned.push((name, o));
    }
    let views = owned
        .iter()
        .map(|(name, o)| {
            let view = match o {
                Owned::F32(shape, bytes) => TensorView::new(Dtype::F32, shape.clone(), bytes),
                Owned::I64(bytes) => TensorView::new(Dtype::I64, Vec::new(), bytes),
            };
            Ok((name.clone(), view.context("building a safetensors view")?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, &Some(metadata))?)
}

/// Saves `module`'s state dict to `path` atomically.
pub fn save_state_dict(
    module: &dyn Module,
    path: &Path,
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_atomic(path, &state_dict_bytes(module, metadata)?)
}

/// Loads a state dict into `module` in place. Every tensor is checked (present, dtype, shape,
/// nothing extra) before any is written, so a bad file changes nothing. `what` describes the
/// expected model for error messages (e.g. "preset dcgan, nz 100, ngf 64, image size 64").
pub fn load_state_dict(module: &dyn Module, path: &Path, what: &str) -> Result<()> {
    let p = path.display();
    let bytes = fs::read(path).with_context(|| format!("cannot read checkpoint {p}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("checkpoint {p} is not a safetensors file ({e:?})"))?;
    let mut entries: Vec<(String, StateRef)> = Vec::new();
    module.visit_state("", &mut |name, s| entries.push((name, s)));
    let expected: std::collections::HashSet<&str> =
        entries.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(extra) = st
        .names()
        .into_iter()
        .find(|n| !expected.contains(n.as_str()))
    {
        bail!("checkpoint {p}: unexpected tensor {extra} (expected a model with {what})");
    }
    let mut staged: Vec<(&StateRef, Vec<u8>)> = Vec::new();
    for (name, s) in &entries {
        let view = st
            .tensor(name)
            .map_err(|_| anyhow::anyhow!("checkpoint {p}: tensor {name} is missing ({what})"))?;
        let want_shape = s.shape();
        if view.shape() != want_shape.as_slice() {
            bail!(
                "checkpoint {p}: tensor {name} has shape {:?}, expected {:?} ({what})",
                view.shape(),
                want_shape
            );
        }
        let want_dtype = match s {
            StateRef::Count(_) => Dtype::I64,
            _ => Dtype::F32,
        };
        if view.dtype() != want_dtype {
            bail!(
                "checkpoint {p}: tensor {name} has dtype {:?}, expected {want_dtype:?}",
                view.dtype()
            );
        }
        staged.push((s, view.data().to_vec()));
    }
    // Decoded and checked for NaN/Inf before anything is written (nothing non-finite is used).
    // (state, its f32 values when it is a tensor, its raw bytes)
    type Decoded<'a, 'm> = (&'a StateRef<'m>, Option<Vec<f32>>, Vec<u8>);
    let mut decoded: Vec<Decoded> = Vec::new();
    for ((name, _), (s, data)) in entries.iter().zip(staged) {
        if let StateRef::Param(_) | StateRef::Buffer(_) = s {
            // The bytes of a safetensors file need not be 4-aligned: decode explicitly.
            let values: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!(
                    "checkpoint {p}: tensor {name} holds a non-finite value ({} at index {i}): \
                     these weights come from a diverged or corrupted run",
                    values[i]
                );
            }
            // A variance below 0 makes batch norm's 1/sqrt(var + eps) NaN (or huge).
            if name.ends_with("running_var") {
                if let Some(i) = values.iter().position(|v| *v < 0.0) {
                    bail!(
                        "checkpoint {p}: tensor {name} holds a negative variance ({} at index \
                         {i}): these weights are corrupted or hand-edited",
                        values[i]
                    );
                }
            }
            decoded.push((s, Some(values), data));
        } else {
            decoded.push((s, None, data));
        }
    }
    for (s, values, data) in decoded {
        match s {
            StateRef::Param(t) | StateRef::Buffer(t) => {
                t.set_values(values.as_deref().unwrap_or_default())?;
            }
            StateRef::Count(c) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&data);
                c.set(i64::from_le_bytes(b));
            }
        }
    }
    Ok(())
}

/// A one-line description of a model configuration for error messages.
pub fn describe(c: &ModelConfig) -> String {
    format!(
        "preset {}, nz {}, ngf {}, ndf {}, image size {}",
        c.preset, c.nz, c.ngf, c.ndf, c.image_size
    )
}

/// Header metadata of model files. One key only: safetensors serialises the metadata map in
/// hash order, so more keys would make identical weights produce different bytes. The model
/// description lives in `config.json`.
pub fn model_metadata() -> HashMap<String, String> {
    // PyTorch's safetensors helpers expect this key.
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// Writes `generator.safetensors` and `discriminator.safetensors` into `dir`, with their
/// manifest.
pub fn save_models(dir: &Path, g: &Generator, d: &Discriminator) -> Result<()> {
    save_final_models(
        dir,
        &[
            (GENERATOR_FILE, state_dict_bytes(g, model_metadata())?),
            (DISCRIMINATOR_FILE, state_dict_bytes(d, model_metadata())?),
        ],
    )
}

/// The run id in `dir/config.json` (a run folder or one of its checkpoints): `None` for runs
/// from before run ids, or when unreadable (the config's own loading reports that).
pub fn run_id(dir: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        run_id: Option<String>,
    }
    let text = fs::read_to_string(dir.join(CONFIG_FILE)).ok()?;
    serde_json::from_str::<Id>(&text).ok()?.run_id
}

/// A new run's id: 64 random bits (std's per-process random hash keys, mixed with the time
/// and the process id), written into `config.json` and so into every checkpoint, so a
/// checkpoint of one run is never taken for another's.
pub fn new_run_id() -> String {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{h:016x}")
}

/// `tensors` (f32) as safetensors bytes.
pub fn tensors_bytes(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    let owned = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.to_string(),
                t.shape().to_vec(),
                bytemuck::cast_slice::<f32, u8>(&t.to_vec()?).to_vec(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let views = owned
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, &None)?)
}

/// Saves `tensors` (f32) to a safetensors file atomically (e.g. `latents.safetensors`).
pub fn save_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    write_atomic(path, &tensors_bytes(tensors)?)
}

/// A tensor read from a file: shape and values.
pub type HostTensor = (Vec<usize>, Vec<f32>);

/// Reads every f32 tensor of a safetensors file as `(shape, values)`.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let p = path.display();
    let bytes = fs::read(path).with_context(|| format!("cannot read {p}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{p} is not a safetensors file ({e:?})"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{p}: tensor {name} is {:?}, expected F32", view.dtype());
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{p}: tensor {name} holds a non-finite value ({} at index {i})",
                values[i]
            );
        }
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}
