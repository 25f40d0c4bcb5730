//! The layers of [`crate::LAYERS`], kept by a test rather than by memory:
//! every `crate::` path in `src/` (tests and doc comments aside) must name
//! a layer at or below its own file's.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, but the test modules.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            sources(&path, out);
        } else if name.ends_with(".rs")
            && !name.ends_with("_tests.rs")
            && name != "tests.rs"
            && name != "fixtures.rs"
        {
            out.push(path);
        }
    }
}

/// The layer a file under `src/` belongs to (`None`: the crate root and
/// the binary).
fn layer_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The layers `line` names through `crate::`.
fn named(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(at, m)| {
            let rest = &line[at + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Every import of a layer above the importing file's, as `file:line:
/// from -> to`.
fn upward_imports(src: &Path) -> Vec<String> {
    let rank = |layer: &str| crate::LAYERS.iter().position(|l| *l == layer);
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        let Some(from) = layer_of(&rel) else { continue };
        let Some(from_rank) = rank(&from) else {
            found.push(format!(
                "{}: layer {from:?} is not in LAYERS",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // A file's own tests come after `#[cfg(test)]` and may reach
        // anything.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for to in named(line) {
                match rank(to) {
                    Some(r) if r > from_rank => found.push(format!(
                        "{}:{}: {from} -> {to}: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    )),
                    _ => {}
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let up = upward_imports(&src);
    assert!(
        up.is_empty(),
        "imports that run up the layers of crate::LAYERS:\n{}",
        up.join("\n")
    );
}

#[test]
fn every_top_level_module_is_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';');
            assert!(crate::LAYERS.contains(&m), "{m} is not in LAYERS");
        }
    }
}

#[test]
fn an_upward_import_is_found_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let xds = dir.path().join("xds");
    std::fs::create_dir_all(&xds).expect("dir");
    std::fs::write(
        xds.join("status.rs"),
        "// crate::controller in a comment is fine\nuse crate::controller::Controller;\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("config.rs"), "use crate::xds::Thing;\n").expect("write");
    let up = upward_imports(dir.path());
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].starts_with("xds/status.rs:2: xds -> controller"),
        "{up:?}"
    );
}
