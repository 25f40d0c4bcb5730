//! teal side by side with what operators use instead, on the same machine,
//! load and upstreams.
//!
//! ```text
//! sudo sh examples/bench_peers_setup.sh     # nginx and HAProxy from Debian
//! cargo run --release --example bench_peers -- --switches 20
//! ```
//!
//! Systems (`--systems`, default all four), each with `--proxies` proxies
//! (default 1) in front of two local upstreams that answer `blue` and
//! `green`:
//!
//! - `teal`: Envoy fed by teal over ADS; a switch is a flip.
//! - `envoy-file`: Envoy with CDS and LDS from files and routes over RDS
//!   from a file; a switch renames a new RDS file over the old one.
//! - `nginx`: one upstream block from an included file; a switch rewrites
//!   it and runs `nginx -s reload`.
//! - `haproxy`: both servers in one backend, the idle one at weight 0; a
//!   switch is `set weight` on the runtime API (stats socket).
//!
//! Load: `--load-conns` kept-alive connections per proxy, each sending
//! `--load-hz` requests per second, plus the probe (`--probe-hz` on one
//! kept-alive connection per proxy). Reported per system: failed requests
//! over all switches (split into hard failures and closes of an idle
//! kept-alive connection, which clients retry), the data-plane time from
//! the switch command until every proxy answers only from the new fleet,
//! and the CPU a switch costs beyond what the load costs anyway.

#[path = "../tests/support/mod.rs"]
mod support;

mod bench_common;

use std::time::Duration;

use bench_common::{Kind, RunOptions, ms, percentile};

fn main() -> anyhow::Result<()> {
    bench_common::main_with(bench)
}

async fn bench(args: Vec<String>) -> anyhow::Result<()> {
    let mut o = RunOptions {
        proxies: 1,
        switches: 20,
        probe_hz: 200,
        load_conns: 4,
        load_hz: 100,
        gap: Duration::from_millis(500),
        teal_own_session: true,
        teal_binary: bench_common::default_teal_binary(),
        load_reports: true,
        baseline: Duration::from_secs(3),
    };
    let mut kinds = vec![Kind::Teal, Kind::EnvoyFile, Kind::Nginx, Kind::Haproxy];
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--proxies" => o.proxies = value()?.parse()?,
            "--switches" => o.switches = value()?.parse()?,
            "--probe-hz" => o.probe_hz = value()?.parse()?,
            "--teal-session" => o.teal_own_session = bench_common::parse_teal_session(&value()?)?,
            "--load-conns" => o.load_conns = value()?.parse()?,
            "--load-hz" => o.load_hz = value()?.parse()?,
            "--systems" => {
                kinds = value()?
                    .split(',')
                    .map(Kind::parse)
                    .collect::<anyhow::Result<_>>()?
            }
            other => anyhow::bail!(
                "unknown flag {other}; use --proxies N --switches N --probe-hz N \
                 --load-conns N --load-hz N --systems teal,envoy-file,nginx,haproxy \
                 --teal-session own|shared"
            ),
        }
    }
    let ups = bench_common::upstreams().await;
    let ports = [ups[0].port, ups[1].port];
    println!(
        "{} proxies per system, {} switches; per proxy: probe {} Hz + load {} conns x {} Hz",
        o.proxies, o.switches, o.probe_hz, o.load_conns, o.load_hz
    );
    println!(
        "| system | failed | closed idle | requests | switched p50 | p99 | max | command p50 | CPU/switch | reload cmd CPU | RSS/proxy |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for kind in kinds {
        let r = bench_common::run(kind, ports, &o).await?;
        let mut cmd = r.command.clone();
        cmd.sort();
        println!(
            "| {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {:.1} MiB |",
            kind.name(),
            r.failed,
            r.closed_idle,
            r.requests,
            ms(percentile(&r.data_plane, 0.5)),
            ms(percentile(&r.data_plane, 0.99)),
            ms(r.data_plane.last().copied().unwrap_or_default()),
            ms(percentile(&cmd, 0.5)),
            ms(r.cpu_per_switch),
            ms(r.command_cpu),
            r.rss_per_proxy_kib as f64 / 1024.0,
        );
        println!(
            "  {}: switched per switch (ms): {:?}",
            kind.name(),
            r.data_plane.iter().map(|d| ms(*d)).collect::<Vec<_>>()
        );
    }
    Ok(())
}
