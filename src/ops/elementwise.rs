//! Elementwise ops and activations, and their backend family, [`ElementwiseBackend`].

use super::same_device;
use crate::backend::reference::{conv::round_to_f16, elementwise as reference};
use crate::backend::{all_on_host, on_host, Activation, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("add", &[a, b])?;
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

fn activation(x: &Tensor, act: Activation, name: &'static str) -> Result<Tensor> {
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

/// Elementwise maps. The defaults run the reference (`backend/reference/elementwise.rs`) on
/// host memory.
pub trait ElementwiseBackend {
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        all_on_host("add", &[a, b])?;
        reference::add(a, b)
    }
    /// `acc += x` (gradient accumulation).
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        all_on_host("add_assign", &[acc, x])?;
        reference::add_assign(acc, x)
    }
    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        all_on_host("mul", &[a, b])?;
        reference::mul(a, b)
    }
    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage> {
        all_on_host("scale", &[a])?;
        reference::scale(a, alpha)
    }
    /// `1 / a` elementwise (IEEE division). Keeps scalars such as spectral norm's sigma on the
    /// device: inverting one on the host would stall the stream.
    fn reciprocal(&self, a: &Storage) -> Result<Storage> {
        all_on_host("reciprocal", &[a])?;
        reference::reciprocal(a)
    }
    /// Each value rounded to the nearest f16 (ties to even; beyond ±65504 to ±inf), held in
    /// f32: the rounding mixed precision applies to GEMM operands (`half::f16::from_f32`).
    fn round_to_f16(&self, a: &Storage) -> Result<Storage> {
        Ok(Storage::Cpu(round_to_f16(on_host("round_to_f16", a)?)))
    }
    /// `a * s[0] * alpha` where `s` holds one element (on the device).
    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
        all_on_host("scale_by_scalar", &[a, s])?;
        reference::scale_by_scalar(a, s, alpha)
    }
    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage> {
        all_on_host("activation", &[x])?;
        reference::activation(act, x)
    }
    /// dx from the forward input `x`, its output `y` and `dy`.
    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        all_on_host("activation_backward", &[x, y, dy])?;
        reference::activation_backward(act, x, y, dy)
    }
    /// `acc = a·acc + b·x` in place (the EMA of weights), computed as `(acc·a) + (x·b)` in f32
    /// like `scale`, `scale` and `add_assign` would.
    fn scale_add_assign(&self, acc: &mut Storage, a: f32, x: &Storage, b: f32) -> Result<()> {
        let mut next = self.scale(acc, a)?;
        self.add_assign(&mut next, &self.scale(x, b)?)?;
        *acc = next;
        Ok(())
    }
    /// [`ElementwiseBackend::scale_add_assign`] with `a` and `b` read from one-element buffers
    /// (written before the step: what a CUDA graph replays with new values), `acc` updated in
    /// place (its buffer kept, as a graph needs). Same arithmetic as `scale_add_assign`.
    fn scale_add_assign_by(
        &self,
        acc: &mut Storage,
        a: &Storage,
        x: &Storage,
        b: &Storage,
    ) -> Result<()> {
        let (a, b) = match (a, b) {
            (Storage::Cpu(a), Storage::Cpu(b)) if a.len() == 1 && b.len() == 1 => (a[0], b[0]),
            _ => bail!("scale_add_assign_by: the scalars must be one host element each"),
        };
        self.scale_add_assign(acc, a, x, b)
    }
}
