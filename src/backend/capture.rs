//! Capturing a training step as one device graph and replaying it (`--cuda-graphs on`): the
//! part of the backend interface that `train::graph_step` uses. Only the CUDA backend has
//! graphs (`backend/cuda/graph.rs`); the host backends have none
//! ([`super::Backend::step_capture`] is `None` there).

use anyhow::Result;
use std::any::Any;

/// A backend that can capture the work a step queues and replay it.
pub trait StepCapture {
    /// Whether steps can be captured now (the CUDA backend: not without its caching
    /// allocator, since a capture cannot allocate).
    fn can_capture(&self) -> bool;

    /// Starts counting the buffers an eager step takes (see [`StepCapture::pool_need`]).
    fn start_pool_recording(&self);

    /// The buffers taken since [`StepCapture::start_pool_recording`].
    fn pool_need(&self) -> PoolNeed;

    /// Runs `work` under capture and returns the graph of what it queued (nothing runs yet:
    /// launch it). `need` (from an eager step of the same shape) is reserved first, so the
    /// capture allocates nothing. On error the capture is ended and dropped, and nothing of
    /// it ran.
    fn capture(
        &self,
        need: &PoolNeed,
        work: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Box<dyn StepGraph>>;

    /// Test hook: makes the next [`StepCapture::capture`] fail the way a capture of code that
    /// calls something forbidden while capturing fails.
    #[doc(hidden)]
    fn break_next_capture(&self);
}

/// A captured step. Dropping it gives its buffers back to the pool.
pub trait StepGraph {
    /// Queues one replay of the captured work.
    fn launch(&self) -> Result<()>;
}

/// What an eager step took from the backend's buffer pool, kept per batch shape by the caller
/// and handed back to [`StepCapture::capture`]. Only the backend that made it reads it.
pub struct PoolNeed(Box<dyn Any>);

impl PoolNeed {
    pub fn new<T: Any>(need: T) -> Self {
        PoolNeed(Box::new(need))
    }

    /// The backend's own record, if it made this one.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}
