use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = artgan::cli::Cli::parse();
    match artgan::cli::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
