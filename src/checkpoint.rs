//! Checkpoints: safetensors files with PyTorch `state_dict()` names (f32 tensors, int64
//! `num_batches_tracked`), plus the run's `config.json`. Every file is written atomically
//! (temp file in the same folder, fsync, rename), so a crash leaves the previous file or the new
//! one, never half of one.

use crate::backend::Device;
use crate::nn::{Discriminator, Generator, ModelConfig, Module, StateRef};
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const GENERATOR_FILE: &str = "generator.safetensors";
/// The exponential moving average of the generator's weights (used for sampling by default).
pub const GENERATOR_EMA_FILE: &str = "generator_ema.safetensors";
pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// Writes `bytes` to `path` atomically: `path.tmp` in the same folder, fsync, rename over
/// `path`, then fsync the folder so the rename itself survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = write_and_sync(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir);
    }
    Ok(())
}

/// Creates `path` with `bytes` and fsyncs it.
fn write_and_sync(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

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

/// Writes `generator.safetensors` and `discriminator.safetensors` into `dir`.
pub fn save_models(dir: &Path, g: &Generator, d: &Discriminator) -> Result<()> {
    save_state_dict(g, &dir.join(GENERATOR_FILE), model_metadata())?;
    save_state_dict(d, &dir.join(DISCRIMINATOR_FILE), model_metadata())
}

/// Writes a run's final model files (`files`: name and bytes) with a `manifest.json` (size and
/// CRC-32 of each) into `dir`. The old manifest goes first and the new one is written last,
/// each file atomically, so at every moment the folder holds either no manifest or one that
/// matches the files it lists: a crash in between leaves unverified files, never wrong ones
/// passed as checked.
pub fn save_final_models(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    remove_manifest(dir)?;
    let mut manifest = Vec::with_capacity(files.len());
    for (file, bytes) in files {
        write_atomic(&dir.join(file), bytes)?;
        manifest.push(ManifestEntry {
            file: file.to_string(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    write_atomic(
        &dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )
}

/// Removes `dir/manifest.json` (before the files it lists are removed or replaced).
pub fn remove_manifest(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Checks the weights in `dir` (a run folder or a checkpoint folder) against its
/// `manifest.json` where it has one (runs written before manifests existed have none).
pub fn verify_weights_dir(dir: &Path) -> Result<()> {
    if dir.join(MANIFEST_FILE).is_file() {
        verify_checkpoint(dir)?;
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `dir/config.json`, atomically.
pub fn save_config<T: serde::Serialize>(dir: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// The model configuration stored in a run folder's `config.json`.
pub fn load_model_config(run_dir: &Path) -> Result<ModelConfig> {
    let path = run_dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a training run folder (cannot read {})",
            run_dir.display(),
            path.display()
        )
    })?;
    let c: ModelConfig = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{}: not an artgan run configuration ({e})", path.display())
    })?;
    c.validate()
        .with_context(|| format!("{}: invalid configuration", path.display()))?;
    Ok(c)
}

/// The class table stored in a run's (or checkpoint's) `config.json`: `None` for an
/// unconditional run.
pub fn load_class_table(run_dir: &Path) -> Result<Option<crate::data::ClassTable>> {
    #[derive(serde::Deserialize)]
    struct Classes {
        #[serde(default)]
        class_table: Option<crate::data::ClassTable>,
    }
    let path = run_dir.join(CONFIG_FILE);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let c: Classes = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{}: not an artgan run configuration ({e})", path.display())
    })?;
    Ok(c.class_table)
}

fn class_count(run_dir: &Path) -> Result<usize> {
    Ok(load_class_table(run_dir)?.map_or(0, |t| t.len()))
}

/// Rebuilds the generator of a run folder and loads its weights.
pub fn load_generator(run_dir: &Path, device: Device) -> Result<Generator> {
    verify_weights_dir(run_dir)?;
    let c = load_model_config(run_dir)?;
    // Initial values are overwritten by the checkpoint; any seed will do.
    let g = Generator::conditional(&c, class_count(run_dir)?, &mut Rng::new(0), device)?;
    load_state_dict(&g, &run_dir.join(GENERATOR_FILE), &describe(&c))?;
    Ok(g)
}

/// The folder holding the weights to use for `path`: `path` itself when it holds
/// `generator.safetensors` (a finished run, or one checkpoint folder), else the newest complete
/// checkpoint under `path/checkpoints/` (a run that is still training or was stopped).
pub fn weights_dir(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        bail!(
            "{} is not a training run folder (no such folder)",
            path.display()
        );
    }
    if path.join(GENERATOR_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some((_, latest)) = latest_checkpoint(path)? {
        return Ok(latest);
    }
    bail!(
        "{} holds no trained generator: expected {} or a checkpoint under {}/checkpoints/",
        path.display(),
        GENERATOR_FILE,
        path.display()
    )
}

/// Rebuilds the generator to sample with from a run or checkpoint folder: its EMA weights when
/// `ema` and the run has them, else the raw ones. Returns the generator and whether it is the
/// EMA one.
pub fn load_sampling_generator(
    path: &Path,
    ema: bool,
    device: Device,
) -> Result<(Generator, bool)> {
    let dir = weights_dir(path)?;
    verify_weights_dir(&dir)?;
    let c = load_model_config(&dir)?;
    let g = Generator::conditional(&c, class_count(&dir)?, &mut Rng::new(0), device)?;
    let ema_path = dir.join(GENERATOR_EMA_FILE);
    let use_ema = ema && ema_path.is_file();
    let file = if use_ema {
        ema_path
    } else {
        dir.join(GENERATOR_FILE)
    };
    load_state_dict(&g, &file, &describe(&c))?;
    Ok((g, use_ema))
}

/// Rebuilds the discriminator of a run folder and loads its weights.
pub fn load_discriminator(run_dir: &Path, device: Device) -> Result<Discriminator> {
    verify_weights_dir(run_dir)?;
    let c = load_model_config(run_dir)?;
    let d = Discriminator::conditional(&c, class_count(run_dir)?, &mut Rng::new(0), device)?;
    load_state_dict(&d, &run_dir.join(DISCRIMINATOR_FILE), &describe(&c))?;
    Ok(d)
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

// ---------------------------------------------------------------------------------------------
// Checkpoint folders: `RUN/checkpoints/epoch-NNNN/`, each complete in itself.
//
// A checkpoint is written into `RUN/checkpoints/.partial-epoch-NNNN/`, every file fsynced, then a
// `manifest.json` (size and CRC-32 of every file) last, and only then is the folder renamed to
// its final name. A crash or `kill -9` at any moment leaves either no folder of that name or a
// complete one; a leftover `.partial-*` folder is ignored and removed by the next write. The
// manifest also catches a later corruption (a truncated copy, a bad disk): such a checkpoint is
// skipped with a warning and the next older one is used.

/// Folder of a run's checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestEntry {
    file: String,
    bytes: u64,
    crc32: u32,
}

/// The folder name of the checkpoint after `epoch`.
pub fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// The folder name of a mid-epoch checkpoint (an interrupted run): `epoch` epochs complete and
/// `batch` batches of the next one done, `epoch-NNNN+BBBBBB`.
pub fn mid_epoch_checkpoint_name(epoch: usize, batch: usize) -> String {
    if batch == 0 {
        checkpoint_name(epoch)
    } else {
        format!("epoch-{epoch:04}+{batch:06}")
    }
}

/// (epochs complete, batches of the next one done) of a checkpoint folder name.
fn parse_checkpoint_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("epoch-")?;
    match rest.split_once('+') {
        Some((e, b)) => Some((e.parse().ok()?, b.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

/// (epochs complete, batches of the next one done) of checkpoint folder `dir` (0, 0 when the
/// name is not a checkpoint's).
pub fn checkpoint_position(dir: &Path) -> (usize, usize) {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_checkpoint_name)
        .unwrap_or((0, 0))
}

/// Writes a checkpoint folder `RUN/checkpoints/epoch-NNNN` holding `files` (name, bytes)
/// atomically (see above) and returns its path. An existing checkpoint of that epoch is replaced.
pub fn write_checkpoint(
    run_dir: &Path,
    epoch: usize,
    files: &[(&str, Vec<u8>)],
) -> Result<PathBuf> {
    write_checkpoint_at(run_dir, epoch, 0, files)
}

/// [`write_checkpoint`] at a position inside an epoch: `batch` batches after epoch `epoch`
/// (see [`mid_epoch_checkpoint_name`]).
pub fn write_checkpoint_at(
    run_dir: &Path,
    epoch: usize,
    batch: usize,
    files: &[(&str, Vec<u8>)],
) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = mid_epoch_checkpoint_name(epoch, batch);
    let partial = root.join(format!(".partial-{name}"));
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove leftover {}", partial.display()))?;
    }
    fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut manifest = Vec::with_capacity(files.len());
    for (file, bytes) in files {
        write_synced(&partial.join(file), bytes)?;
        manifest.push(ManifestEntry {
            file: file.to_string(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    write_synced(
        &partial.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    sync_dir(&partial);
    let done = root.join(&name);
    if done.exists() {
        // Re-checkpointing an epoch (a resumed run that redoes it): the new one replaces it.
        fs::remove_dir_all(&done).with_context(|| format!("cannot replace {}", done.display()))?;
    }
    fs::rename(&partial, &done)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), done.display()))?;
    sync_dir(&root);
    Ok(done)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    write_and_sync(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn sync_dir(dir: &Path) {
    // Directory fsync is not supported everywhere; the files themselves are already synced.
    // Best effort, so a rename is durable where the platform allows.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Checks a checkpoint folder against its manifest: every file present with its size and CRC.
pub fn verify_checkpoint(dir: &Path) -> Result<()> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&mpath).with_context(|| {
        format!(
            "checkpoint {} has no readable {MANIFEST_FILE}",
            dir.display()
        )
    })?;
    let manifest: Vec<ManifestEntry> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a checkpoint manifest ({e})", mpath.display()))?;
    for m in &manifest {
        let p = dir.join(&m.file);
        let bytes = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if bytes.len() as u64 != m.bytes {
            bail!(
                "{} has {} bytes, its manifest says {}",
                p.display(),
                bytes.len(),
                m.bytes
            );
        }
        if crc32fast::hash(&bytes) != m.crc32 {
            bail!(
                "{} does not match the CRC-32 in its manifest (corrupted)",
                p.display()
            );
        }
    }
    Ok(())
}

/// The complete checkpoint folders of a run, newest first (by position: epoch, then batch
/// within the next epoch for a mid-epoch one), as (epochs complete, folder).
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&root).with_context(|| format!("cannot read {}", root.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        let name = entry.file_name();
        if let Some(pos) = name.to_str().and_then(parse_checkpoint_name) {
            if entry.path().is_dir() {
                out.push((pos, entry.path()));
            }
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out.into_iter().map(|((e, _), p)| (e, p)).collect())
}

/// The newest checkpoint of a run that passes [`verify_checkpoint`], as (epoch, folder); newer
/// ones that fail are reported on stderr and skipped.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    for (epoch, dir) in list_checkpoints(run_dir)? {
        match verify_checkpoint(&dir) {
            Ok(()) => return Ok(Some((epoch, dir))),
            Err(e) => eprintln!("warning: skipping checkpoint {}: {e:#}", dir.display()),
        }
    }
    Ok(None)
}

/// Deletes all but the newest `keep` checkpoints (by epoch) and any leftover `.partial-*`
/// folder; returns how many checkpoints were removed.
pub fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<usize> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let mut removed = 0;
    let all = list_checkpoints(run_dir)?;
    // A mid-epoch checkpoint is only a way back into an interrupted epoch: once a newer
    // checkpoint exists it has served, and it does not take one of the `keep` places.
    let newest = all.first().map(|(_, d)| checkpoint_position(d));
    let (mid, whole): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(_, d)| checkpoint_position(d).1 > 0);
    let stale_mid = mid
        .into_iter()
        .filter(|(_, d)| Some(checkpoint_position(d)) != newest);
    for (_, dir) in whole.into_iter().skip(keep).chain(stale_mid) {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        removed += 1;
    }
    if root.is_dir() {
        for entry in fs::read_dir(&root)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".partial-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(removed)
}
