//! `POST /v1/authorize`: the native Authorize over HTTP/JSON.
//!
//! The call answers 200 for every decision (the decision's own status is
//! the `http_status` field), with the RateLimit headers Envoy's ext_authz
//! answers carry ([`crate::api::envoy_http`]'s builders): `RateLimit-Policy`
//! and `RateLimit` for the limit that applied, `Retry-After` when a denied
//! request could pass later. A bad request is 400 naming the field; a store
//! that cannot decide is 503, unless `--on-store-error` says otherwise.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{DataPlaneErrors, HttpError};
use super::json::JsonBody;
use super::HttpApi;
use crate::api::envoy_http::{rate_limit_headers, retry_after_secs};
use crate::api::pb;
use crate::limiter::Decision;

/// The data-plane route.
pub(super) fn routes() -> OpenApiRouter<HttpApi> {
    OpenApiRouter::new().routes(routes!(authorize)).routes(routes!(own_usage)).routes(routes!(refund))
}

/// Give back what one allowed decision consumed, once (docs/semantics.md,
/// "Refunds"): the body names its `decision_id`. No admin token: a validly
/// signed id is the authority. 400 for a malformed or forged id, 404 when
/// its key or plan is gone, 409 when it was refunded before
/// (`ALREADY_EXISTS`) or is past its window or quota period
/// (`FAILED_PRECONDITION`).
#[utoipa::path(
    post,
    path = "/v1/refund",
    tag = "authorize",
    request_body = pb::RefundRequest,
    responses(
        (status = 200, description = "Given back.", body = pb::RefundResponse),
        (status = 404, description = "The decision's key or plan is gone.", body = super::error::ApiError),
        (status = 409, description = "Refunded before, or too late.", body = super::error::ApiError),
        DataPlaneErrors,
    )
)]
async fn refund(
    State(api): State<HttpApi>,
    JsonBody(req): JsonBody<pb::RefundRequest>,
) -> Result<Json<pb::RefundResponse>, HttpError> {
    Ok(Json(api.authorizer.refund(&req.decision_id).await?))
}

/// Decide one request: may this API key call this method of this stage now?
///
/// Answers 200 with the decision for every decision, allowed or denied; its
/// `http_status` is what API Gateway would answer the caller. The headers
/// `RateLimit-Policy` and `RateLimit` describe the limit that applied, and
/// `Retry-After` (seconds) comes with a denial that could pass later.
#[utoipa::path(
    post,
    path = "/v1/authorize",
    tag = "authorize",
    request_body = pb::AuthorizeRequest,
    responses(
        (status = 200, description = "The decision, allowed or denied.", body = pb::AuthorizeResponse,
         headers(
            ("RateLimit-Policy" = String, description = "The limit that applied: `\"throttle\";q=5;w=5`."),
            ("RateLimit" = String, description = "What is left of it: `\"throttle\";r=4;t=1`."),
            ("Retry-After" = u64, description = "On a denial that could pass later: seconds to wait."),
         )),
        DataPlaneErrors,
    )
)]
async fn authorize(
    State(api): State<HttpApi>,
    JsonBody(req): JsonBody<pb::AuthorizeRequest>,
) -> Result<Response, HttpError> {
    let decision = api.authorizer.decide(&req).await?;
    let headers = decision_headers(&decision);
    Ok((AppendHeaders(headers), Json(pb::AuthorizeResponse::from(decision))).into_response())
}

/// The calling key's own usage: its plans, each plan's quota left in the
/// current period and when it resets, and today's use (docs/usage.md,
/// "Self-service usage"). The key comes in the API key header (Envoy's,
/// `--api-key-header`, default `x-api-key`); no admin token. Consumes
/// nothing.
#[utoipa::path(
    get,
    path = "/v1/self",
    tag = "authorize",
    params(("x-api-key" = String, Header, description = "The API key (the header named by `--api-key-header`).")),
    responses(
        (status = 200, description = "The key's usage.", body = pb::OwnUsage),
        (status = 401, description = "The key is missing, unknown, disabled or expired.", body = super::error::ApiError),
        DataPlaneErrors,
    )
)]
async fn own_usage(State(api): State<HttpApi>, headers: HeaderMap) -> Result<Json<pb::OwnUsage>, HttpError> {
    let key = headers.get(&*api.api_key_header).and_then(|v| v.to_str().ok()).unwrap_or("");
    Ok(Json(api.authorizer.own_usage(key).await?))
}

/// The RateLimit headers of a decision, and `Retry-After` when it has one.
fn decision_headers(d: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    let mut out: Vec<(HeaderName, String)> = Vec::new();
    if let Some(rate) = &d.rate {
        out.extend(rate_limit_headers(rate).map(|(k, v)| (HeaderName::from_static(k), v)));
    }
    if let (false, Some(ms)) = (d.allowed, d.retry_after_ms) {
        out.push((axum::http::header::RETRY_AFTER, retry_after_secs(ms).to_string()));
    }
    out.into_iter().filter_map(|(k, v)| HeaderValue::from_str(&v).ok().map(|v| (k, v))).collect()
}
