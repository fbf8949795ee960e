//! Batch assembly from 8-bit images: the one definition of its arithmetic, and the family's
//! backend trait. Its caller is the data loader (`crate::data::loader`); its kernel
//! `kernels/batch.cu`, launched by `cuda/batch.rs`.
//!
//! A batch gathers images (HWC RGB bytes, `size`×`size`) by index, mirrors some left-right,
//! rotates some about the centre (bilinear sampling, mirror-reflected edges) and maps bytes to
//! [-1, 1] as `v / 127.5 - 1`, giving NCHW f32. [`assemble`] is the host version: the host
//! backends (reference and fast CPU, through [`BatchBackend`]'s defaults) and
//! `crate::data::assemble_batch` all call it, and `kernels/batch.cu` repeats the same
//! f32 operations in the same order (sine and cosine come from [`rotation`] on the host), so
//! the GPU result is expected to be bit-identical.
//!
//! Images live on a device as bytes packed four to an f32 element ([`pack_bytes`]): storage is
//! f32 everywhere, and a byte copy (not a value conversion) keeps their order in memory on both
//! the host and the GPU.

use super::{on_host, Storage};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// `bytes` packed into `ceil(len / 4)` f32 elements (the memory image of the bytes; the last
/// element padded with zero bytes). [`packed_bytes`] is the inverse view.
pub fn pack_bytes(bytes: &[u8]) -> Vec<f32> {
    let mut v = vec![0f32; bytes.len().div_ceil(4)];
    bytemuck::cast_slice_mut::<f32, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
    v
}

/// The bytes held by packed storage (including up to 3 padding bytes at the end).
pub fn packed_bytes(packed: &[f32]) -> &[u8] {
    bytemuck::cast_slice(packed)
}

/// (sin, cos) of a rotation by `angle_deg`, computed in f64 and rounded to f32, or `None` for
/// no rotation (exactly 0°, which takes the exact gather path).
pub fn rotation(angle_deg: f32) -> Option<(f32, f32)> {
    if angle_deg == 0.0 {
        return None;
    }
    let (sin, cos) = f64::from(angle_deg).to_radians().sin_cos();
    Some((sin as f32, cos as f32))
}

/// Largest image side the device kernel accepts (its indices are 32-bit per image row).
pub const MAX_IMAGE_SIZE: usize = 65_535;

/// Validates a batch request against images packed in `packed_len` f32 elements: equal
/// lengths, a usable size, finite angles, and every index naming an image wholly inside the
/// storage. Both backends call it before touching memory.
pub fn check_batch(
    packed_len: usize,
    image_size: usize,
    indices: &[u32],
    flips: &[bool],
    angles_deg: &[f32],
) -> Result<()> {
    if image_size == 0 || image_size > MAX_IMAGE_SIZE {
        bail!("assemble_batch: image size {image_size} outside 1..={MAX_IMAGE_SIZE}");
    }
    if flips.len() != indices.len() || angles_deg.len() != indices.len() {
        bail!(
            "assemble_batch: {} indices but {} flips and {} angles",
            indices.len(),
            flips.len(),
            angles_deg.len()
        );
    }
    let per = image_size * image_size * 3;
    let available = packed_len.saturating_mul(4) / per;
    if let Some(&i) = indices.iter().find(|&&i| i as usize >= available) {
        bail!(
            "assemble_batch: image index {i} out of range (the storage holds {available} images)"
        );
    }
    if let Some(a) = angles_deg.iter().find(|a| !a.is_finite()) {
        bail!("assemble_batch: rotation angle {a} is not finite");
    }
    Ok(())
}

/// Mirror-reflects a coordinate into [0, n-1] (edge pixel not repeated), so rotated corners
/// are filled with nearby painting rather than a black wedge the discriminator could learn.
pub fn reflect(t: f32, n: usize) -> f32 {
    if n <= 1 {
        return 0.0;
    }
    let last = (n - 1) as f32;
    // Almost every sample is inside; skip the (slow) float remainder for those.
    if (0.0..=last).contains(&t) {
        return t;
    }
    let period = 2.0 * last;
    let t = t.abs() % period;
    if t > last {
        period - t
    } else {
        t
    }
}

/// Byte to [-1, 1].
#[inline]
fn normalise(v: f32) -> f32 {
    v / 127.5 - 1.0
}

/// One image: `src` is `s*s*3` HWC bytes, `dst` receives `3*s*s` CHW values. Flip is applied
/// before rotation (in source coordinates: the sample point is mirrored).
pub fn assemble_image(src: &[u8], s: usize, flip: bool, rot: Option<(f32, f32)>, dst: &mut [f32]) {
    let plane = s * s;
    let Some((sin, cos)) = rot else {
        for y in 0..s {
            for x in 0..s {
                let sx = if flip { s - 1 - x } else { x };
                let p = (y * s + sx) * 3;
                for c in 0..3 {
                    dst[c * plane + y * s + x] = normalise(f32::from(src[p + c]));
                }
            }
        }
        return;
    };
    // kernels/batch.cu performs exactly these f32 operations, in this order.
    let centre = (s as f32 - 1.0) / 2.0;
    for y in 0..s {
        for x in 0..s {
            let (dx, dy) = (x as f32 - centre, y as f32 - centre);
            let mut sx = centre + cos * dx - sin * dy;
            let sy = centre + sin * dx + cos * dy;
            if flip {
                sx = s as f32 - 1.0 - sx;
            }
            let (sx, sy) = (reflect(sx, s), reflect(sy, s));
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for c in 0..3 {
                let at = |xx: usize, yy: usize| f32::from(src[(yy * s + xx) * 3 + c]);
                let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
                let bot = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
                let v = top * (1.0 - fy) + bot * fy;
                dst[c * plane + y * s + x] = normalise(v);
            }
        }
    }
}

/// Batch assembly on the host. `images` holds images of `s*s*3` bytes one after another;
/// `indices`, `flips` and `angles_deg` have one entry per batch image (panics on an index out
/// of range: callers validate with [`check_batch`]). Returns `[B, 3, s, s]` f32.
pub fn assemble(
    images: &[u8],
    s: usize,
    indices: &[usize],
    flips: &[bool],
    angles_deg: &[f32],
) -> Vec<f32> {
    assert!(
        flips.len() == indices.len() && angles_deg.len() == indices.len(),
        "assemble: one flip and one angle per index"
    );
    let per = s * s * 3;
    let mut out = vec![0f32; indices.len() * per];
    if per == 0 {
        return out;
    }
    out.par_chunks_mut(per).enumerate().for_each(|(b, dst)| {
        let i = indices[b];
        let src = &images[i * per..(i + 1) * per];
        assemble_image(src, s, flips[b], rotation(angles_deg[b]), dst);
    });
    out
}

/// Batch assembly on a backend. The defaults run [`assemble`] on host memory (the reference
/// and fast CPU backends both use them).
pub trait BatchBackend {
    /// Image bytes (HWC RGB images one after another) kept on the device, packed four to an
    /// element: `ceil(len / 4)` elements ([`pack_bytes`]; the host holds the same packing).
    /// Only [`BatchBackend::assemble_batch`] reads it.
    fn upload_images(&self, pixels: &[u8]) -> Result<Storage> {
        Ok(Storage::Cpu(pack_bytes(pixels)))
    }
    /// A batch `[B, 3, S, S]` in [-1, 1] from images uploaded by
    /// [`BatchBackend::upload_images`] (`image_size` = S): image `indices[b]`, mirrored
    /// left-right when `flips[b]`, rotated by `angles_deg[b]` about the centre (bilinear,
    /// reflected edges). One entry per batch image in each slice; indices past the last whole
    /// image are an error. Same values as [`assemble`] (the host runs it; the CUDA kernel is
    /// expected to be bit-identical).
    fn assemble_batch(
        &self,
        images: &Storage,
        image_size: usize,
        indices: &[u32],
        flips: &[bool],
        angles_deg: &[f32],
    ) -> Result<Storage> {
        let packed = on_host("assemble_batch", images)?;
        check_batch(packed.len(), image_size, indices, flips, angles_deg)?;
        let indices: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        Ok(Storage::Cpu(assemble(
            packed_bytes(packed),
            image_size,
            &indices,
            flips,
            angles_deg,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_stays_inside() {
        assert_eq!(reflect(-1.0, 4), 1.0);
        assert_eq!(reflect(4.0, 4), 2.0);
        assert_eq!(reflect(2.5, 4), 2.5);
        for i in -50..50 {
            let r = reflect(i as f32 * 0.37, 5);
            assert!((0.0..=4.0).contains(&r));
        }
    }

    #[test]
    fn packing_keeps_bytes_in_order() {
        let bytes: Vec<u8> = (0..=10).collect();
        let p = pack_bytes(&bytes);
        assert_eq!(p.len(), 3);
        assert_eq!(&packed_bytes(&p)[..11], &bytes[..]);
        assert_eq!(packed_bytes(&p)[11], 0);
        assert!(pack_bytes(&[]).is_empty());
    }

    #[test]
    fn check_batch_rejects_bad_requests() {
        // Two 2x2 images = 24 bytes = 6 elements.
        assert!(check_batch(6, 2, &[0, 1], &[false, true], &[0.0, 5.0]).is_ok());
        assert!(check_batch(6, 2, &[2], &[false], &[0.0]).is_err());
        assert!(
            check_batch(5, 2, &[1], &[false], &[0.0]).is_err(),
            "image 1 cut short"
        );
        assert!(check_batch(6, 2, &[0], &[], &[0.0]).is_err());
        assert!(check_batch(6, 2, &[0], &[false], &[f32::NAN]).is_err());
        assert!(check_batch(6, 0, &[], &[], &[]).is_err());
    }
}
