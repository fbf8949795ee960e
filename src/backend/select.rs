//! `--device auto|cpu|cuda|cuda:N`: parsing and choosing a working device.

use super::cuda::libs;
use super::{backend, Device};
use anyhow::{bail, Context, Result};
use std::fmt;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when it works, otherwise the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_device(s)
    }
}

/// Parses `auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N` (case-insensitive).
pub fn parse_device(spec: &str) -> Result<DeviceSpec> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
        _ if s.contains(',') || s == "cuda:all" => bail!(
            "device {spec:?} is several GPUs: only `train` trains on several (data-parallel); \
             give one device here, e.g. cuda:0"
        ),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map(DeviceSpec::Cuda).with_context(|| {
                format!("bad device {spec:?}: the ordinal after `cuda:` must be a number")
            }),
            None => bail!("bad device {spec:?}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

/// `train`'s `--device`: one device as [`parse_device`], or several GPUs for data-parallel
/// training: `cuda:0,1` (a list of ordinals, `cuda:` once or before each) or `cuda:all` (every
/// GPU the driver sees). Each is opened (the first error names its device); a list names each
/// GPU once.
pub fn resolve_list(spec: &str) -> Result<Vec<Device>> {
    let s = spec.trim().to_ascii_lowercase();
    let ordinals: Vec<usize> = if s == "cuda:all" {
        let n = super::cuda::device_count()?;
        if n == 0 {
            bail!("--device cuda:all: the driver sees no CUDA device");
        }
        (0..n).collect()
    } else if s.contains(',') {
        let body = s.strip_prefix("cuda:").unwrap_or(&s);
        body.split(',')
            .map(|p| {
                let p = p.trim();
                p.strip_prefix("cuda:").unwrap_or(p).parse::<usize>().map_err(|_| {
                    anyhow::anyhow!(
                        "bad device list {spec:?}: expected GPU ordinals such as cuda:0,1, got {p:?}"
                    )
                })
            })
            .collect::<Result<_>>()?
    } else {
        return Ok(vec![resolve(parse_device(spec)?)?]);
    };
    for (i, o) in ordinals.iter().enumerate() {
        if ordinals[..i].contains(o) {
            bail!("bad device list {spec:?}: cuda:{o} is named twice");
        }
    }
    ordinals
        .into_iter()
        .map(|o| resolve(DeviceSpec::Cuda(o)))
        .collect()
}

/// Resolves `spec` to a device whose backend works. `auto` falls back to the CPU and prints one
/// line saying why; `cuda`/`cuda:N` fail with the full reason.
pub fn resolve(spec: DeviceSpec) -> Result<Device> {
    let (device, why_not_cuda) = resolve_with_reason(spec)?;
    if let Some(why) = why_not_cuda {
        println!("using cpu: {why}");
    }
    if let Device::Cuda(ordinal) = device {
        // Names the device, so that a run on the emulated device says so.
        println!("using {device}: {}", super::cuda::device_name(ordinal));
    }
    Ok(device)
}

/// Like [`resolve`] but returns, instead of printing, why `auto` did not pick CUDA.
pub fn resolve_with_reason(spec: DeviceSpec) -> Result<(Device, Option<String>)> {
    match spec {
        DeviceSpec::Cpu => Ok((Device::Cpu, None)),
        DeviceSpec::Cuda(ordinal) => {
            open_cuda(ordinal)?;
            Ok((Device::Cuda(ordinal), None))
        }
        DeviceSpec::Auto => match open_cuda(0) {
            // The emulated device (scripts/cuda-emu) runs kernels on the CPU, far slower than
            // the CPU backend: only an explicit --device cuda uses it.
            Ok(()) if super::cuda::device_name(0).contains("emulated") => Ok((
                Device::Cpu,
                Some(
                    "the CUDA device is emulated (scripts/cuda-emu); --device cuda uses it".into(),
                ),
            )),
            Ok(()) => Ok((Device::Cuda(0), None)),
            // Only the first line: the full message (places searched, how to install) is
            // for `--device cuda`, which the user runs when they want the GPU.
            Err(e) => {
                let first = format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                Ok((
                    Device::Cpu,
                    Some(format!(
                        "no usable CUDA device: {first} (see --device cuda for details)"
                    )),
                ))
            }
        },
    }
}

/// Creates (and caches) the CUDA backend for `ordinal`, with the libraries checked first so a
/// missing one is an error naming it, and cudarc panics turned into errors.
fn open_cuda(ordinal: usize) -> Result<()> {
    libs::ensure_libraries(false)
        .with_context(|| format!("cannot use {}", Device::Cuda(ordinal)))?;
    libs::catch_cudarc_panic("creating the CUDA backend", || {
        backend(Device::Cuda(ordinal))
    })??;
    Ok(())
}

/// For GPU tests: `Ok(())` when CUDA device 0 works, else the reason to print when skipping.
pub fn is_cuda_available() -> std::result::Result<(), String> {
    open_cuda(0).map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(parse_device("auto").unwrap(), DeviceSpec::Auto);
        assert_eq!(parse_device("CPU").unwrap(), DeviceSpec::Cpu);
        assert_eq!(parse_device("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(parse_device("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(
            " cuda:1 ".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(1)
        );
    }

    #[test]
    fn rejects_bad_specs() {
        for s in ["", "cuda:", "cuda:x", "cuda:-1", "tpu", "cuda0"] {
            assert!(parse_device(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in [DeviceSpec::Auto, DeviceSpec::Cpu, DeviceSpec::Cuda(2)] {
            assert_eq!(parse_device(&s.to_string()).unwrap(), s);
        }
    }

    /// Several GPUs are `train`'s alone, and a list is checked before any device is opened.
    #[test]
    fn device_lists_are_for_train_and_checked_before_opening() {
        let e = parse_device("cuda:0,1").unwrap_err().to_string();
        assert_eq!(
            e,
            "device \"cuda:0,1\" is several GPUs: only `train` trains on several \
             (data-parallel); give one device here, e.g. cuda:0"
        );
        assert!(parse_device("cuda:all").is_err());
        let e = resolve_list("cuda:0,0").unwrap_err().to_string();
        assert_eq!(e, "bad device list \"cuda:0,0\": cuda:0 is named twice");
        let e = resolve_list("cuda:0,x").unwrap_err().to_string();
        assert_eq!(
            e,
            "bad device list \"cuda:0,x\": expected GPU ordinals such as cuda:0,1, got \"x\""
        );
        let e = resolve_list("cuda:1,cuda:1").unwrap_err().to_string();
        assert!(e.ends_with("cuda:1 is named twice"), "{e}");
    }
}
