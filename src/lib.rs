//! teal: an Envoy xDS control plane for blue/green deployments.
//!
//! # Layout
//!
//! - [`cli`]: the `teal` command line; each command is a function here.
//! - [`admin`]: the admin API (gRPC), `/metrics` and `/healthz`.
//! - [`serve`]: `teal serve`, which wires config, snapshots and servers.
//! - [`controller`]: runs rollouts: owns the config, the durable state and the snapshot writer.
//! - [`config`]: the YAML config model, its validation and translation to Envoy resources.
//! - [`rollout`]: blue/green operations, their progress, and the backend the admin API drives.
//! - [`resources`]: the four xDS resource types, in make-before-break order.
//! - [`registration`]: endpoints a deploy pipeline or an instance registers through the admin API, with TTLs.
//! - [`cordon`]: proxies that operations do not wait for, kept durably.
//! - [`state`]: durable state (live fleets, weights, versions, history) and where it is kept (a directory, or etcd).
//! - [`ha`]: replicas on etcd: which one leads, and the leader's view of
//!   every replica's proxies.
//! - [`kubernetes`]: fleets whose endpoints are a Kubernetes Service's ready EndpointSlice
//!   endpoints, watched and coalesced (feature `kubernetes`, on by default).
//! - [`checks`]: the HTTP checks a rollout sends straight to a fleet's endpoints.
//! - [`snapshot`]: what teal serves at one version, encoded once.
//! - [`snapshot_store`]: one writer publishes whole snapshots; every stream reads them.
//! - [`xds`]: the xDS engine: pure per-stream state machines, proxy status, CSDS, the gRPC layer.
//! - [`wire`]: hand-assembled discovery responses that streams share.
//! - [`listener`]: accepting connections within limits, for both ports.
//! - [`tls`]: TLS and mTLS for both ports, certificates rotated in place.
//! - [`identity`]: a proxy's identity from its client certificate; which identities may join a group.
//! - [`shutdown`]: shutdown as a value passed to servers.
//! - [`exit`]: the command's exit codes.
//! - [`text`]: untrusted text (node ids, NACK messages) escaped and cut for a terminal or a log line.

pub mod admin;
pub mod checks;
pub mod cli;
pub mod config;
pub mod controller;
pub mod cordon;
pub mod exit;
pub mod ha;
pub mod identity;
pub mod kubernetes;
pub mod listener;
pub mod registration;
pub mod resources;
pub mod rollout;
pub mod serve;
pub mod shutdown;
pub mod snapshot;
pub mod snapshot_store;
pub mod state;
pub mod text;
pub mod tls;
pub mod wire;
pub mod xds;
