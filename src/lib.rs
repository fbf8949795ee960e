//! artgan: GANs that paint artworks, on a small hand-written tensor engine with a CPU reference
//! backend and a CUDA backend.

pub mod backend;
pub mod data;
pub mod ops;
pub mod rng;
pub mod tensor;

pub use backend::Device;
pub use tensor::{no_grad, Tensor};
