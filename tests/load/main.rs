//! Tests that load the machine and judge what teal does under that load:
//! no failed request through twenty cycles of flips under traffic
//! (`zero_failure`), twenty flips while replicas are killed under traffic
//! (`ha_load`), and 3,000 proxies of one replica mirrored by another
//! (`ha_proxies_scale`).
//!
//! Their timing holds only if nothing else runs beside them, so they have
//! this binary to themselves and each holds `support::alone()` while it
//! runs: one at a time, whatever the number of test threads. Cargo runs
//! test binaries one after another, so no other test of the suite runs
//! meanwhile either.
//!
//! Needs Envoy 1.40 and etcd; a test fails, never skips, without them.
//! Run one module with `cargo test --test load ha_load::`. The map is in
//! `docs/tests.md`.

#[path = "../support/mod.rs"]
mod support;

mod ha_load;
mod ha_proxies_scale;
mod zero_failure;
