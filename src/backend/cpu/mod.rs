//! CPU reference backend (stub while it is written).

use super::*;

pub struct CpuBackend;

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn upload(&self, _host: &[f32]) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn download(&self, _s: &Storage) -> Result<Vec<f32>> {
        bail!("cpu stub")
    }
    fn zeros(&self, _len: usize) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn full(&self, _len: usize, _value: f32) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn copy(&self, _s: &Storage) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn add(&self, _a: &Storage, _b: &Storage) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn add_assign(&self, _acc: &mut Storage, _x: &Storage) -> Result<()> {
        bail!("cpu stub")
    }
    fn mul(&self, _a: &Storage, _b: &Storage) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn scale(&self, _a: &Storage, _alpha: f32) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn scale_by_scalar(&self, _a: &Storage, _s: &Storage, _alpha: f32) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn activation(&self, _act: Activation, _x: &Storage) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn activation_backward(
        &self,
        _act: Activation,
        _x: &Storage,
        _y: &Storage,
        _dy: &Storage,
    ) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn sum_rows(&self, _x: &Storage, _rows: usize, _cols: usize, _alpha: f32) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn broadcast_rows(
        &self,
        _g: &Storage,
        _rows: usize,
        _cols: usize,
        _alpha: f32,
    ) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn conv2d_forward(&self, _x: &Storage, _w: &Storage, _g: &ConvGeom) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn conv2d_backward_data(&self, _dy: &Storage, _w: &Storage, _g: &ConvGeom) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn conv2d_backward_filter(
        &self,
        _x: &Storage,
        _dy: &Storage,
        _g: &ConvGeom,
    ) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn add_channel_bias(&self, _y: &Storage, _b: &Storage, _d: ChannelDims) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn channel_sum(&self, _dy: &Storage, _d: ChannelDims) -> Result<Storage> {
        bail!("cpu stub")
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
        bail!("cpu stub")
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
        bail!("cpu stub")
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
        bail!("cpu stub")
    }
    fn dropout_mask(&self, _len: usize, _p: f32, _seed: u64) -> Result<Storage> {
        bail!("cpu stub")
    }
    fn add_gaussian_noise(&self, _x: &Storage, _std: f32, _seed: u64) -> Result<Storage> {
        bail!("cpu stub")
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
        bail!("cpu stub")
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
        bail!("cpu stub")
    }
    fn bce_with_logits(&self, _x: &Storage, _target: f32) -> Result<(Storage, Storage)> {
        bail!("cpu stub")
    }
    fn adam_update(&self, _items: &mut [AdamItem<'_>], _step: AdamStep) -> Result<()> {
        bail!("cpu stub")
    }
}
