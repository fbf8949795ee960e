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
//!
//! CUDA graphs ([`super::graph`]): a captured step bakes the addresses of its buffers into the
//! graph, so while a graph lives its buffers belong to it. During a capture every buffer taken
//! or given back is marked as the graph's (buffers given back during the capture are reused
//! by later takes of the same capture, as in eager order); when the capture ends, the graph's
//! buffers that no tensor holds leave the free lists, and one given back later (a tensor of
//! the captured step dropped between replays) is kept for the graph instead of cached. A
//! capture never calls the driver: it needs a warm pool, which [`Pool::reserve_recorded`]
//! makes from the peak use of an eager step of the same shape ([`Pool::recorded`]).

use super::err::drv;
use anyhow::bail;
use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
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
    /// Bytes held by live tensors now (cached buffers not counted).
    pub in_use_bytes: u64,
    /// The most [`PoolStats::in_use_bytes`] has been since the pool began or since
    /// [`Pool::reset_peak`]: the high-water mark PyTorch reports as `max_memory_allocated`.
    pub peak_in_use_bytes: u64,
}

impl PoolStats {
    fn count_taken(&mut self, elems: usize) {
        self.in_use_bytes += (elems * 4) as u64;
        self.peak_in_use_bytes = self.peak_in_use_bytes.max(self.in_use_bytes);
    }
}

/// Buffers per length that one step needs beyond those free at its start.
#[derive(Clone, Debug, Default)]
pub struct PoolNeed(HashMap<usize, i64>);

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
    /// Per length: buffers taken minus given back since [`Pool::start_recording`], and the
    /// peak of that (how many a step needs beyond what was free at its start).
    live: HashMap<usize, i64>,
    peak: HashMap<usize, i64>,
    /// The graph being captured.
    capturing: Option<u64>,
    /// Device address -> the graph that owns the buffer.
    owner: HashMap<u64, u64>,
    /// Per graph: its buffers that no tensor holds.
    kept: HashMap<u64, Vec<CudaSlice<f32>>>,
    next_graph: u64,
}

impl Pool {
    pub fn new(stream: Arc<CudaStream>) -> Self {
        Pool {
            stream,
            inner: Mutex::new(Inner::default()),
            caching: !std::env::var("ARTGAN_CUDA_POOL").is_ok_and(|v| v == "off"),
        }
    }

    fn address(&self, s: &CudaSlice<f32>) -> u64 {
        // Event tracking is off: the guard carries no synchronisation.
        s.device_ptr(&self.stream).0
    }

    /// A buffer of exactly `cap` elements (`cap > 0`), contents unspecified.
    pub fn take(&self, cap: usize) -> Result<CudaSlice<f32>> {
        {
            let mut g = self.inner.lock().unwrap();
            let live = g.live.entry(cap).or_default();
            *live += 1;
            let live = *live;
            let peak = g.peak.entry(cap).or_default();
            *peak = (*peak).max(live);
            if let Some(s) = g.free.get_mut(&cap).and_then(|v| v.pop()) {
                g.stats.reuses += 1;
                g.stats.cached_elems -= cap as u64;
                g.stats.count_taken(cap);
                if let Some(id) = g.capturing {
                    let at = self.address(&s);
                    g.owner.insert(at, id);
                }
                return Ok(s);
            }
            if g.capturing.is_some() {
                bail!(
                    "a captured training step needs one more buffer of {cap} elements than the \
                     pool holds (a capture cannot allocate; the eager step of the same shape \
                     should have reserved it)"
                );
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
        let stats = &mut self.inner.lock().unwrap().stats;
        stats.driver_allocs += 1;
        stats.count_taken(cap);
        Ok(s)
    }

    pub fn give(&self, s: CudaSlice<f32>) {
        let mut g = self.inner.lock().unwrap();
        g.stats.in_use_bytes -= (s.len() * 4) as u64;
        if !self.caching {
            return; // dropping `s` frees it (stream-ordered)
        }
        let at = self.address(&s);
        *g.live.entry(s.len()).or_default() -= 1;
        if let Some(id) = g.capturing {
            g.owner.insert(at, id);
        } else if let Some(&id) = g.owner.get(&at) {
            // A graph writes this buffer at every replay: nobody else may have it.
            g.kept.entry(id).or_default().push(s);
            return;
        }
        g.stats.cached_elems += s.len() as u64;
        g.free.entry(s.len()).or_default().push(s);
    }

    /// Starts counting the peak use per length (one eager step's need).
    pub fn start_recording(&self) {
        let mut g = self.inner.lock().unwrap();
        g.live.clear();
        g.peak.clear();
    }

    /// The peak use per length since [`Pool::start_recording`].
    pub fn recorded(&self) -> PoolNeed {
        PoolNeed(self.inner.lock().unwrap().peak.clone())
    }

    /// Makes the free lists hold at least `need` of every length (driver allocations now,
    /// outside any capture).
    pub fn reserve(&self, need: &PoolNeed) -> Result<()> {
        for (&len, &n) in &need.0 {
            // Take them all at once (the free ones first, then new ones), then cache them all.
            let held: Vec<_> = (0..n.max(0))
                .map(|_| self.take(len))
                .collect::<Result<_>>()?;
            for s in held {
                self.give(s);
            }
        }
        Ok(())
    }

    /// Whether buffers are cached (graphs need that: a capture cannot allocate or free).
    pub fn caching(&self) -> bool {
        self.caching
    }

    /// Marks the buffers taken and given back from now on as graph `id`'s (returned).
    pub fn begin_capture(&self) -> Result<u64> {
        let mut g = self.inner.lock().unwrap();
        if g.capturing.is_some() {
            bail!("a capture is already in progress");
        }
        g.next_graph += 1;
        let id = g.next_graph;
        g.capturing = Some(id);
        Ok(id)
    }

    /// Ends the capture: the graph's buffers that no tensor holds leave the free lists.
    pub fn end_capture(&self) {
        let mut g = self.inner.lock().unwrap();
        let Some(id) = g.capturing.take() else { return };
        let mut mine = Vec::new();
        let inner = &mut *g;
        for list in inner.free.values_mut() {
            let (ours, rest): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|s| inner.owner.get(&self.address(s)) == Some(&id));
            *list = rest;
            mine.extend(ours);
        }
        g.stats.cached_elems -= mine.iter().map(|s| s.len() as u64).sum::<u64>();
        g.kept.entry(id).or_default().extend(mine);
    }

    /// Graph `id` is gone: its buffers are ordinary again (cached or held by their tensors).
    pub fn release_graph(&self, id: u64) {
        let mut g = self.inner.lock().unwrap();
        g.owner.retain(|_, owner| *owner != id);
        for s in g.kept.remove(&id).unwrap_or_default() {
            g.stats.cached_elems += s.len() as u64;
            g.free.entry(s.len()).or_default().push(s);
        }
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

    /// Restarts [`PoolStats::peak_in_use_bytes`] from what is in use now.
    pub fn reset_peak(&self) {
        let stats = &mut self.inner.lock().unwrap().stats;
        stats.peak_in_use_bytes = stats.in_use_bytes;
    }
}

/// Device memory of one tensor. Dropping it returns the memory to the backend's pool.
pub struct CudaBuffer {
    /// Always `Some` until drop. Holds at least one element (a zero-length tensor still owns a
    /// one-element allocation, so that no zero-byte driver allocation is ever made).
    pub(super) slice: Option<CudaSlice<f32>>,
    pub(super) len: usize,
    pub(super) ordinal: usize,
    pub(super) pool: Arc<Pool>,
}

impl CudaBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn slice(&self) -> &CudaSlice<f32> {
        self.slice.as_ref().expect("live buffer")
    }
    pub fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        self.slice.as_mut().expect("live buffer")
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.pool.give(s);
        }
    }
}
