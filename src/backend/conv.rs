//! Convolution: the family's backend trait. Its autograd ops are `crate::ops::conv`, its kernels
//! `kernels/conv.cu` (launched by `cuda/conv.rs`), its reference `reference/conv.rs`.
//!
//! **Mixed precision** (`ConvGeom::f16_operands`, set from `crate::amp::Numerics`): every one
//! of the three primitives multiplies *f16 operands*: an f16 tensor as it is, an f32 one (the
//! weights, a first layer's images or latents) rounded to f16 (round to nearest, ties to even,
//! as `half::f16::from_f32` and `f32_to_f16_bits` in `kernels/common.cuh`). Forward multiplies
//! x and w, backward-data dy and w, backward-filter x and dy (so a transposed convolution,
//! built from the same primitives, does the same). The product of two f16 values is exact in
//! f32, so what remains is the sum, accumulated in f32 or wider (f64 here, f32 in any order in
//! the fast CPU GEMM, cuBLAS `GemmEx` with fp16 A/B and `CUBLAS_COMPUTE_32F`, cuDNN's f16
//! convolutions with f32 accumulation), then **rounded once to f16**, as PyTorch autocast's
//! convolution outputs are: forward and backward-data give f16 tensors (the activations and
//! their gradients), backward-filter an f32 tensor holding f16 values (the weights are f32).
//! Implementations therefore differ only by f32 summation order before that rounding: at most
//! `γ_K · Σ|a·b|` per output with K the products summed, `γ_K = K·u/(1 − K·u)`, `u = 2⁻²⁴`,
//! which the final rounding can turn into one f16 unit (tests/gpu_parity.rs checks that).

use super::reference::conv as reference;
use super::{on_host, widened, Activation, ConvGeom, DType, ElementwiseBackend, Storage};
use anyhow::Result;
use std::borrow::Cow;

/// Convolution (cross-correlation, no bias). The defaults run the reference
/// (`backend/reference/conv.rs`) on host memory; the `_act` forms default to the two ops.
pub trait ConvBackend: ElementwiseBackend {
    /// `y` from `x` and `w`; under mixed precision `y` is f16.
    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let op = "conv2d_forward";
        let (x, w) = (widened(x), widened(w));
        let (x, w) = operands(on_host(op, &x)?, on_host(op, &w)?, g);
        Ok(output(reference::forward(&x, &w, g), g, DType::F16))
    }
    /// `dx` from `dy` and `w` (a transposed conv's forward); under mixed precision f16.
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let op = "conv2d_backward_data";
        let (dy, w) = (widened(dy), widened(w));
        let (dy, w) = operands(on_host(op, &dy)?, on_host(op, &w)?, g);
        Ok(output(reference::backward_data(&dy, &w, g), g, DType::F16))
    }
    /// `dw` from `x` and `dy`: always f32 (of f16 values under mixed precision).
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        let op = "conv2d_backward_filter";
        let (x, dy) = (widened(x), widened(dy));
        let (x, dy) = operands(on_host(op, &x)?, on_host(op, &dy)?, g);
        Ok(output(
            reference::backward_filter(&x, &dy, g),
            g,
            DType::F32,
        ))
    }
    /// `act(conv2d_forward(x, w))`: a layer's conv and the activation after it. A backend may
    /// apply `act` in the pass that writes the output (the fast CPU backend does); the default
    /// runs the two ops. Either way the values are those of the two ops.
    fn conv2d_forward_act(
        &self,
        x: &Storage,
        w: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        self.activation(act, &self.conv2d_forward(x, w, g)?)
    }
    /// The weight gradient of [`ConvBackend::conv2d_forward_act`]:
    /// `conv2d_backward_filter(x, dz)` with `dz` = `dy` through the derivative of `act`, read
    /// off its output `y` ([`Activation::derivative_from_output`]). A backend may apply the
    /// derivative as it reads `dy`; the default runs `activation_backward` first.
    fn conv2d_backward_filter_act(
        &self,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        self.conv2d_backward_filter(x, &self.activation_backward(act, y, y, dy)?, g)
    }
    /// `act(conv2d_backward_data(dy, w))`: a transposed conv and its activation, as
    /// [`ConvBackend::conv2d_forward_act`].
    fn conv2d_backward_data_act(
        &self,
        dy: &Storage,
        w: &Storage,
        g: &ConvGeom,
        act: Activation,
    ) -> Result<Storage> {
        self.activation(act, &self.conv2d_backward_data(dy, w, g)?)
    }
}

/// Each value rounded to the nearest f16 (ties to even), held in f32.
pub fn round_to_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// The two operands of a primitive as it multiplies them: rounded to f16 under mixed precision,
/// else as they are.
pub fn operands<'a>(a: &'a [f32], b: &'a [f32], g: &ConvGeom) -> (Cow<'a, [f32]>, Cow<'a, [f32]>) {
    if g.f16_operands {
        (Cow::Owned(round_to_f16(a)), Cow::Owned(round_to_f16(b)))
    } else {
        (Cow::Borrowed(a), Cow::Borrowed(b))
    }
}

/// A primitive's result as it leaves the convolution: as computed, or under mixed precision
/// rounded to f16 and stored as `amp_dtype` (f16 for y and dx, f32 for dw).
pub fn output(v: Vec<f32>, g: &ConvGeom, amp_dtype: DType) -> Storage {
    match (g.f16_operands, amp_dtype) {
        (false, _) => Storage::Cpu(v),
        (true, DType::F16) => Storage::CpuF16(v.into_iter().map(half::f16::from_f32).collect()),
        (true, DType::F32) => Storage::Cpu(round_to_f16(&v)),
    }
}
