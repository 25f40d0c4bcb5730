//! The config model: operators describe services once, in YAML, and teal
//! turns that into Envoy resources for every proxy group.
//!
//! The format is documented in the README's Configuration section; [`DEFAULT_CONFIG`] is a
//! complete example.
//!
//! # Pipeline
//!
//! 1. [`Config::parse`] reads YAML (through a small spanned tree, so every
//!    problem has a line and column) and checks everything, reporting all
//!    problems at once as [`Diagnostics`]. A config is valid as a whole or
//!    not at all.
//! 2. [`translate`] turns a [`Config`] and the current [`Weights`] into a
//!    [`SnapshotInput`](crate::snapshot::SnapshotInput): per group, the
//!    clusters, endpoints, listeners and routes its proxies are served.
//! 3. [`config_digest`] names that content with a short version string.
//! 4. [`render`] prints it in Envoy's JSON form; [`commands`] wraps all of
//!    this for `teal validate` and `teal render`.
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
mod model;
mod parse;
mod translate;
mod yaml;

pub mod commands;
pub mod render;

pub use diag::{Diagnostic, Diagnostics};
pub use model::{
    Check, Config, Endpoint, Fleet, Group, HealthCheck, Listener, ListenerKind, OutlierDetection,
    Protocol, Retries, Route, Service, VirtualHost,
};
pub use translate::{
    FLEET_HEADER, Weights, WeightsError, cluster_name, config_digest, encoded_resources, translate,
};

/// The bundled example config, the default of `teal serve`.
pub const DEFAULT_CONFIG: &str = include_str!("../../examples/teal.yaml");

/// The name diagnostics use for [`DEFAULT_CONFIG`].
pub const DEFAULT_CONFIG_NAME: &str = "examples/teal.yaml";

impl Config {
    /// Parses and validates a config file. `file` is only used in
    /// diagnostics. Returns every problem found, in source order.
    pub fn parse(text: &str, file: &str) -> Result<Config, Diagnostics> {
        parse::parse(text, file)
    }

    /// The bundled example, [`DEFAULT_CONFIG`].
    pub fn default_config() -> Result<Config, Diagnostics> {
        Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
    }
}
