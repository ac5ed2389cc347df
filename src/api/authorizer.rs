//! `tollgate.v1.Authorizer`: the native data-plane RPC.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use super::pb;
use crate::catalog::store::CatalogService;
use crate::config::OnStoreError;
use crate::limiter::{AuthorizeError, Decision, LimitKind, Limiter, Reason};
use crate::localtime::{quota_period, usage_day};
use crate::model::{KeyHash, Period, UsagePlan};
use crate::store::keys::QUOTA_FIELD;
use crate::store::{Check, DayUsage, LeaseOp, Limit, LimitStore, Rule, Store};

/// The Authorizer service.
pub struct AuthorizerService {
    limiter: Arc<Limiter<Store>>,
    on_store_error: OnStoreError,
    /// The catalog's records: a refund checks that its key still exists
    /// and is in the plan (the data plane indexes keys by value only).
    catalog: Option<Arc<CatalogService>>,
}

impl AuthorizerService {
    /// A service deciding with `limiter`.
    pub fn new(limiter: Arc<Limiter<Store>>, on_store_error: OnStoreError) -> Self {
        Self { limiter, on_store_error, catalog: None }
    }

    /// The same service, checking a refund's key in `catalog`.
    pub fn with_catalog(mut self, catalog: Arc<CatalogService>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Refund and `POST /v1/refund` (docs/semantics.md, "Refunds"): gives
    /// back what the decision of `decision_id` consumed, once.
    pub async fn refund(&self, decision_id: &str) -> Result<pb::RefundResponse, Status> {
        let ticket = self.limiter.open_decision_id(decision_id.trim())?;
        if let Some(catalog) = &self.catalog {
            let key = catalog.key(&ticket.key_id).await.map_err(Status::from)?;
            if !key.is_some_and(|k| k.plans.contains(&ticket.plan_id)) {
                return Err(Status::not_found(format!(
                    "key {} no longer exists or is no longer in usage plan {}: the decision cannot be refunded",
                    ticket.key_id, ticket.plan_id
                )));
            }
        }
        let r = self.limiter.refund(&ticket).await?;
        Ok(pb::RefundResponse {
            key_id: r.key_id,
            plan_id: r.plan_id,
            cost: r.cost,
            has_quota: r.quota_remaining.is_some(),
            quota_remaining: r.quota_remaining.unwrap_or(0),
        })
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
            decision_id: d.decision_id.unwrap_or_default(),
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

impl AuthorizerService {
    /// GetOwnUsage and `GET /v1/self`: the key's own view of itself and its
    /// plans (docs/usage.md, "Self-service usage"). Consumes nothing: each
    /// plan's quota is read with a check of cost 0 (the store's clock picks
    /// the period, and nothing is taken or counted as usage).
    pub async fn own_usage(&self, api_key: &str) -> Result<pb::OwnUsage, Status> {
        // One answer for every bad key, well formed or not: no hint whether
        // it exists.
        let denied = || Status::unauthenticated("the API key is missing, unknown, disabled or expired");
        if api_key.is_empty() || api_key.len() > 128 || !api_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(denied());
        }
        if !self.limiter.catalog().is_loaded() {
            return Err(Status::unavailable("the catalog is not loaded from Redis yet"));
        }
        let now = crate::model::now_ms();
        let (key_id, until_ms, plans) = {
            let catalog = self.limiter.catalog().load();
            let entry = catalog.key_by_hash(&KeyHash::of(api_key)).filter(|e| e.usable_at(now)).ok_or_else(denied)?;
            let small = catalog.small();
            let plans: Vec<UsagePlan> =
                entry.plans.as_slice().iter().filter_map(|p| small.plan_records.get(&**p).cloned()).collect();
            (entry.id.to_string(), entry.until_ms, plans)
        };
        let store = self.limiter.store();
        let keys = self.limiter.keys();
        let usage_keys: Vec<_> = plans.iter().map(|p| keys.usage(&key_id, &p.id)).collect();
        // Each plan's today: the local date of its quota's time zone
        // (docs/semantics.md, "Local-time quotas"), else the UTC date. One
        // read per distinct day (almost always one).
        let today = |p: &UsagePlan| usage_day(p.quota.and_then(|q| q.time_zone), now);
        let mut wanted: Vec<i64> = plans.iter().map(today).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let read = store.read_usage(usage_keys.clone(), wanted.clone()).await.map_err(Status::from)?;
        let days: Vec<Option<DayUsage>> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let j = wanted.iter().position(|&d| d == today(p)).unwrap_or(0);
                read.get(i * wanted.len() + j).copied().flatten()
            })
            .collect();
        let mut out = Vec::with_capacity(plans.len());
        for (i, plan) in plans.iter().enumerate() {
            let mut p = pb::OwnPlanUsage {
                plan_id: plan.id.clone(),
                plan_name: plan.name.clone(),
                throttle_rate_limit: plan.throttle.map_or(0.0, |t| t.rate_limit),
                throttle_burst_limit: plan.throttle.map_or(0, |t| t.burst_limit),
                used_today: days.get(i).copied().flatten().map_or(0, |d| d.n.max(0) as u64),
                stages: plan.api_stages.iter().map(|s| format!("{}/{}", s.stage.api_id, s.stage.stage)).collect(),
                ..Default::default()
            };
            if let Some(q) = plan.quota {
                let check = Check {
                    limits: vec![Limit {
                        key: usage_keys[i].state.clone(),
                        field: Some(QUOTA_FIELD.to_string()),
                        rule: Rule::Quota { quota: q, created_at_ms: plan.created_at_ms },
                    }],
                    cost: 0,
                    usage: None,
                    lease: LeaseOp::None,
                };
                let v = store.check(check).await.map_err(Status::from)?;
                // The store measured `reset_ms` by its own clock: the period
                // it is in ends then. Named as that period's exact end (the
                // one containing the middle of the wait), so that a few ms of
                // skew between this server's clock and the store's do not
                // show as 23:59:59.999.
                let reset_ms = quota_period(&q, now + v.reset_ms / 2).2;
                p.has_quota = true;
                p.quota_time_zone = q.time_zone.map(|z| z.name().to_string()).unwrap_or_default();
                p.quota_limit = v.limit;
                p.quota_period = match q.period {
                    Period::Day => "DAY",
                    Period::Week => "WEEK",
                    Period::Month => "MONTH",
                }
                .to_string();
                p.quota_remaining = v.remaining;
                p.quota_used = v.limit.saturating_sub(v.remaining);
                p.quota_reset_ms = reset_ms;
                p.quota_reset_at =
                    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(reset_ms)).to_string();
            }
            out.push(p);
        }
        Ok(pb::OwnUsage {
            key_id,
            usable_until_ms: if until_ms == u64::MAX { 0 } else { until_ms },
            plans: out,
            now_ms: now,
        })
    }
}

#[tonic::async_trait]
impl pb::authorizer_server::Authorizer for AuthorizerService {
    async fn get_own_usage(&self, request: Request<pb::GetOwnUsageRequest>) -> Result<Response<pb::OwnUsage>, Status> {
        Ok(Response::new(self.own_usage(&request.get_ref().api_key).await?))
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Result<Response<pb::RefundResponse>, Status> {
        Ok(Response::new(AuthorizerService::refund(self, &request.get_ref().decision_id).await?))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref()).await?.into()))
    }
}
