//! Loading our kernel modules (kernels/*.cu, compiled by build.rs) into a CUDA context.
//!
//! Order of preference for a device of compute capability `cc`:
//! 1. the cubin built for exactly `cc`, else one for the same major and a lower minor (cubins
//!    are binary compatible upward within a major version): no JIT, fastest start;
//! 2. the embedded PTX (compute_75, ISA 8.2): the driver JIT-compiles it for any newer GPU;
//! 3. the embedded source compiled now by the local nvrtc, when nothing was embedded (no nvrtc
//!    at build time) or the driver rejected what was (e.g. an older driver than the PTX ISA).
//!
//! Loaded modules are cached per context: the backend may ask for a module on every op.

use super::embedded::{self, KernelModule, BUILD_NVRTC_VERSION, KERNEL_MODULES, PTX_ARCH};
use super::libs;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// A prebuilt image to try, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    Cubin(u32, &'static [u8]),
    Ptx(&'static str),
}

/// The prebuilt images usable on a device of compute capability `cc` (major*10+minor), best
/// first. Empty means: compile at run time.
pub fn candidate_images(m: &KernelModule, cc: u32) -> Vec<Image> {
    let mut out = Vec::new();
    if let Some(&(sm, bin)) = m.cubins.iter().find(|(sm, _)| *sm == cc) {
        out.push(Image::Cubin(sm, bin));
    } else if let Some(&(sm, bin)) = m
        .cubins
        .iter()
        .filter(|(sm, _)| sm / 10 == cc / 10 && *sm < cc)
        .max_by_key(|(sm, _)| *sm)
    {
        out.push(Image::Cubin(sm, bin));
    }
    if let Some(ptx) = m.ptx {
        if PTX_ARCH <= cc {
            out.push(Image::Ptx(ptx));
        }
    }
    out
}

type Cache = Mutex<HashMap<(usize, String), Arc<CudaModule>>>;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Which image a module was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadedFrom {
    Cubin(u32),
    Ptx,
    /// Compiled at run time by the local nvrtc.
    Nvrtc,
}

/// Which images [`load_module_with`] may use. `ARTGAN_KERNEL_IMAGE=auto|ptx|nvrtc` sets it for
/// [`load_module`]: a way to exercise (and, if a prebuilt image misbehaves, bypass) each path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePolicy {
    /// Cubin, then PTX, then nvrtc.
    Auto,
    /// Skip cubins: PTX, then nvrtc.
    Ptx,
    /// Always compile at run time.
    Nvrtc,
}

impl ImagePolicy {
    /// From `ARTGAN_KERNEL_IMAGE`; unknown values are an error rather than silently `auto`.
    pub fn from_env() -> Result<Self> {
        match std::env::var("ARTGAN_KERNEL_IMAGE").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(ImagePolicy::Auto),
            Ok("ptx") => Ok(ImagePolicy::Ptx),
            Ok("nvrtc") => Ok(ImagePolicy::Nvrtc),
            Ok(other) => bail!("ARTGAN_KERNEL_IMAGE={other:?}: expected auto, ptx or nvrtc"),
        }
    }
}

/// Loads kernel module `name` (a `kernels/*.cu` file stem) into `ctx`, once per context.
pub fn load_module(ctx: &Arc<CudaContext>, name: &str) -> Result<Arc<CudaModule>> {
    // Keyed by the context's address. A cached module holds an Arc of its context, so that
    // address cannot be reused by another context while the entry exists.
    let key = (Arc::as_ptr(ctx) as usize, name.to_string());
    if let Some(m) = cache().lock().unwrap().get(&key) {
        return Ok(m.clone());
    }
    let (module, _) = load_module_with(ctx, name, ImagePolicy::from_env()?)?;
    cache().lock().unwrap().insert(key, module.clone());
    Ok(module)
}

/// Loads module `name` without the cache, under `policy`, and says which image was used.
pub fn load_module_with(
    ctx: &Arc<CudaContext>,
    name: &str,
    policy: ImagePolicy,
) -> Result<(Arc<CudaModule>, LoadedFrom)> {
    let m = embedded::find(name).ok_or_else(|| {
        anyhow!(
            "no kernel module {name:?} (known: {})",
            KERNEL_MODULES
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let (major, minor) = ctx
        .compute_capability()
        .context("reading the device's compute capability")?;
    let cc = (major * 10 + minor) as u32;

    let images = match policy {
        ImagePolicy::Auto => candidate_images(m, cc),
        ImagePolicy::Ptx => candidate_images(m, cc)
            .into_iter()
            .filter(|i| matches!(i, Image::Ptx(_)))
            .collect(),
        ImagePolicy::Nvrtc => Vec::new(),
    };
    let mut rejected = Vec::new();
    for image in images {
        let (what, ptx, from) = match image {
            Image::Cubin(sm, bin) => (
                format!("cubin sm_{sm}"),
                Ptx::from_binary(bin.to_vec()),
                LoadedFrom::Cubin(sm),
            ),
            Image::Ptx(src) => (
                format!("PTX compute_{PTX_ARCH}"),
                Ptx::from_src(src),
                LoadedFrom::Ptx,
            ),
        };
        match ctx.load_module(ptx) {
            Ok(module) => return Ok((module, from)),
            Err(e) => rejected.push(format!("{what}: {e:?}")),
        }
    }

    let reason = if policy == ImagePolicy::Nvrtc {
        "ARTGAN_KERNEL_IMAGE=nvrtc".to_string()
    } else if !rejected.is_empty() {
        format!(
            "the driver rejected the prebuilt kernels ({})",
            rejected.join("; ")
        )
    } else if BUILD_NVRTC_VERSION.is_none() {
        "no nvrtc was found when artgan was built".to_string()
    } else {
        format!("no prebuilt image suits compute capability {major}.{minor}")
    };
    let module = compile_at_run_time(ctx, m, cc, &reason)?;
    Ok((module, LoadedFrom::Nvrtc))
}

fn compile_at_run_time(
    ctx: &Arc<CudaContext>,
    m: &KernelModule,
    cc: u32,
    reason: &str,
) -> Result<Arc<CudaModule>> {
    if !libs::nvrtc_available() {
        bail!(
            "kernel module {:?}: {reason}, and no nvrtc to compile it at run time:\n{}",
            m.name,
            libs::ensure(&libs::NVRTC).unwrap_err()
        );
    }
    let version = libs::catch_cudarc_panic("nvrtcVersion", nvrtc_version)??;
    static NOTE: OnceLock<()> = OnceLock::new();
    NOTE.get_or_init(|| {
        eprintln!(
            "note: compiling kernels at run time with nvrtc {}.{} because {reason}",
            version.0, version.1
        );
    });

    // A cubin first: a cubin from a newer nvrtc still loads on an older driver of the same
    // major version, where PTX from it would be rejected. PTX for the device if nvrtc cannot
    // target the exact architecture (a GPU newer than that nvrtc).
    let cubin = libs::catch_cudarc_panic("nvrtc", || compile(m, &format!("sm_{cc}"), true))?;
    let mut errors = Vec::new();
    match cubin {
        Ok(bin) => match ctx.load_module(Ptx::from_binary(bin)) {
            Ok(module) => return Ok(module),
            Err(e) => errors.push(format!("cubin sm_{cc} from nvrtc: {e:?}")),
        },
        Err(e) => errors.push(e.to_string()),
    }
    let ptx = libs::catch_cudarc_panic("nvrtc", || compile(m, &format!("compute_{cc}"), false))??;
    let ptx = String::from_utf8(ptx).context("nvrtc returned PTX that is not UTF-8")?;
    ctx.load_module(Ptx::from_src(ptx)).map_err(|e| {
        anyhow!(
            "kernel module {:?}: {reason}; compiling it with nvrtc {}.{} did not help: {}; PTX compute_{cc}: {e:?}",
            m.name,
            version.0,
            version.1,
            errors.join("; ")
        )
    })
}

fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        bail!("nvrtcVersion failed: {status:?}");
    }
    Ok((major, minor))
}

/// Compiles the embedded source with the run-time nvrtc (same options as build.rs) for `arch`
/// (`sm_XX` with `cubin`, else `compute_XX`). Returns the cubin or NUL-free PTX. Needs no GPU;
/// call [`libs::nvrtc_available`] first (cudarc panics when nvrtc is missing).
pub fn compile_embedded(m: &KernelModule, arch: &str, cubin: bool) -> Result<Vec<u8>> {
    compile(m, arch, cubin)
}

fn compile(m: &KernelModule, arch: &str, cubin: bool) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    let src = CString::new(m.source).context("kernel source contains a NUL byte")?;
    let name = CString::new(format!("{}.cu", m.name)).unwrap();
    let prog = result::create_program(&src, Some(&name)).map_err(|e| anyhow!("{e:?}"))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    // SAFETY: `prog` is live until destroyed at the end; buffers are sized by the *Size calls.
    let out = unsafe {
        if let Err(e) = result::compile_program(prog, &opts) {
            let log = result::get_program_log(prog)
                .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(anyhow!(
                "nvrtc could not compile kernels/{}.cu for {arch}: {e:?}\n{log}",
                m.name
            ))
        } else if cubin {
            let mut size = 0usize;
            let r = sys::nvrtcGetCUBINSize(prog, &mut size);
            let mut buf = vec![0u8; size];
            if r != sys::nvrtcResult::NVRTC_SUCCESS
                || sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
                    != sys::nvrtcResult::NVRTC_SUCCESS
                || size == 0
            {
                Err(anyhow!("nvrtc made no cubin for {arch}"))
            } else {
                Ok(buf)
            }
        } else {
            result::get_ptx(prog)
                .map(|p| {
                    let bytes: Vec<u8> = p.iter().map(|&c| c as u8).collect();
                    bytes.into_iter().take_while(|&b| b != 0).collect()
                })
                .map_err(|e| anyhow!("nvrtcGetPTX: {e:?}"))
        }
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static CUBINS: &[(u32, &[u8])] = &[(75, b"a"), (80, b"b"), (86, b"c"), (90, b"d")];
    const M: KernelModule = KernelModule {
        name: "t",
        source: "",
        ptx: Some("ptx"),
        cubins: CUBINS,
    };

    #[test]
    fn exact_cubin_then_ptx() {
        assert_eq!(
            candidate_images(&M, 86),
            vec![Image::Cubin(86, b"c"), Image::Ptx("ptx")]
        );
    }

    #[test]
    fn same_major_lower_minor_cubin() {
        // sm_89 (Ada) runs sm_86 cubins; sm_87 would too.
        assert_eq!(candidate_images(&M, 89)[0], Image::Cubin(86, b"c"));
    }

    #[test]
    fn newer_major_gets_ptx_only() {
        assert_eq!(candidate_images(&M, 120), vec![Image::Ptx("ptx")]);
    }

    #[test]
    fn nothing_for_older_gpu_or_source_only() {
        assert!(candidate_images(&M, 70).is_empty());
        let src_only = KernelModule {
            ptx: None,
            cubins: &[],
            ..M
        };
        assert!(candidate_images(&src_only, 90).is_empty());
    }
}
