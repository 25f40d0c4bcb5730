//! teal in front of real Envoy processes and real gRPC clients: flips,
//! rollbacks and shifts through the real binary and CLI, TLS and mTLS,
//! the Python proxyless gRPC and CSDS clients, and the README's
//! walk-through run as written. (The test under load is in `tests/load`.)
//!
//! Needs Envoy 1.40 (`TEAL_ENVOY`, or `envoy` on `PATH`), Python with
//! grpcio and xds-protos, and `curl`; `.ci/run` installs them. A test
//! fails, never skips, without them. Run one module with `cargo test
//! --test envoy envoy_flip::`. The map is in `docs/tests.md`.

#[path = "../support/mod.rs"]
mod support;

mod cli_promises;
mod commit_guards;
mod cordon;
mod csds;
mod dashboard;
mod deploy_pipeline;
mod drain;
mod envoy_config;
mod envoy_flip;
mod envoy_xds;
mod grpc_proxyless;
mod load_reports;
mod readme_walkthrough;
mod rollout_semantics;
mod tls;
mod traffic_analysis;
