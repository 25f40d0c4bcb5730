//! TLS and mTLS for both ports, with certificates that rotate in place.
//!
//! teal speaks TLS with rustls (ring as the crypto provider, no OpenSSL).
//! A port's [`ServerTls`] holds the whole rustls `ServerConfig` built from
//! its certificate chain, key and (for mTLS) client CA; each new
//! connection takes the config current at its accept. A rotation builds a
//! new config from the files and swaps it in whole, so a new handshake
//! sees the new certificate, an established connection keeps the session
//! it has (its streams are never dropped), and a certificate that does not
//! load (a half-written file, a key that does not match) is refused,
//! logged, and the old one keeps serving. The CA is swapped with the
//! certificate, which a certificate resolver alone could not do.
//!
//! The handshake runs inside the connection (`ServerConn`), lazily, on
//! the connection's own task: the accept loop never waits for a slow
//! client, and the connection limits and the handshake and idle timeouts
//! of [`crate::transport::listener`] apply to the bytes underneath, TLS included:
//! the TLS handshake and then the protocol's preface must both be done
//! within the handshake timeout.
//!
//! The client side ([`client_config`]) is what the CLI uses for
//! `--admin https://...`.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::transport::conn::{Conn, PREFACE_BYTES, Port};
use crate::transport::identity::PeerIdentity;

/// Largest certificate, key or CA file read, in bytes. A chain of a few
/// certificates is a few KiB; a bundle of public roots is ~250 KiB.
pub(crate) const MAX_PEM_BYTES: u64 = 1 << 20;

/// The files of one port's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA (PEM, one or more certificates) that signs client
    /// certificates; with it, a client certificate is required (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is over `MAX_PEM_BYTES`.
    #[error("{path} is larger than {MAX_PEM_BYTES} bytes; it is not a PEM certificate or key")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("{path}: {what}")]
    BadPem {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, an unsupported key type, a CA it cannot use).
    #[error("{0}")]
    Refused(String),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let name = || path.display().to_string();
    let bytes =
        crate::files::read_bounded(path, MAX_PEM_BYTES).map_err(|source| TlsError::Unreadable {
            path: name(),
            source,
        })?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: name() });
    }
    Ok(bytes)
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |what: String| TlsError::BadPem {
        path: path.display().to_string(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no `BEGIN CERTIFICATE` block".to_owned()));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadPem {
        path: path.display().to_string(),
        what: format!("no private key: {e}"),
    })
}

fn roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(pem, path)? {
        store.add(cert).map_err(|e| TlsError::BadPem {
            path: path.display().to_string(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of a port's files as last read, to tell a change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Material, TlsError> {
        Ok(Material {
            cert: read_pem(&files.cert)?,
            key: read_pem(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read_pem).transpose()?,
        })
    }

    fn server_config(
        &self,
        files: &TlsFiles,
        port: Port,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = certificates(&self.cert, &files.cert)?;
        let key = private_key(&self.key, &files.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Refused(e.to_string()))?;
        let builder = match (&self.client_ca, &files.client_ca) {
            (Some(pem), Some(path)) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(pem, path)?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Refused(format!("{}: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            TlsError::Refused(format!(
                "{} with {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
        // gRPC is HTTP/2; the admin port also answers HTTP/1.1 (`curl
        // https://.../metrics`). A client that offers no ALPN is served.
        config.alpn_protocols = match port {
            Port::Xds => vec![b"h2".to_vec()],
            Port::Admin => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        Ok(Arc::new(config))
    }
}

/// What a look at a port's TLS files found.
#[derive(Debug)]
pub(crate) enum Reloaded {
    /// The files hold what they held.
    Unchanged,
    /// New material is in use for new handshakes.
    Rotated,
    /// The files changed but do not load; the old material keeps serving.
    Refused(TlsError),
    /// The files still cannot be used, for the reason last reported: not
    /// worth another log line.
    StillRefused,
}

/// One port's TLS: the config new connections take, and the files it
/// comes from.
#[derive(Debug)]
pub struct ServerTls {
    port: Port,
    files: TlsFiles,
    /// Swapped whole on rotation; read once per accepted connection, the
    /// lock held only to clone the `Arc`.
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// What the files held at the last look, loadable or not: a broken
    /// file is reported once, not at every look.
    last: Mutex<Material>,
    /// Why the files could not be read at the last look (missing, too
    /// large, unreadable): reported again only when the reason changes.
    last_refusal: Mutex<Option<String>>,
}

impl ServerTls {
    /// Reads and checks `files`: any problem is an error, and nothing is
    /// served.
    pub fn load(port: Port, files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let material = Material::read(&files)?;
        let config = material.server_config(&files, port)?;
        Ok(Arc::new(ServerTls {
            port,
            files,
            current: RwLock::new(config),
            last: Mutex::new(material),
            last_refusal: Mutex::new(None),
        }))
    }

    /// The port this is for.
    pub(crate) fn port(&self) -> Port {
        self.port
    }

    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub(crate) fn requires_client_certificate(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for a new connection, with the config current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Re-reads the files (blocking: call it off the async runtime). New
    /// contents that load are swapped in; `forced` (SIGHUP) rebuilds even
    /// unchanged files. Files that cannot be read for the reason of the
    /// last look are [`Reloaded::StillRefused`] (unless `forced`), so a
    /// missing file is reported once, not at every look.
    pub(crate) fn reload(&self, forced: bool) -> Reloaded {
        let material = match Material::read(&self.files) {
            Ok(m) => {
                *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = None;
                m
            }
            Err(e) => {
                let cause = e.to_string();
                let mut last = self.last_refusal.lock().unwrap_or_else(|p| p.into_inner());
                if !forced && last.as_deref() == Some(cause.as_str()) {
                    return Reloaded::StillRefused;
                }
                *last = Some(cause);
                return Reloaded::Refused(e);
            }
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if !forced && *last == material {
            return Reloaded::Unchanged;
        }
        *last = material.clone();
        drop(last);
        match material.server_config(&self.files, self.port) {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
                Reloaded::Rotated
            }
            Err(e) => Reloaded::Refused(e),
        }
    }
}

/// What the server knows of a connection: where it comes from, and the
/// identity its client certificate proved (set when the TLS handshake
/// completes, which is before any request arrives on it). tonic puts
/// this in every request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) remote: Option<std::net::SocketAddr>,
    identity: Arc<OnceLock<PeerIdentity>>,
    closer: Arc<Closer>,
}

/// Closes a connection from outside its task: its next read fails, so
/// the HTTP/2 connection over it ends and drops everything it holds.
#[derive(Debug, Default)]
struct Closer {
    closed: std::sync::atomic::AtomicBool,
    /// The connection's reading task, woken by [`ConnInfo::close`].
    waker: Mutex<Option<std::task::Waker>>,
}

impl ConnInfo {
    fn new(remote: Option<std::net::SocketAddr>) -> ConnInfo {
        ConnInfo {
            remote,
            identity: Arc::default(),
            closer: Arc::default(),
        }
    }

    /// Closes the connection (for a client that holds teal's memory and
    /// reads nothing); its streams end.
    pub(crate) fn close(&self) {
        self.closer
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(w) = self
            .closer
            .waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.wake();
        }
    }

    /// Whether [`ConnInfo::close`] was called; registers `cx` to be woken
    /// when it is.
    fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        {
            let mut waker = self.closer.waker.lock().unwrap_or_else(|p| p.into_inner());
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        self.closer
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn closed_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by teal: its client left answers unread too long",
        )
    }

    /// The identity of the client: [`PeerIdentity::Unauthenticated`]
    /// without a client certificate.
    pub(crate) fn identity(&self) -> PeerIdentity {
        self.identity
            .get()
            .cloned()
            .unwrap_or(PeerIdentity::Unauthenticated)
    }
}

enum Inner {
    Plain(Conn),
    /// Boxed: the handshake state is large and short-lived; an idle TLS
    /// connection should not carry its size.
    Handshaking(Box<tokio_rustls::Accept<Conn>>),
    Tls(Box<TlsStream<Conn>>),
    /// The handshake failed; the error was returned once.
    Failed,
}

/// An accepted connection, in plaintext or TLS, within the port's limits.
pub(crate) struct ServerConn {
    inner: Inner,
    info: ConnInfo,
    port: Port,
    /// Bytes of the protocol's preface still to read before the
    /// connection's handshake is done ([`Conn::establish`]).
    preface_left: usize,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.inner {
            Inner::Plain(_) => "plain",
            Inner::Handshaking(_) => "handshaking",
            Inner::Tls(_) => "tls",
            Inner::Failed => "failed",
        };
        f.debug_struct("ServerConn")
            .field("state", &state)
            .field("info", &self.info)
            .finish()
    }
}

impl ServerConn {
    /// A plaintext connection.
    pub(crate) fn plain(conn: Conn, port: Port) -> ServerConn {
        let remote = conn.peer_addr();
        ServerConn {
            inner: Inner::Plain(conn),
            info: ConnInfo::new(remote),
            port,
            preface_left: PREFACE_BYTES,
        }
    }

    /// A connection whose first bytes are a TLS handshake with `tls`.
    pub(crate) fn tls(conn: Conn, tls: &ServerTls) -> ServerConn {
        let remote = conn.peer_addr();
        ServerConn {
            inner: Inner::Handshaking(Box::new(tls.acceptor().accept(conn))),
            info: ConnInfo::new(remote),
            port: tls.port(),
            preface_left: PREFACE_BYTES,
        }
    }

    /// Counts `n` bytes read of the protocol; the connection's handshake
    /// is done once its preface is in.
    fn count_preface(&mut self, n: usize) {
        if self.preface_left == 0 || n == 0 {
            return;
        }
        self.preface_left = self.preface_left.saturating_sub(n);
        if self.preface_left == 0 {
            match &mut self.inner {
                Inner::Plain(c) => c.establish(),
                Inner::Tls(s) => s.get_mut().0.establish(),
                Inner::Handshaking(_) | Inner::Failed => {}
            }
        }
    }

    /// Drives the handshake; `Ready(Ok)` once the connection speaks TLS
    /// (or plaintext).
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Inner::Handshaking(accept) = &mut self.inner else {
            return match self.inner {
                Inner::Failed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the TLS handshake failed",
                ))),
                _ => Poll::Ready(Ok(())),
            };
        };
        match Pin::new(accept.as_mut()).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(stream)) => {
                let (_, session) = stream.get_ref();
                let identity = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| PeerIdentity::from_certificate(leaf))
                    .unwrap_or(PeerIdentity::Unauthenticated);
                let _ = self.info.identity.set(identity);
                self.inner = Inner::Tls(Box::new(stream));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                self.inner = Inner::Failed;
                // A client without a certificate, with one from another
                // CA, or speaking plaintext: its own problem, and it
                // retries, so not a warning for every attempt.
                tracing::info!(
                    port = self.port.name(),
                    peer = ?self.info.remote,
                    error = %crate::text::untrusted(&e.to_string()),
                    "TLS handshake failed; connection closed"
                );
                Poll::Ready(Err(e))
            }
        }
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.info.poll_closed(cx) {
            return Poll::Ready(Err(ConnInfo::closed_error()));
        }
        std::task::ready!(this.poll_handshake(cx))?;
        let before = buf.filled().len();
        let read = match &mut this.inner {
            Inner::Plain(c) => Pin::new(c).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Handshaking(_) | Inner::Failed => Poll::Ready(Ok(())),
        };
        if let Poll::Ready(Ok(())) = read {
            this.count_preface(buf.filled().len() - before);
        }
        read
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_handshake(cx))?;
        match &mut this.inner {
            Inner::Plain(c) => Pin::new(c).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Handshaking(_) | Inner::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_handshake(cx))?;
        match &mut this.inner {
            Inner::Plain(c) => Pin::new(c).poll_write_vectored(cx, bufs),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Inner::Handshaking(_) | Inner::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Plain(c) => c.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
            Inner::Handshaking(_) | Inner::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(c) => Pin::new(c).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Handshaking(_) | Inner::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(c) => Pin::new(c).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Handshaking(_) | Inner::Failed => Poll::Ready(Ok(())),
        }
    }
}

impl Connected for ServerConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The rustls client config of the CLI: trusting `ca` (PEM) or, without
/// it, the system's roots; presenting `identity` (certificate chain and
/// key, PEM) when given, for mTLS.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTls, TlsError> {
    let roots = match ca {
        Some(path) => roots(&read_pem(path)?, path)?,
        None => {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Refused(
                    "no CA given (--ca or TEAL_CA) and no system CA certificates found".to_owned(),
                ));
            }
            store
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused(e.to_string()))?
        .with_root_certificates(roots);
    let no_certificate = identity.is_none().then(Arc::<NoCertificate>::default);
    let mut config = match (&no_certificate, identity) {
        (Some(resolver), _) => builder.with_client_cert_resolver(resolver.clone()),
        (None, Some((cert, key))) => {
            let chain = certificates(&read_pem(cert)?, cert)?;
            let key_der = private_key(&read_pem(key)?, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                TlsError::Refused(format!("{} with {}: {e}", cert.display(), key.display()))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ClientTls {
        config: Arc::new(config),
        no_certificate,
    })
}

/// The CLI's TLS: the rustls config, and whether the server asked for a
/// certificate the CLI does not have.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    no_certificate: Option<Arc<NoCertificate>>,
}

/// The client-certificate resolver of a CLI without one: it has nothing
/// to offer, and notes that the server asked. With TLS 1.3 a server's
/// refusal comes only after the client's handshake is done, as the
/// failure of whatever the client sends next (or as a reset, depending on
/// timing); knowing that the server asked lets the CLI stop before
/// sending anything, and say why.
#[derive(Debug, Default)]
struct NoCertificate {
    asked: std::sync::atomic::AtomicBool,
}

impl rustls::client::ResolvesClientCert for NoCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, std::sync::atomic::Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// Why the CLI could not open a TLS connection to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("cannot connect: {0}")]
    Tcp(io::Error),
    /// The server closed the connection in the middle of the handshake
    /// without answering anything that is not TLS: a TLS server that
    /// timed the handshake out or closed it at its connection limit (a
    /// plaintext HTTP server answers a TLS hello with bytes of its own).
    #[error(
        "the server closed the connection before the TLS handshake finished: the handshake \
         timed out, or the server is at its connection limit; nothing was sent, try again ({0})"
    )]
    Closed(io::Error),
    /// The server answered the TLS handshake with something that is not
    /// TLS: it serves plaintext (or something else entirely) on that port.
    #[error(
        "the server does not speak TLS ({0}); it may be serving plaintext: use an \
         http:// address if that is what you mean, nothing was sent"
    )]
    NotTls(io::Error),
    /// The handshake failed: the server's certificate is not trusted or
    /// does not name the host, or it refused ours.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The server asks for a client certificate and the CLI has none.
    #[error(
        "the server asks for a client certificate (mTLS): give --cert and --key; nothing was sent"
    )]
    CertificateRequired,
    /// The address has no host to connect to.
    #[error("the address has no host")]
    NoHost,
}

impl ConnectError {
    fn from_handshake(e: io::Error) -> ConnectError {
        let not_tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
        let closed = matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        );
        if not_tls {
            ConnectError::NotTls(e)
        } else if closed {
            ConnectError::Closed(e)
        } else {
            ConnectError::Handshake(e)
        }
    }
}

/// The TLS error somewhere in `e`'s chain of sources, if any: with TLS 1.3
/// a server that refuses the client's certificate says so after the
/// handshake, so the refusal reaches the CLI as the failure of its first
/// call rather than of the connection.
pub(crate) fn rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = err.source();
    }
    None
}

/// The connector the CLI hands tonic for `https://` addresses: TCP, then
/// a TLS handshake with its own rustls config. There is no plaintext path
/// in it, so an `https://` address can never fall back to cleartext.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    tls: ClientTls,
}

impl TlsConnector {
    /// A connector with `tls` (see [`client_config`]).
    pub fn new(tls: ClientTls) -> TlsConnector {
        TlsConnector { tls }
    }
}

type ClientIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = ClientIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<ClientIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let ClientTls {
            config,
            no_certificate,
        } = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoHost)?;
            // `[::1]` in a URI; the name to verify is `::1`.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                ConnectError::Handshake(io::Error::new(io::ErrorKind::InvalidInput, e))
            })?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(ConnectError::from_handshake)?;
            let asked =
                no_certificate.is_some_and(|n| n.asked.load(std::sync::atomic::Ordering::Relaxed));
            if asked {
                return Err(ConnectError::CertificateRequired);
            }
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
