//! Launches of `kernels/elementwise.cu`: fill, binary ops, scaling and the activations.
//! Autograd: `src/ops/elementwise.rs`.

use super::{cb, cb_mut, CudaBackend, CudaBuffer};
use crate::backend::reference::elementwise as reference;
use crate::backend::*;
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

pub(super) fn fill(be: &CudaBackend, b: &mut CudaBuffer, value: f32) -> Result<()> {
    let n = b.len as u64;
    if n == 0 {
        return Ok(());
    }
    let cfg = be.grid(n);
    launch!(be, fill_f32, cfg, b.slice_mut(), &value, &n)
}

#[derive(Debug, Clone, Copy)]
enum BinaryOp {
    Add,
    Mul,
}

fn binary(be: &CudaBackend, name: BinaryOp, a: &Storage, b: &Storage) -> Result<Storage> {
    let (a, b) = (cb(a)?, cb(b)?);
    if a.len != b.len {
        bail!("{name:?}: lengths differ ({} vs {})", a.len, b.len);
    }
    let mut y = be.alloc(a.len)?;
    let n = a.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        match name {
            BinaryOp::Add => launch!(be, add_f32, cfg, a.slice(), b.slice(), y.slice_mut(), &n)?,
            BinaryOp::Mul => launch!(be, mul_f32, cfg, a.slice(), b.slice(), y.slice_mut(), &n)?,
        }
    }
    Ok(Storage::Cuda(y))
}

fn act_code(act: Activation) -> (i32, f32) {
    match act {
        Activation::Relu => (0, 0.0),
        Activation::LeakyRelu(s) => (1, s),
        Activation::Tanh => (2, 0.0),
        Activation::Sigmoid => (3, 0.0),
    }
}

pub(super) fn add(be: &CudaBackend, a: &Storage, b: &Storage) -> Result<Storage> {
    binary(be, BinaryOp::Add, a, b)
}

pub(super) fn add_assign(be: &CudaBackend, acc: &mut Storage, x: &Storage) -> Result<()> {
    let x = cb(x)?;
    let acc = cb_mut(acc)?;
    if acc.len != x.len {
        bail!("add_assign: lengths differ ({} vs {})", acc.len, x.len);
    }
    let n = x.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch!(be, add_assign_f32, cfg, acc.slice_mut(), x.slice(), &n)?;
    }
    Ok(())
}

pub(super) fn mul(be: &CudaBackend, a: &Storage, b: &Storage) -> Result<Storage> {
    binary(be, BinaryOp::Mul, a, b)
}

pub(super) fn scale(be: &CudaBackend, a: &Storage, alpha: f32) -> Result<Storage> {
    let a = cb(a)?;
    let mut y = be.alloc(a.len)?;
    let n = a.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch!(be, scale_f32, cfg, a.slice(), &alpha, y.slice_mut(), &n)?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn reciprocal(be: &CudaBackend, a: &Storage) -> Result<Storage> {
    let a = cb(a)?;
    let mut y = be.alloc(a.len)?;
    let n = a.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch!(be, reciprocal_f32, cfg, a.slice(), y.slice_mut(), &n)?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn scale_by_scalar(
    be: &CudaBackend,
    a: &Storage,
    s: &Storage,
    alpha: f32,
) -> Result<Storage> {
    let (a, s) = (cb(a)?, cb(s)?);
    if s.len != 1 {
        bail!("scale_by_scalar: the scalar has {} elements", s.len);
    }
    let mut y = be.alloc(a.len)?;
    let n = a.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch!(
            be,
            scale_by_scalar_f32,
            cfg,
            a.slice(),
            s.slice(),
            &alpha,
            y.slice_mut(),
            &n
        )?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn activation(be: &CudaBackend, act: Activation, x: &Storage) -> Result<Storage> {
    let x = cb(x)?;
    let (kind, slope) = act_code(act);
    let mut y = be.alloc(x.len)?;
    let n = x.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch!(
            be,
            act_forward_f32,
            cfg,
            &kind,
            &slope,
            x.slice(),
            y.slice_mut(),
            &n
        )?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn activation_backward(
    be: &CudaBackend,
    act: Activation,
    x: &Storage,
    y: &Storage,
    dy: &Storage,
) -> Result<Storage> {
    let (x, y, dy) = (cb(x)?, cb(y)?, cb(dy)?);
    let (kind, slope) = act_code(act);
    let mut dx = be.alloc(x.len)?;
    let n = x.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch!(
            be,
            act_backward_f32,
            cfg,
            &kind,
            &slope,
            x.slice(),
            y.slice(),
            dy.slice(),
            dx.slice_mut(),
            &n
        )?;
    }
    Ok(Storage::Cuda(dx))
}

pub(super) fn glu(be: &CudaBackend, x: &Storage, d: ChannelDims) -> Result<Storage> {
    let x = cb(x)?;
    reference::check_glu("glu", x.len, None, d)?;
    let mut y = be.alloc(d.len())?;
    let (chw, total) = ((d.c * d.hw) as u64, d.len() as u64);
    if total > 0 {
        let cfg = be.grid(total);
        launch!(
            be,
            glu_forward_f32,
            cfg,
            x.slice(),
            &chw,
            &total,
            y.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(y))
}

pub(super) fn glu_backward(
    be: &CudaBackend,
    x: &Storage,
    dy: &Storage,
    d: ChannelDims,
) -> Result<Storage> {
    let (x, dy) = (cb(x)?, cb(dy)?);
    reference::check_glu("glu_backward", x.len, Some(dy.len), d)?;
    let mut dx = be.alloc(x.len)?;
    let (chw, total) = ((d.c * d.hw) as u64, d.len() as u64);
    if total > 0 {
        let cfg = be.grid(total);
        launch!(
            be,
            glu_backward_f32,
            cfg,
            x.slice(),
            dy.slice(),
            &chw,
            &total,
            dx.slice_mut()
        )?;
    }
    Ok(Storage::Cuda(dx))
}

impl ElementwiseBackend for CudaBackend {
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        add(self, a, b)
    }
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        add_assign(self, acc, x)
    }
    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        mul(self, a, b)
    }
    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage> {
        scale(self, a, alpha)
    }
    fn reciprocal(&self, a: &Storage) -> Result<Storage> {
        reciprocal(self, a)
    }
    fn round_to_f16(&self, a: &Storage) -> Result<Storage> {
        super::conv::round_to_f16(self, a)
    }
    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
        scale_by_scalar(self, a, s, alpha)
    }
    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage> {
        activation(self, act, x)
    }
    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        activation_backward(self, act, x, y, dy)
    }
    fn glu(&self, x: &Storage, d: ChannelDims) -> Result<Storage> {
        glu(self, x, d)
    }
    fn glu_backward(&self, x: &Storage, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        glu_backward(self, x, dy, d)
    }
    fn scale_add_assign_by(
        &self,
        acc: &mut Storage,
        a: &Storage,
        x: &Storage,
        b: &Storage,
    ) -> Result<()> {
        // The default `scale_add_assign`'s arithmetic ((acc·a) + (x·b), each rounded), with
        // the factors read on the device, written back into acc's own buffer.
        let mut next = scale_by_scalar(self, acc, a, 1.0)?;
        add_assign(self, &mut next, &scale_by_scalar(self, x, b, 1.0)?)?;
        self.copy_into(acc, &next)
    }
}
