//! Replays the committed fuzz corpus on the stable toolchain.
//!
//! Every file in `tests/fuzz/corpus/<target>/` runs through the same
//! target body the libFuzzer binaries run (`tests/fuzz/targets.rs`), so
//! whatever the fuzzers once found interesting stays a regression test of
//! plain `cargo test`, in seconds. `tests/fuzz/regressions/<target>/` holds
//! inputs that crash the current code (known, being fixed); they run only
//! with `cargo test --test server fuzz_replay:: -- --ignored`.

use std::path::{Path, PathBuf};

#[path = "../fuzz/targets.rs"]
mod targets;

/// The files of `tests/fuzz/<kind>/<target>/`, sorted; none if it is missing.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read the corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `files` through `body`; returns those that fail.
fn run(files: &[PathBuf], body: fn(&[u8])) -> Vec<String> {
    let mut failed = Vec::new();
    for path in files {
        let data = std::fs::read(path).expect("read a corpus file");
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    failed
}

/// Replays `target`'s corpus, which must not be empty.
fn replay(target: &str, body: fn(&[u8])) {
    let files = inputs("corpus", target);
    assert!(
        !files.is_empty(),
        "tests/fuzz/corpus/{target}/ is missing or empty"
    );
    let failed = run(&files, body);
    assert!(failed.is_empty(), "inputs failing {target}: {failed:#?}");
}

#[test]
fn xds_sotw() {
    replay("xds_sotw", targets::xds_sotw);
}

#[test]
fn xds_delta() {
    replay("xds_delta", targets::xds_delta);
}

#[test]
fn config_yaml() {
    replay("config_yaml", targets::config_yaml);
}

#[test]
fn state_file() {
    replay("state_file", targets::state_file);
}

#[test]
fn admin_convert() {
    replay("admin_convert", targets::admin_convert);
}

/// Inputs that crash the current code (a stack overflow or an allocation
/// failure aborts the process, so these are not part of the default run).
#[test]
#[ignore = "known crashing inputs wait here for their fix (none at the moment)"]
fn regressions() {
    type Body = fn(&[u8]);
    let targets: [(&str, Body); 5] = [
        ("xds_sotw", targets::xds_sotw),
        ("xds_delta", targets::xds_delta),
        ("config_yaml", targets::config_yaml),
        ("state_file", targets::state_file),
        ("admin_convert", targets::admin_convert),
    ];
    let failed: Vec<String> = targets
        .into_iter()
        .flat_map(|(target, body)| run(&inputs("regressions", target), body))
        .collect();
    assert!(failed.is_empty(), "regressions still failing: {failed:#?}");
}
