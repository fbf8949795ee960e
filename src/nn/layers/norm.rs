//! Batch norm: `BatchNorm2d` and the class-conditional batch norm of conditional generators.

use super::super::{Mode, Module};
use super::{StateRef, CONV_INIT_STD};
use crate::backend::{Activation, BatchNormAct, Device};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::Result;
use std::cell::Cell;

/// `nn.BatchNorm2d(c)` (momentum 0.1, eps 1e-5) with DCGAN's init: weight N(1, 0.02), bias 0.
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Cell<i64>,
    pub momentum: f32,
    pub eps: f32,
}

impl BatchNorm2d {
    pub fn new(c: usize, rng: &mut Rng, device: Device) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: Tensor::randn(&[c], 1.0, CONV_INIT_STD, rng, device)?.requiring_grad(),
            bias: Tensor::zeros(&[c], device)?.requiring_grad(),
            running_mean: Tensor::zeros(&[c], device)?,
            running_var: Tensor::full(&[c], 1.0, device)?,
            num_batches_tracked: Cell::new(0),
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// `sync`: training mode normalises with the statistics of every GPU of a data-parallel
    /// run (`--sync-bn`, [`ops::batch_norm2d_synced`]).
    pub fn forward(&self, x: &Tensor, mode: Mode, sync: bool) -> Result<Tensor> {
        if let Some(y) = self.synced(x, mode, sync, BatchNormAct::None) {
            return y;
        }
        self.run(mode, |rm, rv, training| {
            ops::batch_norm2d(
                x,
                &self.weight,
                &self.bias,
                rm,
                rv,
                training,
                self.momentum,
                self.eps,
            )
        })
    }

    /// `act(self.forward(x, mode))` for ReLU or LeakyReLU, as one fused op.
    pub fn forward_act(
        &self,
        x: &Tensor,
        mode: Mode,
        act: Activation,
        sync: bool,
    ) -> Result<Tensor> {
        if let Some(y) = self.synced(x, mode, sync, BatchNormAct::fused(act)?) {
            return y;
        }
        self.run(mode, |rm, rv, training| {
            ops::batch_norm2d_act(
                x,
                &self.weight,
                &self.bias,
                rm,
                rv,
                training,
                self.momentum,
                self.eps,
                act,
            )
        })
    }

    /// The synchronised training-mode forward, when `sync` asks for it in training mode.
    fn synced(
        &self,
        x: &Tensor,
        mode: Mode,
        sync: bool,
        act: BatchNormAct,
    ) -> Option<Result<Tensor>> {
        if !(sync && mode == Mode::Train) {
            return None;
        }
        self.num_batches_tracked
            .set(self.num_batches_tracked.get() + 1);
        Some(ops::batch_norm2d_synced(
            x,
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
            self.momentum,
            self.eps,
            act,
        ))
    }

    /// Calls `op(running_mean, running_var, training)` as `mode` needs.
    fn run(
        &self,
        mode: Mode,
        op: impl FnOnce(&Tensor, &Tensor, bool) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match mode {
            Mode::Train => {
                self.num_batches_tracked
                    .set(self.num_batches_tracked.get() + 1);
                op(&self.running_mean, &self.running_var, true)
            }
            Mode::Eval => op(&self.running_mean, &self.running_var, false),
            Mode::BatchStats => {
                // Training-mode normalisation writes the running stats in place; hand it
                // throw-away copies so the real ones stay untouched.
                let rm = scratch_copy(&self.running_mean)?;
                let rv = scratch_copy(&self.running_var)?;
                op(&rm, &rv, true)
            }
        }
    }
}

/// A new tensor (own storage, no graph) holding a copy of `t`'s values.
fn scratch_copy(t: &Tensor) -> Result<Tensor> {
    let s = t.backend().copy(&t.storage())?;
    Tensor::from_storage(s, t.shape())
}

/// Class-conditional batch norm (de Vries et al. 2017, Miyato & Koyama 2018): the batch is
/// normalised like `BatchNorm2d` without its affine, then each image gets its class's gain and
/// bias, rows of two embedding tables `[classes, c]` (`gain.weight`, init N(1, 0.02) as DCGAN's
/// BN weight; `bias.weight`, init 0). Running statistics are shared by all classes.
pub struct CondBatchNorm2d {
    pub gain: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Cell<i64>,
    pub momentum: f32,
    pub eps: f32,
    /// Constant 1 and 0 `[c]`: the plain normalisation's affine (not parameters).
    ones: Tensor,
    zeros: Tensor,
}

impl CondBatchNorm2d {
    pub fn new(c: usize, classes: usize, rng: &mut Rng, device: Device) -> Result<Self> {
        Ok(CondBatchNorm2d {
            gain: Tensor::randn(&[classes, c], 1.0, CONV_INIT_STD, rng, device)?.requiring_grad(),
            bias: Tensor::zeros(&[classes, c], device)?.requiring_grad(),
            running_mean: Tensor::zeros(&[c], device)?,
            running_var: Tensor::full(&[c], 1.0, device)?,
            num_batches_tracked: Cell::new(0),
            momentum: 0.1,
            eps: 1e-5,
            ones: Tensor::full(&[c], 1.0, device)?,
            zeros: Tensor::zeros(&[c], device)?,
        })
    }

    /// `sync`: as [`BatchNorm2d::forward`]'s.
    pub fn forward(
        &self,
        x: &Tensor,
        mode: Mode,
        labels: ops::Labels,
        sync: bool,
    ) -> Result<Tensor> {
        let xhat = match mode {
            Mode::Train if sync => {
                self.num_batches_tracked
                    .set(self.num_batches_tracked.get() + 1);
                ops::batch_norm2d_synced(
                    x,
                    &self.ones,
                    &self.zeros,
                    &self.running_mean,
                    &self.running_var,
                    self.momentum,
                    self.eps,
                    BatchNormAct::None,
                )?
            }
            Mode::Train => {
                self.num_batches_tracked
                    .set(self.num_batches_tracked.get() + 1);
                ops::batch_norm2d(
                    x,
                    &self.ones,
                    &self.zeros,
                    &self.running_mean,
                    &self.running_var,
                    true,
                    self.momentum,
                    self.eps,
                )?
            }
            Mode::Eval => ops::batch_norm2d(
                x,
                &self.ones,
                &self.zeros,
                &self.running_mean,
                &self.running_var,
                false,
                self.momentum,
                self.eps,
            )?,
            Mode::BatchStats => {
                let rm = scratch_copy(&self.running_mean)?;
                let rv = scratch_copy(&self.running_var)?;
                ops::batch_norm2d(
                    x,
                    &self.ones,
                    &self.zeros,
                    &rm,
                    &rv,
                    true,
                    self.momentum,
                    self.eps,
                )?
            }
        };
        let gain = ops::embedding(&self.gain, labels)?;
        let bias = ops::embedding(&self.bias, labels)?;
        // The class affine is f32 only: amp's f16 activation leaves batch norm as f32 here.
        ops::channel_affine(&ops::to_f32(&xhat)?, &gain, &bias)
    }
}

/// Whether the state-dict name `name` is a class parameter: a conditional batch norm's
/// per-class gain or bias table (what `--class-lr-scale` speeds up).
pub fn is_class_parameter(name: &str) -> bool {
    name.ends_with(".gain.weight") || name.ends_with(".bias.weight")
}

impl Module for CondBatchNorm2d {
    fn visit_state<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, StateRef<'a>)) {
        f(format!("{prefix}gain.weight"), StateRef::Param(&self.gain));
        f(format!("{prefix}bias.weight"), StateRef::Param(&self.bias));
        f(
            format!("{prefix}running_mean"),
            StateRef::Buffer(&self.running_mean),
        );
        f(
            format!("{prefix}running_var"),
            StateRef::Buffer(&self.running_var),
        );
        f(
            format!("{prefix}num_batches_tracked"),
            StateRef::Count(&self.num_batches_tracked),
        );
    }
}
