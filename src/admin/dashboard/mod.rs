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

mod events;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, Response};
use axum::response::IntoResponse;
use axum::routing::get;

pub use events::EventLimits;
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
    pub(crate) shutdown: Shutdown,
}

/// What the handlers share.
struct Dashboard {
    events: Arc<Events>,
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
    });
    let dashboard = Arc::new(Dashboard { events });
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

/// Adds the security headers every dashboard answer carries.
async fn secure<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
