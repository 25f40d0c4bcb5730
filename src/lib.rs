//! teal: an Envoy xDS control plane for blue/green deployments.
//!
//! # Layout
//!
//! - [`config`]: the YAML config model, its validation and translation to Envoy resources.
//! - [`resources`]: the four xDS resource types, in make-before-break order.
//! - [`snapshot`]: what teal serves at one version, encoded once.
//! - [`snapshot_store`]: one writer publishes whole snapshots; every stream reads them.
//! - [`wire`]: hand-assembled discovery responses that streams share.

pub mod config;
pub mod resources;
pub mod shutdown;
pub mod snapshot;
pub mod snapshot_store;
pub mod wire;
pub mod xds;
