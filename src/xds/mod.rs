//! The xDS engine.
//!
//! - [`protocol`]: what the two stream flavours share: the proxy's identity,
//!   subscriptions, ACK/NACK, errors, and the events streams report.
//! - [`sotw`]: the state-of-the-world stream state machine.
//! - [`delta`]: the incremental (delta) stream state machine.
//! - [`limits`]: what one stream may make teal hold, and the errors past it.
//! - [`status`]: what teal knows of every connected proxy.
//! - `load`: what the proxies' load reports (LRS) say their traffic did.
//! - `lrs`: LRS, where the proxies send those load reports.
//! - `csds`: CSDS, that knowledge for mesh tooling, with the resources sent.
//! - `codec`: the gRPC codec that writes pre-encoded responses.
//! - `cordon`: proxies that operations do not wait for (the registry
//!   marks them; the controller keeps them in the stored state).
//! - `gate`: who may hold a stream on the xDS port (identity, serving).
//! - `server`: the tonic services; they only pump messages between the
//!   network, the state machines and the snapshot store.
//! - [`resources`]: the four xDS resource types, in make-before-break order.
//! - [`snapshot`]: what teal serves at one version, encoded once.
//! - [`snapshot_store`]: one writer publishes whole snapshots; every stream
//!   reads them.
//! - `wire`: hand-assembled discovery responses that streams share.
//!
//! The state machines are pure (requests and snapshots in, responses and
//! events out) so the protocol is tested without a network.

pub(crate) mod codec;
pub(crate) mod cordon;
pub(crate) mod csds;
pub mod delta;
pub(crate) mod gate;
pub mod limits;
pub(crate) mod load;
pub(crate) mod lrs;
pub(crate) mod lrs_codec;
pub mod protocol;
pub mod resources;
pub(crate) mod server;
pub mod snapshot;
pub mod snapshot_store;
pub mod sotw;
pub mod status;
pub(crate) mod wire;

pub use csds::{ClientStatus, CsdsLimits};
pub use limits::StreamLimits;
#[cfg(test)]
pub(crate) use limits::{Limit, OverLimit};
pub use lrs::LoadReportConfig;
pub use protocol::{NodeInfo, Planner, StreamEvent, StreamKind};
pub use server::{XdsServer, XdsServerConfig};
pub(crate) use status::{Changes, EventSink, StreamMap};
pub use status::{ProxyRegistry, ProxyStatus};

#[cfg(test)]
mod fixtures;
