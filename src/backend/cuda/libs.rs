//! Finding the CUDA libraries before cudarc needs them.
//!
//! cudarc (feature `dynamic-loading`) dlopens libcuda, nvrtc, cuBLAS and cuDNN *by soname only*
//! and panics when one is missing. Users often have them where the dynamic linker does not look
//! (pip wheels such as PyTorch's `site-packages/nvidia/*/lib`, `/usr/local/cuda/lib64` without
//! an ld.so.conf entry). So [`ensure_libraries`] looks in those places and dlopens what it finds
//! by full path with `RTLD_GLOBAL`, leaking the handle: glibc matches a later `dlopen("libX.so.N")`
//! against the SONAME of objects already loaded, so cudarc's own dlopen then finds ours
//! (checked: a copy of libnvrtc.so.12 under another file name, loaded by path, satisfies a later
//! dlopen of "libnvrtc.so.12" with the same handle). The same holds for libraries that a loaded
//! one needs (cuBLAS needs cuBLASLt), which is why dependencies are loaded first.
//!
//! FOR THE BACKEND: call `ensure_libraries(..)` at the top of `CudaBackend::new`, before any
//! cudarc call (`CudaContext::new` included), and wrap cudarc calls that may hit a missing
//! symbol in [`catch_cudarc_panic`].

use super::err::drv;
use anyhow::{anyhow, Result};
use cudarc::driver::CudaContext;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// One library we need, by the sonames we accept (best first) and how a user gets it.
#[derive(Clone, Copy, Debug)]
pub struct LibSpec {
    pub what: &'static str,
    pub sonames: &'static [&'static str],
    pub install: &'static str,
    /// Functions cudarc calls first: a file under the library's name that lacks one is not
    /// the library (cudarc would panic at the first call).
    pub symbols: &'static [&'static str],
}

pub const LIBCUDA: LibSpec = LibSpec {
    what: "CUDA driver library",
    sonames: &["libcuda.so.1"],
    install: "it comes with the NVIDIA driver: install the driver (535 or newer); in a \
              container, run it with GPU access (e.g. `docker run --gpus all`)",
    symbols: &["cuInit", "cuDriverGetVersion", "cuDeviceGetCount"],
};
pub const NVRTC: LibSpec = LibSpec {
    what: "nvrtc (run-time CUDA compiler)",
    sonames: &["libnvrtc.so.13", "libnvrtc.so.12"],
    install: "`pip install nvidia-cuda-nvrtc-cu12` (or `scripts/install-nvrtc`) and put its lib \
              folder on LD_LIBRARY_PATH",
    symbols: &["nvrtcVersion", "nvrtcCreateProgram", "nvrtcCompileProgram"],
};
pub const CUBLASLT: LibSpec = LibSpec {
    what: "cuBLASLt",
    sonames: &["libcublasLt.so.13", "libcublasLt.so.12"],
    install: "`pip install nvidia-cublas-cu12` (or the CUDA toolkit) and put its lib folder on \
              LD_LIBRARY_PATH",
    symbols: &["cublasLtCreate"],
};
pub const CUBLAS: LibSpec = LibSpec {
    what: "cuBLAS",
    sonames: &["libcublas.so.13", "libcublas.so.12"],
    install: "`pip install nvidia-cublas-cu12` (or the CUDA toolkit) and put its lib folder on \
              LD_LIBRARY_PATH",
    symbols: &["cublasCreate_v2", "cublasGetProperty"],
};
pub const CUDNN: LibSpec = LibSpec {
    what: "cuDNN 9",
    sonames: &["libcudnn.so.9"],
    install: "`pip install nvidia-cudnn-cu12` and put its lib folder on LD_LIBRARY_PATH, or use \
              `--conv-impl own`",
    symbols: &["cudnnCreate", "cudnnGetVersion"],
};

/// NCCL, for training on several GPUs only: one GPU and the CPU never load it, so it is not
/// part of [`ensure_libraries`]; the multi-GPU path calls [`ensure_nccl`].
pub const NCCL: LibSpec = LibSpec {
    what: "NCCL, only needed for training on several GPUs",
    sonames: &["libnccl.so.2"],
    install: "`pip install nvidia-nccl-cu12` (`nvidia-nccl-cu13` with CUDA 13) and put its lib \
              folder on LD_LIBRARY_PATH",
    symbols: &["ncclGetVersion", "ncclCommInitRank", "ncclAllReduce"],
};

/// Result of each library looked up so far: where it was loaded from, or the error text.
/// Cached so a failing lookup (which may run python3) happens once per process.
fn cache() -> &'static Mutex<HashMap<&'static str, Result<String, String>>> {
    static C: OnceLock<Mutex<HashMap<&'static str, Result<String, String>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Makes sure libcuda, cuBLASLt, cuBLAS (and cuDNN with its sub-libraries when `need_cudnn`)
/// can be dlopened by soname, loading them from the usual places if needed. nvrtc is loaded
/// when found but only required when some kernel module was embedded without any compiled
/// image (see [`nvrtc_required`]); otherwise the run time only needs it as a fallback.
pub fn ensure_libraries(need_cudnn: bool) -> Result<()> {
    ensure(&LIBCUDA)?;
    let nvrtc = ensure(&NVRTC);
    if let Ok(path) = &nvrtc {
        preload_siblings(Path::new(path), |n| n.starts_with("libnvrtc-builtins.so"));
    }
    if nvrtc_required() {
        nvrtc?;
    }
    ensure(&CUBLASLT)?;
    ensure(&CUBLAS)?;
    if need_cudnn {
        ensure_cudnn()?;
    }
    Ok(())
}

/// cuDNN 9 and its sub-libraries (see [`preload_siblings`]). Part of `ensure_libraries(true)`.
pub fn ensure_cudnn() -> Result<()> {
    let path = ensure(&CUDNN)?;
    preload_siblings(Path::new(&path), |n| {
        n.starts_with("libcudnn_") && n.ends_with(".so.9")
    });
    Ok(())
}

/// Loads NCCL for a multi-GPU device list. Its error is the one to show: what is missing, where
/// we looked, how to install it, and that one GPU works without it.
pub fn ensure_nccl() -> Result<String> {
    ensure(&NCCL).map_err(|e| anyhow!(nccl_advice(&e.to_string())))
}

/// `error` (from [`ensure`] of [`NCCL`]) with its first line saying that one GPU needs no NCCL.
fn nccl_advice(error: &str) -> String {
    let (first, rest) = error.split_once('\n').unwrap_or((error, ""));
    let sep = if rest.is_empty() { "" } else { "\n" };
    format!("{first}; one GPU (`--device cuda:N`) works without it{sep}{rest}")
}

/// The version of the loaded NCCL ("2.23.4"), asked from the library (`ncclGetVersion`).
pub fn nccl_version() -> Option<String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    let path = ensure(&NCCL).ok()?;
    // SAFETY: NCCL is already loaded (checked for its symbols), so this only takes another
    // reference to it; the handle is dropped at the end.
    let lib = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) }.ok()?;
    // SAFETY: `ncclResult_t ncclGetVersion(int *version)`, a plain out-parameter.
    let get: libloading::os::unix::Symbol<unsafe extern "C" fn(*mut i32) -> i32> =
        unsafe { lib.get(b"ncclGetVersion") }.ok()?;
    let mut code = 0;
    // ncclSuccess is 0.
    (unsafe { get(&mut code) } == 0).then(|| nccl_version_text(code))
}

/// NCCL's version code as "major.minor.patch": major*10000 + minor*100 + patch since 2.9,
/// major*1000 + minor*100 + patch before (so a code below 10000 is the old encoding).
pub fn nccl_version_text(code: i32) -> String {
    let (major, rest) = if code >= 10000 {
        (code / 10000, code % 10000)
    } else {
        (code / 1000, code % 1000)
    };
    format!("{major}.{}.{}", rest / 100, rest % 100)
}

/// Whether the run time cannot work without nvrtc: a module was built with no PTX (nvrtc was
/// missing at build time).
pub fn nvrtc_required() -> bool {
    super::embedded::KERNEL_MODULES
        .iter()
        .any(|m| m.ptx.is_none())
}

/// Whether nvrtc is usable now (found by soname or preloaded by us).
pub fn nvrtc_available() -> bool {
    ensure(&NVRTC).is_ok()
}

/// Loads one library (first soname that works, by soname then by path). Returns where from.
pub fn ensure(spec: &LibSpec) -> Result<String> {
    let key = spec.sonames[0];
    if let Some(r) = cache().lock().unwrap().get(key) {
        return r.clone().map_err(|e| anyhow!(e));
    }
    let r = locate_and_load(spec);
    cache().lock().unwrap().insert(key, r.clone());
    r.map_err(|e| anyhow!(e))
}

fn locate_and_load(spec: &LibSpec) -> Result<String, String> {
    // Plain soname first: respects LD_LIBRARY_PATH, the ld cache and an already loaded copy.
    for soname in spec.sonames {
        match dlopen_checked(OsStr::new(soname), spec) {
            Ok(()) => return Ok((*soname).to_string()),
            // What the dynamic linker finds by this name is what cudarc would use: say so.
            Err(Unusable(e)) => return Err(e),
            Err(_) => {}
        }
    }
    let dirs = search_dirs();
    // The first file found under a soname that will not do, if none will.
    let mut unusable = None;
    for soname in spec.sonames {
        for dir in &dirs {
            let path = dir.join(soname);
            if path.is_file() {
                match dlopen_checked(path.as_os_str(), spec) {
                    Ok(()) => return Ok(path.display().to_string()),
                    // A file that exists but does not load (wrong arch, missing dependency,
                    // empty) is worth naming; otherwise the user sees only "not found".
                    Err(e) => {
                        let e = match e {
                            Unusable(e) => e,
                            Failed(e) => {
                                unusable_message(&path.to_string_lossy(), soname, spec, &e)
                            }
                        };
                        unusable.get_or_insert(e);
                    }
                }
            }
        }
    }
    Err(unusable.unwrap_or_else(|| not_found_message(spec, &dirs)))
}

/// One line: `path` is under the name `soname` of `spec` but cannot be used, and why.
fn unusable_message(path: &str, soname: &str, spec: &LibSpec, why: &str) -> String {
    format!(
        "{path}{UNUSABLE}{soname} ({}): {why}; remove it or point LD_LIBRARY_PATH / \
         ARTGAN_CUDA_LIBS / ARTGAN_NVRTC at the real library",
        spec.what
    )
}

/// The error text for a missing library. Its first line is short (it is what `--device auto`
/// prints); the rest says where we looked and how to install it.
pub fn not_found_message(spec: &LibSpec, dirs: &[PathBuf]) -> String {
    let mut m = format!(
        "{} not found ({})\n  looked for: by soname via the dynamic linker (LD_LIBRARY_PATH, ld.so cache), then in:",
        spec.sonames.join(" or "),
        spec.what
    );
    for d in dirs {
        m.push_str(&format!("\n    {}", d.display()));
    }
    m.push_str(&format!("\n  to install: {}", spec.install));
    m
}

/// Why a library file could not be used.
enum LoadError {
    /// The dynamic linker could not load it (missing, wrong arch, missing dependency).
    Failed(String),
    /// It loaded but lacks a function of `spec` (an empty or foreign file under its name).
    Unusable(String),
}
use LoadError::{Failed, Unusable};

/// Whether an error of [`ensure`] says a library was found but is not the library.
pub fn is_unusable(error: &str) -> bool {
    error.contains(UNUSABLE)
}
const UNUSABLE: &str = " is not a usable ";

/// [`dlopen_global`] of `name`, kept only when it has every symbol of `spec`; otherwise it is
/// closed again (so cudarc's own dlopen by soname does not pick it up) and the error names the
/// file and the first missing symbol.
fn dlopen_checked(name: &OsStr, spec: &LibSpec) -> Result<(), LoadError> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: as in `dlopen_global`: NVIDIA's libraries, whose initialisers are safe to run.
    let lib = unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| Failed(e.to_string()))?;
    // SAFETY: only the symbol's address is looked up; nothing is called.
    let missing = spec
        .symbols
        .iter()
        .find(|sym| unsafe { lib.get::<*const ()>(sym.as_bytes()) }.is_err());
    let Some(sym) = missing else {
        std::mem::forget(lib);
        return Ok(());
    };
    let file = Path::new(name)
        .file_name()
        .unwrap_or(name)
        .to_string_lossy();
    let path = loaded_path(&file).unwrap_or_else(|| name.to_string_lossy().into_owned());
    drop(lib);
    Err(Unusable(unusable_message(
        &path,
        &file,
        spec,
        &format!("it lacks the symbol {sym}"),
    )))
}

/// Where the dynamic linker really loaded the library whose file name starts with `soname`
/// (`/proc/self/maps`).
pub fn loaded_path(soname: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(soname))
        })
        .map(str::to_string)
}

fn dlopen_global(name: &OsStr) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: we load NVIDIA's libraries, whose initialisers are safe to run; the handle is
    // leaked on purpose so the library stays loaded for cudarc for the life of the process.
    match unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            std::mem::forget(lib);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Loads the libraries next to `lib` whose file names pass `wanted`. Why: cuDNN 9 is split, and
/// libcudnn.so.9 dlopens libcudnn_graph/ops/cnn/adv/engines_*.so.9 by soname when first used;
/// nvrtc loads libnvrtc-builtins the same way. Where the folder is not on the linker's path those
/// lookups fail (cuDNN then reports a cryptic sub-library error), so load them now. They may
/// depend on each other: retry until no more load.
fn preload_siblings(lib: &Path, wanted: impl Fn(&str) -> bool) {
    let dir = match lib.parent() {
        Some(d) if lib.is_absolute() => d.to_path_buf(),
        // Found by soname: the linker can find its siblings the same way.
        _ => return,
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut pending: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| wanted(&p.file_name().unwrap_or_default().to_string_lossy()))
        .collect();
    loop {
        let before = pending.len();
        pending.retain(|p| dlopen_global(p.as_os_str()).is_err());
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
}

/// Folders that may hold CUDA libraries, best first, existing ones only.
pub fn search_dirs() -> Vec<PathBuf> {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = Vec::new();
        // The nvrtc build.rs used (ARTGAN_NVRTC at build time) serves the run-time fallback too.
        for p in [
            std::env::var_os("ARTGAN_NVRTC").map(PathBuf::from),
            super::embedded::BUILD_NVRTC_PATH.map(PathBuf::from),
        ]
        .into_iter()
        .flatten()
        {
            dirs.push(if p.is_dir() {
                p
            } else {
                p.parent().map(Path::to_path_buf).unwrap_or_default()
            });
        }
        for var in ["ARTGAN_CUDA_LIBS", "LD_LIBRARY_PATH"] {
            if let Some(v) = std::env::var_os(var) {
                dirs.extend(std::env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()));
            }
        }
        for d in [
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/local/nvidia/lib64",
            "/usr/local/nvidia/lib",
            // WSL2 puts the driver's libcuda here.
            "/usr/lib/wsl/lib",
        ] {
            dirs.push(PathBuf::from(d));
        }
        for site in site_packages() {
            dirs.extend(nvidia_wheel_lib_dirs(&site));
        }
        let mut seen = std::collections::HashSet::new();
        dirs.retain(|d| d.is_dir() && seen.insert(d.canonicalize().unwrap_or(d.clone())));
        dirs
    })
    .clone()
}

/// `site/nvidia/*/lib`: one folder per NVIDIA wheel (cublas, cudnn, cuda_nvrtc, and `cu13`,
/// which holds cuBLAS and nvrtc in the CUDA 13 wheels).
pub fn nvidia_wheel_lib_dirs(site: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(site.join("nvidia"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("lib"))
        .filter(|p| p.is_dir())
        .collect();
    // cu13 first: with the cuda-13000 bindings, the 13 libraries are preferred.
    out.sort_by_key(|p| (!p.to_string_lossy().contains("/cu13/"), p.clone()));
    out
}

/// Python site-packages folders: `$VIRTUAL_ENV`'s, `~/.local`'s, and those of `python3` on
/// PATH (asked once; python3 missing is fine).
fn site_packages() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut add_pythons = |lib: PathBuf| {
        for e in std::fs::read_dir(&lib).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                out.push(e.path().join("site-packages"));
            }
        }
    };
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        add_pythons(PathBuf::from(v).join("lib"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        add_pythons(PathBuf::from(h).join(".local/lib"));
    }
    let script = "import site\n\
                  d = list(getattr(site, 'getsitepackages', lambda: [])())\n\
                  d.append(site.getusersitepackages())\n\
                  try:\n    import nvidia\n    d += [p + '/..' for p in nvidia.__path__]\n\
                  except Exception:\n    pass\n\
                  print('\\n'.join(d))";
    if let Ok(o) = std::process::Command::new("python3")
        .args(["-c", script])
        .stderr(std::process::Stdio::null())
        .output()
    {
        if o.status.success() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(PathBuf::from),
            );
        }
    }
    out
}

/// Runs `f` and turns a panic inside it into an error. cudarc panics on a missing library or
/// symbol (e.g. a driver older than its bindings); we want a message, not an abort of a
/// training run that could have fallen back to the CPU.
pub fn catch_cudarc_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        anyhow!("{what}: the CUDA library call failed: {msg}")
    })
}

/// The name of CUDA device `ordinal` as the driver reports it ("NVIDIA T4", or on the emulated
/// device "artgan emulated CUDA device (CPU, not a GPU)"); "unknown" if it cannot be read.
pub fn device_name(ordinal: usize) -> String {
    catch_cudarc_panic("reading the device name", || {
        CudaContext::new(ordinal).and_then(|c| c.name())
    })
    .ok()
    .and_then(|r| r.ok())
    .unwrap_or_else(|| "unknown".into())
}

/// CUDA devices the driver sees.
pub fn device_count() -> Result<usize> {
    ensure_libraries(false)?;
    catch_cudarc_panic("counting the CUDA devices", CudaContext::device_count)?
        .map(|n| n.max(0) as usize)
        .map_err(|e| drv(e, "counting the CUDA devices"))
}

/// The compute capability of CUDA device `ordinal` as (major, minor).
pub fn compute_capability(ordinal: usize) -> Result<(i32, i32)> {
    ensure_libraries(false)?;
    catch_cudarc_panic("reading the compute capability", || {
        CudaContext::new(ordinal).and_then(|c| c.compute_capability())
    })?
    .map_err(|e| {
        drv(
            e,
            &format!("cuda:{ordinal}: reading the compute capability"),
        )
    })
}

/// Total memory of CUDA device `ordinal` in bytes; `None` where it cannot be read.
pub fn total_memory(ordinal: usize) -> Option<u64> {
    ensure_libraries(false).ok()?;
    catch_cudarc_panic("reading the device memory", || {
        CudaContext::new(ordinal).and_then(|c| c.total_mem())
    })
    .ok()?
    .ok()
    .map(|b| b as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_library_places_and_install() {
        let m = not_found_message(&CUBLAS, &[PathBuf::from("/x/lib")]);
        let first = m.lines().next().unwrap();
        assert!(first.contains("libcublas.so.13 or libcublas.so.12 not found"));
        assert!(m.contains("/x/lib"));
        assert!(m.contains("pip install nvidia-cublas-cu12"));
    }

    #[test]
    fn nccl_version_codes_decode_both_encodings() {
        assert_eq!(nccl_version_text(22304), "2.23.4");
        assert_eq!(nccl_version_text(20900), "2.9.0");
        assert_eq!(nccl_version_text(21813), "2.18.13");
        // Before 2.9: major*1000 + minor*100 + patch.
        assert_eq!(nccl_version_text(2804), "2.8.4");
    }

    #[test]
    fn nccl_error_says_why_it_is_needed_and_how_to_get_it() {
        let missing = not_found_message(&NCCL, &[PathBuf::from("/x/lib")]);
        let m = nccl_advice(&missing);
        let first = m.lines().next().unwrap();
        assert!(
            first.starts_with(
                "libnccl.so.2 not found (NCCL, only needed for training on several GPUs); "
            ),
            "{m}"
        );
        assert!(
            first.contains("one GPU (`--device cuda:N`) works without it"),
            "{m}"
        );
        assert!(m.contains("/x/lib"), "{m}");
        assert!(m.contains("pip install nvidia-nccl-cu12"), "{m}");
        assert!(m.contains("nvidia-nccl-cu13"), "{m}");
        // What ensure_nccl gives on this machine: NCCL, or that advice.
        match ensure_nccl() {
            Ok(path) => assert!(path.contains("libnccl.so.2"), "{path}"),
            Err(e) => assert!(e.to_string().contains("works without it"), "{e}"),
        }
    }

    #[test]
    fn wheel_dirs_prefer_cu13() {
        let t = std::env::temp_dir().join(format!("artgan-libs-test-{}", std::process::id()));
        for w in ["cublas", "cu13", "cudnn", "cuda_nvrtc"] {
            std::fs::create_dir_all(t.join("nvidia").join(w).join("lib")).unwrap();
        }
        std::fs::create_dir_all(t.join("nvidia/no_lib_here")).unwrap();
        let d = nvidia_wheel_lib_dirs(&t);
        assert_eq!(d.len(), 4);
        assert!(d[0].ends_with("cu13/lib"));
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn panics_become_errors() {
        let r: Result<()> = catch_cudarc_panic("probe", || panic!("Missing symbol cuFoo"));
        assert!(r.unwrap_err().to_string().contains("Missing symbol cuFoo"));
    }
}
