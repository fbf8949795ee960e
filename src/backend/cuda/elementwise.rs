//! Launches of `kernels/elementwise.cu`: fill, binary ops, scaling and the activations.
//! Autograd: `src/ops/elementwise.rs`.
//!
//! `add`, `add_assign` and the activations take f32 or f16 tensors (amp's activations and their
//! gradients: f16 in and out, f32 inside), all of one dtype per call; the rest take f32.

use super::dtype::{alloc_dtype, any_buffer, any_buffer_mut, same_dtype, storage};
use super::{cb, CudaBackend, CudaBuffer};
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

/// `a op b` elementwise: add in either dtype (`a` and `b` alike), mul in f32.
fn binary(be: &CudaBackend, name: BinaryOp, a: &Storage, b: &Storage) -> Result<Storage> {
    let dtype = match name {
        BinaryOp::Add => same_dtype("add", &[("a", a), ("b", b)])?,
        BinaryOp::Mul => DType::F32,
    };
    let (a, b) = match name {
        BinaryOp::Add => (any_buffer(a)?, any_buffer(b)?),
        BinaryOp::Mul => (cb(a)?, cb(b)?),
    };
    if a.len != b.len {
        bail!("{name:?}: lengths differ ({} vs {})", a.len, b.len);
    }
    let mut y = alloc_dtype(be, dtype, a.len)?;
    let n = a.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        let (a, b, y) = (a.slice(), b.slice(), y.slice_mut());
        match name {
            BinaryOp::Add => launch_typed!(be, dtype, add_f32 | add_f16, cfg, a, b, y, &n)?,
            BinaryOp::Mul => launch!(be, mul_f32, cfg, a, b, y, &n)?,
        }
    }
    Ok(storage(dtype, y))
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

/// `acc += x` (gradient accumulation), both f32 or both f16.
pub(super) fn add_assign(be: &CudaBackend, acc: &mut Storage, x: &Storage) -> Result<()> {
    let dtype = same_dtype("add_assign", &[("acc", acc), ("x", x)])?;
    let x = any_buffer(x)?;
    let acc = any_buffer_mut(acc)?;
    if acc.len != x.len {
        bail!("add_assign: lengths differ ({} vs {})", acc.len, x.len);
    }
    let n = x.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        let (acc, x) = (acc.slice_mut(), x.slice());
        launch_typed!(be, dtype, add_assign_f32 | add_assign_f16, cfg, acc, x, &n)?;
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

/// `act(x)`, of x's dtype.
pub(super) fn activation(be: &CudaBackend, act: Activation, x: &Storage) -> Result<Storage> {
    let dtype = x.dtype();
    let x = any_buffer(x)?;
    let (kind, slope) = act_code(act);
    let mut y = alloc_dtype(be, dtype, x.len)?;
    let n = x.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch_typed!(
            be,
            dtype,
            act_forward_f32 | act_forward_f16,
            cfg,
            &kind,
            &slope,
            x.slice(),
            y.slice_mut(),
            &n
        )?;
    }
    Ok(storage(dtype, y))
}

pub(super) fn activation_backward(
    be: &CudaBackend,
    act: Activation,
    x: &Storage,
    y: &Storage,
    dy: &Storage,
) -> Result<Storage> {
    let dtype = same_dtype("activation backward", &[("x", x), ("y", y), ("dy", dy)])?;
    let (x, y, dy) = (any_buffer(x)?, any_buffer(y)?, any_buffer(dy)?);
    let (kind, slope) = act_code(act);
    let mut dx = alloc_dtype(be, dtype, x.len)?;
    let n = x.len as u64;
    if n > 0 {
        let cfg = be.grid(n);
        launch_typed!(
            be,
            dtype,
            act_backward_f32 | act_backward_f16,
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
    Ok(storage(dtype, dx))
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
