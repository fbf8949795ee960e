//! Collective communication between the backends of several GPUs of one process (one worker
//! thread, stream and backend per GPU): the family's backend trait. The CUDA implementation
//! (`cuda/collective.rs`) calls NCCL; the CPU's (`cpu/collective.rs`) has threads of this
//! process meet in memory, the CPU reference of a data-parallel run; the plain reference has
//! none.

use super::Storage;
use anyhow::{anyhow, Result};

/// The id that every rank of one group joins with: made once
/// ([`CollectiveBackend::new_group_id`]) and handed to each rank's thread.
#[derive(Clone, Copy)]
pub struct NcclId(pub [u8; 128]);

/// What a collective of an aborted group says.
pub const ABORTED: &str = "the group was aborted: another rank failed";

fn no_collectives(op: &str) -> anyhow::Error {
    anyhow!("{op}: the reference backend has no collectives")
}

/// Collectives among the backends that joined one group, each call queued on the calling
/// backend's stream. Every rank must make the same calls in the same order, with buffers of the
/// same lengths and dtypes.
pub trait CollectiveBackend {
    /// A fresh id for a new group of this backend's kind.
    fn new_group_id(&self) -> Result<NcclId> {
        Err(no_collectives("new_group_id"))
    }
    /// Makes this backend rank `rank` of a group of `world` (blocks until every rank joined).
    fn join_group(&self, rank: usize, world: usize, id: &NcclId) -> Result<()> {
        let _ = (rank, world, id);
        Err(no_collectives("join_group"))
    }
    /// Replaces each buffer (f32 or f16) with the mean of that buffer over the group's ranks,
    /// in place, as one grouped call.
    fn all_reduce_mean(&self, bufs: &mut [&mut Storage]) -> Result<()> {
        let _ = bufs;
        Err(no_collectives("all_reduce_mean"))
    }
    /// Copies each buffer of rank `root` into the same buffer of every other rank, in place, as
    /// one grouped call.
    fn broadcast(&self, bufs: &mut [&mut Storage], root: usize) -> Result<()> {
        let _ = (bufs, root);
        Err(no_collectives("broadcast"))
    }
    /// Leaves this backend's group (its communicator is destroyed); nothing without one. After
    /// a data-parallel run, so that the next run on this thread is on one device again.
    fn leave_group(&self) {}
    /// Ends every rank's membership of this backend's group at once, from this thread: what a
    /// rank that failed does, so that the others, waiting in a collective for it, fail instead
    /// of waiting forever. Their next collective or [`CollectiveBackend::group_aborted`]
    /// says so. Nothing without a group.
    fn abort_group(&self) {}
    /// Whether this backend's group was aborted (by any rank).
    fn group_aborted(&self) -> bool {
        false
    }
    /// Ranks in this backend's group (1 before it joined one).
    fn group_size(&self) -> usize {
        1
    }
}
