//! Helpers shared by the test binaries (each `mod common;` compiles its own copy, hence the
//! dead-code allowance: not every binary uses every helper).
#![allow(dead_code)]

use artgan::backend::{backend, Device};
use std::path::Path;
use std::process::{Command, Output};

/// Runs the `artgan` binary in `cwd`.
pub fn artgan(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_artgan"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run artgan")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed with exactly one line, `error: …`, containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
}

/// CUDA device 0 when its backend works (printing the device's name, so an emulated run says
/// so), else `None` after printing `skipped: <reason>`; with `ARTGAN_REQUIRE_GPU=1` a missing
/// device fails the test instead.
pub fn gpu_device() -> Option<Device> {
    match backend(Device::Cuda(0)) {
        Ok(_) => {
            println!("device: {}", artgan::backend::cuda::device_name(0));
            Some(Device::Cuda(0))
        }
        Err(e) => {
            if std::env::var("ARTGAN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("ARTGAN_REQUIRE_GPU=1 but the CUDA backend is unavailable: {e:#}");
            }
            let msg = format!("{e:#}");
            println!("skipped: {}", msg.lines().next().unwrap_or_default());
            None
        }
    }
}
