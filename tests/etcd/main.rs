//! teal on a real etcd: the etcd store, TLS and user/password auth to
//! etcd, and replicas sharing one etcd (in-process, or `teal serve`
//! processes killed with `kill -9`), some in front of real Envoys. (The
//! replica tests under load are in `tests/load`.)
//!
//! Needs etcd (`TEAL_ETCD`, or `etcd` on `PATH`) and Envoy 1.40; a test
//! fails, never skips, without them. Run one module with `cargo test
//! --test etcd ha_failover::`. The map is in `docs/tests.md`.

#[path = "../support/mod.rs"]
mod support;

mod etcd_auth;
mod etcd_store;
mod ha_agreement;
mod ha_dashboard;
mod ha_failover;
mod ha_loads;
mod ha_rebalance;
mod ha_registered;
mod ha_replicas;
mod ha_waitset;
