//! `--cuda-graphs on`: the device half of a training step (the trainer's `device_step`: D step,
//! G step, both Adam updates, the EMA update) captured once per batch shape as one CUDA graph and replayed.
//! The backend's side (capture, buffer ownership, why each per-step value lives on the device)
//! is described in `backend/cuda/graph.rs` and reached through
//! [`crate::backend::capture::StepCapture`]; this is the trainer's side. The trainer owns
//! the step: it calls [`StepGraphs::run`] with the step as a [`DeviceStep`], and nothing here
//! knows the trainer.
//!
//! - Per shape (batch size, whether G is updated, whether D's input noise is on): the first
//!   step runs eagerly and records what it takes from the buffer pool and the host draws it
//!   makes (`nn::draws`); the next one is captured (with that much reserved) and launched;
//!   every later one copies its batch, latents and class labels into the graph's static input
//!   buffers, draws and writes its regularizer values, and launches the graph. So a batch of
//!   another size (a partial last batch from a `BatchSource` that yields one; the built-in
//!   loader drops it) runs eagerly the first time and from a graph of its own after that.
//! - Adam's scalars (`Adam::prepare`) and the EMA decay (`ema::DeviceDecay`) are written
//!   before the device half in every mode.
//! - Host draws inside the device half (dropout and input-noise seeds, the noise std,
//!   DiffAugment parameters) are the same values from the same stream in the same order as in
//!   an eager step: [`StepDraws`] draws the shape's recorded sequence before the step and
//!   writes it to device buffers that the kernels read. Class labels go to a static input
//!   buffer like the batch.
//! - A replay runs none of the step's host code, so its host-side effect, the batch-norm
//!   batch counters (G's, D's and the EMA's copies), is repeated: each counter advances by
//!   what it advanced during capture.
//! - A capture that fails (a call CUDA forbids while capturing, a buffer the pool does not
//!   hold) ran nothing on the device: its host effects (the regularizer stream, the
//!   batch-norm counters) are restored, the pool forgets the graph's marks
//!   (`StepCapture::capture`), the step runs eagerly, and so does that shape from then on,
//!   said once on stderr.
//! - The outputs the metrics keep live in graph buffers the next replay overwrites: each
//!   launch is followed by copies of them.
//!
//! Replays run the same kernels on the same inputs as eager steps, so a run is bit-identical
//! with graphs on and off (tests/gpu_training_step.rs).

use crate::backend::capture::{PoolNeed, StepGraph};
use crate::backend::Backend;
use crate::nn::draws::StepDraws;
use crate::ops::{label_values, Labels};
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// What the device half of a step leaves for the metrics: device tensors, cut from the graph.
pub struct StepOutputs {
    pub loss_d: Tensor,
    /// Present when the step also updated G.
    pub loss_g: Option<Tensor>,
    pub out_real: Tensor,
    pub out_fake: Tensor,
}

/// The step that [`StepGraphs::run`] runs eagerly, captures and replays, with the host state
/// it touches: implemented by the trainer.
pub(super) trait DeviceStep {
    /// Runs the device half (Adam's scalars and the EMA decay already written). Its
    /// regularizer draws are taken from `draws` when given, else straight from the stream.
    fn run(
        &mut self,
        real: &Tensor,
        z: &Tensor,
        labels: Option<Labels>,
        update_g: bool,
        draws: Option<&mut StepDraws>,
    ) -> Result<StepOutputs>;

    /// The stream the step's regularizer draws come from.
    fn regularizers(&mut self) -> &mut Rng;

    /// The batch-norm batch counters (of G, D and the EMA), in a fixed order: the step's
    /// host-side effect, which a replay repeats.
    fn batch_counters(&self) -> Vec<i64>;

    /// Sets the counters [`DeviceStep::batch_counters`] reads.
    fn set_batch_counters(&mut self, values: &[i64]);
}

/// What one step is given: the real batch (on the device), its class labels, the latents
/// drawn on the host, whether G is updated and the std of D's input noise.
pub(super) struct StepInputs<'a> {
    pub real: &'a Tensor,
    pub labels: Option<&'a [u32]>,
    pub z_host: &'a [f32],
    pub nz: usize,
    pub update_g: bool,
    pub noise_std: f32,
}

/// The captured steps of a run, per shape.
#[derive(Default)]
pub struct StepGraphs {
    on: bool,
    shapes: HashMap<Key, Shape>,
    said_eager: bool,
}

/// Batch size, whether G is updated, whether D's input noise is on (a std of 0 draws nothing).
type Key = (usize, bool, bool);

enum Shape {
    /// One eager step of this shape ran: it took this much from the pool and made these draws.
    Warm(PoolNeed, StepDraws),
    Captured(Box<Captured>),
    /// Capturing this shape failed: always eager.
    Eager,
}

struct Captured {
    graph: Box<dyn StepGraph>,
    /// The static inputs the graph reads.
    real: Tensor,
    z: Tensor,
    labels: Option<Tensor>,
    draws: StepDraws,
    /// The graph's outputs (overwritten by each replay).
    out: StepOutputs,
    /// How far each batch-norm counter advances per step.
    count_steps: Vec<i64>,
}

impl StepGraphs {
    pub fn new(on: bool) -> Self {
        StepGraphs {
            on,
            ..Default::default()
        }
    }

    /// Shapes captured so far (for tests).
    pub fn captured(&self) -> usize {
        self.shapes
            .values()
            .filter(|s| matches!(s, Shape::Captured(_)))
            .count()
    }

    /// Runs the device half of a step: eagerly, or captured, or replayed (see the module doc).
    pub(super) fn run(&mut self, step: &mut dyn DeviceStep, i: StepInputs) -> Result<StepOutputs> {
        let StepInputs {
            real,
            labels,
            z_host,
            nz,
            update_g,
            noise_std,
        } = i;
        let b = real.shape()[0];
        let z_shape = [b, nz, 1, 1];
        let device = real.device();
        let z_tensor = || Tensor::from_vec(z_host.to_vec(), &z_shape, device);
        let host_labels = labels.map(Labels::from);
        if !self.on {
            return step.run(real, &z_tensor()?, host_labels, update_g, None);
        }
        let be = real.backend();
        let Some(capture) = be.step_capture() else {
            bail!("--cuda-graphs on: there are no graphs on {device}");
        };
        if !capture.can_capture() {
            if !self.said_eager {
                eprintln!(
                    "note: --cuda-graphs: ARTGAN_CUDA_POOL=off (every buffer its own allocation, \
                     which a capture cannot make): steps run eagerly"
                );
                self.said_eager = true;
            }
            return step.run(real, &z_tensor()?, host_labels, update_g, None);
        }
        let labels_tensor = || -> Result<Option<Tensor>> {
            labels
                .map(|l| Tensor::from_vec(label_values(l), &[l.len()], device))
                .transpose()
        };
        let key = (b, update_g, noise_std > 0.0);
        let (shape, out) = match self.shapes.remove(&key) {
            None => {
                capture.start_pool_recording();
                let labels_in = labels_tensor()?;
                let mut draws = StepDraws::recording(device);
                let out = step.run(
                    real,
                    &z_tensor()?,
                    with_device(labels, labels_in.as_ref()),
                    update_g,
                    Some(&mut draws),
                )?;
                (Shape::Warm(capture.pool_need(), draws), out)
            }
            Some(Shape::Eager) => {
                let out = step.run(real, &z_tensor()?, host_labels, update_g, None)?;
                (Shape::Eager, out)
            }
            Some(Shape::Warm(need, draws)) => {
                let real_in = Tensor::from_storage(be.copy(&real.storage())?, real.shape())?;
                let z_in = z_tensor()?;
                let labels_in = labels_tensor()?;
                // What the capture changes on the host, restored if it fails.
                let stream_before = step.regularizers().clone();
                let before = step.batch_counters();
                let mut draws = draws;
                draws.prefill(step.regularizers(), noise_std)?;
                let mut out = None;
                let captured = capture.capture(&need, &mut || {
                    out = Some(step.run(
                        &real_in,
                        &z_in,
                        with_device(labels, labels_in.as_ref()),
                        update_g,
                        Some(&mut draws),
                    )?);
                    Ok(())
                });
                let captured = captured.and_then(|graph| {
                    if !draws.all_taken() {
                        bail!("the captured step took fewer host draws than its first step made");
                    }
                    Ok((graph, out.take().expect("the capture ran the step")))
                });
                match captured {
                    Ok((graph, out)) => {
                        let count_steps = step
                            .batch_counters()
                            .iter()
                            .zip(&before)
                            .map(|(a, b)| a - b)
                            .collect();
                        graph.launch()?;
                        let copies = copy_out(&*be, &out)?;
                        let c = Captured {
                            graph,
                            real: real_in,
                            z: z_in,
                            labels: labels_in,
                            draws,
                            out,
                            count_steps,
                        };
                        (Shape::Captured(Box::new(c)), copies)
                    }
                    Err(e) => {
                        // Nothing captured ran: undo the capture's host effects and run the
                        // step eagerly, as every later step of this shape will be.
                        eprintln!(
                            "note: --cuda-graphs: capturing the training step of batch {b} \
                             failed ({e:#}); steps of this shape run eagerly"
                        );
                        *step.regularizers() = stream_before;
                        step.set_batch_counters(&before);
                        let out = step.run(real, &z_tensor()?, host_labels, update_g, None)?;
                        (Shape::Eager, out)
                    }
                }
            }
            Some(Shape::Captured(mut c)) => {
                be.copy_into(&mut c.real.storage_mut(), &real.storage())?;
                be.write(&mut c.z.storage_mut(), z_host)?;
                if let (Some(dev), Some(host)) = (&c.labels, labels) {
                    be.write(&mut dev.storage_mut(), &label_values(host))?;
                }
                c.draws.prefill(step.regularizers(), noise_std)?;
                c.graph.launch()?;
                let after: Vec<i64> = step
                    .batch_counters()
                    .iter()
                    .zip(&c.count_steps)
                    .map(|(a, d)| a + d)
                    .collect();
                step.set_batch_counters(&after);
                let copies = copy_out(&*be, &c.out)?;
                (Shape::Captured(c), copies)
            }
        };
        self.shapes.insert(key, shape);
        Ok(out)
    }
}

/// `labels` with their copy on the device.
fn with_device<'a>(labels: Option<&'a [u32]>, on_device: Option<&'a Tensor>) -> Option<Labels<'a>> {
    labels.map(|host| Labels { host, on_device })
}

/// Copies of a graph's outputs into buffers of their own (the next replay overwrites them).
fn copy_out(be: &dyn Backend, out: &StepOutputs) -> Result<StepOutputs> {
    let copy =
        |t: &Tensor| -> Result<Tensor> { Tensor::from_storage(be.copy(&t.storage())?, t.shape()) };
    Ok(StepOutputs {
        loss_d: copy(&out.loss_d)?,
        loss_g: out.loss_g.as_ref().map(copy).transpose()?,
        out_real: copy(&out.out_real)?,
        out_fake: copy(&out.out_fake)?,
    })
}
