//! How connections reach teal: accepted within limits, over TLS or not,
//! and who is at the other end.
//!
//! - [`listener`]: accepting connections within limits, for both ports,
//!   with the whole handshake bounded.
//! - [`tls`]: TLS and mTLS for both ports, certificates rotated in place.
//! - [`identity`]: a proxy's identity from its client certificate; which
//!   identities may join a group.

pub mod identity;
pub mod listener;
pub mod tls;
