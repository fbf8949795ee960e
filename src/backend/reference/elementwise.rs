//! Elementwise ops and activations, reference: one plain map per op (`kernels/elementwise.cu`).
//! Autograd: `src/ops/elementwise.rs`.

use super::{host, host_mut, scalar, stable_sigmoid};
use crate::backend::*;
use anyhow::{bail, Result};

fn zip_map(a: &Storage, b: &Storage, f: impl Fn(f32, f32) -> f32) -> Result<Storage> {
    let (a, b) = (host(a)?, host(b)?);
    if a.len() != b.len() {
        bail!("elementwise op on {} and {} elements", a.len(), b.len());
    }
    Ok(Storage::Cpu(
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect(),
    ))
}

fn map(a: &Storage, f: impl Fn(f32) -> f32) -> Result<Storage> {
    Ok(Storage::Cpu(host(a)?.iter().map(|&x| f(x)).collect()))
}

pub(crate) fn add(a: &Storage, b: &Storage) -> Result<Storage> {
    zip_map(a, b, |x, y| x + y)
}

pub(crate) fn add_assign(acc: &mut Storage, x: &Storage) -> Result<()> {
    let x = host(x)?;
    let acc = host_mut(acc)?;
    if acc.len() != x.len() {
        bail!("add_assign of {} into {} elements", x.len(), acc.len());
    }
    acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
    Ok(())
}

pub(crate) fn mul(a: &Storage, b: &Storage) -> Result<Storage> {
    zip_map(a, b, |x, y| x * y)
}

pub(crate) fn scale(a: &Storage, alpha: f32) -> Result<Storage> {
    map(a, |x| x * alpha)
}

pub(crate) fn reciprocal(a: &Storage) -> Result<Storage> {
    map(a, |x| 1.0 / x)
}

pub(crate) fn scale_by_scalar(a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
    let k = scalar(s)? * alpha;
    map(a, |x| x * k)
}

pub(crate) fn activation(act: Activation, x: &Storage) -> Result<Storage> {
    match act {
        Activation::Relu => map(x, |v| v.max(0.0)),
        Activation::LeakyRelu(slope) => map(x, |v| if v > 0.0 { v } else { v * slope }),
        Activation::Tanh => map(x, f32::tanh),
        Activation::Sigmoid => map(x, stable_sigmoid),
    }
}

pub(crate) fn activation_backward(
    act: Activation,
    x: &Storage,
    y: &Storage,
    dy: &Storage,
) -> Result<Storage> {
    match act {
        Activation::Relu => zip_map(x, dy, |v, g| if v > 0.0 { g } else { 0.0 }),
        Activation::LeakyRelu(s) => zip_map(x, dy, |v, g| if v > 0.0 { g } else { g * s }),
        Activation::Tanh => zip_map(y, dy, |v, g| g * (1.0 - v * v)),
        Activation::Sigmoid => zip_map(y, dy, |v, g| g * v * (1.0 - v)),
    }
}

/// Checks GLU's lengths: `x` holds `[n, 2c, hw]`, `dy` (if given) `[n, c, hw]`.
pub(crate) fn check_glu(op: &str, x: usize, dy: Option<usize>, d: ChannelDims) -> Result<()> {
    if x != 2 * d.len() || dy.is_some_and(|dy| dy != d.len()) {
        bail!(
            "{op}: {x} input values{} for an output of {d:?} (the input holds twice the output)",
            dy.map_or(String::new(), |dy| format!(" and {dy} gradient values"))
        );
    }
    Ok(())
}

/// Where image `n`'s value channel `c` and its gate channel `c + d.c` start in `[n, 2c, hw]`.
fn glu_halves(d: ChannelDims, n: usize, c: usize) -> (usize, usize) {
    let a = (n * 2 * d.c + c) * d.hw;
    (a, a + d.c * d.hw)
}

pub(crate) fn glu(x: &Storage, d: ChannelDims) -> Result<Storage> {
    let x = host(x)?;
    check_glu("glu", x.len(), None, d)?;
    let mut y = Vec::with_capacity(d.len());
    for n in 0..d.n {
        for c in 0..d.c {
            let (a, b) = glu_halves(d, n, c);
            for p in 0..d.hw {
                y.push(x[a + p] * stable_sigmoid(x[b + p]));
            }
        }
    }
    Ok(Storage::Cpu(y))
}

pub(crate) fn glu_backward(x: &Storage, dy: &Storage, d: ChannelDims) -> Result<Storage> {
    let (x, dy) = (host(x)?, host(dy)?);
    check_glu("glu_backward", x.len(), Some(dy.len()), d)?;
    let mut dx = vec![0.0; x.len()];
    for n in 0..d.n {
        for c in 0..d.c {
            let (a, b) = glu_halves(d, n, c);
            let g = &dy[(n * d.c + c) * d.hw..][..d.hw];
            for (p, &g) in g.iter().enumerate() {
                let s = stable_sigmoid(x[b + p]);
                dx[a + p] = g * s;
                dx[b + p] = g * x[a + p] * s * (1.0 - s);
            }
        }
    }
    Ok(Storage::Cpu(dx))
}
