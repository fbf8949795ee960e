//! Differentiable ops: shape checks, the backend call, and the backward wiring.
