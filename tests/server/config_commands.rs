//! `validate_command` exit codes and output.

use std::path::Path;

use teal::cli::config_commands::{EX_DATAERR, EX_NOINPUT, EX_OK, validate_command};
use teal::config::{Config, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, Limits};

fn run(path: &Path) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = validate_command(path, &Limits::default(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

#[test]
fn valid_file_prints_a_summary() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_NAME);
    let (code, out, err) = run(&path);
    assert_eq!(code, EX_OK, "{err}");
    assert!(err.is_empty());
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("ok: 2 service(s) (api, web), 2 group(s) (edge, sidecar), version "),
        "{out}"
    );
    assert!(Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME).is_ok());
}

#[test]
fn invalid_file_prints_every_problem() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config_errors/bad_durations.yaml");
    let (code, out, err) = run(&path);
    assert_eq!(code, EX_DATAERR);
    assert!(out.is_empty());
    let problems = err
        .lines()
        .filter(|l| l.contains("bad_durations.yaml:"))
        .count();
    assert_eq!(problems, 5, "{err}");
    assert!(err.contains("5 problem(s) found"), "{err}");
}

#[test]
fn missing_file_is_no_input() {
    let (code, out, err) = run(Path::new("/nonexistent/teal.yaml"));
    assert_eq!(code, EX_NOINPUT);
    assert!(out.is_empty());
    assert!(err.contains("cannot read /nonexistent/teal.yaml"), "{err}");
}

/// The binary, not the function: `teal render` into a full device exits 74
/// (the output could not be written), after rendering everything.
#[test]
fn render_into_a_full_device_exits_74() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full exists on Linux");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_NAME);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("render")
        .arg(&path)
        .stdout(full)
        .output()
        .expect("teal runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(!err.is_empty(), "it says why");
}

/// `teal serve` and `teal render` on a file that cannot be read exit 66,
/// naming the file; serve listens on nothing.
#[test]
fn unreadable_files_exit_66_for_serve_and_render() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.yaml");
    for args in [
        vec![
            "serve",
            "--ephemeral",
            "--xds-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--config",
        ],
        vec!["render"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(&args)
            .arg(&missing)
            .output()
            .expect("teal runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(66), "teal {args:?}: {err}");
        assert!(err.contains("missing.yaml"), "teal {args:?}: {err}");
    }
}
