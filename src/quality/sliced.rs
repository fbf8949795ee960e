//! Descriptors (7×7×3 neighbourhoods, normalised per set and channel) and the sliced
//! Wasserstein distance between two sets of them: random directions, projections by sgemm,
//! radix-sorted, compared.

use super::pyramid::pyramid;
use super::SwdParams;
use crate::rng::Rng;
use rayon::prelude::*;

/// All descriptors of one set at pyramid level `level` (of `levels`), one row of
/// `params.dim()` values (channel, row, column) per descriptor, already normalised.
pub(super) fn descriptors(
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
pub(super) fn directions(params: &SwdParams, level: usize, seed: u64) -> (Vec<f32>, usize) {
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
pub(super) fn sliced_wasserstein(
    a: &[f32],
    b: &[f32],
    dim: usize,
    dirs: &[f32],
    total: usize,
) -> f64 {
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
}
