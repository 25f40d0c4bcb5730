//! The `teal` command. Everything it does lives in the library; see
//! [`teal::cli`].

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = teal::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("TEAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    teal::cli::run(cli)
}
