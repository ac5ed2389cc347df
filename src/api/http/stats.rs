//! `GET /v1/stats` (Admin): what this replica answered since it started and
//! the state of its store and catalog, for the web console's overview (it
//! polls this and differences the counts into decisions per second).
//! Everything here is read from memory: no store call.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::AdminErrors;
use super::HttpApi;

/// The route.
pub(super) fn routes() -> OpenApiRouter<HttpApi> {
    OpenApiRouter::new().routes(routes!(stats))
}

/// This replica's counts and state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// When this answer was made (ms since the epoch, this server's clock):
    /// the time to divide the difference of two answers' counts by.
    pub now_ms: u64,
    /// When this replica started (ms since the epoch).
    pub started_at_ms: u64,
    /// Decisions answered since start by reason (`OK`, `THROTTLED`,
    /// `QUOTA_EXCEEDED`, `INVALID_API_KEY`, `NOT_SUBSCRIBED`,
    /// `UNKNOWN_STAGE`; every reason, 0 when none): the counts of the
    /// `tollgate_decisions_total` metric, over every API (gRPC, HTTP, Envoy).
    pub decisions: BTreeMap<String, u64>,
    /// Questions that got no decision, by kind (`invalid`, `unavailable`,
    /// `internal`): the counts of `tollgate_decision_errors_total`.
    pub decision_errors: BTreeMap<String, u64>,
    /// The store and the catalog are both ready (gRPC health: SERVING; `/readyz`: 200).
    pub ready: bool,
    /// The limit store.
    pub store: StoreStats,
    /// The catalog as this replica holds it.
    pub catalog: CatalogStats,
}

/// The limit store.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoreStats {
    /// `memory` (embedded, this process only) or `redis`.
    pub kind: String,
    /// With Redis: `single`, `cluster` or `sentinel` (`--redis-mode`); otherwise null.
    pub mode: Option<String>,
    /// It answers now.
    pub ready: bool,
}

/// The catalog as this replica holds it (its current snapshot).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CatalogStats {
    /// It has been loaded.
    pub ready: bool,
    /// Its version: grows with every change applied.
    pub version: u64,
    /// APIs.
    pub apis: u64,
    /// Stages.
    pub stages: u64,
    /// Usage plans.
    pub plans: u64,
    /// Key values that open a key: one per key, plus the old values of
    /// keys rotated with a grace period that has not ended.
    pub key_values: u64,
}

/// This replica's decisions by reason since it started, and the state of
/// its store and catalog (the web console's overview).
#[utoipa::path(get, path = "/v1/stats", tag = "stats", security(("admin_token" = [])),
    responses((status = 200, description = "Counts since start and the current state.", body = Stats), AdminErrors))]
async fn stats(State(api): State<HttpApi>) -> Json<Stats> {
    let counts = api.authorizer.limiter().counts();
    let readiness = &api.readiness;
    let (kind, mode) = readiness.store_kind();
    let (store_ready, catalog_ready) = (readiness.store_ready(), readiness.catalog_ready());
    let snapshot = readiness.catalog_snapshot();
    let small = snapshot.small();
    Json(Stats {
        now_ms: crate::model::now_ms(),
        started_at_ms: api.started_at_ms,
        decisions: counts.decisions(),
        decision_errors: counts.errors(),
        ready: store_ready && catalog_ready,
        store: StoreStats { kind: kind.into(), mode: mode.map(str::to_string), ready: store_ready },
        catalog: CatalogStats {
            ready: catalog_ready,
            version: readiness.catalog_version(),
            apis: small.apis.len() as u64,
            stages: small.stage_records.len() as u64,
            plans: small.plan_records.len() as u64,
            key_values: snapshot.key_entries() as u64,
        },
    })
}
