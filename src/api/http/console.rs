//! The web console at `/console/` (docs/http.md, "The web console"): the
//! bundle built from `console/` by `scripts/build-console`, committed in
//! `console/dist/` and embedded here, so `cargo build` needs no Node.
//!
//! Static files only, under a strict Content-Security-Policy (everything
//! from this origin, nothing inline, no frames); the console's pages call
//! the Admin API (`/v1/...`) with the admin token the user signs in with.
//! These routes are not in the OpenAPI document: they are no API.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use tonic::Code;

use super::error::HttpError;
use super::HttpApi;

/// The paths the console's routes serve (left out of the OpenAPI document).
pub const PATHS: [&str; 3] = ["/console", "/console/", "/console/{file}"];

/// The policy of every console answer: scripts, styles, images and API
/// calls from this origin only; no inline script or style, no plugins, no
/// framing, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The files of the bundle: name, content type, content.
static FILES: [(&str, &str, &[u8]); 4] = [
    ("index.html", "text/html; charset=utf-8", include_bytes!("../../../console/dist/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../../console/dist/app.js")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../../console/dist/app.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../../console/dist/favicon.svg")),
];

/// The routes: `/console` redirects to `/console/`, which is the console.
pub(super) fn routes() -> Router<HttpApi> {
    Router::new()
        .route(PATHS[0], get(|| async { Redirect::permanent("/console/") }))
        .route(PATHS[1], get(|| async { file("index.html") }))
        .route(PATHS[2], get(|Path(name): Path<String>| async move { file(&name) }))
}

/// One file of the bundle, or 404.
fn file(name: &str) -> Response {
    let Some(&(_, content_type, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        let msg = format!("no file {name:?} in the console: open /console/");
        return HttpError::new(Code::NotFound, msg).into_response();
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Fixed names, no content hashes: revalidate at each load, so a new
    // binary's console is never mixed with an old one's cached files.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
