//! Elementwise maps and activations: the family's backend trait. Its autograd ops are
//! `crate::ops::elementwise`, its kernels `kernels/elementwise.cu` (launched by
//! `cuda/elementwise.rs`), its reference `reference/elementwise.rs`.

use super::conv::round_to_f16;
use super::reference::elementwise as reference;
use super::{
    all_on_host, on_host, one_dtype, stored_as, widened, Activation, ChannelDims, Storage,
};
use anyhow::{bail, Result};

/// Elementwise maps. The defaults run the reference (`backend/reference/elementwise.rs`) on
/// host memory. `add`, `add_assign` and the activations also take f16 tensors (all operands
/// f16, amp's activations and their gradients): computed in f32, rounded on store.
pub trait ElementwiseBackend {
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        let dtype = one_dtype("add", &[a, b])?;
        let (a, b) = (widened(a), widened(b));
        all_on_host("add", &[&a, &b])?;
        Ok(stored_as(reference::add(&a, &b)?, dtype))
    }
    /// `acc += x` (gradient accumulation).
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        if one_dtype("add_assign", &[acc, x])? == super::DType::F16 {
            *acc = self.add(acc, x)?;
            return Ok(());
        }
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
        let dtype = x.dtype();
        let x = widened(x);
        all_on_host("activation", &[&x])?;
        Ok(stored_as(reference::activation(act, &x)?, dtype))
    }
    /// dx from the forward input `x`, its output `y` and `dy`.
    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        let dtype = one_dtype("activation_backward", &[x, y, dy])?;
        let (x, y, dy) = (widened(x), widened(y), widened(dy));
        all_on_host("activation_backward", &[&x, &y, &dy])?;
        Ok(stored_as(
            reference::activation_backward(act, &x, &y, &dy)?,
            dtype,
        ))
    }
    /// Gated linear unit over channels (PyTorch's `F.glu(x, dim=1)`): `x` is `[n, 2c, hw]` and
    /// `d` the output's dims `[n, c, hw]`; `y = a·σ(b)` with `a` the first `c` channels of each
    /// image and `b` the last `c`.
    fn glu(&self, x: &Storage, d: ChannelDims) -> Result<Storage> {
        all_on_host("glu", &[x])?;
        reference::glu(x, d)
    }
    /// dx (`[n, 2c, hw]`) of [`ElementwiseBackend::glu`] from its input `x` and `dy`
    /// (`[n, c, hw]`): `da = dy·σ(b)`, `db = dy·a·σ(b)·(1 − σ(b))`.
    fn glu_backward(&self, x: &Storage, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        all_on_host("glu_backward", &[x, dy])?;
        reference::glu_backward(x, dy, d)
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
