//! Size limits checked from the flags before anything is allocated or created: the memory a
//! command will need (models, data, evaluation images) against the machine's (or the GPU's)
//! total memory, and the disk its images will take against the free space. An absurd flag
//! (`--ngf 1000000`, `--count 100000000000`) is then a one-line error naming it, not an
//! allocation abort, a "capacity overflow" panic or a folder left behind.
//!
//! Every estimate is in u128 with checked arithmetic: `None` means it overflowed, which is
//! "too large" whatever the machine.

use crate::backend::Device;
use crate::nn::ModelConfig;
use anyhow::{bail, Result};
use std::path::Path;

/// A byte count, or `None` when computing it overflowed (more than any machine has).
pub type Bytes = Option<u128>;

/// The product of `parts`, `None` on overflow.
pub fn product(parts: &[usize]) -> Bytes {
    parts
        .iter()
        .try_fold(1u128, |acc, &p| acc.checked_mul(p as u128))
}

/// The sum of `parts`, `None` if any is `None` or the sum overflows.
pub fn sum(parts: &[Bytes]) -> Bytes {
    parts.iter().try_fold(0u128, |acc, &p| acc.checked_add(p?))
}

// The estimates count what must be there, not every temporary, so that a size they refuse
// cannot run at all; near the limit the run-time out-of-memory advice (train/stops.rs) takes
// over.
/// Bytes of f32 per trained parameter: the weight, its gradient and Adam's two moments.
const TRAIN_BYTES_PER_PARAM: usize = 4 * 4;
/// Bytes per activation element in a training step: the f32 outputs kept for the backward
/// pass (conv, batch norm and activation fused) and their gradients.
const TRAIN_BYTES_PER_ACTIVATION: usize = 4 * 3;

/// Parameters and activation elements (per image) of the generator and discriminator.
fn model_counts(m: &ModelConfig, classes: usize) -> (Bytes, Bytes) {
    let k = 16; // 4×4 kernels everywhere
    let s = m.image_size;
    let n = s.trailing_zeros().saturating_sub(2) as usize;
    // Widths computed without shifting (a shift of a huge --ngf wraps silently).
    let g: Vec<Bytes> = (0..n)
        .map(|i| product(&[m.ngf, 1 << (n - 1 - i)]))
        .collect();
    let d: Vec<Bytes> = (0..n).map(|i| product(&[m.ndf, 1 << i])).collect();
    let mut params = Vec::new();
    let mut acts = vec![product(&[m.nz]), product(&[3, s, s]), product(&[3, s, s])];
    let mul = |a: Bytes, b: Bytes| a?.checked_mul(b?);
    let cl = Some(classes as u128 + 1);
    for (i, &w) in g.iter().enumerate() {
        let side = product(&[4 << i, 4 << i]);
        let fan_in = if i == 0 { product(&[m.nz]) } else { g[i - 1] };
        params.push(mul(mul(fan_in, w), Some(k as u128)));
        params.push(mul(w, mul(cl, Some(4)))); // (conditional) batch norm
        acts.push(mul(w, side));
    }
    params.push(mul(
        g.last().copied().flatten().map(|w| w * 3),
        Some(k as u128),
    ));
    for (i, &w) in d.iter().enumerate() {
        let side = product(&[s >> (i + 1), s >> (i + 1)]);
        let fan_in = if i == 0 { Some(3) } else { d[i - 1] };
        params.push(mul(mul(fan_in, w), Some(k as u128)));
        params.push(mul(w, mul(cl, Some(4))));
        // The discriminator sees a real and a fake batch.
        acts.push(mul(mul(w, side), Some(2)));
    }
    params.push(mul(d.last().copied().flatten(), Some(k as u128)));
    (sum(&params), sum(&acts))
}

/// Memory a training step of `m` at `batch` images needs: parameters with their gradients and
/// Adam state, and the activations kept for the backward pass.
pub fn train_bytes(m: &ModelConfig, classes: usize, batch: usize) -> Bytes {
    let (params, acts) = model_counts(m, classes);
    sum(&[
        params?.checked_mul(TRAIN_BYTES_PER_PARAM as u128),
        acts?.checked_mul(product(&[batch, TRAIN_BYTES_PER_ACTIVATION])?),
    ])
}

/// Memory `count` built-in paintings of `size` px take while they are made (each painting and
/// the joined pixel buffer).
pub fn builtin_bytes(count: usize, size: usize) -> Bytes {
    product(&[count, 2 * 3 * size * size + 128])
}

/// Memory an SWD evaluation of `count` images per set holds: the generated and the real
/// images as 8-bit (twice the real ones with the real-vs-real floor) and one pyramid level's
/// descriptors (f32) of each.
pub fn eval_bytes(count: usize, size: usize) -> Bytes {
    let p = crate::quality::SwdParams::default();
    let descriptors = product(&[p.descriptors_per_image, 3 * p.patch * p.patch, 4]);
    let per_image = sum(&[product(&[3, size, size]), descriptors])?;
    product(&[count, 3])?.checked_mul(per_image)
}

/// Upper bound of one `size` px PNG on disk (8-bit RGB, never much over the raw bytes).
pub fn png_bytes(size: usize) -> Bytes {
    product(&[3, size, size]).and_then(|b| b.checked_add(1024))
}

/// `bytes` for people: "3.2 TiB"; `None` as "more than any machine has".
pub fn human(bytes: Bytes) -> String {
    let Some(b) = bytes else {
        return "more than 2^128 bytes".to_string();
    };
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} bytes")
    } else if v >= 1e4 {
        format!("{v:.2e} {}", units[unit])
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

/// An estimate in a message: "about 3.2 TiB", or "more than 2^128 bytes" when it overflowed.
fn about(bytes: Bytes) -> String {
    match bytes {
        Some(_) => format!("about {}", human(bytes)),
        None => human(None),
    }
}

/// Total memory of the machine (`MemTotal` of /proc/meminfo), `None` where it cannot be read.
pub fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The memory a model on `device` lives in: the GPU's total for CUDA, else the machine's; and
/// what to call it in a message.
fn device_memory(device: Device) -> (Option<u64>, String) {
    match device {
        Device::Cuda(i) => (
            crate::backend::cuda::libs::total_memory(i),
            format!("{device}"),
        ),
        Device::Cpu => (host_memory(), "this machine".to_string()),
    }
}

/// One flag's share of an estimate: what the estimate would be with the flag at 1 tells
/// which flag made it too large.
pub struct Candidate<'a> {
    pub flag: &'a str,
    pub value: String,
    /// What the flag sizes ("the models").
    pub what: &'a str,
    /// The estimate with this flag at its smallest value.
    pub without: Bytes,
}

/// Refuses `need` (of `what`) when it exceeds the memory of `device` (for the models) or of
/// the machine, naming the candidate flag whose smallest value shrinks it most.
pub fn check_memory(need: Bytes, device: Device, flags: &[Candidate]) -> Result<()> {
    let (total, place) = device_memory(device);
    let Some(total) = total else {
        // Unknown total (no /proc): only a computation that overflowed is refused.
        if need.is_some() {
            return Ok(());
        }
        return refuse(need, "any machine".to_string(), flags);
    };
    if need.is_some_and(|n| n <= u128::from(total)) {
        return Ok(());
    }
    let has = format!("{place} has {}", human(Some(u128::from(total))));
    refuse(need, has, flags)
}

fn refuse(need: Bytes, has: String, flags: &[Candidate]) -> Result<()> {
    let culprit = flags.iter().min_by_key(|c| c.without.unwrap_or(u128::MAX));
    match culprit {
        Some(c) => bail!(
            "{} {} needs {} of memory for {} ({has}): lower {}",
            c.flag,
            c.value,
            about(need),
            c.what,
            c.flag
        ),
        None => bail!("this needs {} of memory ({has})", about(need)),
    }
}

/// The memory a training run needs, from its flags, before anything is allocated or made: the
/// models in the device's memory, and the built-in paintings and SWD images in the machine's
/// (the models too on the CPU).
pub fn check_training(cfg: &crate::train::TrainConfig, device: Device) -> Result<()> {
    let classes = cfg.class_table.as_ref().map_or(0, |t| t.len());
    let size = cfg.model.image_size;
    let builtin = match cfg.data_args.data {
        None => Some(
            cfg.data_args
                .limit
                .unwrap_or(crate::data::BUILTIN_DEFAULT_COUNT),
        ),
        Some(_) => None,
    };
    let eval = (cfg.eval_every > 0 || cfg.eval_every_images > 0).then_some(cfg.eval_count);
    let cpu = device == Device::Cpu;
    let models = |m: &ModelConfig, batch| train_bytes(m, classes, batch);
    let host = |m: &ModelConfig, batch, builtin: Option<usize>, eval: Option<usize>| {
        sum(&[
            if cpu { models(m, batch) } else { Some(0) },
            builtin.map_or(Some(0), |n| builtin_bytes(n, size)),
            eval.map_or(Some(0), |n| eval_bytes(n, size)),
        ])
    };
    let (m, b) = (&cfg.model, cfg.batch_size);
    let model_flags = |total: &dyn Fn(&ModelConfig, usize) -> Bytes| {
        let at_one = |set: fn(&mut ModelConfig)| {
            let mut m = m.clone();
            set(&mut m);
            total(&m, b)
        };
        let flag = |flag, value: usize, without| Candidate {
            flag,
            value: value.to_string(),
            what: "the models",
            without,
        };
        vec![
            flag("--nz", m.nz, at_one(|m| m.nz = 1)),
            flag("--ngf", m.ngf, at_one(|m| m.ngf = 1)),
            flag("--ndf", m.ndf, at_one(|m| m.ndf = 1)),
            flag("--batch-size", b, total(m, 1)),
        ]
    };
    if !cpu {
        check_memory(models(m, b), device, &model_flags(&models))?;
    }
    let mut flags = if cpu {
        model_flags(&|m: &ModelConfig, b| host(m, b, builtin, eval))
    } else {
        Vec::new()
    };
    if let Some(n) = builtin {
        flags.push(Candidate {
            flag: "--limit",
            value: n.to_string(),
            what: "the built-in paintings",
            without: host(m, b, Some(1), eval),
        });
    }
    if let Some(n) = eval {
        flags.push(Candidate {
            flag: "--eval-count",
            value: n.to_string(),
            what: "the SWD evaluation images",
            without: host(m, b, builtin, Some(1)),
        });
    }
    check_memory(host(m, b, builtin, eval), Device::Cpu, &flags)
}

/// Refuses a command that will hold `host` bytes in memory and write `disk` bytes into `out`
/// (made by `flag value`: what it sizes is `what`) when the machine or the disk has less.
pub fn check_output(
    out: &Path,
    flag: &str,
    value: usize,
    what: &str,
    host: Bytes,
    disk: Bytes,
) -> Result<()> {
    let this = Candidate {
        flag,
        value: value.to_string(),
        what,
        without: None,
    };
    check_memory(host, Device::Cpu, &[this])?;
    check_disk(out, disk, what, flag, value)
}

/// What painting `images` images of `size` px with latents of `nz` floats holds in memory and
/// writes to disk (PNGs and latents), each per image plus `grid_bytes` per image when a grid of
/// them all is kept (8-bit or f32 pixels) and written: (memory, disk).
pub fn painting_bytes(images: Bytes, size: usize, nz: usize, grid_bytes: usize) -> (Bytes, Bytes) {
    let latents = product(&[nz, 4]);
    let held = sum(&[
        latents.map(|l| l * 3),
        product(&[3, size, size, grid_bytes]),
    ]);
    let grid_file = if grid_bytes > 0 {
        product(&[3, size, size])
    } else {
        Some(0)
    };
    let written = sum(&[png_bytes(size), latents, grid_file]);
    let times = |per: Bytes| images?.checked_mul(per?);
    (times(held), times(written))
}

/// Free bytes on the file system holding `path` (or its nearest existing ancestor).
pub fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        p.exists()
    })?;
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and an out-parameter of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    (st.f_bavail as u64).checked_mul(st.f_frsize as u64)
}

/// Refuses writing `need` bytes (of `what`) into `dir` when its file system has less free,
/// naming `flag value` as the cause.
pub fn check_disk(dir: &Path, need: Bytes, what: &str, flag: &str, value: usize) -> Result<()> {
    let Some(free) = free_disk(dir) else {
        return Ok(());
    };
    if need.is_some_and(|n| n <= u128::from(free)) {
        return Ok(());
    }
    bail!(
        "{flag} {value} needs {} of disk for {what} ({} has {} free): lower {flag}",
        about(need),
        dir.display(),
        human(Some(u128::from(free)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Preset;

    fn model(ngf: usize, nz: usize) -> ModelConfig {
        ModelConfig {
            preset: Preset::Dcgan,
            image_size: 128,
            nz,
            ngf,
            ndf: 32,
        }
    }

    #[test]
    fn overflow_is_none_not_a_panic_or_a_wrap() {
        assert_eq!(product(&[usize::MAX, usize::MAX, 2]), None);
        assert_eq!(sum(&[Some(u128::MAX), Some(1)]), None);
        assert_eq!(sum(&[Some(1), None]), None);
        // 2^62 shifted by the widest layer's 2^4 wraps a usize; the estimate says too large.
        assert_eq!(train_bytes(&model(1 << 62, 100), 0, 64), None);
        assert_eq!(train_bytes(&model(32, usize::MAX), 0, usize::MAX), None);
        // The largest counts fit u128 and come out beyond any machine (more than 2^64 bytes).
        assert!(eval_bytes(usize::MAX, 128).unwrap() > 1 << 64);
        assert!(builtin_bytes(usize::MAX, 32).unwrap() > 1 << 64);
    }

    #[test]
    fn estimates_grow_with_the_flags_and_match_the_models_size() {
        let small = train_bytes(&model(32, 100), 0, 64).unwrap();
        // A 128 px dcgan at ngf 32 has a few million parameters: tens of MiB, not GiB.
        assert!(small > 1 << 20 && small < 4 << 30, "{small}");
        let wide = train_bytes(&model(1_000_000, 100), 0, 64).unwrap();
        assert!(
            wide > 1 << 40,
            "ngf 1e6 needs terabytes: {}",
            human(Some(wide))
        );
        assert!(train_bytes(&model(32, 100), 0, 128).unwrap() > small);
        assert!(train_bytes(&model(32, 100), 10, 64).unwrap() > small);
    }

    #[test]
    fn the_culprit_is_the_flag_whose_smallest_value_shrinks_the_estimate_most() {
        let flags = [
            Candidate {
                flag: "--nz",
                value: "100".into(),
                what: "the models",
                without: Some(1 << 50),
            },
            Candidate {
                flag: "--ngf",
                value: "1000000".into(),
                what: "the models",
                without: Some(1 << 20),
            },
        ];
        let e = check_memory(None, Device::Cpu, &flags).unwrap_err();
        let msg = e.to_string();
        let want = "--ngf 1000000 needs more than 2^128 bytes of memory for the models";
        assert!(msg.starts_with(want), "{msg}");
        assert!(msg.ends_with("lower --ngf"), "{msg}");
        check_memory(Some(1024), Device::Cpu, &flags).unwrap();
    }

    #[test]
    fn disk_estimates_beyond_the_free_space_are_refused_naming_the_flag() {
        let dir = std::env::temp_dir().join("artgan-limits-no-such-folder/below");
        // A folder not made yet: the space of its nearest existing ancestor.
        let free = free_disk(&dir).expect("statvfs of /tmp");
        check_disk(
            &dir,
            Some(u128::from(free) / 2),
            "the images",
            "--count",
            10,
        )
        .unwrap();
        let e = check_disk(&dir, Some(u128::from(free) * 2), "the images", "--count", 7)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--count 7 needs about "), "{e}");
        assert!(
            e.contains("of disk for the images") && e.contains("free)"),
            "{e}"
        );
        assert!(e.ends_with("lower --count"), "{e}");
        assert!(!dir.exists());
        let (held, written) = painting_bytes(Some(10), 32, 100, 0);
        assert_eq!(held, Some(10 * 3 * 400));
        assert_eq!(written, Some(10 * (3 * 1024 + 1024 + 400)));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(Some(512)), "512 bytes");
        assert_eq!(human(Some(3 << 30)), "3.0 GiB");
        assert_eq!(human(None), "more than 2^128 bytes");
    }
}
