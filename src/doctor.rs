//! `artgan doctor`: what this machine can run. The driver and its CUDA version, each CUDA
//! library (found with its path and version, or how to get it; NCCL for several GPUs too), which kernel image the device
//! will load, free GPU memory, and what `--device auto` chooses and why.
//!
//! It goes through the same library discovery ([`libs::ensure`]) and device selection
//! ([`select::resolve_with_reason`]) as the backend, so what it says is what `train` will do.
//! No cudarc call is made for a library that was not found (cudarc panics then), and every
//! call is wrapped in [`libs::catch_cudarc_panic`]. It always exits 0: a machine without a
//! GPU is a valid answer.

use crate::backend::cuda::{embedded, libs, loader};
use crate::backend::select::{self, DeviceSpec};
use crate::backend::Device;
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct DoctorArgs {}

/// The highest PTX ISA a driver of CUDA version `cuda` (major, minor) accepts.
pub fn driver_ptx_isa(cuda: (u32, u32)) -> (u32, u32) {
    match cuda {
        (11, m) => (7, m.min(8)),
        (12, m) if m <= 4 => (8, m),
        (12, 5) | (12, 6) => (8, 5),
        (12, 7) | (12, 8) => (8, 7),
        (12, _) => (8, 8),
        (13, m) => (9, m),
        (major, _) if major > 13 => (major - 4, 9),
        _ => (6, 0),
    }
}

/// The `.version X.Y` line of a PTX text.
pub fn ptx_isa_of(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))?;
    let (a, b) = line.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// How to get a library without Python: the distribution's packages from NVIDIA's CUDA
/// repository.
fn distro_hint(spec: &libs::LibSpec) -> &'static str {
    match spec.sonames[0] {
        "libcuda.so.1" => {
            "Debian/Ubuntu: `apt install nvidia-driver-580` (or newer); Fedora/RHEL: \
             `dnf install nvidia-driver-cuda`"
        }
        s if s.starts_with("libnvrtc") => {
            "without Python: NVIDIA's CUDA repository, `apt install cuda-nvrtc-12-8` \
             (or `dnf install cuda-nvrtc-12-8`)"
        }
        s if s.starts_with("libcublas") => {
            "without Python: NVIDIA's CUDA repository, `apt install libcublas-12-8` \
             (or `dnf install libcublas-12-8`)"
        }
        s if s.starts_with("libnccl") => {
            "without Python: NVIDIA's CUDA repository, `apt install libnccl2` \
             (or `dnf install libnccl`)"
        }
        _ => {
            "without Python: NVIDIA's CUDA repository, `apt install libcudnn9-cuda-12` \
             (or `dnf install libcudnn9-cuda-12`)"
        }
    }
}

/// Version of a loaded library, asked from the library itself.
fn library_version(spec: &libs::LibSpec) -> Option<String> {
    let key = spec.sonames[0];
    libs::catch_cudarc_panic("asking a library its version", || -> Option<String> {
        if key.starts_with("libcuda.") {
            let mut v = 0;
            // SAFETY: plain out-parameter; libcuda is loaded (checked by the caller).
            let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
            (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
                .then(|| format!("CUDA {}.{}", v / 1000, v % 1000 / 10))
        } else if key.starts_with("libnvrtc") {
            let (mut a, mut b) = (0, 0);
            // SAFETY: plain out-parameters; nvrtc is loaded.
            let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
            (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then(|| format!("{a}.{b}"))
        } else if key.starts_with("libcublasLt") {
            // Not bound by our cudarc features: the version in the file name, when it has one.
            let path = libs::loaded_path(key)?;
            let name = std::path::Path::new(&path)
                .file_name()?
                .to_string_lossy()
                .into_owned();
            let v = name.strip_prefix("libcublasLt.so.")?;
            v.contains('.').then(|| v.to_string())
        } else if key.starts_with("libcublas") {
            use cudarc::cublas::sys::{
                cublasGetProperty, cublasStatus_t, libraryPropertyType_t as libraryPropertyType,
            };
            let mut parts = [0; 3];
            for (p, t) in parts.iter_mut().zip([
                libraryPropertyType::MAJOR_VERSION,
                libraryPropertyType::MINOR_VERSION,
                libraryPropertyType::PATCH_LEVEL,
            ]) {
                // SAFETY: plain out-parameter; cuBLAS is loaded.
                if unsafe { cublasGetProperty(t, p) } != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    return None;
                }
            }
            Some(format!("{}.{}.{}", parts[0], parts[1], parts[2]))
        } else if key.starts_with("libnccl") {
            libs::nccl_version()
        } else {
            // SAFETY: no arguments; cuDNN is loaded.
            let v = unsafe { cudarc::cudnn::sys::cudnnGetVersion() };
            Some(format!("{}.{}.{}", v / 10000, v % 10000 / 100, v % 100))
        }
    })
    .ok()
    .flatten()
}

/// One line per library; returns the driver's CUDA version when libcuda was found.
fn report_libraries(out: &mut Vec<String>) -> (bool, Option<(u32, u32)>) {
    out.push(
        "libraries (searched like the backend: LD_LIBRARY_PATH, ld.so cache, \
              ARTGAN_CUDA_LIBS, CUDA folders, pip's nvidia wheels):"
            .to_string(),
    );
    let mut driver_found = false;
    let mut cuda = None;
    for spec in [
        libs::LIBCUDA,
        libs::NVRTC,
        libs::CUBLASLT,
        libs::CUBLAS,
        libs::CUDNN,
        libs::NCCL,
    ] {
        let name = spec.sonames[0].split(".so").next().unwrap_or_default();
        match libs::ensure(&spec) {
            Ok(found) => {
                let soname = std::path::Path::new(&found)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(found.clone());
                let path = libs::loaded_path(&soname).unwrap_or(found);
                let version = library_version(&spec);
                if name == "libcuda" {
                    driver_found = true;
                    cuda = version.as_deref().and_then(|v| {
                        let (a, b) = v.strip_prefix("CUDA ")?.split_once('.')?;
                        Some((a.parse().ok()?, b.parse().ok()?))
                    });
                }
                out.push(format!(
                    "  {name:<12} found: {path}{}",
                    version.map_or(String::new(), |v| format!(" (version {v})"))
                ));
            }
            Err(e) => {
                let first = format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let state = if libs::is_unusable(&first) {
                    "UNUSABLE"
                } else {
                    "NOT FOUND"
                };
                out.push(format!("  {name:<12} {state}: {first}"));
                out.push(format!("  {:<12}   get it: {}", "", spec.install));
                out.push(format!("  {:<12}   or: {}", "", distro_hint(&spec)));
            }
        }
    }
    (driver_found, cuda)
}

/// The kernels this binary carries.
fn report_build(out: &mut Vec<String>) -> Option<(u32, u32)> {
    let first = embedded::KERNEL_MODULES.first();
    let ptx_isa = first.and_then(|m| m.ptx).and_then(ptx_isa_of);
    let cubins: Vec<String> = first
        .map(|m| m.cubins.iter().map(|(sm, _)| format!("sm_{sm}")).collect())
        .unwrap_or_default();
    out.push(format!(
        "kernels in this binary: {} modules; {}; {}",
        embedded::KERNEL_MODULES.len(),
        match (embedded::BUILD_NVRTC_VERSION, ptx_isa) {
            (Some((a, b)), Some((i, j))) =>
                format!("PTX for compute_75 (PTX ISA {i}.{j}, from nvrtc {a}.{b})"),
            _ => "no PTX (built without nvrtc: sources are compiled at run time by the local \
                  nvrtc)"
                .to_string(),
        },
        if cubins.is_empty() {
            "no cubins".to_string()
        } else {
            format!("cubins for {}", cubins.join(", "))
        }
    ));
    ptx_isa
}

/// Runs the checks and returns the report's lines.
pub fn report() -> Vec<String> {
    let mut out = vec!["artgan doctor: what this machine can run".to_string()];
    let (driver_found, cuda) = report_libraries(&mut out);
    match (driver_found, cuda) {
        (true, Some((a, b))) => {
            let (i, j) = driver_ptx_isa((a, b));
            out.push(format!(
                "driver: CUDA {a}.{b} (accepts PTX ISA up to {i}.{j})"
            ));
        }
        (true, None) => out.push("driver: found, but it did not say its CUDA version".into()),
        (false, _) => out.push(format!(
            "driver: none (libcuda.so.1 {}): this machine runs artgan on the CPU",
            match libs::ensure(&libs::LIBCUDA) {
                Err(e) if libs::is_unusable(&e.to_string()) => "is unusable, see above",
                _ => "not found",
            }
        )),
    }
    let ptx_isa = report_build(&mut out);
    let (device, why) = match select::resolve_with_reason(DeviceSpec::Auto) {
        Ok(r) => r,
        Err(e) => (Device::Cpu, Some(format!("{e:#}"))),
    };
    if let Device::Cuda(ordinal) = device {
        report_device(&mut out, ordinal, cuda, ptx_isa);
        out.push(format!(
            "--device auto: {device}, because a CUDA driver, its libraries and a device were \
             found and the backend started on it"
        ));
    } else {
        // A device that works but that `auto` passes over (the emulated one): still report it,
        // it is what `--device cuda` runs on.
        if let Ok((Device::Cuda(ordinal), _)) = select::resolve_with_reason(DeviceSpec::Cuda(0)) {
            report_device(&mut out, ordinal, cuda, ptx_isa);
        }
        let why = why.unwrap_or_else(|| "CUDA is not usable".into());
        out.push(format!("--device auto: cpu, because {why}"));
        if !driver_found {
            out.push(
                "  (for a GPU: an NVIDIA driver 535 or newer; then `artgan doctor` again)".into(),
            );
        }
    }
    out
}

/// Name, compute capability, kernel image and memory of CUDA device `ordinal` (the backend
/// is running on it, so its context is current).
fn report_device(
    out: &mut Vec<String>,
    ordinal: usize,
    cuda: Option<(u32, u32)>,
    ptx_isa: Option<(u32, u32)>,
) {
    let info = libs::catch_cudarc_panic("asking the device", || -> Result<_> {
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| anyhow::anyhow!("cannot open cuda:{ordinal}: {e:?}"))?;
        let name = ctx.name().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ctx.bind_to_thread().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mem = cudarc::driver::result::mem_get_info().ok();
        Ok((name, (major * 10 + minor) as u32, mem))
    });
    let (name, cc, mem) = match info {
        Ok(Ok(x)) => x,
        Ok(Err(e)) | Err(e) => {
            out.push(format!("device cuda:{ordinal}: cannot query it ({e:#})"));
            return;
        }
    };
    out.push(format!("device cuda:{ordinal}: {name} (sm_{cc})"));
    let image = match embedded::KERNEL_MODULES
        .first()
        .map(|m| loader::candidate_images(m, cc))
        .unwrap_or_default()
        .first()
    {
        Some(loader::Image::Cubin(sm, _)) => format!("the cubin for sm_{sm} (no JIT)"),
        Some(loader::Image::Ptx(_)) => {
            let accepts = match (cuda, ptx_isa) {
                (Some(c), Some(isa)) => {
                    let max = driver_ptx_isa(c);
                    if isa <= max {
                        format!(
                            "the driver accepts our PTX ISA {}.{} (up to {}.{})",
                            isa.0, isa.1, max.0, max.1
                        )
                    } else {
                        format!(
                            "the driver accepts PTX ISA up to {}.{} only, older than ours \
                             ({}.{}): the sources are compiled by the local nvrtc instead{}",
                            max.0,
                            max.1,
                            isa.0,
                            isa.1,
                            if libs::nvrtc_available() {
                                ""
                            } else {
                                ", which is NOT FOUND: install nvrtc"
                            }
                        )
                    }
                }
                _ => "the driver's PTX ISA is unknown".to_string(),
            };
            format!("the PTX, JIT-compiled by the driver: {accepts}")
        }
        None => format!(
            "none prebuilt for sm_{cc}: the sources are compiled by the local nvrtc{}",
            if libs::nvrtc_available() {
                ""
            } else {
                ", which is NOT FOUND: install nvrtc"
            }
        ),
    };
    let image = match loader::ImagePolicy::from_env() {
        Ok(loader::ImagePolicy::Auto) => image,
        Ok(loader::ImagePolicy::Ptx) => {
            format!("the PTX (ARTGAN_KERNEL_IMAGE=ptx; without it: {image})")
        }
        Ok(loader::ImagePolicy::Nvrtc) => format!(
            "the sources compiled by the local nvrtc (ARTGAN_KERNEL_IMAGE=nvrtc; without it: \
             {image})"
        ),
        Err(e) => format!("{image}; but {e:#}"),
    };
    out.push(format!("kernel image: {image}"));
    match mem {
        Some((free, total)) => out.push(format!(
            "GPU memory: {:.1} GiB free of {:.1} GiB",
            free as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        )),
        None => out.push("GPU memory: unknown (cuMemGetInfo failed)".into()),
    }
}

pub fn run(_a: &DoctorArgs) -> Result<()> {
    for line in report() {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_isa_table_and_parse() {
        assert_eq!(driver_ptx_isa((12, 2)), (8, 2));
        assert_eq!(driver_ptx_isa((13, 0)), (9, 0));
        assert_eq!(driver_ptx_isa((12, 9)), (8, 8));
        assert_eq!(
            ptx_isa_of("//\n.version 8.2\n.target sm_75\n"),
            Some((8, 2))
        );
        assert_eq!(ptx_isa_of("garbage"), None);
    }
}
