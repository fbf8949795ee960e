//! Per-step metrics kept on the device until the training loop needs them.
//!
//! Reading a loss after every step makes the host wait for the device on every step, which
//! stalls the stream. Instead each step leaves its record here — the two losses and the raw
//! logits of D on the real and the fake batch, as device tensors cut from the graph — and the
//! loop reads all pending records in one download at its read points: the end of a dynamic-lr
//! window (every `--lr-window` steps), the end of an epoch, and an interrupt. The host then
//! computes exactly what an eager read would have (same values, same f32 arithmetic), so
//! `metrics.csv`, the dynamic-lr decisions and the divergence guard do not change; the guard
//! still names the first bad step, from its record.
//!
//! On the CPU the "download" is a copy of host memory; the code path is the same.

use super::StepStats;
use crate::backend::Storage;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use std::cell::Ref;

/// One step's numbers, still on the device.
struct Pending {
    /// The trainer's step count after this step (1-based step number).
    step: usize,
    loss_d: Tensor,
    /// Present when the step also updated G.
    loss_g: Option<Tensor>,
    out_real: Tensor,
    out_fake: Tensor,
}

/// One step's numbers, read back.
pub struct StepRecord {
    /// 1-based step number (the trainer's step count after it).
    pub step: usize,
    pub stats: StepStats,
}

/// The records of the steps since the last read.
#[derive(Default)]
pub struct DeviceMetrics {
    pending: Vec<Pending>,
}

impl DeviceMetrics {
    /// Records a step; queues no work and waits for nothing.
    pub fn push(
        &mut self,
        step: usize,
        loss_d: &Tensor,
        loss_g: Option<&Tensor>,
        out_real: &Tensor,
        out_fake: &Tensor,
    ) {
        self.pending.push(Pending {
            step,
            loss_d: loss_d.detach(),
            loss_g: loss_g.map(Tensor::detach),
            out_real: out_real.detach(),
            out_fake: out_fake.detach(),
        });
    }

    /// Steps recorded since the last read.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Drops the pending records unread (a data-parallel follower: GPU 0 reports the metrics).
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// Every pending record, oldest first, in one download (the records are gathered on the
    /// device first); clears them.
    pub fn read(&mut self) -> Result<Vec<StepRecord>> {
        let Some(first) = self.pending.first() else {
            return Ok(Vec::new());
        };
        let backend = first.loss_d.backend();
        let parts: Vec<&Tensor> = self
            .pending
            .iter()
            .flat_map(|p| {
                [
                    Some(&p.loss_d),
                    p.loss_g.as_ref(),
                    Some(&p.out_real),
                    Some(&p.out_fake),
                ]
                .into_iter()
                .flatten()
            })
            .collect();
        let borrowed: Vec<Ref<'_, Storage>> = parts.iter().map(|t| t.storage()).collect();
        let refs: Vec<&Storage> = borrowed.iter().map(|r| &**r).collect();
        let all = backend.download(&backend.concat(&refs)?)?;
        drop(borrowed);
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &all[at..at + n];
            at += n;
            s
        };
        let mut out = Vec::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            let loss_d = take(1)[0];
            let loss_g = p.loss_g.as_ref().map(|_| take(1)[0]);
            let d_x = mean_sigmoid(take(p.out_real.numel()));
            let d_g_z = mean_sigmoid(take(p.out_fake.numel()));
            out.push(StepRecord {
                step: p.step,
                stats: StepStats {
                    loss_d,
                    d_x,
                    d_g_z,
                    loss_g,
                    lr_change: None,
                },
            });
        }
        if at != all.len() {
            bail!("metrics read: {} values downloaded, {at} used", all.len());
        }
        Ok(out)
    }
}

/// Mean of the sigmoid of D's logits: D's mean probability of "real".
pub fn mean_sigmoid(logits: &[f32]) -> f32 {
    logits
        .iter()
        .map(|&x| 1.0 / (1.0 + (-x).exp()))
        .sum::<f32>()
        / logits.len().max(1) as f32
}
