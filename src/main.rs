use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = artgan::cli::Cli::parse();
    match artgan::cli::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<artgan::train::Interrupted>().is_some() => {
            // Not a failure of the run: it stopped where it was asked to, resumable.
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            // One line: the context chain joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
