//! Built-in procedural "paintings", so that `artgan train` runs with no dataset. Four kinds of
//! scene with structure a GAN can visibly learn: landscapes (sky gradient, hills, sun), sunsets
//! over the sea (half-sunk sun, banded water), night scenes (moon, stars, dark hills) and
//! colour fields (stacked soft-edged rectangles); all covered in short brush strokes.
//! Deterministic from the seed: each image draws from its own named random stream.

use super::{ImageMeta, ImageSet};
use crate::rng::Rng;

type Rgb = [f32; 3];

fn lerp(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// A colour near `base`, so palettes vary but stay recognisable.
fn jitter(rng: &mut Rng, base: Rgb, amount: f32) -> Rgb {
    let mut c = base;
    for v in &mut c {
        *v = (*v + amount * (2.0 * rng.uniform() - 1.0)).clamp(0.0, 1.0);
    }
    c
}

struct Canvas {
    s: usize,
    px: Vec<f32>,
}

impl Canvas {
    fn get(&self, x: usize, y: usize) -> Rgb {
        let o = (y * self.s + x) * 3;
        [self.px[o], self.px[o + 1], self.px[o + 2]]
    }
    fn blend(&mut self, x: usize, y: usize, c: Rgb, a: f32) {
        let o = (y * self.s + x) * 3;
        for (p, &ck) in self.px[o..o + 3].iter_mut().zip(&c) {
            *p += (ck - *p) * a;
        }
    }
    /// Vertical gradient from `top` to `bottom` between rows y0 and y1 (fractions of height).
    fn sky(&mut self, top: Rgb, bottom: Rgb) {
        let s = self.s;
        for y in 0..s {
            let c = lerp(top, bottom, y as f32 / (s - 1).max(1) as f32);
            for x in 0..s {
                self.blend(x, y, c, 1.0);
            }
        }
    }
    /// Soft disc (sun, moon).
    fn disc(&mut self, cx: f32, cy: f32, r: f32, c: Rgb) {
        let s = self.s;
        for y in 0..s {
            for x in 0..s {
                let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                let a = 1.0 - smoothstep(r - 1.0, r + 1.0, d);
                if a > 0.0 {
                    self.blend(x, y, c, a);
                }
            }
        }
    }
    /// Fills below the curve `line(x)` (in pixels) with a gradient from `near` to `far`.
    fn ground(&mut self, line: &dyn Fn(f32) -> f32, near: Rgb, far: Rgb) {
        let s = self.s;
        for x in 0..s {
            let top = line(x as f32);
            for y in 0..s {
                let yf = y as f32;
                let a = smoothstep(top - 0.75, top + 0.75, yf);
                if a > 0.0 {
                    let t = ((yf - top) / (s as f32 - top).max(1.0)).clamp(0.0, 1.0);
                    self.blend(x, y, lerp(far, near, t), a);
                }
            }
        }
    }
    /// Axis-aligned rectangle with soft edges (fractions of the canvas).
    fn field(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgb) {
        let s = self.s as f32;
        let soft = (s / 32.0).max(0.75);
        for y in 0..self.s {
            for x in 0..self.s {
                let (xf, yf) = (x as f32, y as f32);
                let a = smoothstep(x0 * s - soft, x0 * s + soft, xf)
                    * (1.0 - smoothstep(x1 * s - soft, x1 * s + soft, xf))
                    * smoothstep(y0 * s - soft, y0 * s + soft, yf)
                    * (1.0 - smoothstep(y1 * s - soft, y1 * s + soft, yf));
                if a > 0.0 {
                    self.blend(x, y, c, a * 0.95);
                }
            }
        }
    }
    /// Short strokes in the local colour, slightly shifted: the texture of paint.
    fn strokes(&mut self, rng: &mut Rng, count: usize, tilt: f32) {
        let s = self.s;
        let sf = s as f32;
        for _ in 0..count {
            let (x0, y0) = (rng.uniform() * sf, rng.uniform() * sf);
            let (dx, dy) = (1.0, tilt * (2.0 * rng.uniform() - 1.0));
            let norm = (dx * dx + dy * dy).sqrt();
            let (dx, dy) = (dx / norm, dy / norm);
            let len = sf * (0.06 + 0.12 * rng.uniform());
            let base = self.get((x0 as usize).min(s - 1), (y0 as usize).min(s - 1));
            let c = jitter(rng, base, 0.07);
            let thick = if rng.uniform() < 0.5 { 1 } else { 2 };
            let steps = len.ceil() as usize;
            for t in 0..steps {
                let (x, y) = (x0 + dx * t as f32, y0 + dy * t as f32);
                for w in 0..thick {
                    let (xi, yi) = (x as isize, y as isize + w);
                    if xi >= 0 && yi >= 0 && (xi as usize) < s && (yi as usize) < s {
                        self.blend(xi as usize, yi as usize, c, 0.45);
                    }
                }
            }
        }
    }
}

/// Hills: a horizon at `h` (pixels) bent by a few smooth bumps.
fn hills(rng: &mut Rng, s: f32, h: f32, height: f32) -> impl Fn(f32) -> f32 {
    let bumps: Vec<(f32, f32, f32)> = (0..3)
        .map(|_| {
            (
                rng.uniform() * s,
                (0.12 + 0.25 * rng.uniform()) * s,
                (0.3 + 0.7 * rng.uniform()) * height,
            )
        })
        .collect();
    move |x: f32| {
        let mut y = h;
        for &(c, w, a) in &bumps {
            let d = (x - c) / w;
            y -= a / (1.0 + d * d);
        }
        y
    }
}

fn paint(rng: &mut Rng, s: usize) -> Vec<u8> {
    let sf = s as f32;
    let mut cv = Canvas {
        s,
        px: vec![0.0; s * s * 3],
    };
    let kind = rng.below(4);
    let tilt = match kind {
        0 => {
            // Day landscape.
            let top = jitter(rng, [0.25, 0.45, 0.85], 0.1);
            let low = jitter(rng, [0.75, 0.85, 0.95], 0.08);
            cv.sky(top, low);
            let h = sf * (0.5 + 0.2 * rng.uniform());
            let sun = jitter(rng, [1.0, 0.93, 0.6], 0.05);
            let (cx, cy) = (
                sf * (0.15 + 0.7 * rng.uniform()),
                h * (0.25 + 0.4 * rng.uniform()),
            );
            cv.disc(cx, cy, sf * (0.05 + 0.05 * rng.uniform()), sun);
            let line = hills(rng, sf, h, sf * 0.15);
            let grass = jitter(rng, [0.25, 0.5, 0.2], 0.12);
            let far = jitter(rng, [0.45, 0.6, 0.4], 0.1);
            cv.ground(&line, grass, far);
            0.5
        }
        1 => {
            // Sunset over the sea.
            let top = jitter(rng, [0.35, 0.2, 0.45], 0.1);
            let low = jitter(rng, [0.98, 0.55, 0.25], 0.08);
            cv.sky(top, low);
            let h = sf * (0.45 + 0.2 * rng.uniform());
            let sun = jitter(rng, [1.0, 0.8, 0.4], 0.05);
            cv.disc(
                sf * (0.2 + 0.6 * rng.uniform()),
                h,
                sf * (0.07 + 0.06 * rng.uniform()),
                sun,
            );
            let sea = jitter(rng, [0.1, 0.2, 0.4], 0.08);
            let glow = lerp(sea, low, 0.5);
            cv.ground(&|_| h, sea, glow);
            // Horizontal bands of light on the water.
            for y in (h.ceil() as usize)..s {
                if rng.uniform() < 0.3 {
                    let c = lerp(cv.get(s / 2, y), sun, 0.35);
                    for x in 0..s {
                        cv.blend(x, y, c, 0.5);
                    }
                }
            }
            0.1
        }
        2 => {
            // Night: moon, stars, dark hills.
            let top = jitter(rng, [0.02, 0.03, 0.15], 0.03);
            let low = jitter(rng, [0.1, 0.15, 0.35], 0.06);
            cv.sky(top, low);
            for _ in 0..(s * s / 150).max(3) {
                let (x, y) = (rng.below(s), rng.below(s * 2 / 3));
                cv.blend(x, y, [1.0, 1.0, 0.9], 0.8);
            }
            let h = sf * (0.6 + 0.2 * rng.uniform());
            let moon = jitter(rng, [0.95, 0.95, 0.8], 0.04);
            let (cx, cy) = (
                sf * (0.15 + 0.7 * rng.uniform()),
                sf * (0.12 + 0.25 * rng.uniform()),
            );
            cv.disc(cx, cy, sf * (0.05 + 0.04 * rng.uniform()), moon);
            let line = hills(rng, sf, h, sf * 0.2);
            let dark = jitter(rng, [0.04, 0.06, 0.08], 0.03);
            cv.ground(&line, dark, lerp(dark, low, 0.3));
            0.8
        }
        _ => {
            // Colour field: two or three stacked soft rectangles on a ground colour.
            let bg = jitter(rng, [0.55, 0.2, 0.15], 0.35);
            cv.sky(bg, lerp(bg, [0.0, 0.0, 0.0], 0.2));
            let n = 2 + rng.below(2);
            let margin = 0.08 + 0.06 * rng.uniform();
            let gap = 0.04;
            let band = (1.0 - 2.0 * margin - gap * (n as f32 - 1.0)) / n as f32;
            for i in 0..n {
                let y0 = margin + i as f32 * (band + gap);
                let c = jitter(rng, [0.6, 0.45, 0.3], 0.4);
                cv.field(margin + 0.03, y0, 1.0 - margin - 0.03, y0 + band, c);
            }
            0.3
        }
    };
    cv.strokes(rng, s * s / 12, tilt);
    cv.px
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8)
        .collect()
}

/// `count` procedural paintings of `size`×`size`, identical for the same seed on every machine.
pub fn builtin(count: usize, size: usize, seed: u64) -> ImageSet {
    use rayon::prelude::*;
    let size = size.max(1);
    let images: Vec<Vec<u8>> = (0..count)
        .into_par_iter()
        .map(|i| paint(&mut Rng::derive(seed, &format!("builtin-{i}")), size))
        .collect();
    let meta = (0..count)
        .map(|i| ImageMeta {
            path: format!("builtin/{i}"),
            artist: None,
            width: size as u32,
            height: size as u32,
        })
        .collect();
    let pixels = images.concat();
    let mut set = ImageSet::from_pixels(size, pixels, meta)
        .unwrap_or_else(|_| unreachable!("builtin images have the declared size"));
    set.report.files_considered = count;
    set
}
