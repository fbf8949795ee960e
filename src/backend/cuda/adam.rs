//! Launch of `kernels/adam.cu`: one multi-tensor Adam kernel per group of up to 64 tensors.
//! No autograd: the caller is the optimiser, `src/optim.rs`. The per-step scalars are read
//! from device memory (`Backend::adam_update_with`, `Backend::adam_update_scaled_with`; the
//! eager forms upload them first).

use super::{cb, cb_mut, CudaBackend, BLOCK};
use crate::backend::*;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};

/// Elements one Adam block updates.
const ADAM_CHUNK: u32 = 4096;
const ADAM_MAX_ITEMS: usize = 64;

/// Kernel parameter of `adam_multi_f32`; must match `struct AdamTable` in kernels/adam.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct AdamTable {
    param: [u64; ADAM_MAX_ITEMS],
    grad: [u64; ADAM_MAX_ITEMS],
    m: [u64; ADAM_MAX_ITEMS],
    v: [u64; ADAM_MAX_ITEMS],
    len: [u32; ADAM_MAX_ITEMS],
    block_start: [u32; ADAM_MAX_ITEMS + 1],
    scalar: [u32; ADAM_MAX_ITEMS],
    n_items: u32,
}

// SAFETY: plain-old-data with the C layout of the kernel's struct (checked by a size test).
unsafe impl DeviceRepr for AdamTable {}

/// The launch tables of `items` (up to 64 per table) with their block counts; item `i`'s value
/// is at `1 + i` in the scalars buffer, which must hold `1 + items.len()` values.
fn tables(
    be: &CudaBackend,
    items: &mut [AdamItem<'_>],
    scalars: &Storage,
) -> Result<Vec<(AdamTable, u32)>> {
    if scalars.len() != items.len() + 1 {
        bail!(
            "adam: {} scalars for {} items (expected 1 + one per item)",
            scalars.len(),
            items.len()
        );
    }
    let live: Vec<usize> = (0..items.len())
        .filter(|&i| !items[i].param.is_empty())
        .collect();
    let mut out = Vec::new();
    for group in live.chunks(ADAM_MAX_ITEMS) {
        let mut t = AdamTable {
            param: [0; ADAM_MAX_ITEMS],
            grad: [0; ADAM_MAX_ITEMS],
            m: [0; ADAM_MAX_ITEMS],
            v: [0; ADAM_MAX_ITEMS],
            len: [0; ADAM_MAX_ITEMS],
            block_start: [0; ADAM_MAX_ITEMS + 1],
            scalar: [0; ADAM_MAX_ITEMS],
            n_items: group.len() as u32,
        };
        let mut blocks: u32 = 0;
        for (k, &i) in group.iter().enumerate() {
            let it = &mut items[i];
            let len = it.param.len();
            if it.grad.len() != len || it.m.len() != len || it.v.len() != len {
                bail!("adam: item {i} has mismatched lengths");
            }
            let len32 = u32::try_from(len).map_err(|_| anyhow!("adam: tensor too large"))?;
            // Event tracking is off, so these raw pointers carry no synchronisation duty.
            t.grad[k] = cb(it.grad)?.slice().device_ptr(&be.stream).0;
            t.param[k] = cb_mut(it.param)?.slice_mut().device_ptr_mut(&be.stream).0;
            t.m[k] = cb_mut(it.m)?.slice_mut().device_ptr_mut(&be.stream).0;
            t.v[k] = cb_mut(it.v)?.slice_mut().device_ptr_mut(&be.stream).0;
            t.len[k] = len32;
            t.scalar[k] = 1 + i as u32;
            t.block_start[k] = blocks;
            blocks += len32.div_ceil(ADAM_CHUNK);
        }
        t.block_start[group.len()] = blocks;
        out.push((t, blocks));
    }
    Ok(out)
}

fn blocks_of(blocks: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The eager form: the scalars uploaded now, then [`adam_update_with`].
pub(super) fn adam_update(
    be: &CudaBackend,
    items: &mut [AdamItem<'_>],
    step: AdamStep,
) -> Result<()> {
    let host = adam_scalars(step, items.iter().map(|it| it.lr));
    let scalars = be.upload(&host)?;
    adam_update_with(be, items, step, &scalars)
}

pub(super) fn adam_update_with(
    be: &CudaBackend,
    items: &mut [AdamItem<'_>],
    step: AdamStep,
    scalars: &Storage,
) -> Result<()> {
    let chunk = ADAM_CHUNK;
    let tables = tables(be, items, scalars)?;
    let scalars = cb(scalars)?.slice();
    for (t, blocks) in tables {
        launch!(
            be,
            adam_multi_f32,
            blocks_of(blocks),
            &t,
            &chunk,
            &step.beta1,
            &step.beta2,
            &step.eps,
            scalars
        )?;
    }
    Ok(())
}

/// The eager form: the items' lr uploaded now, then [`adam_update_scaled_with`].
pub(super) fn adam_update_scaled(
    be: &CudaBackend,
    items: &mut [AdamItem<'_>],
    hyper: AdamHyper,
    scale: &mut Storage,
    counters: &mut Storage,
) -> Result<()> {
    let host = amp_adam_scalars(items.iter().map(|it| it.lr));
    let scalars = be.upload(&host)?;
    adam_update_scaled_with(be, items, hyper, &scalars, scale, counters)
}

/// `Backend::adam_update_scaled_with`: the non-finite check over every table, Adam on every
/// table (each block returns at once when the check found something), then the scale update.
pub(super) fn adam_update_scaled_with(
    be: &CudaBackend,
    items: &mut [AdamItem<'_>],
    hyper: AdamHyper,
    scalars: &Storage,
    scale: &mut Storage,
    counters: &mut Storage,
) -> Result<()> {
    if scale.len() != 1 || counters.len() != loss_scale::COUNTERS {
        bail!(
            "adam: loss-scale state of {} + {} values",
            scale.len(),
            counters.len()
        );
    }
    let chunk = ADAM_CHUNK;
    let tables = tables(be, items, scalars)?;
    let scalars = cb(scalars)?.slice();
    let (scale, counters) = (cb_mut(scale)?, cb_mut(counters)?);
    for (t, blocks) in &tables {
        launch!(
            be,
            amp_find_inf_multi,
            blocks_of(*blocks),
            t,
            &chunk,
            scale.slice(),
            counters.slice_mut()
        )?;
    }
    for (t, blocks) in &tables {
        launch!(
            be,
            adam_multi_scaled_f32,
            blocks_of(*blocks),
            t,
            &chunk,
            &hyper.beta1,
            &hyper.beta2,
            &hyper.eps,
            scalars,
            scale.slice(),
            counters.slice()
        )?;
    }
    let interval = loss_scale::GROWTH_INTERVAL;
    launch!(
        be,
        amp_update_scale,
        blocks_of(1),
        scale.slice_mut(),
        counters.slice_mut(),
        &interval
    )
}

impl AdamBackend for CudaBackend {
    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
        adam_update(self, items, step)
    }
    fn adam_update_scaled(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        adam_update_scaled(self, items, hyper, scale, counters)
    }
    fn adam_update_with(
        &self,
        items: &mut [AdamItem<'_>],
        step: AdamStep,
        scalars: &Storage,
    ) -> Result<()> {
        adam_update_with(self, items, step, scalars)
    }
    fn adam_update_scaled_with(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scalars: &Storage,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        adam_update_scaled_with(self, items, hyper, scalars, scale, counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_table_matches_the_kernel_struct_size() {
        // 4 pointer arrays, len, block_start (65), scalar, n_items: see kernels/adam.cu.
        let expect = 4 * 8 * ADAM_MAX_ITEMS
            + 4 * ADAM_MAX_ITEMS
            + 4 * (ADAM_MAX_ITEMS + 1)
            + 4 * ADAM_MAX_ITEMS
            + 4;
        assert_eq!(std::mem::size_of::<AdamTable>(), expect.next_multiple_of(8));
        assert!(
            std::mem::size_of::<AdamTable>() + 24 <= 4096,
            "kernel parameter limit"
        );
    }
}
