//! conv2d and conv_transpose2d (PyTorch semantics and weight layouts). A transposed conv is
//! the backward-data of the conv described by `ConvGeom::transposed`, so both share the
//! backend's three conv primitives. Under `crate::amp::autocast` the geometry asks them to
//! round their operands to f16 (mixed precision: see `backend/reference/conv.rs`); the backward
//! closures keep that geometry, so the backward rounds too whenever it runs.

use super::{nchw, same_device};
use crate::backend::{Backend, ChannelDims, ConvGeom, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use std::rc::Rc;

fn check_bias(op: &str, bias: Option<&Tensor>, channels: usize) -> Result<()> {
    if let Some(b) = bias {
        if b.shape() != [channels] {
            bail!("{op}: bias shape {:?}, expected [{channels}]", b.shape());
        }
    }
    Ok(())
}

/// Adds the bias (if any) and records the full op; `grads(dy, need_dx, need_dw)` yields
/// (d input, d weight), each only when asked for.
#[allow(clippy::too_many_arguments)]
fn finish(
    be: Rc<dyn Backend>,
    y: Storage,
    shape: [usize; 4],
    name: &'static str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    grads: impl Fn(&Storage, bool, bool) -> Result<(Option<Storage>, Option<Storage>)> + 'static,
) -> Result<Tensor> {
    let dims = ChannelDims {
        n: shape[0],
        c: shape[1],
        hw: shape[2] * shape[3],
    };
    let y = match bias {
        Some(b) => be.add_channel_bias(&y, &b.storage(), dims)?,
        None => y,
    };
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    let has_bias = bias.is_some();
    Tensor::from_op(
        y,
        &shape,
        name,
        &inputs,
        move |g: &Storage, needs: &[bool]| {
            let (dx, dw) = grads(g, needs[0], needs[1])?;
            let mut out = vec![dx, dw];
            if has_bias {
                out.push(needs[2].then(|| be.channel_sum(g, dims)).transpose()?);
            }
            Ok(out)
        },
    )
}

/// `x [n, c_in, h, w]`, `w [c_out, c_in, k, k]`, optional `bias [c_out]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    same_device("conv2d", &[x, w])?;
    let [n, c_in, h, wd] = nchw("conv2d", x)?;
    let [c_out, wc_in, kh, kw] = nchw("conv2d weight", w)?;
    if wc_in != c_in || kh != kw {
        bail!(
            "conv2d: weight {:?} does not fit input {:?} (square kernels only)",
            w.shape(),
            x.shape()
        );
    }
    check_bias("conv2d", bias, c_out)?;
    let g = ConvGeom {
        f16_operands: crate::amp::autocast_enabled(),
        ..ConvGeom::conv(n, c_in, h, wd, c_out, kh, stride, pad)?
    };
    let be = x.backend();
    let y = be.conv2d_forward(&x.storage(), &w.storage(), &g)?;
    let (sx, sw, be2) = (x.storage_rc(), w.storage_rc(), be.clone());
    finish(
        be,
        y,
        [n, c_out, g.oh, g.ow],
        "conv2d",
        x,
        w,
        bias,
        move |dy, need_dx, need_dw| {
            let dx = need_dx
                .then(|| be2.conv2d_backward_data(dy, &sw.borrow(), &g))
                .transpose()?;
            let dw = need_dw
                .then(|| be2.conv2d_backward_filter(&sx.borrow(), dy, &g))
                .transpose()?;
            Ok((dx, dw))
        },
    )
}

/// `x [n, c_in, h, w]`, `w [c_in, c_out, k, k]` (PyTorch's ConvTranspose2d layout), optional
/// `bias [c_out]`. Output side `(h-1)·stride − 2·pad + k + output_padding`.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
    output_padding: usize,
) -> Result<Tensor> {
    same_device("conv_transpose2d", &[x, w])?;
    let [n, c_in, h, wd] = nchw("conv_transpose2d", x)?;
    let [wc_in, c_out, kh, kw] = nchw("conv_transpose2d weight", w)?;
    if wc_in != c_in || kh != kw {
        bail!(
            "conv_transpose2d: weight {:?} does not fit input {:?} (square kernels only)",
            w.shape(),
            x.shape()
        );
    }
    if h == 0 || wd == 0 {
        bail!("conv_transpose2d: empty input {:?}", x.shape());
    }
    check_bias("conv_transpose2d", bias, c_out)?;
    let g = ConvGeom {
        f16_operands: crate::amp::autocast_enabled(),
        ..ConvGeom::transposed(n, c_in, h, wd, c_out, kh, stride, pad, output_padding)?
    };
    let be = x.backend();
    let y = be.conv2d_backward_data(&x.storage(), &w.storage(), &g)?;
    let (sx, sw, be2) = (x.storage_rc(), w.storage_rc(), be.clone());
    let shape = [n, c_out, g.h, g.w];
    finish(
        be,
        y,
        shape,
        "conv_transpose2d",
        x,
        w,
        bias,
        move |dy, need_dx, need_dw| {
            let dx = need_dx
                .then(|| be2.conv2d_forward(dy, &sw.borrow(), &g))
                .transpose()?;
            let dw = need_dw
                .then(|| be2.conv2d_backward_filter(dy, &sx.borrow(), &g))
                .transpose()?;
            Ok((dx, dw))
        },
    )
}
