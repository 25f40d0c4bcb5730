//! CPU cost of committing one flip: what teal's controller does between an
//! operator's command and the first byte pushed to a proxy.
//!
//! ```text
//! cargo run --release --example bench_commit -- --groups 50 --services 1
//! cargo run --release --example bench_commit -- --groups 1 --services 1000
//! ```
//!
//! The config has `--groups` proxy groups with one edge listener each, every
//! listener routing all `--services` services (blue and green fleets, one
//! endpoint each). Each iteration flips service `svc0` to the other fleet
//! and runs the commit path the controller runs, timing each phase:
//!
//! - `translate`: config and weights to Envoy resources for every group;
//! - `prepare`: the snapshot build: encode and hash what changed, reuse
//!   the rest, and name the version by its content digest;
//! - `save`: the durable state write (JSON, fsync, rename, directory fsync)
//!   in a temporary directory;
//! - `install`: swapping the snapshot in for the streams.
//!
//! Figures are per commit, median and p99 over `--iterations`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use teal::config::{Config, Weights, translate};
use teal::rollout::Version;
use teal::state::{FileStore, PersistedState, Revision, ServiceState, StateStore};
use teal::xds::snapshot_store::snapshot_store;

fn main() -> anyhow::Result<()> {
    let mut groups = 50usize;
    let mut services = 1usize;
    let mut iterations = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || -> anyhow::Result<usize> {
            Ok(args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?
                .parse()?)
        };
        match flag.as_str() {
            "--groups" => groups = value()?,
            "--services" => services = value()?,
            "--iterations" => iterations = value()?,
            other => {
                anyhow::bail!("unknown flag {other}; use --groups N --services N --iterations N")
            }
        }
    }
    anyhow::ensure!(
        groups > 0 && services > 0,
        "need at least one group and one service"
    );
    let config = Config::parse(&config_yaml(groups, services), "bench")
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let store = FileStore::open(dir.path())?;
    let (mut writer, _reader) = snapshot_store();

    let mut weights = Weights::initial(&config);
    let mut state = PersistedState::default();
    let mut revision = Revision(0);
    let mut phases: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut live = "blue";
    for seq in 1..=iterations + 1 {
        live = if live == "blue" { "green" } else { "blue" };
        let split = BTreeMap::from([(live.to_owned(), Weights::TOTAL)]);
        weights.set(&config, "svc0", &split)?;
        state.services.insert(
            "svc0".to_owned(),
            ServiceState {
                weights: split,
                ..ServiceState::default()
            },
        );

        let t = Instant::now();
        let input = translate(&config, &weights);
        let t_translate = t.elapsed();

        let t = Instant::now();
        let snapshot = writer.prepare(&input, |digest| {
            Version::new(seq as u64, digest).to_string()
        })?;
        let t_prepare = t.elapsed();
        state.version_seq = seq as u64;
        state.version = Some(Version::new(seq as u64, snapshot.digest()));

        let t = Instant::now();
        revision = rt.block_on(store.save(&state, revision))?;
        let t_save = t.elapsed();

        let t = Instant::now();
        writer.install(snapshot);
        let t_install = t.elapsed();

        // The first commit builds everything from nothing; flips reuse the
        // types that did not change, so only later commits are counted.
        if seq > 1 {
            let total = t_translate + t_prepare + t_save + t_install;
            for (name, d) in [
                ("1 translate", t_translate),
                ("3 prepare", t_prepare),
                ("4 save", t_save),
                ("5 install", t_install),
                ("6 total", total),
                ("7 total without save", total - t_save),
            ] {
                phases.entry(name).or_default().push(d);
            }
        }
    }
    println!(
        "{groups} groups x {services} services ({} resources per group), {iterations} flips",
        4 * services + 2
    );
    println!("| phase | p50 | p99 |");
    println!("| --- | --- | --- |");
    for (name, mut v) in phases {
        v.sort();
        let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        println!(
            "| {} | {:.3} ms | {:.3} ms |",
            &name[2..],
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// `groups` groups, each with one edge listener routing every service.
fn config_yaml(groups: usize, services: usize) -> String {
    let mut y = String::from("services:\n");
    for s in 0..services {
        let port = 20000 + 2 * s;
        y.push_str(&format!(
            "  svc{s}:\n    live: blue\n    fleets:\n      blue: {{endpoints: [127.0.0.1:{port}]}}\n      green: {{endpoints: [127.0.0.1:{}]}}\n",
            port + 1
        ));
    }
    y.push_str("groups:\n");
    for g in 0..groups {
        y.push_str(&format!(
            "  g{g}:\n    listeners:\n      main:\n        kind: edge\n        address: 127.0.0.1:{}\n        virtual_hosts:\n          all:\n            domains: [\"*\"]\n            routes:\n",
            10000 + g
        ));
        for s in 0..services {
            y.push_str(&format!(
                "              - {{prefix: /svc{s}, service: svc{s}}}\n"
            ));
        }
    }
    y
}
