//! `teal fleet set|add|remove|show`, `teal register`, `teal deregister`:
//! the endpoints of `endpoints: registered` fleets, for deploy pipelines
//! and self-registering instances.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use serde_json::json;

use crate::admin::convert::{millis, unix_ms};
use crate::admin::pb;
use crate::text::untrusted;

use super::Output;
use super::client::{Conn, EX_OK, EX_USAGE, Failure};
use super::parse::human;
use super::read::print_json;
use super::table::{self, Table};

const SET_HELP: &str = "Examples:
  teal fleet set web green 10.0.2.1:8080,10.0.2.2:8080
  teal fleet set web green 10.0.2.1:8080 10.0.2.2:8080 --weight 10.0.2.2:8080=200 --zone 10.0.2.1:8080=eu-west-1a
  teal fleet set web green --force        # empty it, even while it takes traffic";

/// `teal fleet ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// Replace a registered fleet's whole endpoint set, atomically.
    ///
    /// What a deploy pipeline runs once the new version is up on its
    /// instances: the fleet's endpoints become exactly these, in one
    /// EDS-only push (routes, clusters and listeners do not change). The
    /// fleet must be `endpoints: registered` in the config. Endpoints set
    /// this way stay until removed (no TTL). Emptying a fleet that takes
    /// traffic needs --force. Needs the admin token.
    #[command(after_long_help = SET_HELP)]
    Set {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// The endpoints, IP:PORT (IPv6 in brackets), comma or space
        /// separated; none empties the fleet.
        #[arg(value_name = "ADDR[,ADDR...]", value_delimiter = ',', value_parser = address)]
        addresses: Vec<SocketAddr>,
        /// `--weight` and `--zone`.
        #[command(flatten)]
        attrs: EndpointAttrs,
        /// Allow emptying a fleet that takes traffic.
        #[arg(long)]
        force: bool,
    },
    /// Add endpoints to a registered fleet (or change their weight and
    /// zone); the others stay.
    #[command(
        after_long_help = "Example:\n  teal fleet add web green 10.0.2.3:8080 --zone 10.0.2.3:8080=eu-west-1b"
    )]
    Add {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// The endpoints to add.
        #[arg(value_name = "ADDR", required = true, value_delimiter = ',', value_parser = address)]
        addresses: Vec<SocketAddr>,
        /// `--weight` and `--zone`.
        #[command(flatten)]
        attrs: EndpointAttrs,
    },
    /// Remove endpoints from a registered fleet; each must be there.
    ///
    /// Taking the last endpoint of a fleet that takes traffic is refused
    /// (exit 1) unless --force: flip its traffic away first.
    #[command(after_long_help = "Example:\n  teal fleet remove web blue 10.0.1.1:8080")]
    Remove {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// The endpoints to remove.
        #[arg(value_name = "ADDR", required = true, value_delimiter = ',', value_parser = address)]
        addresses: Vec<SocketAddr>,
        /// Allow taking the last endpoint of a fleet that takes traffic.
        #[arg(long)]
        force: bool,
    },
    /// Show a fleet's endpoints, where they come from, and recent changes.
    ///
    /// Works for every fleet; for a registered one it also shows when TTL
    /// registrations run out and who changed what. `-o json` prints
    /// {service, fleet, source, weight, retired, version, endpoints:
    /// [{address, weight, zone, expires_unix_ms}], changes: [{verb, actor,
    /// at_unix_ms, added, added_count, removed, removed_count}]}.
    #[command(
        after_long_help = "Examples:\n  teal fleet show web green\n  teal fleet show web green -o json"
    )]
    Show {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
}

/// `--weight` and `--zone` of endpoints being set or added.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EndpointAttrs {
    /// An endpoint's load-balancing weight, ADDR=WEIGHT (1 to 10000;
    /// default 1); repeat for more endpoints.
    #[arg(long = "weight", value_name = "ADDR=WEIGHT", value_parser = address_weight)]
    pub(crate) weights: Vec<(SocketAddr, u32)>,
    /// An endpoint's zone, ADDR=ZONE; repeat for more endpoints.
    #[arg(long = "zone", value_name = "ADDR=ZONE", value_parser = address_zone)]
    pub(crate) zones: Vec<(SocketAddr, String)>,
}

/// An endpoint address, as the config file writes it.
fn address(s: &str) -> Result<SocketAddr, String> {
    crate::config::parse_address(s.trim())
}

/// `ADDR=VALUE`, split at the last `=` (addresses have none).
fn address_and(s: &str) -> Result<(SocketAddr, &str), String> {
    let (a, v) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not ADDR=VALUE (e.g. 10.0.2.1:8080=200)"))?;
    Ok((address(a)?, v.trim()))
}

fn address_weight(s: &str) -> Result<(SocketAddr, u32), String> {
    let (a, w) = address_and(s)?;
    match w.parse::<u32>() {
        Ok(w) if (1..=10_000).contains(&w) => Ok((a, w)),
        _ => Err(format!(
            "weight of {a}: {w:?} is not a number from 1 to 10000"
        )),
    }
}

fn address_zone(s: &str) -> Result<(SocketAddr, String), String> {
    let (a, z) = address_and(s)?;
    if z.is_empty() {
        return Err(format!("zone of {a}: empty"));
    }
    Ok((a, z.to_owned()))
}

/// The server's rule for a zone (`check_endpoints`), checked before
/// anything is sent. Not in the flag's parser: clap would echo the value
/// raw in its message.
fn check_zone(a: &SocketAddr, z: &str) -> Result<(), Failure> {
    if z.len() > crate::config::MAX_ZONE_BYTES || !crate::text::is_plain(z) {
        return Err(Failure::new(
            EX_USAGE,
            format!(
                "zone of {a}: {} is not 1 to {} bytes of printable text (no control, \
                 invisible or bidi characters)",
                crate::text::untrusted(z),
                crate::config::MAX_ZONE_BYTES
            ),
        ));
    }
    Ok(())
}

/// The endpoints as a request carries them; a `--weight` or `--zone` for
/// an address not given is a usage error, not silently dropped.
fn endpoints(
    addresses: &[SocketAddr],
    attrs: &EndpointAttrs,
) -> Result<Vec<pb::RegisteredEndpoint>, Failure> {
    let stray = attrs
        .weights
        .iter()
        .map(|(a, _)| a)
        .chain(attrs.zones.iter().map(|(a, _)| a))
        .find(|a| !addresses.contains(a));
    if let Some(a) = stray {
        return Err(Failure::new(
            EX_USAGE,
            format!("--weight/--zone name {a}, which is not one of the endpoints given"),
        ));
    }
    for (a, z) in &attrs.zones {
        check_zone(a, z)?;
    }
    Ok(addresses
        .iter()
        .map(|a| pb::RegisteredEndpoint {
            address: a.to_string(),
            weight: attrs
                .weights
                .iter()
                .rev()
                .find(|(x, _)| x == a)
                .map_or(1, |(_, w)| *w),
            zone: attrs
                .zones
                .iter()
                .rev()
                .find(|(x, _)| x == a)
                .map(|(_, z)| z.clone()),
            expires_unix_ms: None,
        })
        .collect())
}

fn bare(addresses: &[SocketAddr]) -> Vec<pb::RegisteredEndpoint> {
    addresses
        .iter()
        .map(|a| pb::RegisteredEndpoint {
            address: a.to_string(),
            ..Default::default()
        })
        .collect()
}

/// Runs `teal fleet ...`.
pub(crate) async fn fleet(
    c: &mut Conn,
    cmd: FleetCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    match cmd {
        FleetCommand::Set {
            service,
            fleet,
            addresses,
            attrs,
            force,
        } => {
            let endpoints = endpoints(&addresses, &attrs)?;
            let r = change(service, fleet, pb::FleetChange::Set, endpoints, None, force);
            send(c, r, out).await
        }
        FleetCommand::Add {
            service,
            fleet,
            addresses,
            attrs,
        } => {
            let endpoints = endpoints(&addresses, &attrs)?;
            let r = change(service, fleet, pb::FleetChange::Add, endpoints, None, false);
            send(c, r, out).await
        }
        FleetCommand::Remove {
            service,
            fleet,
            addresses,
            force,
        } => {
            let r = change(
                service,
                fleet,
                pb::FleetChange::Remove,
                bare(&addresses),
                None,
                force,
            );
            send(c, r, out).await
        }
        FleetCommand::Show {
            service,
            fleet,
            output,
        } => show(c, service, fleet, output, out).await,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn register(
    c: &mut Conn,
    service: String,
    fleet: String,
    address: SocketAddr,
    ttl: Duration,
    weight: Option<u32>,
    zone: Option<String>,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    if let Some(z) = &zone {
        check_zone(&address, z)?;
    }
    let e = pb::RegisteredEndpoint {
        address: address.to_string(),
        weight: weight.unwrap_or(1),
        zone,
        expires_unix_ms: None,
    };
    let r = change(
        service,
        fleet,
        pb::FleetChange::Register,
        vec![e],
        Some(ttl),
        false,
    );
    send(c, r, out).await
}

pub(crate) async fn deregister(
    c: &mut Conn,
    service: String,
    fleet: String,
    addresses: Vec<SocketAddr>,
    force: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let r = change(
        service,
        fleet,
        pb::FleetChange::Deregister,
        bare(&addresses),
        None,
        force,
    );
    send(c, r, out).await
}

fn change(
    service: String,
    fleet: String,
    change: pb::FleetChange,
    endpoints: Vec<pb::RegisteredEndpoint>,
    ttl: Option<Duration>,
    force: bool,
) -> pb::ChangeFleetRequest {
    pb::ChangeFleetRequest {
        service,
        fleet,
        change: change as i32,
        endpoints,
        ttl_ms: ttl.map_or(0, millis),
        force,
    }
}

async fn send(c: &mut Conn, r: pb::ChangeFleetRequest, out: &mut dyn Write) -> Result<u8, Failure> {
    let call = c.client.change_fleet(c.signed(r.clone())).await;
    // Registrations are the leading replica's to save: a follower names
    // it, and the change is asked there once.
    let call = match c.leader_redirect(&call, &mut std::io::sink()).await? {
        Some(leader) => {
            *c = leader;
            c.client.change_fleet(c.signed(r)).await
        }
        None => call,
    };
    let f = call.map_err(|e| c.fail(&e))?.into_inner();
    let _ = writeln!(
        out,
        "{}/{}: {} endpoint{} ({}% of traffic), version {}",
        untrusted(&f.service),
        untrusted(&f.fleet),
        f.endpoints.len(),
        if f.endpoints.len() == 1 { "" } else { "s" },
        f.weight,
        untrusted(&f.version)
    );
    Ok(EX_OK)
}

async fn show(
    c: &mut Conn,
    service: String,
    fleet: String,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = c.request(pb::FleetRequest { service, fleet });
    let f = c
        .client
        .fleet(req)
        .await
        .map_err(|e| c.fail(&e))?
        .into_inner();
    match output {
        Output::Json => print_json(out, &fleet_json(&f)),
        Output::Table => {
            let _ = writeln!(
                out,
                "{}/{}: endpoints from the {}, {}% of traffic{}, version {}",
                untrusted(&f.service),
                untrusted(&f.fleet),
                untrusted(&f.source),
                f.weight,
                if f.retired { ", retired" } else { "" },
                untrusted(&f.version)
            );
            let now = unix_ms(SystemTime::now());
            let mut t = Table::new(&["ADDRESS", "WEIGHT", "ZONE", "EXPIRES"]);
            for e in &f.endpoints {
                t.row(vec![
                    e.address.clone(),
                    e.weight.to_string(),
                    e.zone.clone().unwrap_or_else(|| "-".into()),
                    e.expires_unix_ms.map_or("-".into(), |at| {
                        let left = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
                        format!("in {}", human(Duration::from_millis(left)))
                    }),
                ]);
            }
            if t.is_empty() {
                let _ = writeln!(out, "no endpoints: no traffic can go to this fleet");
            } else {
                let _ = write!(out, "{}", t.render());
            }
            if !f.changes.is_empty() {
                let _ = writeln!(out, "\nrecent changes:");
                let mut t = Table::new(&["AT", "VERB", "ACTOR", "ADDED", "REMOVED"]);
                let list = |a: &[String], n: u64| {
                    let mut s = a.join(",");
                    if n > a.len() as u64 {
                        s.push_str(&format!(" (+{} more)", n - a.len() as u64));
                    }
                    if s.is_empty() { "-".into() } else { s }
                };
                for ch in &f.changes {
                    t.row(vec![
                        table::utc(ch.at_unix_ms),
                        ch.verb.clone(),
                        ch.actor.clone(),
                        list(&ch.added, ch.added_count),
                        list(&ch.removed, ch.removed_count),
                    ]);
                }
                let _ = write!(out, "{}", t.render());
            }
        }
    }
    Ok(EX_OK)
}

/// `teal fleet show -o json`.
fn fleet_json(f: &pb::FleetResponse) -> serde_json::Value {
    json!({
        "service": f.service,
        "fleet": f.fleet,
        "source": f.source,
        "weight": f.weight,
        "retired": f.retired,
        "version": f.version,
        "endpoints": f.endpoints.iter().map(|e| json!({
            "address": e.address,
            "weight": e.weight,
            "zone": e.zone,
            "expires_unix_ms": e.expires_unix_ms,
        })).collect::<Vec<_>>(),
        "changes": f.changes.iter().map(|c| json!({
            "verb": c.verb,
            "actor": c.actor,
            "at_unix_ms": c.at_unix_ms,
            "added": c.added,
            "added_count": c.added_count,
            "removed": c.removed,
            "removed_count": c.removed_count,
        })).collect::<Vec<_>>(),
    })
}
