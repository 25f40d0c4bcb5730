//! The `teal` command. Everything it does lives in the library; see
//! [`teal::cli`].

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match teal::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; anything else is a usage
            // error (EX_USAGE), kept apart from the admin commands' 1 and 2.
            return if e.use_stderr() {
                ExitCode::from(teal::cli::client::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = EnvFilter::try_from_env("TEAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    teal::cli::run(cli)
}
