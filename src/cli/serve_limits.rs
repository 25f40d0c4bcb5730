//! The limits flags of `teal serve`: what proxies and other clients may
//! make teal hold. Each is checked when the command line is parsed (zero
//! and absurd values exit 64), and each has a row in the
//! "Limits" table (docs/limits.md). The defaults and why they are what they are live with
//! the fields they set: [`StreamLimits`], [`ConnectionLimits`] and
//! [`XdsServerConfig`].

use std::time::Duration;

use clap::Args;

use crate::admin::{EventLimits, GateLimits};
use crate::rollout::registration::EndpointLimits;
use crate::transport::listener::ConnectionLimits;
use crate::xds::{CsdsLimits, StreamLimits, XdsServerConfig};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Limits on what proxies and clients may make teal hold.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct LimitArgs {
    /// Largest request message on the xDS port, in bytes; a larger one
    /// closes its stream with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4 * MIB, value_parser = clap::value_parser!(u64).range(KIB..=256 * MIB))]
    pub(crate) max_request_bytes: u64,
    /// Most resource names one subscription (one type on one stream) may
    /// hold; past it the stream is closed with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) max_subscription_names: u64,
    /// Most bytes the names of one subscription may total; past it the
    /// stream is closed with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 2 * MIB, value_parser = clap::value_parser!(u64).range(1..=1024 * MIB))]
    pub(crate) max_subscription_bytes: u64,
    /// Longest node.id, node.cluster and user agent a proxy may send, in
    /// bytes; past it its stream is closed with RESOURCE_EXHAUSTED. At
    /// most 16 KiB: these are shown in table cells and log lines.
    #[arg(long, default_value_t = KIB, value_parser = clap::value_parser!(u64).range(16..=16 * KIB))]
    pub(crate) max_node_field_bytes: u64,
    /// How much of a NACK's message teal keeps, in bytes; the rest is cut
    /// and the cut marked.
    #[arg(long, default_value_t = KIB, value_parser = clap::value_parser!(u64).range(64..=MIB))]
    pub(crate) max_nack_bytes: u64,
    /// Most connections open at once on the xDS port; past it the oldest
    /// still in its handshake makes room, or new ones are closed on accept.
    #[arg(long, default_value_t = ConnectionLimits::XDS_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_xds_connections: u64,
    /// Most connections open at once on the admin port; past it the oldest
    /// still in its handshake makes room, or new ones are closed on accept.
    #[arg(long, default_value_t = ConnectionLimits::ADMIN_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) max_admin_connections: u64,
    /// Most concurrent HTTP/2 streams per connection, on both ports.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) max_streams_per_connection: u32,
    /// How long (a duration: `10s`) a new connection may take, from its accept, to finish its
    /// handshake (TLS, then its protocol's preface); on a full port the
    /// oldest connection still in its handshake makes room for a new one.
    #[arg(long, default_value = "10s", value_parser = timeout_seconds)]
    pub(crate) handshake_timeout: Duration,
    /// How long (`60s`) a connection may send nothing and take nothing
    /// written to it (HTTP/2 clients are pinged after a third of it; an
    /// event stream writes at least every 15 s).
    #[arg(long, default_value = "60s", value_parser = timeout_seconds)]
    pub(crate) idle_timeout: Duration,
    /// Largest CSDS request message, in bytes (both ports); a larger one
    /// ends its call with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64 * KIB, value_parser = clap::value_parser!(u64).range(KIB..=16 * MIB))]
    pub(crate) max_csds_request_bytes: u64,
    /// Most node_matchers in one CSDS request; past it the call ends with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) max_csds_matchers: u64,
    /// Largest CSDS answer, in bytes; past it the call ends with
    /// RESOURCE_EXHAUSTED (narrow it with node_matchers or
    /// exclude_resource_contents).
    #[arg(long, default_value_t = 64 * MIB, value_parser = clap::value_parser!(u64).range(KIB..=4 * 1024 * MIB))]
    pub(crate) max_csds_response_bytes: u64,
    /// Most CSDS answers built at once, over both ports; further requests
    /// wait for a turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) max_csds_concurrent: u64,
    /// Most bytes of CSDS answers built and not yet read by their clients,
    /// over both ports; an answer past it ends its call with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256 * MIB, value_parser = clap::value_parser!(u64).range(KIB..=16 * 1024 * MIB))]
    pub(crate) max_csds_unread_bytes: u64,
    /// Most bytes of CSDS answers built and not yet read on one
    /// connection; an answer past it ends its call with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64 * MIB, value_parser = clap::value_parser!(u64).range(KIB..=16 * 1024 * MIB))]
    pub(crate) max_csds_unread_bytes_per_connection: u64,
    /// How long (`30s`) a CSDS answer may stay unread before its connection is
    /// closed.
    #[arg(long, default_value = "30s", value_parser = timeout_seconds)]
    pub(crate) csds_unread_timeout: Duration,
    /// Most endpoints one fleet whose endpoints come from outside the file
    /// (`endpoints: registered`) may have; a change past it is refused
    /// (RESOURCE_EXHAUSTED, exit 1) and nothing changes.
    #[arg(long, default_value_t = EndpointLimits::DEFAULT_MAX_FLEET_ENDPOINTS as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) max_fleet_endpoints: u64,
    /// Longest TTL `teal register` may ask for (`1h`); a longer one
    /// is refused.
    #[arg(long, default_value = "1h", value_parser = timeout_seconds)]
    pub(crate) max_register_ttl: Duration,
    /// Accept registered endpoints that no fleet normally means, refused
    /// by default: link-local (169.254.0.0/16, fe80::/10, where cloud
    /// metadata services answer), multicast, broadcast, and teal's own
    /// admin port.
    #[arg(long)]
    pub(crate) allow_any_endpoint_address: bool,
    /// How long (`30m`) an xDS connection may stay open, or `never`. Past it teal
    /// sends GOAWAY and closes its streams 5 s later; the proxy keeps its
    /// configuration and reconnects, so proxies spread again over
    /// replicas (one that restarted gets its share back).
    #[arg(long, default_value = "30m", value_name = "DURATION|never", value_parser = connection_age)]
    pub(crate) xds_connection_age: ConnectionAge,
    /// How long a proxy whose xDS stream ended still counts for a change
    /// under way, as not confirming it, unless it reconnects first (here
    /// or, with replicas, to any replica): a change is never taken as
    /// confirmed because its proxies were reconnecting. `0s` turns it off
    /// (a proxy is forgotten as its stream ends); up to 1h.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = reconnect_hold)]
    pub(crate) proxy_reconnect_hold: Duration,
    /// Largest request body the admin port's gates (Flagger's webhook
    /// payload) and the dashboard's actions read, in bytes; a larger one
    /// is refused with 413.
    #[arg(long, default_value_t = GateLimits::DEFAULT_MAX_REQUEST_BYTES as u64, value_parser = clap::value_parser!(u64).range(KIB..=16 * MIB))]
    pub(crate) max_gate_request_bytes: u64,
    /// Most gate requests (`/v1/services/<s>`, `/v1/gates/flagger`)
    /// answered at once; further ones wait for a turn.
    #[arg(long, default_value_t = GateLimits::DEFAULT_MAX_CONCURRENT as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) max_gate_concurrent: u64,
    /// Most dashboard event streams (`GET /v1/events`) open at once; one
    /// more is answered 503.
    #[arg(long, default_value_t = EventLimits::DEFAULT_MAX_STREAMS as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) max_event_streams: u64,
    /// How long (`30s`) an event stream may wait for its reader to take a
    /// frame before it is closed and its slot freed.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = timeout_seconds)]
    pub(crate) event_stall_timeout: Duration,
    /// Most proxies listed in a `proxies` event: NACKED ones first, then
    /// pending ones, then the rest; `total` says how many are connected.
    #[arg(long, default_value_t = EventLimits::DEFAULT_MAX_PROXIES as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_event_proxies: u64,
}

fn reconnect_hold(s: &str) -> Result<Duration, String> {
    super::parse::seconds_in(s, 0.0, 3600.0)
}

/// `--xds-connection-age`: a duration, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionAge(pub(crate) Option<Duration>);

fn connection_age(s: &str) -> Result<ConnectionAge, String> {
    if s == "never" {
        return Ok(ConnectionAge(None));
    }
    timeout_seconds(s)
        .map(|d| ConnectionAge(Some(d)))
        .map_err(|e| format!("{e}, nor never"))
}

/// A timeout of more than 0 and at most a day: a duration (`10s`, `2m`)
/// or a bare number of seconds (see [`super::parse::seconds_in`]).
fn timeout_seconds(s: &str) -> Result<Duration, String> {
    const DAY: f64 = 86_400.0;
    match super::parse::seconds_in(s, 0.0, DAY) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{s:?} is not a duration above 0 and at most 24h (write it like 10s or 500ms)"
        )),
    }
}

/// A checked flag value as a `usize`: the ranges above all fit.
fn size(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl LimitArgs {
    /// Sets the limits of the xDS server and the admin port's connections.
    pub(crate) fn apply(&self, xds: &mut XdsServerConfig, admin: &mut ConnectionLimits) {
        xds.max_request_bytes = size(self.max_request_bytes);
        xds.stream = StreamLimits {
            max_subscription_names: size(self.max_subscription_names),
            max_subscription_bytes: size(self.max_subscription_bytes),
            max_node_field_bytes: size(self.max_node_field_bytes),
            max_nack_bytes: size(self.max_nack_bytes),
        };
        let connections = |max: u64| ConnectionLimits {
            max_connections: size(max),
            max_streams_per_connection: self.max_streams_per_connection,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
        };
        xds.connections = connections(self.max_xds_connections);
        xds.csds = CsdsLimits {
            max_request_bytes: size(self.max_csds_request_bytes),
            max_matchers: size(self.max_csds_matchers),
            max_response_bytes: size(self.max_csds_response_bytes),
            max_concurrent: size(self.max_csds_concurrent),
            max_unread_bytes: size(self.max_csds_unread_bytes),
            max_unread_bytes_per_connection: size(self.max_csds_unread_bytes_per_connection),
            unread_timeout: self.csds_unread_timeout,
        };
        *admin = connections(self.max_admin_connections);
        xds.max_connection_age = self.xds_connection_age.0;
        xds.proxy_reconnect_hold = self.proxy_reconnect_hold;
    }

    /// The bounds on the admin port's gates.
    pub(crate) fn gate_limits(&self) -> GateLimits {
        GateLimits {
            max_request_bytes: size(self.max_gate_request_bytes),
            max_concurrent: size(self.max_gate_concurrent),
        }
    }

    /// The bounds on the dashboard's event streams.
    pub(crate) fn event_limits(&self) -> EventLimits {
        EventLimits {
            max_streams: size(self.max_event_streams),
            stall_timeout: self.event_stall_timeout,
            max_proxies: size(self.max_event_proxies),
        }
    }

    /// The bounds on registered endpoints.
    pub(crate) fn endpoint_limits(&self) -> EndpointLimits {
        EndpointLimits {
            max_fleet_endpoints: size(self.max_fleet_endpoints),
            max_ttl: self.max_register_ttl,
            allow_any_address: self.allow_any_endpoint_address,
            admin_addr: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn parse(args: &[&str]) -> Result<LimitArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("teal").chain(args.iter().copied())).map(|c| c.limits)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let mut xds = XdsServerConfig {
            stream: StreamLimits {
                max_nack_bytes: 1,
                ..StreamLimits::default()
            },
            csds: CsdsLimits {
                max_matchers: 1,
                ..CsdsLimits::default()
            },
            ..XdsServerConfig::default()
        };
        let mut admin = ConnectionLimits::default_for(crate::transport::listener::Port::Xds);
        parse(&[])
            .expect("defaults parse")
            .apply(&mut xds, &mut admin);
        let defaults = XdsServerConfig::default();
        assert_eq!(xds.stream, defaults.stream);
        assert_eq!(xds.connections, defaults.connections);
        assert_eq!(xds.max_request_bytes, defaults.max_request_bytes);
        assert_eq!(xds.csds, defaults.csds);
        assert_eq!(xds.max_connection_age, defaults.max_connection_age);
        assert_eq!(
            parse(&[]).expect("defaults parse").gate_limits(),
            GateLimits::default()
        );
        assert_eq!(
            parse(&[]).expect("defaults parse").event_limits(),
            EventLimits::default()
        );
        assert_eq!(
            admin,
            ConnectionLimits::default_for(crate::transport::listener::Port::Admin)
        );
    }

    #[test]
    fn zero_and_absurd_values_are_refused() {
        for bad in [
            &["--max-subscription-names", "0"][..],
            &["--max-subscription-bytes", "0"],
            &["--max-node-field-bytes", "0"],
            &["--max-node-field-bytes", "100000"],
            &["--max-nack-bytes", "0"],
            &["--max-request-bytes", "10"],
            &["--max-request-bytes", "99999999999999"],
            &["--max-xds-connections", "0"],
            &["--max-admin-connections", "-1"],
            &["--max-gate-request-bytes", "10"],
            &["--max-gate-concurrent", "0"],
            &["--max-event-streams", "0"],
            &["--max-event-proxies", "0"],
            &["--event-stall-timeout", "0s"],
            &["--max-streams-per-connection", "0"],
            &["--handshake-timeout", "0"],
            &["--idle-timeout", "1e20"],
            &["--idle-timeout", "NaN"],
            &["--idle-timeout", "-3"],
            &["--max-csds-matchers", "0"],
            &["--max-csds-request-bytes", "10"],
            &["--max-csds-response-bytes", "0"],
            &["--max-csds-concurrent", "0"],
            &["--max-csds-unread-bytes", "0"],
            &["--max-csds-unread-bytes-per-connection", "10"],
            &["--csds-unread-timeout", "0"],
            &["--xds-connection-age", "0"],
            &["--xds-connection-age", "forever"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?} is refused"));
            assert!(e.use_stderr(), "{bad:?}: a usage error");
        }
        let ok = parse(&["--idle-timeout", "0.5", "--max-xds-connections", "3"]).expect("valid");
        assert_eq!(ok.idle_timeout, Duration::from_millis(500));
        assert_eq!(ok.max_xds_connections, 3);
        let never = parse(&["--xds-connection-age", "never"]).expect("valid");
        assert_eq!(never.xds_connection_age, ConnectionAge(None));
        let short = parse(&["--xds-connection-age", "2.5"]).expect("valid");
        assert_eq!(
            short.xds_connection_age,
            ConnectionAge(Some(Duration::from_millis(2500)))
        );
    }

    #[test]
    fn durations_are_written_as_everywhere_else_and_bare_seconds_still_work() {
        let d = parse(&[
            "--handshake-timeout",
            "1m30s",
            "--idle-timeout",
            "500ms",
            "--xds-connection-age",
            "30m",
            "--max-register-ttl",
            "2h",
        ])
        .expect("durations");
        assert_eq!(d.handshake_timeout, Duration::from_secs(90));
        assert_eq!(d.idle_timeout, Duration::from_millis(500));
        assert_eq!(
            d.xds_connection_age,
            ConnectionAge(Some(Duration::from_secs(1800)))
        );
        assert_eq!(d.max_register_ttl, Duration::from_secs(7200));
        let bare = parse(&["--handshake-timeout", "7"]).expect("bare seconds");
        assert_eq!(bare.handshake_timeout, Duration::from_secs(7));
        for bad in [
            &["--handshake-timeout", "0s"][..],
            &["--handshake-timeout", "25h"],
            &["--idle-timeout", "10 s"],
            &["--idle-timeout", "1.5s"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} is refused");
        }
    }
}
