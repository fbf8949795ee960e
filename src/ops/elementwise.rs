//! Elementwise ops and activations.

use super::{check_dtypes, same_device, F32, F32_OR_F16};
use crate::backend::{Activation, ChannelDims, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("add", &[a, b])?;
    check_dtypes("add", &[("a", a), ("b", b)], F32)?;
    if a.shape() != b.shape() {
        bail!("add: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    let be = a.backend();
    let y = be.add(&a.storage(), &b.storage())?;
    Tensor::from_op(
        y,
        a.shape(),
        "add",
        &[a, b],
        move |g: &Storage, needs: &[bool]| {
            needs
                .iter()
                .map(|&n| n.then(|| be.copy(g)).transpose())
                .collect()
        },
    )
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("mul", &[a, b])?;
    check_dtypes("mul", &[("a", a), ("b", b)], F32)?;
    if a.shape() != b.shape() {
        bail!("mul: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    let be = a.backend();
    let y = be.mul(&a.storage(), &b.storage())?;
    let (sa, sb) = (a.storage_rc(), b.storage_rc());
    Tensor::from_op(
        y,
        a.shape(),
        "mul",
        &[a, b],
        move |g: &Storage, needs: &[bool]| {
            Ok(vec![
                needs[0].then(|| be.mul(g, &sb.borrow())).transpose()?,
                needs[1].then(|| be.mul(g, &sa.borrow())).transpose()?,
            ])
        },
    )
}

pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    check_dtypes("scale", &[("input", x)], F32)?;
    let be = x.backend();
    let y = be.scale(&x.storage(), alpha)?;
    Tensor::from_op(
        y,
        x.shape(),
        "scale",
        &[x],
        move |g: &Storage, _: &[bool]| Ok(vec![Some(be.scale(g, alpha)?)]),
    )
}

/// f32 or f16 in (amp's activations), the same dtype out.
fn activation(x: &Tensor, act: Activation, name: &'static str) -> Result<Tensor> {
    check_dtypes(name, &[("input", x)], F32_OR_F16)?;
    let be = x.backend();
    let y = be.activation(act, &x.storage())?;
    let y_for_backward = be.copy(&y)?;
    let sx = x.storage_rc();
    Tensor::from_op(y, x.shape(), name, &[x], move |g: &Storage, _: &[bool]| {
        Ok(vec![Some(be.activation_backward(
            act,
            &sx.borrow(),
            &y_for_backward,
            g,
        )?)])
    })
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Relu, "relu")
}

pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    activation(x, Activation::LeakyRelu(slope), "leaky_relu")
}

pub fn tanh(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Tanh, "tanh")
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Sigmoid, "sigmoid")
}

/// Gated linear unit over the channels, as PyTorch's `F.glu(x, dim=1)` / `nn.GLU(dim=1)`: x
/// `[N, 2C, ...]` (or `[N, 2C]`) gives `[N, C, ...]` = `a·σ(b)`, `a` the first C channels and
/// `b` the last C.
pub fn glu(x: &Tensor) -> Result<Tensor> {
    check_dtypes("glu", &[("input", x)], F32)?;
    let shape = x.shape();
    let (n, c2) = match *shape {
        [n, c2, ..] => (n, c2),
        ref s => {
            bail!("glu: expected a tensor [N, 2C, ...] of at least 2 dimensions, got shape {s:?}")
        }
    };
    if c2 % 2 != 0 {
        bail!(
            "glu: the channel dimension (dim 1) must be even to split into value and gate \
             halves, got {c2} channels in shape {shape:?}"
        );
    }
    let d = ChannelDims {
        n,
        c: c2 / 2,
        hw: shape[2..].iter().product(),
    };
    let mut out = shape.to_vec();
    out[1] = d.c;
    let be = x.backend();
    let y = be.glu(&x.storage(), d)?;
    let sx = x.storage_rc();
    Tensor::from_op(y, &out, "glu", &[x], move |g: &Storage, _: &[bool]| {
        Ok(vec![Some(be.glu_backward(&sx.borrow(), g, d)?)])
    })
}
