//! Flip convergence with real Envoys: teal against Envoy's own file-based
//! RDS switch, measured in the same run.
//!
//! ```text
//! cargo build --release --bin teal --example bench_flip
//! cargo run --release --example bench_flip -- --envoys 20 --flips 20 \
//!     --modes teal,teal-cli,teal-mtls,envoy-file,envoy-file-each
//! cargo run --release --example bench_flip -- --envoys 20 --flips 20 --modes teal --lrs off
//! ```
//!
//! Two local upstreams answer `blue` and `green`. For each mode, N Envoys
//! (`--concurrency 1` each) front them on their own listener ports:
//!
//! - `teal`: teal runs `teal serve` in a child process (this binary,
//!   `--teal-child`) with one proxy group per Envoy, all routing service
//!   `web`; a flip is `Operation::Flip { skip_checks: true }` through the
//!   controller, the call the admin API makes, without the CLI.
//! - `teal-cli`: the same server, and a flip is the real command, `teal
//!   --admin ADDR --token T flip web --skip-checks`, the `teal` binary
//!   (`--teal PATH`, by default `target/<profile>/teal`) run as a
//!   subprocess: its start-up, the admin round trip and its return count.
//! - `teal-mtls`: as `teal`, with teal's xDS port on mTLS (certificates
//!   made by the benchmark with rcgen; each Envoy presents a client
//!   certificate whose SPIFFE ID its group admits, `envoy/edge-mtls.yaml`).
//! - `teal-ha`: three teal replicas (child processes, as `teal`) on one
//!   local etcd (`$TEAL_ETCD` or `etcd` on PATH; lease 2 s), Envoy `i` on
//!   replica `i mod 3`; a flip goes to whichever replica leads and waits
//!   for the proxies of all three (each replica publishes its own to
//!   etcd, the leader mirrors them).
//! - `envoy-file`: the Envoys read CDS and LDS from files and their routes
//!   over RDS from one shared file; a flip is an atomic rename of a new
//!   RDS file over it (inotify tells every Envoy).
//! - `envoy-file-each`: each Envoy reads its own RDS file; a flip writes
//!   and renames a new file over each, in turn.
//! - `envoy-file-teal-routes`: as `envoy-file`, with the very routes teal
//!   serves in the file.
//!
//! teal runs in a session of its own (`--teal-session own`, the default),
//! so Linux's autogroup scheduler gives it a share of the cores as a
//! container of its own would get; `--teal-session shared` leaves it in the
//! benchmark's session, one process among N busy Envoys.
//!
//! The Envoys teal feeds send it load reports (LRS) as the bundled
//! bootstraps do; `--lrs off` removes `load_stats_config` from their
//! bootstraps, to measure what reporting costs a flip. Before the flips,
//! `--baseline` seconds (default 3) of probe traffic alone measure the
//! CPU everything takes without a switch; for teal modes teal's own CPU
//! per second over that span is printed too (with LRS on, mostly the
//! reports).
//!
//! A prober sends `GET /` to every Envoy at `--probe-hz` on a kept-alive
//! connection. Per flip it reports the data-plane time: from the command
//! until every Envoy answers only from the new fleet (the receive time of
//! each Envoy's first answer after which at least 10 answers were all
//! new; resolution one probe period). For teal it also reports teal's own
//! view: first push to last ACK of the committed version (the rollout's
//! history entry), and command to outcome; and for every mode how long
//! the switch command took to return.

#[path = "../tests/support/mod.rs"]
mod support;

mod bench_common;

use std::time::Duration;

use bench_common::{Kind, RunOptions, ms, percentile, sorted};

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    bench_common::main_with(bench)
}

async fn bench(args: Vec<String>) -> anyhow::Result<()> {
    let mut o = RunOptions {
        proxies: 1,
        switches: 20,
        probe_hz: 200,
        load_conns: 0,
        load_hz: 0,
        gap: Duration::from_millis(300),
        teal_own_session: true,
        teal_binary: bench_common::default_teal_binary(),
        load_reports: true,
        baseline: Duration::from_secs(3),
    };
    let mut kinds = vec![Kind::Teal, Kind::EnvoyFile];
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--envoys" => o.proxies = value()?.parse()?,
            "--flips" => o.switches = value()?.parse()?,
            "--probe-hz" => o.probe_hz = value()?.parse()?,
            "--teal-session" => o.teal_own_session = bench_common::parse_teal_session(&value()?)?,
            "--teal" => o.teal_binary = Some(value()?.into()),
            "--lrs" => {
                o.load_reports = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => anyhow::bail!("--lrs is on or off, not {other:?}"),
                }
            }
            "--baseline" => o.baseline = Duration::from_secs(value()?.parse()?),
            "--modes" => {
                kinds = value()?
                    .split(',')
                    .map(Kind::parse)
                    .collect::<anyhow::Result<_>>()?
            }
            other => anyhow::bail!(
                "unknown flag {other}; use --envoys N --flips N --probe-hz N --modes teal,teal-cli,teal-mtls,teal-ha,envoy-file,envoy-file-each,envoy-file-teal-routes --teal-session own|shared --teal PATH --lrs on|off --baseline SECONDS"
            ),
        }
    }
    let ups = bench_common::upstreams().await;
    let ports = [ups[0].port, ups[1].port];
    println!(
        "{} Envoys, {} flips, probe {} Hz per Envoy; teal's Envoys send load reports: {}; load average {}",
        o.proxies,
        o.switches,
        o.probe_hz,
        if o.load_reports { "on" } else { "off" },
        load_average()
    );
    println!(
        "| mode | data plane p50 | p99 | max | teal: push→last ACK p50 | p99 | teal: command→outcome p50 | p99 | switch command p50 | p99 | failed | probe Hz/Envoy | CPU/flip | RSS/Envoy |"
    );
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for kind in kinds {
        let r = bench_common::run(kind, ports, &o).await?;
        let conv = sorted(r.teal.iter().map(|t| t.convergence).collect());
        let c2o = sorted(r.teal.iter().map(|t| t.command_to_outcome).collect());
        let command = sorted(r.command.clone());
        let teal_col = |v: &[Duration], p: f64| {
            if v.is_empty() {
                "–".to_owned()
            } else {
                format!("{} ms", ms(percentile(v, p)))
            }
        };
        println!(
            "| {} | {} ms | {} ms | {} ms | {} | {} | {} | {} | {} ms | {} ms | {} of {} | {:.0} | {} ms | {:.1} MiB |",
            kind.name(),
            ms(percentile(&r.data_plane, 0.5)),
            ms(percentile(&r.data_plane, 0.99)),
            ms(r.data_plane.last().copied().unwrap_or_default()),
            teal_col(&conv, 0.5),
            teal_col(&conv, 0.99),
            teal_col(&c2o, 0.5),
            teal_col(&c2o, 0.99),
            ms(percentile(&command, 0.5)),
            ms(percentile(&command, 0.99)),
            r.failed + r.closed_idle,
            r.requests,
            r.probe_rate,
            ms(r.cpu_per_switch),
            r.rss_per_proxy_kib as f64 / 1024.0,
        );
        println!(
            "  {}: data plane per flip (ms): {:?}; load average after: {}",
            kind.name(),
            r.data_plane.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            load_average()
        );
        if let Some((cpu, rss)) = r.teal_idle {
            println!(
                "  {}: teal CPU {} ms per second over the {:?} of probe traffic before the flips; teal RSS {:.1} MiB",
                kind.name(),
                ms(cpu),
                o.baseline,
                rss as f64 / 1024.0
            );
        }
        if let Some((reporting, routing, requests)) = r.load_reports {
            println!(
                "  {}: {reporting} of {routing} Envoys reporting load; {requests} requests measured over teal's status window",
                kind.name(),
            );
        }
    }
    Ok(())
}
