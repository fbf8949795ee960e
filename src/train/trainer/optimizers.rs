//! The trainer's Adam optimisers: their parameter groups (a stage each, and in a conditional
//! run the stage's class parameters) and the groups' learning rates.

use super::Trainer;
use crate::nn::{Discriminator, Generator, Module};
use crate::optim::Adam;
use crate::train::TrainConfig;
use anyhow::Result;

/// Adam for G: one group per stage (`main`, or `initial` + `detail`); in a conditional run
/// whose class parameters learn faster (`class_lr_scale` ≠ 1), each stage's class parameters
/// form their own group `<stage>/classes`.
pub fn generator_optimizer(g: &Generator, cfg: &TrainConfig) -> Result<Adam> {
    let mut opt = Adam::new(cfg.beta1, cfg.beta2, 1e-8);
    let split = g.classes > 0 && cfg.class_lr_scale != 1.0;
    for (name, params) in g.param_groups() {
        let (classes, rest): (Vec<_>, Vec<_>) = params
            .into_iter()
            .partition(|(n, _)| split && crate::nn::is_class_parameter(n));
        opt.add_group(&name, cfg.generator_base_lr(&name), rest)?;
        if !classes.is_empty() {
            let group = format!("{name}{}", crate::train::CLASS_GROUP_SUFFIX);
            opt.add_group(&group, cfg.generator_base_lr(&group), classes)?;
        }
    }
    Ok(opt)
}

pub fn discriminator_optimizer(d: &Discriminator, cfg: &TrainConfig) -> Result<Adam> {
    let mut opt = Adam::new(cfg.beta1, cfg.beta2, 1e-8);
    opt.add_group("main", cfg.lr_d, d.parameters())?;
    Ok(opt)
}

impl Trainer {
    /// Sets every group's lr from the config's base lrs and the controller's level.
    pub fn apply_lrs(&mut self) {
        let (gs, ds) = if self.cfg.dynamic_lr {
            (
                self.lr_control.generator_scale(),
                self.lr_control.discriminator_scale(),
            )
        } else {
            (1.0, 1.0)
        };
        for group in &mut self.opt_g.groups {
            group.lr = self.cfg.generator_base_lr(&group.name) * gs;
        }
        for group in &mut self.opt_d.groups {
            group.lr = self.cfg.lr_d * ds;
        }
    }

    /// Every Adam group's lr, D's groups first: what a data-parallel follower copies from
    /// GPU 0 before each step ([`Trainer::set_group_lrs`]; GPU 0 alone runs the dynamic-lr rule).
    pub fn group_lrs(&self) -> Vec<f32> {
        let groups = self.opt_d.groups.iter().chain(&self.opt_g.groups);
        groups.map(|g| g.lr).collect()
    }

    pub fn set_group_lrs(&mut self, lrs: &[f32]) {
        let groups = self.opt_d.groups.iter_mut().chain(&mut self.opt_g.groups);
        for (g, &lr) in groups.zip(lrs) {
            g.lr = lr;
        }
    }

    /// Current lrs as (D, G main/initial, G detail).
    pub fn lrs(&self) -> (f32, f32, f32) {
        let g = |name: &str| self.opt_g.groups.iter().find(|g| g.name == name);
        let main = g("main")
            .or_else(|| g("initial"))
            .map_or(f32::NAN, |g| g.lr);
        let detail = g("detail").map_or(main, |g| g.lr);
        (self.opt_d.groups[0].lr, main, detail)
    }
}
