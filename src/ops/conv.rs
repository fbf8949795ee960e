//! conv2d and conv_transpose2d (PyTorch semantics and weight layouts). A transposed conv is
//! the backward-data of the conv described by `ConvGeom::transposed`, so both share the
//! backend's three conv primitives. Each op takes the caller's [`Numerics`], which the
//! geometry carries to the backend: under amp it asks them to round their operands to f16
//! (mixed precision: see `backend/conv.rs`), and it names the CUDA implementation;
//! the backward closures keep that geometry, so the backward runs with the forward's numerics
//! whenever it runs. `conv2d_act` and
//! `conv_transpose2d_act` are the same ops with the layer's activation after them, which a
//! backend may apply as it writes the output (one pass over it fewer).

use super::{check_dtypes, nchw, same_device};
use crate::amp::Numerics;
use crate::backend::{Activation, Backend, ChannelDims, ConvGeom, DType, Storage};
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use std::rc::Rc;

/// What the op applies to the convolution's output: an optional bias, or an activation, which
/// the backend may fuse into the pass that writes the output (`ConvBackend::conv2d_forward_act`).
#[derive(Clone, Copy)]
enum After<'a> {
    Bias(Option<&'a Tensor>),
    Act(Activation),
}

impl After<'_> {
    fn check(&self, op: &str, channels: usize) -> Result<()> {
        match self {
            After::Bias(Some(b)) if b.shape() != [channels] => {
                bail!("{op}: bias shape {:?}, expected [{channels}]", b.shape())
            }
            // The backward reads the activation's derivative off its output.
            After::Act(act) if !act.derivative_from_output() => {
                bail!("{op}: a fused {act:?} needs a slope >= 0")
            }
            _ => Ok(()),
        }
    }
}

/// The dtypes a conv takes: f32 input and weight; under amp also an f16 input (the activation
/// a previous layer gave), which only amp's convolutions take.
fn check_conv_dtypes(op: &str, x: &Tensor, w: &Tensor, numerics: Numerics) -> Result<()> {
    let amp = numerics.precision == crate::amp::Precision::Amp;
    let accepts: &[&[DType]] = if amp {
        &[&[DType::F32], &[DType::F16, DType::F32]]
    } else {
        &[&[DType::F32]]
    };
    check_dtypes(op, &[("input", x), ("weight", w)], accepts)
}

/// `s` as `dtype` (a gradient takes its tensor's dtype): itself when it already is.
fn as_dtype(be: &dyn Backend, s: Storage, dtype: DType) -> Result<Storage> {
    if s.dtype() == dtype {
        return Ok(s);
    }
    be.cast(&s, dtype)
}

/// The gradient reaching a conv op: `dy`, and the fused activation it first goes back through,
/// with that activation's output, if the op has one.
struct Upstream<'a> {
    dy: &'a Storage,
    act: Option<&'a (Activation, Storage)>,
}

impl Upstream<'_> {
    /// The gradient through the activation, if there is one (else use `dy` as it is): the
    /// derivative read off the output (the sign of the input is the sign of the output for the
    /// activations a conv fuses, see `After::check`).
    fn through_activation(&self, be: &dyn Backend) -> Result<Option<Storage>> {
        self.act
            .map(|(act, y)| be.activation_backward(*act, y, y, self.dy))
            .transpose()
    }
}

/// Applies `after` to the conv output `y` (an activation is already in it) and records the
/// full op; `grads(upstream, need_dx, need_dw)` yields (d input, d weight), each only when
/// asked for.
#[allow(clippy::too_many_arguments)]
fn finish(
    be: Rc<dyn Backend>,
    y: Storage,
    shape: [usize; 4],
    name: &'static str,
    x: &Tensor,
    w: &Tensor,
    after: After,
    grads: impl Fn(&Upstream, bool, bool) -> Result<(Option<Storage>, Option<Storage>)> + 'static,
) -> Result<Tensor> {
    let dims = ChannelDims {
        n: shape[0],
        c: shape[1],
        hw: shape[2] * shape[3],
    };
    let (y, bias, act) = match after {
        // The bias is added in f32 (an amp output is rounded once more after it, as PyTorch
        // autocast's f16 convolution with bias is).
        After::Bias(Some(b)) => {
            let dtype = y.dtype();
            let y = as_dtype(&*be, y, DType::F32)?;
            let y = be.add_channel_bias(&y, &b.storage(), dims)?;
            (as_dtype(&*be, y, dtype)?, Some(b), None)
        }
        After::Bias(None) => (y, None, None),
        // The output for the backward, as `ops::activation` keeps it (the tensor's own storage
        // may change later).
        After::Act(act) => {
            let y_for_backward = be.copy(&y)?;
            (y, None, Some((act, y_for_backward)))
        }
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
            let upstream = Upstream {
                dy: g,
                act: act.as_ref(),
            };
            let (dx, dw) = grads(&upstream, needs[0], needs[1])?;
            let mut out = vec![dx, dw];
            // A bias never comes with an activation (see `After`): dy is its gradient.
            if has_bias {
                let db = needs[2]
                    .then(|| match g.dtype() {
                        DType::F32 => be.channel_sum(g, dims),
                        DType::F16 => be.channel_sum(&be.cast(g, DType::F32)?, dims),
                    })
                    .transpose()?;
                out.push(db);
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
    numerics: Numerics,
) -> Result<Tensor> {
    conv2d_then(x, w, After::Bias(bias), stride, pad, numerics)
}

/// `act(conv2d(x, w))` as one op (the layers' conv + activation; see [`After`]).
pub fn conv2d_act(
    x: &Tensor,
    w: &Tensor,
    act: Activation,
    stride: usize,
    pad: usize,
    numerics: Numerics,
) -> Result<Tensor> {
    conv2d_then(x, w, After::Act(act), stride, pad, numerics)
}

fn conv2d_then(
    x: &Tensor,
    w: &Tensor,
    after: After,
    stride: usize,
    pad: usize,
    numerics: Numerics,
) -> Result<Tensor> {
    same_device("conv2d", &[x, w])?;
    check_conv_dtypes("conv2d", x, w, numerics)?;
    let [n, c_in, h, wd] = nchw("conv2d", x)?;
    let [c_out, wc_in, kh, kw] = nchw("conv2d weight", w)?;
    if wc_in != c_in || kh != kw {
        bail!(
            "conv2d: weight {:?} does not fit input {:?} (square kernels only)",
            w.shape(),
            x.shape()
        );
    }
    after.check("conv2d", c_out)?;
    let g = numerics.conv(ConvGeom::conv(n, c_in, h, wd, c_out, kh, stride, pad)?);
    let be = x.backend();
    let (xs, ws) = (&x.storage(), &w.storage());
    let (y, name) = match after {
        After::Act(act) => (be.conv2d_forward_act(xs, ws, &g, act)?, "conv2d_act"),
        After::Bias(_) => (be.conv2d_forward(xs, ws, &g)?, "conv2d"),
    };
    let (sx, sw, be2) = (x.storage_rc(), w.storage_rc(), be.clone());
    let x_dtype = x.dtype();
    finish(
        be,
        y,
        [n, c_out, g.oh, g.ow],
        name,
        x,
        w,
        after,
        move |up, need_dx, need_dw| {
            if let (Some((act, y)), false, true) = (up.act, need_dx, need_dw) {
                // Only the weight gradient (D's first layer in the D step): the backend may
                // apply the activation's derivative as it reads dy.
                let dw = be2.conv2d_backward_filter_act(&sx.borrow(), y, up.dy, &g, *act)?;
                return Ok((None, Some(dw)));
            }
            let dz = up.through_activation(&*be2)?;
            let dy = dz.as_ref().unwrap_or(up.dy);
            let dx = need_dx
                .then(|| {
                    as_dtype(
                        &*be2,
                        be2.conv2d_backward_data(dy, &sw.borrow(), &g)?,
                        x_dtype,
                    )
                })
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
    numerics: Numerics,
) -> Result<Tensor> {
    conv_transpose2d_then(
        x,
        w,
        After::Bias(bias),
        stride,
        pad,
        output_padding,
        numerics,
    )
}

/// `act(conv_transpose2d(x, w))` as one op (see [`After`]).
pub fn conv_transpose2d_act(
    x: &Tensor,
    w: &Tensor,
    act: Activation,
    stride: usize,
    pad: usize,
    output_padding: usize,
    numerics: Numerics,
) -> Result<Tensor> {
    conv_transpose2d_then(x, w, After::Act(act), stride, pad, output_padding, numerics)
}

fn conv_transpose2d_then(
    x: &Tensor,
    w: &Tensor,
    after: After,
    stride: usize,
    pad: usize,
    output_padding: usize,
    numerics: Numerics,
) -> Result<Tensor> {
    same_device("conv_transpose2d", &[x, w])?;
    check_conv_dtypes("conv_transpose2d", x, w, numerics)?;
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
    after.check("conv_transpose2d", c_out)?;
    let g = numerics.conv(ConvGeom::transposed(
        n,
        c_in,
        h,
        wd,
        c_out,
        kh,
        stride,
        pad,
        output_padding,
    )?);
    let be = x.backend();
    let (xs, ws) = (&x.storage(), &w.storage());
    let (y, name) = match after {
        After::Act(act) => (
            be.conv2d_backward_data_act(xs, ws, &g, act)?,
            "conv_transpose2d_act",
        ),
        After::Bias(_) => (be.conv2d_backward_data(xs, ws, &g)?, "conv_transpose2d"),
    };
    let (sx, sw, be2) = (x.storage_rc(), w.storage_rc(), be.clone());
    let x_dtype = x.dtype();
    let shape = [n, c_out, g.h, g.w];
    finish(
        be,
        y,
        shape,
        name,
        x,
        w,
        after,
        move |up, need_dx, need_dw| {
            let dz = up.through_activation(&*be2)?;
            let dy = dz.as_ref().unwrap_or(up.dy);
            let dx = need_dx
                .then(|| as_dtype(&*be2, be2.conv2d_forward(dy, &sw.borrow(), &g)?, x_dtype))
                .transpose()?;
            let dw = need_dw
                .then(|| be2.conv2d_backward_filter(dy, &sx.borrow(), &g))
                .transpose()?;
            Ok((dx, dw))
        },
    )
}
