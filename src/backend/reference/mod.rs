//! The reference backend: plain loops with f64 accumulation, written to be obviously correct,
//! not fast. It is the oracle: the finite-difference checks (tests/grad_check.rs), the GPU
//! parity tests (tests/gpu_parity.rs) and the fast CPU backend's tests (tests/cpu_fast.rs)
//! compare with it. It holds `Storage::Cpu` like the CPU backend; [`backend`] returns it, and
//! `crate::backend::use_reference_cpu` (a test hook: feature `test-hooks`) makes it serve
//! `Device::Cpu` on one thread.
//!
//! Each kernel family `kernels/<family>.cu` has its reference in `<family>.rs` here; this file
//! holds the storage helpers and the `Backend` trait dispatch.

pub(super) mod adam;
pub mod augment;
pub(crate) mod batchnorm;
pub(crate) mod conditional;
pub(crate) mod conv;
mod elementwise;
mod loss;
mod random;
mod reduce;
mod spectral_norm;

/// The reference backend as a trait object.
pub fn backend() -> std::rc::Rc<dyn Backend> {
    std::rc::Rc::new(ReferenceBackend)
}

use super::*;

pub struct ReferenceBackend;

pub(super) fn host(s: &Storage) -> Result<&Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        other => bail!("reference backend got storage on {}", other.device()),
    }
}

pub(super) fn host_mut(s: &mut Storage) -> Result<&mut Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        other => bail!("reference backend got storage on {}", other.device()),
    }
}

pub(crate) fn scalar(s: &Storage) -> Result<f32> {
    match host(s)?.as_slice() {
        [v] => Ok(*v),
        other => bail!(
            "expected a one-element scalar, got {} elements",
            other.len()
        ),
    }
}

/// Numerically stable logistic function.
pub fn stable_sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl Backend for ReferenceBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload(&self, host_data: &[f32]) -> Result<Storage> {
        Ok(Storage::Cpu(host_data.to_vec()))
    }
    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        Ok(host(s)?.clone())
    }
    fn zeros(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Cpu(vec![0.0; len]))
    }
    fn full(&self, len: usize, value: f32) -> Result<Storage> {
        Ok(Storage::Cpu(vec![value; len]))
    }
    fn copy(&self, s: &Storage) -> Result<Storage> {
        Ok(Storage::Cpu(host(s)?.clone()))
    }

    fn upload_images(&self, pixels: &[u8]) -> Result<Storage> {
        augment::upload_images(pixels)
    }
    fn assemble_batch(
        &self,
        images: &Storage,
        image_size: usize,
        indices: &[u32],
        flips: &[bool],
        angles_deg: &[f32],
    ) -> Result<Storage> {
        augment::assemble_batch(images, image_size, indices, flips, angles_deg)
    }

    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        elementwise::add(a, b)
    }
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        elementwise::add_assign(acc, x)
    }
    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        elementwise::mul(a, b)
    }
    fn round_to_f16(&self, a: &Storage) -> Result<Storage> {
        Ok(Storage::Cpu(conv::round_to_f16(host(a)?)))
    }
    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage> {
        elementwise::scale(a, alpha)
    }
    fn reciprocal(&self, a: &Storage) -> Result<Storage> {
        elementwise::reciprocal(a)
    }

    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
        elementwise::scale_by_scalar(a, s, alpha)
    }
    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage> {
        elementwise::activation(act, x)
    }
    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        elementwise::activation_backward(act, x, y, dy)
    }

    fn sum_rows(&self, x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        reduce::sum_rows(x, rows, cols, alpha)
    }
    fn broadcast_rows(&self, g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        reduce::broadcast_rows(g, rows, cols, alpha)
    }

    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let (x, w) = conv::operands(host(x)?, host(w)?, g);
        Ok(Storage::Cpu(conv::output(conv::forward(&x, &w, g), g)))
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        let (dy, w) = conv::operands(host(dy)?, host(w)?, g);
        Ok(Storage::Cpu(conv::output(
            conv::backward_data(&dy, &w, g),
            g,
        )))
    }
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        let (x, dy) = conv::operands(host(x)?, host(dy)?, g);
        Ok(Storage::Cpu(conv::output(
            conv::backward_filter(&x, &dy, g),
            g,
        )))
    }
    fn add_channel_bias(&self, y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage> {
        reduce::add_channel_bias(y, b, d)
    }
    fn channel_sum(&self, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        reduce::channel_sum(dy, d)
    }

    fn batch_norm_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        d: ChannelDims,
        momentum: f32,
        eps: f32,
    ) -> Result<BatchNormSaved> {
        batchnorm::batch_norm_act_train(
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            momentum,
            eps,
            BatchNormAct::None,
        )
    }
    fn batch_norm_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
    ) -> Result<Storage> {
        batchnorm::batch_norm_eval(x, gamma, beta, running_mean, running_var, d, eps)
    }
    fn batch_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        let none = Storage::Cpu(Vec::new());
        batchnorm::batch_norm_act_backward(
            x,
            dy,
            gamma,
            &none,
            mean,
            invstd,
            d,
            BatchNormAct::None,
            true,
        )
    }
    fn batch_norm_act_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        d: ChannelDims,
        momentum: f32,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        batchnorm::batch_norm_act_train(
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            d,
            momentum,
            eps,
            act,
        )
    }
    fn batch_norm_act_eval(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: ChannelDims,
        eps: f32,
        act: BatchNormAct,
    ) -> Result<BatchNormSaved> {
        batchnorm::batch_norm_act_eval(x, gamma, beta, running_mean, running_var, d, eps, act)
    }
    fn batch_norm_act_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        beta: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: ChannelDims,
        act: BatchNormAct,
        batch_stats: bool,
    ) -> Result<(Storage, Storage, Storage)> {
        batchnorm::batch_norm_act_backward(x, dy, gamma, beta, mean, invstd, d, act, batch_stats)
    }

    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage> {
        random::dropout_mask(len, p, seed)
    }
    fn add_gaussian_noise(&self, x: &Storage, std: f32, seed: u64) -> Result<Storage> {
        random::add_gaussian_noise(x, std, seed)
    }

    fn spectral_norm_sigma(
        &self,
        w: &Storage,
        u: &mut Storage,
        v: &mut Storage,
        rows: usize,
        cols: usize,
        eps: f32,
        update: bool,
    ) -> Result<Storage> {
        spectral_norm::spectral_norm_sigma(w, u, v, rows, cols, eps, update)
    }
    fn spectral_norm_backward(
        &self,
        w: &Storage,
        g: &Storage,
        u: &Storage,
        v: &Storage,
        sigma: &Storage,
        _rows: usize,
        cols: usize,
    ) -> Result<Storage> {
        spectral_norm::spectral_norm_backward(w, g, u, v, sigma, cols)
    }

    fn bce_with_logits(&self, x: &Storage, target: f32) -> Result<(Storage, Storage)> {
        loss::bce_with_logits(x, target)
    }
    fn hinge_with_logits(&self, x: &Storage, term: HingeTerm) -> Result<(Storage, Storage)> {
        loss::hinge_with_logits(x, term)
    }

    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
        adam::adam_update(items, step)
    }

    fn adam_update_scaled(
        &self,
        items: &mut [AdamItem<'_>],
        hyper: AdamHyper,
        scale: &mut Storage,
        counters: &mut Storage,
    ) -> Result<()> {
        adam::adam_update_scaled(items, hyper, scale, counters, adam::adam_update)
    }

    // ---- conditional models and DiffAugment (issue 13): see `conditional.rs`
    fn embedding(
        &self,
        table: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        conditional::embedding(host(table)?, host(labels)?, classes, dim).map(Storage::Cpu)
    }
    fn embedding_backward(
        &self,
        dy: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        conditional::embedding_backward(host(dy)?, host(labels)?, classes, dim).map(Storage::Cpu)
    }
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        d: ChannelDims,
    ) -> Result<Storage> {
        conditional::channel_affine(host(x)?, host(scale)?, host(shift)?, d).map(Storage::Cpu)
    }
    fn channel_affine_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        let (dx, ds, db) =
            conditional::channel_affine_backward(host(x)?, host(dy)?, host(scale)?, d)?;
        Ok((Storage::Cpu(dx), Storage::Cpu(ds), Storage::Cpu(db)))
    }
    fn row_dot(&self, a: &Storage, b: &Storage, rows: usize, cols: usize) -> Result<Storage> {
        conditional::row_dot(host(a)?, host(b)?, rows, cols).map(Storage::Cpu)
    }
    fn row_dot_backward(
        &self,
        a: &Storage,
        b: &Storage,
        g: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        let (da, db) = conditional::row_dot_backward(host(a)?, host(b)?, host(g)?, rows, cols)?;
        Ok((Storage::Cpu(da), Storage::Cpu(db)))
    }
    fn diffaug_color(
        &self,
        x: &Storage,
        params: &Storage,
        d: ChannelDims,
        brightness: bool,
    ) -> Result<Storage> {
        conditional::diffaug_color(host(x)?, host(params)?, d, brightness).map(Storage::Cpu)
    }
    fn diffaug_translate(
        &self,
        x: &Storage,
        shifts: &Storage,
        dims: [usize; 4],
    ) -> Result<Storage> {
        conditional::diffaug_translate(host(x)?, host(shifts)?, dims).map(Storage::Cpu)
    }
    fn diffaug_cutout(&self, x: &Storage, boxes: &Storage, dims: [usize; 4]) -> Result<Storage> {
        conditional::diffaug_cutout(host(x)?, host(boxes)?, dims).map(Storage::Cpu)
    }
}
