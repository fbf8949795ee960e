//! `Backend::concat` on the device: stream-ordered device-to-device copies into one buffer,
//! so the host does not wait. A memory move like `copy` (no kernel family of its own).

use super::err::drv;
use super::{cb, CudaBackend};
use crate::backend::Storage;
use anyhow::Result;

pub(super) fn concat(be: &CudaBackend, parts: &[&Storage]) -> Result<Storage> {
    let total = parts.iter().map(|p| p.len()).sum();
    let mut out = be.alloc(total)?;
    let mut at = 0;
    for p in parts {
        let src = cb(p)?;
        if src.len > 0 {
            let mut dst = out.slice_mut().slice_mut(at..at + src.len);
            be.stream
                .memcpy_dtod(&src.slice().slice(0..src.len), &mut dst)
                .map_err(|e| drv(e, "device copy (concat)"))?;
        }
        at += src.len;
    }
    Ok(Storage::Cuda(out))
}
