//! `teal validate` and `teal render` as library functions: the commands
//! that read a config file and need no server.
//!
//! They write to the writers they are given and return a sysexits-style
//! exit status; the binary turns it into [`std::process::ExitCode`]. No
//! function here exits the process.

use std::io::Write;
use std::path::Path;

use crate::config::render::{render_document, to_yaml};
use crate::config::{Config, Diagnostics, Limits, Weights, config_digest, translate};

pub use crate::exit::{EX_DATAERR, EX_NOINPUT, EX_OK, EX_USAGE};
pub(crate) use crate::exit::{EX_IOERR, EX_SOFTWARE};

/// Output format of `teal render`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pretty-printed proto3 JSON.
    #[default]
    Json,
    /// The same document as YAML.
    Yaml,
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The path as given.
        path: String,
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl LoadError {
    /// The sysexits status for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            LoadError::Unreadable { .. } => EX_NOINPUT,
            LoadError::Invalid(_) => EX_DATAERR,
        }
    }
}

/// Reads and validates a config file within `limits`; diagnostics name
/// the path as given. Reads no more of the file than the size limit.
pub(crate) fn load(path: &Path, limits: &Limits) -> Result<Config, LoadError> {
    let name = path.display().to_string();
    let bytes = crate::config::read_bounded(path, limits.max_bytes).map_err(|source| {
        LoadError::Unreadable {
            path: name.clone(),
            source,
        }
    })?;
    Config::from_bytes(&bytes, &name, limits).map_err(LoadError::Invalid)
}

fn report(err: &mut dyn Write, e: &LoadError) -> u8 {
    // A file can have hundreds of thousands of problems (one per repeated
    // key); written unbuffered to stderr, that is a system call apiece.
    let mut err = std::io::BufWriter::new(err);
    // Failing to report is not worth a different status.
    let _ = writeln!(err, "{e}");
    if let LoadError::Invalid(d) = e {
        let _ = writeln!(err, "{} problem(s) found; nothing was changed", d.len());
    }
    let _ = err.flush();
    e.exit_code()
}

/// `teal validate PATH`: reads the file within `limits`; on success prints one line (services, groups,
/// version) to `out` and returns [`EX_OK`]; otherwise prints every problem
/// to `err` and returns [`EX_DATAERR`], or [`EX_NOINPUT`] if the file
/// cannot be read.
pub fn validate_command(
    path: &Path,
    limits: &Limits,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let config = match load(path, limits) {
        Ok(c) => c,
        Err(e) => return report(err, &e),
    };
    let version = config_digest(&translate(&config, &Weights::initial(&config)));
    let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
    let groups: Vec<&str> = config.groups.keys().map(String::as_str).collect();
    match writeln!(
        out,
        "{}: ok: {} service(s) ({}), {} group(s) ({}), version {version}",
        path.display(),
        services.len(),
        services.join(", "),
        groups.len(),
        groups.join(", "),
    )
    .and_then(|()| out.flush())
    {
        Ok(()) => EX_OK,
        Err(e) => output_failed(err, &e),
    }
}

/// `teal render PATH [--group G] [--format json|yaml]`: prints the
/// resources teal would serve at start (every service on its `live`
/// fleet) to `out`. Unknown group: [`EX_USAGE`].
pub fn render_command(
    path: &Path,
    limits: &Limits,
    group: Option<&str>,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let config = match load(path, limits) {
        Ok(c) => c,
        Err(e) => return report(err, &e),
    };
    render_config(&config, group, format, out, err)
}

/// [`render_command`] for an already loaded config.
pub(crate) fn render_config(
    config: &Config,
    group: Option<&str>,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let input = translate(config, &Weights::initial(config));
    let version = config_digest(&input);
    let doc = match render_document(&input, &version, group) {
        Ok(Some(doc)) => doc,
        Ok(None) => {
            let known: Vec<&str> = config.groups.keys().map(String::as_str).collect();
            let _ = writeln!(
                err,
                "no group {:?} (groups: {})",
                group.unwrap_or_default(),
                known.join(", ")
            );
            return EX_USAGE;
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EX_SOFTWARE;
        }
    };
    let text = match format {
        Format::Json => match serde_json::to_string_pretty(&doc) {
            Ok(mut s) => {
                s.push('\n');
                s
            }
            Err(e) => {
                let _ = writeln!(err, "{e}");
                return EX_SOFTWARE;
            }
        },
        Format::Yaml => to_yaml(&doc),
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => EX_OK,
        Err(e) => output_failed(err, &e),
    }
}

/// The output could not be written (a closed pipe, a full disk): says so
/// on `err` and returns [`EX_IOERR`].
fn output_failed(err: &mut dyn Write, e: &std::io::Error) -> u8 {
    let _ = writeln!(err, "teal: cannot write the output: {e}");
    EX_IOERR
}
