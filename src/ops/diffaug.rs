//! DiffAugment (Zhao et al. 2020): colour, translation and cutout of a batch with per-sample
//! parameters from the Philox stream, differentiable.

use super::{check_dtypes, nchw, F32};
use crate::backend::{ChannelDims, Device, Storage};
use crate::rng::{philox_at, uniform_from_bits};
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// DiffAugment colour with given per-sample `params` (`[N, 3]` host values: brightness shift,
/// saturation factor, contrast factor).
pub fn diffaug_color(x: &Tensor, params: &[f32]) -> Result<Tensor> {
    diffaug_color_by(
        x,
        &Tensor::from_vec(params.to_vec(), &[params.len()], x.device())?,
    )
}

/// [`diffaug_color`] with the parameters on the device.
fn diffaug_color_by(x: &Tensor, params: &Tensor) -> Result<Tensor> {
    check_dtypes("diffaug_color", &[("input", x), ("params", params)], F32)?;
    let [n, c, h, w] = nchw("diffaug_color", x)?;
    if params.numel() != n * 3 {
        bail!(
            "diffaug_color: {} parameters for {n} images",
            params.numel()
        );
    }
    let d = ChannelDims { n, c, hw: h * w };
    let be = x.backend();
    let p = params.storage_rc();
    let y = be.diffaug_color(&x.storage(), &p.borrow(), d, true)?;
    Tensor::from_op(
        y,
        x.shape(),
        "diffaug_color",
        &[x],
        move |g: &Storage, _needs: &[bool]| {
            // Brightness adds a constant; the rest is linear and self-adjoint (see the backend).
            Ok(vec![Some(be.diffaug_color(g, &p.borrow(), d, false)?)])
        },
    )
}

/// DiffAugment translation by whole pixels `shifts` (`[N, 2]`: rows, columns), zero padding.
pub fn diffaug_translate(x: &Tensor, shifts: &[i32]) -> Result<Tensor> {
    let p = DiffAugmentParams {
        shifts: shifts.to_vec(),
        ..Default::default()
    };
    let [fwd, back] = p.shift_values();
    let dev = |v: Vec<f32>| Tensor::from_vec(v, &[shifts.len()], x.device());
    diffaug_translate_by(x, &dev(fwd)?, &dev(back)?)
}

/// [`diffaug_translate`] with the shifts (`back`: negated) on the device.
fn diffaug_translate_by(x: &Tensor, shifts: &Tensor, back: &Tensor) -> Result<Tensor> {
    check_dtypes("diffaug_translate", &[("input", x)], F32)?;
    let dims = nchw("diffaug_translate", x)?;
    if shifts.numel() != dims[0] * 2 || back.numel() != shifts.numel() {
        bail!(
            "diffaug_translate: {} shifts for {} images",
            shifts.numel(),
            dims[0]
        );
    }
    let be = x.backend();
    let y = be.diffaug_translate(&x.storage(), &shifts.storage(), dims)?;
    let back = back.storage_rc();
    Tensor::from_op(
        y,
        x.shape(),
        "diffaug_translate",
        &[x],
        move |g: &Storage, _needs: &[bool]| {
            Ok(vec![Some(be.diffaug_translate(g, &back.borrow(), dims)?)])
        },
    )
}

/// DiffAugment cutout: zero inside `boxes[n] = (y0, y1, x0, x1)` (ends exclusive).
pub fn diffaug_cutout(x: &Tensor, boxes: &[i32]) -> Result<Tensor> {
    let b: Vec<f32> = boxes.iter().map(|&v| v as f32).collect();
    diffaug_cutout_by(x, &Tensor::from_vec(b, &[boxes.len()], x.device())?)
}

/// [`diffaug_cutout`] with the boxes on the device.
fn diffaug_cutout_by(x: &Tensor, boxes: &Tensor) -> Result<Tensor> {
    check_dtypes("diffaug_cutout", &[("input", x)], F32)?;
    let dims = nchw("diffaug_cutout", x)?;
    if boxes.numel() != dims[0] * 4 {
        bail!(
            "diffaug_cutout: {} box values for {} images",
            boxes.numel(),
            dims[0]
        );
    }
    let be = x.backend();
    let b = boxes.storage_rc();
    let y = be.diffaug_cutout(&x.storage(), &b.borrow(), dims)?;
    Tensor::from_op(
        y,
        x.shape(),
        "diffaug_cutout",
        &[x],
        move |g: &Storage, _needs: &[bool]| {
            Ok(vec![Some(be.diffaug_cutout(g, &b.borrow(), dims)?)])
        },
    )
}

/// Which DiffAugment transforms are on (`--diffaugment color,translation,cutout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffAugment {
    pub color: bool,
    pub translation: bool,
    pub cutout: bool,
}

impl DiffAugment {
    /// Parses a comma-separated policy (`none` or empty: off).
    pub fn parse(s: &str) -> Result<Self> {
        let mut p = DiffAugment::default();
        for part in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "color" | "colour" => p.color = true,
                "translation" => p.translation = true,
                "cutout" => p.cutout = true,
                "none" => {}
                other => bail!(
                    "--diffaugment: unknown transform '{other}' (known: color, translation, \
                     cutout)"
                ),
            }
        }
        Ok(p)
    }

    pub fn is_on(&self) -> bool {
        self.color || self.translation || self.cutout
    }

    /// The policy as written on the command line (`none` when off).
    pub fn describe(&self) -> String {
        let parts: Vec<&str> = [
            (self.color, "color"),
            (self.translation, "translation"),
            (self.cutout, "cutout"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(",")
        }
    }
}

/// Per-sample DiffAugment parameters for `n` images of `h`×`w`, drawn from the Philox stream
/// at `seed` (image b uses counters 2b and 2b + 1), following the paper's definitions:
/// brightness U(-0.5, 0.5), saturation U(0, 2), contrast U(0.5, 1.5); translation by up to
/// 1/8 of the side (rounded) each way; one cutout square of half the side, centred uniformly.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiffAugmentParams {
    pub color: Vec<f32>,
    pub shifts: Vec<i32>,
    pub boxes: Vec<i32>,
}

impl DiffAugmentParams {
    /// The shifts as the translation kernel reads them: forward, and negated for the backward.
    fn shift_values(&self) -> [Vec<f32>; 2] {
        [
            self.shifts.iter().map(|&s| s as f32).collect(),
            self.shifts.iter().map(|&s| -s as f32).collect(),
        ]
    }

    /// Everything the kernels read, in [`DiffAugmentBuffers`] order.
    fn device_values(&self) -> [Vec<f32>; 4] {
        let [fwd, back] = self.shift_values();
        let boxes = self.boxes.iter().map(|&v| v as f32).collect();
        [self.color.clone(), fwd, back, boxes]
    }
}

/// DiffAugment parameters of one batch on the device, as its kernels read them (colour,
/// shifts, negated shifts, cutout boxes). A training step that a CUDA graph replays keeps one
/// per augmentation and rewrites it before each step ([`DiffAugmentBuffers::write`]), so
/// that a replay uses the step's own parameters.
pub struct DiffAugmentBuffers([Tensor; 4]);

impl DiffAugmentBuffers {
    pub fn new(p: &DiffAugmentParams, device: Device) -> Result<Self> {
        let [a, b, c, d] = p
            .device_values()
            .map(|v| Tensor::from_vec(v.clone(), &[v.len()], device));
        Ok(DiffAugmentBuffers([a?, b?, c?, d?]))
    }

    /// Overwrites the parameters in place (queues host-to-device copies).
    pub fn write(&self, p: &DiffAugmentParams) -> Result<()> {
        for (t, v) in self.0.iter().zip(p.device_values()) {
            t.backend().write(&mut t.storage_mut(), &v)?;
        }
        Ok(())
    }
}

fn below(bits: u32, m: usize) -> i32 {
    ((uniform_from_bits(bits) * m as f32) as usize).min(m - 1) as i32
}

pub fn diffaug_params(seed: u64, first: usize, n: usize, h: usize, w: usize) -> DiffAugmentParams {
    let mut p = DiffAugmentParams {
        color: Vec::with_capacity(3 * n),
        shifts: Vec::with_capacity(2 * n),
        boxes: Vec::with_capacity(4 * n),
    };
    // int(size * ratio + 0.5) as in the paper's code.
    let (ty, tx) = (
        (h as f32 * 0.125 + 0.5) as i32,
        (w as f32 * 0.125 + 0.5) as i32,
    );
    let (ch, cw) = ((h as f32 * 0.5 + 0.5) as i32, (w as f32 * 0.5 + 0.5) as i32);
    for b in first as u64..(first + n) as u64 {
        let a = philox_at(seed, 2 * b);
        let c = philox_at(seed, 2 * b + 1);
        p.color.push(uniform_from_bits(a[0]) - 0.5);
        p.color.push(uniform_from_bits(a[1]) * 2.0);
        p.color.push(uniform_from_bits(a[2]) + 0.5);
        p.shifts.push(below(a[3], (2 * ty + 1) as usize) - ty);
        p.shifts.push(below(c[0], (2 * tx + 1) as usize) - tx);
        let oy = below(c[1], h + (1 - (ch % 2)) as usize) - ch / 2;
        let ox = below(c[2], w + (1 - (cw % 2)) as usize) - cw / 2;
        p.boxes.extend([
            oy.max(0),
            (oy + ch).min(h as i32),
            ox.max(0),
            (ox + cw).min(w as i32),
        ]);
    }
    p
}

/// DiffAugment of a batch: the enabled transforms in the paper's order (colour, translation,
/// cutout), differentiable, with parameters from [`diffaug_params`]`(seed, …)`.
pub fn diff_augment(x: &Tensor, policy: DiffAugment, seed: u64) -> Result<Tensor> {
    diff_augment_part(x, policy, seed, 0)
}

/// [`diff_augment`] of images `first..first + n` of a larger batch drawn with `seed`: the
/// part one GPU of several holds gets the parameters the whole batch's images would.
pub fn diff_augment_part(
    x: &Tensor,
    policy: DiffAugment,
    seed: u64,
    first: usize,
) -> Result<Tensor> {
    let [n, _, h, w] = nchw("diff_augment", x)?;
    let p = diffaug_params(seed, first, n, h, w);
    diff_augment_by(x, policy, &DiffAugmentBuffers::new(&p, x.device())?)
}

/// [`diff_augment`] with the parameters already on the device.
pub fn diff_augment_by(x: &Tensor, policy: DiffAugment, p: &DiffAugmentBuffers) -> Result<Tensor> {
    let [color, shifts, back, boxes] = &p.0;
    let mut y = x.clone();
    if policy.color {
        y = diffaug_color_by(&y, color)?;
    }
    if policy.translation {
        y = diffaug_translate_by(&y, shifts, back)?;
    }
    if policy.cutout {
        y = diffaug_cutout_by(&y, boxes)?;
    }
    Ok(y)
}
