//! The `teal` command. Everything it does lives in the library; see
//! [`teal::cli`].

use std::process::ExitCode;

use clap::Parser;

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
    teal::cli::logging::init(cli.log_value_chars());
    teal::cli::run(cli)
}
