//! `envoy.service.auth.v3.Authorization/Check`: tollgate as Envoy's
//! external authorization (ext_authz) server, checking API keys, throttles
//! and quotas (docs/envoy.md).
//!
//! From Envoy's `CheckRequest`:
//! - the key from the API key header (`--api-key-header`, default
//!   `x-api-key`), the query parameter `--api-key-query` and the dynamic
//!   metadata at `--api-key-metadata` (`super::envoy_keys`: a value that
//!   cannot be a key counts as no key; two different keys are a 403);
//! - the stage from the route's `context_extensions["stage"]`, else
//!   `--default-stage`;
//! - the method from the path and the HTTP method, in canonical form
//!   (`super::envoy_http::request_method`).
//!
//! To Envoy, always a `CheckResponse`, except when the store cannot decide:
//! - allowed: status OK; `x-tollgate-key-id` / `x-tollgate-plan-id` set on
//!   the upstream request (and removed when unknown, so a client cannot
//!   forge them), the API key header and query parameter removed unless
//!   `--forward-api-key`,
//!   `RateLimit-Policy` / `RateLimit` added to the client's response and to
//!   the upstream request;
//! - denied: a non-OK status (Envoy 1.40 allows on an OK or absent status,
//!   whatever else the response says) and a `DeniedHttpResponse`: the HTTP
//!   status, `content-type: application/json`, `{"message": ...}`,
//!   `Retry-After` on a 429 that can pass later, and the RateLimit headers
//!   when a limit is known;
//! - store unreachable: gRPC UNAVAILABLE, so that Envoy's
//!   `failure_mode_allow` decides (never UNKNOWN, never a false 429).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};

use super::envoy_http::{json_message, rate_limit_headers, request_method, retry_after_secs, BadRequest, EnvoyOptions};
use super::envoy_keys::{metadata_value, query_param, Presented};
use crate::limiter::{AuthorizeError, Decision, Limiter, Reason};
use crate::model::Invalid;
use crate::store::Store;

/// Header set on the upstream request: the id (not the value) of the key.
pub const KEY_ID_HEADER: &str = "x-tollgate-key-id";
/// Header set on the upstream request: the id of the plan that applied.
pub const PLAN_ID_HEADER: &str = "x-tollgate-plan-id";
/// On an allowed request a shadow plan would have denied: the reason it
/// would have given (`THROTTLED`, `QUOTA_EXCEEDED`), on the upstream request
/// and on the response.
pub const SHADOW_DENIED_HEADER: &str = "x-tollgate-shadow-denied";
/// Header set on the upstream request of an allowed decision that consumed
/// a limit: its signed decision id, for a refund (docs/envoy.md, "Refund on
/// upstream 5xx"); removed otherwise, so that a client cannot send one.
pub const DECISION_ID_HEADER: &str = "x-tollgate-decision-id";

static WARNED_NO_STAGE: AtomicBool = AtomicBool::new(false);
static WARNED_BAD_STAGE: AtomicBool = AtomicBool::new(false);
static WARNED_NO_HTTP: AtomicBool = AtomicBool::new(false);

/// The ext_authz service.
pub struct EnvoyAuthzService {
    limiter: Arc<Limiter<Store>>,
    options: Arc<EnvoyOptions>,
}

impl EnvoyAuthzService {
    /// A service deciding with `limiter`.
    pub fn new(limiter: Arc<Limiter<Store>>, options: Arc<EnvoyOptions>) -> Self {
        Self { limiter, options }
    }

    /// Answers one `CheckRequest`; `Err` only when the store cannot decide.
    pub async fn decide(&self, req: &CheckRequest) -> Result<CheckResponse, Status> {
        let attrs = req.attributes.as_ref();
        let Some(http) = attrs.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()) else {
            if !WARNED_NO_HTTP.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "ext_authz CheckRequest without attributes.request.http (a network filter?); denying with 400"
                );
            }
            return Ok(bad_request(BadRequest::Malformed));
        };
        let stage = attrs
            .and_then(|a| a.context_extensions.get("stage"))
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .or(self.options.default_stage.as_deref());
        let Some(stage) = stage else {
            if !WARNED_NO_STAGE.swap(true, Ordering::Relaxed) {
                tracing::warn!("ext_authz request on a route with no context_extensions[\"stage\"] and no --default-stage; answering 404");
            }
            return Ok(denied(Reason::UnknownStage, None));
        };
        let path = non_empty(&http.path).or_else(|| header(http, ":path"));
        let verb = non_empty(&http.method).or_else(|| header(http, ":method"));
        let method = match request_method(path.unwrap_or(""), verb.unwrap_or("")) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(stage, error = ?e, "ext_authz: malformed request");
                return Ok(bad_request(e));
            }
        };
        let presented = self.presented(http, attrs.and_then(|a| a.metadata_context.as_ref()));
        if presented == Presented::Conflict {
            tracing::debug!(stage, method = method.as_str(), "ext_authz: the key sources disagree; answering 403");
            return Ok(denied(Reason::InvalidApiKey, None));
        }
        let question = crate::limiter::Request { api_key: presented.key(), stage, method: &method, cost: 1 };
        match self.limiter.authorize_canonical(question).await {
            Ok(d) => {
                tracing::debug!(stage, method = method.as_str(), reason = d.reason.as_str(), "ext_authz");
                Ok(if d.allowed { self.allowed(&d) } else { denied(d.reason, Some(&d)) })
            }
            Err(AuthorizeError::Invalid(i)) => Ok(invalid(&i)),
            Err(AuthorizeError::Store(e)) => {
                tracing::warn!(error = %e, "ext_authz: the store cannot decide; answering UNAVAILABLE");
                Err(e.into())
            }
        }
    }

    /// The key the request presents, from every configured source.
    fn presented<'a>(&self, http: &'a HttpRequest, metadata: Option<&'a Metadata>) -> Presented<'a> {
        let o = &self.options;
        let mut p = Presented::None.with(header(http, &o.api_key_header).map(Cow::Borrowed));
        if let Some(name) = &o.api_key_query {
            let path = non_empty(&http.path).or_else(|| header(http, ":path")).unwrap_or("");
            p = p.with(query_param(path, name));
        }
        if let Some(at) = &o.api_key_metadata {
            p = p.with(metadata_value(metadata, at));
        }
        p
    }

    fn allowed(&self, d: &Decision) -> CheckResponse {
        let mut ok = OkHttpResponse::default();
        let ids = [(KEY_ID_HEADER, &d.key_id), (PLAN_ID_HEADER, &d.plan_id), (DECISION_ID_HEADER, &d.decision_id)];
        for (name, value) in ids {
            match value {
                // OkHttpResponse.headers overwrite (Envoy 1.40 ignores
                // append_action here; `append` unset means overwrite).
                Some(v) => ok.headers.push(header_option(name, v)),
                None => ok.headers_to_remove.push(name.to_string()),
            }
        }
        if !self.options.forward_api_key {
            ok.headers_to_remove.push(self.options.api_key_header.clone());
            ok.query_parameters_to_remove.extend(self.options.api_key_query.iter().cloned());
        }
        // A shadow plan would have denied: said to the service and the
        // client (docs/envoy.md); never taken from the client.
        match d.shadow_denied {
            Some(reason) => {
                let h = header_option(SHADOW_DENIED_HEADER, reason.as_str());
                ok.headers.push(h.clone());
                ok.response_headers_to_add.push(h);
            }
            None => ok.headers_to_remove.push(SHADOW_DENIED_HEADER.to_string()),
        }
        // The RateLimit headers go to the client and, so that the service
        // can see them too, on the upstream request (or are taken off it
        // when there is no limit, so that a client cannot make them up).
        match &d.rate {
            Some(rate) => {
                let headers = rate_limit_headers(rate).map(|(k, v)| header_option(k, &v));
                ok.headers.extend(headers.iter().cloned());
                ok.response_headers_to_add.extend(headers);
            }
            None => ok.headers_to_remove.extend(["ratelimit-policy".to_string(), "ratelimit".to_string()]),
        }
        CheckResponse {
            status: Some(rpc::Status { code: Code::Ok as i32, ..Default::default() }),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A request header (names lower-case), from `headers` or, when Envoy is
/// set to `encode_raw_headers`, from `header_map`.
fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(v) = http.headers.get(name) {
        return Some(v);
    }
    let map = http.header_map.as_ref()?;
    map.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name)).and_then(|h| {
        if h.raw_value.is_empty() {
            Some(h.value.as_str())
        } else {
            std::str::from_utf8(&h.raw_value).ok()
        }
    })
}

fn header_option(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A denial: `status` (HTTP), a JSON body and headers. The gRPC status is
/// never OK: Envoy would allow the request.
fn denial(http_status: u16, code: Code, why: &str, message: &str, extra: Vec<HeaderValueOption>) -> CheckResponse {
    let mut headers = vec![header_option("content-type", "application/json")];
    headers.extend(extra);
    CheckResponse {
        status: Some(rpc::Status { code: code as i32, message: why.to_string(), ..Default::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(http_status) }),
            headers,
            body: json_message(message),
        })),
        ..Default::default()
    }
}

/// The denial for a decision's reason, with `Retry-After` and the
/// RateLimit headers when the decision has them.
fn denied(reason: Reason, d: Option<&Decision>) -> CheckResponse {
    let code = match reason {
        Reason::UnknownStage => Code::NotFound,
        Reason::Throttled | Reason::QuotaExceeded => Code::ResourceExhausted,
        _ => Code::PermissionDenied,
    };
    let mut extra = Vec::new();
    if let Some(d) = d {
        if let Some(ms) = d.retry_after_ms {
            extra.push(header_option("retry-after", &retry_after_secs(ms).to_string()));
        }
        if let Some(rate) = &d.rate {
            extra.extend(rate_limit_headers(rate).map(|(k, v)| header_option(k, &v)));
        }
    }
    denial(reason.http_status(), code, reason.as_str(), reason.message(), extra)
}

fn bad_request(e: BadRequest) -> CheckResponse {
    denial(e.http_status(), Code::InvalidArgument, "BAD_REQUEST", e.message(), Vec::new())
}

/// A request the limiter refused as malformed. The key is checked before
/// (a bad one counts as none) and the method too, so this is a stage that
/// is not written `API/STAGE`: a route's configuration, answered 404 like
/// any unknown stage.
fn invalid(i: &Invalid) -> CheckResponse {
    if i.field == "stage" {
        if !WARNED_BAD_STAGE.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %i, "ext_authz: the route's stage is malformed; answering 404");
        }
        denied(Reason::UnknownStage, None)
    } else {
        tracing::debug!(error = %i, "ext_authz: malformed request");
        bad_request(BadRequest::Malformed)
    }
}
