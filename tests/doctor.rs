//! `artgan doctor` with no CUDA driver at all (this machine, CI) and on the emulated device
//! (`scripts/cuda-emu cargo test --test doctor` with `ARTGAN_CUDA_EMULATED=1`).

use std::process::Command;

fn doctor(env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_artgan"));
    c.arg("doctor");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run artgan doctor");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn has_driver() -> bool {
    artgan::backend::cuda::libs::ensure(&artgan::backend::cuda::libs::LIBCUDA).is_ok()
}

#[test]
fn doctor_without_a_driver_says_so_and_picks_the_cpu() {
    if has_driver() {
        println!("skipped: this machine has a CUDA driver (libcuda.so.1 loads)");
        return;
    }
    let (ok, out, err) = doctor(&[]);
    assert!(ok, "doctor failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for want in [
        "libcuda      NOT FOUND: libcuda.so.1 not found",
        "driver: none (libcuda.so.1 not found)",
        // How to get each library: the pip wheels, and without Python.
        "pip install nvidia-cuda-nvrtc-cu12",
        "pip install nvidia-cublas-cu12",
        "pip install nvidia-cudnn-cu12",
        "without Python: NVIDIA's CUDA repository",
        "apt install nvidia-driver",
        "kernels in this binary: ",
        "--device auto: cpu, because no usable CUDA device: cannot use cuda:0: libcuda.so.1 not found",
    ] {
        assert!(out.contains(want), "doctor output lacks {want:?}:\n{out}");
    }
    for lib in ["libnvrtc", "libcublasLt", "libcublas ", "libcudnn"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(lib.trim())),
            "no line for {lib}:\n{out}"
        );
    }
}

/// Runs when `ARTGAN_CUDA_EMULATED=1` (under `scripts/cuda-emu`, whose libcuda names its
/// device "... emulated ..."); otherwise prints `skipped: …`, or fails with
/// `ARTGAN_REQUIRE_GPU=1`.
#[test]
fn doctor_on_the_emulated_device() {
    if std::env::var("ARTGAN_CUDA_EMULATED").as_deref() != Ok("1") {
        let why = "skipped: not under the CUDA emulator (set ARTGAN_CUDA_EMULATED=1 and run \
                   through scripts/cuda-emu)";
        if std::env::var("ARTGAN_REQUIRE_GPU").as_deref() == Ok("1") {
            panic!("ARTGAN_REQUIRE_GPU=1 but {why}");
        }
        println!("{why}");
        return;
    }
    let (ok, out, err) = doctor(&[]);
    assert!(ok, "doctor failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = |prefix: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{out}"))
            .to_string()
    };
    assert!(line("libcuda").contains("found: "), "{out}");
    assert!(
        line("driver: CUDA ").contains("accepts PTX ISA up to"),
        "{out}"
    );
    let device = line("device cuda:0: ");
    assert!(
        device.contains("emulated") && device.contains("(sm_"),
        "{device}"
    );
    let image = line("kernel image: ");
    assert!(
        image.contains("cubin for sm_") || image.contains("PTX") || image.contains("nvrtc"),
        "{image}"
    );
    assert!(line("GPU memory: ").contains("GiB free of"), "{out}");
    // `auto` never picks the emulated device (it is slower than the CPU backend), and says so.
    let auto = line("--device auto: ");
    assert!(
        auto.starts_with("--device auto: cpu, because") && auto.contains("emulated"),
        "{out}"
    );
}

/// A file under a CUDA library's name that is not the library (a shared object without its
/// functions, or an empty file), found through LD_LIBRARY_PATH, ARTGAN_CUDA_LIBS or
/// ARTGAN_NVRTC: `doctor` calls it unusable, naming the file and the missing symbol, and
/// `train --device cuda` fails with that one line; no panic from cudarc.
#[test]
fn a_library_without_its_symbols_is_unusable_not_a_panic() {
    if has_driver() {
        println!("skipped: this machine has a CUDA driver (libcuda.so.1 loads)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("empty.c");
    std::fs::write(&src, "int not_cuda(void) { return 0; }\n").unwrap();
    let libs = dir.path().join("libs");
    std::fs::create_dir(&libs).unwrap();
    let so = libs.join("libcuda.so.1");
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(cc.success());
    for name in ["libnvrtc.so.12", "libcublas.so.12"] {
        std::fs::copy(&so, libs.join(name)).unwrap();
    }
    // Not even an ELF file.
    std::fs::write(libs.join("libcudnn.so.9"), b"").unwrap();
    let dir_s = libs.to_str().unwrap();
    let run = |args: &[&str], var: &str, value: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_artgan"))
            .args(args)
            .env_remove("ARTGAN_NVRTC")
            .env_remove("ARTGAN_CUDA_LIBS")
            .env(var, value)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(!err.contains("panicked"), "{args:?} with {var}: {err}");
        (o.status.code(), out, err)
    };
    for var in ["LD_LIBRARY_PATH", "ARTGAN_CUDA_LIBS"] {
        let (code, out, err) = run(&["doctor"], var, dir_s);
        assert_eq!(code, Some(0), "{err}");
        for want in [
            format!("libcuda      UNUSABLE: {dir_s}/libcuda.so.1 is not a usable libcuda.so.1"),
            "it lacks the symbol cuInit".to_string(),
            format!("libnvrtc     UNUSABLE: {dir_s}/libnvrtc.so.12"),
            "it lacks the symbol nvrtcVersion".to_string(),
            format!("libcudnn     UNUSABLE: {dir_s}/libcudnn.so.9"),
            "driver: none (libcuda.so.1 is unusable, see above)".to_string(),
        ] {
            assert!(out.contains(&want), "{var}: doctor lacks {want:?}:\n{out}");
        }
        assert!(!out.contains(" found: "), "{var}: called found:\n{out}");

        let (code, _, err) = run(&["train", "--device", "cuda"], var, dir_s);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: cannot use cuda:0: "), "{err}");
        assert!(err.contains(&format!("{dir_s}/libcuda.so.1")), "{err}");
        assert!(err.contains("lacks the symbol cuInit"), "{err}");
        assert!(!dir.path().join("runs").exists(), "a folder was made");
    }
    // ARTGAN_NVRTC names the nvrtc file itself.
    let nvrtc = libs.join("libnvrtc.so.12");
    let (_, out, _) = run(&["doctor"], "ARTGAN_NVRTC", nvrtc.to_str().unwrap());
    assert!(
        out.contains(&format!("libnvrtc     UNUSABLE: {}", nvrtc.display())),
        "{out}"
    );
}

/// NCCL (several GPUs only) in its three states: missing (how to get it, and why it would be
/// wanted), found in a pip wheel's folder (path and the version `ncclGetVersion` gives, decoded),
/// and a file under its name without its functions (unusable). One GPU and the CPU never load
/// it, so none of this changes `--device auto`.
#[test]
fn doctor_reports_nccl_missing_found_in_a_wheel_or_unusable() {
    use artgan::backend::cuda::libs;
    if libs::ensure(&libs::NCCL).is_ok() {
        println!("skipped: this machine has libnccl.so.2 where the dynamic linker finds it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Builds `libnccl.so.2` in the folder `lib_dir` from the C source `code`.
    let cc = |lib_dir: &str, code: &str| -> std::path::PathBuf {
        let so = dir.path().join(lib_dir).join("libnccl.so.2");
        std::fs::create_dir_all(so.parent().unwrap()).unwrap();
        let src = so.with_file_name("nccl.c");
        std::fs::write(&src, code).unwrap();
        let ok = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(ok.success());
        so
    };
    // What NCCL 2.23.4 answers: major*10000 + minor*100 + patch.
    let real = cc(
        "venv/lib/python3.11/site-packages/nvidia/nccl/lib",
        "int ncclGetVersion(int *v) { *v = 22304; return 0; }\n\
         int ncclCommInitRank(void) { return 0; }\n\
         int ncclAllReduce(void) { return 0; }\n",
    );
    let fake = cc("fake", "int not_nccl(void) { return 0; }\n");
    let nccl_lines = |env: &[(&str, &str)]| -> String {
        let (ok, out, err) = doctor(env);
        assert!(ok && !err.contains("panicked"), "{err}");
        let at = out
            .lines()
            .position(|l| l.trim_start().starts_with("libnccl "))
            .unwrap_or_else(|| panic!("no libnccl line:\n{out}"));
        out.lines().skip(at).take(3).collect::<Vec<_>>().join("\n")
    };

    let missing = nccl_lines(&[("VIRTUAL_ENV", "/nonexistent")]);
    for want in [
        "libnccl      NOT FOUND: libnccl.so.2 not found (NCCL, only needed for training on \
         several GPUs)",
        "get it: `pip install nvidia-nccl-cu12` (`nvidia-nccl-cu13` with CUDA 13)",
        "`apt install libnccl2`",
    ] {
        assert!(missing.contains(want), "lacks {want:?}:\n{missing}");
    }

    let venv = dir.path().join("venv");
    let found = nccl_lines(&[("VIRTUAL_ENV", venv.to_str().unwrap())]);
    let want = format!("libnccl      found: {} (version 2.23.4)", real.display());
    assert_eq!(
        found.lines().next().unwrap().trim_end(),
        format!("  {want}")
    );

    let libs_dir = fake.parent().unwrap().to_str().unwrap();
    let unusable = nccl_lines(&[("ARTGAN_CUDA_LIBS", libs_dir)]);
    let want = format!(
        "libnccl      UNUSABLE: {} is not a usable libnccl.so.2 (NCCL, only needed for \
         training on several GPUs): it lacks the symbol ncclGetVersion",
        fake.display()
    );
    assert!(unusable.contains(&want), "lacks {want:?}:\n{unusable}");
    assert!(
        unusable.contains("pip install nvidia-nccl-cu12"),
        "{unusable}"
    );
}
