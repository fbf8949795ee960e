//! Collective communication between the backends of several GPUs of one process (one worker
//! thread, stream and backend per GPU): the family's backend trait. The CUDA implementation
//! (`cuda/collective.rs`) calls NCCL; the host backends have no collectives.

use super::Storage;
use anyhow::{anyhow, Result};

/// The id that every rank of one group joins with: made once (`cuda::nccl_unique_id`) and
/// handed to each rank's thread.
#[derive(Clone, Copy)]
pub struct NcclId(pub [u8; 128]);

fn host_only(op: &str) -> anyhow::Error {
    anyhow!("{op}: collectives need CUDA devices (given cpu)")
}

/// Collectives among the backends that joined one group, each call queued on the calling
/// backend's stream. Every rank must make the same calls in the same order, with buffers of the
/// same lengths and dtypes.
pub trait CollectiveBackend {
    /// Makes this backend rank `rank` of a group of `world` (blocks until every rank joined).
    fn join_group(&self, rank: usize, world: usize, id: &NcclId) -> Result<()> {
        let _ = (rank, world, id);
        Err(host_only("join_group"))
    }
    /// Replaces each buffer (f32 or f16) with the mean of that buffer over the group's ranks,
    /// in place, as one grouped call.
    fn all_reduce_mean(&self, bufs: &mut [&mut Storage]) -> Result<()> {
        let _ = bufs;
        Err(host_only("all_reduce_mean"))
    }
    /// Copies each buffer of rank `root` into the same buffer of every other rank, in place, as
    /// one grouped call.
    fn broadcast(&self, bufs: &mut [&mut Storage], root: usize) -> Result<()> {
        let _ = (bufs, root);
        Err(host_only("broadcast"))
    }
    /// Leaves this backend's group (its communicator is destroyed); nothing without one. After
    /// a data-parallel run, so that the next run on this thread is on one device again.
    fn leave_group(&self) {}
    /// Ranks in this backend's group (1 before it joined one).
    fn group_size(&self) -> usize {
        1
    }
}
