//! What a run folder holds: its `config.json` (model configuration and class table) and the
//! models rebuilt from its weights (which folder's weights a command uses:
//! `crate::run_folder::weights_dir`).

use super::*;
use crate::backend::Device;
use crate::nn::{Discriminator, Generator, ModelConfig};
use crate::rng::Rng;
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;

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

/// Rebuilds the generator of a run folder and loads its (verified) weights.
pub fn load_generator(run_dir: &Path, device: Device) -> Result<Generator> {
    verify_weights_dir(run_dir)?;
    let c = load_model_config(run_dir)?;
    // Initial values are overwritten by the checkpoint; any seed will do.
    let g = Generator::conditional(&c, class_count(run_dir)?, &mut Rng::new(0), device)?;
    load_state_dict(&g, &run_dir.join(GENERATOR_FILE), &describe(&c))?;
    Ok(g)
}

/// Rebuilds the generator to sample with from the (verified) weights in `dir`: its EMA
/// weights when `ema` and the run has them, else the raw ones. Returns the generator and
/// whether it is the EMA one.
pub fn load_generator_for_sampling(
    dir: &Path,
    ema: bool,
    device: Device,
) -> Result<(Generator, bool)> {
    let c = load_model_config(dir)?;
    let g = Generator::conditional(&c, class_count(dir)?, &mut Rng::new(0), device)?;
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

/// Rebuilds the discriminator of a run folder and loads its (verified) weights.
pub fn load_discriminator(run_dir: &Path, device: Device) -> Result<Discriminator> {
    verify_weights_dir(run_dir)?;
    let c = load_model_config(run_dir)?;
    let d = Discriminator::conditional(&c, class_count(run_dir)?, &mut Rng::new(0), device)?;
    load_state_dict(&d, &run_dir.join(DISCRIMINATOR_FILE), &describe(&c))?;
    Ok(d)
}
