//! `tollgate.v1.Authorizer`: the native data-plane RPC.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use crate::config::OnStoreError;
use crate::limiter::{AuthorizeError, Decision, LimitKind, Limiter, Reason};
use crate::store::Store;

/// The Authorizer service.
pub struct AuthorizerService {
    limiter: Arc<Limiter<Store>>,
    on_store_error: OnStoreError,
}

impl AuthorizerService {
    /// A service deciding with `limiter`.
    pub fn new(limiter: Arc<Limiter<Store>>, on_store_error: OnStoreError) -> Self {
        Self { limiter, on_store_error }
    }

    /// The limiter it decides with.
    pub fn limiter(&self) -> &Arc<Limiter<Store>> {
        &self.limiter
    }
}

impl From<Reason> for pb::Reason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Ok => pb::Reason::Ok,
            Reason::UnknownStage => pb::Reason::UnknownStage,
            Reason::InvalidApiKey => pb::Reason::InvalidApiKey,
            Reason::NotSubscribed => pb::Reason::NotSubscribed,
            Reason::Throttled => pb::Reason::Throttled,
            Reason::QuotaExceeded => pb::Reason::QuotaExceeded,
        }
    }
}

impl From<LimitKind> for pb::LimitKind {
    fn from(k: LimitKind) -> Self {
        match k {
            LimitKind::PlanMethodThrottle => pb::LimitKind::PlanMethodThrottle,
            LimitKind::PlanThrottle => pb::LimitKind::PlanThrottle,
            LimitKind::PlanQuota => pb::LimitKind::PlanQuota,
            LimitKind::StageMethodThrottle => pb::LimitKind::StageMethodThrottle,
            LimitKind::AccountThrottle => pb::LimitKind::AccountThrottle,
        }
    }
}

impl From<Decision> for pb::AuthorizeResponse {
    fn from(d: Decision) -> Self {
        pb::AuthorizeResponse {
            allowed: d.allowed,
            reason: pb::Reason::from(d.reason) as i32,
            http_status: d.reason.http_status() as u32,
            message: d.reason.message().to_string(),
            key_id: d.key_id.unwrap_or_default(),
            plan_id: d.plan_id.unwrap_or_default(),
            rate_limit: d.rate.map(|r| pb::RateLimitInfo {
                kind: pb::LimitKind::from(r.kind) as i32,
                limit: r.limit,
                remaining: r.remaining,
                reset_ms: r.reset_ms,
                window_secs: r.window_secs,
            }),
            retry_after_ms: d.retry_after_ms,
            shadow_denied: d.shadow_denied.is_some(),
            shadow_reason: d.shadow_denied.map_or(pb::Reason::Unspecified, pb::Reason::from) as i32,
        }
    }
}

impl AuthorizerService {
    /// Decides one request, with `--on-store-error` applied: what the
    /// Authorize RPC and `POST /v1/authorize` (`super::http`) both answer.
    pub async fn decide(&self, r: &pb::AuthorizeRequest) -> Result<Decision, AuthorizeError> {
        let req = crate::limiter::Request {
            api_key: r.api_key.as_deref(),
            stage: &r.stage,
            method: &r.method,
            cost: r.cost.unwrap_or(1),
        };
        match self.limiter.authorize(req).await {
            Err(AuthorizeError::Store(e)) if self.on_store_error != OnStoreError::Unavailable => {
                tracing::warn!(error = %e, policy = ?self.on_store_error, "store error; answering by policy");
                let allowed = self.on_store_error == OnStoreError::Allow;
                let reason = if allowed { Reason::Ok } else { Reason::Throttled };
                Ok(Decision { allowed, ..Decision::deny(reason) })
            }
            other => other,
        }
    }
}

#[tonic::async_trait]
impl pb::authorizer_server::Authorizer for AuthorizerService {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref()).await?.into()))
    }
}
