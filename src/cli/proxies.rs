//! `teal proxies`: every connected proxy and, per type, whether it has
//! applied the version its group should be on, like `istioctl
//! proxy-status`.
//!
//! - SYNCED: the proxy ACKed the group's current version for the type (or,
//!   when the server does not know the group, the last version sent).
//! - STALE: it has not ACKed that version yet (still applying, or on an
//!   older one).
//! - NACKED: it rejected the last version sent; the error is listed below
//!   the table.
//! - NOT SENT: nothing of that type was sent on the stream.
//!
//! IDENTITY is what the proxy's client certificate proved (its SPIFFE ID,
//! or its DNS names), `unauthenticated` without mTLS on the xDS port.

use std::io::Write;

use crate::admin::json::{SyncState, expected, identity};
use crate::admin::{json, pb};

use super::Output;
use super::client::{Conn, EX_OK, Failure};
use super::read::print_json;
use super::table::{CELL_MAX_CHARS, Table};
use crate::text::untrusted;

/// The proxies as a table, followed by every NACK's message (escaped, and
/// cut at [`crate::text::DEFAULT_MAX_CHARS`]).
pub(crate) fn proxies_text(r: &pb::ProxiesResponse) -> String {
    // The REPLICA column appears only when a leader answers with other
    // replicas' proxies: a single replica's table stays as it was.
    let remote = r.proxies.iter().any(|p| !p.replica.is_empty());
    let mut header = vec!["PROXY", "GROUP", "IDENTITY", "STREAM"];
    if remote {
        header.insert(1, "REPLICA");
    }
    header.extend(["CDS", "EDS", "LDS", "RDS"]);
    // So is the LOAD REPORT column: it appears once a proxy reports load.
    let loads = r.proxies.iter().any(|p| p.load.is_some());
    if loads {
        header.push("LOAD REPORT");
    }
    let mut t = Table::new(&header);
    let mut nacks = Vec::new();
    let mut cordoned = Vec::new();
    for p in &r.proxies {
        let id = if p.node_id.is_empty() {
            format!("(stream {})", p.stream_id)
        } else {
            p.node_id.clone()
        };
        if p.cordoned {
            cordoned.push(format!(
                "{} CORDONED{}",
                untrusted(&id).max_chars(CELL_MAX_CHARS),
                if p.cordon_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", untrusted(&p.cordon_reason))
                }
            ));
        }
        let mut row = vec![
            if p.cordoned {
                format!("{id} CORDONED")
            } else {
                id.clone()
            },
            p.group.clone(),
            identity(p).to_owned(),
            format!("{}{}", p.kind, if p.delta { " delta" } else { "" }),
        ];
        if remote {
            row.insert(
                1,
                if p.replica.is_empty() {
                    "(this one)".to_owned()
                } else {
                    untrusted(&p.replica).max_chars(CELL_MAX_CHARS).to_string()
                },
            );
        }
        for (i, ty) in p.types.iter().enumerate().take(4) {
            let state = SyncState::of(ty, expected(r, &p.group, i));
            let version = match state {
                SyncState::Nacked => ty.sent.clone(),
                _ => ty.acked.clone(),
            };
            let name = state.as_str();
            row.push(match (state, version) {
                (SyncState::NotSent, _) | (_, None) => name.to_owned(),
                (_, Some(v)) => format!("{name} {v}"),
            });
            if let (SyncState::Nacked, Some(n)) = (state, &ty.nack) {
                nacks.push(format!(
                    "{} {} NACKED {}: {}",
                    untrusted(&id).max_chars(CELL_MAX_CHARS),
                    untrusted(&ty.r#type),
                    untrusted(&n.version),
                    untrusted(&n.message)
                ));
            }
        }
        if loads {
            row.push(super::traffic::load_cell(p.load.as_ref()));
        }
        t.row(row);
    }
    let mut text = if t.is_empty() {
        "no proxies connected\n".to_owned()
    } else {
        t.render()
    };
    for n in nacks.into_iter().chain(cordoned) {
        text.push_str(&n);
        text.push('\n');
    }
    text
}

pub(crate) async fn proxies(
    conn: &mut Conn,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let req = conn.request(pb::ProxiesRequest {});
    let r = conn
        .client
        .proxies(req)
        .await
        .map_err(|e| conn.fail(&e))?
        .into_inner();
    match output {
        Output::Table => {
            let _ = write!(out, "{}", proxies_text(&r));
        }
        Output::Json => print_json(out, &json::proxies(&r)),
    }
    Ok(EX_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(
        name: &str,
        sent: Option<&str>,
        acked: Option<&str>,
        nacked: Option<&str>,
    ) -> pb::TypeStatus {
        pb::TypeStatus {
            r#type: name.into(),
            subscribed: sent.is_some(),
            sent: sent.map(Into::into),
            acked: acked.map(Into::into),
            nack: nacked.map(|v| pb::Nack {
                version: v.into(),
                message: "bad route".into(),
                at_unix_ms: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn states_compare_with_the_group_version() {
        assert_eq!(
            SyncState::of(&ty("CDS", Some("2"), Some("2"), None), Some("2")).as_str(),
            "SYNCED"
        );
        assert_eq!(
            SyncState::of(&ty("CDS", Some("2"), Some("1"), None), Some("2")).as_str(),
            "STALE"
        );
        assert_eq!(
            SyncState::of(&ty("CDS", Some("2"), None, None), Some("2")).as_str(),
            "STALE"
        );
        assert_eq!(
            SyncState::of(&ty("CDS", Some("2"), Some("1"), Some("2")), Some("2")).as_str(),
            "NACKED"
        );
        // An old NACK no longer counts once a later version was sent.
        assert_eq!(
            SyncState::of(&ty("CDS", Some("3"), Some("3"), Some("2")), Some("3")).as_str(),
            "SYNCED"
        );
        assert_eq!(
            SyncState::of(&ty("CDS", None, None, None), Some("2")).as_str(),
            "NOT SENT"
        );
        // Unknown group: synced means the last version sent was ACKed.
        assert_eq!(
            SyncState::of(&ty("CDS", Some("2"), Some("2"), None), None).as_str(),
            "SYNCED"
        );
    }

    #[test]
    fn table_lists_states_and_nack_errors() {
        let r = pb::ProxiesResponse {
            proxies: vec![pb::Proxy {
                node_id: "edge-1".into(),
                group: "edge".into(),
                kind: "ADS".into(),
                types: vec![
                    ty("CDS", Some("2"), Some("2"), None),
                    ty("EDS", Some("2"), Some("1"), None),
                    ty("LDS", None, None, None),
                    ty("RDS", Some("2"), Some("1"), Some("2")),
                ],
                ..Default::default()
            }],
            current_versions: [(
                "edge".to_owned(),
                pb::TypeVersions {
                    cds: "2".into(),
                    eds: "2".into(),
                    lds: "2".into(),
                    rds: "2".into(),
                },
            )]
            .into(),
        };
        assert_eq!(
            proxies_text(&r),
            "PROXY   GROUP  IDENTITY         STREAM  CDS       EDS      LDS       RDS\n\
             edge-1  edge   unauthenticated  ADS     SYNCED 2  STALE 1  NOT SENT  NACKED 2\n\
             edge-1 RDS NACKED 2: bad route\n"
        );
        assert_eq!(
            proxies_text(&pb::ProxiesResponse::default()),
            "no proxies connected\n"
        );
    }

    #[test]
    fn a_replica_column_appears_when_a_proxy_is_elsewhere() {
        let proxy = |node: &str, replica: &str| pb::Proxy {
            stream_id: 1,
            node_id: node.into(),
            group: "edge".into(),
            kind: "ADS".into(),
            replica: replica.into(),
            types: vec![
                ty("CDS", None, None, None),
                ty("EDS", None, None, None),
                ty("LDS", None, None, None),
                ty("RDS", None, None, None),
            ],
            ..Default::default()
        };
        let r = pb::ProxiesResponse {
            proxies: vec![proxy("near", ""), proxy("far", "replica-b")],
            ..Default::default()
        };
        let text = proxies_text(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PROXY  REPLICA "), "{text}");
        assert!(lines[1].starts_with("near   (this one)"), "{text}");
        assert!(lines[2].starts_with("far    replica-b"), "{text}");
        let alone = pb::ProxiesResponse {
            proxies: vec![proxy("near", "")],
            ..Default::default()
        };
        assert!(!proxies_text(&alone).contains("REPLICA"));
    }
}
