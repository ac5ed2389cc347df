//! The OpenAPI 3.1 document: its frame here (title, the admin token's
//! security scheme, tags), its paths and schemas from the handlers and the
//! proto messages; served at `GET /openapi.json`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::HttpApi;

/// The name of the admin token's security scheme.
pub const ADMIN_TOKEN_SCHEME: &str = "admin_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate",
        description = "API keys, usage plans, throttles and quotas: the HTTP/JSON API (docs/http.md). \
                       The same operations as the gRPC services tollgate.v1.Authorizer and tollgate.v1.Admin, \
                       with the same validation and messages."
    ),
    components(schemas(ApiError)),
    modifiers(&AdminToken),
    tags(
        (name = "authorize", description = "The data plane: decisions."),
        (name = "keys", description = "API keys (Admin)."),
        (name = "stages", description = "APIs and stages (Admin)."),
        (name = "plans", description = "Usage plans and their keys (Admin)."),
        (name = "usage", description = "Usage per key per day (Admin)."),
        (name = "audit", description = "The audit trail of Admin changes (Admin, role read)."),
        (name = "events", description = "Quota alert events (Admin, role read)."),
        (name = "stats", description = "This replica's decisions since start and its state (Admin): the web console's overview."),
        (name = "health", description = "Liveness, readiness and this document."),
    )
)]
struct Frame;

/// Adds the admin token's scheme: `Authorization: Bearer TOKEN`.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("The server's admin token (TOLLGATE_ADMIN_TOKEN or --admin-token-file)."))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(ADMIN_TOKEN_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// The document's frame, before the routes add their paths.
pub(super) fn base() -> utoipa::openapi::OpenApi {
    Frame::openapi()
}

/// The route of the document itself.
pub(super) fn routes() -> OpenApiRouter<HttpApi> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json", body = Object)))]
async fn openapi_json(State(api): State<HttpApi>) -> impl IntoResponse {
    let doc = api.openapi_json.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], doc)
}
