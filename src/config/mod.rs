//! The config model: operators describe services once, in YAML, and teal
//! turns that into Envoy resources for every proxy group.
//!
//! The format is documented in docs/configuration.md; [`DEFAULT_CONFIG`] is a
//! complete example.
//!
//! # Pipeline
//!
//! 1. [`Config::parse`] reads YAML (through a small spanned tree, so every
//!    problem has a line and column) and checks everything, reporting all
//!    problems at once as [`Diagnostics`]. A config is valid as a whole or
//!    not at all. [`Limits`] bound the file's size, nesting and alias
//!    expansion; `read_bounded` reads a file no further than that.
//! 2. A fleet may take its endpoints from elsewhere than the file
//!    (`EndpointSource`); `Config::with_endpoints` lays what those
//!    sources reported (`EndpointOverlay`) over the parsed config, and
//!    everything below works on the result.
//! 3. [`translate`] turns a [`Config`] and the current [`Weights`] into a
//!    [`SnapshotInput`](crate::xds::snapshot::SnapshotInput): per group, the
//!    clusters, endpoints, listeners and routes its proxies are served.
//! 4. [`config_digest`] names that content with a short version string.
//! 5. [`render`] prints it in Envoy's JSON form; the CLI's
//!    [`config_commands`](crate::cli::config_commands) wraps all of this
//!    for `teal validate` and `teal render`.
//!
//! # Naming
//!
//! - Cluster and `ClusterLoadAssignment`: `{service}-{fleet}`, for example
//!   `web-blue`. The parser refuses configs where two (service, fleet)
//!   pairs would share a name (`a-b`/`c` and `a`/`b-c`).
//! - Listener and its `RouteConfiguration`: the listener's name in the
//!   config (edge, sidecar). A grpc listener gives each of its services an
//!   API listener and a `RouteConfiguration` named after the service, since
//!   a proxyless gRPC client dialing `xds:///web` asks for listener `web`;
//!   the parser refuses a group where two listeners would produce the same
//!   name. Names are per group, as each group is a separate set of proxies.
//! - Virtual host: its config name (edge) or the service name (sidecar,
//!   grpc). A grpc virtual host's only domain is the service name, the
//!   authority of `xds:///web`.
//!
//! A group only gets the clusters of the services its routes reach.
//!
//! # Blue/green routing
//!
//! Every route to a service is a `weighted_clusters` route listing every
//! fleet of the service, with weight 0 for fleets not taking traffic. A
//! shift therefore changes RouteConfigurations only; clusters and
//! listeners stay byte-identical and Envoy never drains them.
//!
//! **Preview routing.** Before that weighted route come one route per
//! fleet, matching the same path (prefix or regex) and the header
//! [`x-teal-fleet: <fleet>`](FLEET_HEADER), which send the request to that
//! fleet's cluster whatever the weights. Operators and rollout checks use
//! it to reach a fleet that takes no traffic yet.
//!
//! **Tier consistency.** In the weighted route, each fleet's
//! `ClusterWeight` sets `x-teal-fleet: <fleet>` on the request
//! (overwriting any value). So once the edge has picked, say, green for a
//! request, the request carries `x-teal-fleet: green` to the green
//! service, which passes it on when it calls further services; their
//! sidecars match it with the preview routes and stay on green. One chain
//! of calls never mixes fleets during a gradual shift. Services must
//! propagate the header, like a tracing header.
//!
//! # Determinism
//!
//! The same config and weights always encode to the same bytes: config
//! maps are `BTreeMap`s, resources are sorted by name, and no proto map
//! field (prost makes them `HashMap`s) ever has more than one entry.

mod diag;
pub(crate) mod duration;
#[cfg(test)]
pub(crate) mod fixtures;
mod limits;
mod model;
mod overlay;
mod parse;
mod translate;
mod yaml;

pub mod render;
pub(crate) mod weights;

pub(crate) use diag::Diagnostic;
pub use diag::Diagnostics;
pub(crate) use duration::parse_duration;
pub use limits::Limits;
#[cfg(test)]
pub(crate) use limits::{DEFAULT_MAX_DEPTH, MAX_MAX_DEPTH};
#[cfg(test)]
pub(crate) use model::Fleet;
#[cfg(feature = "kubernetes")]
pub(crate) use model::ListenerKind;
pub(crate) use model::{
    ANALYSIS_WINDOW, Analysis, Check, EndpointSource, MAX_ZONE_BYTES, Protocol, Service,
    TooFewRequests,
};
pub use model::{
    Config, DEFAULT_SLICE_MANAGER, Endpoint, KubernetesFleet, KubernetesPort, KubernetesRef, Ratio,
};
pub(crate) use overlay::{EndpointOverlay, EndpointSetError, FleetSets, check_endpoints};
pub(crate) use parse::parse_address;
pub(crate) use translate::cluster_name;
pub use translate::{FLEET_HEADER, config_digest, encoded_resources, translate};
// The rollout's split of traffic, which translation reads; re-exported so
// callers building a snapshot from a config find it here too.
pub use weights::Weights;
pub(crate) use weights::WeightsError;

/// The bundled example config, the default of `teal serve`.
pub const DEFAULT_CONFIG: &str = include_str!("../../examples/teal.yaml");

/// The name diagnostics use for [`DEFAULT_CONFIG`].
pub const DEFAULT_CONFIG_NAME: &str = "examples/teal.yaml";

impl Config {
    /// Parses and validates a config file within the default [`Limits`].
    /// `file` is only used in diagnostics. Returns every problem found, in
    /// source order.
    pub fn parse(text: &str, file: &str) -> Result<Config, Diagnostics> {
        Config::parse_with(text, file, &Limits::default())
    }

    /// [`Config::parse`] within `limits`.
    pub(crate) fn parse_with(
        text: &str,
        file: &str,
        limits: &Limits,
    ) -> Result<Config, Diagnostics> {
        if let Some(d) = over_size(text.as_bytes(), file, limits) {
            return Err(Diagnostics(vec![d]));
        }
        parse::parse(text, file, limits)
    }

    /// [`Config::parse_with`] for the bytes of a file, as [`read_bounded`]
    /// returns them: a file over `limits.max_bytes`, or one that is not
    /// UTF-8, is a problem with a position like any other.
    pub(crate) fn from_bytes(
        bytes: &[u8],
        file: &str,
        limits: &Limits,
    ) -> Result<Config, Diagnostics> {
        if let Some(d) = over_size(bytes, file, limits) {
            return Err(Diagnostics(vec![d]));
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => parse::parse(text, file, limits),
            Err(e) => {
                let (line, column) = position_of(bytes, e.valid_up_to());
                Err(Diagnostics(vec![Diagnostic {
                    file: file.to_owned(),
                    line,
                    column,
                    path: String::new(),
                    message: "the file is not UTF-8 text".to_owned(),
                }]))
            }
        }
    }
}

pub(crate) use crate::files::read_bounded;

/// The problem with a file over `limits.max_bytes`, placed where the limit
/// is crossed.
fn over_size(bytes: &[u8], file: &str, limits: &Limits) -> Option<Diagnostic> {
    let limit = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
    if bytes.len() <= limit {
        return None;
    }
    let (line, column) = position_of(bytes, limit);
    Some(Diagnostic {
        file: file.to_owned(),
        line,
        column,
        path: String::new(),
        message: format!(
            "the file is larger than the limit of {} bytes (--config-max-bytes)",
            limits.max_bytes
        ),
    })
}

/// The 1-based line and column (in characters, as the YAML parser counts
/// them) of byte `offset`.
fn position_of(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Count characters by their first bytes; continuation bytes are 10xxxxxx.
    let column = 1 + before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count();
    (line, column)
}

impl Config {
    /// Which identities may join which group: each group's `identities`
    /// patterns (a group without any admits anyone).
    pub(crate) fn identity_policy(&self) -> crate::transport::identity::IdentityPolicy {
        crate::transport::identity::IdentityPolicy::new(
            self.groups
                .iter()
                .map(|(name, g)| (name.clone(), g.identities.clone()))
                .collect(),
        )
    }
}
