//! Convolution: the family's backend trait. Its autograd ops are `crate::ops::conv`, its kernels
//! `kernels/conv.cu` (launched by `cuda/conv.rs`), its reference `reference/conv.rs`.

use super::reference::conv as reference;
use super::{on_host, Activation, ConvGeom, ElementwiseBackend, Storage};
use anyhow::Result;

/// Convolution (cross-correlation, no bias). The defaults run the reference
/// (`backend/reference/conv.rs`) on host memory; the `_act` forms default to the two ops.
pub trait ConvBackend: ElementwiseBackend {
    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let op = "conv2d_forward";
        let (x, w) = reference::operands(on_host(op, x)?, on_host(op, w)?, g);
        Ok(Storage::Cpu(reference::output(
            reference::forward(&x, &w, g),
            g,
        )))
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let op = "conv2d_backward_data";
        let (dy, w) = reference::operands(on_host(op, dy)?, on_host(op, w)?, g);
        Ok(Storage::Cpu(reference::output(
            reference::backward_data(&dy, &w, g),
            g,
        )))
    }
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        let op = "conv2d_backward_filter";
        let (x, dy) = reference::operands(on_host(op, x)?, on_host(op, dy)?, g);
        Ok(Storage::Cpu(reference::output(
            reference::backward_filter(&x, &dy, g),
            g,
        )))
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
