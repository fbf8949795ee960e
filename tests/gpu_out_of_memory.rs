//! Out of GPU memory in a training step: the error names the batch size that failed and a batch
//! size that fits (found by probing), and that advice holds. Sized from the device's free
//! memory, so any GPU runs it: the published classical model at 128 px on a real GPU; on the
//! emulated device, whose memory is host memory and whose probe steps run on the CPU, a small
//! dcgan in 64 MiB of device memory (its own test binary, so that capacity is set before the
//! device is first opened).
//!
//! Without a GPU it prints `skipped: <reason>`; with ARTGAN_REQUIRE_GPU=1 it fails.

use artgan::backend::{backend, Device};
use artgan::nn::{ModelConfig, Preset};
use artgan::tensor::Tensor;
use artgan::train::{TrainConfig, Trainer};

mod common;
use common::gpu_device as gpu;

/// Batches of one constant value, made on the device (a huge batch needs no host memory).
struct ConstantBatches {
    batch: usize,
    size: usize,
    served: bool,
}

impl artgan::train::BatchSource for ConstantBatches {
    fn image_count(&self) -> usize {
        self.batch
    }
    fn batches_per_epoch(&self) -> usize {
        1
    }
    fn start_epoch(&mut self, _epoch: usize) {
        self.served = false;
    }
    fn next_batch(&mut self, device: Device) -> anyhow::Result<Option<Tensor>> {
        if std::mem::replace(&mut self.served, true) {
            return Ok(None);
        }
        let s = self.size;
        Tensor::full(&[self.batch, 3, s, s], 0.25, device).map(Some)
    }
}

#[test]
fn out_of_gpu_memory_names_a_batch_size_that_fits() {
    // Read by the emulated device when it is first opened; a real driver ignores it.
    if std::env::var_os("ARTGAN_EMU_MEMORY_MIB").is_none() {
        std::env::set_var("ARTGAN_EMU_MEMORY_MIB", "64");
    }
    let Some(dev) = gpu() else { return };
    let model = if artgan::backend::cuda::device_name(0).contains("emulated") {
        ModelConfig {
            preset: Preset::Dcgan,
            image_size: 32,
            nz: 16,
            ngf: 8,
            ndf: 8,
        }
    } else {
        ModelConfig::full(Preset::Classical)
    };
    let (free, total) = cudarc::driver::result::mem_get_info().unwrap();
    let s = model.image_size;
    // The input batch takes a quarter of the free memory: it fits, while the step's activations
    // (the first discriminator layer alone holds more values per image than the input) do not.
    let batch = free / 4 / (3 * s * s * 4);
    println!(
        "{} MiB free of {} MiB: {} at {s} px, batch {batch}",
        free >> 20,
        total >> 20,
        model.preset
    );
    let mut cfg = TrainConfig::for_model(model.clone());
    cfg.batch_size = batch;
    cfg.epochs = 1;
    cfg.ema = false;
    let dir = tempfile::tempdir().unwrap();
    let mut data = ConstantBatches {
        batch,
        size: s,
        served: false,
    };
    let mut opts = artgan::train::RunOptions::new(dir.path().to_path_buf(), dev);
    let Err(err) = artgan::train::train(cfg, &mut data, &mut opts) else {
        panic!("a batch of {batch} trained: the test needs a larger batch");
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("out of GPU memory at batch size {batch}")),
        "{msg}"
    );
    let advised: usize = msg
        .split("--batch-size ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --batch-size advice in: {msg}"));
    assert!((2..batch).contains(&advised), "{msg}");
    // The advice holds: one step at that batch size runs.
    let mut cfg = TrainConfig::for_model(model.clone());
    cfg.batch_size = advised;
    cfg.d_steps = 1;
    let mut t = Trainer::new(cfg, dev).unwrap();
    let real = Tensor::full(&[advised, 3, s, s], 0.25, dev).unwrap();
    t.step(&real).unwrap();
    backend(dev).unwrap().synchronize().unwrap();
    println!(
        "out-of-memory advice at {s} px {}: --batch-size {advised}",
        model.preset
    );
}
