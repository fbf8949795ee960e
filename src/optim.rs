//! Adam (PyTorch's `torch.optim.Adam`, bias-corrected, no weight decay) with parameter groups.
//!
//! The update itself is one backend call over every parameter of every group
//! (`Backend::adam_update_with`), so the CUDA backend can do a whole step in one launch. A
//! step has a host half ([`Adam::prepare`]: the count, the bias corrections, written to a
//! device buffer) and a device half ([`Adam::apply`]), so that a CUDA graph can hold the
//! device half while each step's scalars still change.

use crate::amp::LossScaler;
use crate::backend::{adam_scalars, amp_adam_scalars, AdamHyper, AdamItem, AdamStep, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use std::cell::{Ref, RefMut};

/// One parameter with its moment estimates (`exp_avg`, `exp_avg_sq` in PyTorch's state).
pub struct AdamParam {
    pub name: String,
    pub param: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

/// Parameters that share a learning rate.
pub struct ParamGroup {
    pub name: String,
    pub lr: f32,
    pub params: Vec<AdamParam>,
}

pub struct Adam {
    pub groups: Vec<ParamGroup>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Completed steps (PyTorch keeps one per parameter; they are equal here because every
    /// parameter gets a gradient every step). With a loss scaler: steps attempted; the
    /// applied ones, which set the bias corrections, are counted on the device.
    pub step: u64,
    /// Mixed precision's dynamic loss scaler (see `crate::amp`): the gradients hold the loss
    /// scale × the true ones, and [`Adam::step`] unscales, checks and maybe skips on the device.
    pub scaler: Option<LossScaler>,
    /// The scalars of the prepared step on the parameters' device (see [`adam_scalars`], or
    /// [`amp_adam_scalars`] with a scaler): one buffer, rewritten in place each step.
    scalars: Option<Tensor>,
}

impl Adam {
    pub fn new(beta1: f32, beta2: f32, eps: f32) -> Self {
        Adam {
            groups: Vec::new(),
            beta1,
            beta2,
            eps,
            step: 0,
            scaler: None,
            scalars: None,
        }
    }

    /// Back-propagates `loss` for this optimiser: seeded with the loss scale when it has a
    /// scaler, else plainly.
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        match &self.scaler {
            Some(s) => s.backward(loss),
            None => loss.backward(),
        }
    }

    /// Data-parallel training: replaces every gradient with its mean over the GPUs of the
    /// backend's group (one grouped NCCL all-reduce), so that each replica's Adam step is the
    /// step of the whole batch. Nothing to do on one device. Every replica has the same
    /// parameters with gradients (the same model and step), so the calls match rank by rank.
    pub fn average_grads(&self) -> Result<()> {
        let Some(first) = self.groups.iter().flat_map(|g| &g.params).next() else {
            return Ok(());
        };
        let be = first.param.backend();
        if be.group_size() < 2 {
            return Ok(());
        }
        let mut slots: Vec<_> = self
            .groups
            .iter()
            .flat_map(|g| &g.params)
            .map(|p| p.param.grad_mut())
            .collect();
        let mut grads: Vec<&mut Storage> = slots.iter_mut().filter_map(|g| g.as_mut()).collect();
        be.all_reduce_mean(&mut grads)
    }

    /// Adds a group; its moments start at zero on the parameters' device.
    pub fn add_group(&mut self, name: &str, lr: f32, params: Vec<(String, Tensor)>) -> Result<()> {
        if !(lr.is_finite() && lr > 0.0) {
            bail!("learning rate {lr} of group {name} must be positive");
        }
        let params = params
            .into_iter()
            .map(|(n, p)| {
                if !p.requires_grad() {
                    bail!("parameter {n} does not require gradients");
                }
                Ok(AdamParam {
                    exp_avg: Tensor::zeros(p.shape(), p.device())?,
                    exp_avg_sq: Tensor::zeros(p.shape(), p.device())?,
                    name: n,
                    param: p,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.groups.push(ParamGroup {
            name: name.to_string(),
            lr,
            params,
        });
        Ok(())
    }

    pub fn group_mut(&mut self, name: &str) -> Option<&mut ParamGroup> {
        self.groups.iter_mut().find(|g| g.name == name)
    }

    pub fn zero_grad(&self) {
        for g in &self.groups {
            for p in &g.params {
                p.param.zero_grad();
            }
        }
    }

    /// One update of every parameter that has a gradient (like PyTorch, parameters without a
    /// gradient are left alone). With a loss scaler, `Backend::adam_update_scaled`: skipped on
    /// the device when a gradient is inf/NaN.
    pub fn step(&mut self) -> Result<()> {
        self.prepare()?;
        self.apply()
    }

    /// The host half of [`Adam::step`]: counts the step and writes its scalars to the device
    /// (queues a host-to-device copy; nothing else).
    pub fn prepare(&mut self) -> Result<()> {
        self.step += 1;
        let step = self.hyper();
        let lrs: Vec<f32> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|_| g.lr))
            .collect();
        let Some(first) = self.groups.iter().flat_map(|g| &g.params).next() else {
            return Ok(());
        };
        let host = match self.scaler {
            // The bias corrections come from the device's count of applied steps.
            Some(_) => amp_adam_scalars(lrs),
            None => adam_scalars(step, lrs),
        };
        match &self.scalars {
            Some(t) if t.numel() == host.len() => {
                t.backend().write(&mut t.storage_mut(), &host)?;
            }
            _ => {
                self.scalars = Some(Tensor::from_vec(
                    host.clone(),
                    &[host.len()],
                    first.param.device(),
                )?)
            }
        }
        Ok(())
    }

    /// The bias-corrected hyper-parameters of the current step count.
    fn hyper(&self) -> AdamStep {
        let t = self.step as i32;
        // In f64 as PyTorch does (Python floats): 1 − 0.999ᵗ in f32 loses ~1e-5 relative.
        let bc = |beta: f32| (1.0 - f64::from(beta).powi(t)) as f32;
        AdamStep {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            bias_correction1: bc(self.beta1),
            bias_correction2: bc(self.beta2),
        }
    }

    /// The device half of [`Adam::step`]: the update with the scalars [`Adam::prepare`] wrote.
    /// Queues device work only (what a CUDA graph captures).
    pub fn apply(&self) -> Result<()> {
        let step = self.hyper();
        type Guards<'a> = (
            RefMut<'a, Storage>,
            Ref<'a, Option<Storage>>,
            RefMut<'a, Storage>,
            RefMut<'a, Storage>,
            f32,
        );
        let mut guards: Vec<Guards> = Vec::new();
        let mut backend = None;
        let mut every_param = true;
        for g in &self.groups {
            for p in &g.params {
                let Some(grad) = p.param.grad() else {
                    every_param = false;
                    continue;
                };
                backend.get_or_insert_with(|| p.param.backend());
                guards.push((
                    p.param.storage_mut(),
                    grad,
                    p.exp_avg.storage_mut(),
                    p.exp_avg_sq.storage_mut(),
                    g.lr,
                ));
            }
        }
        let Some(backend) = backend else {
            return Ok(());
        };
        let mut items: Vec<AdamItem> = guards
            .iter_mut()
            .map(|(param, grad, m, v, lr)| AdamItem {
                param,
                grad: grad.as_ref().expect("grad() only returns Some"),
                m,
                v,
                lr: *lr,
            })
            .collect();
        // The prepared scalars are laid out per parameter: usable when every one has a
        // gradient (always, in training); otherwise the backend takes them from the items.
        let prepared = self.scalars.as_ref().filter(|_| every_param);
        let Some(scaler) = &self.scaler else {
            return match prepared {
                Some(s) => backend.adam_update_with(&mut items, step, &s.storage()),
                None => backend.adam_update(&mut items, step),
            };
        };
        let hyper = AdamHyper {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        };
        let (mut scale, mut counters) = (scaler.scale.storage_mut(), scaler.counters.storage_mut());
        match prepared {
            Some(s) => backend.adam_update_scaled_with(
                &mut items,
                hyper,
                &s.storage(),
                &mut scale,
                &mut counters,
            ),
            None => backend.adam_update_scaled(&mut items, hyper, &mut scale, &mut counters),
        }
    }

    /// Named state tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for g in &self.groups {
            for p in &g.params {
                out.push((format!("{}.exp_avg", p.name), p.exp_avg.clone()));
                out.push((format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.clone()));
            }
        }
        if let Some(s) = &self.scaler {
            out.extend(s.state_tensors());
        }
        out
    }
}
