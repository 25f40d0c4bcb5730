//! The README's walk-through ("Blue/green with teal"), run as written: the
//! first `sh` block of that section starts the programs that keep running
//! (teal, the example fleets, an edge Envoy), the second is run line by
//! line, in order, in a fresh directory, and every line must exit 0. A
//! line's comment `# prints: TEXT` means its output must contain TEXT.
//! So the README cannot drift from the code.
//!
//! What differs from a person at a terminal is only how the programs are
//! built: `cargo run --release -- ARGS` runs the `teal` this test was built
//! with, `cargo run --release --example NAME` that example (built by
//! `cargo test` beside it), and `cargo install --path .` is what puts that
//! `teal` first on `PATH`. The walk-through listens on its documented fixed
//! ports (teal 18000/18001, Envoy 10000 and 9901, the fleets 8101-8202);
//! the test fails, naming the port, when one is taken.
//!
//! Needs Envoy 1.40 and `curl`; without them it fails, it does not skip.

use crate::support;
use crate::support::ports;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The heading of the walk-through's section.
const SECTION: &str = "## Blue/green with teal";

/// The walk-through's fixed ports, which must be free before it starts
/// (all of them among [`ports::FIXED`]).
const PORTS: [u16; 8] = [18000, 18001, 10000, 9901, 8101, 8102, 8201, 8202];

/// How long the started programs get to listen.
const START: Duration = Duration::from_secs(60);

/// The first two `sh` blocks after [`SECTION`], as lines (without blank
/// lines).
fn walkthrough() -> (Vec<String>, Vec<String>) {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let start = readme
        .find(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {SECTION:?}"));
    let mut blocks = Vec::new();
    let mut rest = &readme[start..];
    while blocks.len() < 2 {
        let open = rest
            .find("```sh\n")
            .unwrap_or_else(|| panic!("fewer than two sh blocks under {SECTION:?}"));
        let body = &rest[open + 6..];
        let close = body.find("```").expect("a closed block");
        blocks.push(
            body[..close]
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
        rest = &body[close + 3..];
    }
    let second = blocks.pop().expect("two blocks");
    let first = blocks.pop().expect("two blocks");
    (first, second)
}

/// A line's command and its comment (`#` to the end of the line).
fn split_comment(line: &str) -> (&str, &str) {
    match line.find(" #") {
        Some(i) => (line[..i].trim(), line[i + 2..].trim()),
        None => (line.trim(), ""),
    }
}

/// The `teal` binary and the directory of the examples built beside it.
fn built() -> (PathBuf, PathBuf) {
    let teal = PathBuf::from(env!("CARGO_BIN_EXE_teal"));
    let dir = teal.parent().expect("a directory").to_owned();
    (teal, dir.join("examples"))
}

/// The example `name`, built beside the test (by `cargo test`, or here if
/// this test runs alone).
fn example(name: &str) -> PathBuf {
    let (_, dir) = built();
    let path = dir.join(name);
    if !path.exists() {
        // In the profile `cargo test` builds with, so that it reuses the
        // library this test was built with rather than building it again.
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--profile", "test", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --profile test --example {name} failed"
        );
    }
    assert!(path.exists(), "no example binary at {}", path.display());
    path
}

/// One program of the first block, as this test runs it.
fn program(line: &str, cwd: &Path, log: &Path) -> Child {
    let (cmd, _) = split_comment(line);
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let (binary, args): (PathBuf, Vec<&str>) = match words.as_slice() {
        ["cargo", "run", "--release", "--", args @ ..] => (built().0, args.to_vec()),
        ["cargo", "run", "--release", "--example", name, rest @ ..] => {
            let args = match rest {
                ["--", args @ ..] => args.to_vec(),
                [] => Vec::new(),
                other => panic!("unexpected arguments {other:?} in {line:?}"),
            };
            (example(name), args)
        }
        ["envoy", args @ ..] => (support::envoy_binary(), args.to_vec()),
        _ => panic!("the walk-through starts a program this test does not know: {line:?}"),
    };
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new(&binary)
        .args(&args)
        .current_dir(cwd)
        .env_remove("TEAL_ADMIN_TOKEN")
        .env_remove("TEAL_ADMIN_TOKENS")
        .env_remove("TEAL_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {} ({line}): {e}", binary.display()))
}

/// Runs `cmd` with bash in `cwd`, `teal` first on `PATH`.
async fn run(cmd: &str, cwd: &Path) -> std::process::Output {
    let teal_dir = built().0.parent().expect("a directory").to_owned();
    let path = format!(
        "{}:{}",
        teal_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("bash")
        .args(["-c", cmd])
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("TEAL_TOKEN")
        .env_remove("TEAL_ADMIN")
        .env_remove("TEAL_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run bash");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{cmd}` did not end within 120 s"))
        .expect("wait for bash")
}

fn logs(dir: &Path) -> String {
    let mut all = String::new();
    for name in ["program-0.log", "program-1.log", "program-2.log"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        all.push_str(&format!("---- {name} (last lines) ----\n"));
        for l in tail.into_iter().rev() {
            all.push_str(l);
            all.push('\n');
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_as_written() {
    let (programs, commands) = walkthrough();
    assert_eq!(
        programs.len(),
        3,
        "teal, the fleets and Envoy: {programs:?}"
    );
    assert!(
        commands.len() >= 8,
        "the walk-through runs the release: {commands:?}"
    );
    // The walk-through's ports are fixed: no other test may use them
    // meanwhile.
    let _ports = ports::fixed().await;
    for port in PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port}, which the walk-through uses, is taken"
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("teal-walkthrough-")
        .tempdir()
        .expect("temporary directory");
    // A fresh directory with what the commands name by relative path.
    let envoy_dir = dir.path().join("envoy");
    std::fs::create_dir(&envoy_dir).expect("mkdir envoy");
    for f in ["edge.yaml", "sidecar.yaml"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy").join(f),
            envoy_dir.join(f),
        )
        .expect("copy the bootstrap");
    }
    let mut running = Vec::new();
    for (i, line) in programs.iter().enumerate() {
        running.push(program(
            line,
            dir.path(),
            &dir.path().join(format!("program-{i}.log")),
        ));
    }
    // What a person does between starting them and the first command:
    // wait until teal answers and the edge passes traffic.
    let deadline = Instant::now() + START;
    loop {
        let status = run(
            "teal status >/dev/null 2>&1 && curl -sf 127.0.0.1:10000/ >/dev/null",
            dir.path(),
        )
        .await;
        if status.status.success() {
            break;
        }
        for (i, p) in running.iter_mut().enumerate() {
            if let Ok(Some(exit)) = p.try_wait() {
                panic!(
                    "{} exited ({exit}) before the walk-through began\n{}",
                    programs[i],
                    logs(dir.path())
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "teal and the edge were not ready within {START:?}\n{}",
            logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for line in &commands {
        let (cmd, comment) = split_comment(line);
        if cmd == "cargo install --path ." {
            // `teal` is first on PATH already (see the module docs).
            continue;
        }
        let out = run(cmd, dir.path()).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "`{cmd}` failed ({}):\n{stdout}\n{stderr}\n{}",
            out.status,
            logs(dir.path())
        );
        if let Some(want) = comment.strip_prefix("prints: ") {
            assert!(
                stdout.contains(want),
                "`{cmd}` should print {want:?}, printed:\n{stdout}"
            );
        }
    }
    // The history shows every step of the walk-through, made by `local`.
    let out = run("teal history web -o json", dir.path()).await;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let entries = history["entries"].as_array().expect("entries");
    let verbs: Vec<&str> = entries.iter().filter_map(|e| e["verb"].as_str()).collect();
    assert_eq!(
        verbs,
        ["retire", "shift", "rollback", "flip"],
        "{history:#}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["outcome"] == "succeeded" && e["actor"] == "local"),
        "{history:#}"
    );
    let token = dir.path().join("teal-state").join("admin-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token)
            .expect("the local token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only its owner reads the local token");
    drop(running);
}
