//! The Laplacian pyramid of an 8-bit image, as cv2's `pyrDown`/`pyrUp` build it (5×5 binomial
//! filter, mirror padding), and its inverse.

use anyhow::{bail, Result};

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
pub(super) fn pyramid(image: &[u8], size: usize, levels: usize) -> Vec<PyramidLevel> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_mirrors_without_repeating_the_edge() {
        let idx: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(idx, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(-2, 1), 0);
    }
}
