//! Adam: the family's backend trait. Its caller is the optimiser, `crate::optim`; its kernels
//! `kernels/adam.cu`, launched by `cuda/adam.rs`; its reference `reference/adam.rs`.

use super::reference::adam as reference;
use super::{all_on_host, AdamHyper, AdamItem, AdamStep, Storage};
use anyhow::Result;

/// `op`'s storage, every item's and `extra`, in host memory (the defaults' guard).
fn items_on_host(op: &str, items: &[AdamItem<'_>], extra: &[&Storage]) -> Result<()> {
    for it in items {
        all_on_host(op, &[&*it.param, it.grad, &*it.m, &*it.v])?;
    }
    all_on_host(op, extra)
}

/// The optimiser step. The defaults run the reference (`backend/reference/adam.rs`) on host
/// memory.
pub trait AdamBackend {
    /// Bias-corrected Adam (PyTorch's formula) over every item, in one pass where possible.
    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
        items_on_host("adam_update", items, &[])?;
        reference::adam_update(items, step)
    }
    /// Mixed precision's optimiser step: PyTorch's `GradScaler.step(opt)` and `update()` in one
    /// call, without reading anything back. The gradients hold `scale[0]`× the true ones (the
    /// backward was seeded with the scale). If any `g · (1/scale)` is inf or NaN, nothing is
    /// updated, the scale halves, the tracker restarts and `SKIPPED` counts the step; else
    /// Adam runs on `g · (1/scale)` with the bias corrections of step `APPLIED + 1`
    /// (`1 − β^t` in f64), `APPLIED` and the tracker count it and after
    /// [`crate::backend::loss_scale::GROWTH_INTERVAL`] clean steps in a row the scale doubles
    /// (if finite). `counters` has the layout of [`crate::backend::loss_scale`].
    fn adam_update_scaled(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        items_on_host("adam_update_scaled", items, &[scale, counters])?;
        // The unscaled step is this backend's own `adam_update` (the fast CPU one's on it).
        let adam = |items: &mut [AdamItem<'_>], step: AdamStep| self.adam_update(items, step);
        reference::adam_update_scaled(items, hyper, scale, counters, adam)
    }
    /// [`AdamBackend::adam_update`] with the step's scalars already in `scalars` (written by
    /// `write` before the step; layout: [`crate::backend::adam_scalars`]) instead of taken from
    /// `step` and the items' `lr`, which must hold the same values: the form a CUDA graph
    /// replays (the scalars change every step, a graph's arguments cannot). The host backends
    /// ignore `scalars`.
    fn adam_update_with(
        &self,
        items: &mut [AdamItem<'_>],
        step: AdamStep,
        scalars: &Storage,
    ) -> Result<()> {
        let _ = scalars;
        self.adam_update(items, step)
    }
    /// [`AdamBackend::adam_update_scaled`] with the items' lr already in `scalars` (layout:
    /// [`crate::backend::amp_adam_scalars`]): the form a CUDA graph replays, like
    /// [`AdamBackend::adam_update_with`]. The host backends ignore `scalars`.
    fn adam_update_scaled_with(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scalars: &Storage,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        let _ = scalars;
        self.adam_update_scaled(items, hyper, scale, counters)
    }
}
