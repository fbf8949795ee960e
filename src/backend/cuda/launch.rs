//! Launch shapes the kernel families share, and the kernel lookup.

use super::CudaBackend;
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaFunction, LaunchConfig};

/// Threads per block for elementwise kernels and per-row/per-channel reductions.
pub(super) const BLOCK: u32 = 256;

impl CudaBackend {
    pub(super) fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| anyhow!("kernel {name} not loaded"))
    }

    /// Grid-stride launch over `n` elements.
    pub(super) fn grid(&self, n: u64) -> LaunchConfig {
        let blocks = n
            .div_ceil(u64::from(BLOCK))
            .clamp(1, u64::from(self.max_blocks)) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// One block per row/channel (capped; the kernels loop), `threads` per block.
    pub(super) fn per_row(&self, rows: u64, threads: u32) -> LaunchConfig {
        let blocks = rows.clamp(1, 65_535) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub(super) fn single_block(threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Threads for a block that reduces `count` elements.
    pub(super) fn reduce_threads(count: u64) -> u32 {
        if count >= 8192 {
            1024
        } else {
            BLOCK
        }
    }
}
