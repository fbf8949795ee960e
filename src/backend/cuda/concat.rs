//! `Backend::concat` on the device: stream-ordered device-to-device copies into one buffer,
//! so the host does not wait.

use super::*;

impl CudaBackend {
    pub(super) fn concat_on_device(&self, parts: &[&Storage]) -> Result<Storage> {
        let total = parts.iter().map(|p| p.len()).sum();
        let mut out = self.alloc(total)?;
        let mut at = 0;
        for p in parts {
            let src = cb(p)?;
            if src.len > 0 {
                let mut dst = out.slice_mut().slice_mut(at..at + src.len);
                self.stream
                    .memcpy_dtod(&src.slice().slice(0..src.len), &mut dst)
                    .map_err(|e| drv(e, "device copy (concat)"))?;
            }
            at += src.len;
        }
        Ok(Storage::Cuda(out))
    }
}
