//! One CUDA graph per training step: the step's launches, cuBLAS and cuDNN
//! calls are captured once per batch shape and replayed, so the host issues one graph launch
//! instead of hundreds of kernel launches.
//!
//! Design. A graph replays its work with the arguments and addresses it saw at capture, so
//! everything a step takes from the host by value must instead live in device memory that the
//! graph reads, written before each launch (legal outside capture):
//! - the real batch and the latents: copied into static input buffers owned by the graph
//!   ([`StepGraph`] keeps them); the latents are still drawn on the host from the same stream;
//! - the class labels of a conditional run: a static input buffer too;
//! - dropout and input-noise seeds, the noise std and DiffAugment's parameters: drawn on the
//!   host as in eager mode and written to small device buffers before the step
//!   (`nn::draws`), which the kernels read (`Backend::dropout_mask_by`,
//!   `Backend::add_gaussian_noise_by`, the DiffAugment kernels' parameter buffers);
//! - Adam's per-step scalars (bias corrections, lr per parameter) and the EMA's decay:
//!   computed on the host as in eager mode and written to small device buffers that the
//!   kernels read (`Backend::adam_update_with`, `Backend::scale_add_assign_by`), in eager
//!   mode too, so both run the same kernels on the same values: replay is bit-identical to
//!   eager execution. Under amp only the lr is written (`Backend::adam_update_scaled_with`):
//!   the loss scale and the count of applied steps behind the bias corrections already live
//!   on the device;
//! - buffers: the pool marks every buffer of a capture as the graph's ([`super::alloc`]),
//!   reserves what the step needs before capturing (a capture cannot allocate), and never
//!   hands a graph's buffer to other code while the graph lives. State the step updates
//!   (weights, Adam moments, batch-norm running statistics, the EMA) is updated in place, so
//!   the addresses the graph reads stay those of the live tensors.
//! - outputs the host reads later (losses, D's logits for the metrics) sit in graph buffers
//!   that the next replay overwrites: they are copied out after each launch.
//!
//! Host-side effects of the step's code (batch-norm batch counters, the trainer's counters)
//! are repeated by the caller on replay, and undone by it when a capture fails (see
//! `train::graph_step`).
//!
//! Capture is refused without the caching allocator (`ARTGAN_CUDA_POOL=off`: every buffer is
//! a driver allocation, which a capture cannot make).
//!
//! The trainer reaches all this through [`crate::backend::capture::StepCapture`].

use super::alloc::PoolNeed as CudaPoolNeed;
use super::err::drv;
use super::{cb, cb_mut, CudaBackend};
use crate::backend::capture::{PoolNeed, StepCapture, StepGraph};
use crate::backend::Storage;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A captured step: replay with [`StepGraph::launch`]. Dropping it makes its buffers ordinary
/// pool buffers again.
pub struct CudaStepGraph {
    graph: CudaGraph,
    id: u64,
    pool: Arc<super::alloc::Pool>,
}

impl StepGraph for CudaStepGraph {
    fn launch(&self) -> Result<()> {
        self.graph
            .launch()
            .map_err(|e| drv(e, "launching a CUDA graph"))
    }
}

impl Drop for CudaStepGraph {
    fn drop(&mut self) {
        self.pool.release_graph(self.id);
    }
}

impl StepCapture for CudaBackend {
    /// Not without the caching allocator (`ARTGAN_CUDA_POOL=off`, the memory-checking mode).
    fn can_capture(&self) -> bool {
        self.pool.caching()
    }

    /// (The next capture synchronizes the stream after the captured work.)
    fn break_next_capture(&self) {
        self.break_capture.store(true, Ordering::Relaxed);
    }

    fn start_pool_recording(&self) {
        self.pool.start_recording();
    }

    fn pool_need(&self) -> PoolNeed {
        PoolNeed::new(self.pool.recorded())
    }

    fn capture(
        &self,
        need: &PoolNeed,
        work: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Box<dyn StepGraph>> {
        if !self.pool.caching() {
            bail!("CUDA graphs need the caching allocator (ARTGAN_CUDA_POOL=off disables it)");
        }
        let need = need
            .get::<CudaPoolNeed>()
            .ok_or_else(|| anyhow!("a pool record from another backend"))?;
        self.pool.reserve(need)?;
        let id = self.pool.begin_capture()?;
        let begun = self
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| drv(e, "beginning a stream capture"));
        if let Err(e) = begun {
            self.pool.end_capture();
            self.pool.release_graph(id);
            return Err(e);
        }
        let out = work();
        if self.break_capture.swap(false, Ordering::Relaxed) {
            // Illegal while capturing: the driver invalidates the capture (its error is the
            // capture's end's to report).
            let _ = self.stream.synchronize();
        }
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        self.pool.end_capture();
        let graph = CudaStepGraph {
            graph: match ended {
                Ok(Some(g)) => g,
                Ok(None) => {
                    self.pool.release_graph(id);
                    bail!("the captured step queued no work")
                }
                Err(e) => {
                    self.pool.release_graph(id);
                    let e = drv(e, "ending the stream capture");
                    return Err(match out {
                        Err(first) => first.context(e),
                        Ok(()) => e,
                    });
                }
            },
            id,
            pool: self.pool.clone(),
        };
        out.context("capturing the training step")?;
        Ok(Box::new(graph))
    }
}

/// Copies `src` into `dst` (same length) on the stream, keeping `dst`'s buffer.
pub(super) fn copy_into(be: &CudaBackend, dst: &mut Storage, src: &Storage) -> Result<()> {
    let s = cb(src)?;
    let d = cb_mut(dst)?;
    if s.len() != d.len() {
        bail!("copy_into: {} elements into {}", s.len(), d.len());
    }
    if s.is_empty() {
        return Ok(());
    }
    let n = s.len();
    be.stream
        .memcpy_dtod(&s.slice().slice(0..n), &mut d.slice_mut().slice_mut(0..n))
        .map_err(|e| drv(e, "device copy"))
}
