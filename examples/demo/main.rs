//! The teal demo: a blue/green release under steady traffic, through real
//! Envoys, in one command.
//!
//! ```sh
//! cargo run --release --example demo [-- --png PATH]
//! ```
//!
//! Starts teal in-process on a generated config, a blue fleet (`blue
//! v1.4.2`) and a green fleet (`green v1.5.0`) of local HTTP upstreams, an
//! edge Envoy and three sidecar Envoys (Envoy from `TEAL_ENVOY` or `PATH`),
//! and sends steady keep-alive traffic through all of them while it flips
//! blue → green, rolls back, shifts in steps (10%, 50%, 100% green) and
//! flips back to blue. It prints each change with its convergence time, the
//! requests and failures, and the split over time as a text chart, and
//! writes a PNG plot of % green over time (`teal-demo.png`, or `--png
//! PATH`). Every Envoy it started is killed when it ends, Ctrl-C included.

#[path = "../../tests/support/mod.rs"]
mod support;

mod font;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use teal::admin::Backend;
use teal::controller::Controller;
use teal::rollout::{Operation, Outcome, ShiftSteps, Split};

use support::http::KeepAlive;
use support::{Envoy, Protocol, Teal, Upstream, free_port, write_atomically};

const BLUE: &str = "blue v1.4.2";
const GREEN: &str = "green v1.5.0";
const SIDECARS: usize = 3;
/// Keep-alive connections to the edge and to the sidecars' shared port.
const CONNECTIONS: usize = 4;
/// Requests per second on each connection: 8 × 50 = 400/s.
const PER_CONNECTION_RATE: u32 = 50;
/// Steady time between changes.
const HOLD: Duration = Duration::from_millis(1500);
/// Pause between a shift's steps.
const STEP: Duration = Duration::from_millis(1200);
/// Text chart resolution.
const TEXT_BUCKET: Duration = Duration::from_millis(250);
/// PNG resolution.
const PNG_BUCKET: Duration = Duration::from_millis(100);
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// One request: when it was sent (since the start), and whether green,
/// blue or nobody (a failure) answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Blue,
    Green,
    Failed,
}

/// One committed change: when it was committed and confirmed by every
/// proxy (since the start), with a label.
#[derive(Debug)]
struct Change {
    label: String,
    committed: Duration,
    confirmed: Duration,
    proxies: usize,
}

fn usage() -> ExitCode {
    eprintln!("usage: demo [--png PATH]");
    ExitCode::from(64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut png = PathBuf::from("teal-demo.png");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--png", Some(path)) => png = PathBuf::from(path),
            _ => return usage(),
        }
    }
    if let Err(problem) = support::find_envoy() {
        eprintln!("teal demo: {problem}");
        return ExitCode::from(69);
    }
    // Dropping the demo's future (on Ctrl-C) drops every Envoy, which
    // kills it.
    tokio::select! {
        result = demo(png) => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("teal demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping Envoys");
            ExitCode::from(130)
        }
    }
}

fn config_yaml(blue: &[u16], green: &[u16], edge: u16, sidecar: u16) -> String {
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("\n          - 127.0.0.1:{p}"))
            .collect::<String>()
    };
    format!(
        "\
services:
  web:
    live: blue
    checks:
      health: {{ path: /healthz }}
    fleets:
      blue:
        endpoints:{blue}
      green:
        endpoints:{green}
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{edge}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
  sidecar:
    listeners:
      outbound:
        kind: sidecar
        address: 127.0.0.1:{sidecar}
        services: [web]
",
        blue = list(blue),
        green = list(green),
    )
}

async fn demo(png: PathBuf) -> anyhow::Result<()> {
    let mut upstreams = Vec::new();
    for name in [BLUE, BLUE, GREEN, GREEN] {
        upstreams.push(Upstream::start(name).await);
    }
    let ports: Vec<u16> = upstreams.iter().map(|u| u.port).collect();
    let (edge_port, sidecar_port) = (free_port(), free_port());
    let dir = tempfile::Builder::new().prefix("teal-demo-").tempdir()?;
    let path = dir.path().join("teal.yaml");
    write_atomically(
        &path,
        &config_yaml(&ports[..2], &ports[2..], edge_port, sidecar_port),
    );
    let teal = Teal::serve(&path).await;
    let controller = teal
        .controller
        .clone()
        .expect("teal serve has a controller");
    println!(
        "teal serving xDS on 127.0.0.1:{}; blue fleet: {BLUE} ×2, green fleet: {GREEN} ×2",
        teal.port
    );

    let mut starting = tokio::task::JoinSet::new();
    for i in 0..=SIDECARS {
        let (group, protocol) = if i == 0 {
            ("edge", Protocol::Sotw)
        } else {
            ("sidecar", Protocol::Delta)
        };
        let port = teal.port;
        starting.spawn(async move { Envoy::start_on(port, group, protocol).await });
    }
    let envoys: Vec<Envoy> = starting.join_all().await;
    println!(
        "started {} Envoys: 1 edge on 127.0.0.1:{edge_port}, {SIDECARS} sidecars sharing \
         127.0.0.1:{sidecar_port}",
        envoys.len()
    );

    // Connections, once every Envoy answers.
    let mut connections = Vec::new();
    for (port, host) in [(edge_port, None), (sidecar_port, Some("web"))] {
        for _ in 0..CONNECTIONS {
            connections.push((warm(port, host).await?, host));
        }
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for (conn, host) in connections {
        load.spawn(drive(conn, host, t0, stop.clone()));
    }
    println!(
        "sending {} req/s over {} keep-alive connections\n",
        2 * CONNECTIONS as u32 * PER_CONNECTION_RATE,
        2 * CONNECTIONS
    );

    let split = |green: u32| {
        Split::from([
            ("blue".to_owned(), 100 - green),
            ("green".to_owned(), green),
        ])
    };
    let ops = [
        Operation::Flip {
            service: "web".into(),
            to: Some("green".into()),
            skip_checks: false,
            timeout: OP_TIMEOUT,
        },
        Operation::Rollback {
            service: "web".into(),
            skip_checks: false,
            timeout: OP_TIMEOUT,
        },
        Operation::Shift {
            service: "web".into(),
            steps: ShiftSteps::Splits(vec![split(10), split(50), split(100)]),
            interval: STEP,
            skip_checks: false,
            timeout: OP_TIMEOUT,
        },
        Operation::Flip {
            service: "web".into(),
            to: Some("blue".into()),
            skip_checks: false,
            timeout: OP_TIMEOUT,
        },
    ];
    let mut changes = Vec::new();
    tokio::time::sleep(HOLD).await;
    for op in ops {
        run(&controller, op, t0, &mut changes).await?;
        tokio::time::sleep(HOLD).await;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let mut samples: Vec<(Duration, Answer)> =
        load.join_all().await.into_iter().flatten().collect();
    samples.sort_by_key(|(t, _)| *t);
    drop(envoys);

    let failed = samples.iter().filter(|(_, a)| *a == Answer::Failed).count();
    println!(
        "\n{} requests in {:.1} s ({:.0} req/s), {failed} failed",
        samples.len(),
        elapsed.as_secs_f64(),
        samples.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "\ntraffic split over time (each row {} ms; b = blue, g = green, x = failed):",
        TEXT_BUCKET.as_millis()
    );
    print!("{}", text_chart(&samples, &changes, elapsed));
    draw_png(&png, &samples, &changes, elapsed)?;
    println!("\nwrote {}", png.display());
    Ok(())
}

/// A keep-alive connection to `port` that has answered `GET /` with blue.
async fn warm(port: u16, host: Option<&'static str>) -> anyhow::Result<KeepAlive> {
    let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut conn) = KeepAlive::connect(port).await
            && let Ok(r) = conn.get("/", &headers, Duration::from_secs(2)).await
            && r.status == 200
            && r.body == BLUE
        {
            return Ok(conn);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Envoy on port {port} does not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Steady `GET /` on one connection until `stop`; after a failure it
/// reconnects.
async fn drive(
    mut conn: KeepAlive,
    host: Option<&'static str>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, Answer)> {
    let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
    let port = conn.port();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / PER_CONNECTION_RATE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let sent = t0.elapsed();
        let answer = match conn.get("/", &headers, Duration::from_secs(5)).await {
            Ok(r) if r.status == 200 && r.body == BLUE => Answer::Blue,
            Ok(r) if r.status == 200 && r.body == GREEN => Answer::Green,
            Ok(_) => Answer::Failed,
            Err(_) => {
                if let Ok(c) = KeepAlive::connect(port).await {
                    conn = c;
                }
                Answer::Failed
            }
        };
        out.push((sent, answer));
    }
    out
}

/// Runs `op` to the end, printing and recording each committed step.
async fn run(
    controller: &Controller,
    op: Operation,
    t0: Instant,
    changes: &mut Vec<Change>,
) -> anyhow::Result<()> {
    let verb = op.verb();
    let mut rx = controller.start(op, "demo").await?;
    // The version being confirmed, when it was committed, its label.
    let mut confirming: Option<(String, Duration, String)> = None;
    loop {
        let p = rx.borrow_and_update().clone();
        let now = t0.elapsed();
        if p.phase == teal::rollout::Phase::Confirming
            && let Some(version) = &p.version
            && confirming
                .as_ref()
                .is_none_or(|(v, _, _)| *v != version.to_string())
        {
            let green = p.target.get("green").copied().unwrap_or(0);
            let label = match verb {
                teal::rollout::Verb::Shift => format!("shift {green}%"),
                _ if green == 100 => format!("{verb} > green"),
                _ => format!("{verb} > blue"),
            };
            confirming = Some((version.to_string(), now, label));
        }
        if p.phase != teal::rollout::Phase::Confirming
            && let Some((version, committed, label)) = confirming.take()
        {
            println!(
                "{:>6.2}s  {label:<16} version {version:<16} all {} proxies ACKed in {:>4} ms",
                committed.as_secs_f64(),
                p.total,
                (now - committed).as_millis()
            );
            changes.push(Change {
                label,
                committed,
                confirmed: now,
                proxies: p.total,
            });
        }
        if let Some(outcome) = &p.outcome {
            anyhow::ensure!(
                *outcome == Outcome::Succeeded,
                "{verb} did not succeed: {outcome:?}"
            );
            return Ok(());
        }
        rx.changed().await?;
    }
}

/// One row per bucket: a bar of `b`/`g` (and `x` for failures)
/// proportional to who answered, and the changes committed in it.
fn text_chart(samples: &[(Duration, Answer)], changes: &[Change], elapsed: Duration) -> String {
    const WIDTH: usize = 50;
    let buckets = elapsed.as_millis().div_ceil(TEXT_BUCKET.as_millis()) as usize;
    let mut out = String::new();
    for b in 0..buckets {
        let from = TEXT_BUCKET * b as u32;
        let to = from + TEXT_BUCKET;
        let in_bucket: Vec<Answer> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, a)| *a)
            .collect();
        if in_bucket.is_empty() {
            continue;
        }
        let n = in_bucket.len() as f64;
        let count = |a: Answer| in_bucket.iter().filter(|x| **x == a).count();
        let green = (count(Answer::Green) as f64 / n * WIDTH as f64).round() as usize;
        let failed = (count(Answer::Failed) as f64 / n * WIDTH as f64).ceil() as usize;
        let blue = WIDTH.saturating_sub(green + failed);
        let notes: Vec<String> = changes
            .iter()
            .filter(|c| c.committed >= from && c.committed < to)
            .map(|c| {
                format!(
                    "<- {} ({} proxies in {} ms)",
                    c.label,
                    c.proxies,
                    (c.confirmed - c.committed).as_millis()
                )
            })
            .collect();
        out.push_str(&format!(
            "{:>6.2}s |{}{}{}| {:>3.0}% green {}\n",
            from.as_secs_f64(),
            "b".repeat(blue),
            "g".repeat(green),
            "x".repeat(failed),
            count(Answer::Green) as f64 / n * 100.0,
            notes.join(" ")
        ));
    }
    out
}

/// An RGB image.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

type Rgb = [u8; 3];

impl Canvas {
    fn new(width: usize, height: usize, background: Rgb) -> Canvas {
        Canvas {
            width,
            height,
            pixels: background.repeat(width * height),
        }
    }

    fn set(&mut self, x: usize, y: usize, color: Rgb) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.pixels[i..i + 3].copy_from_slice(&color);
        }
    }

    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, color: Rgb) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.set(x, y, color);
            }
        }
    }

    /// Text at `(x, y)` (top left), each font pixel `scale` pixels wide.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, color: Rgb) {
        for (i, c) in text.chars().enumerate() {
            let Some(rows) = font::glyph(c) else { continue };
            let gx = x + i * 4 * scale;
            for (row, bits) in rows.iter().enumerate() {
                for (col, bit) in bits.chars().enumerate() {
                    if bit == '#' {
                        self.rect(
                            gx + col * scale,
                            y + row * scale,
                            gx + (col + 1) * scale,
                            y + (row + 1) * scale,
                            color,
                        );
                    }
                }
            }
        }
    }

    fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * 4 * scale
    }

    fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut encoder = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(())
    }
}

/// % green over time as bars (green share over blue), failures in red,
/// each change a dark line labelled at the top.
fn draw_png(
    path: &std::path::Path,
    samples: &[(Duration, Answer)],
    changes: &[Change],
    elapsed: Duration,
) -> anyhow::Result<()> {
    const W: usize = 1100;
    const H: usize = 460;
    const LEFT: usize = 70;
    const RIGHT: usize = 30;
    const TOP: usize = 90;
    const BOTTOM: usize = 60;
    const WHITE: Rgb = [255, 255, 255];
    const INK: Rgb = [40, 40, 48];
    const GRID: Rgb = [225, 225, 230];
    const BLUE_C: Rgb = [120, 160, 230];
    const GREEN_C: Rgb = [60, 170, 90];
    const RED: Rgb = [220, 50, 50];
    const MARK: Rgb = [150, 60, 150];
    let mut c = Canvas::new(W, H, WHITE);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let bottom = TOP + plot_h;
    let x_of =
        |t: Duration| LEFT + (t.as_secs_f64() / elapsed.as_secs_f64() * plot_w as f64) as usize;
    let y_of = |pct: f64| bottom - (pct / 100.0 * plot_h as f64).round() as usize;

    c.text(
        LEFT,
        14,
        "TEAL DEMO: % OF REQUESTS ANSWERED BY GREEN",
        3,
        INK,
    );
    c.text(
        LEFT,
        40,
        "EDGE + 3 SIDECAR ENVOYS, 400 REQ/S. BARS PER 100 MS: GREEN SHARE, BLUE REST, RED FAILED",
        2,
        INK,
    );
    // Grid and y axis labels.
    for pct in [0, 25, 50, 75, 100] {
        let y = y_of(pct as f64);
        c.rect(LEFT, y, LEFT + plot_w, y + 1, GRID);
        let label = format!("{pct}%");
        c.text(
            LEFT - 10 - Canvas::text_width(&label, 2),
            y - 5,
            &label,
            2,
            INK,
        );
    }
    // Bars.
    let buckets = elapsed.as_millis().div_ceil(PNG_BUCKET.as_millis()) as usize;
    for b in 0..buckets {
        let from = PNG_BUCKET * b as u32;
        let to = from + PNG_BUCKET;
        let in_bucket: Vec<Answer> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, a)| *a)
            .collect();
        if in_bucket.is_empty() {
            continue;
        }
        let n = in_bucket.len() as f64;
        let pct = |a: Answer| in_bucket.iter().filter(|x| **x == a).count() as f64 / n * 100.0;
        let (x0, x1) = (x_of(from), x_of(to.min(elapsed)).max(x_of(from) + 1));
        let green_top = y_of(pct(Answer::Green));
        let failed_top = y_of(100.0 - pct(Answer::Failed));
        c.rect(x0, TOP, x1, bottom, BLUE_C);
        c.rect(x0, green_top, x1, bottom, GREEN_C);
        c.rect(x0, TOP, x1, failed_top, RED);
    }
    // Axes and x labels.
    c.rect(LEFT, TOP, LEFT + 2, bottom, INK);
    c.rect(LEFT, bottom, LEFT + plot_w, bottom + 2, INK);
    for s in 0..=elapsed.as_secs() {
        let x = x_of(Duration::from_secs(s));
        c.rect(x, bottom, x + 1, bottom + 6, INK);
        let label = format!("{s}S");
        c.text(
            x - Canvas::text_width(&label, 2) / 2,
            bottom + 12,
            &label,
            2,
            INK,
        );
    }
    c.text(LEFT + plot_w / 2 - 40, bottom + 36, "TIME", 2, INK);
    // Changes: a line at each commit, labels alternating between two rows.
    for (i, change) in changes.iter().enumerate() {
        let x = x_of(change.committed);
        c.rect(x, TOP - 8, x + 2, bottom, MARK);
        let label = format!(
            "{} {}MS",
            change.label.replace('>', "TO"),
            (change.confirmed - change.committed).as_millis()
        );
        let y = if i % 2 == 0 { 62 } else { 74 };
        let tx = (x + 4).min(W - Canvas::text_width(&label, 1) * 2 - 2);
        c.text(tx, y, &label, 2, MARK);
    }
    c.save(path)
}
