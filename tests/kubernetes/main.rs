//! Fleets whose endpoints come from Kubernetes EndpointSlices, against a
//! fake API server in the test process that speaks the real list/watch
//! protocol (`support/kube_api.rs`): the watcher on its own, and a flip
//! through the real binary and a real Envoy while green's pods become
//! ready. Also the example manifests, kept valid.
//!
//! Run one module with `cargo test --test kubernetes flip::`. The map is
//! in `docs/tests.md`.

#![cfg(feature = "kubernetes")]

#[path = "../support/mod.rs"]
mod support;

mod examples;
mod flip;
mod routes;
mod watcher;
