//! Batches: a seeded shuffle per epoch, random flips and small rotations, NCHW f32 in [-1, 1].
//!
//! Everything random is drawn from streams named by (seed, epoch, batch), so a run resumed at
//! any batch sees exactly the batches it would have seen. The loader first makes a
//! [`BatchPlan`] (which images, flipped or not, at which angle) and then assembles it with the
//! backend's `assemble_batch` on the device the batch is for.
//!
//! The whole set is handed to that device once ([`crate::backend::Backend::upload_images`], at
//! the first batch for it) and kept by the loader: with the CUDA backend the cached dataset
//! lives on the GPU (8446 × 64 × 64 × 3 bytes ≈ 104 MB for the Kaggle set) and every batch,
//! augmentation included, is made there from a plan of a few hundred bytes, so the CPU never
//! holds the GPU back. The CPU runs the same path with the reference implementation
//! ([`assemble_batch`] is that arithmetic on an [`ImageSet`] directly). Should the upload fail
//! (a set too large for the GPU's memory), batches are assembled on the CPU and copied instead.

use std::sync::Arc;

use anyhow::{bail, Result};

use super::{Augment, ImageSet};
use crate::backend::{backend, batch, Backend, Device, Storage};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// What one batch is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPlan {
    pub epoch: usize,
    pub batch: usize,
    /// Image indices into the set.
    pub indices: Vec<usize>,
    /// Per image: mirror left-right.
    pub flips: Vec<bool>,
    /// Per image: rotation in degrees, positive = counter-clockwise as displayed.
    pub angles_deg: Vec<f32>,
}

impl BatchPlan {
    /// Part `rank` of `ranks` equal parts (the images `rank·b/ranks ..` of the batch).
    pub fn part(self, rank: usize, ranks: usize) -> BatchPlan {
        if ranks == 1 {
            return self;
        }
        let b = self.indices.len() / ranks;
        let range = rank * b..(rank + 1) * b;
        BatchPlan {
            indices: self.indices[range.clone()].to_vec(),
            flips: self.flips[range.clone()].to_vec(),
            angles_deg: self.angles_deg[range].to_vec(),
            ..self
        }
    }
}

/// Deterministic batch iterator over an [`ImageSet`] (drop_last, like PyTorch's DataLoader in
/// the seeds).
pub struct Loader {
    set: Arc<ImageSet>,
    batch_size: usize,
    augment: Augment,
    seed: u64,
    epoch: usize,
    batch: usize,
    order: Vec<usize>,
    /// The set as held by the device batches were last made for.
    resident: Option<Resident>,
    /// Class label per image of the set (conditional runs).
    labels: Option<Arc<Vec<u32>>>,
    /// Image indices of the last batch handed out.
    last_indices: Vec<usize>,
    /// Data-parallel training: (rank, ranks). Batches are planned whole (the same plan on
    /// every GPU) and rank r assembles only its r-th equal part.
    part: (usize, usize),
}

/// The image set on one device.
struct Resident {
    device: Device,
    /// Backends are per thread (each with its own stream and allocator): a loader moved to
    /// another thread uploads again for that thread's backend.
    thread: std::thread::ThreadId,
    /// `None`: the upload failed; batches for `device` are assembled on the CPU and copied.
    images: Option<Storage>,
}

impl Loader {
    /// A loader positioned at the start of epoch 0.
    pub fn new(set: Arc<ImageSet>, batch_size: usize, augment: Augment, seed: u64) -> Self {
        let mut l = Loader {
            set,
            batch_size,
            augment,
            seed,
            epoch: 0,
            batch: 0,
            order: Vec::new(),
            resident: None,
            labels: None,
            last_indices: Vec::new(),
            part: (0, 1),
        };
        l.start_epoch(0);
        l
    }

    /// The same loader (same set, seed, position and plans) handing out part `rank` of
    /// `ranks` equal parts of each batch: what one GPU of a data-parallel run trains on. The
    /// batch size must split evenly (checked by the caller, which names the sizes that do).
    pub fn part(&self, rank: usize, ranks: usize) -> Result<Loader> {
        if ranks == 0 || rank >= ranks || !self.batch_size.is_multiple_of(ranks) {
            bail!(
                "cannot split batches of {} into part {rank} of {ranks}",
                self.batch_size
            );
        }
        Ok(Loader {
            set: self.set.clone(),
            batch_size: self.batch_size,
            augment: self.augment,
            seed: self.seed,
            epoch: self.epoch,
            batch: self.batch,
            order: self.order.clone(),
            resident: None,
            labels: self.labels.clone(),
            last_indices: Vec::new(),
            part: (rank, ranks),
        })
    }

    /// Gives every image of the set a class label (one per image, in set order); batches
    /// then carry their labels ([`Loader::last_labels`]).
    pub fn with_labels(mut self, labels: Vec<u32>) -> Result<Self> {
        if labels.len() != self.set.len() {
            bail!(
                "{} labels for a set of {} images",
                labels.len(),
                self.set.len()
            );
        }
        self.labels = Some(Arc::new(labels));
        Ok(self)
    }

    /// The class labels of the last batch from [`Loader::next_batch`] (None: unlabelled).
    pub fn last_labels(&self) -> Option<Vec<u32>> {
        self.labels
            .as_ref()
            .map(|l| self.last_indices.iter().map(|&i| l[i]).collect())
    }

    pub fn set(&self) -> &Arc<ImageSet> {
        &self.set
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn augment(&self) -> Augment {
        self.augment
    }

    /// Full batches per epoch; a last partial batch is dropped.
    pub fn batches_per_epoch(&self) -> usize {
        self.set.len().checked_div(self.batch_size).unwrap_or(0)
    }

    /// Shuffles for `epoch` (depends only on the seed and the epoch) and rewinds to its start.
    pub fn start_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
        self.batch = 0;
        self.order = (0..self.set.len()).collect();
        Rng::derive(self.seed, &format!("data-order-{epoch}")).shuffle(&mut self.order);
    }

    /// Positions the loader at batch `batch` of `epoch` (for resuming).
    pub fn seek(&mut self, epoch: usize, batch: usize) {
        self.start_epoch(epoch);
        self.batch = batch;
    }

    /// (epoch, index of the next batch within it).
    pub fn position(&self) -> (usize, usize) {
        (self.epoch, self.batch)
    }

    /// The next batch's plan, or None at the end of the epoch.
    pub fn next_plan(&mut self) -> Result<Option<BatchPlan>> {
        let bpe = self.batches_per_epoch();
        if bpe == 0 {
            bail!(
                "the dataset has {} images, fewer than the batch size {}: lower --batch-size \
                 or add images",
                self.set.len(),
                self.batch_size
            );
        }
        if self.batch >= bpe {
            return Ok(None);
        }
        let b = self.batch;
        self.batch += 1;
        let indices = self.order[b * self.batch_size..(b + 1) * self.batch_size].to_vec();
        let mut rng = Rng::derive(self.seed, &format!("data-augment-{}-{b}", self.epoch));
        let mut flips = Vec::with_capacity(indices.len());
        let mut angles_deg = Vec::with_capacity(indices.len());
        for _ in &indices {
            // Always draw both so that switching one augmentation off does not shift the other.
            let f = rng.uniform();
            let a = rng.uniform();
            flips.push(self.augment.flip && f < 0.5);
            angles_deg.push(if self.augment.rotate_deg > 0.0 {
                (2.0 * a - 1.0) * self.augment.rotate_deg
            } else {
                0.0
            });
        }
        Ok(Some(BatchPlan {
            epoch: self.epoch,
            batch: b,
            indices,
            flips,
            angles_deg,
        }))
    }

    /// The next batch as a `[B, 3, S, S]` tensor in [-1, 1] on `device`, or None at the end of
    /// the epoch (call [`Loader::start_epoch`] for the next one). The first batch for a device
    /// uploads the whole set to it (see the module documentation).
    pub fn next_batch(&mut self, device: Device) -> Result<Option<Tensor>> {
        let Some(plan) = self.next_plan()? else {
            return Ok(None);
        };
        let plan = plan.part(self.part.0, self.part.1);
        self.last_indices.clone_from(&plan.indices);
        let b = backend(device)?;
        self.make_resident(device, &*b)?;
        let s = self.set.size;
        let shape = [plan.indices.len(), 3, s, s];
        let images = self.resident.as_ref().and_then(|r| r.images.as_ref());
        let storage = match images {
            Some(images) => {
                let indices = plan
                    .indices
                    .iter()
                    .map(|&i| u32::try_from(i))
                    .collect::<Result<Vec<u32>, _>>()?;
                b.assemble_batch(images, s, &indices, &plan.flips, &plan.angles_deg)?
            }
            None => {
                let data = assemble_batch(&self.set, &plan.indices, &plan.flips, &plan.angles_deg);
                b.upload(&data)?
            }
        };
        Tensor::from_storage(storage, &shape).map(Some)
    }

    /// The device that holds the image set and makes the batches (after the first batch for
    /// it), or None (no batch yet, or the upload to the last device failed).
    pub fn resident_device(&self) -> Option<Device> {
        self.resident
            .as_ref()
            .filter(|r| r.images.is_some())
            .map(|r| r.device)
    }

    /// Uploads the set to `device` unless it is there already (a set held by another device is
    /// dropped first, so that only one copy is kept).
    fn make_resident(&mut self, device: Device, b: &dyn Backend) -> Result<()> {
        let thread = std::thread::current().id();
        if self
            .resident
            .as_ref()
            .is_some_and(|r| r.device == device && r.thread == thread)
        {
            return Ok(());
        }
        self.resident = None;
        let images = match b.upload_images(self.set.pixels()) {
            Ok(s) => Some(s),
            Err(e) if device != Device::Cpu => {
                eprintln!(
                    "note: the image set ({} MB) could not be kept on {device} ({:#}); batches \
                     are assembled on the CPU and copied",
                    self.set.pixels().len() >> 20,
                    e
                );
                None
            }
            Err(e) => return Err(e),
        };
        self.resident = Some(Resident {
            device,
            thread,
            images,
        });
        Ok(())
    }
}

/// Batch assembly on the host: gathers `indices`, mirrors where `flips` says, rotates by
/// `angles_deg` about the centre (bilinear, reflected edges), and maps bytes to [-1, 1]
/// (v / 127.5 - 1). Returns NCHW f32. Flip is applied before rotation. A missing flip or angle
/// (shorter slice) means none.
///
/// The arithmetic is [`crate::backend::batch::assemble`], which the host backends'
/// `assemble_batch` also run (the CUDA kernel repeats it operation for operation).
pub fn assemble_batch(
    set: &ImageSet,
    indices: &[usize],
    flips: &[bool],
    angles_deg: &[f32],
) -> Vec<f32> {
    let flips: Vec<bool> = (0..indices.len())
        .map(|b| flips.get(b).copied().unwrap_or(false))
        .collect();
    let angles: Vec<f32> = (0..indices.len())
        .map(|b| angles_deg.get(b).copied().unwrap_or(0.0))
        .collect();
    batch::assemble(set.pixels(), set.size, indices, &flips, &angles)
}
