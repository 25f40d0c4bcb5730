//! Gates for orchestrators: plain HTTP/JSON on the admin port, read-only,
//! for tools that move traffic in steps and must not move on before the
//! proxies did.
//!
//! - `GET /v1/services/<service>`: what the service's weights are, which
//!   split every proxy confirmed, what is measured, what is running, and
//!   `confirmed`, a boolean Argo Rollouts' `web` analysis provider can
//!   test in its `successCondition`.
//! - `POST /v1/gates/flagger`: a Flagger webhook (`confirm-rollout`,
//!   `confirm-traffic-increase`, `confirm-promotion`): `200` only when the
//!   service's current weights are confirmed by every proxy, `403` with
//!   the reason otherwise. The canary maps to the service named by its
//!   webhook's `metadata.service`, or else to the service named as the
//!   canary.
//!
//! What "confirmed" means is [`crate::rollout::confirmation`]'s. Both are
//! reads, open as the admin API's other reads are (see the module doc of
//! [`super`]); the port's TLS and client certificates apply to them as to
//! everything on it. Each request is bounded: a body of at most
//! `--max-gate-request-bytes`, at most `--max-gate-concurrent` requests
//! being answered at once (further ones wait for a turn), and a service
//! name no longer than a service name can be. Anything else is a clear
//! `4xx` with `{"error": ...}`, never a panic.
//!
//! With replicas, only the leader answers: it runs the operations and sees
//! every replica's proxies, while a follower would see no operation
//! running and count only its own proxies, and could call a change
//! confirmed that is not. A follower answers `503` naming the leader's
//! admin address.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::Backend;
use super::convert;
use crate::rollout::confirmation::{self, Confirmation};
use crate::rollout::{RolloutError, ServiceStatus, StatusView};
use crate::text::untrusted;

/// How much one gate request may make teal hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateLimits {
    /// The largest request body read (`--max-gate-request-bytes`).
    pub max_request_bytes: usize,
    /// Requests answered at once (`--max-gate-concurrent`); each asks the
    /// controller for a status, which walks the service's proxies.
    pub max_concurrent: usize,
}

impl GateLimits {
    /// Flagger's payload is a few hundred bytes; its `metadata` is
    /// whatever the canary's webhook spec says, a few keys.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
    /// Orchestrators poll a gate every few seconds per release; 16 at once
    /// serves hundreds of releases and keeps a flood from queueing work on
    /// the controller.
    pub const DEFAULT_MAX_CONCURRENT: usize = 16;
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
        }
    }
}

/// The longest service name a path may carry: the config's plain names
/// are at most 128 bytes, DNS-style ones 63. A longer one cannot name a
/// service, so it is refused before anything is looked up.
const MAX_SERVICE_NAME: usize = 128;

/// What the gates' handlers share.
struct Gates {
    backend: Arc<dyn Backend>,
    limits: GateLimits,
    /// One permit per request being answered.
    turns: Semaphore,
}

/// The gates' routes, to merge into the admin port's router.
pub(crate) fn router(backend: Arc<dyn Backend>, limits: GateLimits) -> axum::Router {
    let gates = Arc::new(Gates {
        backend,
        limits,
        turns: Semaphore::new(limits.max_concurrent.max(1)),
    });
    axum::Router::new()
        .route(
            "/v1/services/{service}",
            get(service).fallback(|| method_not_allowed("GET")),
        )
        .route(
            "/v1/gates/flagger",
            post(flagger).fallback(|| method_not_allowed("POST")),
        )
        .route("/v1/{*rest}", axum::routing::any(unknown_path))
        .with_state(gates)
}

/// A JSON answer.
fn reply(status: StatusCode, body: &Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    (status, [(CONTENT_TYPE, "application/json")], text).into_response()
}

/// A JSON error: `{"error": message}`.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    reply(status, &json!({ "error": message.to_string() }))
}

async fn method_not_allowed(allowed: &'static str) -> Response {
    let mut answer = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this gate answers {allowed} only"),
    );
    answer.headers_mut().insert(
        axum::http::header::ALLOW,
        axum::http::HeaderValue::from_static(allowed),
    );
    answer
}

async fn unknown_path() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint: the gates are GET /v1/services/<service> and POST /v1/gates/flagger",
    )
}

/// Whether `name` could be a service's name (letters, digits, `-`, `_`,
/// `.`, at most [`MAX_SERVICE_NAME`] bytes), so it is safe to look up and
/// to echo.
fn plausible_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn bad_name(name: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!(
            "\"{}\" is not a service name: letters, digits, '-', '_' and '.', at most {MAX_SERVICE_NAME} bytes",
            untrusted(name).max_chars(MAX_SERVICE_NAME + 8)
        ),
    )
}

impl Gates {
    /// `service`'s status, or the answer that says why there is none.
    async fn status(&self, service: &str) -> Result<ServiceStatus, Response> {
        if !plausible_name(service) {
            return Err(bad_name(service));
        }
        if let Err(e) = self.backend.leading() {
            let leader = match &e {
                RolloutError::NotLeader { leader } => leader.clone(),
                _ => None,
            };
            return Err(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": e.to_string(), "leader": leader }),
            ));
        }
        // The semaphore is never closed, so acquiring only waits.
        let Ok(_turn) = self.turns.acquire().await else {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "teal is stopping"));
        };
        match self.backend.status(Some(service)).await {
            Ok(StatusView { services, .. }) => services
                .into_iter()
                .find(|s| s.name == service)
                .ok_or_else(|| unknown_service(service)),
            Err(RolloutError::UnknownService { .. }) => Err(unknown_service(service)),
            Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e)),
        }
    }
}

fn unknown_service(service: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("unknown service {service:?}: teal's config has no such service"),
    )
}

/// `GET /v1/services/<service>`.
async fn service(
    State(gates): State<Arc<Gates>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(name)) = path else {
        return error(
            StatusCode::BAD_REQUEST,
            "the path is not valid UTF-8 once decoded",
        );
    };
    match gates.status(&name).await {
        Ok(s) => reply(StatusCode::OK, &service_json(&s)),
        Err(answer) => answer,
    }
}

/// The split as `{fleet: weight}`.
fn split(s: &crate::rollout::Split) -> Value {
    json!(s)
}

/// The JSON of `GET /v1/services/<service>` (its fields are documented in
/// docs/cli-and-admin-api.md, "Gates"; they are only ever added to).
pub(crate) fn service_json(s: &ServiceStatus) -> Value {
    let verdict = confirmation::of(s);
    let (confirmed, unconfirmed, reason) = match &verdict {
        Confirmation::Confirmed => (true, Value::Null, Value::Null),
        Confirmation::Unconfirmed(why) => (false, json!(why.kind()), json!(why.to_string())),
    };
    // What is on its way: the split a running operation applies, or the
    // split served that not every proxy holds yet.
    let pending = match (&s.in_progress, &s.confirmed) {
        (Some(p), _) => Some(&p.target),
        (None, None) => Some(&s.weights),
        (None, Some(_)) => None,
    };
    let pb = convert::service_status(s);
    json!({
        "service": s.name,
        "confirmed": confirmed,
        "unconfirmed": unconfirmed,
        "reason": reason,
        "weights": split(&s.weights),
        "confirmed_weights": s.confirmed.as_ref().map(split),
        "pending_weights": pending.map(split),
        "live": s.live,
        "proxies": {
            "acked": s.applied.acked,
            "total": s.applied.total,
            "all_acked": s.applied.all(),
            "waiting_for": s.applied.waiting_for,
            "rejecting": s.applied.rejecting.iter()
                .map(|(proxy, message)| json!({"proxy": proxy, "message": message}))
                .collect::<Vec<_>>(),
        },
        "in_progress": s.in_progress.as_ref().map(|p| json!({
            "id": p.id,
            "verb": p.verb.as_str(),
            "phase": p.phase.as_str(),
            "step": p.step,
            "steps": p.steps,
            "target": split(&p.target),
            "version": p.version.as_ref().map(ToString::to_string),
            "acked": p.acked,
            "total": p.total,
            "waiting_for": p.waiting_for,
            "message": p.message,
        })),
        "last_change": s.last_change.as_ref().map(|h| {
            let outcome = convert::outcome(&h.outcome);
            json!({
                "id": h.id,
                "verb": h.verb.as_str(),
                "actor": h.actor,
                "from": split(&h.from),
                "to": split(&h.to),
                "version": h.version.as_ref().map(ToString::to_string),
                "succeeded": h.outcome.is_success(),
                "outcome": convert::outcome_name(outcome.kind()),
                "reason": h.outcome.reason().map(ToString::to_string),
                "finished_unix_ms": convert::unix_ms(h.finished),
            })
        }),
        "traffic": super::json::traffic(&pb),
        "drains": s.drains.iter().map(|d| json!({
            "fleet": d.fleet,
            "drained": d.is_drained(),
            "proxies": d.proxies,
            "idle": d.idle,
            "in_flight": d.in_flight,
            "draining": d.draining.iter()
                .map(|p| json!({"proxy": p.proxy, "in_flight": p.in_flight}))
                .collect::<Vec<_>>(),
            "not_reporting": d.silent,
        })).collect::<Vec<_>>(),
        // The HTTPRoute driving the service and how far teal got with it.
        "route": s.route.as_ref().map(|r| json!({
            "namespace": r.namespace,
            "name": r.name,
            "generation": r.generation,
            "confirmed_generation": r.confirmed_generation,
            "state": r.state.map(|st| st.as_str()),
        })),
    })
}

/// What teal reads of Flagger's webhook payload
/// (`{name, namespace, phase, checksum, type, metadata}`): the rest is
/// ignored, so a newer Flagger's fields do not break the gate.
#[derive(Debug, serde::Deserialize)]
struct FlaggerPayload {
    /// The canary's name.
    name: String,
    /// The canary's namespace, for the answer only.
    #[serde(default)]
    namespace: String,
    /// The canary's phase (`Progressing`, `Promoting`...), for the answer
    /// only.
    #[serde(default)]
    phase: String,
    /// The webhook's `metadata`, strings by Flagger's schema; `service`
    /// names the teal service when the canary is named otherwise.
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, Value>,
}

/// Why a Flagger payload was not understood.
#[derive(Debug, thiserror::Error)]
enum PayloadError {
    #[error("the body is over {0} bytes (--max-gate-request-bytes)")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    #[error(
        "the body is not Flagger's webhook payload ({{\"name\": ..., \"namespace\": ..., \
         \"phase\": ..., \"metadata\": {{\"service\": ...}}}}): {0}"
    )]
    NotFlagger(String),
    #[error("metadata.service must be a string naming a teal service")]
    ServiceNotText,
}

/// The service a payload names, and the payload.
async fn read_payload(
    request: Request<Body>,
    limit: usize,
) -> Result<(String, FlaggerPayload), PayloadError> {
    if let Some(len) = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(PayloadError::TooLarge(limit));
    }
    let limited = http_body_util::Limited::new(request.into_body(), limit);
    let bytes = http_body_util::BodyExt::collect(limited)
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                PayloadError::TooLarge(limit)
            } else {
                PayloadError::Unreadable(e.to_string())
            }
        })?
        .to_bytes();
    let payload: FlaggerPayload =
        serde_json::from_slice(&bytes).map_err(|e| PayloadError::NotFlagger(e.to_string()))?;
    let service = match payload.metadata.get("service") {
        None => payload.name.clone(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(PayloadError::ServiceNotText),
    };
    Ok((service, payload))
}

/// `POST /v1/gates/flagger`.
async fn flagger(State(gates): State<Arc<Gates>>, request: Request<Body>) -> Response {
    let (service, payload) = match read_payload(request, gates.limits.max_request_bytes).await {
        Ok(read) => read,
        Err(e @ PayloadError::TooLarge(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let s = match gates.status(&service).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let canary = json!({
        "name": untrusted(&payload.name).to_string(),
        "namespace": untrusted(&payload.namespace).to_string(),
        "phase": untrusted(&payload.phase).to_string(),
    });
    match confirmation::of(&s) {
        Confirmation::Confirmed => reply(
            StatusCode::OK,
            &json!({
                "service": s.name,
                "canary": canary,
                "confirmed": true,
                "weights": split(&s.weights),
                "proxies": s.applied.total,
            }),
        ),
        Confirmation::Unconfirmed(why) => reply(
            StatusCode::FORBIDDEN,
            &json!({
                "service": s.name,
                "canary": canary,
                "confirmed": false,
                "unconfirmed": why.kind(),
                "reason": why.to_string(),
            }),
        ),
    }
}

#[cfg(test)]
#[path = "gates_tests.rs"]
mod tests;
