//! `GET /healthz` (the process runs) and `GET /readyz` (it can decide: the
//! same condition as gRPC health's SERVING, [`Readiness`](crate::api::readiness::Readiness)).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::HttpApi;

/// The routes.
pub(super) fn routes() -> OpenApiRouter<HttpApi> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// Whether the process is alive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `"ok"`.
    pub status: String,
}

/// Whether this replica can decide, and if not, why.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Both below: decisions can be made (gRPC health: SERVING).
    pub ready: bool,
    /// The limit store (Redis, or the embedded memory store) answers.
    pub store_ready: bool,
    /// The catalog (keys, plans, stages) has been loaded.
    pub catalog_ready: bool,
    /// When not ready: what is missing, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process runs.", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: 200 when the limit store and the catalog are ready, 503 with
/// the reason otherwise (the same condition as gRPC health).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to decide.", body = Ready),
        (status = 503, description = "Not ready: `reason` says why.", body = Ready),
    ))]
async fn readyz(State(api): State<HttpApi>) -> (StatusCode, Json<Ready>) {
    let (store_ready, catalog_ready) = (api.readiness.store_ready(), api.readiness.catalog_ready());
    let reason = match (store_ready, catalog_ready) {
        (true, true) => None,
        (false, true) => Some("the limit store cannot be reached"),
        (true, false) => Some("the catalog has not been loaded yet"),
        (false, false) => Some("the limit store cannot be reached and the catalog has not been loaded yet"),
    };
    let ready = reason.is_none();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Ready { ready, store_ready, catalog_ready, reason: reason.map(str::to_string) }))
}
