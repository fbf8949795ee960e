//! Caching allocator for f32 device buffers.
//!
//! A training step allocates and frees the same set of tensor sizes every iteration, so freed
//! buffers are kept in a pool keyed by their exact length and handed out again: after the first
//! step there are no driver allocations. One stream only, so a buffer returned to the pool can
//! be reused by the next launch without synchronisation (stream order protects it).
//!
//! Debug hooks: with `ARTGAN_POISON=1` every buffer handed out (new or reused) is filled with
//! NaN first, so a kernel that leaves an output element unwritten shows up as NaN in the parity
//! tests instead of passing on stale data. With `ARTGAN_CUDA_POOL=off` nothing is cached: every
//! buffer is its own driver allocation of exactly its size, freed when dropped, so a memory
//! checker (compute-sanitizer, or AddressSanitizer on the emulated device) sees each buffer's
//! true bounds and every use after free.

use super::err::drv;
use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counters for tests and benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers obtained from the driver.
    pub driver_allocs: u64,
    /// Buffers served from the cache.
    pub reuses: u64,
    /// Elements currently cached (free).
    pub cached_elems: u64,
}

pub struct Pool {
    stream: Arc<CudaStream>,
    inner: Mutex<Inner>,
    /// False under `ARTGAN_CUDA_POOL=off`.
    caching: bool,
}

#[derive(Default)]
struct Inner {
    free: HashMap<usize, Vec<CudaSlice<f32>>>,
    stats: PoolStats,
}

impl Pool {
    pub fn new(stream: Arc<CudaStream>) -> Self {
        Pool {
            stream,
            inner: Mutex::new(Inner::default()),
            caching: !std::env::var("ARTGAN_CUDA_POOL").is_ok_and(|v| v == "off"),
        }
    }

    /// A buffer of exactly `cap` elements (`cap > 0`), contents unspecified.
    pub fn take(&self, cap: usize) -> Result<CudaSlice<f32>> {
        {
            let mut g = self.inner.lock().unwrap();
            if let Some(s) = g.free.get_mut(&cap).and_then(|v| v.pop()) {
                g.stats.reuses += 1;
                g.stats.cached_elems -= cap as u64;
                return Ok(s);
            }
        }
        // SAFETY: f32 has no invalid bit patterns; callers write before they read.
        let first = unsafe { self.stream.alloc::<f32>(cap) };
        let s = match first {
            Ok(s) => s,
            Err(_) => {
                // Out of memory (or fragmentation): give the cache back and try once more.
                self.trim()?;
                unsafe { self.stream.alloc::<f32>(cap) }
                    .map_err(|e| drv(e, &format!("allocating {} MiB", (cap * 4) >> 20)))?
            }
        };
        self.inner.lock().unwrap().stats.driver_allocs += 1;
        Ok(s)
    }

    pub fn give(&self, s: CudaSlice<f32>) {
        if !self.caching {
            return; // dropping `s` frees it (stream-ordered)
        }
        let mut g = self.inner.lock().unwrap();
        g.stats.cached_elems += s.len() as u64;
        g.free.entry(s.len()).or_default().push(s);
    }

    /// Frees every cached buffer (after the queued work that may still use them).
    pub fn trim(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| drv(e, "synchronize"))?;
        let mut g = self.inner.lock().unwrap();
        g.free.clear();
        g.stats.cached_elems = 0;
        Ok(())
    }

    pub fn stats(&self) -> PoolStats {
        self.inner.lock().unwrap().stats
    }
}
