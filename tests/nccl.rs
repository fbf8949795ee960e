//! Collectives among the GPUs of one process (`backend/collective.rs`; NCCL through
//! `backend/cuda/collective.rs`), with one thread and backend per GPU, as training runs them.
//!
//! Runs on two emulated devices: `ARTGAN_EMU_DEVICES=2 scripts/cuda-emu cargo test --release
//! --test nccl` (CI does). With fewer than two devices the two-rank tests print `skipped: …`;
//! they fail instead on a real GPU with `ARTGAN_REQUIRE_GPU=1`, and on the emulator when
//! ARTGAN_EMU_DEVICES asked for two. The tests of what a GPU's NCCL would hang on or corrupt
//! (disagreeing ranks, a rank that never arrives) run on the emulator only.

mod common;

use anyhow::Result;
use artgan::backend::cuda::{device_name, nccl_unique_id};
use artgan::backend::CollectiveBackend;
use artgan::backend::{backend, Backend, Device, NcclId, Storage};
use half::f16;
use std::time::{Duration, Instant};

/// Whether `n` CUDA devices are there; else prints `skipped: …` (or fails, see the top).
fn devices(n: usize) -> bool {
    if common::gpu_device().is_none() {
        return false;
    }
    let count = cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize;
    if count >= n {
        return true;
    }
    let emulated = device_name(0).contains("emulated");
    let asked: usize = std::env::var("ARTGAN_EMU_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if emulated && asked >= n {
        panic!("ARTGAN_EMU_DEVICES={asked} but the emulated device has {count}");
    }
    if !emulated && std::env::var("ARTGAN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("ARTGAN_REQUIRE_GPU=1 but there are {count} CUDA devices; this test needs {n}");
    }
    let hint = if emulated {
        " (ARTGAN_EMU_DEVICES=2 gives two)"
    } else {
        ""
    };
    println!("skipped: {count} CUDA device(s), this test needs {n}{hint}");
    false
}

/// Whether the devices are the emulated ones (which report what a GPU would hang on).
fn emulated() -> bool {
    let yes = device_name(0).contains("emulated");
    if !yes {
        println!("skipped: on a GPU, NCCL hangs or corrupts here instead of failing");
    }
    yes
}

/// Runs `work(rank, backend)` on `world` threads, each with its own backend of `cuda:rank`,
/// after every rank joined one group; returns each rank's result.
fn on_ranks<T: Send>(
    world: usize,
    work: impl Fn(usize, &dyn Backend) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    on_ranks_of(world, Device::Cuda, work)
}

/// [`on_ranks`] with rank `r` on `device(r)` (the CPU's collectives: every rank on the CPU).
fn on_ranks_of<T: Send>(
    world: usize,
    device: fn(usize) -> Device,
    work: impl Fn(usize, &dyn Backend) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let id = backend(device(0)).unwrap().new_group_id().unwrap();
    let work = &work;
    std::thread::scope(|s| {
        let ranks: Vec<_> = (0..world)
            .map(|rank| {
                s.spawn(move || {
                    let be = backend(device(rank))?;
                    be.join_group(rank, world, &id)?;
                    assert_eq!(be.group_size(), world);
                    work(rank, &*be)
                })
            })
            .collect();
        ranks.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `n` values in ±[0.5, 4), from `seed` (xorshift).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let m = 0.5 + 3.5 * ((x >> 40) as f32 / (1u64 << 24) as f32);
            if x & 1 == 0 {
                m
            } else {
                -m
            }
        })
        .collect()
}

fn halves(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

const F32_LENS: [usize; 3] = [1, 7, 1001];
const F16_LENS: [usize; 2] = [3, 513];

/// One rank's buffers: f32 of [`F32_LENS`], then f16 of [`F16_LENS`].
type Buffers = (Vec<Vec<f32>>, Vec<Vec<f16>>);

/// Rank `rank`'s buffers for the tests.
fn rank_data(rank: usize) -> Buffers {
    let seed = |i: usize| (rank * 100 + i) as u64;
    let f32s = F32_LENS
        .iter()
        .enumerate()
        .map(|(i, &n)| values(n, seed(i)))
        .collect();
    let f16s = F16_LENS
        .iter()
        .enumerate()
        .map(|(i, &n)| halves(&values(n, seed(10 + i))))
        .collect();
    (f32s, f16s)
}

/// Uploads rank `rank`'s buffers, runs `collective` over all of them in one call, downloads.
fn run_on_rank(
    rank: usize,
    be: &dyn Backend,
    collective: impl Fn(&dyn Backend, &mut [&mut Storage]) -> Result<()>,
) -> Result<Buffers> {
    let (f32s, f16s) = rank_data(rank);
    let mut bufs = Vec::new();
    for v in &f32s {
        bufs.push(be.upload(v)?);
    }
    for v in &f16s {
        bufs.push(be.upload_f16(v)?);
    }
    let mut refs: Vec<&mut Storage> = bufs.iter_mut().collect();
    collective(be, &mut refs)?;
    let got32 = bufs[..f32s.len()]
        .iter()
        .map(|b| be.download(b))
        .collect::<Result<_>>()?;
    let got16 = bufs[f32s.len()..]
        .iter()
        .map(|b| be.download_f16(b))
        .collect::<Result<_>>()?;
    Ok((got32, got16))
}

#[test]
fn nccl_all_reduce_mean_of_two_ranks_is_the_host_mean() {
    if !devices(2) {
        return;
    }
    let got = on_ranks(2, |rank, be| {
        run_on_rank(rank, be, |be, b| be.all_reduce_mean(b))
    });
    assert_is_the_host_mean(got);
}

/// The CPU's collectives (threads of this process on the CPU backend, the CPU reference of a
/// data-parallel run) give the same means, and broadcast the root's buffers.
#[test]
fn nccl_cpu_threads_all_reduce_mean_and_broadcast_like_gpus() {
    let got = on_ranks_of(
        2,
        |_| Device::Cpu,
        |rank, be| run_on_rank(rank, be, |be, b| be.all_reduce_mean(b)),
    );
    assert_is_the_host_mean(got);
    let got = on_ranks_of(
        2,
        |_| Device::Cpu,
        |rank, be| run_on_rank(rank, be, |be, b| be.broadcast(b, 1)),
    );
    for (rank, r) in got.into_iter().enumerate() {
        assert_eq!(r.unwrap(), rank_data(1), "rank {rank}");
    }
}

/// CPU ranks that disagree on the operation or the buffers both fail naming the ranks.
#[test]
fn nccl_cpu_threads_that_disagree_both_fail_naming_the_ranks() {
    let got = on_ranks_of(
        2,
        |_| Device::Cpu,
        |rank, be| {
            let mut buf = be.upload(&values(5 + 2 * rank, 1))?;
            let count = be.all_reduce_mean(&mut [&mut buf]).unwrap_err();
            let mut buf = be.upload(&values(5, 1))?;
            let op = if rank == 0 {
                be.all_reduce_mean(&mut [&mut buf])
            } else {
                be.broadcast(&mut [&mut buf], 0)
            };
            Ok((count, op.unwrap_err()))
        },
    );
    for (rank, r) in got.into_iter().enumerate() {
        let (count, op) = r.unwrap();
        let (count, op) = (format!("{count:#}"), format!("{op:#}"));
        assert_eq!(
            count,
            format!(
                "cpu rank {rank} of 2: all_reduce_mean: ranks 0 and 1 disagree on the buffers' \
                 counts or dtypes ([5] vs [7])"
            )
        );
        assert!(
            op.ends_with(
                "ranks 0 and 1 disagree on the operation (all_reduce_mean vs broadcast from rank 0)"
            ),
            "rank {rank}: {op}"
        );
    }
}

/// The host's mean of [`rank_data`] 0 and 1, bit for bit, on every rank.
fn assert_is_the_host_mean(got: Vec<Result<Buffers>>) {
    let ((a32, a16), (b32, b16)) = (rank_data(0), rank_data(1));
    // The bound: with every value in ±[0.5, 4), the sum of two is exact in f32 for f16 inputs
    // and rounded once for f32 inputs, and halving it is exact (the mean is 0 or at least one
    // input ulp / 2, far from subnormal). So NCCL's mean (sum then / 2, or each * 0.5 then sum)
    // is the correctly rounded mean, bit for bit: no tolerance.
    for (rank, r) in got.into_iter().enumerate() {
        let (g32, g16) = r.unwrap_or_else(|e| panic!("rank {rank}: {e:#}"));
        for (i, g) in g32.iter().enumerate() {
            let want: Vec<f32> = a32[i]
                .iter()
                .zip(&b32[i])
                .map(|(x, y)| (x + y) / 2.0)
                .collect();
            assert_eq!(g, &want, "rank {rank}, f32 buffer {i}");
        }
        for (i, g) in g16.iter().enumerate() {
            let want: Vec<f16> = a16[i]
                .iter()
                .zip(&b16[i])
                .map(|(x, y)| f16::from_f32((x.to_f32() + y.to_f32()) / 2.0))
                .collect();
            assert_eq!(g, &want, "rank {rank}, f16 buffer {i}");
        }
    }
}

#[test]
fn nccl_broadcast_from_rank_1_gives_every_rank_its_buffers() {
    if !devices(2) {
        return;
    }
    let got = on_ranks(2, |rank, be| {
        run_on_rank(rank, be, |be, b| be.broadcast(b, 1))
    });
    let root = rank_data(1);
    for (rank, r) in got.into_iter().enumerate() {
        let g = r.unwrap_or_else(|e| panic!("rank {rank}: {e:#}"));
        assert_eq!(g, root, "rank {rank}");
    }
}

#[test]
fn nccl_ranks_that_disagree_on_the_count_both_fail_naming_the_ranks() {
    if !devices(2) || !emulated() {
        return;
    }
    let got = on_ranks(2, |rank, be| {
        let mut buf = be.upload(&values(5 + 2 * rank, 1))?;
        be.all_reduce_mean(&mut [&mut buf])
    });
    for (rank, r) in got.into_iter().enumerate() {
        let e = format!("{:#}", r.unwrap_err());
        println!("rank {rank}: {e}");
        for needle in [
            &format!("cuda:{rank} rank {rank} of 2: all_reduce_mean (1 buffer)") as &str,
            "ranks [0, 1] disagree at collective #1",
            "rank 0 asked ncclAllReduce(count 5, float32, avg)",
            "rank 1 asked ncclAllReduce(count 7, float32, avg)",
        ] {
            assert!(e.contains(needle), "rank {rank}: {e:?} lacks {needle:?}");
        }
    }
}

#[test]
fn nccl_ranks_that_disagree_on_the_operation_or_dtype_both_fail_naming_the_ranks() {
    if !devices(2) || !emulated() {
        return;
    }
    let got = on_ranks(2, |rank, be| {
        let v = values(5, 3);
        let mut buf = be.upload(&v)?;
        // #1: rank 1 broadcasts where rank 0 all-reduces.
        let first = if rank == 0 {
            be.all_reduce_mean(&mut [&mut buf])
        } else {
            be.broadcast(&mut [&mut buf], 0)
        };
        // #2: rank 1 all-reduces f16 where rank 0 all-reduces f32.
        let mut half = be.upload_f16(&halves(&v))?;
        let second = be.all_reduce_mean(&mut [if rank == 0 { &mut buf } else { &mut half }]);
        Ok((first.unwrap_err(), second.unwrap_err()))
    });
    for (rank, r) in got.into_iter().enumerate() {
        let (first, second) = r.unwrap_or_else(|e| panic!("rank {rank}: {e:#}"));
        let (first, second) = (format!("{first:#}"), format!("{second:#}"));
        println!("rank {rank}: {first}\nrank {rank}: {second}");
        let want = "ranks [0, 1] disagree at collective #1: rank 0 asked ncclAllReduce(count 5, \
                    float32, avg); rank 1 asked ncclBroadcast(count 5, float32, root 0)";
        assert!(first.ends_with(want), "rank {rank}: {first}");
        let want = "ranks [0, 1] disagree at collective #2: rank 0 asked ncclAllReduce(count 5, \
                    float32, avg); rank 1 asked ncclAllReduce(count 5, float16, avg)";
        assert!(second.ends_with(want), "rank {rank}: {second}");
    }
}

/// In the parent: runs `test` alone in a child process with the emulator's NCCL timeout at
/// `timeout_ms` and returns what it printed. In that child: `None`, and the test does the work.
fn in_child(test: &str, timeout_ms: u64) -> Option<String> {
    if std::env::var_os("ARTGAN_NCCL_TEST_CHILD").is_some() {
        return None;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("ARTGAN_NCCL_TEST_CHILD", "1")
        .env("ARTGAN_EMU_NCCL_TIMEOUT_MS", timeout_ms.to_string())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {test} failed:\n{text}");
    Some(text)
}

/// Rank 1 fails instead of all-reducing and aborts the group: rank 0, waiting in the
/// all-reduce for it, is released with an error (not after the emulator's deadlock timeout of
/// a minute), and its later collectives say the group was aborted.
#[test]
fn nccl_an_aborted_group_releases_the_rank_waiting_for_the_failed_one() {
    if !devices(2) || !emulated() {
        return;
    }
    if let Some(out) = in_child(
        "nccl_an_aborted_group_releases_the_rank_waiting_for_the_failed_one",
        60_000,
    ) {
        println!("{out}");
        return;
    }
    aborted_group_releases_the_waiting_rank(Device::Cuda, "ended by ncclCommAbort");
}

/// The same on CPU threads (the CPU's collectives).
#[test]
fn nccl_cpu_threads_an_aborted_group_releases_the_waiting_rank() {
    aborted_group_releases_the_waiting_rank(|_| Device::Cpu, artgan::backend::ABORTED);
}

fn aborted_group_releases_the_waiting_rank(device: fn(usize) -> Device, released: &str) {
    let got = on_ranks_of(2, device, |rank, be| {
        let mut buf = be.upload(&values(9, 2))?;
        if rank == 1 {
            // Failed: rank 0 waits in its all-reduce by now (or comes to it after the abort).
            std::thread::sleep(Duration::from_millis(200));
            be.abort_group();
            assert!(be.group_aborted());
            return Ok(None);
        }
        let first = be.all_reduce_mean(&mut [&mut buf]).unwrap_err();
        let second = be.all_reduce_mean(&mut [&mut buf]).unwrap_err();
        assert!(be.group_aborted());
        Ok(Some((format!("{first:#}"), format!("{second:#}"))))
    });
    let (first, second) = got[0].as_ref().unwrap().clone().expect("rank 0's errors");
    println!("rank 0: {first}\nrank 0: {second}");
    assert!(got[1].is_ok());
    assert!(first.contains(released), "{first}");
    assert!(!first.contains("deadlock"), "{first}");
    assert!(second.ends_with(artgan::backend::ABORTED), "{second}");
}

#[test]
fn nccl_a_rank_that_never_arrives_is_a_deadlock_error_not_a_hang() {
    if !devices(2) || !emulated() {
        return;
    }
    if let Some(out) = in_child(
        "nccl_a_rank_that_never_arrives_is_a_deadlock_error_not_a_hang",
        300,
    ) {
        println!("{out}");
        return;
    }
    // Rank 1 joins but never all-reduces.
    let started = Instant::now();
    let got = on_ranks(2, |rank, be| {
        let mut buf = be.upload(&values(9, 2))?;
        if rank == 0 {
            be.all_reduce_mean(&mut [&mut buf])?;
        }
        Ok(())
    });
    let e = format!("{:#}", got[0].as_ref().unwrap_err());
    println!("rank 0: {e}");
    assert!(got[1].is_ok());
    assert!(e.contains("deadlock: ranks [0] waited "), "{e}");
    assert!(e.contains(" ms at ncclAllReduce #1 for ranks [1]"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A rank that never joins: the one that did fails at the join.
    let id = nccl_unique_id().unwrap();
    let e = format!(
        "{:#}",
        backend(Device::Cuda(0))
            .unwrap()
            .join_group(0, 2, &id)
            .unwrap_err()
    );
    println!("join: {e}");
    assert!(e.contains("cuda:0 rank 0 of 2: joining the group"), "{e}");
    assert!(e.contains("deadlock: ranks [0] waited "), "{e}");
    assert!(e.contains(" ms at ncclCommInitRank for ranks [1]"), "{e}");
}

#[test]
fn nccl_captured_all_reduce_replays_with_new_values() {
    if !devices(2) {
        return;
    }
    let data = |rank: usize, replay: usize| values(11, (10 * rank + replay) as u64);
    let got = on_ranks(2, |rank, be| {
        let Some(cap) = be.step_capture().filter(|c| c.can_capture()) else {
            println!("skipped: no CUDA graphs here (ARTGAN_CUDA_POOL=off?)");
            return Ok(None);
        };
        let mut buf = be.upload(&data(rank, 0))?;
        cap.start_pool_recording();
        let need = cap.pool_need();
        let graph = cap.capture(&need, &mut || be.all_reduce_mean(&mut [&mut buf]))?;
        let mut out = Vec::new();
        for replay in 1..3 {
            be.write(&mut buf, &data(rank, replay))?;
            graph.launch()?;
            out.push(be.download(&buf)?);
        }
        Ok(Some(out))
    });
    for (rank, r) in got.into_iter().enumerate() {
        let Some(out) = r.unwrap_or_else(|e| panic!("rank {rank}: {e:#}")) else {
            continue;
        };
        for (i, g) in out.iter().enumerate() {
            let (a, b) = (data(0, i + 1), data(1, i + 1));
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
            assert_eq!(g, &want, "rank {rank}, replay {}", i + 1);
        }
    }
}

#[test]
fn nccl_a_group_of_one_device_keeps_its_values() {
    if common::gpu_device().is_none() {
        return;
    }
    let got = on_ranks(1, |rank, be| {
        let mean = run_on_rank(rank, be, |be, b| be.all_reduce_mean(b))?;
        let bcast = run_on_rank(rank, be, |be, b| be.broadcast(b, 0))?;
        Ok((mean, bcast))
    });
    let (mean, bcast) = got.into_iter().next().unwrap().unwrap();
    assert_eq!(mean, rank_data(0));
    assert_eq!(bcast, rank_data(0));
}

#[test]
fn nccl_cpu_collectives_before_joining_a_group_are_an_error() {
    let cpu = backend(Device::Cpu).unwrap();
    assert_eq!(cpu.group_size(), 1);
    let mut buf = cpu.upload(&[1.0]).unwrap();
    let e = cpu.all_reduce_mean(&mut [&mut buf]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "all_reduce_mean: this thread's cpu backend has not joined a group"
    );
    let e = cpu.join_group(2, 2, &NcclId([0; 128])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cpu rank 2 of 2: joining the group: the rank must be below the group size"
    );
    // The plain reference backend has none.
    let reference = artgan::backend::reference::ReferenceBackend;
    let e = reference.new_group_id().err().expect("no group id");
    assert_eq!(
        e.to_string(),
        "new_group_id: the reference backend has no collectives"
    );
}

#[test]
fn nccl_emulated_devices_count_their_memory_apart() {
    if !devices(2) || !emulated() {
        return;
    }
    // Alone in a child process: the other tests allocate meanwhile.
    if let Some(out) = in_child("nccl_emulated_devices_count_their_memory_apart", 20000) {
        println!("{out}");
        return;
    }
    use cudarc::driver::CudaContext;
    let free = |ordinal| {
        CudaContext::new(ordinal).unwrap().bind_to_thread().unwrap();
        cudarc::driver::result::mem_get_info().unwrap().0
    };
    let before = (free(0), free(1));
    let stream = CudaContext::new(1).unwrap().default_stream();
    let buf = stream.alloc_zeros::<u8>(64 << 20).unwrap();
    assert_eq!((free(0), free(1)), (before.0, before.1 - (64 << 20)));
    drop(buf);
    assert_eq!((free(0), free(1)), before);
    let count = CudaContext::device_count().unwrap() as usize;
    assert!(
        CudaContext::new(count).is_err(),
        "device {count} of {count}"
    );
}

#[test]
fn nccl_calls_before_joining_a_group_are_an_error() {
    if common::gpu_device().is_none() {
        return;
    }
    let be = backend(Device::Cuda(0)).unwrap();
    assert_eq!(be.group_size(), 1);
    let mut buf = be.upload(&[1.0, 2.0]).unwrap();
    let e = be.all_reduce_mean(&mut [&mut buf]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cuda:0: all_reduce_mean: this backend joined no group (join_group)"
    );
}

#[test]
fn nccl_missing_library_gives_the_doctor_advice() {
    // Without the emulator (plain `cargo test`) this machine usually has no NCCL.
    match artgan::backend::cuda::libs::ensure_nccl() {
        Ok(path) => println!("skipped: NCCL is here ({path})"),
        Err(advice) => {
            let e = nccl_unique_id().err().expect("an id without NCCL");
            assert_eq!(format!("{e:#}"), format!("{advice:#}"));
            assert!(e.to_string().contains("libnccl.so.2 not found"), "{e:#}");
            assert!(e.to_string().contains("works without it"), "{e:#}");
        }
    }
}

// ---- Data-parallel training (`train --device cuda:0,1`, `src/train/parallel.rs`).

use artgan::data::{self, Loader};
use artgan::nn::{Module, Preset};
use artgan::train::{RunOptions, TrainConfig, TrainOutcome};
use std::sync::Arc;

/// A tiny dcgan run's config: 32 px, batch 8 (4 per GPU), DiffAugment on (its draws are split
/// by GPU too).
fn tiny_run_config(epochs: usize) -> TrainConfig {
    let mut cfg = TrainConfig::for_model(common::tiny_model(Preset::Dcgan));
    cfg.epochs = epochs;
    cfg.batch_size = 8;
    cfg.seed = 5;
    cfg.ema = true;
    cfg.sample_every = 100;
    cfg.checkpoint_every = 1;
    cfg.diffaugment = artgan::ops::DiffAugment::parse("color,translation,cutout").unwrap();
    cfg
}

fn tiny_loader(cfg: &TrainConfig) -> Loader {
    Loader::new(Arc::new(data::builtin(24, 32, 9)), 8, cfg.augment, cfg.seed)
}

/// Trains `cfg` on cuda:0 and the GPUs `more` into `dir`.
fn train_on(
    cfg: &TrainConfig,
    more: &[usize],
    dir: &std::path::Path,
    resume: Option<std::path::PathBuf>,
    graphs: bool,
) -> Result<TrainOutcome> {
    let cfg = TrainConfig {
        cuda_graphs: graphs,
        ..cfg.clone()
    };
    let mut opts = RunOptions::new(dir.to_path_buf(), Device::Cuda(0));
    opts.more_devices = more.iter().map(|&i| Device::Cuda(i)).collect();
    opts.resume_from = resume;
    let mut loader = tiny_loader(&cfg);
    artgan::train::train(cfg, &mut loader, &mut opts)
}

fn weight_bits(m: &dyn Module) -> Vec<u32> {
    m.parameters()
        .iter()
        .flat_map(|(_, t)| t.to_vec().unwrap())
        .map(f32::to_bits)
        .collect()
}

/// Two GPUs train one model: the run ends only if every replica holds GPU 0's weights byte for
/// byte (`Followers::finish` compares them), so the all-reduce averaged the same gradients on
/// both and both took the same Adam steps. Each GPU trained on half of each batch: the result
/// is not the one-GPU run's (batch norm sees per-GPU statistics, as DDP's default), but close
/// to it. With the averaging dropped (`Adam::average_grads` a no-op), the run fails here with
/// "the replica on cuda:1 (rank 1) ended with weights that differ from GPU 0's".
/// dcgan, and classical (whose dropout masks and input noise each GPU draws for its rows).
#[test]
fn nccl_data_parallel_training_keeps_the_replicas_identical() {
    if !devices(2) {
        return;
    }
    for preset in [Preset::Dcgan, Preset::Classical] {
        let cfg = TrainConfig {
            model: common::tiny_model(preset),
            ..tiny_run_config(2)
        };
        let (two, one) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = train_on(&cfg, &[1], two.path(), None, true).unwrap();
        let b = train_on(&cfg, &[], one.path(), None, true).unwrap();
        assert_eq!(a.history.len(), 2);
        let (wa, wb) = (weight_bits(&a.generator), weight_bits(&b.generator));
        assert_ne!(wa, wb, "{preset}: two GPUs trained exactly as one");
        let moved = |x: u32, y: u32| (f32::from_bits(x) - f32::from_bits(y)).abs();
        let worst = wa
            .iter()
            .zip(&wb)
            .map(|(&x, &y)| moved(x, y))
            .fold(0f32, f32::max);
        // Adam moves a weight by at most about lr per step either way (6 steps).
        let bound = 2.0 * cfg.lr_g.max(cfg.lr_g_detail) * 6.0;
        assert!(
            worst <= bound,
            "{preset}: G differs from one GPU's by {worst} > {bound}"
        );
        assert!(two.path().join("checkpoints").is_dir());
    }
}

/// CUDA graphs stay on with several GPUs (the all-reduce is captured in the step's graph):
/// the weights equal those of eager steps bit for bit.
#[test]
fn nccl_data_parallel_with_graphs_equals_eager_steps_bit_for_bit() {
    if !devices(2) {
        return;
    }
    let cfg = tiny_run_config(2);
    let (g, e) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let graphs = train_on(&cfg, &[1], g.path(), None, true).unwrap();
    let eager = train_on(&cfg, &[1], e.path(), None, false).unwrap();
    assert_eq!(
        weight_bits(&graphs.generator),
        weight_bits(&eager.generator)
    );
    assert_eq!(
        weight_bits(&graphs.discriminator),
        weight_bits(&eager.discriminator)
    );
}

/// A run trained on two GPUs resumes on one (and the reverse): the checkpoint is GPU 0's, in
/// the one-GPU format, and the data order depends only on the seed and the global batch.
#[test]
fn nccl_data_parallel_checkpoints_resume_on_another_gpu_count() {
    if !devices(2) {
        return;
    }
    let mut cfg = tiny_run_config(2);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(dir.path().to_path_buf(), Device::Cuda(0));
    opts.more_devices = vec![Device::Cuda(1)];
    opts.stop_after_epoch = Some(1);
    let first = artgan::train::train(cfg.clone(), &mut tiny_loader(&cfg), &mut opts).unwrap();
    let ckpt = first.last_checkpoint.expect("epoch 1's checkpoint");
    let on_one = train_on(&cfg, &[], dir.path(), Some(ckpt.clone()), true).unwrap();
    assert_eq!(on_one.history.len(), 2);
    // And from one GPU's checkpoint onto two.
    cfg.epochs = 3;
    let last = on_one.last_checkpoint.expect("epoch 2's checkpoint");
    let on_two = train_on(&cfg, &[1], dir.path(), Some(last), true).unwrap();
    assert_eq!(on_two.history.len(), 3);
}

/// A batch that does not split evenly is refused before anything runs, naming sizes that do.
#[test]
fn nccl_data_parallel_refuses_a_batch_that_does_not_split() {
    let mut cfg = tiny_run_config(1);
    cfg.batch_size = 10;
    let gpus = [
        Device::Cuda(0),
        Device::Cuda(1),
        Device::Cuda(2),
        Device::Cuda(3),
    ];
    let e = artgan::train::parallel::check(&cfg, &gpus).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--batch-size 10 does not split evenly over 4 GPUs: use a multiple of 4 (e.g. 8 or 12)"
    );
    cfg.batch_size = 8;
    artgan::train::parallel::check(&cfg, &gpus).unwrap();
    let e = artgan::train::parallel::check(&cfg, &[Device::Cuda(0), Device::Cpu]).unwrap_err();
    assert!(e.to_string().contains("needs CUDA devices"), "{e}");
}

/// A data source that fails on GPU 1 at its second batch (what a broken disk or an out-of-memory
/// GPU does to one rank).
struct FailingOnRank1 {
    inner: Loader,
    rank: usize,
    batches: usize,
}

impl artgan::train::BatchSource for FailingOnRank1 {
    fn image_count(&self) -> usize {
        self.inner.set().len()
    }
    fn batches_per_epoch(&self) -> usize {
        self.inner.batches_per_epoch()
    }
    fn start_epoch(&mut self, epoch: usize) {
        self.inner.start_epoch(epoch)
    }
    fn next_batch(&mut self, device: Device) -> anyhow::Result<Option<artgan::tensor::Tensor>> {
        self.batches += 1;
        if self.rank == 1 && self.batches == 2 {
            anyhow::bail!("the test's data source failed on purpose");
        }
        self.inner.next_batch(device)
    }
    fn part(
        &self,
        rank: usize,
        ranks: usize,
    ) -> anyhow::Result<Box<dyn artgan::train::BatchSource + Send>> {
        Ok(Box::new(FailingOnRank1 {
            inner: self.inner.part(rank, ranks)?,
            rank,
            batches: 0,
        }))
    }
}

/// A GPU that fails ends the run with an error naming it, and no checkpoint is written. It
/// aborts the group, which releases GPU 0 from the collective it waits in for GPU 1: without
/// that, a GPU would wait forever (here: the emulator's deadlock timeout, set to a minute, ends
/// it with "deadlock", which the test refuses).
#[test]
fn nccl_data_parallel_a_failing_gpu_ends_the_run_naming_it() {
    if !devices(2) || !emulated() {
        return;
    }
    if let Some(out) = in_child(
        "nccl_data_parallel_a_failing_gpu_ends_the_run_naming_it",
        60_000,
    ) {
        println!("{out}");
        return;
    }
    let cfg = tiny_run_config(1);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(dir.path().to_path_buf(), Device::Cuda(0));
    opts.more_devices = vec![Device::Cuda(1)];
    let mut data = FailingOnRank1 {
        inner: tiny_loader(&cfg),
        rank: 0,
        batches: 0,
    };
    let e = match artgan::train::train(cfg, &mut data, &mut opts) {
        Ok(_) => panic!("the run went on without GPU 1"),
        Err(e) => format!("{e:#}"),
    };
    println!("{e}");
    assert!(e.contains("cuda:1 (rank 1) failed"), "{e}");
    assert!(e.contains("failed on purpose"), "{e}");
    assert!(
        !e.contains("deadlock"),
        "GPU 0 waited for the failed GPU: {e}"
    );
    let checkpoints = dir.path().join("checkpoints");
    let written = std::fs::read_dir(&checkpoints).map_or(0, |d| d.count());
    assert_eq!(written, 0, "a checkpoint was written");
}

/// Per tensor, max |Δw| / max |w| between two models' parameters: the worst tensor.
fn worst_relative_difference(a: &dyn Module, b: &dyn Module) -> (String, f32) {
    let mut worst = (String::new(), 0f32);
    for ((name, x), (_, y)) in a.parameters().iter().zip(b.parameters()) {
        let (x, y) = (x.to_vec().unwrap(), y.to_vec().unwrap());
        let scale = x
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let diff = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        if diff / scale > worst.1 {
            worst = (name.clone(), diff / scale);
        }
    }
    worst
}

/// `--sync-bn`: two GPUs, each with half of each batch, train what one GPU does with the whole
/// batch: after an epoch of a tiny model every weight tensor agrees within 1e-3 of its largest
/// weight (max |Δw| / max |w|; only the order of float sums differs: the statistics' two
/// passes and the all-reduced means). Without it (per-GPU statistics) the models differ by far
/// more, so the bound sees the synchronisation.
#[test]
fn nccl_sync_bn_on_two_gpus_matches_one_gpu_with_the_whole_batch() {
    if !devices(2) {
        return;
    }
    let cfg = tiny_run_config(1);
    let dir = |_| tempfile::tempdir().unwrap();
    let one = train_on(&cfg, &[], dir(0).path(), None, true).unwrap();
    let synced_cfg = TrainConfig {
        sync_bn: true,
        ..cfg.clone()
    };
    let synced = train_on(&synced_cfg, &[1], dir(1).path(), None, true).unwrap();
    let apart = train_on(&cfg, &[1], dir(2).path(), None, true).unwrap();
    for (what, a, b) in [
        (
            "G",
            &one.generator as &dyn Module,
            &synced.generator as &dyn Module,
        ),
        ("D", &one.discriminator, &synced.discriminator),
    ] {
        let (name, rel) = worst_relative_difference(a, b);
        println!("sync-bn vs one GPU, {what}: worst {name} {rel:e}");
        assert!(rel < 1e-3, "{what} {name}: max |Δw| / max |w| = {rel}");
    }
    let (name, rel) = worst_relative_difference(&one.generator, &apart.generator);
    println!("per-GPU statistics vs one GPU, G: worst {name} {rel:e}");
    assert!(
        rel > 1e-2,
        "without --sync-bn G is as close as with it ({rel})"
    );
}

/// A data-parallel run stopped after an epoch and resumed on the same GPUs ends bit-identical
/// to the uninterrupted run: every replica restores the same checkpoint (weights, Adam, the
/// random streams, the data position) and the followers rejoin at the resumed epoch.
#[test]
fn nccl_data_parallel_resume_is_bit_identical() {
    if !devices(2) {
        return;
    }
    let cfg = tiny_run_config(2);
    let (whole, parts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = train_on(&cfg, &[1], whole.path(), None, true).unwrap();
    let mut opts = RunOptions::new(parts.path().to_path_buf(), Device::Cuda(0));
    opts.more_devices = vec![Device::Cuda(1)];
    opts.stop_after_epoch = Some(1);
    let first = artgan::train::train(cfg.clone(), &mut tiny_loader(&cfg), &mut opts).unwrap();
    let ckpt = first.last_checkpoint.expect("epoch 1's checkpoint");
    let resumed = train_on(&cfg, &[1], parts.path(), Some(ckpt), true).unwrap();
    for (what, a, b) in [
        (
            "G",
            &straight.generator as &dyn Module,
            &resumed.generator as &dyn Module,
        ),
        ("D", &straight.discriminator, &resumed.discriminator),
    ] {
        assert_eq!(weight_bits(a), weight_bits(b), "{what}");
    }
    let ema = |o: &TrainOutcome| weight_bits(o.generator_ema.as_ref().expect("EMA kept"));
    assert_eq!(ema(&straight), ema(&resumed), "EMA G");
}

/// Trains `cfg` data-parallel on `ranks` CPU threads (the CPU's collectives; each thread with
/// its part of every batch and its own batch-norm statistics) into `dir`.
fn train_on_cpu_threads(cfg: &TrainConfig, ranks: usize, dir: &std::path::Path) -> TrainOutcome {
    let mut opts = RunOptions::new(dir.to_path_buf(), Device::Cpu);
    opts.more_devices = vec![Device::Cpu; ranks - 1];
    artgan::train::train(cfg.clone(), &mut tiny_loader(cfg), &mut opts).unwrap()
}

/// Weights of `a` and `b` that differ by more than float rounding (2e-6 + 1e-3 |w|, the CPU/GPU
/// training-step tests' criterion), and the largest difference of any weight.
fn loose_weights(a: &dyn Module, b: &dyn Module) -> (usize, usize, f32) {
    let (mut loose, mut total, mut worst) = (0, 0, 0f32);
    for ((_, x), (_, y)) in a.parameters().iter().zip(b.parameters()) {
        for (p, q) in x.to_vec().unwrap().into_iter().zip(y.to_vec().unwrap()) {
            let d = (p - q).abs();
            worst = worst.max(d);
            loose += usize::from(d > 2e-6 + 1e-3 * p.abs());
            total += 1;
        }
    }
    (loose, total, worst)
}

/// Without `--sync-bn` each GPU normalises with its own half's statistics (DDP's default): two
/// emulated GPUs train what the CPU reference trains on two threads, each thread with its half
/// of every batch and its own statistics, gradients averaged (the CPU's collectives).
///
/// The bound, as for one GPU against the CPU (tests/gpu_training_step.rs): the backends sum in
/// different orders, so values differ by float rounding; a weight whose gradient is within that
/// rounding of 0 may take its early Adam steps (about lr · sign(g)) the other way, so every
/// weight is within 2 lr per step, and all but 1 ‰ within float rounding (2e-6 + 1e-3 |w|).
/// The reference trained on the whole batch at once (one CPU thread, whole-batch statistics)
/// fails that by far, so the comparison sees the per-half statistics.
#[test]
fn nccl_without_sync_bn_two_gpus_match_the_cpu_reference_with_per_half_statistics() {
    if !devices(2) {
        return;
    }
    let cfg = tiny_run_config(2);
    let steps = 2 * 24 / cfg.batch_size;
    let dir = |_| tempfile::tempdir().unwrap();
    let gpus = train_on(&cfg, &[1], dir(0).path(), None, true).unwrap();
    let halves = train_on_cpu_threads(&cfg, 2, dir(1).path());
    let whole = train_on_cpu_threads(&cfg, 1, dir(2).path());
    let bound = 2.0 * cfg.lr_d.max(cfg.lr_g).max(cfg.lr_g_detail) * steps as f32 + 1e-6;
    for (what, g, c, w) in [
        (
            "G",
            &gpus.generator as &dyn Module,
            &halves.generator as &dyn Module,
            &whole.generator as &dyn Module,
        ),
        (
            "D",
            &gpus.discriminator,
            &halves.discriminator,
            &whole.discriminator,
        ),
    ] {
        let (loose, total, worst) = loose_weights(c, g);
        println!(
            "{what}: two GPUs vs the CPU's two halves: {loose} of {total} loose, worst {worst:e}"
        );
        assert!(
            worst <= bound,
            "{what}: a weight differs by {worst} > {bound}"
        );
        assert!(
            loose * 1000 <= total,
            "{what}: {loose} of {total} weights differ by more than float rounding"
        );
        let (loose, total, _) = loose_weights(w, g);
        println!("{what}: two GPUs vs the CPU's whole batch: {loose} of {total} loose");
        assert!(
            loose * 1000 > total * 10,
            "{what}: the whole-batch reference is as close ({loose} of {total} loose)"
        );
    }
}
