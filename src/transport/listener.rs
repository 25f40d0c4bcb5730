//! Accepting TCP connections within limits, for the xDS and admin ports.
//!
//! tonic's own accept loop takes a `TcpListener` as it is: it keeps every
//! connection a client opens, keeps one that never sends a byte for as
//! long as the client likes, and retries a failing `accept` at once, so
//! at the file-descriptor limit (`EMFILE`) it spins a core while the
//! connection that cannot be accepted waits in the backlog. `Incoming`
//! is the stream of connections handed to tonic's
//! `serve_with_incoming_shutdown` instead. It is written here because the
//! three things it adds belong to accepting and nothing in tonic, hyper or
//! tower offers them for a server:
//!
//! - at most [`ConnectionLimits::max_connections`] open at once; past it
//!   the oldest connection still in its handshake is closed to make room
//!   for the new one, and when every open connection has finished its
//!   handshake the new one is closed as soon as it is accepted (its client
//!   sees the connection reset and retries); either is logged. Clients
//!   that open connections and dribble their handshake therefore cannot
//!   keep a real client, whose handshake takes milliseconds, out of a
//!   full port;
//! - each connection (`Conn`) must finish its handshake (TLS, then the
//!   first `PREFACE_BYTES` bytes of its protocol: HTTP/2's whole client
//!   preface) within [`ConnectionLimits::handshake_timeout`] of being
//!   accepted, however it spreads its bytes, and then send something, or
//!   take something written to it, at least every
//!   [`ConnectionLimits::idle_timeout`]; HTTP/2 clients are
//!   pinged after a third of that much silence (see
//!   `ConnectionLimits::keepalive`), so a live one always answers in
//!   time;
//! - a failing `accept` backs off, from 10 ms doubling to 1 s, and is
//!   logged once per `LOG_INTERVAL` with a count, not once per error.
//!
//! With TLS on the port (`Incoming::with_tls`), each connection is
//! handed on as a `ServerConn` that makes its TLS handshake on the
//! connection's own task, over these same limits (see [`crate::transport::tls`]).
//!
//! The HTTP/2 limit on streams per connection is a SETTINGS value, which
//! tonic's server builder sets; it is carried here so both ports take
//! every connection limit from one place.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

use super::conn::{Handshake, Slot};
use crate::transport::tls::{ServerConn, ServerTls};

// What a port accepts, defined beside the connection; named from here too.
pub(crate) use super::conn::Conn;
#[cfg(test)]
pub(crate) use super::conn::PREFACE_BYTES;
pub use super::conn::{ConnectionLimits, Port};

/// How often a repeating problem (failing accepts, refused connections)
/// is logged at most.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// First pause after a failing accept.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);

/// Longest pause between accepts that fail: short enough that teal takes
/// connections again within a second of file descriptors coming free.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The connections of a port, within [`ConnectionLimits`]. Never yields
/// an error: accept errors are waited out here.
#[derive(Debug)]
pub(crate) struct Incoming {
    listener: TcpListener,
    port: Port,
    limits: ConnectionLimits,
    open: Arc<AtomicUsize>,
    backoff: Backoff,
    pause: Option<Pin<Box<Sleep>>>,
    accept_errors: Throttle,
    refusals: Throttle,
    evictions: Throttle,
    /// The connections accepted and maybe still in their handshake,
    /// oldest first: the first to go when the port is full.
    handshaking: VecDeque<Weak<Handshake>>,
    /// The port's TLS, if it speaks TLS.
    tls: Option<Arc<ServerTls>>,
}

impl Incoming {
    /// Accepts from `listener` within `limits`.
    pub(crate) fn new(listener: TcpListener, port: Port, limits: ConnectionLimits) -> Incoming {
        Incoming {
            listener,
            port,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            backoff: Backoff::default(),
            pause: None,
            accept_errors: Throttle::default(),
            refusals: Throttle::default(),
            evictions: Throttle::default(),
            handshaking: VecDeque::new(),
            tls: None,
        }
    }

    /// Makes every connection start with a TLS handshake with `tls`
    /// (plaintext when `None`).
    pub(crate) fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Incoming {
        self.tls = tls;
        self
    }

    /// How many accepted connections are open now.
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> Arc<AtomicUsize> {
        self.open.clone()
    }

    /// Closes the oldest connection still in its handshake, if any; true
    /// if one was (its slot is free at once).
    fn evict_oldest_handshake(&mut self) -> bool {
        while let Some(oldest) = self.handshaking.pop_front() {
            if oldest.upgrade().is_some_and(|h| h.evict()) {
                return true;
            }
        }
        false
    }

    /// Forgets the connections that are closed or past their handshake:
    /// from the front at every accept, and all through when the list
    /// grows past twice the connection limit (a slow handshake at the
    /// front keeps the ones behind it until it ends).
    fn prune_handshaking(&mut self) {
        let live = |w: &Weak<Handshake>| w.upgrade().is_some_and(|h| h.is_handshaking());
        while self.handshaking.front().is_some_and(|w| !live(w)) {
            self.handshaking.pop_front();
        }
        if self.handshaking.len() > self.limits.max_connections.saturating_mul(2) {
            self.handshaking.retain(live);
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) -> Option<ServerConn> {
        self.prune_handshaking();
        let open = self.open.load(Ordering::Relaxed);
        if open >= self.limits.max_connections && self.evict_oldest_handshake() {
            if let Some(also) = self.evictions.due(Instant::now()) {
                tracing::warn!(
                    port = self.port.name(),
                    %peer,
                    limit = self.limits.max_connections,
                    flag = self.port.max_connections_flag(),
                    evicted_since_last_report = also,
                    "the port is at its connection limit: closed the oldest connection \
                     still in its handshake to make room"
                );
            }
        } else if open >= self.limits.max_connections {
            if let Some(also) = self.refusals.due(Instant::now()) {
                tracing::warn!(
                    port = self.port.name(),
                    %peer,
                    limit = self.limits.max_connections,
                    flag = self.port.max_connections_flag(),
                    refused_since_last_report = also,
                    "connection refused: the port is at its connection limit"
                );
            }
            return None;
        }
        // Nagle's algorithm would hold back small responses and pings.
        let _ = stream.set_nodelay(true);
        let slot = Slot::take(&self.open);
        self.handshaking.push_back(Arc::downgrade(&slot.handshake));
        let conn = Conn::new(stream, &self.limits, slot);
        Some(match &self.tls {
            Some(tls) => ServerConn::tls(conn, tls),
            None => ServerConn::plain(conn, self.port),
        })
    }
}

impl Stream for Incoming {
    type Item = io::Result<ServerConn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = this.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    this.backoff.reset();
                    if let Some(conn) = this.admit(stream, peer) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                }
                // The client gave up before teal took the connection:
                // nothing is wrong with teal, try the next one.
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    let delay = this.backoff.next_delay();
                    if let Some(also) = this.accept_errors.due(Instant::now()) {
                        tracing::warn!(
                            port = this.port.name(),
                            error = %e,
                            retry_in = ?delay,
                            failed_since_last_report = also,
                            "cannot accept connections; backing off"
                        );
                    }
                    this.pause = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
    }
}

/// Accept errors that are about one connection, not about teal.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// The pause before the next accept after failures: 10 ms, doubling up to
/// 1 s, back to 10 ms after an accept succeeds.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = BACKOFF_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Says when a repeating problem is due to be logged again: at once the
/// first time, then at most once per [`LOG_INTERVAL`], with how many
/// occurrences went unlogged in between.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// `Some(unlogged occurrences since the last report)` when this one
    /// should be logged.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
