//! Compiles every `kernels/*.cu` ahead of time with NVIDIA's nvrtc and embeds the results.
//!
//! Why at build time: CI has no GPU but can install nvrtc from PyPI, so a kernel that does not
//! compile fails CI instead of a user's first GPU run. Why these images:
//! - PTX for `compute_75`, made by an old nvrtc (12.2, ISA 8.2), because a driver rejects PTX
//!   newer than itself and T4 machines often run driver 535 (= CUDA 12.2);
//! - cubins for the common architectures, so those GPUs skip the driver's PTX JIT entirely.
//!
//! nvrtc is loaded with `libloading` and called through its C API (not through cudarc) because
//! we must choose *which* libnvrtc to load, by path: cudarc only dlopens by soname.
//!
//! Where no nvrtc is found the build still succeeds (a CPU-only user should not need CUDA to
//! build) and only the sources are embedded; the run time compiles them with a local nvrtc.
//! `ARTGAN_REQUIRE_NVRTC=1` turns that case into an error (CI sets it).

use std::collections::HashSet;
use std::env;
use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The PTX target: the oldest architecture we support (T4), so the PTX runs everywhere newer.
const PTX_ARCH: u32 = 75;
/// Cubins we try to make; an nvrtc that cannot target one (per nvrtcGetSupportedArchs) skips it.
const CUBIN_ARCHS: &[u32] = &[75, 80, 86, 89, 90];

/// The generated Rust: the embedded images and each module's kernel names.
#[path = "build/tables.rs"]
mod tables;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "ARTGAN_NVRTC",
        "ARTGAN_REQUIRE_NVRTC",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels_dir = manifest_dir.join("kernels");
    let out_kernels = out_dir.join("kernels");
    // Start clean so a deleted kernel does not linger in OUT_DIR.
    let _ = fs::remove_dir_all(&out_kernels);
    fs::create_dir_all(&out_kernels).unwrap();

    let sources = read_kernel_sources(&kernels_dir);

    let require = env::var("ARTGAN_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let nvrtc = if sources.is_empty() {
        None
    } else {
        match Nvrtc::find() {
            Ok(n) => Some(n),
            Err(looked) => {
                if require {
                    eprintln!(
                        "error: ARTGAN_REQUIRE_NVRTC=1 but no usable nvrtc was found.\n\
                         Looked in:\n{looked}\n\
                         Install one with `scripts/install-nvrtc` and set ARTGAN_NVRTC to the \
                         folder it prints."
                    );
                    std::process::exit(1);
                }
                println!(
                    "cargo:warning=no nvrtc found; kernels will be compiled at run time: \
                     install with scripts/install-nvrtc (then set ARTGAN_NVRTC)"
                );
                None
            }
        }
    };

    let compiled = match &nvrtc {
        Some(n) => compile_all(n, &sources),
        None => sources.iter().map(|_| Compiled::default()).collect(),
    };

    let generated = tables::images(&out_kernels, &sources, &compiled, nvrtc.as_ref());
    fs::write(out_dir.join("kernels.rs"), generated).unwrap();
    let names = tables::kernel_names(&sources).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    fs::write(out_dir.join("kernel_names.rs"), names).unwrap();
}

/// One kernel file, with its local `#include "…"` headers inlined.
struct KernelSource {
    /// File stem: the name the backend loads the module by.
    name: String,
    /// Self-contained source (local headers inlined behind `#line` markers so nvrtc's errors
    /// still name the original file and line). Self-contained because the run-time fallback
    /// compiles it with no include path at all.
    text: String,
}

fn read_kernel_sources(dir: &Path) -> Vec<KernelSource> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            println!("cargo:rerun-if-changed={}", path.display());
            let mut seen = HashSet::new();
            let text = inline_local_includes(path, dir, &mut seen).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(1);
            });
            KernelSource {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                text,
            }
        })
        .collect()
}

/// Replaces `#include "x"` (quotes: our own headers in `kernels/`) by the file's text, once per
/// header (they are include-guarded or `#pragma once` anyway). `<…>` includes are left to nvrtc.
fn inline_local_includes(
    path: &Path,
    dir: &Path,
    seen: &mut HashSet<PathBuf>,
) -> Result<String, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        if let Some(header) = quoted_include(line) {
            let header_path = dir.join(header);
            if !header_path.is_file() {
                return Err(format!(
                    "{}:{}: included header {} not found in {}",
                    path.display(),
                    i + 1,
                    header,
                    dir.display()
                ));
            }
            println!("cargo:rerun-if-changed={}", header_path.display());
            if seen.insert(header_path.clone()) {
                writeln!(out, "#line 1 \"{header}\"").unwrap();
                out.push_str(&inline_local_includes(&header_path, dir, seen)?);
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            writeln!(out, "#line {} \"{file_name}\"", i + 2).unwrap();
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn quoted_include(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

#[derive(Default)]
struct Compiled {
    ptx: Option<Vec<u8>>,
    cubins: Vec<(u32, Vec<u8>)>,
}

type NvrtcProgram = *mut std::ffi::c_void;
type FnVersion = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type FnCreate = unsafe extern "C" fn(
    *mut NvrtcProgram,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type FnCompile = unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int;
type FnSize = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int;
type FnGet = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int;
type FnDestroy = unsafe extern "C" fn(*mut NvrtcProgram) -> c_int;
type FnNumArchs = unsafe extern "C" fn(*mut c_int) -> c_int;
type FnArchs = unsafe extern "C" fn(*mut c_int) -> c_int;

/// The nvrtc C entry points we use, resolved from one loaded library.
struct Nvrtc {
    path: PathBuf,
    version: (i32, i32),
    supported_archs: Option<Vec<i32>>,
    create: FnCreate,
    compile: FnCompile,
    log_size: FnSize,
    log: FnGet,
    ptx_size: FnSize,
    ptx: FnGet,
    cubin_size: FnSize,
    cubin: FnGet,
    destroy: FnDestroy,
    // Keeps the function pointers above valid.
    _lib: libloading::Library,
}

impl Nvrtc {
    /// Tries each candidate in priority order; on failure returns the list of places looked.
    fn find() -> Result<Nvrtc, String> {
        let mut looked = String::new();
        let mut dirs_listed = HashSet::new();
        let explicit = env::var_os("ARTGAN_NVRTC").is_some_and(|v| !v.is_empty());
        let candidates = nvrtc_candidates()
            .into_iter()
            .filter(|(origin, _)| !explicit || origin == "ARTGAN_NVRTC");
        for (origin, path) in candidates {
            if !path.is_file() {
                // One line per folder: the names tried are the same everywhere.
                // ARTGAN_NVRTC may name the library file itself: then show that.
                let names_file = origin == "ARTGAN_NVRTC"
                    && !Path::new(&env::var_os("ARTGAN_NVRTC").unwrap()).is_dir();
                let dir = match path.parent() {
                    Some(d) if !names_file => d.to_path_buf(),
                    _ => path.clone(),
                };
                if dirs_listed.insert(dir.clone()) {
                    writeln!(looked, "  {} ({origin}): no libnvrtc", dir.display()).unwrap();
                }
                continue;
            }
            match Nvrtc::load(&path) {
                Ok(n) => return Ok(n),
                Err(e) => writeln!(looked, "  {} ({origin}): {e}", path.display()).unwrap(),
            }
        }
        if explicit {
            // Asked for a specific nvrtc: silently using another (say a newer toolkit's, whose
            // PTX old drivers reject) would hide the mistake.
            eprintln!(
                "error: ARTGAN_NVRTC={:?} holds no loadable libnvrtc. Looked in:\n{looked}",
                env::var_os("ARTGAN_NVRTC").unwrap()
            );
            std::process::exit(1);
        }
        Err(looked)
    }

    fn load(path: &Path) -> Result<Nvrtc, String> {
        // nvrtc dlopens libnvrtc-builtins from its own folder; loading it first by full path
        // makes that independent of how this particular nvrtc build looks it up.
        if let Some(dir) = path.parent() {
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with("libnvrtc-builtins.so") {
                        // SAFETY: loading NVIDIA's library runs only its (trusted) initialisers.
                        if let Ok(lib) = unsafe {
                            libloading::os::unix::Library::open(
                                Some(e.path()),
                                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                            )
                        } {
                            std::mem::forget(lib);
                        }
                    }
                }
            }
        }
        // SAFETY: as above; the symbols are typed after nvrtc.h.
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
            let sym = |name: &str| -> Result<*const (), String> {
                lib.get::<*const ()>(name.as_bytes())
                    .map(|s| *s)
                    .map_err(|e| format!("missing {name}: {e}"))
            };
            macro_rules! f {
                ($name:literal, $ty:ty) => {
                    std::mem::transmute::<*const (), $ty>(sym($name)?)
                };
            }
            let version_fn = f!("nvrtcVersion", FnVersion);
            let (mut major, mut minor) = (0, 0);
            check(version_fn(&mut major, &mut minor), "nvrtcVersion")?;
            let supported_archs = match (
                sym("nvrtcGetNumSupportedArchs"),
                sym("nvrtcGetSupportedArchs"),
            ) {
                (Ok(num), Ok(list)) => {
                    let num: FnNumArchs = std::mem::transmute::<*const (), FnNumArchs>(num);
                    let list: FnArchs = std::mem::transmute::<*const (), FnArchs>(list);
                    let mut n = 0;
                    check(num(&mut n), "nvrtcGetNumSupportedArchs")?;
                    let mut archs = vec![0; n.max(0) as usize];
                    check(list(archs.as_mut_ptr()), "nvrtcGetSupportedArchs")?;
                    Some(archs)
                }
                _ => None,
            };
            Ok(Nvrtc {
                path: path.to_path_buf(),
                version: (major, minor),
                supported_archs,
                create: f!("nvrtcCreateProgram", FnCreate),
                compile: f!("nvrtcCompileProgram", FnCompile),
                log_size: f!("nvrtcGetProgramLogSize", FnSize),
                log: f!("nvrtcGetProgramLog", FnGet),
                ptx_size: f!("nvrtcGetPTXSize", FnSize),
                ptx: f!("nvrtcGetPTX", FnGet),
                cubin_size: f!("nvrtcGetCUBINSize", FnSize),
                cubin: f!("nvrtcGetCUBIN", FnGet),
                destroy: f!("nvrtcDestroyProgram", FnDestroy),
                _lib: lib,
            })
        }
    }

    fn supports(&self, sm: u32) -> bool {
        match &self.supported_archs {
            Some(a) => a.contains(&(sm as i32)),
            None => true,
        }
    }

    /// Compiles `src` for `arch` (`compute_XX` gives PTX, `sm_XX` a cubin). Err holds the log.
    fn compile(&self, name: &str, src: &str, arch: &str, cubin: bool) -> Result<Vec<u8>, String> {
        let c_src = CString::new(src).map_err(|_| "source contains a NUL byte".to_string())?;
        let c_name = CString::new(format!("{name}.cu")).unwrap();
        let opts: Vec<CString> = [
            format!("--gpu-architecture={arch}"),
            "-std=c++17".into(),
            "-default-device".into(),
            "-lineinfo".into(),
            // No --use_fast_math: results must match the CPU reference closely.
        ]
        .into_iter()
        .map(|s| CString::new(s).unwrap())
        .collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: every pointer passed lives until the program is destroyed below; buffers are
        // sized by the matching *Size call.
        unsafe {
            let mut prog: NvrtcProgram = std::ptr::null_mut();
            check(
                (self.create)(
                    &mut prog,
                    c_src.as_ptr(),
                    c_name.as_ptr(),
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                ),
                "nvrtcCreateProgram",
            )?;
            let status = (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let result = if status != 0 {
                let mut size = 0;
                let _ = (self.log_size)(prog, &mut size);
                let mut log = vec![0u8; size.max(1)];
                let _ = (self.log)(prog, log.as_mut_ptr().cast());
                let log = CStr::from_bytes_until_nul(&log)
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(format!(
                    "nvrtc error {status} for {arch} (options: {}):\n{log}",
                    opts.iter()
                        .map(|o| o.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
            } else {
                let (size_fn, get_fn, what) = if cubin {
                    (self.cubin_size, self.cubin, "nvrtcGetCUBIN")
                } else {
                    (self.ptx_size, self.ptx, "nvrtcGetPTX")
                };
                let mut size = 0;
                check(size_fn(prog, &mut size), what).and_then(|_| {
                    let mut buf = vec![0u8; size];
                    check(get_fn(prog, buf.as_mut_ptr().cast()), what)?;
                    if !cubin {
                        // PTX comes NUL-terminated; the embedded &str should not carry it.
                        while buf.last() == Some(&0) {
                            buf.pop();
                        }
                    }
                    Ok(buf)
                })
            };
            (self.destroy)(&mut prog);
            result
        }
    }
}

fn check(status: c_int, what: &str) -> Result<(), String> {
    if status == 0 {
        Ok(())
    } else {
        Err(format!("{what} failed with nvrtc error {status}"))
    }
}

/// Where to look for nvrtc, best first: explicit env var, LD_LIBRARY_PATH, pip wheels, the
/// CUDA toolkit. Within a folder `.so.12` comes before `.so.13` because 12.x emits PTX that
/// older drivers accept; the CI install pins 12.2.
fn nvrtc_candidates() -> Vec<(String, PathBuf)> {
    const NAMES: &[&str] = &["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"];
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let add_dir = |origin: &str, dir: &Path, out: &mut Vec<(String, PathBuf)>| {
        for n in NAMES {
            out.push((origin.to_string(), dir.join(n)));
        }
    };
    if let Some(v) = env::var_os("ARTGAN_NVRTC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if p.is_dir() {
            add_dir("ARTGAN_NVRTC", &p, &mut out);
        } else {
            out.push(("ARTGAN_NVRTC".into(), p));
        }
    }
    if let Some(v) = env::var_os("LD_LIBRARY_PATH") {
        for d in env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()) {
            add_dir("LD_LIBRARY_PATH", &d, &mut out);
        }
    }
    for site in python_site_dirs() {
        let nv = site.join("nvidia");
        add_dir("pip wheel", &nv.join("cuda_nvrtc/lib"), &mut out);
        add_dir("pip wheel", &nv.join("cu13/lib"), &mut out);
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
    ] {
        add_dir("CUDA toolkit", Path::new(d), &mut out);
    }
    let mut seen = HashSet::new();
    out.retain(|(_, p)| seen.insert(p.clone()));
    out
}

/// site-packages folders of the `python3` on PATH (and of `$VIRTUAL_ENV`), where pip puts the
/// `nvidia-*` wheels. Python missing is fine: we just look elsewhere.
fn python_site_dirs() -> Vec<PathBuf> {
    let script = "import site, sys\n\
                  dirs = list(getattr(site, 'getsitepackages', lambda: [])())\n\
                  dirs.append(site.getusersitepackages())\n\
                  try:\n    import nvidia\n    dirs += [p + '/..' for p in nvidia.__path__]\n\
                  except Exception:\n    pass\n\
                  print('\\n'.join(dirs))";
    let mut dirs: Vec<PathBuf> = Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    if let Some(venv) = env::var_os("VIRTUAL_ENV") {
        let lib = PathBuf::from(venv).join("lib");
        if let Ok(entries) = fs::read_dir(&lib) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("python3") {
                    dirs.push(e.path().join("site-packages"));
                }
            }
        }
    }
    dirs.into_iter()
        .map(|d| d.canonicalize().unwrap_or(d))
        .collect()
}

/// Compiles every (kernel, target) pair on a few threads: nvrtc is thread-safe across
/// programs, and one build is ~6 compilations per kernel file.
fn compile_all(nvrtc: &Nvrtc, sources: &[KernelSource]) -> Vec<Compiled> {
    // (kernel index, sm, is cubin)
    let mut jobs: Vec<(usize, u32, bool)> = Vec::new();
    for i in 0..sources.len() {
        if nvrtc.supports(PTX_ARCH) {
            jobs.push((i, PTX_ARCH, false));
        }
        for &sm in CUBIN_ARCHS {
            if nvrtc.supports(sm) {
                jobs.push((i, sm, true));
            }
        }
    }
    let next = AtomicUsize::new(0);
    // (kernel index, sm, is cubin, image or nvrtc log)
    type JobResult = (usize, u32, bool, Result<Vec<u8>, String>);
    let results: Mutex<Vec<JobResult>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, sm, cubin)) = jobs.get(j) else {
                    break;
                };
                let arch = if cubin {
                    format!("sm_{sm}")
                } else {
                    format!("compute_{sm}")
                };
                let r = nvrtc.compile(&sources[i].name, &sources[i].text, &arch, cubin);
                results.lock().unwrap().push((i, sm, cubin, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| (r.0, r.1, r.2));

    let mut failed = false;
    let mut out: Vec<Compiled> = sources.iter().map(|_| Compiled::default()).collect();
    let mut reported = HashSet::new();
    for (i, sm, cubin, r) in results {
        match r {
            Ok(bytes) if cubin => out[i].cubins.push((sm, bytes)),
            Ok(bytes) => out[i].ptx = Some(bytes),
            Err(log) => {
                failed = true;
                // The same source error repeats for every architecture; show it once per file.
                if reported.insert(i) {
                    eprintln!(
                        "error: kernels/{}.cu does not compile with nvrtc {}.{} ({}):\n{log}",
                        sources[i].name,
                        nvrtc.version.0,
                        nvrtc.version.1,
                        nvrtc.path.display()
                    );
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    out
}
