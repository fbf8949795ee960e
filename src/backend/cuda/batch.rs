//! Launches of `kernels/batch.cu`: the image set uploaded as packed bytes and batch assembly
//! (gather, flip, rotate, scale to [-1, 1]) on the GPU. No autograd: the caller is the data
//! loader (`src/data/loader.rs`); the arithmetic is `crate::backend::batch`.

use super::err::drv;
use super::{cb, CudaBackend};
use crate::backend::batch as host;
use crate::backend::*;
use anyhow::{anyhow, Result};
use cudarc::driver::{DeviceRepr, PushKernelArg};

/// Batch images one `assemble_batch_u8` launch makes.
const AUG_MAX_IMAGES: usize = 128;
const AUG_FLIP: u32 = 1;
const AUG_ROTATE: u32 = 2;

/// Kernel parameter of `assemble_batch_u8`; must match `struct AugTable` in kernels/batch.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct AugTable {
    index: [u32; AUG_MAX_IMAGES],
    flags: [u32; AUG_MAX_IMAGES],
    sin: [f32; AUG_MAX_IMAGES],
    cos: [f32; AUG_MAX_IMAGES],
    count: u32,
}

// SAFETY: plain-old-data with the C layout of the kernel's struct (checked by a size test).
unsafe impl DeviceRepr for AugTable {}

pub(super) fn upload_images(be: &CudaBackend, pixels: &[u8]) -> Result<Storage> {
    let mut b = be.alloc(pixels.len().div_ceil(4))?;
    if !pixels.is_empty() {
        // SAFETY: bytes have no invalid bit patterns; the view covers `pixels.len()` bytes
        // of the `4 * ceil(len / 4)` allocated.
        let mut bytes = unsafe { b.slice_mut().transmute_mut::<u8>(pixels.len()) }
            .ok_or_else(|| anyhow!("upload_images: byte view larger than the buffer"))?;
        be.stream
            .memcpy_htod(pixels, &mut bytes)
            .map_err(|e| drv(e, "copying the image set to the GPU"))?;
        // Once per data set: make sure the (possibly memory-mapped) source has been read
        // before returning, whatever the driver does with pageable copies.
        be.synchronize()?;
    }
    Ok(Storage::Cuda(b))
}

pub(super) fn assemble_batch(
    be: &CudaBackend,
    images: &Storage,
    image_size: usize,
    indices: &[u32],
    flips: &[bool],
    angles_deg: &[f32],
) -> Result<Storage> {
    let imgs = cb(images)?;
    host::check_batch(imgs.len, image_size, indices, flips, angles_deg)?;
    let per_image = 3 * image_size * image_size;
    let mut out = be.alloc(indices.len() * per_image)?;
    let size = image_size as u32;
    let mut first = 0usize;
    while first < indices.len() {
        let count = (indices.len() - first).min(AUG_MAX_IMAGES);
        let mut t = AugTable {
            index: [0; AUG_MAX_IMAGES],
            flags: [0; AUG_MAX_IMAGES],
            sin: [0.0; AUG_MAX_IMAGES],
            cos: [0.0; AUG_MAX_IMAGES],
            count: count as u32,
        };
        for k in 0..count {
            let b = first + k;
            t.index[k] = indices[b];
            let mut flags = if flips[b] { AUG_FLIP } else { 0 };
            if let Some((sin, cos)) = host::rotation(angles_deg[b]) {
                flags |= AUG_ROTATE;
                t.sin[k] = sin;
                t.cos[k] = cos;
            }
            t.flags[k] = flags;
        }
        let n = (count * per_image) as u64;
        let first64 = first as u64;
        let cfg = be.grid(n);
        launch!(
            be,
            assemble_batch_u8,
            cfg,
            imgs.slice(),
            out.slice_mut(),
            &t,
            &size,
            &first64,
            &n
        )?;
        first += count;
    }
    Ok(Storage::Cuda(out))
}

impl BatchBackend for CudaBackend {
    fn upload_images(&self, pixels: &[u8]) -> Result<Storage> {
        upload_images(self, pixels)
    }
    fn assemble_batch(
        &self,
        images: &Storage,
        image_size: usize,
        indices: &[u32],
        flips: &[bool],
        angles_deg: &[f32],
    ) -> Result<Storage> {
        assemble_batch(self, images, image_size, indices, flips, angles_deg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aug_table_matches_the_kernel_struct_size() {
        // index, flags, sin, cos (4 bytes each per image), count: see kernels/batch.cu.
        let expect = 4 * 4 * AUG_MAX_IMAGES + 4;
        assert_eq!(std::mem::size_of::<AugTable>(), expect);
        // + images and out pointers, size, first, n.
        assert!(
            std::mem::size_of::<AugTable>() + 8 + 8 + 8 + 8 + 8 <= 4096,
            "kernel parameter limit"
        );
    }
}
