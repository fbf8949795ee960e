//! artgan: GANs that paint artworks, on a small hand-written tensor engine with three backends:
//! the plain CPU reference, a fast CPU one and CUDA.

pub mod amp;
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod doctor;
pub mod durable;
pub mod flags;
pub mod limits;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod quality;
pub mod report;
pub mod rng;
pub mod run_folder;
pub mod tensor;
pub mod tools;
pub mod train;

pub use backend::Device;
pub use tensor::{no_grad, Tensor};
