//! What one xDS stream may make teal hold: the bounds the stream state
//! machines enforce on everything a client sends that outlives its request.
//!
//! A request is already bounded in size (`--max-request-bytes`), but a
//! delta subscription grows across requests, and strings a proxy sends
//! (its node id, its NACK messages) are kept for as long as it stays
//! connected and copied into status, history and logs. Each bound here has
//! a `teal serve` flag and a row in the README's "Limits" table.
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
pub enum Limit {
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
}

impl Limit {
    /// The `teal serve` flag that sets this limit.
    pub fn flag(self) -> &'static str {
        match self {
            Limit::SubscriptionNames => "--max-subscription-names",
            Limit::SubscriptionBytes => "--max-subscription-bytes",
            Limit::NodeFieldBytes => "--max-node-field-bytes",
            Limit::RequestBytes => "--max-request-bytes",
            Limit::CsdsMatchers => "--max-csds-matchers",
            Limit::CsdsRequestBytes => "--max-csds-request-bytes",
            Limit::CsdsResponseBytes => "--max-csds-response-bytes",
        }
    }

    /// What is counted, for messages.
    fn unit(self) -> &'static str {
        match self {
            Limit::SubscriptionNames => "names",
            Limit::CsdsMatchers => "matchers",
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
        })
    }
}

/// A client went past a [`Limit`]: what, by how much.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} has {got} {unit}, over the {limit} of {max} ({flag})", unit = limit.unit(), flag = limit.flag())]
pub struct OverLimit {
    /// The limit.
    pub limit: Limit,
    /// What went over it, such as `node.id` or `the cluster subscription`.
    pub what: String,
    /// How much the client sent.
    pub got: usize,
    /// The limit's value.
    pub max: usize,
}

impl OverLimit {
    /// Checks `got` against `max`.
    pub fn check(
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

/// Longest piece of client text that teal echoes back in an error or a
/// log line it writes for that client (a stale nonce, an unknown type
/// URL). teal's own nonces and type URLs are far shorter.
pub(crate) const ECHO_BYTES: usize = 128;

/// `text` cut to at most `max` bytes on a char boundary, with a marker
/// saying how many bytes were dropped, or `text` whole if it fits.
pub fn cut(text: &str, max: usize) -> String {
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
