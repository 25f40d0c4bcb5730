//! The dashboard on the admin port: one page whose files are built into
//! the binary, the live state as Server-Sent Events (`events`), and the
//! actions the page (or a script) may take with a token (`actions`).
//!
//! | Method, path | Token | What |
//! |---|---|---|
//! | `GET /` | no | the page |
//! | `GET /assets/app.js`, `GET /assets/app.css` | no | its script and style |
//! | `GET /v1/events` | no | the live state, `text/event-stream` |
//! | `GET /v1/whoami` | yes | the token's name |
//! | `POST /v1/actions/<verb>` | yes | flip, shift, rollback, retire, abort, cordon, uncordon |
//!
//! Every answer carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, nothing inline, no frames, no forms), so
//! text from proxies or operators that reached the page as markup would
//! still run nothing. A token travels only in `Authorization: Bearer`:
//! never in a URL (which lands in logs and history) or a cookie (which a
//! browser would attach to a forged cross-site request). No CORS header is
//! ever sent, so another origin's page cannot send that header at all.

mod actions;
mod events;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use events::EventLimits;
pub(crate) use events::Kick;
use events::{EventParts, Events};

use super::auth::Tokens;
use super::backend::Backend;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::xds::ProxyRegistry;

/// The page, its script and its style, as built into the binary.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The policy of every answer: this origin's scripts, styles, images and
/// connections, nothing else, nothing inline.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// What the dashboard serves from.
pub(crate) struct DashboardParts {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) registry: Arc<ProxyRegistry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tokens: Tokens,
    pub(crate) limits: EventLimits,
    /// The largest action body read (`--max-gate-request-bytes`).
    pub(crate) max_request_bytes: usize,
    pub(crate) shutdown: Shutdown,
    /// Told of every change asked for here, as the gRPC service tells it.
    pub(crate) kick: Kick,
}

/// What the handlers share.
struct Dashboard {
    backend: Arc<dyn Backend>,
    tokens: Tokens,
    max_request_bytes: usize,
    events: Arc<Events>,
    kick: Kick,
}

/// The dashboard's routes, to merge into the admin port's router.
pub(crate) fn router(parts: DashboardParts) -> axum::Router {
    let events = Events::new(EventParts {
        backend: parts.backend.clone(),
        registry: parts.registry.clone(),
        metrics: parts.metrics,
        tokens: parts.tokens.clone(),
        limits: parts.limits,
        shutdown: parts.shutdown,
        kick: parts.kick.clone(),
    });
    let dashboard = Arc::new(Dashboard {
        backend: parts.backend,
        tokens: parts.tokens,
        max_request_bytes: parts.max_request_bytes,
        events,
        kick: parts.kick,
    });
    axum::Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { page("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/v1/events",
            get(|State(d): State<Arc<Dashboard>>| async move { d.events.open() }),
        )
        .route("/v1/whoami", get(whoami))
        .route("/v1/actions/{verb}", post(action))
        .layer(axum::middleware::map_response(secure))
        .with_state(dashboard)
}

/// One of the page's files. Not cached: a new teal serves a new page.
fn page(content_type: &'static str, text: &'static str) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-store")],
        text,
    )
}

/// `GET /v1/whoami`: the name of the token the request carries.
async fn whoami(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> axum::response::Response {
    match actions::authorize(&d.tokens, &headers) {
        Ok(actor) => actions::reply(StatusCode::OK, &serde_json::json!({ "actor": actor })),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /v1/actions/<verb>`.
async fn action(
    State(d): State<Arc<Dashboard>>,
    Path(verb): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> axum::response::Response {
    let limit = d.max_request_bytes;
    match actions::act(&*d.backend, &d.tokens, limit, &verb, &headers, body).await {
        Ok((status, answer)) => {
            d.kick.kick();
            actions::reply(status, &answer)
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Adds the security headers every dashboard answer carries.
async fn secure<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What in `html` the policy would block or that would run inline:
    /// a script without `src`, a style sheet or attribute, an `on...=`
    /// handler, a `javascript:` URL.
    fn inline_code(html: &str) -> Vec<String> {
        let tags = html
            .split('<')
            .skip(1)
            .filter_map(|t| t.split('>').next())
            .map(str::to_ascii_lowercase);
        let mut found = Vec::new();
        for tag in tags {
            let handler = tag
                .split_whitespace()
                .skip(1)
                .any(|attr| attr.starts_with("on") && attr.contains('='));
            if (tag.starts_with("script") && !tag.contains(" src="))
                || tag.starts_with("style")
                || tag.contains(" style=")
                || tag.contains("javascript:")
                || handler
            {
                found.push(format!("<{tag}>"));
            }
        }
        found
    }

    #[test]
    fn the_page_has_no_inline_script_style_or_handler() {
        assert_eq!(inline_code(INDEX_HTML), Vec::<String>::new());
    }

    #[test]
    fn inline_code_is_found() {
        for html in [
            "<script>alert(1)</script>",
            "<SCRIPT type=module>x</SCRIPT>",
            "<img src=x onerror=alert(1)>",
            "<div style=\"color:red\">",
            "<a href=\"javascript:alert(1)\">",
            "<style>p{}</style>",
        ] {
            assert_eq!(inline_code(html).len(), 1, "{html}");
        }
        assert!(inline_code("<script src=\"/assets/app.js\" defer></script>").is_empty());
    }

    #[test]
    fn the_policy_allows_nothing_inline_and_no_frames() {
        assert!(CSP.contains("default-src 'none'"));
        assert!(CSP.contains("script-src 'self';"));
        assert!(!CSP.contains("unsafe-inline"));
        assert!(CSP.contains("frame-ancestors 'none'"));
    }
}
