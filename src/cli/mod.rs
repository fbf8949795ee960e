//! The `artgan` command line: `train`, `sample`, `interpolate`, `project`, `explore` and
//! `report` (the commands that use a trained generator live in `crate::tools`).
//!
//! Here: the command enum and its dispatch. `train.rs`: `train`'s flags, its recipe and the
//! run; `resume.rs`: opening a run to resume; `run_dir.rs`: claiming a new run folder; `evaluate.rs`: `evaluate`.

mod evaluate;
mod resume;
mod train;

pub use evaluate::{run_evaluate, EvaluateArgs};
pub use train::{
    resolve_cuda_graphs, run_train, train_config, Switch, TrainArgs, DEFAULT_EPOCHS, HIGH_LR,
};

use crate::data::{self, ExploreArgs};
use crate::tools;
pub use crate::tools::interpolate::InterpolateArgs;
pub use crate::tools::project::ProjectArgs;
pub use crate::tools::sample::SampleArgs;
use anyhow::Result;
use clap::{Parser, Subcommand};

/// Train GANs that paint artworks, on a hand-written tensor engine (CPU reference and CUDA).
#[derive(Parser, Debug)]
#[command(name = "artgan", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a generator/discriminator pair (built-in paintings unless --data is given).
    #[command(allow_negative_numbers = true)]
    Train(Box<TrainArgs>),
    /// Generate images with a trained generator.
    #[command(allow_negative_numbers = true)]
    Sample(SampleArgs),
    /// Walk between random latents (spherical interpolation): a grid, numbered frames and an
    /// animated GIF.
    #[command(allow_negative_numbers = true)]
    Interpolate(InterpolateArgs),
    /// Find the generator's closest image to a photograph, then paint variations around it.
    #[command(allow_negative_numbers = true)]
    Project(ProjectArgs),
    /// Explore a dataset: counts per artist, genres, nationalities, image sizes, charts and
    /// sample grids.
    #[command(allow_negative_numbers = true)]
    Explore(ExploreArgs),
    /// Write a run folder's charts (plots/) and index.html again, and print the page's path.
    #[command(allow_negative_numbers = true)]
    Report(crate::report::ReportArgs),
    /// Measure a trained generator: the sliced Wasserstein distance (Progressive GAN) between
    /// its images and the real ones, per pyramid level.
    #[command(allow_negative_numbers = true)]
    Evaluate(evaluate::EvaluateArgs),
    /// What this machine can run: the CUDA driver and libraries (found where, which version,
    /// or how to get them), the kernel image the GPU will load, free GPU memory, and what
    /// `--device auto` chooses and why.
    Doctor(crate::doctor::DoctorArgs),
}

pub fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Train(a) => run_train(a),
        Command::Sample(a) => tools::sample::run(a),
        Command::Interpolate(a) => tools::interpolate::run(a),
        Command::Project(a) => tools::project::run(a),
        Command::Explore(a) => data::explore(a),
        Command::Report(a) => crate::report::run(a),
        Command::Evaluate(a) => evaluate::run_evaluate(a),
        Command::Doctor(a) => crate::doctor::run(a),
    }
}
