//! teal: an Envoy xDS control plane for blue/green deployments.
//!
//! # Layout
//!
//! From the outside in; a module uses only those below it.
//!
//! - [`cli`]: the `teal` command line; each command is a function here.
//! - [`serve`]: `teal serve`, which wires config, store, controller and
//!   servers together.
//! - [`kubernetes`]: fleets whose endpoints are a Kubernetes Service's ready
//!   EndpointSlice endpoints, and weights that follow a Gateway API
//!   HTTPRoute, fed to the controller (feature `kubernetes`, on by
//!   default).
//! - [`controller`]: runs rollouts: owns the config, the durable state and
//!   the snapshot writer.
//! - [`admin`]: the admin API (gRPC), `/metrics`, `/healthz` and the
//!   dashboard, over which the CLI and browsers drive teal, and the
//!   [`Backend`](admin::Backend) it runs over.
//!   The controller implements that trait, so the admin API sits below the
//!   controller and knows it only through it.
//! - [`metrics`]: the counters the controller and the proxy registry
//!   feed, served at `/metrics`.
//! - `ha`: replicas on etcd: who leads, fencing, and the leader's view of
//!   every replica's proxies.
//! - [`state`]: durable state (live fleets, weights, versions, history,
//!   cordons) and where it is kept (a directory, or etcd).
//! - [`rollout`]: blue/green operations as pure machines, their plans and
//!   progress, the HTTP checks they run, registered endpoints.
//! - [`config`]: the YAML config model, its validation, the weights, and
//!   the translation to Envoy resources.
//! - [`xds`]: the xDS engine: resource types, snapshots and their store,
//!   pure per-stream state machines, proxy status, CSDS, the gRPC layer.
//! - [`transport`]: accepting connections within limits, TLS, and the
//!   identity of a client certificate.
//! - [`shutdown`], [`exit`], `text`, `files`: shutdown as a value,
//!   the exit codes, untrusted text escaped and cut for a terminal or a
//!   log, and files read within a bound.
//!
//! The order, bottom up, is [`LAYERS`]. A test reads every path in `src/`
//! that names an item of this crate and fails, naming the file and line,
//! on one that reaches a layer above its own, and on files of one layer
//! that import each other in a loop: no two layers, and no two files,
//! depend on each other both ways. The same test keeps the unit tests to
//! one convention (docs/tests.md, "Unit tests").

pub mod admin;
pub mod cli;
pub mod config;
pub mod controller;
pub mod exit;
pub(crate) mod files;
pub(crate) mod ha;
pub mod kubernetes;
pub mod metrics;
pub mod rollout;
pub mod serve;
pub mod shutdown;
pub mod state;
pub(crate) mod text;
pub mod transport;
pub mod xds;

/// The layers, bottom up: a module may use those before it in this list,
/// never those after it.
pub const LAYERS: &[&str] = &[
    "text",
    "shutdown",
    "exit",
    "files",
    "transport",
    "xds",
    "config",
    "rollout",
    "state",
    "ha",
    "metrics",
    "admin",
    "controller",
    "kubernetes",
    "serve",
    "cli",
];

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
