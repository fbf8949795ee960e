//! One training step (D step + G step + EMA, as `artgan train` does per batch) on a fixed random
//! batch, timed after a warm-up. The model and recipe come from the `train` command's own flags
//! after `--`, parsed by the same code (`artgan::cli::train_config`):
//!
//! ```sh
//! cargo bench --bench train_step -- --preset dcgan --image-size 32 --ngf 32 --ndf 32 \
//!     --nz 100 --batch-size 64 --device cpu
//! ```
//!
//! Without flags: the train command's defaults (dcgan 32 px, widths 32, batch 64) on the CPU.
//! `--device cuda` and `--conv-impl cudnn|own` choose the GPU configuration (one per run, so a
//! GPU session runs the few it has time for); `--precision fp32|amp|auto` as `train` resolves
//! it (auto: amp on CUDA devices of compute capability 7.0 or more); `--cuda-graphs on|off` as
//! in training (default on for CUDA: the step replayed as one CUDA graph; the device label then
//! ends in `-graphs`).
//! `--steps N` fixes the number of timed steps (default: up to 30 within 20 s, at least 5),
//! `--warmup N` the untimed ones before them (default 3).
//! Prints one line naming the device (with the convolution implementation on CUDA, and graphs),
//! the precision and the config, then `N images/s` (the median step) and, on CUDA, the peak
//! device memory of the timed steps: the caching allocator's high-water mark of bytes held by
//! tensors (what PyTorch reports as `max_memory_allocated`).
//!
//! A step is timed as training runs it: queued without reading anything back
//! ([`Trainer::step_deferred`]), the metrics read where training reads them (at the end of each
//! `--lr-window`), then a device synchronisation so the step's time is all its work.
//!
//! `--device cuda:0,1` (or `cuda:all`): data-parallel steps as `train` runs them on those GPUs
//! (`artgan::train::parallel`: one thread and replica per GPU, the batch split evenly, the
//! gradients averaged by NCCL). The bench first times one GPU on one GPU's share of the batch,
//! then all of them on the whole batch, and prints both lines and the scaling efficiency:
//! images/s on N GPUs over N × images/s on one. On the emulated device (where the GPUs share
//! the CPU) the line says `emulated`: such a figure measures nothing about GPUs.

use artgan::backend::Device;
use artgan::cli::{resolve_cuda_graphs, train_config, TrainArgs};
use artgan::rng::Rng;
use artgan::tensor::Tensor;
use artgan::train::{TrainConfig, Trainer};
use clap::Parser;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "train_step")]
struct BenchArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Timed steps (default: up to 30 within 20 s, at least 5).
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed steps first (a CUDA graph is captured at the second step of a shape; the slow
    /// emulated device measures memory with `--warmup 0 --steps 1 --cuda-graphs off`).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<String> = std::env::args().collect();
    // The train command defaults to --device auto; the bench defaults to the CPU.
    if !argv
        .iter()
        .any(|a| a == "--device" || a.starts_with("--device="))
    {
        argv.extend(["--device".to_string(), "cpu".to_string()]);
    }
    let args = BenchArgs::parse_from(argv);
    let devices = args.train.device.resolve_list()?;
    if devices.len() > 1 {
        return data_parallel(&args, &devices);
    }
    let mut cfg = train_config(&args.train)?;
    let device = args.train.device.resolve()?;
    cfg.precision = artgan::amp::resolve(args.train.precision, device)?;
    let graphs = resolve_cuda_graphs(&args.train, device)?;
    cfg.cuda_graphs = graphs;
    cfg.conv_impl = args.train.device.conv_impl();
    let graphs = if cfg.cuda_graphs { "-graphs" } else { "" };
    let (batch, size) = (cfg.batch_size, cfg.model.image_size);
    let name = format!("{}-{size}px-w{}-b{batch}", cfg.model.preset, cfg.model.ngf);
    let device_label = format!(
        "{}{graphs}-{}",
        device_label(device, cfg.conv_impl),
        cfg.precision
    );
    let mut trainer = Trainer::new(cfg, device)?;
    let mut rng = Rng::new(1);
    let real = Tensor::from_vec(
        rng.uniform_vec(batch * 3 * size * size, -1.0, 1.0),
        &[batch, 3, size, size],
        device,
    )?;
    for _ in 0..args.warmup {
        step(&mut trainer, &real)?;
    }
    let backend = real.backend();
    backend.synchronize()?;
    backend.reset_peak_memory();
    let mut times = Vec::new();
    let budget = Instant::now();
    let done = |n: usize, secs: f64| match args.steps {
        Some(s) => n >= s,
        None => n >= 30 || (n >= 5 && secs >= 20.0),
    };
    while !done(times.len(), budget.elapsed().as_secs_f64()) {
        let t = Instant::now();
        step(&mut trainer, &real)?;
        backend.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    // What the steps held at most: weights, Adam state and one step's activations and
    // gradients (the device allocator's high-water mark; the CPU has none).
    let peak = match backend.peak_memory_bytes() {
        Some(bytes) => format!(
            ", peak device memory {:.1} MiB",
            bytes as f64 / (1 << 20) as f64
        ),
        None => String::new(),
    };
    println!(
        "train_step/{device_label}/{name}: median {:.2} ms over {} runs, {:.1} images/s{peak}",
        median * 1e3,
        times.len(),
        batch as f64 / median
    );
    Ok(())
}

/// The config as `train` resolves it for a run on `device` with batch `batch`.
fn resolved_config(args: &BenchArgs, device: Device, batch: usize) -> anyhow::Result<TrainConfig> {
    let mut cfg = train_config(&args.train)?;
    cfg.precision = artgan::amp::resolve(args.train.precision, device)?;
    let graphs = resolve_cuda_graphs(&args.train, device)?;
    cfg.cuda_graphs = graphs;
    cfg.conv_impl = args.train.device.conv_impl();
    cfg.batch_size = batch;
    Ok(cfg)
}

/// Median step seconds of `devices` training `cfg` data-parallel (one device: alone), each
/// GPU on its thread with its replica, as `train` runs them.
fn parallel_step_seconds(
    args: &BenchArgs,
    cfg: &TrainConfig,
    devices: &[Device],
) -> anyhow::Result<f64> {
    use artgan::train::parallel::Part;
    let ranks = devices.len();
    artgan::train::parallel::check(cfg, devices)?;
    let id = artgan::backend::cuda::nccl_unique_id()?;
    let steps = args.steps.unwrap_or(10);
    let per_gpu = cfg.batch_size / ranks;
    let size = cfg.model.image_size;
    let threads: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(rank, &device)| {
            let (cfg, warmup) = (cfg.clone(), args.warmup);
            std::thread::spawn(move || -> anyhow::Result<f64> {
                let backend = artgan::backend::backend(device)?;
                if ranks > 1 {
                    backend.join_group(rank, ranks, &id)?;
                }
                let mut trainer = Trainer::new(cfg, device)?;
                trainer.part = Part { rank, ranks };
                let mut rng = Rng::new(1 + rank as u64);
                let real = Tensor::from_vec(
                    rng.uniform_vec(per_gpu * 3 * size * size, -1.0, 1.0),
                    &[per_gpu, 3, size, size],
                    device,
                )?;
                for _ in 0..warmup {
                    step(&mut trainer, &real)?;
                }
                backend.synchronize()?;
                let mut times = Vec::new();
                for _ in 0..steps {
                    let t = Instant::now();
                    step(&mut trainer, &real)?;
                    backend.synchronize()?;
                    times.push(t.elapsed().as_secs_f64());
                }
                backend.leave_group();
                times.sort_by(|a, b| a.total_cmp(b));
                Ok(times[times.len() / 2])
            })
        })
        .collect();
    let mut slowest = 0f64;
    for t in threads {
        let secs = t
            .join()
            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
        slowest = slowest.max(secs);
    }
    Ok(slowest)
}

/// `--device cuda:0,1`: one GPU on its share of the batch, then every GPU on the whole batch,
/// and the scaling efficiency.
fn data_parallel(args: &BenchArgs, devices: &[Device]) -> anyhow::Result<()> {
    let ranks = devices.len();
    let whole = train_config(&args.train)?.batch_size;
    let emulated = artgan::backend::cuda::device_name(0).contains("emulated");
    let one = resolved_config(args, devices[0], whole / ranks.max(1))?;
    let all = resolved_config(args, devices[0], whole)?;
    let name = format!(
        "{}-{}px-w{}-b{whole}",
        all.model.preset, all.model.image_size, all.model.ngf
    );
    let label = format!(
        "{}{}-{}",
        device_label(devices[0], all.conv_impl),
        if all.cuda_graphs { "-graphs" } else { "" },
        all.precision
    );
    let t1 = parallel_step_seconds(args, &one, &devices[..1])?;
    let tn = parallel_step_seconds(args, &all, devices)?;
    let (ips1, ipsn) = (one.batch_size as f64 / t1, whole as f64 / tn);
    let tag = if emulated {
        " (emulated: GPUs share the CPU)"
    } else {
        ""
    };
    println!(
        "train_step/{label}-x1/{name}: median {:.2} ms, {ips1:.1} images/s (batch {}){tag}",
        t1 * 1e3,
        one.batch_size
    );
    println!(
        "train_step/{label}-x{ranks}/{name}: median {:.2} ms, {ipsn:.1} images/s, scaling \
         efficiency {:.2}{tag}",
        tn * 1e3,
        ipsn / (ranks as f64 * ips1)
    );
    Ok(())
}

/// One training step as `artgan train` runs it: nothing read back except at a window's end.
fn step(trainer: &mut Trainer, real: &Tensor) -> anyhow::Result<()> {
    trainer.step_deferred(real, None)?;
    if trainer.metrics_due() {
        trainer.read_metrics()?;
    }
    Ok(())
}

/// `cpu`, or the CUDA device with the convolution implementation in use (`cuda:0-cudnn`,
/// `cuda:0-own`: without cuDNN the backend uses its own kernels, and says so).
fn device_label(device: Device, conv_impl: artgan::backend::ConvImpl) -> String {
    use artgan::backend::{cuda::libs, ConvImpl};
    match device {
        Device::Cpu => device.to_string(),
        Device::Cuda(_) => {
            let cudnn = conv_impl == ConvImpl::Cudnn && libs::ensure_libraries(true).is_ok();
            format!("{device}-{}", if cudnn { "cudnn" } else { "own" })
        }
    }
}
