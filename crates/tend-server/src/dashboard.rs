//! The web dashboard: a static single-page app embedded in the binary, served at `/ui/`.
//!
//! The pages hold no data: the app signs in with an API token (kept in the browser tab's session
//! storage) and reads everything through the same v1 API and event stream as the CLI, so what it
//! can see and do is exactly what the token's role allows. Only the sign-in shell is served
//! without a token.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// Same-origin only: scripts and styles from the binary, API calls to this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Assets change with the binary: revalidate each time (they are small).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The dashboard's routes (no token needed: they serve only the app itself).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_app_only_talks_to_its_own_origin() {
        // No external scripts, fonts or calls: the dashboard works air-gapped and leaks nothing.
        for text in [super::INDEX, super::APP_JS, super::APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"), "an absolute URL in an asset");
        }
        assert!(super::INDEX.contains("/ui/app.js") && super::INDEX.contains("/ui/app.css"));
    }
}
