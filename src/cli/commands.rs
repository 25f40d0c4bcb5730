//! The admin commands as clap sees them, with the help that teaches the
//! blue/green flow, and [`run_admin`], which runs one.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use crate::admin::convert::millis;
use crate::admin::pb;

use super::client::{self, Conn, Failure, Target};
use super::ops;
use super::{Output, parse, read};

/// An endpoint address, as the config file writes it.
fn fleet_address(s: &str) -> Result<std::net::SocketAddr, String> {
    crate::config::parse_address(s.trim())
}

/// `--steps` as clap stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Steps(pub(crate) Vec<u32>);

fn steps_arg(s: &str) -> Result<Steps, String> {
    parse::steps(s).map(Steps)
}

/// The commands that talk to a running teal over its admin API.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Show each service's live fleet, weights and rollout state.
    ///
    /// The first thing to look at before and after a change: the live fleet
    /// and the one rollback would go back to, the current weights and
    /// version, how the last change went (and how long proxies took to
    /// converge), any flip or shift in progress, a pending retirement,
    /// whether each fleet with no weight is drained (no proxy reports a
    /// request in flight to it), and the cost window (how long both fleets
    /// have been up).
    ///
    /// `-o json` prints stable field names: {version, services: [{name,
    /// live, previous, weights, retired, retirement, drains,
    /// both_fleets_since_unix_ms, both_fleets_for_ms, last_change,
    /// in_progress}]}.
    #[command(
        after_long_help = "Examples:\n  teal status\n  teal status web --watch\n  teal status web -o json"
    )]
    Status {
        /// Only this service.
        service: Option<String>,
        /// Refresh every 2 seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// List connected proxies and whether each has applied teal's config.
    ///
    /// Per proxy and type (CDS, EDS, LDS, RDS): SYNCED (it ACKed the version
    /// its group should be on), STALE (it has not yet), NACKED (it rejected
    /// the last version; Envoy's error is printed below the table) or NOT
    /// SENT. A flip only completes once every proxy in the affected groups
    /// is SYNCED.
    #[command(after_long_help = "Examples:\n  teal proxies\n  teal proxies -o json")]
    Proxies {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Send all of a service's traffic to one fleet, in one confirmed push.
    ///
    /// The blue/green switch. teal checks that every proxy holds both fleets'
    /// clusters and endpoints, runs the target fleet's checks, pushes one
    /// version with the new weights, waits for every proxy to ACK it, and
    /// runs the checks again. Any NACK, timeout or failed check puts every
    /// proxy back (exit 2). Progress goes to stderr; Ctrl-C stops following
    /// but not the flip.
    #[command(
        after_long_help = "Examples:\n  teal flip web                 # to the other fleet\n  teal flip web --to green --timeout 2m"
    )]
    Flip {
        /// The service.
        service: String,
        /// The fleet to switch to (default: the other of two fleets).
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for every proxy to ACK (e.g. 30s, 2m; 1s to 1h;
        /// default: the server's, a minute).
        #[arg(long, value_parser = parse::timeout)]
        timeout: Option<Duration>,
        /// Do not run the checks before and after.
        #[arg(long)]
        skip_checks: bool,
    },
    /// Move traffic gradually: a canary, then more, with checks between.
    ///
    /// Either one split (`--weight`, the remainder going to the other fleet)
    /// or rising steps of the target fleet's weight (`--steps`), each a
    /// confirmed push followed by `--interval` of watching and the checks.
    /// A failing step rolls the service back to where it started (exit 2).
    #[command(
        after_long_help = "Examples:\n  teal shift web --weight green=10\n  teal shift web --weight green=50 --weight blue=50\n  teal shift web --steps 10,50,100 --interval 5m"
    )]
    Shift {
        /// The service.
        service: String,
        /// A fleet's weight, FLEET=PERCENT; repeat for more fleets.
        #[arg(long = "weight", value_name = "FLEET=PERCENT", value_parser = parse::weight,
              required_unless_present = "steps", conflicts_with = "steps")]
        weights: Vec<(String, u32)>,
        /// The target fleet's weight at each step, rising (e.g. 10,50,100).
        #[arg(long, value_name = "PERCENTS", value_parser = steps_arg)]
        steps: Option<Steps>,
        /// The fleet gaining traffic with --steps (default: the one not live).
        #[arg(long, requires = "steps")]
        to: Option<String>,
        /// Pause between steps (0s to 24h).
        #[arg(long, default_value = "30s", value_parser = parse::interval)]
        interval: Duration,
        /// How long each step waits for every proxy to ACK (1s to 1h;
        /// default: the server's, a minute).
        #[arg(long, value_parser = parse::timeout)]
        timeout: Option<Duration>,
        /// Do not run the checks.
        #[arg(long)]
        skip_checks: bool,
    },
    /// Send traffic back to the rollback point: the weights before the last
    /// change that is still in effect.
    ///
    /// The undo button. `teal status SERVICE` shows where it goes. A failed
    /// or refused operation changed nothing, so it does not move the
    /// rollback point; a completed retirement of the fleet it would go back
    /// to removes it. A rollback is never undone by teal: if a proxy does
    /// not confirm it in time, it stays in effect and exits 4 naming the
    /// proxies.
    #[command(after_long_help = "Examples:\n  teal rollback web\n  \
        teal rollback web --skip-checks   # the old fleet's checks fail, go back anyway")]
    Rollback {
        /// The service.
        service: String,
        /// How long to wait for every proxy to ACK (1s to 1h; default: the
        /// server's, a minute).
        #[arg(long, value_parser = parse::timeout)]
        timeout: Option<Duration>,
        /// Do not run the checks of the fleet getting traffic back.
        #[arg(long)]
        skip_checks: bool,
    },
    /// Retire the old fleet: drop its weight and endpoints, after a delay
    /// and once no proxy has a request in flight to it.
    ///
    /// The last step once the new fleet has proven itself; it ends the cost
    /// window of running both. After --after, teal waits until every proxy
    /// routing the service reports no request in progress to the fleet for
    /// two report intervals in a row (the proxies' load reports, LRS), so
    /// a long upload or a slow query ends before the endpoints go; progress
    /// names the proxies still draining and their requests in flight. A
    /// proxy that reports no load is never taken as drained. Not drained
    /// within --drain-timeout: refused (exit 1), nothing retired. Until the
    /// endpoints go, `teal rollback` still works and `teal abort` cancels
    /// the retirement.
    #[command(after_long_help = "Examples:\n  teal retire web blue --after 30m\n  \
        teal retire web blue --drain-timeout 0s   # do not wait for requests in flight")]
    Retire {
        /// The service.
        service: String,
        /// The fleet to retire (never the live one).
        fleet: String,
        /// How long to wait first (0s to 720h).
        #[arg(long, default_value = "0s", value_parser = parse::after)]
        after: Duration,
        /// Then how long to wait for the fleet to drain (0s to 24h;
        /// default: the server's, 5 minutes). 0s retires without waiting
        /// for requests in flight, as teal did before it read load reports.
        #[arg(long, value_parser = parse::drain_timeout)]
        drain_timeout: Option<Duration>,
    },
    /// Stop an operation.
    ///
    /// Before its step is committed (waiting, preparing, checking) it ends
    /// there; while its step is being confirmed, that step is undone.
    /// Earlier steps of a shift stay; `teal rollback` undoes them. A
    /// rollback, or an undo in progress, cannot be stopped: they end on
    /// their own.
    #[command(after_long_help = "Example:\n  teal abort 42      # the id from `teal status`")]
    Abort {
        /// The operation's id.
        id: u64,
    },
    /// Stop waiting for a proxy: flips, shifts and rollbacks no longer
    /// wait for its ACK, and its NACKs no longer roll them back.
    ///
    /// The proxy keeps its stream and receives every version. For a proxy
    /// that is stuck or broken, so it does not block every release until
    /// it is fixed. Durable (survives restarts) and fleet-wide: with
    /// replicas the leader saves it (a replica that does not lead names
    /// the leader, asked there once) and whichever replica leads does not
    /// wait for the proxy. Shown in `teal status` and `teal proxies`
    /// (CORDONED). Needs the admin token.
    #[command(after_long_help = "Example:\n  teal cordon edge-17 --reason 'disk full, INC-4411'")]
    Cordon {
        /// The proxy's node id (`node.id`), as `teal proxies` shows it.
        node_id: String,
        /// Why, for whoever looks next.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Wait for a proxy again: lifts `teal cordon`.
    #[command(after_long_help = "Example:\n  teal uncordon edge-17")]
    Uncordon {
        /// The proxy's node id.
        node_id: String,
    },
    /// Set, add, remove or show the endpoints of a fleet.
    ///
    /// For fleets whose endpoints are `registered` in the config: a deploy
    /// pipeline sets the new fleet's endpoints once its instances are up,
    /// then flips. Every change is one EDS-only push, saved durably and
    /// recorded with who made it (see `teal fleet show`).
    #[command(
        subcommand,
        after_long_help = "A release from a pipeline:
  teal fleet set web green 10.0.2.1:8080,10.0.2.2:8080
  teal verify web green
  teal flip web --to green
  teal retire web blue --after 10m
  teal fleet set web blue           # after the retirement: forget blue's instances"
    )]
    Fleet(super::fleet::FleetCommand),
    /// Register one instance in a registered fleet, for a while.
    ///
    /// For instances that register themselves: the endpoint leaves the
    /// fleet (and EDS) when --ttl runs out, unless renewed by running
    /// `teal register` again (or the Heartbeat RPC) before then. Run it
    /// every ttl/3 or so. Needs the admin token.
    #[command(after_long_help = "Example (in the instance's start script):
  while sleep 10; do teal register web green 10.0.2.7:8080 --ttl 30s; done")]
    Register {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// The instance's IP:PORT.
        #[arg(value_parser = fleet_address)]
        address: std::net::SocketAddr,
        /// How long the registration lasts without renewal (1s up to the
        /// server's --max-register-ttl, an hour by default).
        #[arg(long, value_parser = parse::ttl)]
        ttl: Duration,
        /// Load-balancing weight (1 to 10000; default 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        weight: Option<u32>,
        /// Zone.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Take instances out of a registered fleet now (an instance shutting
    /// down); not being there is not an error.
    ///
    /// Taking the last endpoint of a fleet that takes traffic is refused
    /// (exit 1) unless --force.
    #[command(after_long_help = "Example:
  teal deregister web green 10.0.2.7:8080")]
    Deregister {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// The instances' IP:PORT.
        #[arg(required = true, value_delimiter = ',', value_parser = fleet_address)]
        addresses: Vec<std::net::SocketAddr>,
        /// Allow taking the last endpoint of a fleet that takes traffic.
        #[arg(long)]
        force: bool,
    },
    /// Wait for what the proxies report: `teal wait drained SERVICE FLEET`.
    #[command(subcommand)]
    Wait(super::wait::WaitCommand),
    /// Follow an operation already running, until its outcome.
    #[command(after_long_help = "Example:\n  teal follow 42")]
    Follow {
        /// The operation's id.
        id: u64,
    },
    /// Run a service's checks against one fleet now; changes nothing.
    ///
    /// Use it on the new fleet before flipping. Exits 1 if any check fails.
    #[command(after_long_help = "Example:\n  teal verify web green")]
    Verify {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// List a service's past changes, newest first.
    ///
    /// Who changed what, when, the version that carried it, how it ended
    /// and how long proxies took to converge.
    #[command(after_long_help = "Examples:\n  teal history web\n  teal history web -o json")]
    History {
        /// The service.
        service: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Connects and runs one admin command; returns the exit code.
pub(crate) async fn run_admin(
    target: &Target,
    cmd: AdminCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let result = async {
        let mut conn = Conn::connect(target).await?;
        run(&mut conn, cmd, out, err).await
    }
    .await;
    result.unwrap_or_else(|f: Failure| f.report(err))
}

/// Runs one admin command on a connection.
async fn run(
    c: &mut Conn,
    cmd: AdminCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    match cmd {
        AdminCommand::Status {
            service,
            watch,
            output,
        } => read::status(c, service, watch, output, out).await,
        AdminCommand::Proxies { output } => super::proxies::proxies(c, output, out).await,
        AdminCommand::Verify {
            service,
            fleet,
            output,
        } => read::verify(c, service, fleet, output, out).await,
        AdminCommand::History { service, output } => read::history(c, service, output, out).await,
        AdminCommand::Flip {
            service,
            to,
            timeout,
            skip_checks,
        } => {
            let r = pb::FlipRequest {
                service,
                to,
                skip_checks,
                timeout_ms: timeout.map_or(0, millis),
            };
            ops::flip(c, r, out, err).await
        }
        AdminCommand::Shift {
            service,
            weights,
            steps,
            to,
            interval,
            timeout,
            skip_checks,
        } => {
            check_weights(&weights)?;
            let r = pb::ShiftRequest {
                service,
                steps: Vec::new(),
                weights: weights.into_iter().collect(),
                percents: steps.map(|Steps(p)| p).unwrap_or_default(),
                to,
                interval_ms: millis(interval),
                skip_checks,
                timeout_ms: timeout.map_or(0, millis),
            };
            ops::shift(c, r, out, err).await
        }
        AdminCommand::Rollback {
            service,
            timeout,
            skip_checks,
        } => {
            let r = pb::RollbackRequest {
                service,
                timeout_ms: timeout.map_or(0, millis),
                skip_checks,
            };
            ops::rollback(c, r, out, err).await
        }
        AdminCommand::Retire {
            service,
            fleet,
            after,
            drain_timeout,
        } => {
            let r = pb::RetireRequest {
                service,
                fleet,
                after_ms: millis(after),
                drain_timeout_ms: drain_timeout.map(millis),
            };
            ops::retire(c, r, out, err).await
        }
        AdminCommand::Abort { id } => ops::abort(c, id, out).await,
        AdminCommand::Cordon { node_id, reason } => ops::cordon(c, node_id, reason, out, err).await,
        AdminCommand::Uncordon { node_id } => ops::uncordon(c, node_id, out, err).await,
        AdminCommand::Follow { id } => ops::follow(c, id, out, err).await,
        AdminCommand::Wait(cmd) => super::wait::wait(c, cmd, out, err).await,
        AdminCommand::Fleet(cmd) => super::fleet::fleet(c, cmd, out).await,
        AdminCommand::Register {
            service,
            fleet,
            address,
            ttl,
            weight,
            zone,
        } => super::fleet::register(c, service, fleet, address, ttl, weight, zone, out).await,
        AdminCommand::Deregister {
            service,
            fleet,
            addresses,
            force,
        } => super::fleet::deregister(c, service, fleet, addresses, force, out).await,
    }
}

/// Refuses `--weight`s that name a fleet twice or sum past 100 before
/// anything is sent (the server checks the split whole).
fn check_weights(weights: &[(String, u32)]) -> Result<(), Failure> {
    if let Some((fleet, _)) = weights
        .iter()
        .enumerate()
        .find(|(i, (f, _))| weights[..*i].iter().any(|(g, _)| g == f))
        .map(|(_, w)| w)
    {
        return Err(Failure::new(
            client::EX_USAGE,
            format!("--weight: fleet {fleet:?} given twice"),
        ));
    }
    let sum: u32 = weights.iter().map(|(_, w)| *w).sum();
    if sum > 100 {
        return Err(Failure::new(
            client::EX_USAGE,
            format!("--weight: weights sum to {sum}, more than 100"),
        ));
    }
    Ok(())
}
