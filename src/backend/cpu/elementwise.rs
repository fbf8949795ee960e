//! Elementwise ops, activations and the in-place `scale_add_assign` (the EMA update) on the
//! rayon pool, in fixed chunks (each element alone, so the split changes no result).
//! Reference: `crate::backend::reference::elementwise`; kernels: `kernels/elementwise.cu`.

use super::{host, host_mut, par_filled, ELEMENTWISE_CHUNK};
use crate::backend::reference::{scalar, stable_sigmoid};
use crate::backend::*;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

fn zip_map(a: &Storage, b: &Storage, f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Result<Storage> {
    let (a, b) = (host(a)?, host(b)?);
    if a.len() != b.len() {
        bail!("elementwise op on {} and {} elements", a.len(), b.len());
    }
    // SAFETY: a and b are as long as the output, so each chunk's zip writes all of it.
    let out = unsafe {
        filled(a.len(), |start, out| {
            let (a, b) = (&a[start..start + out.len()], &b[start..start + out.len()]);
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                o.write(f(x, y));
            }
        })
    };
    Ok(Storage::Cpu(out))
}

fn map(a: &Storage, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Storage> {
    let a = host(a)?;
    // SAFETY: a is as long as the output, so each chunk's zip writes all of it.
    let out = unsafe {
        filled(a.len(), |start, out| {
            let a = &a[start..start + out.len()];
            for (o, &x) in out.iter_mut().zip(a) {
                o.write(f(x));
            }
        })
    };
    Ok(Storage::Cpu(out))
}

/// A new vector of `len` floats written by `fill(start, chunk)` in chunks of
/// [`ELEMENTWISE_CHUNK`] ([`par_filled`]).
///
/// # Safety
/// `fill` must write every element of its chunk.
unsafe fn filled(len: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    // SAFETY: passed on to our caller.
    unsafe {
        par_filled(len, ELEMENTWISE_CHUNK, 1, |i, chunk| {
            fill(i * ELEMENTWISE_CHUNK, chunk)
        })
    }
}

/// A copy made on the pool (a fused conv + activation keeps one of every output for its
/// backward: cloned on the calling thread, it left the pool idle).
pub(super) fn copy(a: &Storage) -> Result<Storage> {
    map(a, |x| x)
}

pub(super) fn add(a: &Storage, b: &Storage) -> Result<Storage> {
    zip_map(a, b, |x, y| x + y)
}

pub(super) fn mul(a: &Storage, b: &Storage) -> Result<Storage> {
    zip_map(a, b, |x, y| x * y)
}

pub(super) fn scale(a: &Storage, alpha: f32) -> Result<Storage> {
    map(a, |x| x * alpha)
}

pub(super) fn reciprocal(a: &Storage) -> Result<Storage> {
    map(a, |x| 1.0 / x)
}

pub(super) fn scale_by_scalar(a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
    let k = scalar(s)? * alpha;
    map(a, |x| x * k)
}

/// Evaluates `$body` with `$f` bound to `act`'s function, a closure type per activation, so a
/// loop over elements in `$body` is compiled for each one with the match outside it.
macro_rules! with_activation {
    ($act:expr, $f:ident => $body:expr) => {
        match $act {
            Activation::Relu => {
                let $f = |v: f32| v.max(0.0);
                $body
            }
            Activation::LeakyRelu(slope) => {
                let $f = move |v: f32| if v > 0.0 { v } else { v * slope };
                $body
            }
            Activation::Tanh => {
                let $f = f32::tanh;
                $body
            }
            Activation::Sigmoid => {
                let $f = stable_sigmoid;
                $body
            }
        }
    };
}

pub(super) fn activation(act: Activation, x: &Storage) -> Result<Storage> {
    with_activation!(act, f => map(x, f))
}

/// `xs[i] = act(xs[i])` on the calling thread: the epilogue of a fused conv + activation
/// (`cpu/conv.rs`), applied to each piece of output while it is still in cache.
pub(super) fn activate_in_place(act: Activation, xs: &mut [f32]) {
    with_activation!(act, f => xs.iter_mut().for_each(|v| *v = f(*v)))
}

/// As [`with_activation`], with `$f(v, g)` the gradient through `act` from `g` and `v`, the
/// activation's input for ReLU and LeakyReLU (only its sign is read) and its output for Tanh
/// and Sigmoid.
macro_rules! with_activation_grad {
    ($act:expr, $f:ident => $body:expr) => {
        match $act {
            Activation::Relu => {
                let $f = |v: f32, g: f32| if v > 0.0 { g } else { 0.0 };
                $body
            }
            Activation::LeakyRelu(s) => {
                let $f = move |v: f32, g: f32| if v > 0.0 { g } else { g * s };
                $body
            }
            Activation::Tanh => {
                let $f = |v: f32, g: f32| g * (1.0 - v * v);
                $body
            }
            Activation::Sigmoid => {
                let $f = |v: f32, g: f32| g * v * (1.0 - v);
                $body
            }
        }
    };
}

pub(super) fn activation_backward(
    act: Activation,
    x: &Storage,
    y: &Storage,
    dy: &Storage,
) -> Result<Storage> {
    let v = match act {
        Activation::Relu | Activation::LeakyRelu(_) => x,
        Activation::Tanh | Activation::Sigmoid => y,
    };
    with_activation_grad!(act, f => zip_map(v, dy, f))
}

/// `out[i] = dy[i]` through the derivative of `act`, read off its output `y` (the sign of its
/// input, for ReLU and LeakyReLU of slope >= 0): [`activation_backward`]'s values, on the
/// calling thread, for a conv's backward that applies it as it reads dy (`cpu/conv.rs`).
pub(super) fn activation_grad_into(act: Activation, y: &[f32], dy: &[f32], out: &mut [f32]) {
    with_activation_grad!(act, f => {
        for ((o, &v), &g) in out.iter_mut().zip(y).zip(dy) {
            *o = f(v, g);
        }
    })
}

pub(super) fn scale_add_assign(acc: &mut Storage, a: f32, x: &Storage, b: f32) -> Result<()> {
    let x = host(x)?;
    let acc = host_mut(acc)?;
    if acc.len() != x.len() {
        bail!(
            "scale_add_assign of {} into {} elements",
            x.len(),
            acc.len()
        );
    }
    acc.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(x.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(acc, x)| {
            for (e, &w) in acc.iter_mut().zip(x) {
                *e = *e * a + w * b;
            }
        });
    Ok(())
}
