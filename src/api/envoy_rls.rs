//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: tollgate
//! as the rate limit service (RLS) of Envoy's `ratelimit` HTTP filter
//! (docs/envoy.md, "RLS mode").
//!
//! From Envoy's `RateLimitRequest`:
//! - the stage: the `domain`, or a descriptor's `stage` entry, or
//!   `--default-stage` when both are empty;
//! - per descriptor, the entries `api_key` and `method` (`/pets/42/GET`,
//!   built in Envoy with `%PATH(NQ:PATH)%/%REQ(:METHOD)%`), or instead of
//!   `method` the pair `path` (`:path`, query allowed) and `http_method`;
//! - the cost: the descriptor's `hits_addend`, else the request's; 0 is 1.
//!
//! Each descriptor is one Authorize decision (all-or-nothing inside it, as
//! everywhere); the answer is OVER_LIMIT if any descriptor is. Envoy can only
//! forward (OK) or answer 429 (OVER_LIMIT, or its `rate_limited_status`), so
//! every denial is OVER_LIMIT, with `{"message": ...}` telling the reason
//! apart: `Too Many Requests`, `Limit Exceeded`, `Forbidden` (key missing or
//! invalid, not subscribed), `Not Found` (unknown stage), `Bad Request`.
//! Keys are only really checked in ext_authz mode; see docs/envoy.md.
//!
//! A descriptor without a method (or with Envoy's format string sent
//! literally, when its runtime flag is off) is a configuration error:
//! INVALID_ARGUMENT, so it shows as an RLS error in Envoy. A store that
//! cannot decide is UNAVAILABLE: Envoy's `failure_mode_deny` decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::{rate_limit::Unit, Code, DescriptorStatus, RateLimit},
    rate_limit_service_server::RateLimitService,
    RateLimitRequest, RateLimitResponse,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tonic::{Request, Response, Status};

use super::envoy_http::{
    json_message, policy_name, presented_key, rate_limit_headers, request_method, retry_after_secs, BadRequest,
    EnvoyOptions,
};
use crate::limiter::{AuthorizeError, Decision, LimitKind, Limiter, RateInfo, Reason};
use crate::store::Store;

static WARNED_NO_STAGE: AtomicBool = AtomicBool::new(false);

/// The rate limit service.
pub struct EnvoyRlsService {
    limiter: Arc<Limiter<Store>>,
    options: Arc<EnvoyOptions>,
}

/// The outcome of one descriptor.
enum Outcome {
    /// A decision of the limiter.
    Decided(Decision),
    /// Not a question tollgate can ask: the message of the 429 body.
    Refused(&'static str),
    /// `is_negative_hits`: nothing to do (tollgate does not refund).
    Skipped,
}

impl Outcome {
    fn allowed(&self) -> bool {
        match self {
            Outcome::Decided(d) => d.allowed,
            Outcome::Refused(_) => false,
            Outcome::Skipped => true,
        }
    }
}

impl EnvoyRlsService {
    /// A service deciding with `limiter`.
    pub fn new(limiter: Arc<Limiter<Store>>, options: Arc<EnvoyOptions>) -> Self {
        Self { limiter, options }
    }

    /// Answers one `RateLimitRequest`.
    pub async fn decide(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let default_cost = u64::from(req.hits_addend.max(1));
        let mut outcomes = Vec::with_capacity(req.descriptors.len());
        for d in &req.descriptors {
            outcomes.push(self.descriptor(&req.domain, d, default_cost).await?);
        }
        Ok(response(&outcomes))
    }

    async fn descriptor(&self, domain: &str, d: &RateLimitDescriptor, default_cost: u64) -> Result<Outcome, Status> {
        if d.is_negative_hits {
            return Ok(Outcome::Skipped);
        }
        let (mut api_key, mut method, mut stage, mut path, mut verb) = (None, None, None, None, None);
        for e in &d.entries {
            match e.key.as_str() {
                "api_key" => api_key = Some(e.value.as_str()),
                "method" => method = Some(e.value.as_str()),
                "stage" => stage = Some(e.value.as_str()),
                "path" => path = Some(e.value.as_str()),
                "http_method" => verb = Some(e.value.as_str()),
                _ => {}
            }
        }
        let stage = stage
            .filter(|s| !s.is_empty())
            .or(Some(domain).filter(|s| !s.is_empty()))
            .or(self.options.default_stage.as_deref());
        let Some(stage) = stage else {
            if !WARNED_NO_STAGE.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "RLS request with an empty domain, no stage entry and no --default-stage; answering OVER_LIMIT"
                );
            }
            return Ok(Outcome::Refused(Reason::UnknownStage.message()));
        };
        let method = match (method, path, verb) {
            (Some(m), _, _) => {
                if m.contains("%PATH(") || m.contains("%REQ(") {
                    return Err(Status::invalid_argument(
                        "descriptor entry `method` is Envoy's format string itself: set the runtime flag envoy.reloadable_features.enable_formatter_for_ratelimit_action_descriptor_value to true (docs/envoy.md)",
                    ));
                }
                // "<path>/<VERB>", built by Envoy from the request's path:
                // split at the last slash, then canonicalise both halves as
                // ext_authz does (a query string, with `%PATH%` instead of
                // `%PATH(NQ:PATH)%`, is dropped).
                match m.rfind('/') {
                    Some(i) => request_method(&m[..i], &m[i + 1..]),
                    None => Err(BadRequest::Malformed),
                }
            }
            (None, Some(p), Some(v)) => request_method(p, v),
            _ => {
                return Err(Status::invalid_argument(
                    "descriptor has no `method` entry (nor `path` and `http_method`): see deploy/envoy/ratelimit.yaml",
                ))
            }
        };
        let method = match method {
            Ok(m) => m,
            Err(e) => return Ok(Outcome::Refused(e.message())),
        };
        let cost = match d.hits_addend.as_ref().map(|h| h.value) {
            Some(n) if n > 0 => n,
            _ => default_cost,
        };
        let question = crate::limiter::Request { api_key: presented_key(api_key), stage, method: &method, cost };
        match self.limiter.authorize_canonical(question).await {
            Ok(dec) => {
                tracing::debug!(stage, method = method.as_str(), reason = dec.reason.as_str(), "RLS");
                Ok(Outcome::Decided(dec))
            }
            Err(AuthorizeError::Invalid(i)) => {
                tracing::debug!(error = %i, "RLS: malformed descriptor");
                Ok(Outcome::Refused(if i.field == "stage" {
                    Reason::UnknownStage.message()
                } else {
                    BadRequest::Malformed.message()
                }))
            }
            Err(AuthorizeError::Store(e)) => {
                tracing::warn!(error = %e, "RLS: the store cannot decide; answering UNAVAILABLE");
                Err(e.into())
            }
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for EnvoyRlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}

/// Envoy's `RateLimit` for a limit: the capacity per period for a quota,
/// the steady rate (in the smallest unit where it is at least 1) for a
/// bucket. Only a label: Envoy shows it in its own x-ratelimit headers.
fn current_limit(rate: &RateInfo) -> RateLimit {
    const UNITS: [(Unit, u64); 4] = [(Unit::Second, 1), (Unit::Minute, 60), (Unit::Hour, 3600), (Unit::Day, 86_400)];
    let (requests_per_unit, unit) = if rate.kind == LimitKind::PlanQuota {
        let unit = match rate.window_secs {
            86_400 => Unit::Day,
            604_800 => Unit::Week,
            _ => Unit::Month,
        };
        (rate.limit, unit)
    } else {
        let per_sec = rate.limit as f64 / rate.window_secs.max(1) as f64;
        UNITS
            .iter()
            .map(|(u, secs)| ((per_sec * *secs as f64).round() as u64, *u))
            .find(|(n, _)| *n >= 1)
            .unwrap_or((rate.limit, Unit::Day))
    };
    RateLimit {
        name: policy_name(rate.kind).to_string(),
        requests_per_unit: u32::try_from(requests_per_unit).unwrap_or(u32::MAX),
        unit: unit as i32,
    }
}

fn status(o: &Outcome) -> DescriptorStatus {
    let code = if o.allowed() { Code::Ok } else { Code::OverLimit };
    let rate = match o {
        Outcome::Decided(d) => d.rate.as_ref(),
        _ => None,
    };
    DescriptorStatus {
        code: code as i32,
        current_limit: rate.map(current_limit),
        limit_remaining: rate.map(|r| u32::try_from(r.remaining).unwrap_or(u32::MAX)).unwrap_or(0),
        duration_until_reset: rate.map(|r| PbDuration {
            seconds: i64::try_from(r.reset_ms / 1000).unwrap_or(i64::MAX),
            nanos: ((r.reset_ms % 1000) * 1_000_000) as i32,
        }),
        ..Default::default()
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue { key: key.to_string(), value, ..Default::default() }
}

/// The whole answer. Headers and body describe one descriptor: the first
/// refused one, else the allowed one with the least remaining.
fn response(outcomes: &[Outcome]) -> RateLimitResponse {
    let statuses: Vec<DescriptorStatus> = outcomes.iter().map(status).collect();
    let over = outcomes.iter().find(|o| !o.allowed());
    let shown = over.or_else(|| {
        outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Decided(d) => d.rate.map(|r| (r.remaining, o)),
                _ => None,
            })
            .min_by_key(|(remaining, _)| *remaining)
            .map(|(_, o)| o)
    });
    let mut headers = Vec::new();
    let mut raw_body = Vec::new();
    if let Some(Outcome::Decided(d)) = shown {
        if let Some(rate) = &d.rate {
            headers.extend(rate_limit_headers(rate).map(|(k, v)| header(k, v)));
        }
    }
    if let Some(o) = over {
        let message = match o {
            Outcome::Decided(d) => {
                if let Some(ms) = d.retry_after_ms {
                    headers.push(header("retry-after", retry_after_secs(ms).to_string()));
                }
                d.reason.message()
            }
            Outcome::Refused(m) => m,
            Outcome::Skipped => Reason::Throttled.message(),
        };
        headers.push(header("content-type", "application/json".to_string()));
        raw_body = json_message(message).into_bytes();
    }
    RateLimitResponse {
        overall_code: if over.is_some() { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        response_headers_to_add: headers,
        raw_body,
        ..Default::default()
    }
}
