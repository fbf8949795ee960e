//! The collective family on CUDA: NCCL, loaded by [`libs::ensure_nccl`] and called through our
//! own bindings of the few functions used here. (cudarc's `nccl` feature dlopens libnccl.so and
//! libnccl.so.{13,12,11,10,9,1}, never libnccl.so.2, the one name NVIDIA's pip wheel and the
//! libnccl2 package install, so it would miss NCCL where users have it.) Trait:
//! `backend/collective.rs`; tests: `tests/nccl.rs` (on the emulated devices, `libnccl.so.2`
//! of tests/cuda-emu).
//!
//! A backend's communicator lives in a thread-local map by ordinal, like the backends
//! themselves (`backend::backend` is per thread): one worker thread per GPU.

use super::{libs, CudaBackend};
use crate::backend::*;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::DevicePtrMut;
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

type NcclResult = c_int;
type Comm = *mut c_void;
type Stream = *mut c_void;
/// `ncclAllReduce` and `ncclBroadcast`: (send, recv, count, datatype, op or root, comm, stream).
type CollectiveFn = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    Comm,
    Stream,
) -> NcclResult;

/// ncclUniqueId: `char internal[128]`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([u8; 128]);

// From nccl.h: ncclFloat16, ncclFloat32, ncclAvg.
const NCCL_FLOAT16: c_int = 6;
const NCCL_FLOAT32: c_int = 7;
const NCCL_AVG: c_int = 4;

struct Api {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(Comm) -> NcclResult,
    comm_abort: unsafe extern "C" fn(Comm) -> NcclResult,
    all_reduce: CollectiveFn,
    broadcast: CollectiveFn,
    group_start: unsafe extern "C" fn() -> NcclResult,
    group_end: unsafe extern "C" fn() -> NcclResult,
    error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    /// Since NCCL 2.13: the detail behind the last error of this thread.
    last_error: Option<unsafe extern "C" fn(Comm) -> *const c_char>,
    _lib: Library,
}

/// NCCL's functions, loaded on first use; a missing library is [`libs::ensure_nccl`]'s advice.
fn api() -> Result<&'static Api> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| load().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn load() -> Result<Api> {
    let path = libs::ensure_nccl()?;
    // SAFETY: ensure_nccl loaded this library already (checked for NCCL's symbols); this takes
    // another reference, kept for the life of the process.
    let lib = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| anyhow!("opening {path}: {e}"))?;
    // SAFETY: each name is NCCL's function of the signature the field declares (nccl.h).
    unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *lib.get($name)
                    .map_err(|e| anyhow!("{path} lacks {}: {e}", String::from_utf8_lossy($name)))?
            };
        }
        let version: unsafe extern "C" fn(*mut c_int) -> NcclResult = sym!(b"ncclGetVersion");
        let mut code = 0;
        if version(&mut code) == 0 && !has_average(code) {
            bail!(
                "{path} is NCCL {}; gradient averaging needs NCCL 2.10 or later (its ncclAvg): \
                 pip install nvidia-nccl-cu12",
                libs::nccl_version_text(code)
            );
        }
        Ok(Api {
            get_unique_id: sym!(b"ncclGetUniqueId"),
            comm_init_rank: sym!(b"ncclCommInitRank"),
            comm_destroy: sym!(b"ncclCommDestroy"),
            comm_abort: sym!(b"ncclCommAbort"),
            all_reduce: sym!(b"ncclAllReduce"),
            broadcast: sym!(b"ncclBroadcast"),
            group_start: sym!(b"ncclGroupStart"),
            group_end: sym!(b"ncclGroupEnd"),
            error_string: sym!(b"ncclGetErrorString"),
            last_error: lib.get(b"ncclGetLastError").ok().map(|s| *s),
            _lib: lib,
        })
    }
}

/// Whether NCCL of version code `code` has ncclAvg (2.10 and later; codes before 2.9 use the
/// old encoding, major*1000, so they are below 10000).
fn has_average(code: c_int) -> bool {
    code >= 21000
}

/// `code` as an error: NCCL's name for it and, where NCCL says more, the detail.
fn check(api: &Api, code: NcclResult, comm: Comm, what: &str) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    let text = |p: *const c_char| {
        // SAFETY: NCCL returns a NUL-terminated string it owns (or null).
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    // SAFETY: plain calls that return a static or thread-local string.
    let name = text(unsafe { (api.error_string)(code) }).unwrap_or_default();
    let detail = api
        .last_error
        .and_then(|f| text(unsafe { f(comm) }))
        .filter(|d| !d.is_empty());
    match detail {
        Some(d) => bail!("{what}: NCCL error {code} ({name}): {d}"),
        None => bail!("{what}: NCCL error {code} ({name})"),
    }
}

/// A fresh id for a group: made once, handed to every rank's [`CollectiveBackend::join_group`].
pub fn nccl_unique_id() -> Result<NcclId> {
    let api = api()?;
    let mut id = UniqueId([0; 128]);
    // SAFETY: fills the 128-byte id.
    check(
        api,
        unsafe { (api.get_unique_id)(&mut id) },
        std::ptr::null_mut(),
        "ncclGetUniqueId",
    )?;
    Ok(NcclId(id.0))
}

/// One rank's communicator, shared with [`abort_group`], which may end it from another thread.
struct Slot {
    comm: Comm,
    /// Set once, by whoever ends the communicator first: its owner (destroy) or an abort.
    ended: AtomicBool,
}

// SAFETY: the communicator is only used by its owner's thread, and ended exactly once (the
// `ended` flag) by its owner or by `abort_group`, which NCCL allows from any thread.
unsafe impl Send for Slot {}
unsafe impl Sync for Slot {}

/// This thread's communicator on one device.
struct Member {
    slot: Arc<Slot>,
    rank: usize,
    world: usize,
    id: [u8; 128],
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = groups.get_mut(&self.id) {
            slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
            if slots.is_empty() {
                groups.remove(&self.id);
            }
        }
        if !self.slot.ended.swap(true, Ordering::SeqCst) {
            if let Ok(api) = api() {
                // SAFETY: the communicator is ours, not ended, and used by nothing after this.
                unsafe { (api.comm_destroy)(self.slot.comm) };
            }
        }
    }
}

thread_local! {
    static MEMBERS: RefCell<HashMap<usize, Member>> = RefCell::new(HashMap::new());
}

/// Communicators by group id.
type Groups = HashMap<[u8; 128], Vec<Arc<Slot>>>;

/// Every live communicator of this process by group id: what [`abort_group`] ends.
static GROUPS: LazyLock<Mutex<Groups>> = LazyLock::new(Default::default);

/// Ends every communicator of group `id` with ncclCommAbort, `own` (the calling thread's)
/// first. A rank that failed calls this so that the others, whose GPUs wait in a collective for
/// it (their threads blocked at the next synchronisation), are released instead of hanging;
/// their next collective or step then fails ("the group was aborted"). The flags go up first;
/// a thread that read its flag just before is at most inside one of NCCL's host calls, which
/// only queue work, so the others are ended after a short grace.
fn abort_group(id: &[u8; 128], own: Option<&Arc<Slot>>) {
    let Ok(api) = api() else { return };
    let slots = GROUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned()
        .unwrap_or_default();
    let to_end: Vec<&Arc<Slot>> = slots
        .iter()
        .filter(|s| !s.ended.swap(true, Ordering::SeqCst))
        .collect();
    let is_own = |s: &Arc<Slot>| own.is_some_and(|o| Arc::ptr_eq(o, s));
    for s in to_end.iter().filter(|s| is_own(s)) {
        // SAFETY: our own communicator, ended exactly once (the flag).
        unsafe { (api.comm_abort)(s.comm) };
    }
    if to_end.iter().any(|s| !is_own(s)) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for s in to_end.iter().filter(|s| !is_own(s)) {
        // SAFETY: ended exactly once (the flag); NCCL allows ncclCommAbort from any thread.
        unsafe { (api.comm_abort)(s.comm) };
    }
}

impl CudaBackend {
    /// `what` of this backend's group as one grouped NCCL call: `call` once per buffer with
    /// (device pointer, elements, NCCL datatype).
    fn grouped(
        &self,
        what: &str,
        bufs: &mut [&mut Storage],
        call: impl Fn(&Api, *mut c_void, usize, c_int, Comm, Stream) -> NcclResult,
    ) -> Result<()> {
        let me = format!("cuda:{}", self.ordinal);
        let (slot, rank, world) = MEMBERS
            .with(|m| {
                m.borrow()
                    .get(&self.ordinal)
                    .map(|m| (m.slot.clone(), m.rank, m.world))
            })
            .ok_or_else(|| anyhow!("{me}: {what}: this backend joined no group (join_group)"))?;
        let who = format!(
            "{me} rank {rank} of {world}: {what} ({} buffer{})",
            bufs.len(),
            if bufs.len() == 1 { "" } else { "s" }
        );
        if slot.ended.load(Ordering::SeqCst) {
            bail!("{who}: {ABORTED}");
        }
        let comm = slot.comm;
        let api = api()?;
        let stream = self.stream.cu_stream() as Stream;
        let mut args = Vec::with_capacity(bufs.len());
        for s in bufs.iter_mut() {
            let dtype = match s {
                Storage::Cuda(_) => NCCL_FLOAT32,
                Storage::CudaF16(_) => NCCL_FLOAT16,
                other => bail!("{who}: given a tensor on {}", other.device()),
            };
            let (Storage::Cuda(b) | Storage::CudaF16(b)) = &mut **s else {
                unreachable!()
            };
            if b.ordinal() != self.ordinal {
                bail!("{who}: given a tensor on cuda:{}", b.ordinal());
            }
            let len = b.len();
            let ptr = b.slice_mut().device_ptr_mut(&self.stream).0 as *mut c_void;
            args.push((ptr, len, dtype));
        }
        // SAFETY: each pointer is a live device buffer of `len` elements of its datatype on
        // this backend's device; the group is always ended, even after a failed call.
        unsafe {
            check(api, (api.group_start)(), comm, &who)?;
            let calls = args.iter().try_for_each(|&(p, n, t)| {
                check(api, call(api, p, n, t, comm, stream), comm, &who)
            });
            let end = check(api, (api.group_end)(), comm, &who);
            calls.and(end)
        }
    }
}

impl CollectiveBackend for CudaBackend {
    fn new_group_id(&self) -> Result<NcclId> {
        nccl_unique_id()
    }

    fn join_group(&self, rank: usize, world: usize, id: &NcclId) -> Result<()> {
        let who = format!(
            "cuda:{} rank {rank} of {world}: joining the group",
            self.ordinal
        );
        if rank >= world {
            bail!("{who}: the rank must be below the group size");
        }
        let api = api()?;
        // NCCL takes the device of the calling thread's current context.
        self.ctx
            .bind_to_thread()
            .map_err(|e| super::err::drv(e, &who))?;
        // A member this thread already had on this device leaves first.
        MEMBERS.with(|m| m.borrow_mut().remove(&self.ordinal));
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: out-parameter for the new communicator; the id is passed by value.
        let code = unsafe {
            (api.comm_init_rank)(&mut comm, world as c_int, UniqueId(id.0), rank as c_int)
        };
        check(api, code, comm, &who)?;
        let slot = Arc::new(Slot {
            comm,
            ended: AtomicBool::new(false),
        });
        GROUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.0)
            .or_default()
            .push(slot.clone());
        let member = Member {
            slot,
            rank,
            world,
            id: id.0,
        };
        MEMBERS.with(|m| m.borrow_mut().insert(self.ordinal, member));
        Ok(())
    }

    fn all_reduce_mean(&self, bufs: &mut [&mut Storage]) -> Result<()> {
        self.grouped("all_reduce_mean", bufs, |api, p, n, t, comm, stream| {
            // SAFETY: see `grouped`; in place (send = receive buffer), as NCCL allows.
            unsafe { (api.all_reduce)(p, p, n, t, NCCL_AVG, comm, stream) }
        })
    }

    fn broadcast(&self, bufs: &mut [&mut Storage], root: usize) -> Result<()> {
        let what = format!("broadcast from rank {root}");
        self.grouped(&what, bufs, |api, p, n, t, comm, stream| {
            // SAFETY: see `grouped`; in place, as NCCL allows.
            unsafe { (api.broadcast)(p, p, n, t, root as c_int, comm, stream) }
        })
    }

    fn group_size(&self) -> usize {
        MEMBERS.with(|m| m.borrow().get(&self.ordinal).map_or(1, |m| m.world))
    }

    fn leave_group(&self) {
        MEMBERS.with(|m| m.borrow_mut().remove(&self.ordinal));
    }

    fn abort_group(&self) {
        let own = MEMBERS.with(|m| {
            m.borrow()
                .get(&self.ordinal)
                .map(|m| (m.id, m.slot.clone()))
        });
        if let Some((id, slot)) = own {
            abort_group(&id, Some(&slot));
        }
    }

    fn group_aborted(&self) -> bool {
        MEMBERS.with(|m| {
            m.borrow()
                .get(&self.ordinal)
                .is_some_and(|m| m.slot.ended.load(Ordering::SeqCst))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::has_average;

    #[test]
    fn ncclavg_needs_nccl_2_10() {
        // 2.9.9 (new encoding), 2.8.4 (old encoding): no average; 2.10.3, 2.23.4, 3.0.0: yes.
        assert!(!has_average(20909));
        assert!(!has_average(2804));
        assert!(has_average(21003));
        assert!(has_average(22304));
        assert!(has_average(30000));
    }
}
