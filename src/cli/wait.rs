//! `teal wait drained SERVICE FLEET`: waits until every proxy reports no
//! request in progress to a fleet with no weight, so a pipeline scales it
//! to zero on that signal rather than after a guessed delay.
//!
//! It asks for the service's status every [`POLL`] (the server judges the
//! drain from the proxies' load reports, see `crate::rollout::drain`), says
//! on stderr what still holds it whenever that changes, and exits 0 once
//! the fleet is drained; 1 when it is not within `--timeout` (naming the
//! proxies still draining and those not reporting), or when the service
//! or fleet is unknown or the fleet still takes traffic; 130 on Ctrl-C.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use crate::admin::pb;
use crate::text::untrusted;

use super::client::{Conn, EX_INTERRUPTED, EX_OK, EX_REFUSED, EX_SOFTWARE, Failure};
use super::parse;
use super::table::CELL_MAX_CHARS;

/// How often the status is asked for: well under the proxies' default
/// report interval (1 s), so the wait ends soon after the second idle
/// report.
const POLL: Duration = Duration::from_millis(500);

/// What `teal wait` waits for.
#[derive(Debug, Subcommand)]
pub(crate) enum WaitCommand {
    /// Wait until no proxy has a request in progress to a fleet.
    ///
    /// For a fleet with no weight (flipped away from, or retired): exits 0
    /// once every connected proxy of the groups routing the service has
    /// reported no request in progress to it for two report intervals in
    /// a row (LRS, see `teal status`). A proxy that reports no load is
    /// never taken as drained. Exits 1, naming the proxies still draining
    /// and those not reporting, when the fleet is not drained within
    /// --timeout; 1 at once for an unknown service or fleet, or a fleet
    /// that still takes traffic. Progress goes to stderr.
    #[command(after_long_help = "Example (a pipeline, after the flip):
  teal wait drained web blue --timeout 10m && scale-to-zero web-blue")]
    Drained {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// How long to wait (1s to 24h).
        #[arg(long, default_value = "5m", value_parser = parse::wait)]
        timeout: Duration,
    },
}

/// Runs one `teal wait` command.
pub(crate) async fn wait(
    conn: &mut Conn,
    cmd: WaitCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    match cmd {
        WaitCommand::Drained {
            service,
            fleet,
            timeout,
        } => drained(conn, &service, &fleet, timeout, out, err).await,
    }
}

async fn drained(
    conn: &mut Conn,
    service: &str,
    fleet: &str,
    timeout: Duration,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let what = format!(
        "{} {}",
        untrusted(service).max_chars(CELL_MAX_CHARS),
        untrusted(fleet).max_chars(CELL_MAX_CHARS)
    );
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut last_line = String::new();
    loop {
        let request = conn.request(pb::StatusRequest {
            service: Some(service.to_owned()),
        });
        let status = conn
            .client
            .status(request)
            .await
            .map_err(|e| conn.fail(&e))?
            .into_inner();
        let drain = fleet_drain(&status, service, fleet)?;
        if drain.drained {
            let _ = writeln!(out, "{what}: drained ({})", drain_text(&drain));
            return Ok(EX_OK);
        }
        let line = drain_text(&drain);
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::new(
                EX_REFUSED,
                format!(
                    "{what} did not drain within {}: {line}",
                    parse::human(timeout)
                ),
            ));
        }
        if line != last_line {
            let _ = writeln!(err, "wait drained {what}: {line}");
            last_line = line;
        }
        tokio::select! {
            // Ctrl-C first, so a Ctrl-C right after a line is never lost
            // to a poll.
            biased;
            _ = &mut interrupted => {
                let _ = writeln!(err, "\nteal: stopped waiting for {what} to drain");
                return Ok(EX_INTERRUPTED);
            }
            () = tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())) => {}
        }
    }
}

/// The drain of `fleet` in `status`, or why there is none to wait for.
fn fleet_drain(
    status: &pb::StatusResponse,
    service: &str,
    fleet: &str,
) -> Result<pb::FleetDrain, Failure> {
    let refused = |why: String| Failure::new(EX_REFUSED, format!("refused: {why}"));
    let Some(svc) = status.services.iter().find(|s| s.name == service) else {
        return Err(refused(format!(
            "unknown service \"{}\"",
            untrusted(service)
        )));
    };
    let weight = svc
        .weights
        .as_ref()
        .and_then(|w| w.weights.get(fleet))
        .copied();
    let known = weight.is_some() || svc.retired.iter().any(|f| f == fleet);
    if !known {
        return Err(refused(format!(
            "service \"{}\" has no fleet \"{}\"",
            untrusted(service),
            untrusted(fleet)
        )));
    }
    if let Some(w) = weight.filter(|w| *w > 0) {
        return Err(refused(format!(
            "fleet \"{}\" takes {w}% of \"{}\"'s traffic: it drains once it takes none \
             (teal flip or teal shift away from it first)",
            untrusted(fleet),
            untrusted(service)
        )));
    }
    svc.drains
        .iter()
        .find(|d| d.fleet == fleet)
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                EX_SOFTWARE,
                "the server does not report whether fleets are drained (a teal older than \
                 this CLI?)",
            )
        })
}

/// How many proxy names one drain line shows of each kind.
const NAMES_SHOWN: usize = 5;

/// What stands between a fleet and drained, escaped and cut:
/// `3 of 5 proxies idle; 3 requests in flight on edge-1 (2), edge-2 (1);
/// no load reports from edge-9`.
pub(crate) fn drain_text(d: &pb::FleetDrain) -> String {
    let name = |n: &str| untrusted(n).max_chars(CELL_MAX_CHARS).to_string();
    let more = |all: u32, shown: usize| {
        let rest = (all as usize).saturating_sub(shown);
        if rest > 0 {
            format!(" and {rest} more")
        } else {
            String::new()
        }
    };
    if d.proxies == 0 {
        return "no connected proxy routes the service".to_owned();
    }
    let mut text = format!("{} of {} proxies idle", d.idle, d.proxies);
    let draining: Vec<String> = d
        .draining
        .iter()
        .take(NAMES_SHOWN)
        .map(|p| format!("{} ({})", name(&p.proxy), p.in_flight))
        .collect();
    if d.draining_count > 0 {
        let plural = if d.in_flight == 1 { "" } else { "s" };
        text.push_str(&format!(
            "; {} request{plural} in flight on {}{}",
            d.in_flight,
            draining.join(", "),
            more(d.draining_count, draining.len())
        ));
    }
    let silent: Vec<String> = d
        .not_reporting
        .iter()
        .take(NAMES_SHOWN)
        .map(|p| name(p))
        .collect();
    if d.not_reporting_count > 0 {
        text.push_str(&format!(
            "; no load reports from {}{}",
            silent.join(", "),
            more(d.not_reporting_count, silent.len())
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        weights: &[(&str, u32)],
        retired: &[&str],
        drains: Vec<pb::FleetDrain>,
    ) -> pb::StatusResponse {
        pb::StatusResponse {
            services: vec![pb::ServiceStatus {
                name: "web".into(),
                weights: Some(pb::Split {
                    weights: weights.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect(),
                }),
                retired: retired.iter().map(|f| (*f).to_owned()).collect(),
                drains,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn draining_blue() -> pb::FleetDrain {
        pb::FleetDrain {
            fleet: "blue".into(),
            drained: false,
            proxies: 9,
            idle: 1,
            draining: (0..6)
                .map(|i| pb::DrainingProxy {
                    proxy: format!("edge-{i}"),
                    in_flight: 1,
                })
                .collect(),
            draining_count: 7,
            in_flight: 7,
            not_reporting: vec!["side\u{1b}[31m".into()],
            not_reporting_count: 1,
        }
    }

    #[test]
    fn only_a_known_fleet_without_traffic_is_waited_for() {
        let s = status(&[("blue", 0), ("green", 100)], &[], vec![draining_blue()]);
        assert_eq!(fleet_drain(&s, "web", "blue").expect("blue").idle, 1);
        let busy = fleet_drain(&s, "web", "green").expect_err("takes traffic");
        assert_eq!(busy.code, EX_REFUSED);
        assert!(busy.message.contains("takes 100%"), "{busy:?}");
        let red = fleet_drain(&s, "web", "red").expect_err("no such fleet");
        assert!(red.message.contains("no fleet \"red\""), "{red:?}");
        assert!(fleet_drain(&s, "api", "blue").is_err());
        // A retired fleet is still waited for: requests in flight when its
        // endpoints went may not have ended.
        let retired = status(&[("green", 100)], &["blue"], vec![draining_blue()]);
        assert!(fleet_drain(&retired, "web", "blue").is_ok());
        let old_server = status(&[("blue", 0), ("green", 100)], &[], Vec::new());
        assert_eq!(
            fleet_drain(&old_server, "web", "blue")
                .expect_err("no drains")
                .code,
            EX_SOFTWARE
        );
    }

    #[test]
    fn a_drain_line_names_a_few_proxies_escaped_and_counts_the_rest() {
        assert_eq!(
            drain_text(&draining_blue()),
            "1 of 9 proxies idle; 7 requests in flight on edge-0 (1), edge-1 (1), edge-2 (1), \
             edge-3 (1), edge-4 (1) and 2 more; no load reports from side\\x1b[31m"
        );
        let one = pb::FleetDrain {
            proxies: 2,
            idle: 1,
            draining: vec![pb::DrainingProxy {
                proxy: "edge-1".into(),
                in_flight: 1,
            }],
            draining_count: 1,
            in_flight: 1,
            ..Default::default()
        };
        assert_eq!(
            drain_text(&one),
            "1 of 2 proxies idle; 1 request in flight on edge-1 (1)"
        );
        let none = pb::FleetDrain {
            drained: true,
            ..Default::default()
        };
        assert_eq!(drain_text(&none), "no connected proxy routes the service");
    }
}
