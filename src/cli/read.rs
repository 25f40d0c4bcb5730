//! The read commands: `status`, `proxies`, `verify`, `history`. They need
//! no token.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::admin::convert::{outcome_name, phase_name, unix_ms};
use crate::admin::{json, pb};

use super::client::{Conn, EX_OK, EX_REFUSED, Failure};
use super::parse::human;
use super::table::{self, Table};
use crate::text::untrusted;

/// How read commands print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON with stable field names (listed in docs/cli-and-admin-api.md).
    Json,
}

pub(super) fn print_json(out: &mut dyn Write, v: &serde_json::Value) {
    let text =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let _ = writeln!(out, "{}", json_for_terminal(&text));
}

/// `json` with the characters a terminal acts on written as `\uXXXX`.
/// serde_json escapes C0 controls but passes DEL, C1 controls, line
/// separators and bidi marks through; they can only occur inside strings
/// (JSON's own syntax is ASCII), where the escape means the same value.
pub(crate) fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        // Below DEL: serde_json's own escapes in strings, and the layout's
        // newlines outside them.
        if u32::from(c) >= 0x7f && crate::text::needs_escape(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn ago(unix: i64, now: i64) -> String {
    human(Duration::from_millis(
        u64::try_from(now - unix).unwrap_or(0),
    ))
}

/// `teal status`: prints once, or every 2 s with `watch` until Ctrl-C.
pub(crate) async fn status(
    conn: &mut Conn,
    service: Option<String>,
    watch: bool,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let clear = watch && output == Output::Table && std::io::stdout().is_terminal();
    loop {
        let req = conn.request(pb::StatusRequest {
            service: service.clone(),
        });
        let s = conn
            .client
            .status(req)
            .await
            .map_err(|e| conn.fail(&e))?
            .into_inner();
        if clear {
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        match output {
            Output::Json => print_json(out, &json::status(&s, Some(SystemTime::now()))),
            Output::Table => {
                let _ = write!(out, "{}", status_text(&s, unix_ms(SystemTime::now())));
            }
        }
        let _ = out.flush();
        if !watch {
            return Ok(EX_OK);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(EX_OK),
        }
        if !clear {
            let _ = writeln!(out);
        }
    }
}

/// The status as text: a table of services, then one block per service.
pub(crate) fn status_text(s: &pb::StatusResponse, now: i64) -> String {
    let mut t = Table::new(&[
        "SERVICE",
        "LIVE",
        "WEIGHTS",
        "BOTH FLEETS UP",
        "IN PROGRESS",
    ]);
    for svc in &s.services {
        t.row(vec![
            svc.name.clone(),
            if svc.live.is_empty() {
                "-".to_owned()
            } else {
                svc.live.clone()
            },
            table::split(&svc.weights.clone().unwrap_or_default().weights),
            svc.both_fleets_since_unix_ms
                .map_or("-".into(), |t| ago(t, now)),
            svc.in_progress.as_ref().map_or("-".into(), |p| {
                format!("{} #{} ({})", p.verb, p.id, phase_name(p.phase()))
            }),
        ]);
    }
    let mut text = format!("version {}\n{}", untrusted(&s.version), t.render());
    for svc in &s.services {
        service_details(&mut text, svc, now);
    }
    replicas_text(&mut text, &s.replicas, now);
    cordons_text(&mut text, &s.cordons, now);
    text
}

/// One service's lines under the table of `teal status`.
fn service_details(text: &mut String, svc: &pb::ServiceStatus, now: i64) {
    text.push_str(&format!("\n{}:\n", untrusted(&svc.name)));
    let live = if svc.live.is_empty() {
        "none (no fleet has more than half of the traffic)".to_owned()
    } else {
        untrusted(&svc.live).to_string()
    };
    text.push_str(&format!("  live:        {live}\n"));
    text.push_str(&super::traffic::measured_lines(svc));
    let rollback = svc.rollback_to.as_ref().map_or_else(
        || "nothing to go back to".to_owned(),
        |r| table::split(&r.weights),
    );
    text.push_str(&format!("  rollback to: {rollback}\n"));
    if let Some(h) = &svc.last_change {
        text.push_str(&format!("  last change: {}\n", change_line(h, now)));
    }
    if let Some(p) = &svc.in_progress {
        let line = super::progress::progress_line(p);
        text.push_str(&format!(
            "  in progress: {} #{}: {line}\n",
            untrusted(&p.verb),
            p.id
        ));
    }
    if let Some(r) = &svc.retirement {
        let when = if r.at_unix_ms > now {
            format!("in {}", ago(now, r.at_unix_ms))
        } else {
            "now".to_owned()
        };
        text.push_str(&format!(
            "  retiring:    {} {when} ({}); a rollback until then cancels it\n",
            untrusted(&r.fleet),
            table::utc(r.at_unix_ms)
        ));
    }
    for d in &svc.drains {
        // A retired fleet that drained long ago is no news.
        let retired = svc.retired.contains(&d.fleet);
        if d.drained && retired {
            continue;
        }
        let fleet = untrusted(&d.fleet);
        let line = if d.drained {
            format!(
                "  drained:     {fleet}: no request in flight ({})",
                super::wait::drain_text(d)
            )
        } else {
            format!("  draining:    {fleet}: {}", super::wait::drain_text(d))
        };
        text.push_str(&line);
        text.push('\n');
    }
    if let Some(since) = svc.both_fleets_since_unix_ms {
        text.push_str(&format!(
            "  cost window: more than one fleet up for {} (since {})\n",
            ago(since, now),
            table::utc(since)
        ));
    }
    if !svc.retired.is_empty() {
        text.push_str(&format!(
            "  retired:     {}\n",
            untrusted(&svc.retired.join(", "))
        ));
    }
}

/// The replicas sharing the store, if any.
fn replicas_text(text: &mut String, replicas: &[pb::Replica], now: i64) {
    if !replicas.is_empty() {
        text.push_str("\nreplicas:\n");
        for r in replicas {
            let role = if r.leader { "leader" } else { "follower" };
            let why = if r.ineligible.is_empty() {
                String::new()
            } else {
                format!("; may not lead: {}", untrusted(&r.ineligible))
            };
            text.push_str(&format!(
                "  {} {role:<8} heartbeat {} ago, config {}, {} proxies{why}\n",
                untrusted(&r.admin).max_chars(table::CELL_MAX_CHARS),
                ago(r.heartbeat_unix_ms, now),
                untrusted(&r.config_digest),
                r.proxies
            ));
        }
    }
}

/// The cordoned proxies, if any.
fn cordons_text(text: &mut String, cordons: &[pb::CordonInfo], now: i64) {
    if !cordons.is_empty() {
        text.push_str("\ncordoned proxies (operations do not wait for them):\n");
        for c in cordons {
            let reason = if c.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", untrusted(&c.reason))
            };
            text.push_str(&format!(
                "  {} by {}, {} ago{reason}\n",
                untrusted(&c.node_id).max_chars(table::CELL_MAX_CHARS),
                untrusted(&c.actor),
                ago(c.since_unix_ms, now)
            ));
        }
    }
}

fn change_line(h: &pb::HistoryEntry, now: i64) -> String {
    let outcome = h.outcome.as_ref();
    let name = outcome.map_or("unknown", |o| outcome_name(o.kind()));
    let reason = outcome
        .filter(|o| !o.reason.is_empty())
        .map_or(String::new(), |o| format!(" ({})", untrusted(&o.reason)));
    let converged = h.convergence_ms.map_or(String::new(), |ms| {
        format!(", converged in {}", human(Duration::from_millis(ms)))
    });
    format!(
        "{} #{} by {}, {} ago: {} -> {}, {name}{reason}{converged}",
        untrusted(&h.verb),
        h.id,
        untrusted(&h.actor),
        ago(h.finished_unix_ms, now),
        table::split(&h.from.clone().unwrap_or_default().weights),
        to_cell(h),
    )
}

/// Where a change left the weights, and, when that is not where it meant
/// to go (refused, rolled back, aborted part way), where it meant to go.
fn to_cell(h: &pb::HistoryEntry) -> String {
    let to = h.to.clone().unwrap_or_default().weights;
    match &h.target {
        Some(target) if target.weights != to => format!(
            "{} (meant {})",
            table::split(&to),
            table::split(&target.weights)
        ),
        _ => table::split(&to),
    }
}

/// `teal verify`: exit 0 when every check passed, 1 otherwise.
pub(crate) async fn verify(
    conn: &mut Conn,
    service: String,
    fleet: String,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(pb::VerifyRequest {
        service: service.clone(),
        fleet: fleet.clone(),
    });
    let r = conn
        .client
        .verify(req)
        .await
        .map_err(|e| conn.fail(&e))?
        .into_inner();
    let ok = r.checks.iter().all(|c| c.ok);
    match output {
        Output::Json => print_json(
            out,
            &json!({
                "service": service, "fleet": fleet, "ok": ok,
                "checks": r.checks.iter().map(json::check).collect::<Vec<_>>(),
            }),
        ),
        Output::Table => {
            let mut t = Table::new(&["CHECK", "ENDPOINT", "RESULT", "DETAIL"]);
            for c in &r.checks {
                let result = if c.ok { "ok" } else { "FAILED" };
                t.row(vec![
                    c.check.clone(),
                    c.endpoint.clone(),
                    result.into(),
                    c.detail.clone(),
                ]);
            }
            let verdict = if r.checks.is_empty() {
                "no checks configured"
            } else if ok {
                "all checks pass"
            } else {
                "some checks FAIL"
            };
            let _ = writeln!(
                out,
                "{}{} {}: {verdict}",
                if t.is_empty() {
                    String::new()
                } else {
                    t.render()
                },
                untrusted(&service),
                untrusted(&fleet)
            );
        }
    }
    Ok(if ok { EX_OK } else { EX_REFUSED })
}

/// The widest the OUTCOME column of `teal history` gets, in characters.
pub(crate) const HISTORY_OUTCOME_CHARS: usize = 60;

pub(crate) async fn history(
    conn: &mut Conn,
    service: String,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(pb::HistoryRequest {
        service: service.clone(),
    });
    let r = conn
        .client
        .history(req)
        .await
        .map_err(|e| conn.fail(&e))?
        .into_inner();
    match output {
        Output::Json => print_json(
            out,
            &json!({
                "service": service,
                "entries": r.entries.iter().map(json::change).collect::<Vec<_>>(),
            }),
        ),
        Output::Table => {
            // A rollback's reason can quote a proxy's NACK at length: the
            // table shows its start, `-o json` all of it.
            let mut t = Table::new(&[
                "ID",
                "VERB",
                "ACTOR",
                "STARTED",
                "FROM",
                "TO",
                "VERSION",
                "OUTCOME",
                "CONVERGED",
            ])
            .max_width(7, HISTORY_OUTCOME_CHARS);
            for h in &r.entries {
                let mut outcome = h.outcome.as_ref().map_or("-".to_owned(), |o| {
                    let name = outcome_name(o.kind());
                    if o.reason.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{name}: {}", o.reason)
                    }
                });
                if !h.not_waited_for.is_empty() {
                    outcome.push_str(&format!(
                        " (did not wait for {})",
                        h.not_waited_for.join(", ")
                    ));
                }
                t.row(vec![
                    h.id.to_string(),
                    h.verb.clone(),
                    h.actor.clone(),
                    table::utc(h.started_unix_ms),
                    table::split(&h.from.clone().unwrap_or_default().weights),
                    to_cell(h),
                    h.version.clone().unwrap_or_else(|| "-".into()),
                    outcome,
                    h.convergence_ms
                        .map_or("-".into(), |ms| human(Duration::from_millis(ms))),
                ]);
            }
            let _ = write!(
                out,
                "{}",
                if t.is_empty() {
                    format!("no changes to {} yet\n", untrusted(&service))
                } else {
                    t.render()
                }
            );
        }
    }
    Ok(EX_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_for_a_terminal_means_the_same() {
        let v = json!({"a\u{9b}": "x\n\u{1b}[31m\u{7f}\u{202e}é…", "n": [1, 2]});
        let pretty = serde_json::to_string_pretty(&v).expect("serializes");
        let safe = json_for_terminal(&pretty);
        assert!(
            safe.chars()
                .all(|c| c == '\n' || !crate::text::needs_escape(c)),
            "{safe}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).expect("valid"),
            v
        );
    }
}
