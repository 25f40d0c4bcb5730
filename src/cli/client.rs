//! Talking to the admin API: connecting, the token, and turning gRPC
//! errors into exit codes. Following an operation's progress is
//! `super::progress`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::admin::pb::admin_client::AdminClient;
use crate::rollout::ErrorKind;

use crate::text::untrusted;

pub use crate::exit::EX_USAGE;
pub(crate) use crate::exit::{
    EX_ABORTED, EX_INTERRUPTED, EX_NOINPUT, EX_NOPERM, EX_OK, EX_REFUSED, EX_ROLLED_BACK,
    EX_SOFTWARE, EX_STOPPED, EX_UNAVAILABLE, EX_UNCONFIRMED,
};

/// Why a command stopped: the exit code and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The exit code.
    pub(crate) code: u8,
    /// The message, printed as `teal: <message>` on stderr.
    pub(crate) message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Maps a gRPC status from the admin API at `addr`: by the error kind
    /// the server attached ([`ErrorKind`]), else by the gRPC code; never
    /// by the message, which is only shown.
    pub(crate) fn from_status(status: &Status, addr: &str) -> Failure {
        let msg = untrusted(status.message()).to_string();
        if let Some(kind) = ErrorKind::of(status) {
            return Failure::from_kind(kind, &msg);
        }
        match status.code() {
            Code::Unauthenticated => Failure::new(
                EX_NOPERM,
                format!(
                    "not allowed: {msg}\n  give the admin token with --token, TEAL_TOKEN or --token-file"
                ),
            ),
            // No kind: tonic's own answer for a server it cannot reach.
            Code::Unavailable | Code::Cancelled => unreachable_admin(addr, &msg),
            Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition => {
                Failure::new(EX_REFUSED, format!("refused: {msg}"))
            }
            // What tonic says when an answer is over the client's decode
            // limit (or the server refused a request as too large).
            Code::OutOfRange | Code::ResourceExhausted => Failure::new(
                EX_SOFTWARE,
                format!(
                    "admin API error ({:?}): {msg}\n  this command accepts answers up to \
                     --max-response-bytes (default {DEFAULT_MAX_RESPONSE_BYTES})",
                    status.code()
                ),
            ),
            code => Failure::new(EX_SOFTWARE, format!("admin API error ({code:?}): {msg}")),
        }
    }

    /// Maps an error the admin API named: the server was reached and
    /// refused (1) or could not act (69).
    fn from_kind(kind: ErrorKind, msg: &str) -> Failure {
        match kind {
            ErrorKind::UnknownService
            | ErrorKind::UnknownFleet
            | ErrorKind::Invalid
            | ErrorKind::Precondition
            | ErrorKind::Busy
            | ErrorKind::CannotAbort
            | ErrorKind::NoSuchOperation
            | ErrorKind::Limit
            // The replica is up and keeps serving; the change is refused
            // until its store is back.
            | ErrorKind::StoreUnavailable => Failure::new(EX_REFUSED, format!("refused: {msg}")),
            ErrorKind::Store | ErrorKind::ShuttingDown | ErrorKind::NotLeader => {
                Failure::new(EX_UNAVAILABLE, format!("the server could not act: {msg}"))
            }
        }
    }

    /// Prints the message to `err` and returns the code.
    pub(crate) fn report(&self, err: &mut dyn Write) -> u8 {
        let _ = writeln!(err, "teal: {}", self.message);
        self.code
    }
}

fn unreachable_admin(addr: &str, detail: &str) -> Failure {
    Failure::new(
        EX_UNAVAILABLE,
        format!(
            "cannot reach the teal admin API at {}: {}\n  \
             is `teal serve` running there? set the address with --admin or TEAL_ADMIN",
            untrusted(addr),
            untrusted(detail)
        ),
    )
}

/// The largest answer from the admin API the CLI decodes, by default
/// (`--max-response-bytes`). tonic's own default, 4 MiB, is too small for
/// `teal proxies` or `teal history` on a big fleet; some limit is needed
/// so a broken or hostile server cannot make the CLI allocate without end.
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Where the admin API is and how to sign changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    /// `host:port` or a URL.
    pub(crate) addr: String,
    /// The token given on the command line or in `TEAL_TOKEN`.
    pub(crate) token: Option<String>,
    /// A file holding the token (wins over `token`).
    pub(crate) token_file: Option<PathBuf>,
    /// The largest answer decoded; 0 means [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub(crate) max_response_bytes: usize,
    /// The CA (PEM) that signs the server's certificate, for `https://`;
    /// the system's roots without it.
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS, with `key`.
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub(crate) key: Option<PathBuf>,
}

/// An admin address, parsed once: what the CLI connects to, and what it
/// decides by (TLS or not, where the local token may go).
#[derive(Debug, Clone)]
struct AdminAddr {
    /// The address as a URI, with its scheme.
    uri: http::Uri,
    /// Whether the scheme is `https`.
    https: bool,
    /// The host, without brackets around an IPv6 address.
    host: String,
}

/// Why an admin address is not one the CLI connects to.
#[derive(Debug, thiserror::Error)]
enum AdminAddrError {
    /// Not a URI at all.
    #[error("not an address: {0}")]
    Malformed(http::uri::InvalidUri),
    /// A scheme other than `http` or `https`.
    #[error("the scheme is not http:// or https://")]
    Scheme,
    #[error("no host")]
    NoHost,
    /// `user@host`: refused, because the host is only what follows the
    /// `@`, and anything reading the address by eye (or by a naive split)
    /// takes the part before it for the host.
    #[error("it carries user information (`...@`): give the host and port only")]
    UserInfo,
}

impl AdminAddr {
    /// Parses `host:port` (plaintext) or `http://` / `https://` URLs with
    /// the same parser the connection uses, so the host decided on here is
    /// the host connected to.
    fn parse(addr: &str) -> Result<AdminAddr, AdminAddrError> {
        let text = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let uri: http::Uri = text.parse().map_err(AdminAddrError::Malformed)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(AdminAddrError::Scheme),
        };
        let authority = uri.authority().ok_or(AdminAddrError::NoHost)?;
        if authority.as_str().contains('@') {
            return Err(AdminAddrError::UserInfo);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(AdminAddrError::NoHost);
        }
        Ok(AdminAddr { uri, https, host })
    }

    /// Whether the host is this machine: a loopback IP, or `localhost`.
    fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// The local token of a teal on this machine (see
/// [`crate::admin::local_token`]), for a CLI given no token: read from the
/// state directory teal uses by default here (`TEAL_STATE_DIR`, else
/// `teal-state` in the current directory), and only for an admin address
/// on this machine (`addr`, as parsed for the connection), so it is never
/// sent anywhere else. `None` when there is no such file or it cannot be
/// read; refused (77) when it or its directory belongs to another user,
/// who could have planted it to learn what the CLI then asks for.
fn local_token(addr: &AdminAddr) -> Result<Option<String>, Failure> {
    use crate::admin::local_token::{self, LocalTokenError};
    if !addr.is_loopback() {
        return Ok(None);
    }
    let dir = std::env::var_os("TEAL_STATE_DIR")
        .map_or_else(|| PathBuf::from("teal-state"), PathBuf::from);
    match local_token::read(&dir) {
        Ok(token) => Ok(token),
        Err(e @ LocalTokenError::NotOwned { .. }) => Err(Failure::new(
            EX_NOPERM,
            format!(
                "not using the local admin token: {}\n  or give a token with --token, \
                 TEAL_TOKEN or --token-file",
                untrusted(&e.to_string())
            ),
        )),
        Err(LocalTokenError::Io { .. }) => Ok(None),
    }
}

/// A connection to the admin API.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) client: AdminClient<Channel>,
    /// The address, for messages.
    pub(crate) addr: String,
    token: Option<String>,
    /// Whether the connection is TLS.
    tls: bool,
    /// What it was made from, to reach a replica's leader.
    target: Target,
}

impl Conn {
    /// Reads the token and connects (5 s connect timeout).
    pub(crate) async fn connect(target: &Target) -> Result<Conn, Failure> {
        let addr = target.addr.clone();
        let parsed = AdminAddr::parse(&addr).map_err(|e| {
            Failure::new(
                EX_USAGE,
                format!("bad --admin address {}: {e}", untrusted(&addr)),
            )
        })?;
        let given = target.token.clone().filter(|t| !t.trim().is_empty());
        let token = match &target.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::new(
                        EX_NOINPUT,
                        format!("cannot read token file {}: {e}", path.display()),
                    )
                })?;
                Some(text.trim().to_owned())
            }
            None if given.is_some() => given,
            None => local_token(&parsed)?,
        };
        let endpoint = Endpoint::from(parsed.uri).connect_timeout(Duration::from_secs(5));
        let connector = tls_connector(target, endpoint.uri())?;
        let tls = connector.is_some();
        let connected = match connector {
            Some(tls) => endpoint.connect_with_connector(tls).await,
            None => endpoint.connect().await,
        };
        let channel = connected.map_err(|e| unreachable_admin(&addr, &error_chain(&e)))?;
        let max = match target.max_response_bytes {
            0 => DEFAULT_MAX_RESPONSE_BYTES,
            n => n,
        };
        Ok(Conn {
            client: AdminClient::new(channel).max_decoding_message_size(max),
            addr,
            token,
            tls,
            target: target.clone(),
        })
    }

    /// When `call` failed on a replica that does not lead and names the
    /// leader (another address), a connection to the leader, said on
    /// `err`; the caller retries there once. A token from the command
    /// line goes along; the local token only to a loopback address.
    pub(crate) async fn leader_redirect<T>(
        &self,
        call: &Result<T, Status>,
        err: &mut dyn Write,
    ) -> Result<Option<Conn>, Failure> {
        let Err(status) = call else {
            return Ok(None);
        };
        if ErrorKind::of(status) != Some(ErrorKind::NotLeader) {
            return Ok(None);
        }
        let Some(leader) = status
            .metadata()
            .get(crate::rollout::LEADER_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|a| *a != self.addr && a.len() <= 256)
        else {
            return Ok(None);
        };
        let _ = writeln!(
            err,
            "{} does not lead; asking the leader at {}",
            untrusted(&self.addr),
            untrusted(leader)
        );
        self.to(leader).await.map(Some)
    }

    /// A connection to another replica at `addr` (as replicas advertise
    /// it), with this one's trust settings and token rules; refused (69)
    /// unless it is over the same scheme (see [`Conn::follows_to`]).
    pub(crate) async fn to(&self, addr: &str) -> Result<Conn, Failure> {
        Conn::connect(&self.follows_to(addr)?).await
    }

    /// What connecting to the replica at `addr` (a leader named by a
    /// server, or a replica a server listed) would use: this connection's
    /// trust settings and token, only over the same scheme. A replica's
    /// word never downgrades `https` to plaintext (the token would cross
    /// in the clear) nor moves a plaintext CLI to TLS it was not set up
    /// for; a bare `host:port` takes this connection's scheme. An address
    /// with user information is refused (its host is not what it seems).
    pub(crate) fn follows_to(&self, addr: &str) -> Result<Target, Failure> {
        let scheme = if self.tls { "https" } else { "http" };
        let full = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{scheme}://{addr}")
        };
        let refused = |why: String| {
            Failure::new(
                EX_UNAVAILABLE,
                format!(
                    "{} sends the CLI to {}, which is not followed: {why}\n  \
                     check the replicas' --advertise-admin, or give --admin the leader's \
                     address",
                    untrusted(&self.addr),
                    untrusted(addr)
                ),
            )
        };
        let parsed = AdminAddr::parse(&full).map_err(|e| refused(e.to_string()))?;
        if parsed.https != self.tls {
            return Err(refused(format!(
                "it is {}:// while this CLI speaks {scheme}:// (the same scheme with the \
                 same trust settings, or nothing)",
                parsed.scheme()
            )));
        }
        let mut target = self.target.clone();
        target.addr = full;
        Ok(target)
    }

    /// A request without the token: reads never send it, so a server
    /// (or whoever answers at the address) sees it only when a change
    /// needs it.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        Request::new(message)
    }

    /// A request carrying the token, if there is one: for the calls that
    /// change things.
    pub(crate) fn signed<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(token) = &self.token {
            match format!("Bearer {token}").parse() {
                Ok(value) => {
                    req.metadata_mut().insert("authorization", value);
                }
                Err(_) => tracing::warn!("the token has characters a header cannot carry"),
            }
        }
        req
    }

    /// Maps a status from this server.
    pub(crate) fn fail(&self, status: &Status) -> Failure {
        // With TLS 1.3 the server refuses a client certificate after the
        // handshake: the first call fails with its alert, or with the
        // connection reset, depending on timing.
        if self.tls && status.code() == Code::Unknown {
            let why = match crate::transport::tls::rustls_error(status) {
                Some(e) => e.to_string(),
                None => error_chain(status),
            };
            return unreachable_admin(
                &self.addr,
                &format!(
                    "the server closed the TLS connection ({why}); is --cert a certificate \
                     its --admin-client-ca signed?"
                ),
            );
        }
        Failure::from_status(status, &self.addr)
    }
}

/// The TLS connector for an `https://` address; `None` for plaintext. TLS
/// files with a plaintext address are refused rather than ignored: the
/// user meant TLS, and the token must not cross in the clear.
fn tls_connector(
    target: &Target,
    uri: &http::Uri,
) -> Result<Option<crate::transport::tls::TlsConnector>, Failure> {
    let https = uri.scheme_str() == Some("https");
    let files_given = target.ca.is_some() || target.cert.is_some() || target.key.is_some();
    if !https {
        if files_given {
            return Err(Failure::new(
                EX_USAGE,
                "--ca, --cert and --key (TEAL_CA, TEAL_CERT, TEAL_KEY) need an https:// \
                 --admin address",
            ));
        }
        return Ok(None);
    }
    let identity = match (&target.cert, &target.key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => {
            return Err(Failure::new(
                EX_USAGE,
                "--cert and --key (TEAL_CERT, TEAL_KEY) go together",
            ));
        }
    };
    let config =
        crate::transport::tls::client_config(target.ca.as_deref(), identity).map_err(|e| {
            let code = match e {
                crate::transport::tls::TlsError::Unreadable { .. } => EX_NOINPUT,
                _ => EX_USAGE,
            };
            Failure::new(code, format!("TLS: {}", untrusted(&e.to_string())))
        })?;
    Ok(Some(crate::transport::tls::TlsConnector::new(config)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut last = s.clone();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        // Layers often wrap an error in one that says the same thing
        // (hyper's "tcp connect error" around the connector's); say it once.
        if text != last && !last.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::RolloutError;

    #[test]
    fn statuses_map_to_exit_codes() {
        let code = |s: Status| Failure::from_status(&s, "x").code;
        assert_eq!(code(Status::unauthenticated("no")), EX_NOPERM);
        assert_eq!(code(Status::unavailable("conn refused")), EX_UNAVAILABLE);
        assert_eq!(code(Status::not_found("no service")), EX_REFUSED);
        assert_eq!(code(Status::failed_precondition("busy")), EX_REFUSED);
        assert_eq!(code(Status::internal("bug")), EX_SOFTWARE);
    }

    #[test]
    fn the_error_kind_picks_the_exit_code_not_the_message() {
        let fail = |s: Status| Failure::from_status(&s, "x");
        // The server's kinds, as the admin API sends them.
        let store = fail(RolloutError::Store("disk full".into()).into());
        assert_eq!(store.code, EX_UNAVAILABLE);
        assert!(store.message.contains("could not act"), "{store:?}");
        let closing = fail(RolloutError::ShuttingDown.into());
        assert_eq!(closing.code, EX_UNAVAILABLE);
        assert!(closing.message.contains("could not act"), "{closing:?}");
        let busy = fail(
            RolloutError::Busy {
                service: "web".into(),
                verb: crate::rollout::Verb::Flip,
                id: 3,
            }
            .into(),
        );
        assert_eq!(busy.code, EX_REFUSED);
        // Words in a message mean nothing: an UNAVAILABLE without a kind is
        // a server that was not reached, whatever it says...
        let words = fail(Status::unavailable("state store: shutting down"));
        assert!(words.message.contains("cannot reach"), "{words:?}");
        // ...and a kind is read even from a code that would say otherwise.
        let kind = fail(ErrorKind::Busy.attach(Status::internal("state store")));
        assert_eq!(kind.code, EX_REFUSED);
        // A limit of the server refuses, though RESOURCE_EXHAUSTED without
        // a kind is an answer too large for the client.
        let limit = fail(RolloutError::Limit("over --max-fleet-endpoints".into()).into());
        assert_eq!(limit.code, EX_REFUSED);
        assert_eq!(
            fail(Status::resource_exhausted("too large")).code,
            EX_SOFTWARE
        );
    }

    #[test]
    fn the_host_is_what_the_connection_reaches_and_user_information_is_refused() {
        let host =
            |a: &str| AdminAddr::parse(a).map(|p| (p.host.clone(), p.https, p.is_loopback()));
        assert_eq!(
            host("127.0.0.1:18001").expect("bare"),
            ("127.0.0.1".to_owned(), false, true)
        );
        assert_eq!(
            host("https://[::1]:18001").expect("v6"),
            ("::1".to_owned(), true, true)
        );
        assert!(
            host("http://LocalHost:1").expect("name").2,
            "localhost in any case"
        );
        assert!(!host("http://vm:1").expect("remote").2);
        assert!(!host("localhost.evil:1").expect("remote").2);
        for sly in [
            "http://localhost:x@vm",
            "localhost:x@vm:1",
            "https://127.0.0.1@vm:1",
            "http://@vm:1",
        ] {
            assert!(
                matches!(AdminAddr::parse(sly), Err(AdminAddrError::UserInfo)),
                "{sly}"
            );
        }
        assert!(matches!(
            AdminAddr::parse("ftp://127.0.0.1:1"),
            Err(AdminAddrError::Scheme)
        ));
    }

    #[tokio::test]
    async fn a_replica_is_followed_only_over_the_same_scheme() {
        let conn = |addr: &str, tls: bool| Conn {
            client: AdminClient::new(Endpoint::from_static("http://127.0.0.1:1").connect_lazy()),
            addr: addr.to_owned(),
            token: Some("t".to_owned()),
            tls,
            target: Target {
                addr: addr.to_owned(),
                token: Some("t".to_owned()),
                ..Default::default()
            },
        };
        let https = conn("https://a:1", true);
        assert_eq!(
            https.follows_to("b:2").expect("bare").addr,
            "https://b:2",
            "takes this connection's scheme"
        );
        assert_eq!(
            https
                .follows_to("https://b:2")
                .expect("same")
                .token
                .as_deref(),
            Some("t")
        );
        let down = https.follows_to("http://b:2").expect_err("downgrade");
        assert_eq!(down.code, EX_UNAVAILABLE);
        assert!(down.message.contains("http://b:2"), "{down:?}");
        let plain = conn("a:1", false);
        assert_eq!(plain.follows_to("b:2").expect("bare").addr, "http://b:2");
        assert!(plain.follows_to("https://b:2").is_err(), "nor up");
        let sly = plain.follows_to("localhost:x@b:2").expect_err("user info");
        assert_eq!(sly.code, EX_UNAVAILABLE);
    }

    #[test]
    fn every_error_kind_survives_the_wire_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(
                ErrorKind::of(&kind.attach(Status::internal(""))),
                Some(kind)
            );
        }
        let mut unknown = Status::internal("");
        unknown.metadata_mut().insert(
            crate::rollout::ERROR_KIND_KEY,
            "from-the-future".parse().expect("ascii"),
        );
        assert_eq!(ErrorKind::of(&unknown), None);
    }
}
