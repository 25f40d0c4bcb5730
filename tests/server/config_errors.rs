//! Runs every broken config in `tests/config_errors/`. Each file starts
//! with `# expect: LINE:COL PATH: MESSAGE` comments, one per problem the
//! parser must report, in order; a reported problem must begin with its
//! expectation (so messages may carry hints after the expected text), and
//! there must be no other problems.
//!
//! `TEAL_BLESS=1` rewrites the `# expect:` lines from what the parser
//! reports now; review the diff before committing it.

use std::path::Path;

use teal::config::Config;

#[test]
fn every_broken_config_reports_what_it_expects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config_errors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/config_errors exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus has {} files", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().expect("file name").to_string_lossy();
        let mut text = std::fs::read_to_string(path).expect("readable");
        if std::env::var_os("TEAL_BLESS").is_some_and(|v| v == "1") {
            text = bless(&name, &text);
            std::fs::write(path, &text).expect("write");
        }
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(!expected.is_empty(), "{name} has no `# expect:` lines");
        let diags = match Config::parse(&text, &name) {
            Ok(_) => {
                failures.push(format!("{name}: parsed without errors"));
                continue;
            }
            Err(d) => d,
        };
        let got = lines(&name, &diags);
        let matches =
            got.len() == expected.len() && got.iter().zip(&expected).all(|(g, e)| g.starts_with(e));
        if !matches {
            failures.push(format!(
                "{name}:\n  expected:\n    {}\n  got:\n    {}",
                expected.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn lines(name: &str, diags: &teal::config::Diagnostics) -> Vec<String> {
    diags
        .iter()
        .map(|d| {
            assert_eq!(d.file, name);
            let place = format!("{}:{}", d.line, d.column);
            if d.path.is_empty() {
                format!("{place} {}", d.message)
            } else {
                format!("{place} {}: {}", d.path, d.message)
            }
        })
        .collect()
}

/// Replaces the `# expect:` header with the current diagnostics. The
/// header's length moves every line number, so repeat until it is stable.
fn bless(name: &str, text: &str) -> String {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("# expect: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut current = body.clone();
    for _ in 0..4 {
        let got = match Config::parse(&current, name) {
            Ok(_) => return current,
            Err(d) => lines(name, &d),
        };
        let next: String = got
            .iter()
            .map(|g| format!("# expect: {g}\n"))
            .chain(std::iter::once(body.clone()))
            .collect();
        if next == current {
            break;
        }
        current = next;
    }
    current
}
