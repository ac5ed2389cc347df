//! Every Admin operation as REST under `/v1/`: keys, stages and APIs, usage
//! plans, their keys, usage, CSV import (docs/http.md has the table).
//!
//! Each handler turns the path, query and body into the gRPC request
//! message and calls [`AdminService`] in-process, so validation, messages
//! and effects are the gRPC API's own. [`require_admin`] runs first, on
//! every Admin route: the Admin service must be on, and [`AdminAuth`] (the
//! check the gRPC service uses) must accept the `Authorization: Bearer TOKEN`
//! header for the route's operation (`api::access::OPERATIONS`, the one
//! table of roles); so, as over gRPC, credentials are checked before the
//! body is read.
//!
//! Answers: the gRPC answer message as JSON; 201 (with `Location` when the
//! new thing has a URL) for a POST that creates; 204 with no body for a
//! DELETE.

use std::future::Future;
use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tonic::Code;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AdminErrors, HttpError};
use super::json::{CsvBody, JsonBody, PathParams, QueryParams, TaggedQuery};
use super::HttpApi;
use crate::api::access;
use crate::api::admin::AdminService;
use crate::api::pb;
use crate::api::pb::admin_server::Admin;
use crate::audit;

/// The Admin routes.
pub(super) fn routes() -> OpenApiRouter<HttpApi> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key, update_key, delete_key))
        .routes(routes!(rotate_key))
        .routes(routes!(import_keys))
        .routes(routes!(list_stages))
        .routes(routes!(get_stage, put_stage, delete_stage))
        .routes(routes!(delete_api))
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(get_plan, update_plan, delete_plan))
        .routes(routes!(list_plan_keys, add_plan_key))
        .routes(routes!(remove_plan_key))
        .routes(routes!(get_usage))
        .routes(routes!(update_usage))
        .routes(routes!(list_audit))
        .routes(routes!(list_events))
}

/// Refuses an Admin call when the Admin service is off (501) or when
/// [`AdminAuth`](crate::api::admin::AdminAuth) refuses its credentials for
/// the route's operation (the table of `api::access`: 401, 403; 409 when
/// the server has no token), before the body is read; runs the call as its
/// caller, so that the changes it makes are audited.
pub(super) async fn require_admin(State(api): State<HttpApi>, req: Request, next: Next) -> Result<Response, HttpError> {
    if api.admin.is_none() {
        return Err(admin_off());
    }
    let route = req.extensions().get::<MatchedPath>().map_or("", |p| p.as_str());
    let op = access::by_route(req.method().as_str(), route).unwrap_or(&access::UNLISTED);
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    let caller = api.auth.admit(op, authorization.as_deref(), peer).await?;
    Ok(audit::scope(caller, next.run(req)).await)
}

fn admin_off() -> HttpError {
    HttpError::new(
        Code::Unimplemented,
        "the Admin service is off (--admin-listen off): start tollgate with --admin-listen ADDR to manage it",
    )
}

/// Calls one Admin operation with `msg`.
async fn call<Req, Res, Fut>(
    api: &HttpApi,
    msg: Req,
    op: impl FnOnce(Arc<AdminService>, tonic::Request<Req>) -> Fut,
) -> Result<Res, HttpError>
where
    Fut: Future<Output = Result<tonic::Response<Res>, tonic::Status>>,
{
    let admin = api.admin.clone().ok_or_else(admin_off)?;
    Ok(op(admin, tonic::Request::new(msg)).await?.into_inner())
}

/// 201 Created, with `Location` when the new thing has a URL.
fn created<T: serde::Serialize>(location: Option<String>, body: T) -> Response {
    let mut r = (StatusCode::CREATED, Json(body)).into_response();
    if let Some(v) = location.and_then(|l| l.parse().ok()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// 204 No Content.
fn deleted(_: pb::DeleteResponse) -> StatusCode {
    StatusCode::NO_CONTENT
}

type Answer<T> = Result<Json<T>, HttpError>;

/// The tag filter of the list routes, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by `TaggedQuery`, described here
struct TagParam {
    /// Only those with this tag, `KEY=VALUE` (e.g. `tag=env=prod`); repeat
    /// it for several, all of which must match.
    #[param(style = Form, explode)]
    tag: Option<Vec<String>>,
}

// ---- API keys ----

/// List API keys, by id, a page at a time; filter by name prefix, customer id or tags.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", security(("admin_token" = [])),
    params(pb::ListApiKeysRequest, TagParam),
    responses((status = 200, description = "A page of keys; `next_page_token` is empty on the last.", body = pb::ListApiKeysResponse), AdminErrors))]
async fn list_keys(
    State(api): State<HttpApi>,
    TaggedQuery(q, tags): TaggedQuery<pb::ListApiKeysRequest>,
) -> Answer<pb::ListApiKeysResponse> {
    let q = pb::ListApiKeysRequest { tags, ..q };
    call(&api, q, |a, r| async move { a.list_api_keys(r).await }).await.map(Json)
}

/// Create an API key. Its value is in this answer only, never again.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", security(("admin_token" = [])),
    request_body = pb::CreateApiKeyRequest,
    responses((status = 201, description = "The key and its value (shown only here).", body = pb::CreateApiKeyResponse,
        headers(("Location" = String, description = "`/v1/keys/{id}`"))), AdminErrors))]
async fn create_key(
    State(api): State<HttpApi>,
    JsonBody(b): JsonBody<pb::CreateApiKeyRequest>,
) -> Result<Response, HttpError> {
    let r = call(&api, b, |a, r| async move { a.create_api_key(r).await }).await?;
    Ok(created(r.key.as_ref().map(|k| format!("/v1/keys/{}", k.id)), r))
}

/// Get an API key (never its value: `value_hint` shows its first characters).
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id.")),
    responses((status = 200, description = "The key, as stored now.", body = pb::ApiKey), AdminErrors))]
async fn get_key(State(api): State<HttpApi>, PathParams(id): PathParams<String>) -> Answer<pb::ApiKey> {
    call(&api, pb::GetApiKeyRequest { id }, |a, r| async move { a.get_api_key(r).await }).await.map(Json)
}

/// Change an API key: only the fields given.
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id.")),
    request_body = pb::UpdateApiKeyRequest,
    responses((status = 200, description = "The key, as stored now.", body = pb::ApiKey), AdminErrors))]
async fn update_key(
    State(api): State<HttpApi>,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<pb::UpdateApiKeyRequest>,
) -> Answer<pb::ApiKey> {
    let msg = pb::UpdateApiKeyRequest { id, ..b };
    call(&api, msg, |a, r| async move { a.update_api_key(r).await }).await.map(Json)
}

/// Delete an API key and its subscriptions.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id.")),
    responses((status = 204, description = "Deleted."), AdminErrors))]
async fn delete_key(State(api): State<HttpApi>, PathParams(id): PathParams<String>) -> Result<StatusCode, HttpError> {
    call(&api, pb::DeleteApiKeyRequest { id }, |a, r| async move { a.delete_api_key(r).await }).await.map(deleted)
}

/// Give an API key a new value; the old one works for `grace_seconds` more.
/// The new value is in this answer only.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The key's id.")),
    request_body = pb::RotateApiKeyRequest,
    responses((status = 200, description = "The key and its value (shown only here).", body = pb::CreateApiKeyResponse), AdminErrors))]
async fn rotate_key(
    State(api): State<HttpApi>,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<pb::RotateApiKeyRequest>,
) -> Answer<pb::CreateApiKeyResponse> {
    let msg = pb::RotateApiKeyRequest { id, ..b };
    call(&api, msg, |a, r| async move { a.rotate_api_key(r).await }).await.map(Json)
}

/// Import API keys from a CSV file in API Gateway's format (the body, as
/// `text/csv`; at most 5 MiB).
#[utoipa::path(post, path = "/v1/keys/import", tag = "keys", security(("admin_token" = [])),
    params(pb::ImportApiKeysRequest),
    request_body(content = String, content_type = "text/csv",
        description = "`Name,Key,Description,Enabled,UsagePlanIds` (docs/admin.md, \"CSV import\")."),
    responses((status = 200, description = "The keys created or updated, and a warning per row skipped.", body = pb::ImportApiKeysResponse), AdminErrors))]
async fn import_keys(
    State(api): State<HttpApi>,
    QueryParams(q): QueryParams<pb::ImportApiKeysRequest>,
    CsvBody(csv): CsvBody,
) -> Answer<pb::ImportApiKeysResponse> {
    let msg = pb::ImportApiKeysRequest { csv, ..q };
    call(&api, msg, |a, r| async move { a.import_api_keys(r).await }).await.map(Json)
}

// ---- APIs and stages ----

/// List stages (with their methods and the plans containing them), all or one API's.
#[utoipa::path(get, path = "/v1/stages", tag = "stages", security(("admin_token" = [])),
    params(pb::ListStagesRequest),
    responses((status = 200, description = "The stages.", body = pb::ListStagesResponse), AdminErrors))]
async fn list_stages(
    State(api): State<HttpApi>,
    QueryParams(q): QueryParams<pb::ListStagesRequest>,
) -> Answer<pb::ListStagesResponse> {
    call(&api, q, |a, r| async move { a.list_stages(r).await }).await.map(Json)
}

/// Get a stage.
#[utoipa::path(get, path = "/v1/stages/{api}/{stage}", tag = "stages", security(("admin_token" = [])),
    params(("api" = String, Path, description = "The API's id."), ("stage" = String, Path, description = "The stage's name.")),
    responses((status = 200, description = "The stage, as stored now.", body = pb::Stage), AdminErrors))]
async fn get_stage(State(api): State<HttpApi>, PathParams((a, s)): PathParams<(String, String)>) -> Answer<pb::Stage> {
    let msg = pb::GetStageRequest { stage: format!("{a}/{s}") };
    call(&api, msg, |a, r| async move { a.get_stage(r).await }).await.map(Json)
}

/// Create a stage (and its API) when missing; add or replace the method
/// settings given, remove those in `remove_methods`. Settings not named stay.
#[utoipa::path(put, path = "/v1/stages/{api}/{stage}", tag = "stages", security(("admin_token" = [])),
    params(("api" = String, Path, description = "The API's id."), ("stage" = String, Path, description = "The stage's name.")),
    request_body = pb::PutStageRequest,
    responses((status = 200, description = "The stage, as stored now.", body = pb::Stage), AdminErrors))]
async fn put_stage(
    State(api): State<HttpApi>,
    PathParams((a, s)): PathParams<(String, String)>,
    JsonBody(b): JsonBody<pb::PutStageRequest>,
) -> Answer<pb::Stage> {
    let msg = pb::PutStageRequest { stage: format!("{a}/{s}"), ..b };
    call(&api, msg, |a, r| async move { a.put_stage(r).await }).await.map(Json)
}

/// Delete a stage; refused (409) while a usage plan contains it.
#[utoipa::path(delete, path = "/v1/stages/{api}/{stage}", tag = "stages", security(("admin_token" = [])),
    params(("api" = String, Path, description = "The API's id."), ("stage" = String, Path, description = "The stage's name.")),
    responses((status = 204, description = "Deleted."), AdminErrors))]
async fn delete_stage(
    State(api): State<HttpApi>,
    PathParams((a, s)): PathParams<(String, String)>,
) -> Result<StatusCode, HttpError> {
    let msg = pb::DeleteStageRequest { stage: format!("{a}/{s}") };
    call(&api, msg, |a, r| async move { a.delete_stage(r).await }).await.map(deleted)
}

/// Delete an API and its stages; refused (409) while a plan contains one of them.
#[utoipa::path(delete, path = "/v1/apis/{api}", tag = "stages", security(("admin_token" = [])),
    params(("api" = String, Path, description = "The API's id.")),
    responses((status = 204, description = "Deleted."), AdminErrors))]
async fn delete_api(
    State(api): State<HttpApi>,
    PathParams(api_id): PathParams<String>,
) -> Result<StatusCode, HttpError> {
    call(&api, pb::DeleteApiRequest { api_id }, |a, r| async move { a.delete_api(r).await }).await.map(deleted)
}

// ---- usage plans ----

/// List usage plans, by id, a page at a time; `key_id` keeps one key's plans, `tag` those with the tags.
#[utoipa::path(get, path = "/v1/plans", tag = "plans", security(("admin_token" = [])),
    params(pb::ListUsagePlansRequest, TagParam),
    responses((status = 200, description = "A page of plans; `next_page_token` is empty on the last.", body = pb::ListUsagePlansResponse), AdminErrors))]
async fn list_plans(
    State(api): State<HttpApi>,
    TaggedQuery(q, tags): TaggedQuery<pb::ListUsagePlansRequest>,
) -> Answer<pb::ListUsagePlansResponse> {
    let q = pb::ListUsagePlansRequest { tags, ..q };
    call(&api, q, |a, r| async move { a.list_usage_plans(r).await }).await.map(Json)
}

/// Create a usage plan.
#[utoipa::path(post, path = "/v1/plans", tag = "plans", security(("admin_token" = [])),
    request_body = pb::CreateUsagePlanRequest,
    responses((status = 201, description = "The plan, as stored now.", body = pb::UsagePlan,
        headers(("Location" = String, description = "`/v1/plans/{id}`"))), AdminErrors))]
async fn create_plan(
    State(api): State<HttpApi>,
    JsonBody(b): JsonBody<pb::CreateUsagePlanRequest>,
) -> Result<Response, HttpError> {
    let p = call(&api, b, |a, r| async move { a.create_usage_plan(r).await }).await?;
    Ok(created(Some(format!("/v1/plans/{}", p.id)), p))
}

/// Get a usage plan.
#[utoipa::path(get, path = "/v1/plans/{id}", tag = "plans", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id.")),
    responses((status = 200, description = "The plan, as stored now.", body = pb::UsagePlan), AdminErrors))]
async fn get_plan(State(api): State<HttpApi>, PathParams(id): PathParams<String>) -> Answer<pb::UsagePlan> {
    call(&api, pb::GetUsagePlanRequest { id }, |a, r| async move { a.get_usage_plan(r).await }).await.map(Json)
}

/// Change a usage plan: only what the body names.
#[utoipa::path(patch, path = "/v1/plans/{id}", tag = "plans", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id.")),
    request_body = pb::UpdateUsagePlanRequest,
    responses((status = 200, description = "The plan, as stored now.", body = pb::UsagePlan), AdminErrors))]
async fn update_plan(
    State(api): State<HttpApi>,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<pb::UpdateUsagePlanRequest>,
) -> Answer<pb::UsagePlan> {
    let msg = pb::UpdateUsagePlanRequest { id, ..b };
    call(&api, msg, |a, r| async move { a.update_usage_plan(r).await }).await.map(Json)
}

/// Delete a usage plan and its subscriptions.
#[utoipa::path(delete, path = "/v1/plans/{id}", tag = "plans", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id.")),
    responses((status = 204, description = "Deleted."), AdminErrors))]
async fn delete_plan(State(api): State<HttpApi>, PathParams(id): PathParams<String>) -> Result<StatusCode, HttpError> {
    call(&api, pb::DeleteUsagePlanRequest { id }, |a, r| async move { a.delete_usage_plan(r).await }).await.map(deleted)
}

/// List the keys subscribed to a usage plan, a page at a time.
#[utoipa::path(get, path = "/v1/plans/{id}/keys", tag = "plans", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id."), pb::ListUsagePlanKeysRequest),
    responses((status = 200, description = "A page of keys; `next_page_token` is empty on the last.", body = pb::ListUsagePlanKeysResponse), AdminErrors))]
async fn list_plan_keys(
    State(api): State<HttpApi>,
    PathParams(usage_plan_id): PathParams<String>,
    QueryParams(q): QueryParams<pb::ListUsagePlanKeysRequest>,
) -> Answer<pb::ListUsagePlanKeysResponse> {
    let msg = pb::ListUsagePlanKeysRequest { usage_plan_id, ..q };
    call(&api, msg, |a, r| async move { a.list_usage_plan_keys(r).await }).await.map(Json)
}

/// Subscribe a key to a usage plan; refused (409) when the key already has a
/// plan containing one of this plan's stages.
#[utoipa::path(post, path = "/v1/plans/{id}/keys", tag = "plans", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id.")),
    request_body = pb::UsagePlanKeyRequest,
    responses((status = 201, description = "The subscription: the plan and the key, as stored now.", body = pb::UsagePlanKey), AdminErrors))]
async fn add_plan_key(
    State(api): State<HttpApi>,
    PathParams(usage_plan_id): PathParams<String>,
    JsonBody(b): JsonBody<pb::UsagePlanKeyRequest>,
) -> Result<Response, HttpError> {
    let msg = pb::UsagePlanKeyRequest { usage_plan_id, ..b };
    let k = call(&api, msg, |a, r| async move { a.add_usage_plan_key(r).await }).await?;
    Ok(created(None, k))
}

/// Unsubscribe a key from a usage plan.
#[utoipa::path(delete, path = "/v1/plans/{id}/keys/{key_id}", tag = "plans", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id."), ("key_id" = String, Path, description = "The key's id.")),
    responses((status = 204, description = "Removed."), AdminErrors))]
async fn remove_plan_key(
    State(api): State<HttpApi>,
    PathParams((usage_plan_id, key_id)): PathParams<(String, String)>,
) -> Result<StatusCode, HttpError> {
    let msg = pb::UsagePlanKeyRequest { usage_plan_id, key_id };
    call(&api, msg, |a, r| async move { a.remove_usage_plan_key(r).await }).await.map(deleted)
}

// ---- usage ----

/// Daily usage of a plan's keys between two UTC dates (at most 90 days), a
/// page of keys at a time (docs/usage.md).
#[utoipa::path(get, path = "/v1/plans/{id}/usage", tag = "usage", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id."), pb::GetUsageRequest),
    responses((status = 200, description = "Usage per key per day; `position` is empty on the last page.", body = pb::Usage), AdminErrors))]
async fn get_usage(
    State(api): State<HttpApi>,
    PathParams(usage_plan_id): PathParams<String>,
    QueryParams(q): QueryParams<pb::GetUsageRequest>,
) -> Answer<pb::Usage> {
    let msg = pb::GetUsageRequest { usage_plan_id, ..q };
    call(&api, msg, |a, r| async move { a.get_usage(r).await }).await.map(Json)
}

/// Set the quota a key has left in the plan's current period.
#[utoipa::path(put, path = "/v1/plans/{id}/keys/{key_id}/usage", tag = "usage", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The plan's id."), ("key_id" = String, Path, description = "The key's id.")),
    request_body = pb::UpdateUsageRequest,
    responses((status = 200, description = "The quota now left, and when its period ends.", body = pb::UsageUpdated), AdminErrors))]
async fn update_usage(
    State(api): State<HttpApi>,
    PathParams((usage_plan_id, key_id)): PathParams<(String, String)>,
    JsonBody(b): JsonBody<pb::UpdateUsageRequest>,
) -> Answer<pb::UsageUpdated> {
    let msg = pb::UpdateUsageRequest { usage_plan_id, key_id, ..b };
    call(&api, msg, |a, r| async move { a.update_usage(r).await }).await.map(Json)
}

// ---- the audit trail ----

/// The audit trail: every Admin change, oldest first, from `since_ms`, a
/// page at a time (docs/admin.md, "Audit trail").
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("admin_token" = [])),
    params(pb::ListAuditRecordsRequest),
    responses((status = 200, description = "A page of records; `next_page_token` is empty when there are no more now.", body = pb::ListAuditRecordsResponse), AdminErrors))]
async fn list_audit(
    State(api): State<HttpApi>,
    QueryParams(q): QueryParams<pb::ListAuditRecordsRequest>,
) -> Answer<pb::ListAuditRecordsResponse> {
    call(&api, q, |a, r| async move { a.list_audit_records(r).await }).await.map(Json)
}

// ---- quota alert events ----

/// Quota alert events: one per key, threshold and period crossed, oldest
/// first, from `since_ms`, a page at a time (docs/semantics.md, "Quota
/// alerts").
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("admin_token" = [])),
    params(pb::ListEventsRequest),
    responses((status = 200, description = "A page of events; `next_page_token` is empty when there are no more now.", body = pb::ListEventsResponse), AdminErrors))]
async fn list_events(
    State(api): State<HttpApi>,
    QueryParams(q): QueryParams<pb::ListEventsRequest>,
) -> Answer<pb::ListEventsResponse> {
    call(&api, q, |a, r| async move { a.list_events(r).await }).await.map(Json)
}
