//! How fast the `teal` command returns: `teal flip` with no proxy
//! connected, as a whole process, its output to a pipe, a file and a
//! terminal.
//!
//! ```text
//! cargo build --release --bin teal
//! cargo run --release --example bench_cli -- --runs 100
//! ```
//!
//! The benchmark runs `teal serve` in-process (one service, one proxy
//! group, no proxy connected, so a flip needs no ACK and has no checks)
//! and starts the real `teal` binary (`--teal PATH`, by default the one
//! next to this example's directory) `--runs` times per output:
//!
//! - `pipe`: stdout and stderr are pipes the benchmark reads to the end;
//! - `file`: both go to a file;
//! - `tty`: stdout and stderr are a pseudo-terminal the benchmark reads.
//!   (Not `script -c`: util-linux `script` waits 10 ms for more output
//!   after its child exits, and 10 ms more when its stdin is at its end,
//!   which would swamp what is measured.)
//!
//! Reported per output, p50 / p99 / max over the runs:
//!
//! - `exit − outcome`: from the moment the server recorded the outcome
//!   (the history entry's `finished`, wall clock) to the command's exit as
//!   the benchmark sees it (its wait returning);
//! - `wall`: the whole command, from spawning it to its exit.
//!
//! Both clocks are the same machine's wall clock.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use teal::admin::Backend;

const CONFIG: &str = "services:
  web:
    live: blue
    fleets:
      blue: {endpoints: [127.0.0.1:9]}
      green: {endpoints: [127.0.0.1:9]}
groups:
  edge:
    listeners:
      main:
        kind: edge
        address: 127.0.0.1:10000
        virtual_hosts:
          all:
            domains: [\"*\"]
            routes: [{prefix: /, service: web}]
";

/// The admin token the server is given and the command sends.
const TOKEN: &str = "bench-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Pipe,
    File,
    Tty,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Pipe => "pipe",
            Output::File => "file",
            Output::Tty => "tty",
        }
    }
}

struct Args {
    runs: usize,
    /// Keep the state durably here (fsync'd at every save), as `teal
    /// serve --state-dir` does; in memory when unset.
    state_dir: Option<PathBuf>,
    teal: PathBuf,
    outputs: Vec<Output>,
}

fn args() -> anyhow::Result<Args> {
    let exe = std::env::current_exe()?;
    // target/release/examples/bench_cli -> target/release/teal
    let default_teal = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("teal"))
        .ok_or_else(|| anyhow::anyhow!("cannot place the teal binary; pass --teal"))?;
    let mut a = Args {
        runs: 100,
        state_dir: None,
        teal: default_teal,
        outputs: vec![Output::Pipe, Output::File, Output::Tty],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--runs" => a.runs = value()?.parse()?,
            "--teal" => a.teal = value()?.into(),
            "--state-dir" => a.state_dir = Some(value()?.into()),
            "--outputs" => {
                a.outputs = value()?
                    .split(',')
                    .map(|o| match o {
                        "pipe" => Ok(Output::Pipe),
                        "file" => Ok(Output::File),
                        "tty" => Ok(Output::Tty),
                        other => Err(anyhow::anyhow!("unknown output {other:?}")),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            other => anyhow::bail!(
                "unknown flag {other}; use --runs N --teal PATH --outputs pipe,file,tty --state-dir DIR"
            ),
        }
    }
    anyhow::ensure!(
        a.teal.exists(),
        "no teal binary at {} (cargo build --release --bin teal, or --teal PATH)",
        a.teal.display()
    );
    Ok(a)
}

/// Runs the command once with `output`; returns when it exited.
fn run_once(
    teal: &PathBuf,
    admin: &str,
    output: Output,
    dir: &std::path::Path,
) -> anyhow::Result<(SystemTime, Instant, bool)> {
    let mut command = Command::new(teal);
    command
        .args(["--admin", admin, "--token", TOKEN, "flip", "web"])
        .stdin(Stdio::null());
    let mut terminal = None;
    match output {
        Output::Pipe => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Output::File => {
            let f = std::fs::File::create(dir.join("out.txt"))?;
            command.stdout(f.try_clone()?).stderr(f);
        }
        Output::Tty => {
            let (master, slave) = pty()?;
            command.stdout(slave.try_clone()?).stderr(slave);
            terminal = Some(master);
        }
    }
    let mut child = command.spawn()?;
    // The command holds the terminal's other end: once it exits, reading
    // the master ends (EIO).
    drop(command);
    let mut readers = Vec::new();
    let pipes: [Option<Box<dyn Read + Send>>; 3] = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
        terminal.map(|m| Box::new(m) as Box<dyn Read + Send>),
    ];
    for mut pipe in pipes.into_iter().flatten() {
        readers.push(std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        }));
    }
    let status = child.wait()?;
    let (wall, mono) = (SystemTime::now(), Instant::now());
    let mut said = Vec::new();
    for r in readers {
        said.extend(r.join().unwrap_or_default());
    }
    if !status.success() {
        if output == Output::File {
            said = std::fs::read(dir.join("out.txt")).unwrap_or_default();
        }
        eprintln!(
            "{}: {status}: {}",
            output.name(),
            String::from_utf8_lossy(&said).trim()
        );
    }
    Ok((wall, mono, status.success()))
}

/// A new pseudo-terminal: its master end and its terminal end.
fn pty() -> anyhow::Result<(std::fs::File, std::fs::File)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::os::unix::fs::OpenOptionsExt;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(name.to_str()?)?;
    Ok((std::fs::File::from(master), slave))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run() -> anyhow::Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, CONFIG)?;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("bench:{TOKEN}\n"))?;
    // teal refuses a tokens file others can read.
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (_trigger, shutdown) = teal::shutdown::shutdown_channel();
    let running = teal::serve::start(
        teal::serve::ServeOptions {
            watch_interval: Duration::from_secs(3600),
            admin_tokens: Some(tokens),
            state_dir: args.state_dir.clone(),
            ..teal::serve::ServeOptions::local(Some(config))
        },
        shutdown,
    )
    .await?;
    let admin = running.admin_addr.to_string();
    let controller = running.controller.clone();
    println!(
        "teal flip, no proxy connected, {} runs per output, state {}; load average before: {}",
        args.runs,
        args.state_dir
            .as_ref()
            .map_or("in memory".to_owned(), |d| format!("in {}", d.display())),
        load_average()
    );
    for &output in &args.outputs {
        let mut after = Vec::new();
        let mut wall = Vec::new();
        let mut failed = 0;
        for _ in 0..args.runs {
            let (teal, admin, d) = (args.teal.clone(), admin.clone(), dir.path().to_owned());
            let start = Instant::now();
            let (exit_wall, exit, ok) =
                tokio::task::spawn_blocking(move || run_once(&teal, &admin, output, &d)).await??;
            if !ok {
                failed += 1;
                continue;
            }
            let history = controller.history("web").await?;
            let finished = history
                .first()
                .map(|h| h.finished)
                .ok_or_else(|| anyhow::anyhow!("no history entry"))?;
            after.push(exit_wall.duration_since(finished).unwrap_or_default());
            wall.push(exit - start);
        }
        after.sort();
        wall.sort();
        println!(
            "{:<4}  exit - outcome p50 {} p99 {} max {}  |  wall p50 {} p99 {} min {}  ({} ok, {failed} failed; load {})",
            output.name(),
            ms(percentile(&after, 0.5)),
            ms(percentile(&after, 0.99)),
            ms(after.last().copied().unwrap_or_default()),
            ms(percentile(&wall, 0.5)),
            ms(percentile(&wall, 0.99)),
            ms(wall.first().copied().unwrap_or_default()),
            after.len(),
            load_average()
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run())
}
