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
use std::sync::OnceLock;

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
        Ok(Api {
            get_unique_id: sym!(b"ncclGetUniqueId"),
            comm_init_rank: sym!(b"ncclCommInitRank"),
            comm_destroy: sym!(b"ncclCommDestroy"),
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

/// This thread's communicator on one device.
struct Member {
    comm: Comm,
    rank: usize,
    world: usize,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: the communicator is ours and used by nothing after this.
            unsafe { (api.comm_destroy)(self.comm) };
        }
    }
}

thread_local! {
    static MEMBERS: RefCell<HashMap<usize, Member>> = RefCell::new(HashMap::new());
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
        let (comm, rank, world) = MEMBERS
            .with(|m| {
                m.borrow()
                    .get(&self.ordinal)
                    .map(|m| (m.comm, m.rank, m.world))
            })
            .ok_or_else(|| anyhow!("{me}: {what}: this backend joined no group (join_group)"))?;
        let who = format!(
            "{me} rank {rank} of {world}: {what} ({} buffer{})",
            bufs.len(),
            if bufs.len() == 1 { "" } else { "s" }
        );
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
        MEMBERS.with(|m| {
            m.borrow_mut()
                .insert(self.ordinal, Member { comm, rank, world })
        });
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
}
