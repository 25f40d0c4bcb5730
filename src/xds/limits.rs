//! What one xDS stream may make teal hold: the bounds the stream state
//! machines enforce on everything a client sends that outlives its request.
//!
//! A request is already bounded in size (`--max-request-bytes`), but a
//! delta subscription grows across requests, and strings a proxy sends
//! (its node id, its NACK messages) are kept for as long as it stays
//! connected and copied into status, history and logs. Each bound here has
//! a `teal serve` flag and a row in the "Limits" table (docs/limits.md).
//!
//! The defaults are sized for thousands of real Envoys with room to spare:
//! an Envoy sidecar names hundreds to a few thousand clusters (its EDS
//! subscription names every EDS cluster it has), node ids are typically
//! under 256 bytes (`sidecar~10.0.0.1~pod.namespace~namespace.svc.cluster.local`),
//! and a NACK's first kilobyte says which resource was rejected and why.

use std::fmt;

/// A bound a client can run into, with the flag that sets it. Used in
/// error messages so that an operator seeing one knows what to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Resource names in one subscription (one type on one stream).
    SubscriptionNames,
    /// Total bytes of the resource names in one subscription.
    SubscriptionBytes,
    /// Bytes of `node.id`, `node.cluster` and the user agent's name and
    /// version.
    NodeFieldBytes,
    /// Bytes of one request message.
    RequestBytes,
    /// `node_matchers` in one CSDS request.
    CsdsMatchers,
    /// Bytes of one CSDS request message.
    CsdsRequestBytes,
    /// Bytes of one CSDS answer.
    CsdsResponseBytes,
    /// Bytes of CSDS answers built and not yet read, over all clients.
    CsdsUnreadBytes,
    /// Bytes of CSDS answers built and not yet read, on one connection.
    CsdsUnreadBytesPerConnection,
    /// Bytes of one load report (LRS) message.
    LoadReportBytes,
    /// Clusters in one load report.
    LoadReportClusters,
}

impl Limit {
    /// The `teal serve` flag that sets this limit.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Limit::SubscriptionNames => "--max-subscription-names",
            Limit::SubscriptionBytes => "--max-subscription-bytes",
            Limit::NodeFieldBytes => "--max-node-field-bytes",
            Limit::RequestBytes => "--max-request-bytes",
            Limit::CsdsMatchers => "--max-csds-matchers",
            Limit::CsdsRequestBytes => "--max-csds-request-bytes",
            Limit::CsdsResponseBytes => "--max-csds-response-bytes",
            Limit::CsdsUnreadBytes => "--max-csds-unread-bytes",
            Limit::CsdsUnreadBytesPerConnection => "--max-csds-unread-bytes-per-connection",
            Limit::LoadReportBytes => "--max-load-report-bytes",
            Limit::LoadReportClusters => "--max-load-report-clusters",
        }
    }

    /// What is counted, for messages.
    fn unit(self) -> &'static str {
        match self {
            Limit::SubscriptionNames => "names",
            Limit::CsdsMatchers => "matchers",
            Limit::LoadReportClusters => "clusters",
            _ => "bytes",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::SubscriptionNames => "subscription names limit",
            Limit::SubscriptionBytes => "subscription bytes limit",
            Limit::NodeFieldBytes => "node field limit",
            Limit::RequestBytes => "request size limit",
            Limit::CsdsMatchers => "CSDS node matchers limit",
            Limit::CsdsRequestBytes => "CSDS request size limit",
            Limit::CsdsResponseBytes => "CSDS answer size limit",
            Limit::CsdsUnreadBytes => "limit on CSDS answers not yet read",
            Limit::CsdsUnreadBytesPerConnection => {
                "limit on CSDS answers not yet read per connection"
            }
            Limit::LoadReportBytes => "load report size limit",
            Limit::LoadReportClusters => "load report clusters limit",
        })
    }
}

/// A client went past a `Limit`: what, by how much.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} has {got} {unit}, over the {limit} of {max} ({flag})", unit = limit.unit(), flag = limit.flag())]
pub struct OverLimit {
    pub(crate) limit: Limit,
    /// What went over it, such as `node.id` or `the cluster subscription`.
    pub(crate) what: String,
    /// How much the client sent.
    pub(crate) got: usize,
    pub(crate) max: usize,
}

impl OverLimit {
    /// Checks `got` against `max`.
    pub(crate) fn check(
        limit: Limit,
        what: impl FnOnce() -> String,
        got: usize,
        max: usize,
    ) -> Result<(), OverLimit> {
        if got <= max {
            return Ok(());
        }
        Err(OverLimit {
            limit,
            what: what(),
            got,
            max,
        })
    }
}

/// The per-stream bounds the state machines enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most resource names one subscription (one type on one stream) may
    /// hold; past it the stream is closed with `RESOURCE_EXHAUSTED`.
    /// Default 20,000: twice the clusters of the largest meshes we know of
    /// (about 10,000 services seen by one unscoped sidecar), so no real
    /// Envoy comes near it, while a stream's subscriptions stay at most a
    /// few megabytes.
    pub max_subscription_names: usize,
    /// Most bytes the names of one subscription may total (delta's
    /// `initial_resource_versions` count their versions too). Default
    /// 2 MiB: 20,000 names of 100 bytes.
    pub max_subscription_bytes: usize,
    /// Longest `node.id`, `node.cluster`, user agent name or user agent
    /// version, in bytes; past it the stream is closed with
    /// `RESOURCE_EXHAUSTED`. Default 1 KiB: four times a long Istio node
    /// id, and small enough to show in a table and a log line.
    pub max_node_field_bytes: usize,
    /// How much of a NACK's `error_detail.message` teal keeps, in bytes;
    /// the rest is cut and the cut marked. Default 1 KiB: Envoy's reasons
    /// name the resource and the problem in their first lines, and the
    /// message is kept per proxy and copied into history and progress.
    pub max_nack_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_subscription_names: 20_000,
            max_subscription_bytes: 2 * 1024 * 1024,
            max_node_field_bytes: 1024,
            max_nack_bytes: 1024,
        }
    }
}

/// What the limits let a client make teal hold: the memory model the
/// "Limits" table (docs/limits.md) documents and the abuse soak (`examples/bench_abuse.rs`)
/// checks teal's RSS against.
///
/// The request and subscription figures are upper bounds worked out from
/// how teal keeps them (below); the figures for an idle connection and an
/// idle stream are measured (`bench_abuse --costs`: RSS with 1,000 of each
/// open, rounded up).
pub mod cost {
    use super::StreamLimits;

    /// An open connection that sends nothing: its socket's buffers in
    /// hyper, its HTTP/2 state and its task (15 KiB measured with glibc's
    /// malloc).
    pub const IDLE_CONNECTION_BYTES: usize = 16 * 1024;

    /// An open stream with a small subscription: its task, its HTTP/2
    /// stream, its 1 KiB buffers, its state machine and its status entry
    /// (5 KiB measured with glibc's malloc, with its share of a connection
    /// carrying 100 streams).
    pub const IDLE_STREAM_BYTES: usize = 8 * 1024;

    /// Data a client may have sent on one connection that teal has not
    /// read yet: hyper's default HTTP/2 connection window.
    pub const CONNECTION_WINDOW_BYTES: usize = 1024 * 1024;

    /// Heap a name in a decoded request's list costs beyond its text: its
    /// `String` (24 bytes), the allocation's header and rounding for
    /// short names (the text's own rounding, up to a quarter for long
    /// names, is counted by [`text_bytes`]), and its slot in the set of
    /// new names a delta request is checked with.
    pub(crate) const REQUEST_NAME_BYTES: usize = 96;

    /// Heap an entry of delta's `initial_resource_versions` costs beyond
    /// its text: two `String`s in a hash map of up to twice as many
    /// buckets as entries (48 bytes each).
    pub(crate) const VERSION_ENTRY_BYTES: usize = 160;

    /// Heap a name in a subscription costs beyond its text: its `String`
    /// in a B-tree node that may be half empty (up to 56 bytes a name),
    /// the tree's inner nodes, and the allocation's header and rounding
    /// for short names.
    pub(crate) const SUBSCRIPTION_NAME_BYTES: usize = 128;

    /// Heap `bytes` bytes of text take once allocated. glibc's malloc
    /// adds at most 23 bytes to an allocation (which the per-name figures
    /// above cover); allocators with size classes, such as jemalloc or
    /// mimalloc, round up by as much as a quarter, which this allows for.
    pub(crate) const fn text_bytes(bytes: usize) -> usize {
        bytes + bytes / 4
    }

    /// Most heap one request costs while teal receives and handles it: the
    /// buffer it is read into (which the stream keeps, at its largest
    /// request's size, until it ends) and its decoded form. Its name
    /// lists are at most `limits` each (longer ones are refused before
    /// decoding): one for state of the world, two and a version map for
    /// delta.
    pub(crate) const fn request_bytes(max_request_bytes: usize, limits: &StreamLimits) -> usize {
        let names = limits.max_subscription_names;
        max_request_bytes
            + text_bytes(max_request_bytes)
            + 2 * names * REQUEST_NAME_BYTES
            + names * VERSION_ENTRY_BYTES
    }

    /// Most heap one type's subscription on one stream holds: its names,
    /// and as much again for the subscription it replaces (state of the
    /// world, while the new one is built) or for the versions the client
    /// holds (delta).
    pub(crate) const fn subscription_bytes(limits: &StreamLimits) -> usize {
        2 * (text_bytes(limits.max_subscription_bytes)
            + limits.max_subscription_names * SUBSCRIPTION_NAME_BYTES)
    }

    /// Most heap one stream subscribed to `types` types costs, with a
    /// request being handled: what docs/limits.md documents per stream.
    pub const fn stream_bytes(
        max_request_bytes: usize,
        limits: &StreamLimits,
        types: usize,
    ) -> usize {
        IDLE_STREAM_BYTES
            + request_bytes(max_request_bytes, limits)
            + types * subscription_bytes(limits)
    }
}

/// Longest piece of client text that teal echoes back in an error or a
/// log line it writes for that client (a stale nonce, an unknown type
/// URL). teal's own nonces and type URLs are far shorter.
pub(crate) const ECHO_BYTES: usize = 128;

/// `text` cut to at most `max` bytes on a char boundary, with a marker
/// saying how many bytes were dropped, or `text` whole if it fits.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut: {} bytes]", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_short_text_and_marks_long_text() {
        assert_eq!(cut("short", 5), "short");
        assert_eq!(cut("abcdef", 3), "abc… [cut: 3 bytes]");
        // "é" is two bytes: a cut inside it backs up to the boundary.
        assert_eq!(cut("aéb", 2), "a… [cut: 3 bytes]");
        assert_eq!(cut("é", 0), "… [cut: 2 bytes]");
    }

    /// The figures docs/limits.md states for the defaults.
    #[test]
    fn documented_costs_at_the_default_limits() {
        let limits = StreamLimits::default();
        let mib = |b: usize| b as f64 / f64::from(1 << 20);
        let request = 4 * 1024 * 1024;
        assert_eq!(
            format!("{:.1}", mib(cost::request_bytes(request, &limits))),
            "15.7"
        );
        assert_eq!(
            format!("{:.1}", mib(cost::subscription_bytes(&limits))),
            "9.9"
        );
        assert_eq!(
            format!("{:.1}", mib(cost::stream_bytes(request, &limits, 1))),
            "25.6"
        );
    }

    #[test]
    fn over_limit_names_the_limit_and_its_flag() {
        let e = OverLimit::check(Limit::NodeFieldBytes, || "node.id".into(), 2000, 1024)
            .expect_err("over");
        assert_eq!(
            e.to_string(),
            "node.id has 2000 bytes, over the node field limit of 1024 (--max-node-field-bytes)"
        );
        assert!(OverLimit::check(Limit::NodeFieldBytes, String::new, 1024, 1024).is_ok());
    }
}
