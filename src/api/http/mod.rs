//! The HTTP/JSON API, on `--http-listen` (off unless given): for callers
//! that cannot speak gRPC easily (serverless functions, edge workers, Nginx
//! and Kong plugins, curl) and for the web console. docs/http.md describes
//! it for its users.
//!
//! It adds no behaviour of its own: every route calls the same in-process
//! service the gRPC API calls, so the two cannot disagree.
//!
//! - [`authorize`]: `POST /v1/authorize`, through
//!   [`AuthorizerService::decide`] (the same limiter, `--on-store-error`
//!   included).
//! - [`admin`]: every Admin operation as REST under `/v1/`, through
//!   [`AdminService`] behind its own bearer-token check ([`AdminAuth`]).
//! - [`stats`]: `GET /v1/stats` (Admin): decisions by reason since start,
//!   the store's and the catalog's state, for the console's overview.
//! - [`health`]: `/healthz` and `/readyz` ([`Readiness`], as gRPC health).
//! - [`console`]: the web console at `/console/`, embedded static files
//!   (not in the OpenAPI document: no API).
//! - [`openapi`]: `/openapi.json`, generated from the handlers'
//!   `#[utoipa::path]` attributes and the proto messages' derives
//!   (`build.rs`): utoipa-axum builds the router and the document from the
//!   same list, so a route cannot be served undocumented.
//! - [`json`], [`error`]: reading requests, and the one error body.

pub mod admin;
pub mod authorize;
pub mod console;
pub mod error;
pub mod health;
pub mod json;
pub mod openapi;
pub mod stats;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, Uri};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use tokio::net::TcpListener;
use tonic::Code;
use utoipa_axum::router::OpenApiRouter;

use self::error::HttpError;
use super::admin::{AdminAuth, AdminService};
use super::authorizer::AuthorizerService;
use super::readiness::Readiness;
use crate::tls::{Alpn, ServerTls, TlsIncoming, TlsListener};

/// The limits of the HTTP listener (from [`crate::config::Settings`]).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Deadline of `POST /v1/authorize` (`--request-timeout-ms`).
    pub request_timeout: Duration,
    /// Deadline of an Admin call (`--admin-request-timeout-ms`).
    pub admin_request_timeout: Duration,
    /// Largest `POST /v1/authorize` body (`--max-message-bytes`).
    pub max_body_bytes: usize,
    /// Largest Admin body: room for the largest CSV import.
    pub admin_max_body_bytes: usize,
}

/// What the handlers share: the services they call.
#[derive(Clone)]
pub struct HttpApi {
    authorizer: Arc<AuthorizerService>,
    /// `None` with `--admin-listen off`.
    admin: Option<Arc<AdminService>>,
    auth: AdminAuth,
    readiness: Readiness,
    limits: HttpLimits,
    /// When this API was made, at start (`GET /v1/stats`).
    started_at_ms: u64,
    /// `/openapi.json`, rendered once the router is built.
    openapi_json: Arc<OnceLock<String>>,
    /// The header `GET /v1/self` reads the API key from: Envoy's
    /// (`--api-key-header`), lowercase.
    api_key_header: Arc<str>,
}

impl HttpApi {
    /// The API over these services. `admin` is `None` when the Admin service
    /// is off; its routes then answer 501.
    pub fn new(
        authorizer: Arc<AuthorizerService>,
        admin: Option<Arc<AdminService>>,
        auth: AdminAuth,
        readiness: Readiness,
        limits: HttpLimits,
    ) -> Self {
        let started_at_ms = crate::model::now_ms();
        let api_key_header = Arc::from("x-api-key");
        Self { authorizer, admin, auth, readiness, limits, started_at_ms, openapi_json: Arc::default(), api_key_header }
    }

    /// The same API, reading `GET /v1/self`'s key from `header` (lowercase).
    pub fn with_api_key_header(mut self, header: &str) -> Self {
        self.api_key_header = Arc::from(header);
        self
    }

    /// Every route, and the web console, with JSON answers for unknown paths
    /// (404) and methods (405).
    pub fn router(self) -> Router {
        let (router, doc) = self.routes().split_for_parts();
        let json = doc.to_pretty_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let _ = self.openapi_json.set(json);
        router
            .merge(console::routes())
            .fallback(no_route)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self)
    }

    /// The OpenAPI document of [`router`](Self::router).
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        self.routes().split_for_parts().1
    }

    /// The routes and their documentation, each group with its deadline, body
    /// limit and (Admin) credentials.
    fn routes(&self) -> OpenApiRouter<HttpApi> {
        let data_plane = authorize::routes()
            .layer(axum::middleware::from_fn_with_state(self.limits.request_timeout, deadline))
            .layer(axum::middleware::from_fn(traced))
            .layer(axum::extract::DefaultBodyLimit::max(self.limits.max_body_bytes));
        let admin = admin::routes()
            .merge(stats::routes())
            .layer(axum::middleware::from_fn_with_state(self.clone(), admin::require_admin))
            .layer(axum::middleware::from_fn_with_state(self.limits.admin_request_timeout, deadline))
            .layer(axum::extract::DefaultBodyLimit::max(self.limits.admin_max_body_bytes));
        OpenApiRouter::with_openapi(openapi::base())
            .merge(data_plane)
            .merge(admin)
            .merge(health::routes())
            .merge(openapi::routes())
    }
}

/// Answers a call that does not finish within `timeout` with 504
/// `CANCELLED` "Timeout expired", as tonic answers a gRPC call past its
/// deadline.
async fn deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, next.run(req)).await.map_err(|_| HttpError::new(Code::Cancelled, "Timeout expired"))
}

/// Runs a data-plane call inside its server span (`traces::http_span`),
/// child of the caller's trace context; Admin and health calls are not
/// traced, as on gRPC.
async fn traced(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let span = {
        let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("", |p| p.as_str());
        crate::telemetry::traces::http_span(req.method(), route, req.headers())
    };
    next.run(req).instrument(span).await
}

async fn no_route(method: Method, uri: Uri) -> HttpError {
    HttpError::new(Code::NotFound, format!("no route {method} {}: the routes are listed at /openapi.json", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    HttpError::with_status(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        format!("{} does not take {method}: the methods are listed at /openapi.json", uri.path()),
    )
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// calls in flight finish (the caller bounds that wait, like the gRPC
/// listeners' drain). With `tls`, every connection is TLS first (HTTP/2 or
/// HTTP/1.1 by ALPN; [`crate::tls`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // The peer's address reaches the Admin routes (the failure throttle and
    // the audit trail) as `ConnectInfo`, with and without TLS.
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        Some(tls) => {
            let local = listener.local_addr()?;
            let tcp = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            // tap_io (doing nothing: TCP_NODELAY is set above) so that the
            // peer address works as ConnectInfo, as on the plaintext path.
            let listener = TlsListener::new(TlsIncoming::new(tcp, tls, Alpn::Http), local).tap_io(|_| {});
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::catalog::store::CatalogService;
    use crate::config::OnStoreError;
    use crate::limiter::Limiter;
    use crate::store::keys::Keys;
    use crate::store::memory::MemoryStore;
    use crate::store::Store;
    use crate::usage::UsageService;

    fn api() -> HttpApi {
        let catalog = CatalogService::memory(Default::default()).unwrap();
        let store = Store::Memory(Arc::new(MemoryStore::new()));
        let limiter = Arc::new(Limiter::new(catalog.handle(), store.clone(), Keys::default(), None));
        let admin = AdminService::new(catalog.clone(), UsageService::new(store.clone(), Keys::default()));
        let limits = HttpLimits {
            request_timeout: Duration::from_secs(1),
            admin_request_timeout: Duration::from_secs(1),
            max_body_bytes: 1024,
            admin_max_body_bytes: 1024,
        };
        HttpApi::new(
            Arc::new(AuthorizerService::new(limiter, OnStoreError::Unavailable)),
            Some(Arc::new(admin)),
            AdminAuth::new(None),
            Readiness::new(store, catalog),
            limits,
        )
    }

    /// The paths the router serves, read from its `Debug` output: axum
    /// prints its path table as `paths: {RouteId(n): "/path", ...}` and has
    /// no other way to list routes. The fallback's own table (printed after
    /// `fallback_router`) is left out.
    fn served_paths(router: &Router) -> BTreeSet<String> {
        let debug = format!("{router:?}");
        let path_router = debug.split("fallback_router").next().unwrap_or_default();
        path_router
            .split("RouteId(")
            .filter_map(|piece| piece.trim_start_matches(|c: char| c.is_ascii_digit()).strip_prefix("): \""))
            .filter_map(|rest| rest.split_once('"').map(|(path, _)| path.to_string()))
            .collect()
    }

    #[test]
    fn every_served_path_is_documented() {
        let api = api();
        let documented: BTreeSet<String> = api.openapi().paths.paths.keys().cloned().collect();
        let mut served = served_paths(&api.router());
        for console in console::PATHS {
            assert!(served.remove(console), "the console's route {console} is not served: {served:?}");
        }
        assert!(served.len() >= 17, "axum's Debug output changed; read the paths anew: {served:?}");
        assert_eq!(served, documented, "a route is served but not in the OpenAPI document (or the reverse)");
    }

    /// Every Admin route has its row in the one table of roles
    /// (`api::access::OPERATIONS`), and every row's route is served.
    #[test]
    fn every_admin_route_has_a_role() {
        use crate::api::access;
        let doc = api().openapi();
        let mut seen = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            for (method, _) in methods.iter().filter(|(_, has)| *has) {
                // The data plane's routes: no admin role.
                if !path.starts_with("/v1/") || path == "/v1/authorize" || path == "/v1/self" || path == "/v1/refund" {
                    continue;
                }
                let op = access::by_route(method, path);
                assert!(op.is_some(), "{method} {path} has no row in api::access::OPERATIONS");
                seen.insert((*method, path.as_str()));
            }
        }
        for o in access::OPERATIONS {
            let (m, p) = o.http.unwrap();
            assert!(seen.contains(&(m, p)), "{} names the route {m} {p}, which is not served", o.name);
        }
    }
}
