//! `artgan interpolate`: walks between random latents along great circles (slerp) and writes the
//! path as a grid, numbered frames and an animated GIF.

use super::{draw_latents, generate_chunks, parse_truncation, to_rgb_bytes, LATENT_STREAM};
use super::{prepare_out_dir, run_command, write_png, ClassArgs, ClassCommand, GeneratorArgs};
use crate::backend::Device;
use crate::checkpoint;
use crate::data::save_grid_png_u8;
use crate::limits;
use crate::nn::{Generator, Mode};
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use clap::Args;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub generator: GeneratorArgs,
    #[command(flatten)]
    pub classes: super::ClassArgs,
    /// Images per segment between two consecutive latents, both ends included (at least 2).
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, default_value_t = 8)]
    pub steps: usize,
    /// Number of random latents to visit (at least 2); the same ones `artgan sample` draws
    /// with the same --seed, --count and --truncation.
    #[arg(long, value_parser = crate::flags::parse_whole::<usize>, default_value_t = 4)]
    pub count: usize,
    /// Seed of the latents.
    #[arg(long, value_parser = crate::flags::parse_whole::<u64>, default_value_t = 0)]
    pub seed: u64,
    /// Truncation trick (see `artgan sample --help`): latent components drawn from a standard
    /// normal truncated to [-T, T]; smaller T trades variety for cleaner images.
    #[arg(long, value_name = "T", value_parser = parse_truncation)]
    pub truncation: Option<f32>,
    /// Also go from the last latent back to the first, so the GIF loops seamlessly.
    #[arg(long = "loop")]
    pub looped: bool,
    /// Frames per second of interpolation.gif (GIF timing is in 1/100 s, so at most 100).
    #[arg(long, default_value_t = 8.0)]
    pub fps: f32,
    /// Output folder [default: RUN_DIR/interpolation-seed-S].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into --out even if it already holds files: they are moved aside whole to
    /// OUT.replaced-N first (put back if the command fails).
    #[arg(long)]
    pub force: bool,
}

/// Below this sin(angle) the two latents are treated as parallel and lerp is used: the slerp
/// weights sin((1−t)θ)/sin θ would divide by ~0, and the two paths agree to O(θ²) there anyway.
const PARALLEL_SIN: f64 = 1e-6;

/// Spherical linear interpolation from `a` (t = 0) to `b` (t = 1) along the great circle,
/// `sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b` with θ the angle between them (Shoemake 1985;
/// for GAN latents: White 2016, "Sampling Generative Networks"). Gaussian latents live near a
/// sphere of radius √nz, and the straight line between two of them passes through its
/// interior, where G saw no training latents; slerp stays near the shell. Nearly parallel (or
/// zero) vectors fall back to linear interpolation. t = 0 and t = 1 return `a` and `b`
/// exactly. Computed in f64.
pub fn slerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "slerp of vectors of different lengths");
    if t == 0.0 {
        return a.to_vec();
    }
    if t == 1.0 {
        return b.to_vec();
    }
    let t = f64::from(t);
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    let (wa, wb) = if na == 0.0 || nb == 0.0 {
        (1.0 - t, t)
    } else {
        let theta = (dot / (na * nb)).clamp(-1.0, 1.0).acos();
        let s = theta.sin();
        if s < PARALLEL_SIN {
            (1.0 - t, t)
        } else {
            (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
        }
    };
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (wa * f64::from(x) + wb * f64::from(y)) as f32)
        .collect()
}

/// The latents of the whole path, segment after segment, `steps` per segment with both ends:
/// `keys` is `count` vectors of `nz` one after another; there are `count − 1` segments, or
/// `count` when `looped` (the last one returns to the first key).
pub fn path_latents(keys: &[f32], nz: usize, steps: usize, looped: bool) -> Vec<f32> {
    let count = keys.len() / nz;
    let segments = if looped { count } else { count - 1 };
    let key = |i: usize| &keys[(i % count) * nz..(i % count + 1) * nz];
    let mut out = Vec::with_capacity(segments * steps * nz);
    for s in 0..segments {
        for i in 0..steps {
            let t = i as f32 / (steps - 1) as f32;
            out.extend(slerp(key(s), key(s + 1), t));
        }
    }
    out
}

/// Which path images (indices into [`path_latents`]' order) are animation frames: every one,
/// except that a segment's first image repeats the previous segment's last (and with `looped`
/// the last image repeats the first), so each key latent is shown once.
pub fn frame_indices(segments: usize, steps: usize, looped: bool) -> Vec<usize> {
    let mut out = Vec::new();
    for s in 0..segments {
        for i in 0..steps {
            let repeat_start = s > 0 && i == 0;
            let repeat_first = looped && s + 1 == segments && i + 1 == steps;
            if !repeat_start && !repeat_first {
                out.push(s * steps + i);
            }
        }
    }
    out
}

pub fn run(a: &InterpolateArgs) -> Result<()> {
    run_command(a)
}

impl ClassCommand for InterpolateArgs {
    const PER_CLASS_DIR: &'static str = "interpolation-per-class";
    fn generator(&self) -> &GeneratorArgs {
        &self.generator
    }
    fn classes(&self) -> &ClassArgs {
        &self.classes
    }
    fn out(&self) -> Option<&Path> {
        self.out.as_deref()
    }
    fn check(&self) -> Result<()> {
        if self.count < 2 {
            bail!("--count must be at least 2 (latents to interpolate between)");
        }
        if self.steps < 2 {
            bail!("--steps must be at least 2 (both ends of a segment)");
        }
        if !(self.fps > 0.0 && self.fps <= 100.0) {
            bail!("--fps {} must be above 0 and at most 100", self.fps);
        }
        Ok(())
    }
    fn check_per_class(&self, n: usize) -> Result<()> {
        if n < 2 {
            bail!("--per-class {n}: each class's walk needs at least 2 latents to go between");
        }
        Ok(())
    }
    fn for_class(&self, classes: ClassArgs, n: usize, out: PathBuf) -> Self {
        InterpolateArgs {
            classes,
            count: n,
            out: Some(out),
            ..self.clone()
        }
    }
    fn run_one(&self, g: &Generator, device: Device) -> Result<()> {
        run_one(self, g, device)
    }
}

/// One run on the loaded generator (see [`ClassCommand::run_one`]).
fn run_one(a: &InterpolateArgs, g: &Generator, device: Device) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| {
        super::default_out(
            &a.generator.checkpoint,
            &format!("interpolation-seed-{}", a.seed),
        )
    });
    let nz = g.config.nz;
    let size = g.config.image_size;
    let segments = if a.looped { a.count } else { a.count - 1 };
    // grid.png keeps every image (8-bit) and interpolation.gif every frame until written.
    let (held, written) =
        limits::painting_bytes(limits::product(&[segments, a.steps]), size, nz, 2);
    let (flag, value) = if a.steps >= a.count {
        ("--steps", a.steps)
    } else {
        ("--count", a.count)
    };
    limits::check_output(
        &out,
        flag,
        value,
        "the frames, grid and latents",
        held,
        written,
    )?;
    let claimed = prepare_out_dir(&out, a.force)?;
    let mut rng = Rng::derive(a.seed, LATENT_STREAM);
    let keys = draw_latents(&mut rng, a.count, nz, a.truncation, device)?;
    let n = segments * a.steps;
    let z = Tensor::from_vec(
        path_latents(&keys.to_vec()?, nz, a.steps, a.looped),
        &[n, nz, 1, 1],
        device,
    )?;
    let frames = frame_indices(segments, a.steps, a.looped);
    let mut is_frame = vec![false; n];
    for &i in &frames {
        is_frame[i] = true;
    }

    let per = 3 * size * size;
    let delay = Delay::from_saturating_duration(Duration::from_secs_f32(1.0 / a.fps));
    let mut gif = Vec::new();
    // 8-bit copies for the grid: a quarter of the memory of the f32 images.
    let mut grid: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut frame_no = 0;
    {
        // Speed 10 of 1-30: NeuQuant palette quality is plenty at these sizes.
        let mut encoder = GifEncoder::new_with_speed(&mut gif, 10);
        encoder.set_repeat(Repeat::Infinite)?;
        generate_chunks(
            g,
            &z,
            Mode::Eval,
            a.generator.numerics(),
            |start, images| {
                for (j, img) in images.chunks_exact(per).enumerate() {
                    let rgb = to_rgb_bytes(img, size);
                    if is_frame[start + j] {
                        write_png(img, size, &out.join(format!("frame-{frame_no:04}.png")))?;
                        frame_no += 1;
                        let rgba = RgbaImage::from_fn(size as u32, size as u32, |x, y| {
                            let o = (y as usize * size + x as usize) * 3;
                            image::Rgba([rgb[o], rgb[o + 1], rgb[o + 2], 255])
                        });
                        encoder
                            .encode_frame(Frame::from_parts(rgba, 0, 0, delay))
                            .context("encoding interpolation.gif")?;
                    }
                    grid.push(rgb);
                }
                Ok(())
            },
        )?;
    }
    let grid_refs: Vec<&[u8]> = grid.iter().map(Vec::as_slice).collect();
    save_grid_png_u8(&grid_refs, size, a.steps, &out.join("grid.png"))?;
    checkpoint::write_atomic(&out.join("interpolation.gif"), &gif)?;
    checkpoint::save_tensors(
        &out.join("latents.safetensors"),
        &[("keys", &keys), ("z", &z)],
    )?;
    claimed.keep();
    println!(
        "wrote grid.png ({segments} rows of {}), {} frames, interpolation.gif and latents.safetensors to {}",
        a.steps,
        frames.len(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
    }

    fn angle(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        (dot / (norm(a) * norm(b))).clamp(-1.0, 1.0).acos()
    }

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = norm(&v) as f32;
        v.into_iter().map(|x| x / n).collect()
    }

    fn random_pair(seed: u64, nz: usize) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        (
            unit(rng.normal_vec(nz, 0.0, 1.0)),
            unit(rng.normal_vec(nz, 0.0, 1.0)),
        )
    }

    #[test]
    fn slerp_keeps_unit_vectors_on_the_sphere() {
        for seed in 0..5 {
            let (a, b) = random_pair(seed, 100);
            for t in [0.1, 0.25, 0.5, 0.9] {
                let n = norm(&slerp(&a, &b, t));
                assert!((n - 1.0).abs() < 1e-5, "t {t}: norm {n}");
            }
            // Lerp would cut through the ball: its midpoint of two near-orthogonal unit
            // vectors has norm ≈ 0.7, so this check can tell the two apart.
            let lerp_mid: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.5 * (x + y)).collect();
            assert!(norm(&lerp_mid) < 0.9);
        }
    }

    #[test]
    fn slerp_ends_are_exact_and_the_midpoint_halves_the_angle() {
        let (a, b) = random_pair(7, 64);
        assert_eq!(slerp(&a, &b, 0.0), a);
        assert_eq!(slerp(&a, &b, 1.0), b);
        let theta = angle(&a, &b);
        let mid = slerp(&a, &b, 0.5);
        assert!((angle(&a, &mid) - theta / 2.0).abs() < 1e-5);
        assert!((angle(&mid, &b) - theta / 2.0).abs() < 1e-5);
        // A quarter of the way: a quarter of the angle.
        let q = slerp(&a, &b, 0.25);
        assert!((angle(&a, &q) - theta / 4.0).abs() < 1e-5);
    }

    #[test]
    fn parallel_vectors_fall_back_to_lerp() {
        let a = vec![1.0, 2.0, -1.0];
        let b: Vec<f32> = a.iter().map(|x| 3.0 * x).collect();
        assert_eq!(slerp(&a, &b, 0.5), vec![2.0, 4.0, -2.0]);
        let zero = vec![0.0; 3];
        assert_eq!(slerp(&zero, &a, 0.5), vec![0.5, 1.0, -0.5]);
    }

    #[test]
    fn path_and_frames_show_each_key_once() {
        let nz = 3;
        let keys: Vec<f32> = (0..3 * nz).map(|i| i as f32 - 4.0).collect();
        let path = path_latents(&keys, nz, 4, false);
        assert_eq!(path.len(), 2 * 4 * nz);
        // Row s starts at key s and ends at key s+1 exactly.
        assert_eq!(&path[0..nz], &keys[0..nz]);
        assert_eq!(&path[3 * nz..4 * nz], &keys[nz..2 * nz]);
        assert_eq!(&path[4 * nz..5 * nz], &keys[nz..2 * nz]);
        assert_eq!(&path[7 * nz..8 * nz], &keys[2 * nz..3 * nz]);
        assert_eq!(frame_indices(2, 4, false), vec![0, 1, 2, 3, 5, 6, 7]);

        let looped = path_latents(&keys, nz, 4, true);
        assert_eq!(looped.len(), 3 * 4 * nz);
        assert_eq!(&looped[11 * nz..12 * nz], &keys[0..nz]);
        // The loop drops the final image (= frame 0): 3 segments × 3 new frames.
        assert_eq!(frame_indices(3, 4, true), vec![0, 1, 2, 3, 5, 6, 7, 9, 10]);
    }
}
