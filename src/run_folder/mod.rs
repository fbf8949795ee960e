//! Run folders and other output folders, in one place:
//!
//! - `claim`: claiming an output folder (created or checked, locked, `--force` moving an
//!   earlier one aside, undone on failure), and what a place is (a run folder, inside a run's
//!   `checkpoints/`);
//! - `new_run`: the folder of a new run (`--out` or the first free `runs/<preset>-NNN`);
//! - `lock`: one writer per run folder (`RUN/.artgan-lock`);
//! - `checkpoints`: a run's checkpoint folders (names, listing, the newest usable one,
//!   pruning) and which folder's weights a command uses;
//! - `resume`: checking the target of `train --resume`.
//!
//! What the files in them hold, and writing checkpoints whole, is `crate::checkpoint`'s.

mod checkpoints;
mod claim;
mod lock;
mod new_run;
mod resume;

pub use checkpoints::*;
pub use claim::*;
pub use lock::*;
pub use new_run::*;
pub use resume::*;
