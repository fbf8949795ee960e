//! CUDA backend (placeholder until the CUDA issue lands).

use super::*;
use anyhow::{bail, Result};

/// Device memory of one tensor.
pub struct CudaBuffer {
    len: usize,
    ordinal: usize,
}

impl CudaBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

pub struct CudaBackend;

impl CudaBackend {
    pub fn new(ordinal: usize) -> Result<Self> {
        bail!(
            "{}: the CUDA backend is not built yet",
            Device::Cuda(ordinal)
        )
    }
}
use super::super::*;

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        unreachable!()
    }
    fn upload(&self, _host: &[f32]) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn download(&self, _s: &Storage) -> Result<Vec<f32>> {
        bail!("the CUDA backend is not built yet")
    }
    fn zeros(&self, _len: usize) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn full(&self, _len: usize, _value: f32) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn copy(&self, _s: &Storage) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn add(&self, _a: &Storage, _b: &Storage) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn add_assign(&self, _acc: &mut Storage, _x: &Storage) -> Result<()> {
        bail!("the CUDA backend is not built yet")
    }
    fn mul(&self, _a: &Storage, _b: &Storage) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn scale(&self, _a: &Storage, _alpha: f32) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn scale_by_scalar(&self, _a: &Storage, _s: &Storage, _alpha: f32) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn activation(&self, _act: Activation, _x: &Storage) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn activation_backward(
        &self,
        _act: Activation,
        _x: &Storage,
        _y: &Storage,
        _dy: &Storage,
    ) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn sum_rows(&self, _x: &Storage, _rows: usize, _cols: usize, _alpha: f32) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn broadcast_rows(
        &self,
        _g: &Storage,
        _rows: usize,
        _cols: usize,
        _alpha: f32,
    ) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn conv2d_forward(&self, _x: &Storage, _w: &Storage, _g: &ConvGeom) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn conv2d_backward_data(&self, _dy: &Storage, _w: &Storage, _g: &ConvGeom) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn conv2d_backward_filter(
        &self,
        _x: &Storage,
        _dy: &Storage,
        _g: &ConvGeom,
    ) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn add_channel_bias(&self, _y: &Storage, _b: &Storage, _d: ChannelDims) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn channel_sum(&self, _dy: &Storage, _d: ChannelDims) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn batch_norm_train(
        &self,
        _x: &Storage,
        _gamma: &Storage,
        _beta: &Storage,
        _running_mean: &mut Storage,
        _running_var: &mut Storage,
        _d: ChannelDims,
        _momentum: f32,
        _eps: f32,
    ) -> Result<BatchNormSaved> {
        bail!("the CUDA backend is not built yet")
    }
    fn batch_norm_eval(
        &self,
        _x: &Storage,
        _gamma: &Storage,
        _beta: &Storage,
        _running_mean: &Storage,
        _running_var: &Storage,
        _d: ChannelDims,
        _eps: f32,
    ) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn batch_norm_backward(
        &self,
        _x: &Storage,
        _dy: &Storage,
        _gamma: &Storage,
        _mean: &Storage,
        _invstd: &Storage,
        _d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        bail!("the CUDA backend is not built yet")
    }
    fn dropout_mask(&self, _len: usize, _p: f32, _seed: u64) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn add_gaussian_noise(&self, _x: &Storage, _std: f32, _seed: u64) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn spectral_norm_sigma(
        &self,
        _w: &Storage,
        _u: &mut Storage,
        _v: &mut Storage,
        _rows: usize,
        _cols: usize,
        _eps: f32,
        _update: bool,
    ) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn spectral_norm_backward(
        &self,
        _w: &Storage,
        _g: &Storage,
        _u: &Storage,
        _v: &Storage,
        _sigma: &Storage,
        _rows: usize,
        _cols: usize,
    ) -> Result<Storage> {
        bail!("the CUDA backend is not built yet")
    }
    fn bce_with_logits(&self, _x: &Storage, _target: f32) -> Result<(Storage, Storage)> {
        bail!("the CUDA backend is not built yet")
    }
    fn adam_update(&self, _items: &mut [AdamItem<'_>], _step: AdamStep) -> Result<()> {
        bail!("the CUDA backend is not built yet")
    }
}
