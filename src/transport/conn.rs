//! One accepted connection within its port's limits: its handshake must
//! end in time, it may be evicted while in it to make room, and then it
//! must not stay silent too long. Also which port it came in on and the
//! limits themselves.
//!
//! Apart from the accept loop ([`Incoming`](super::listener::Incoming)),
//! so TLS, which wraps a [`Conn`] in its own handshake, depends on the
//! connection and not on the listener that hands it the connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The bytes of a protocol a connection must have sent, after TLS, for
/// its handshake to be complete: the length of HTTP/2's client preface
/// (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`). An HTTP/1.1 request on the
/// admin port (`GET /metrics HTTP/1.1` and its `Host` header) is longer.
pub(crate) const PREFACE_BYTES: usize = 24;

/// Which of teal's ports a listener serves, for messages and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The xDS port proxies connect to.
    Xds,
    /// The admin API port.
    Admin,
}

impl Port {
    /// The port's name in messages: `xDS` or `admin`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Port::Xds => "xDS",
            Port::Admin => "admin",
        }
    }

    /// The flag that sets this port's connection limit.
    pub(crate) fn max_connections_flag(self) -> &'static str {
        match self {
            Port::Xds => "--max-xds-connections",
            Port::Admin => "--max-admin-connections",
        }
    }
}

/// Bounds on the connections of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; past it the oldest connection still
    /// in its handshake is closed to make room, or, when there is none,
    /// the new one is closed on accept. Default: `ConnectionLimits::XDS_MAX_CONNECTIONS` or
    /// `ConnectionLimits::ADMIN_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection, sent to clients as
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; a client that opens more has
    /// them refused (`REFUSED_STREAM`). Default 100, the least RFC 9113
    /// advises: an Envoy opens one ADS stream, or one per type without ADS.
    pub max_streams_per_connection: u32,
    /// How long a new connection may take, from its accept, to finish
    /// its handshake: TLS, if the port speaks it, and its first
    /// `PREFACE_BYTES` bytes. Default 10 s: a real client sends its
    /// hello and preface at once.
    pub handshake_timeout: Duration,
    /// How long a connection may neither send anything nor take anything
    /// written to it. Default 60 s. HTTP/2 clients are pinged after a
    /// third of that much silence, and each ping must be answered within
    /// another third, so a live client never gets near it. A client that
    /// only reads (an HTTP/1.1 event stream, which sends nothing after its
    /// request) stays while teal's writes to it go through.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// Default connection limit of the xDS port: room for thousands of
    /// proxies, one connection each, with headroom for reconnects.
    pub(crate) const XDS_MAX_CONNECTIONS: usize = 16_384;
    /// Default connection limit of the admin port: the CLI opens one
    /// connection per command and a scraper one; 256 is many operators.
    pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 256;

    /// The defaults for `port`.
    pub fn default_for(port: Port) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: match port {
                Port::Xds => Self::XDS_MAX_CONNECTIONS,
                Port::Admin => Self::ADMIN_MAX_CONNECTIONS,
            },
            max_streams_per_connection: 100,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// The HTTP/2 keepalive for these limits: ping after a third of the
    /// idle timeout without reading anything, and give up on the
    /// connection if the ping is not answered within another third.
    pub(crate) fn keepalive(&self) -> Duration {
        self.idle_timeout / 3
    }
}

/// Where a connection is in its life; see [`Handshake`].
const HANDSHAKING: u8 = 0;
const ESTABLISHED: u8 = 1;
const EVICTED: u8 = 2;
const CLOSED: u8 = 3;

/// A connection's progress through its handshake, shared by the
/// connection and its port's list of handshaking connections. It moves
/// once, by compare-and-swap, from handshaking to established, evicted
/// or closed (and from established to closed), so the port's count goes
/// down exactly once whoever gets there first: an eviction frees the
/// slot at once, before the evicted connection's task has run.
#[derive(Debug)]
pub(super) struct Handshake {
    state: AtomicU8,
    open: Arc<AtomicUsize>,
    /// The task reading the connection, woken when it is evicted.
    waker: Mutex<Option<Waker>>,
}

impl Handshake {
    pub(super) fn is_handshaking(&self) -> bool {
        self.state.load(Ordering::Acquire) == HANDSHAKING
    }

    fn is_evicted(&self) -> bool {
        self.state.load(Ordering::Acquire) == EVICTED
    }

    fn establish(&self) {
        let _ = self.state.compare_exchange(
            HANDSHAKING,
            ESTABLISHED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Evicts the connection if it is still in its handshake: frees its
    /// slot and wakes its task, whose next read fails.
    pub(super) fn evict(&self) -> bool {
        let evicted = self
            .state
            .compare_exchange(HANDSHAKING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if evicted {
            self.open.fetch_sub(1, Ordering::Relaxed);
            if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
        evicted
    }

    fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// One of a port's open connections; the count goes down when it drops
/// (or when it is evicted, whichever comes first).
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) handshake: Arc<Handshake>,
}

impl Slot {
    pub(super) fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::Relaxed);
        Slot {
            handshake: Arc::new(Handshake {
                state: AtomicU8::new(HANDSHAKING),
                open: open.clone(),
                waker: Mutex::new(None),
            }),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let h = &self.handshake;
        if h.state.swap(CLOSED, Ordering::AcqRel) != EVICTED {
            h.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An accepted connection that fails its reads with `TimedOut` once the
/// client has been too slow: when its handshake is not done
/// ([`Conn::establish`]) within [`ConnectionLimits::handshake_timeout`] of
/// its accept, or, after it, when it is silent for
/// [`ConnectionLimits::idle_timeout`]. While in its handshake it can also
/// be evicted to make room for a new connection (its reads then fail with
/// `ConnectionAborted`). The server then drops it, which closes the
/// socket.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// Fires at the deadline as it was when last set; moved forward lazily
    /// (when it fires) rather than on every read.
    timer: Pin<Box<Sleep>>,
    /// When the handshake must be done by.
    handshake_deadline: Instant,
    idle_timeout: Duration,
    /// When the client last sent anything, or a write to it last went
    /// through once its handshake was done; `None` before its first byte.
    last_active: Option<Instant>,
    slot: Slot,
}

impl Conn {
    pub(super) fn new(stream: TcpStream, limits: &ConnectionLimits, slot: Slot) -> Conn {
        let handshake_deadline = Instant::now() + limits.handshake_timeout;
        Conn {
            stream,
            timer: Box::pin(tokio::time::sleep_until(handshake_deadline)),
            handshake_deadline,
            idle_timeout: limits.idle_timeout,
            last_active: None,
            slot,
        }
    }

    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Marks the handshake done: from now on only the idle timeout
    /// applies, and the connection is no longer evicted to make room.
    pub(crate) fn establish(&mut self) {
        self.slot.handshake.establish();
    }

    fn handshake_timed_out() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not finish its handshake (TLS and its protocol's preface) within \
             the handshake timeout",
        )
    }

    fn evicted() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed to make room for a new connection: the port is at its connection limit \
             and this one had not finished its handshake",
        )
    }

    /// Polls the silence deadline: `Ready` with the error once it passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if self.slot.handshake.is_evicted() {
                return Poll::Ready(Self::evicted());
            }
            if self.slot.handshake.is_handshaking() {
                return Poll::Ready(Self::handshake_timed_out());
            }
            // The handshake was done in time: the idle timeout runs from
            // the last sign of life (the handshake's end, at the latest).
            let last = *self.last_active.get_or_insert_with(Instant::now);
            let deadline = last + self.idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing within the idle timeout",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let handshake = &this.slot.handshake;
        let handshaking = handshake.is_handshaking();
        // Registered before the eviction is looked at: an eviction
        // between the two then finds this waker.
        if handshaking {
            handshake.register(cx.waker());
        }
        if handshake.is_evicted() {
            return Poll::Ready(Err(Self::evicted()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    // A client that sends a byte whenever asked never
                    // leaves the read pending, where the timer is looked at.
                    if handshaking && now >= this.handshake_deadline {
                        return Poll::Ready(Err(Self::handshake_timed_out()));
                    }
                    this.last_active = Some(now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(e) => {
                    tracing::debug!(peer = ?this.stream.peer_addr().ok(), error = %e, "closing a silent connection");
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Conn {
    /// Counts a write that went through as a sign of life, once the
    /// handshake is done: a client that stops reading stops taking
    /// writes once the socket's buffers are full, so this keeps alive
    /// only a client that reads (and a stream that stops being read has
    /// its own bound: the event stream's stall timeout).
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) && !self.slot.handshake.is_handshaking()
        {
            self.last_active = Some(Instant::now());
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
