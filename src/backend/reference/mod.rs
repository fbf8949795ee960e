//! The reference backend: plain loops with f64 accumulation, written to be obviously correct,
//! not fast. It is the oracle: the finite-difference checks (tests/grad_check.rs), the GPU
//! parity tests (tests/gpu_parity.rs) and the fast CPU backend's tests (tests/cpu_fast.rs)
//! compare with it. It holds `Storage::Cpu` like the CPU backend; [`backend`] returns it, and
//! [`crate::backend::use_reference_cpu`] makes it serve `Device::Cpu` on one thread.

mod conv;
pub(crate) mod norm;

/// The reference backend as a trait object.
pub fn backend() -> std::rc::Rc<dyn Backend> {
    std::rc::Rc::new(ReferenceBackend)
}

use super::*;
use crate::rng;

pub struct ReferenceBackend;

fn host(s: &Storage) -> Result<&Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        other => bail!("reference backend got storage on {}", other.device()),
    }
}

fn host_mut(s: &mut Storage) -> Result<&mut Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v),
        other => bail!("reference backend got storage on {}", other.device()),
    }
}

fn zip_map(a: &Storage, b: &Storage, f: impl Fn(f32, f32) -> f32) -> Result<Storage> {
    let (a, b) = (host(a)?, host(b)?);
    if a.len() != b.len() {
        bail!("elementwise op on {} and {} elements", a.len(), b.len());
    }
    Ok(Storage::Cpu(
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect(),
    ))
}

fn map(a: &Storage, f: impl Fn(f32) -> f32) -> Result<Storage> {
    Ok(Storage::Cpu(host(a)?.iter().map(|&x| f(x)).collect()))
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
        Ok(Storage::Cpu(augment::pack_bytes(pixels)))
    }
    fn assemble_batch(
        &self,
        images: &Storage,
        image_size: usize,
        indices: &[u32],
        flips: &[bool],
        angles_deg: &[f32],
    ) -> Result<Storage> {
        let packed = host(images)?;
        augment::check_batch(packed.len(), image_size, indices, flips, angles_deg)?;
        let indices: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        Ok(Storage::Cpu(augment::assemble(
            augment::packed_bytes(packed),
            image_size,
            &indices,
            flips,
            angles_deg,
        )))
    }

    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        zip_map(a, b, |x, y| x + y)
    }
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        let x = host(x)?;
        let acc = host_mut(acc)?;
        if acc.len() != x.len() {
            bail!("add_assign of {} into {} elements", x.len(), acc.len());
        }
        acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
        Ok(())
    }
    fn mul(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        zip_map(a, b, |x, y| x * y)
    }
    fn scale(&self, a: &Storage, alpha: f32) -> Result<Storage> {
        map(a, |x| x * alpha)
    }
    fn reciprocal(&self, a: &Storage) -> Result<Storage> {
        map(a, |x| 1.0 / x)
    }

    fn scale_by_scalar(&self, a: &Storage, s: &Storage, alpha: f32) -> Result<Storage> {
        let k = scalar(s)? * alpha;
        map(a, |x| x * k)
    }
    fn activation(&self, act: Activation, x: &Storage) -> Result<Storage> {
        match act {
            Activation::Relu => map(x, |v| v.max(0.0)),
            Activation::LeakyRelu(slope) => map(x, |v| if v > 0.0 { v } else { v * slope }),
            Activation::Tanh => map(x, f32::tanh),
            Activation::Sigmoid => map(x, stable_sigmoid),
        }
    }
    fn activation_backward(
        &self,
        act: Activation,
        x: &Storage,
        y: &Storage,
        dy: &Storage,
    ) -> Result<Storage> {
        match act {
            Activation::Relu => zip_map(x, dy, |v, g| if v > 0.0 { g } else { 0.0 }),
            Activation::LeakyRelu(s) => zip_map(x, dy, |v, g| if v > 0.0 { g } else { g * s }),
            Activation::Tanh => zip_map(y, dy, |v, g| g * (1.0 - v * v)),
            Activation::Sigmoid => zip_map(y, dy, |v, g| g * v * (1.0 - v)),
        }
    }

    fn sum_rows(&self, x: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        let x = host(x)?;
        if x.len() != rows * cols {
            bail!("sum_rows: {} elements is not {rows}x{cols}", x.len());
        }
        Ok(Storage::Cpu(
            (0..rows)
                .map(|r| {
                    let s: f64 = x[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|&v| f64::from(v))
                        .sum();
                    (s * f64::from(alpha)) as f32
                })
                .collect(),
        ))
    }
    fn broadcast_rows(&self, g: &Storage, rows: usize, cols: usize, alpha: f32) -> Result<Storage> {
        let g = host(g)?;
        if g.len() != rows {
            bail!("broadcast_rows: {} values for {rows} rows", g.len());
        }
        Ok(Storage::Cpu(
            g.iter()
                .flat_map(|&v| std::iter::repeat_n(v * alpha, cols))
                .collect(),
        ))
    }

    fn conv2d_forward(&self, x: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        Ok(Storage::Cpu(conv::forward(host(x)?, host(w)?, g)))
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &ConvGeom) -> Result<Storage> {
        Ok(Storage::Cpu(conv::backward_data(host(dy)?, host(w)?, g)))
    }
    fn conv2d_backward_filter(&self, x: &Storage, dy: &Storage, g: &ConvGeom) -> Result<Storage> {
        Ok(Storage::Cpu(conv::backward_filter(host(x)?, host(dy)?, g)))
    }
    fn add_channel_bias(&self, y: &Storage, b: &Storage, d: ChannelDims) -> Result<Storage> {
        let (y, b) = (host(y)?, host(b)?);
        Ok(Storage::Cpu(
            y.iter()
                .enumerate()
                .map(|(i, &v)| v + b[(i / d.hw) % d.c])
                .collect(),
        ))
    }
    fn channel_sum(&self, dy: &Storage, d: ChannelDims) -> Result<Storage> {
        let dy = host(dy)?;
        let mut sums = vec![0f64; d.c];
        for (i, &v) in dy.iter().enumerate() {
            sums[(i / d.hw) % d.c] += f64::from(v);
        }
        Ok(Storage::Cpu(sums.into_iter().map(|s| s as f32).collect()))
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
        d.check_batch_norm_train()?;
        let (x, gamma, beta) = (host(x)?, host(gamma)?, host(beta)?);
        let moments = norm::channel_moments(x, d);
        let m = (d.n * d.hw) as f64;
        let mean: Vec<f32> = moments.iter().map(|p| p.0 as f32).collect();
        let invstd: Vec<f32> = moments
            .iter()
            .map(|p| (1.0 / (p.1 + f64::from(eps)).sqrt()) as f32)
            .collect();
        let scale: Vec<f32> = invstd.iter().zip(gamma).map(|(a, b)| a * b).collect();
        let y = norm::normalize(x, d, &mean, &scale, beta);
        let mom = f64::from(momentum);
        for (r, p) in host_mut(running_mean)?.iter_mut().zip(&moments) {
            *r = ((1.0 - mom) * f64::from(*r) + mom * p.0) as f32;
        }
        for (r, p) in host_mut(running_var)?.iter_mut().zip(&moments) {
            let unbiased = p.1 * m / (m - 1.0);
            *r = ((1.0 - mom) * f64::from(*r) + mom * unbiased) as f32;
        }
        Ok(BatchNormSaved {
            y: Storage::Cpu(y),
            mean: Storage::Cpu(mean),
            invstd: Storage::Cpu(invstd),
        })
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
        let scale: Vec<f32> = host(running_var)?
            .iter()
            .zip(host(gamma)?)
            .map(|(&v, &g)| g / (v + eps).sqrt())
            .collect();
        Ok(Storage::Cpu(norm::normalize(
            host(x)?,
            d,
            host(running_mean)?,
            &scale,
            host(beta)?,
        )))
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
        let (dx, dg, db) = norm::backward(
            host(x)?,
            host(dy)?,
            host(gamma)?,
            host(mean)?,
            host(invstd)?,
            d,
        );
        Ok((Storage::Cpu(dx), Storage::Cpu(dg), Storage::Cpu(db)))
    }

    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage> {
        Ok(Storage::Cpu(
            (0..len as u64)
                .map(|i| rng::dropout_value_at(seed, i, p))
                .collect(),
        ))
    }
    fn add_gaussian_noise(&self, x: &Storage, std: f32, seed: u64) -> Result<Storage> {
        Ok(Storage::Cpu(
            host(x)?
                .iter()
                .enumerate()
                .map(|(i, &v)| v + std * rng::normal_at(seed, i as u64))
                .collect(),
        ))
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
        let sigma = norm::spectral_sigma(
            host(w)?,
            host_mut(u)?,
            host_mut(v)?,
            rows,
            cols,
            eps,
            update,
        );
        Ok(Storage::Cpu(vec![sigma]))
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
        Ok(Storage::Cpu(norm::spectral_backward(
            host(w)?,
            host(g)?,
            host(u)?,
            host(v)?,
            scalar(sigma)?,
            cols,
        )))
    }

    fn bce_with_logits(&self, x: &Storage, target: f32) -> Result<(Storage, Storage)> {
        let x = host(x)?;
        let n = x.len() as f64;
        let mut loss = 0f64;
        let grad = x
            .iter()
            .map(|&v| {
                let l = v.max(0.0) - v * target + (-v.abs()).exp().ln_1p();
                loss += f64::from(l);
                ((f64::from(stable_sigmoid(v)) - f64::from(target)) / n) as f32
            })
            .collect();
        Ok((Storage::Cpu(vec![(loss / n) as f32]), Storage::Cpu(grad)))
    }

    fn adam_update(&self, items: &mut [AdamItem<'_>], step: AdamStep) -> Result<()> {
        let sqrt_bc2 = step.bias_correction2.sqrt();
        for it in items.iter_mut() {
            let step_size = it.lr / step.bias_correction1;
            let g = host(it.grad)?;
            let m = host_mut(it.m)?;
            let v = host_mut(it.v)?;
            let p = host_mut(it.param)?;
            if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
                bail!("adam: parameter, gradient and moments differ in length");
            }
            for i in 0..p.len() {
                m[i] = step.beta1 * m[i] + (1.0 - step.beta1) * g[i];
                v[i] = step.beta2 * v[i] + (1.0 - step.beta2) * g[i] * g[i];
                let denom = v[i].sqrt() / sqrt_bc2 + step.eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
        Ok(())
    }

    // ---- conditional models and DiffAugment (issue 13): the plain loops of
    // `crate::backend::cpu::conditional`, which are reference code already
    fn embedding(
        &self,
        table: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        crate::backend::cpu::conditional::embedding(host(table)?, host(labels)?, classes, dim)
            .map(Storage::Cpu)
    }
    fn embedding_backward(
        &self,
        dy: &Storage,
        labels: &Storage,
        classes: usize,
        dim: usize,
    ) -> Result<Storage> {
        crate::backend::cpu::conditional::embedding_backward(host(dy)?, host(labels)?, classes, dim)
            .map(Storage::Cpu)
    }
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        d: ChannelDims,
    ) -> Result<Storage> {
        crate::backend::cpu::conditional::channel_affine(host(x)?, host(scale)?, host(shift)?, d)
            .map(Storage::Cpu)
    }
    fn channel_affine_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        d: ChannelDims,
    ) -> Result<(Storage, Storage, Storage)> {
        let (dx, ds, db) = crate::backend::cpu::conditional::channel_affine_backward(
            host(x)?,
            host(dy)?,
            host(scale)?,
            d,
        )?;
        Ok((Storage::Cpu(dx), Storage::Cpu(ds), Storage::Cpu(db)))
    }
    fn row_dot(&self, a: &Storage, b: &Storage, rows: usize, cols: usize) -> Result<Storage> {
        crate::backend::cpu::conditional::row_dot(host(a)?, host(b)?, rows, cols).map(Storage::Cpu)
    }
    fn row_dot_backward(
        &self,
        a: &Storage,
        b: &Storage,
        g: &Storage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        let (da, db) = crate::backend::cpu::conditional::row_dot_backward(
            host(a)?,
            host(b)?,
            host(g)?,
            rows,
            cols,
        )?;
        Ok((Storage::Cpu(da), Storage::Cpu(db)))
    }
    fn diffaug_color(
        &self,
        x: &Storage,
        params: &Storage,
        d: ChannelDims,
        brightness: bool,
    ) -> Result<Storage> {
        crate::backend::cpu::conditional::diffaug_color(host(x)?, host(params)?, d, brightness)
            .map(Storage::Cpu)
    }
    fn diffaug_translate(
        &self,
        x: &Storage,
        shifts: &Storage,
        dims: [usize; 4],
    ) -> Result<Storage> {
        crate::backend::cpu::conditional::diffaug_translate(host(x)?, host(shifts)?, dims)
            .map(Storage::Cpu)
    }
    fn diffaug_cutout(&self, x: &Storage, boxes: &Storage, dims: [usize; 4]) -> Result<Storage> {
        crate::backend::cpu::conditional::diffaug_cutout(host(x)?, host(boxes)?, dims)
            .map(Storage::Cpu)
    }
}
