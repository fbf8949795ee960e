//! Data-parallel training on several GPUs of one machine (`--device cuda:0,1`, `cuda:all`):
//! one worker thread, stream, backend and replica of the trainer per GPU. A list of CPUs (the
//! library's, not the command line's) runs the same on CPU threads: the CPU reference that the
//! GPU runs are tested against. GPU 0 is the
//! training loop's own thread (the leader: it reads the metrics, runs the dynamic-lr rule,
//! keeps the EMA generator that is saved, writes grids and checkpoints); each other GPU is a
//! follower thread that mirrors the leader's data source moves and steps, taking the leader's
//! learning rates before each step.
//!
//! Every replica starts from the same weights (drawn on the host from the seed, or read from
//! the same checkpoint), plans the same global batch and draws the same latents and
//! DiffAugment parameters, and trains on its equal part of them ([`Part`]); after each
//! backward the gradients are averaged over the GPUs (NCCL all-reduce, `Adam::average_grads`),
//! so every replica takes the same Adam step and the weights stay identical. Dropout masks and
//! input noise are counter-based: a part draws the whole batch's elements of its rows
//! (`ops::Seed::part`). Batch norm uses
//! each GPU's own batch statistics, as PyTorch's DDP does by default.

use super::{state, BatchSource, TrainConfig, Trainer};
use crate::backend::{backend, Device, NcclId};
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// One GPU's share of a data-parallel run: part `rank` of `ranks` equal parts of each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub rank: usize,
    pub ranks: usize,
}

impl Part {
    /// The whole batch (one device).
    pub const WHOLE: Part = Part { rank: 0, ranks: 1 };
}

/// The devices of a run, GPU 0 (the leader) first: checks that a data-parallel run can use
/// them with this configuration.
pub fn check(cfg: &TrainConfig, devices: &[Device]) -> Result<()> {
    let ranks = devices.len();
    if ranks < 2 {
        return Ok(());
    }
    // All CPU: the CPU reference of a data-parallel run (threads meeting in memory; tests).
    let cpus = devices.iter().filter(|&&d| d == Device::Cpu).count();
    if cpus > 0 && cpus < ranks {
        bail!("data-parallel training needs CUDA devices; the device list has the CPU");
    }
    if !cfg.batch_size.is_multiple_of(ranks) {
        let below = cfg.batch_size / ranks * ranks;
        let above = below + ranks;
        let sizes = if below > 0 {
            format!("{below} or {above}")
        } else {
            above.to_string()
        };
        bail!(
            "--batch-size {} does not split evenly over {ranks} GPUs: use a multiple of {ranks} \
             (e.g. {sizes})",
            cfg.batch_size
        );
    }
    Ok(())
}

/// What the leader tells a follower.
enum Order {
    StartEpoch(usize),
    Seek(usize, usize),
    /// Take the next batch part and step with these group lrs and this training progress.
    Step {
        lrs: Vec<f32>,
        progress: f32,
    },
}

/// The follower threads of a data-parallel run, seen from the leader.
pub struct Followers {
    orders: Vec<Sender<Order>>,
    failed: Receiver<(usize, Device, anyhow::Error)>,
    threads: Vec<JoinHandle<()>>,
    /// Each follower's [`weights_digest`] after its last step.
    digests: Receiver<(usize, Device, u64)>,
    /// GPU 0's membership of the group, left when the run ends in any way.
    leader: Membership,
}

/// A backend's membership of the GPUs' group on this thread. Dropped after the run finished it
/// leaves the group; dropped on an error it aborts the group, so that GPUs waiting in a
/// collective for this one end instead of waiting forever.
struct Membership {
    device: Device,
    finished: bool,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Ok(b) = backend(self.device) {
            if !self.finished {
                b.abort_group();
            }
            b.leave_group();
        }
    }
}

/// Starts a follower per device after the first (`devices[0]` is the leader's), each with
/// part `r` of `data`, and makes the leader rank 0 of their NCCL group. `resume`: the
/// checkpoint every replica starts from.
pub fn start(
    cfg: &TrainConfig,
    devices: &[Device],
    data: &dyn BatchSource,
    resume: Option<PathBuf>,
) -> Result<Followers> {
    check(cfg, devices)?;
    let ranks = devices.len();
    let id = backend(devices[0])?
        .new_group_id()
        .context("data-parallel training needs NCCL")?;
    let (fail_tx, failed) = channel();
    let (digest_tx, digests) = channel();
    let mut orders = Vec::new();
    let mut threads = Vec::new();
    for (rank, &device) in devices.iter().enumerate().skip(1) {
        let part = data.part(rank, ranks)?;
        let (tx, rx) = channel();
        let (cfg, resume, fail_tx) = (cfg.clone(), resume.clone(), fail_tx.clone());
        let digest_tx = digest_tx.clone();
        let part_of = Part { rank, ranks };
        let thread = std::thread::Builder::new()
            .name(format!("artgan-{device}"))
            .spawn(
                move || match follow(part_of, device, id, cfg, resume, part, rx) {
                    Ok(digest) => {
                        let _ = digest_tx.send((rank, device, digest));
                    }
                    Err(e) => {
                        // The failure first: the leader, released by the abort, reports it.
                        let _ = fail_tx.send((rank, device, e));
                        if let Ok(b) = backend(device) {
                            b.abort_group();
                        }
                    }
                },
            )
            .context("starting a worker thread")?;
        orders.push(tx);
        threads.push(thread);
    }
    let leader = backend(devices[0])?;
    leader
        .join_group(0, ranks, &id)
        .with_context(|| format!("{}: joining the GPUs' NCCL group", devices[0]))?;
    Ok(Followers {
        orders,
        failed,
        threads,
        digests,
        leader: Membership {
            device: devices[0],
            finished: false,
        },
    })
}

impl Followers {
    fn send(&self, order: impl Fn() -> Order) -> Result<()> {
        self.check()?;
        for tx in &self.orders {
            // A follower that ended has sent its error: `check` reports it next.
            let _ = tx.send(order());
        }
        Ok(())
    }

    /// The first failure of a follower so far, as an error naming its GPU.
    pub fn check(&self) -> Result<()> {
        match self.failed.try_recv() {
            Ok((rank, device, e)) => Err(e.context(format!("{device} (rank {rank}) failed"))),
            Err(_) => Ok(()),
        }
    }

    pub fn start_epoch(&self, epoch: usize) -> Result<()> {
        self.send(|| Order::StartEpoch(epoch))
    }

    pub fn seek(&self, epoch: usize, batch: usize) -> Result<()> {
        self.send(|| Order::Seek(epoch, batch))
    }

    /// Orders the next step, with GPU 0's lrs.
    pub fn step(&self, leader: &Trainer, progress: f32) -> Result<()> {
        let lrs = leader.group_lrs();
        self.send(|| Order::Step {
            lrs: lrs.clone(),
            progress,
        })
    }

    /// Explains a failed leader step: a follower's own failure (which makes the leader's
    /// collective fail) is the cause to report, if one comes within a few seconds.
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        match self.failed.recv_timeout(Duration::from_secs(5)) {
            Ok((rank, device, cause)) => cause
                .context(format!("{device} (rank {rank}) failed"))
                .context(format!("data-parallel step failed on GPU 0 too: {e:#}")),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => e,
        }
    }

    /// Ends the followers after the last step, waits for them and checks that every replica
    /// holds exactly the leader's weights (G and D, byte for byte): replicas that drifted apart
    /// would mean the steps were not the same, so the run's result would not be one model.
    pub fn finish(self, leader: &Trainer) -> Result<()> {
        let Followers {
            orders,
            failed,
            threads,
            digests,
            leader: mut membership,
        } = self;
        drop(orders);
        for t in threads {
            t.join().map_err(|_| anyhow!("a worker thread panicked"))?;
        }
        if let Ok((rank, device, e)) = failed.try_recv() {
            return Err(e.context(format!("{device} (rank {rank}) failed")));
        }
        membership.finished = true;
        let want = weights_digest(leader)?;
        for (rank, device, digest) in digests.try_iter() {
            if digest != want {
                bail!(
                    "the replica on {device} (rank {rank}) ended with weights that differ from                      GPU 0's: the GPUs did not take the same steps"
                );
            }
        }
        Ok(())
    }
}

/// A follower's loop: its replica (made on this thread, where its backend lives) does what
/// the leader orders until the leader hangs up; returns the replica's [`weights_digest`].
fn follow(
    part: Part,
    device: Device,
    id: NcclId,
    cfg: TrainConfig,
    resume: Option<PathBuf>,
    mut data: Box<dyn BatchSource + Send>,
    orders: Receiver<Order>,
) -> Result<u64> {
    backend(device)?
        .join_group(part.rank, part.ranks, &id)
        .with_context(|| format!("{device}: joining the GPUs' NCCL group"))?;
    let mut trainer = match &resume {
        Some(dir) => state::restore(cfg, dir, device)?.trainer,
        None => Trainer::new(cfg, device)?,
    };
    trainer.part = part;
    for order in orders {
        match order {
            Order::StartEpoch(epoch) => data.start_epoch(epoch),
            Order::Seek(epoch, batch) => data.seek(epoch, batch)?,
            Order::Step { lrs, progress } => {
                trainer.set_group_lrs(&lrs);
                trainer.set_progress(progress);
                let real = data
                    .next_batch(device)?
                    .ok_or_else(|| anyhow!("its data ended before GPU 0's"))?;
                let labels = data.batch_labels();
                trainer
                    .step_deferred(&real, labels.as_deref())
                    .with_context(|| format!("training step {}", trainer.step + 1))?;
                trainer.metrics.discard();
            }
        }
    }
    weights_digest(&trainer)
}

/// A hash of the bytes of every weight of G and D (one download each).
fn weights_digest(t: &Trainer) -> Result<u64> {
    use crate::nn::Module;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (_, p) in t.g.parameters().into_iter().chain(t.d.parameters()) {
        for v in p.to_vec()? {
            v.to_bits().hash(&mut h);
        }
    }
    Ok(h.finish())
}
