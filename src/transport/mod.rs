//! How connections reach teal: accepted within limits, over TLS or not,
//! and who is at the other end.
//!
//! - [`listener`]: accepting connections within limits, for both ports.
//! - `conn`: one accepted connection, its whole handshake bounded, its
//!   silence too.
//! - [`tls`]: TLS and mTLS for both ports, certificates rotated in place.
//! - [`identity`]: a proxy's identity from its client certificate; which
//!   identities may join a group.

pub(crate) mod conn;
pub mod identity;
pub mod listener;
pub mod tls;
