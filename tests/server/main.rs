//! teal on its own: the library in-process, the `teal` binary and its
//! CLI, the admin API, xDS over gRPC from Rust clients, config parsing
//! and rendering, the state file, and the fuzz corpus replayed. Nothing
//! here starts Envoy, etcd or a Kubernetes API server.
//!
//! One module per subject; run one with `cargo test --test server
//! xds_limits::`. The map is in `docs/tests.md`.

#[path = "../support/mod.rs"]
mod support;

mod admin_api;
mod config_commands;
mod config_errors;
mod config_limits;
mod config_props;
mod config_render;
mod dashboard;
mod fuzz_replay;
mod gates;
mod hostile_text;
mod load_reports;
mod serve_binary;
mod state_crash;
mod toolkit;
mod xds_bad_input;
mod xds_limits;
mod xds_memory;
