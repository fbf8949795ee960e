//! Image quality: the sliced Wasserstein distance (SWD) of Progressive GAN (Karras et al. 2018,
//! "Progressive Growing of GANs", section 5 and appendix D), which needs no pretrained network.
//!
//! For each image of two sets (8-bit RGB):
//!
//! 1. build a Laplacian pyramid from full size down to 16 px: 5×5 binomial filter
//!    (`[1, 4, 6, 4, 1] / 16` per axis) with mirror padding, as cv2's `pyrDown`/`pyrUp`; each
//!    level is the image at that scale minus the upsampled next level, the last one is the
//!    low-pass image itself;
//! 2. per level, cut 128 descriptors: 7×7×3 neighbourhoods at uniformly random centres.
//!
//! Per level, each set's descriptors are normalised per colour channel by that set's own mean
//! and standard deviation. The distance between the two clouds of descriptors is then estimated
//! with 4 repeats × 128 random unit directions: project both sets onto a direction, sort the
//! projections, take the mean absolute difference (the 1-D Wasserstein-1 distance between the
//! two empirical distributions), and average over directions. The report is that average ×10³
//! per level, plus the mean over levels.
//!
//! Because of the per-set normalisation the metric ignores a global colour cast or contrast
//! change (per channel); it measures the *structure* of patches at each scale: the finest
//! levels respond to sharpness and texture, the coarse low-pass level to colour layout.
//!
//! Everything is deterministic from the seed: descriptor centres depend only on (seed, level,
//! image index) and are the same for both sets, so a set compared with itself scores exactly 0.

use crate::data::ImageSet;
use crate::nn::{Ctx, Generator, Mode, Module};
use crate::rng::Rng;
use crate::tensor::{no_grad, Tensor};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Settings of the metric. [`Default`] gives the paper's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SwdParams {
    /// Descriptors cut from each image at each pyramid level.
    pub descriptors_per_image: usize,
    /// Side of a descriptor's square neighbourhood (odd).
    pub patch: usize,
    /// Independent batches of random directions; the result is their mean.
    pub repeats: usize,
    /// Random directions per batch.
    pub directions: usize,
    /// The pyramid stops before its levels get smaller than this.
    pub min_resolution: usize,
}

impl Default for SwdParams {
    fn default() -> Self {
        SwdParams {
            descriptors_per_image: 128,
            patch: 7,
            repeats: 4,
            directions: 128,
            min_resolution: 16,
        }
    }
}

impl SwdParams {
    fn validate(&self) -> Result<()> {
        if self.patch == 0 || self.patch.is_multiple_of(2) {
            bail!("SWD patch size must be odd, got {}", self.patch);
        }
        if self.min_resolution < self.patch {
            bail!(
                "SWD min_resolution {} is smaller than the {}-px patch",
                self.min_resolution,
                self.patch
            );
        }
        if self.descriptors_per_image == 0 || self.repeats == 0 || self.directions == 0 {
            bail!("SWD needs at least one descriptor per image, one repeat and one direction");
        }
        Ok(())
    }

    /// Length of one descriptor: `patch × patch` pixels × 3 channels.
    fn dim(&self) -> usize {
        3 * self.patch * self.patch
    }
}

/// The distance between two image sets, per pyramid level (finest first).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SwdReport {
    /// Side in pixels of each pyramid level, e.g. `[64, 32, 16]`.
    pub resolutions: Vec<usize>,
    /// SWD ×10³ at each level (same order as `resolutions`).
    pub per_level: Vec<f32>,
    /// Mean of `per_level`.
    pub mean: f32,
    /// Images per set.
    pub count: usize,
}

// ---------------------------------------------------------------------------------------------
// Laplacian pyramid
// ---------------------------------------------------------------------------------------------

/// One pyramid level: `size`×`size` pixels, 3 planes (CHW), on the 0..255 scale of the input.
#[derive(Clone, Debug, PartialEq)]
pub struct PyramidLevel {
    pub size: usize,
    pub data: Vec<f32>,
}

/// The binomial kernel `[1, 4, 6, 4, 1] / 16` (one axis of cv2's 5×5 pyramid filter).
const BINOMIAL: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];

/// Mirrors an out-of-range index without repeating the edge sample (`-1 → 1`, `n → n - 2`):
/// cv2's BORDER_REFLECT_101, the border of `pyrDown`/`pyrUp` (scipy calls it "mirror").
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let i = i.rem_euclid(period);
    (if i >= n as isize { period - i } else { i }) as usize
}

/// A 1-D linear map: for each output sample, the input samples it sums and their weights.
type Taps = Vec<Vec<(usize, f32)>>;

/// `pyrDown` along one axis: blur, keep the even samples (`n` → `ceil(n / 2)`).
fn down_taps(n: usize) -> Taps {
    (0..n.div_ceil(2))
        .map(|i| {
            (0..5)
                .map(|t| (reflect((2 * i + t) as isize - 2, n), BINOMIAL[t]))
                .collect()
        })
        .collect()
}

/// `pyrUp` along one axis, from `m` samples to `n` (`2m - 1` or `2m`): input sample `j` is placed
/// at position `2j` of an `n`-long signal whose odd samples are zero, which is then blurred with
/// twice the kernel (the inserted zeros halve its mass), mirrored at the edges of that signal.
fn up_taps(m: usize, n: usize) -> Taps {
    debug_assert!(n == 2 * m || n + 1 == 2 * m);
    (0..n)
        .map(|i| {
            (0..5)
                .filter_map(|t| {
                    let r = reflect((i + t) as isize - 2, n);
                    r.is_multiple_of(2).then_some((r / 2, 2.0 * BINOMIAL[t]))
                })
                .collect()
        })
        .collect()
}

/// Applies `x_taps` along rows and `y_taps` along columns to each of the 3 planes of a
/// `w`×`h` CHW image (the 2-D pyramid filters are separable).
fn resample(planes: &[f32], w: usize, h: usize, x_taps: &Taps, y_taps: &Taps) -> Vec<f32> {
    let (w2, h2) = (x_taps.len(), y_taps.len());
    let mut out = vec![0.0; 3 * w2 * h2];
    let mut rows = vec![0.0; w2 * h];
    for (src, dst) in planes.chunks(w * h).zip(out.chunks_mut(w2 * h2)) {
        for y in 0..h {
            let line = &src[y * w..(y + 1) * w];
            for (x2, taps) in x_taps.iter().enumerate() {
                rows[y * w2 + x2] = taps.iter().map(|&(x, k)| k * line[x]).sum();
            }
        }
        for (y2, taps) in y_taps.iter().enumerate() {
            for x in 0..w2 {
                dst[y2 * w2 + x] = taps.iter().map(|&(y, k)| k * rows[y * w2 + x]).sum();
            }
        }
    }
    out
}

fn pyr_down(planes: &[f32], n: usize) -> Vec<f32> {
    let taps = down_taps(n);
    resample(planes, n, n, &taps, &taps)
}

fn pyr_up(planes: &[f32], m: usize, n: usize) -> Vec<f32> {
    let taps = up_taps(m, n);
    resample(planes, m, m, &taps, &taps)
}

/// Sides of the pyramid levels of a `size`-px image: halving (rounding up, as `pyrDown`) while
/// the result is at least `min_resolution`. `[64, 32, 16]` for 64 px at the default 16.
pub fn pyramid_resolutions(size: usize, min_resolution: usize) -> Vec<usize> {
    let mut sizes = vec![size];
    let mut n = size;
    while n > 1 && n.div_ceil(2) >= min_resolution {
        n = n.div_ceil(2);
        sizes.push(n);
    }
    sizes
}

/// The Laplacian pyramid of one 8-bit image (`size`×`size`×3 bytes, HWC as
/// [`ImageSet::image_u8`] stores it), finest level first, down to `min_resolution` px.
/// [`reconstruct`] inverts it.
pub fn laplacian_pyramid(
    image: &[u8],
    size: usize,
    min_resolution: usize,
) -> Result<Vec<PyramidLevel>> {
    if image.len() != size * size * 3 {
        bail!(
            "image has {} bytes, expected {size}x{size}x3 = {}",
            image.len(),
            size * size * 3
        );
    }
    if size < min_resolution {
        bail!("a {size}x{size} px image is smaller than the pyramid's {min_resolution} px");
    }
    Ok(pyramid(
        image,
        size,
        pyramid_resolutions(size, min_resolution).len(),
    ))
}

/// [`laplacian_pyramid`] with its input already checked, `levels` levels.
fn pyramid(image: &[u8], size: usize, levels: usize) -> Vec<PyramidLevel> {
    // HWC bytes → CHW floats on the 0..255 scale (as the paper's float32(uint8)).
    let plane = size * size;
    let mut current = vec![0.0; 3 * plane];
    for (p, px) in image.chunks_exact(3).enumerate() {
        for c in 0..3 {
            current[c * plane + p] = f32::from(px[c]);
        }
    }
    let mut n = size;
    let mut out = Vec::with_capacity(levels);
    for _ in 1..levels {
        let smaller = pyr_down(&current, n);
        let m = n.div_ceil(2);
        let up = pyr_up(&smaller, m, n);
        current.iter_mut().zip(&up).for_each(|(v, u)| *v -= u);
        out.push(PyramidLevel {
            size: n,
            data: current,
        });
        current = smaller;
        n = m;
    }
    out.push(PyramidLevel {
        size: n,
        data: current,
    });
    out
}

/// Adds the levels back up (coarsest upsampled and added to the next, and so on): the original
/// image as CHW floats on the 0..255 scale, up to float rounding.
pub fn reconstruct(levels: &[PyramidLevel]) -> Vec<f32> {
    let Some(last) = levels.last() else {
        return Vec::new();
    };
    let mut image = last.data.clone();
    let mut n = last.size;
    for level in levels.iter().rev().skip(1) {
        image = pyr_up(&image, n, level.size);
        image.iter_mut().zip(&level.data).for_each(|(v, d)| *v += d);
        n = level.size;
    }
    image
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

/// All descriptors of one set at pyramid level `level` (of `levels`), one row of
/// `params.dim()` values (channel, row, column) per descriptor, already normalised.
fn descriptors(
    images: &[&[u8]],
    size: usize,
    levels: usize,
    level: usize,
    params: &SwdParams,
    seed: u64,
) -> Vec<f32> {
    let dim = params.dim();
    let p = params.patch;
    let half = p / 2;
    let per_image = params.descriptors_per_image;
    let centre_seed = Rng::derive(seed, &format!("swd-centres-{level}")).state().0;
    let mut out = vec![0.0f32; images.len() * per_image * dim];
    out.par_chunks_mut(per_image * dim)
        .zip(images.par_iter())
        .enumerate()
        .for_each(|(i, (rows, image))| {
            // Recomputed per level: the pyramid costs far less than projecting its descriptors,
            // and keeping only one level's descriptors bounds the memory. Level `level` needs
            // only the one below it (or is the low-pass itself).
            let pyr = pyramid(image, size, (level + 2).min(levels));
            let (n, data) = (pyr[level].size, &pyr[level].data);
            let plane = n * n;
            // Centres depend on the image's index, not its set, so equal sets give equal
            // descriptors (and a distance of exactly 0).
            let mut rng = Rng::derive(centre_seed, &i.to_string());
            for row in rows.chunks_mut(dim) {
                // Uniform over the positions where the whole neighbourhood is inside.
                let cy = half + rng.below(n - 2 * half);
                let cx = half + rng.below(n - 2 * half);
                let mut q = 0;
                for c in 0..3 {
                    for y in cy - half..=cy + half {
                        let line = &data[c * plane + y * n..][..n];
                        row[q..q + p].copy_from_slice(&line[cx - half..=cx + half]);
                        q += p;
                    }
                }
            }
        });
    normalise_per_channel(&mut out, p * p);
    out
}

/// Subtracts each colour channel's mean and divides by its standard deviation, over all
/// descriptors of a set (rows of `3 × per_channel` values). A constant channel (e.g. an
/// all-flat detail level) is only centred, so it becomes 0 rather than NaN.
fn normalise_per_channel(desc: &mut [f32], per_channel: usize) {
    let dim = 3 * per_channel;
    // Partial sums per block, added in a fixed order: the result does not depend on threads.
    let partials: Vec<[f64; 6]> = desc
        .par_chunks(dim * 1024)
        .map(|block| {
            let mut s = [0.0f64; 6];
            for row in block.chunks(dim) {
                for (c, values) in row.chunks(per_channel).enumerate() {
                    for &v in values {
                        s[c] += f64::from(v);
                        s[3 + c] += f64::from(v) * f64::from(v);
                    }
                }
            }
            s
        })
        .collect();
    let mut s = [0.0f64; 6];
    for p in &partials {
        s.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    let count = (desc.len() / 3) as f64;
    let mut mean = [0.0f32; 3];
    let mut inv_std = [0.0f32; 3];
    for c in 0..3 {
        let m = s[c] / count;
        let var = (s[3 + c] / count - m * m).max(0.0);
        mean[c] = m as f32;
        inv_std[c] = if var > 1e-12 {
            (1.0 / var.sqrt()) as f32
        } else {
            1.0
        };
    }
    desc.par_chunks_mut(dim * 1024).for_each(|block| {
        for row in block.chunks_mut(dim) {
            for (c, values) in row.chunks_mut(per_channel).enumerate() {
                values
                    .iter_mut()
                    .for_each(|v| *v = (*v - mean[c]) * inv_std[c]);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Sliced Wasserstein distance
// ---------------------------------------------------------------------------------------------

/// Directions projected and sorted at a time: bounds the projection buffers to
/// `descriptors × 32` floats per set (32 MiB per set of 2048 images) whatever the repeats.
const DIRECTION_CHUNK: usize = 128;
/// Descriptors per sgemm call (rows of one parallel task).
const PROJECT_ROWS: usize = 4096;

/// `params.repeats × params.directions` random unit directions for `level`, as a
/// `dim × total` row-major matrix (one direction per column).
fn directions(params: &SwdParams, level: usize, seed: u64) -> (Vec<f32>, usize) {
    let dim = params.dim();
    let total = params.repeats * params.directions;
    let mut m = vec![0.0f32; dim * total];
    for r in 0..params.repeats {
        // One stream per repeat, like the paper's fresh batch of directions per repeat.
        let mut rng = Rng::derive(seed, &format!("swd-directions-{level}-{r}"));
        for j in r * params.directions..(r + 1) * params.directions {
            let v: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            for (q, x) in v.iter().enumerate() {
                m[q * total + j] = x / norm;
            }
        }
    }
    (m, total)
}

/// Projections of every descriptor onto directions `j0..j0 + k` of `dirs` (`dim × total`) into
/// `out`, in blocks of [`PROJECT_ROWS`] descriptors, each block column-major (`k` runs of its
/// rows), so that one direction's values are a few long contiguous runs ([`sorted_column`]).
fn project(
    desc: &[f32],
    dim: usize,
    dirs: &[f32],
    total: usize,
    (j0, k): (usize, usize),
    out: &mut Vec<f32>,
) {
    assert!(j0 + k <= total && dirs.len() == dim * total);
    out.resize(desc.len() / dim * k, 0.0);
    out.par_chunks_mut(PROJECT_ROWS * k)
        .zip(desc.par_chunks(PROJECT_ROWS * dim))
        .for_each(|(o, d)| {
            let rows = d.len() / dim;
            // SAFETY: a = d (rows × dim, row-major); b = columns j0..j0+k of dirs (dim rows of
            // stride `total`, the last element read is (dim-1)·total + j0+k-1 < dim·total);
            // c = o (rows × k, column-major, o.len() = rows·k): every access is in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    dim,
                    k,
                    1.0,
                    d.as_ptr(),
                    dim as isize,
                    1,
                    dirs.as_ptr().add(j0),
                    total as isize,
                    1,
                    0.0,
                    o.as_mut_ptr(),
                    1,
                    rows as isize,
                );
            }
        });
}

/// Maps a float to an integer of the same order (that of `f32::total_cmp`): positive numbers
/// get the sign bit set, negative ones all bits flipped. Lets projections be radix sorted.
fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`order_key`].
fn from_order_key(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

/// Sorts 32-bit keys: least-significant-digit radix sort, three passes of 11 bits, with `buf`
/// as scratch space. About three times faster than `sort_unstable_by(f32::total_cmp)` on the
/// 10⁵–10⁶ projections per direction whose sorting dominates the metric's cost.
fn radix_sort(keys: &mut Vec<u32>, buf: &mut Vec<u32>) {
    buf.resize(keys.len(), 0);
    for shift in [0, 11, 22] {
        let digit = |k: u32| (k >> shift) as usize & 0x7ff;
        // Histogram of this digit, turned into each digit's first slot in the output.
        let mut next = [0usize; 0x800];
        for &k in keys.iter() {
            next[digit(k)] += 1;
        }
        let mut sum = 0;
        for slot in next.iter_mut() {
            (*slot, sum) = (sum, sum + *slot);
        }
        // Stable scatter: keys with equal digits keep the order of the previous pass.
        for &k in keys.iter() {
            buf[next[digit(k)]] = k;
            next[digit(k)] += 1;
        }
        std::mem::swap(keys, buf);
    }
}

/// Buffers reused from one direction to the next (allocating them per direction costs more in
/// page faults than the sort itself saves).
#[derive(Default)]
struct SortScratch {
    a: Vec<u32>,
    b: Vec<u32>,
    buf: Vec<u32>,
}

/// Direction `j`'s projections (of [`project`]'s `k`), sorted, as [`order_key`]s in `keys`.
fn sorted_column(p: &[f32], k: usize, j: usize, keys: &mut Vec<u32>, buf: &mut Vec<u32>) {
    keys.clear();
    for block in p.chunks(PROJECT_ROWS * k) {
        let rows = block.len() / k;
        keys.extend(
            block[j * rows..(j + 1) * rows]
                .iter()
                .map(|&x| order_key(x)),
        );
    }
    radix_sort(keys, buf);
}

/// The SWD (not yet ×10³) between two descriptor sets of equal size: the mean over all
/// directions of the Wasserstein-1 distance between the two sets' projections. The paper's
/// mean over repeats of means over each repeat's directions is the same number, as every
/// repeat has as many directions.
fn sliced_wasserstein(a: &[f32], b: &[f32], dim: usize, dirs: &[f32], total: usize) -> f64 {
    let n = a.len() / dim;
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    let mut per_direction = Vec::with_capacity(total);
    for j0 in (0..total).step_by(DIRECTION_CHUNK) {
        let k = DIRECTION_CHUNK.min(total - j0);
        project(a, dim, dirs, total, (j0, k), &mut pa);
        project(b, dim, dirs, total, (j0, k), &mut pb);
        let chunk: Vec<f64> = (0..k)
            .into_par_iter()
            .map_init(SortScratch::default, |s, j| {
                sorted_column(&pa, k, j, &mut s.a, &mut s.buf);
                sorted_column(&pb, k, j, &mut s.b, &mut s.buf);
                // Sorted samples pair up quantile by quantile: W1 of the empirical laws.
                s.a.iter()
                    .zip(&s.b)
                    .map(|(&u, &v)| f64::from((from_order_key(u) - from_order_key(v)).abs()))
                    .sum::<f64>()
                    / n as f64
            })
            .collect();
        per_direction.extend(chunk);
    }
    per_direction.iter().sum::<f64>() / total as f64
}

/// The SWD between image sets `a` and `b` (the same number of images, each `size`×`size`×3
/// bytes in [`ImageSet::image_u8`]'s HWC layout), deterministic from `seed`.
pub fn swd(
    a: &[&[u8]],
    b: &[&[u8]],
    size: usize,
    params: &SwdParams,
    seed: u64,
) -> Result<SwdReport> {
    params.validate()?;
    if a.is_empty() || b.is_empty() {
        bail!(
            "SWD needs images in both sets, got {} and {}",
            a.len(),
            b.len()
        );
    }
    if a.len() != b.len() {
        bail!(
            "SWD compares sets of equal size, got {} and {} images (draw the same number from each)",
            a.len(),
            b.len()
        );
    }
    if size < params.min_resolution {
        bail!(
            "{size}x{size} px images are smaller than the {} px the SWD pyramid goes down to",
            params.min_resolution
        );
    }
    let bytes = size * size * 3;
    for (name, set) in [("first", a), ("second", b)] {
        if let Some((i, img)) = set.iter().enumerate().find(|(_, img)| img.len() != bytes) {
            bail!(
                "image {i} of the {name} set has {} bytes, expected {size}x{size}x3 = {bytes}",
                img.len()
            );
        }
    }
    let resolutions = pyramid_resolutions(size, params.min_resolution);
    let levels = resolutions.len();
    let dim = params.dim();
    let mut per_level = Vec::with_capacity(levels);
    for level in 0..levels {
        let da = descriptors(a, size, levels, level, params, seed);
        let db = descriptors(b, size, levels, level, params, seed);
        let (dirs, total) = directions(params, level, seed);
        per_level.push((sliced_wasserstein(&da, &db, dim, &dirs, total) * 1e3) as f32);
    }
    let mean = per_level.iter().sum::<f32>() / levels as f32;
    Ok(SwdReport {
        resolutions,
        per_level,
        mean,
        count: a.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Generators and real sets
// ---------------------------------------------------------------------------------------------

/// One generated image (CHW f32 in [-1, 1], `size`×`size`) as 8-bit HWC RGB, converted exactly
/// as `artgan sample` writes PNGs: `round((clamp(v, -1, 1) + 1) × 127.5)`.
pub fn to_u8_hwc(chw: &[f32], size: usize) -> Vec<u8> {
    let plane = size * size;
    assert_eq!(chw.len(), 3 * plane, "expected a 3x{size}x{size} image");
    let mut out = vec![0u8; 3 * plane];
    for (p, px) in out.chunks_exact_mut(3).enumerate() {
        for c in 0..3 {
            px[c] = ((chw[c * plane + p].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
        }
    }
    out
}

/// `count` indices into a set of `n`: without replacement (a seeded random subset) when
/// `count ≤ n`, else with replacement.
fn draw_indices(n: usize, count: usize, rng: &mut Rng) -> Vec<usize> {
    if count <= n {
        // Partial Fisher-Yates: the first `count` places of a random permutation.
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..count {
            let j = i + rng.below(n - i);
            all.swap(i, j);
        }
        all.truncate(count);
        all
    } else {
        (0..count).map(|_| rng.below(n)).collect()
    }
}

/// Images per generator forward pass.
const GENERATE_BATCH: usize = 64;

/// `count` images of `g` from latents of the `"evaluate-latents"` stream of `seed`, as 8-bit
/// HWC RGB. Eval mode (running batch-norm statistics, as `artgan sample`), under `no_grad`, in
/// batches of at most 64; the latents do not depend on the batching.
pub fn generate_u8(g: &Generator, count: usize, seed: u64) -> Result<Vec<Vec<u8>>> {
    generate_u8_labeled(g, count, seed, None)
}

/// Labels for `count` images of a conditional generator, drawn in proportion to the classes'
/// image counts (the `"evaluate-labels"` stream of `seed`).
pub fn proportional_labels(table: &crate::data::ClassTable, count: usize, seed: u64) -> Vec<u32> {
    let total: usize = table.classes.iter().map(|c| c.images).sum();
    let mut rng = Rng::derive(seed, "evaluate-labels");
    (0..count)
        .map(|_| {
            let mut r = rng.below(total.max(1));
            for c in &table.classes {
                if r < c.images {
                    return c.index as u32;
                }
                r -= c.images;
            }
            0
        })
        .collect()
}

/// [`generate_u8`] with a class label per image for a conditional generator (the latents are
/// the same as without labels).
pub fn generate_u8_labeled(
    g: &Generator,
    count: usize,
    seed: u64,
    labels: Option<&[u32]>,
) -> Result<Vec<Vec<u8>>> {
    match labels {
        None if g.classes > 0 => {
            bail!(
                "the generator is conditional ({} classes): give labels",
                g.classes
            )
        }
        Some(l) if l.len() != count => bail!("{} labels for {count} images", l.len()),
        _ => {}
    }
    let device = match g.parameters().first() {
        Some((_, t)) => t.device(),
        None => bail!("the generator has no parameters"),
    };
    let (nz, size) = (g.config.nz, g.config.image_size);
    let mut rng = Rng::derive(seed, "evaluate-latents");
    let _guard = no_grad();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let b = GENERATE_BATCH.min(count - out.len());
        let z = Tensor::randn(&[b, nz, 1, 1], 0.0, 1.0, &mut rng, device)?;
        // Eval mode draws no random numbers; the context's generator is never used.
        let batch_labels = labels.map(|l| &l[out.len()..out.len() + b]);
        let images = g
            .forward(
                &z,
                &mut Ctx::new(Mode::Eval, &mut Rng::new(0)).labeled(batch_labels),
            )?
            .to_vec()?;
        out.extend(images.chunks(3 * size * size).map(|im| to_u8_hwc(im, size)));
    }
    Ok(out)
}

fn check_real(real: &ImageSet, count: usize, params: &SwdParams) -> Result<()> {
    if count == 0 {
        bail!("SWD needs at least one image per set (count is 0)");
    }
    if real.is_empty() {
        bail!("the real image set is empty");
    }
    if real.size < params.min_resolution {
        bail!(
            "{0}x{0} px images are smaller than the {1} px the SWD pyramid goes down to",
            real.size,
            params.min_resolution
        );
    }
    Ok(())
}

/// SWD between `count` images of `g` and `count` images of `real` (a random subset, or drawn
/// with replacement when `real` has fewer). Everything (latents, the real draw, descriptor
/// centres, directions) is derived from `seed`. The paper uses `count` = 16384.
pub fn evaluate_generator(
    g: &Generator,
    real: &ImageSet,
    count: usize,
    seed: u64,
    params: &SwdParams,
) -> Result<SwdReport> {
    evaluate_generator_labeled(g, real, count, seed, params, None)
}

/// [`evaluate_generator`] for a conditional generator: `labels[i]` is the class of generated
/// image i (e.g. [`proportional_labels`], or one class throughout for a per-class SWD).
pub fn evaluate_generator_labeled(
    g: &Generator,
    real: &ImageSet,
    count: usize,
    seed: u64,
    params: &SwdParams,
    labels: Option<&[u32]>,
) -> Result<SwdReport> {
    check_real(real, count, params)?;
    if real.size != g.config.image_size {
        bail!(
            "the real images are {0}x{0} px but the generator makes {1}x{1} px",
            real.size,
            g.config.image_size
        );
    }
    let fake = generate_u8_labeled(g, count, seed, labels)?;
    let fake: Vec<&[u8]> = fake.iter().map(Vec::as_slice).collect();
    let picks = draw_indices(real.len(), count, &mut Rng::derive(seed, "evaluate-reals"));
    let reals: Vec<&[u8]> = picks.iter().map(|&i| real.image_u8(i)).collect();
    swd(&reals, &fake, real.size, params, seed)
}

/// The noise floor: SWD between two draws of `count` real images. The draws are disjoint when
/// the set has at least `2 × count` images; otherwise they share images and the floor comes out
/// lower than two truly independent samples would give.
pub fn real_floor(
    real: &ImageSet,
    count: usize,
    seed: u64,
    params: &SwdParams,
) -> Result<SwdReport> {
    check_real(real, count, params)?;
    let n = real.len();
    let (first, second) = if 2 * count <= n {
        let both = draw_indices(n, 2 * count, &mut Rng::derive(seed, "floor-reals"));
        (both[..count].to_vec(), both[count..].to_vec())
    } else {
        (
            draw_indices(n, count, &mut Rng::derive(seed, "floor-reals-a")),
            draw_indices(n, count, &mut Rng::derive(seed, "floor-reals-b")),
        )
    };
    let a: Vec<&[u8]> = first.iter().map(|&i| real.image_u8(i)).collect();
    let b: Vec<&[u8]> = second.iter().map(|&i| real.image_u8(i)).collect();
    swd(&a, &b, real.size, params, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_of_order_keys_sorts_floats() {
        let mut rng = Rng::new(5);
        let mut values: Vec<f32> = (0..5000).map(|_| 1e3 * rng.normal()).collect();
        values.extend([0.0, -0.0, 1e-40, -1e-40, f32::MAX, f32::MIN, 3.5, 3.5]);
        let mut keys: Vec<u32> = values.iter().map(|&x| order_key(x)).collect();
        radix_sort(&mut keys, &mut Vec::new());
        let sorted: Vec<f32> = keys.into_iter().map(from_order_key).collect();
        values.sort_unstable_by(f32::total_cmp);
        assert_eq!(
            sorted.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn reflect_mirrors_without_repeating_the_edge() {
        let idx: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(idx, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(-2, 1), 0);
    }
}
