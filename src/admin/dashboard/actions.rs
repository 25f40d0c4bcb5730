//! `POST /v1/actions/<verb>` and `GET /v1/whoami`: what the dashboard (or
//! a script) may change, with a token.
//!
//! A request is checked in this order, and the first check it fails
//! answers it: the verb is one of ours (404), the `Authorization: Bearer`
//! token is one of ours (401), the body is declared JSON (415), it is no
//! larger than `--max-gate-request-bytes` (413), it is this verb's JSON
//! with no unknown field (400). Only then is the backend called, with the
//! same request message and the same conversion as the CLI's gRPC call,
//! so both are validated alike. A refused request never reaches the
//! backend. Errors from the backend are answered by their
//! [`ErrorKind`], never by their text.
//!
//! An operation (flip, shift, rollback, retire) is answered `202` as soon
//! as it started, with its first progress; the page follows it on the
//! event stream. It belongs to the server, as one started by the CLI does.

use std::str::FromStr;

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::admin::auth::Tokens;
use crate::admin::backend::Backend;
use crate::admin::{convert, json, pb};
use crate::rollout::{ErrorKind, Operation, RolloutError};
use crate::text::untrusted;

/// What an action may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Flip,
    Shift,
    Rollback,
    Retire,
    Abort,
    Cordon,
    Uncordon,
}

impl FromStr for Verb {
    type Err = Refusal;

    fn from_str(s: &str) -> Result<Verb, Refusal> {
        Ok(match s {
            "flip" => Verb::Flip,
            "shift" => Verb::Shift,
            "rollback" => Verb::Rollback,
            "retire" => Verb::Retire,
            "abort" => Verb::Abort,
            "cordon" => Verb::Cordon,
            "uncordon" => Verb::Uncordon,
            _ => return Err(Refusal::NoSuchAction),
        })
    }
}

/// Why a request was not acted on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "no such action: the actions are flip, shift, rollback, retire, abort, cordon and uncordon"
    )]
    NoSuchAction,
    /// The token's check failed; the message says how.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("the body must be JSON, sent with Content-Type: application/json")]
    NotJson,
    #[error("the body is over {0} bytes (--max-gate-request-bytes)")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    #[error("the body is not this action's JSON: {0}")]
    BadBody(String),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NoSuchAction => StatusCode::NOT_FOUND,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Unreadable(_) | Refusal::BadBody(_) => StatusCode::BAD_REQUEST,
            Refusal::Rollout(e) => match e.kind() {
                ErrorKind::Invalid => StatusCode::BAD_REQUEST,
                ErrorKind::UnknownService
                | ErrorKind::UnknownFleet
                | ErrorKind::NoSuchOperation => StatusCode::NOT_FOUND,
                ErrorKind::Busy | ErrorKind::Precondition | ErrorKind::CannotAbort => {
                    StatusCode::CONFLICT
                }
                ErrorKind::Limit => StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::NotLeader | ErrorKind::StoreUnavailable | ErrorKind::ShuttingDown => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ErrorKind::Store => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The `kind` of the answer: the snake_case [`ErrorKind`] name, or
    /// what was wrong before the backend was asked.
    fn kind(&self) -> String {
        match self {
            Refusal::NoSuchAction => "no_such_action".into(),
            Refusal::Unauthenticated(_) => "unauthenticated".into(),
            Refusal::NotJson => "unsupported_media_type".into(),
            Refusal::TooLarge(_) => "too_large".into(),
            Refusal::Unreadable(_) | Refusal::BadBody(_) => "invalid".into(),
            Refusal::Rollout(e) => e.kind().as_str().replace('-', "_"),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.to_string(), "kind": self.kind()});
        if let Refusal::Rollout(RolloutError::NotLeader { leader }) = &self {
            body["leader"] = json!(leader);
        }
        reply(self.status(), &body)
    }
}

/// A JSON answer.
pub(crate) fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The token's name, from `Authorization: Bearer <token>` only.
pub(crate) fn authorize(tokens: &Tokens, headers: &HeaderMap) -> Result<String, Refusal> {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    tokens
        .authorize(&metadata)
        .map_err(|status| Refusal::Unauthenticated(status.message().to_owned()))
}

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The body, read up to `limit` bytes.
async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<bytes::Bytes, Refusal> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Refusal::TooLarge(limit));
    }
    let limited = http_body_util::Limited::new(body, limit);
    Ok(http_body_util::BodyExt::collect(limited)
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Refusal::TooLarge(limit)
            } else {
                Refusal::Unreadable(e.to_string())
            }
        })?
        .to_bytes())
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| Refusal::BadBody(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlipBody {
    service: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    skip_checks: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShiftBody {
    service: String,
    #[serde(default)]
    to: Option<String>,
    percents: Vec<u32>,
    #[serde(default)]
    interval_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    service: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    service: String,
    fleet: String,
    #[serde(default)]
    after_ms: u64,
    #[serde(default)]
    drain_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    id: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CordonBody {
    node_id: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UncordonBody {
    node_id: String,
}

/// A request whose verb, token and body were accepted.
enum Action {
    Start(Operation),
    Abort(u64),
    Cordon { node_id: String, reason: String },
    Uncordon { node_id: String },
}

impl Action {
    /// `verb`'s body as an action, through the gRPC request messages so
    /// the CLI's conversion (and its checks) apply.
    fn parse(verb: Verb, bytes: &[u8]) -> Result<Action, Refusal> {
        Ok(match verb {
            Verb::Flip => {
                let b: FlipBody = parse(bytes)?;
                Action::Start(convert::flip(pb::FlipRequest {
                    service: b.service,
                    to: b.to,
                    skip_checks: b.skip_checks,
                    timeout_ms: 0,
                })?)
            }
            Verb::Shift => {
                let b: ShiftBody = parse(bytes)?;
                Action::Start(convert::shift(pb::ShiftRequest {
                    service: b.service,
                    to: b.to,
                    percents: b.percents,
                    interval_ms: b.interval_ms,
                    ..Default::default()
                })?)
            }
            Verb::Rollback => {
                let b: ServiceBody = parse(bytes)?;
                Action::Start(convert::rollback(pb::RollbackRequest {
                    service: b.service,
                    ..Default::default()
                })?)
            }
            Verb::Retire => {
                let b: RetireBody = parse(bytes)?;
                Action::Start(convert::retire(pb::RetireRequest {
                    service: b.service,
                    fleet: b.fleet,
                    after_ms: b.after_ms,
                    drain_timeout_ms: b.drain_timeout_ms,
                })?)
            }
            Verb::Abort => Action::Abort(parse::<AbortBody>(bytes)?.id),
            Verb::Cordon => {
                let b: CordonBody = parse(bytes)?;
                Action::Cordon {
                    node_id: b.node_id,
                    reason: b.reason,
                }
            }
            Verb::Uncordon => Action::Uncordon {
                node_id: parse::<UncordonBody>(bytes)?.node_id,
            },
        })
    }

    async fn run(self, backend: &dyn Backend, actor: &str) -> Result<(StatusCode, Value), Refusal> {
        match self {
            Action::Start(op) => {
                tracing::info!(%actor, verb = %op.verb(), service = %untrusted(op.service()),
                    "dashboard: operation requested");
                let rx = backend.start(op, actor).await?;
                let progress = convert::progress(&rx.borrow());
                Ok((
                    StatusCode::ACCEPTED,
                    json!({"id": progress.id, "progress": json::progress(&progress)}),
                ))
            }
            Action::Abort(id) => {
                tracing::info!(%actor, id, "dashboard: abort requested");
                backend.abort(id, actor).await?;
                Ok((StatusCode::OK, json!({})))
            }
            Action::Cordon { node_id, reason } => {
                let changed = backend.cordon(&node_id, &reason, actor).await?;
                tracing::info!(%actor, node = %untrusted(&node_id), reason = %untrusted(&reason),
                    "dashboard: proxy cordoned");
                Ok((StatusCode::OK, json!({ "changed": changed })))
            }
            Action::Uncordon { node_id } => {
                let changed = backend.uncordon(&node_id, actor).await?;
                tracing::info!(%actor, node = %untrusted(&node_id), "dashboard: proxy uncordoned");
                Ok((StatusCode::OK, json!({ "changed": changed })))
            }
        }
    }
}

/// Checks `verb`, the token and the body, in that order, then acts.
pub(crate) async fn act(
    backend: &dyn Backend,
    tokens: &Tokens,
    limit: usize,
    verb: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Value), Refusal> {
    let verb: Verb = verb.parse()?;
    let actor = authorize(tokens, headers)?;
    if !is_json(headers) {
        return Err(Refusal::NotJson);
    }
    let bytes = read(headers, body, limit).await?;
    Action::parse(verb, &bytes)?.run(backend, &actor).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_refuse_unknown_fields_and_missing_ones() {
        assert!(matches!(
            Action::parse(Verb::Flip, br#"{"service":"web","to":"green"}"#),
            Ok(Action::Start(Operation::Flip { .. }))
        ));
        for (verb, body) in [
            (Verb::Flip, &br#"{"service":"web","too":"green"}"#[..]),
            (Verb::Flip, br#"{"to":"green"}"#),
            (Verb::Flip, br#"{"service":"web""#),
            (Verb::Abort, br#"{"id":-1}"#),
            (Verb::Cordon, br#"{"node_id":"a"}"#),
            (
                Verb::Shift,
                br#"{"service":"web","percents":[10],"interval":5}"#,
            ),
        ] {
            assert!(
                matches!(Action::parse(verb, body), Err(Refusal::BadBody(_))),
                "{verb:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_shift_is_checked_as_the_cli_checks_it() {
        let shift = |percents: &str| {
            Action::parse(
                Verb::Shift,
                format!(r#"{{"service":"web","percents":{percents}}}"#).as_bytes(),
            )
        };
        assert!(matches!(shift("[10,50,100]"), Ok(Action::Start(_))));
        // No steps at all is the conversion's refusal, not the parser's.
        assert!(matches!(
            shift("[]"),
            Err(Refusal::Rollout(RolloutError::Invalid(_)))
        ));
    }

    #[test]
    fn statuses_follow_the_error_kind() {
        let status = |e: RolloutError| Refusal::Rollout(e).status();
        assert_eq!(
            status(RolloutError::Invalid("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(RolloutError::NoSuchOperation(3)),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(RolloutError::NotLeader { leader: None }),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Refusal::Rollout(RolloutError::ShuttingDown).kind(),
            "shutting_down"
        );
        assert_eq!(
            "nope".parse::<Verb>().err().map(|r| r.status()),
            Some(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn only_a_json_content_type_is_json() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().expect("header"));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
