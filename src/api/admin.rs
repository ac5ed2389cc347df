//! `tollgate.v1.Admin`: the control plane over gRPC. Each call checks its
//! input, runs one catalog transaction (`CatalogService::update`) or reads
//! the snapshot, and answers. In front of every call, [`AdminGate`] checks
//! the caller's token and role ([`AdminAuth`], the one table of
//! `api::access`) and runs the call as that caller, so that the changes it
//! makes are audited (`crate::audit`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::access;
pub use super::access::AdminAuth;
use super::pb;
use crate::audit::{self, AuditRecord};
use crate::catalog::admin::{self as ops, AdminError, KeyPatch, NewKey, NewPlan, PlanPatch};
use crate::catalog::csv_import;
use crate::catalog::records::{KeyRecord, Want};
use crate::catalog::snapshot::Small;
use crate::catalog::store::{CatalogService, KeyFilter};
use crate::model::{
    validate_tags, ApiKey, Invalid, KeyHash, MethodSetting, Period, PlanStage, Quota, Stage, StageRef, Tags, Throttle,
    UsagePlan,
};
use crate::usage::UsageService;

/// The Admin service behind its credentials check: finds the operation of
/// the called method in [`access::OPERATIONS`], lets [`AdminAuth`] admit the
/// caller (or answers its refusal), and runs the call inside
/// [`audit::scope`].
#[derive(Clone)]
pub struct AdminGate<S> {
    inner: S,
    auth: AdminAuth,
}

impl<S> AdminGate<S> {
    /// `inner` behind `auth`.
    pub fn new(inner: S, auth: AdminAuth) -> Self {
        Self { inner, auth }
    }
}

impl<S: NamedService> NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

/// The peer's IP address, as tonic's server records it in a request's
/// extensions (plaintext or TLS).
pub fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    let mut probe = http::Request::new(());
    *probe.extensions_mut() = extensions.clone();
    Request::from_http(probe).remote_addr().map(|a| a.ip())
}

impl<S, B> Service<http::Request<B>> for AdminGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service polled ready is the one that takes the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let auth = self.auth.clone();
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default();
            let op = access::by_rpc(method).unwrap_or(&access::UNLISTED);
            let peer = peer_ip(req.extensions());
            let authorization = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
            match auth.admit(op, authorization.as_deref(), peer).await {
                Ok(caller) => audit::scope(caller, inner.call(req)).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The Admin service.
pub struct AdminService {
    catalog: Arc<CatalogService>,
    usage: UsageService,
}

impl AdminService {
    // Answers that show related records (a key's plans, a stage's plans) read
    // them from the snapshot installed by the change, rather than copying the
    // whole catalog out of the transaction.

    /// A service over `catalog`, reading usage through `usage`.
    pub fn new(catalog: Arc<CatalogService>, usage: UsageService) -> Self {
        Self { catalog, usage }
    }

    /// A key as answered after a change: with its plans as stored now.
    async fn answer_key(&self, k: ApiKey) -> Result<pb::ApiKey, AdminError> {
        Ok(match self.catalog.key(&k.id).await? {
            Some(r) => record_to(&r),
            None => key_to(&k, &[]),
        })
    }
}

/// A page size: 1–500, 0 meaning 25.
fn page_size(n: u32) -> Result<usize, Invalid> {
    match n {
        0 => Ok(25),
        1..=500 => Ok(n as usize),
        _ => Err(Invalid::new("page_size", format!("must be 1 to 500, got {n}"))),
    }
}

/// A page token: the hex of the last position shown (empty for the start).
fn decode_token(token: &str) -> Result<Option<String>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Invalid::new("page_token", "is not a token from a previous answer");
    let raw = hex::decode(token).map_err(|_| bad())?;
    String::from_utf8(raw).map(Some).map_err(|_| bad())
}

fn encode_token(next: Option<String>) -> String {
    next.map(|n| hex::encode(n.as_bytes())).unwrap_or_default()
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(i) => Status::invalid_argument(i.to_string()),
            AdminError::NotFound(m) => Status::not_found(m),
            AdminError::Conflict(m) => Status::failed_precondition(m),
            AdminError::AlreadyExists(m) => Status::already_exists(m),
            AdminError::Unavailable(m) => Status::unavailable(m),
            AdminError::Internal(m) => Status::internal(m),
        }
    }
}

// ---- conversions ----

/// A throttle from the wire, checked.
pub fn throttle_from(field: &str, t: &pb::Throttle) -> Result<Throttle, Invalid> {
    let burst = u32::try_from(t.burst_limit).map_err(|_| {
        Invalid::new(format!("{field}.burst_limit"), format!("must be at most {}, got {}", u32::MAX, t.burst_limit))
    })?;
    let th = Throttle { rate_limit: t.rate_limit, burst_limit: burst };
    th.validate().map_err(|e| e.within(field))?;
    Ok(th)
}

fn throttle_to(t: &Throttle) -> pb::Throttle {
    pb::Throttle { rate_limit: t.rate_limit, burst_limit: t.burst_limit as u64 }
}

fn quota_from(q: &pb::Quota) -> Result<Quota, Invalid> {
    let period: Period = q.period.parse().map_err(|e: Invalid| e.within("quota"))?;
    let time_zone = match q.time_zone.as_str() {
        "" => None,
        name => Some(crate::localtime::Zone::parse(name).map_err(|e| e.within("quota"))?),
    };
    let quota = Quota { limit: q.limit, period, offset: q.offset, time_zone, anchor_day: q.anchor_day };
    quota.validate().map_err(|e| e.within("quota"))?;
    Ok(quota)
}

fn quota_to(q: &Quota) -> pb::Quota {
    pb::Quota {
        limit: q.limit,
        period: q.period.to_string(),
        offset: q.offset,
        time_zone: q.time_zone.map(|z| z.name().to_string()).unwrap_or_default(),
        anchor_day: q.anchor_day,
    }
}

fn key_to(k: &ApiKey, plans: &[String]) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        name: k.name.clone(),
        description: k.description.clone(),
        enabled: k.enabled,
        customer_id: k.customer_id.clone(),
        value_hint: k.value_hint.clone(),
        created_at_ms: k.created_at_ms,
        updated_at_ms: k.updated_at_ms,
        expires_at_ms: k.expires_at_ms.unwrap_or(0),
        usage_plan_ids: plans.to_vec(),
        tags: tags_to(&k.tags),
    }
}

fn record_to(r: &KeyRecord) -> pb::ApiKey {
    key_to(&r.key, &r.plans)
}

fn stage_to(small: &Small, s: &Stage) -> pb::Stage {
    let name = s.stage.to_string();
    pb::Stage {
        stage: name.clone(),
        api_name: small.apis.get(&s.stage.api_id).map(|a| a.name.clone()).unwrap_or_default(),
        methods: s
            .methods
            .iter()
            .map(|(m, set)| pb::MethodSetting {
                method: m.clone(),
                throttle: set.throttle.as_ref().map(throttle_to),
                api_key_required: Some(set.api_key_required),
            })
            .collect(),
        usage_plan_ids: small.plans_with_stage(&name).map(|p| p.id.clone()).collect(),
    }
}

fn plan_to(p: &UsagePlan) -> pb::UsagePlan {
    pb::UsagePlan {
        id: p.id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        throttle: p.throttle.as_ref().map(throttle_to),
        quota: p.quota.as_ref().map(quota_to),
        api_stages: p
            .api_stages
            .iter()
            .map(|s| pb::PlanStage {
                stage: s.stage.to_string(),
                throttle: s.throttle.iter().map(|(m, t)| (m.clone(), throttle_to(t))).collect(),
            })
            .collect(),
        created_at_ms: p.created_at_ms,
        admission: admission_to(p.admission) as i32,
        shadow: p.shadow,
        alerts: p.alerts.clone(),
        tags: tags_to(&p.tags),
    }
}

fn admission_to(a: crate::model::Admission) -> pb::Admission {
    match a {
        crate::model::Admission::Exact => pb::Admission::Exact,
        crate::model::Admission::Leased => pb::Admission::Leased,
    }
}

fn admission_from(v: i32) -> Result<crate::model::Admission, Invalid> {
    match pb::Admission::try_from(v) {
        Ok(pb::Admission::Exact) => Ok(crate::model::Admission::Exact),
        Ok(pb::Admission::Leased) => Ok(crate::model::Admission::Leased),
        Err(_) => Err(Invalid::new("admission", format!("{v} is not an admission: 0 (EXACT) or 1 (LEASED)"))),
    }
}

fn tags_to(t: &Tags) -> std::collections::HashMap<String, String> {
    t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Tags from the wire (checked by the operation, or here for a filter).
fn tags_from(t: std::collections::HashMap<String, String>) -> Tags {
    t.into_iter().collect()
}

/// The tags an update sets: `tags` replaces them all, `clear_tags` removes
/// them all, neither keeps them.
fn tags_patch(tags: std::collections::HashMap<String, String>, clear: bool) -> Result<Option<Tags>, Invalid> {
    match (tags.is_empty(), clear) {
        (false, true) => Err(Invalid::new("tags", "give either tags or clear_tags, not both")),
        (false, false) => Ok(Some(tags_from(tags))),
        (true, true) => Ok(Some(Tags::new())),
        (true, false) => Ok(None),
    }
}

fn alerts_patch(alerts: Vec<u32>, clear: bool) -> Result<Option<Vec<u32>>, Invalid> {
    match (alerts.is_empty(), clear) {
        (false, true) => Err(Invalid::new("alerts", "give either alerts or clear_alerts, not both")),
        (false, false) => Ok(Some(alerts)),
        (true, true) => Ok(Some(Vec::new())),
        (true, false) => Ok(None),
    }
}

fn plan_stage_from(i: usize, s: &pb::PlanStage) -> Result<PlanStage, Invalid> {
    let stage = StageRef::parse(&s.stage).map_err(|e| e.within(&format!("api_stages[{i}]")))?;
    let mut throttle = std::collections::BTreeMap::new();
    let patterns = crate::model::method::parse_patterns(s.throttle.iter())
        .map_err(|e| Invalid::new(format!("api_stages[{i}].throttle"), e.message))?;
    for (p, t) in patterns {
        let field = format!("api_stages[{i}].throttle[{}]", p.as_str());
        throttle.insert(p.as_str().to_string(), throttle_from(&field, t)?);
    }
    Ok(PlanStage { stage, throttle })
}

fn require(field: &str, v: &str) -> Result<(), Invalid> {
    if v.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    Ok(())
}

fn expiry(ms: u64) -> Option<u64> {
    (ms > 0).then_some(ms)
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_api_key(&self, req: Request<pb::CreateApiKeyRequest>) -> Res<pb::CreateApiKeyResponse> {
        let r = req.into_inner();
        let new = NewKey {
            name: r.name,
            value: r.value,
            description: r.description,
            enabled: r.enabled.unwrap_or(true),
            customer_id: r.customer_id,
            expires_at_ms: expiry(r.expires_at_ms),
            tags: tags_from(r.tags),
        };
        let want = new.value.as_deref().map_or_else(Want::nothing, |v| Want::nothing().and_hash(KeyHash::of(v)));
        let (key, value) = self.catalog.update(want, |d, now| ops::create_key(d, new.clone(), now)).await?;
        tracing::info!(key_id = %key.id, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse { key: Some(key_to(&key, &[])), value }))
    }

    async fn get_api_key(&self, req: Request<pb::GetApiKeyRequest>) -> Res<pb::ApiKey> {
        let id = req.into_inner().id;
        require("id", &id)?;
        let k = self
            .catalog
            .key(&id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("API key {id:?} does not exist")))?;
        Ok(Response::new(record_to(&k)))
    }

    async fn list_api_keys(&self, req: Request<pb::ListApiKeysRequest>) -> Res<pb::ListApiKeysResponse> {
        let r = req.into_inner();
        let size = page_size(r.page_size)?;
        let after = decode_token(&r.page_token)?;
        let tags = tags_from(r.tags);
        validate_tags(&tags)?;
        let filter = KeyFilter { name_prefix: r.name_prefix, customer_id: r.customer_id, tags };
        let (keys, next) = self.catalog.list_keys(&filter, size, after.as_deref()).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.iter().map(record_to).collect(),
            next_page_token: encode_token(next),
        }))
    }

    async fn update_api_key(&self, req: Request<pb::UpdateApiKeyRequest>) -> Res<pb::ApiKey> {
        let r = req.into_inner();
        require("id", &r.id)?;
        let patch = KeyPatch {
            name: r.name,
            description: r.description,
            enabled: r.enabled,
            customer_id: r.customer_id,
            expires_at_ms: r.expires_at_ms.map(expiry),
            tags: tags_patch(r.tags, r.clear_tags)?,
        };
        let k = self.catalog.update(Want::key(&r.id), |d, now| ops::update_key(d, &r.id, patch.clone(), now)).await?;
        tracing::info!(key_id = %k.id, enabled = k.enabled, "API key updated");
        Ok(Response::new(self.answer_key(k).await?))
    }

    async fn delete_api_key(&self, req: Request<pb::DeleteApiKeyRequest>) -> Res<pb::DeleteResponse> {
        let id = req.into_inner().id;
        require("id", &id)?;
        self.catalog.update(Want::key(&id), |d, _| ops::delete_key(d, &id)).await?;
        tracing::info!(key_id = %id, "API key deleted");
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn import_api_keys(&self, req: Request<pb::ImportApiKeysRequest>) -> Res<pb::ImportApiKeysResponse> {
        let r = req.into_inner();
        let (rows, warnings) = csv_import::parse(&r.csv)?;
        let (ids, warnings) = self.catalog.import_keys(rows, warnings, r.fail_on_warnings).await?;
        tracing::info!(imported = ids.len(), warnings = warnings.len(), "API keys imported");
        Ok(Response::new(pb::ImportApiKeysResponse {
            ids,
            warnings: warnings.into_iter().map(|w| pb::ImportWarning { line: w.line, message: w.message }).collect(),
        }))
    }

    async fn rotate_api_key(&self, req: Request<pb::RotateApiKeyRequest>) -> Res<pb::CreateApiKeyResponse> {
        let r = req.into_inner();
        require("id", &r.id)?;
        let grace_ms =
            r.grace_seconds.checked_mul(1000).ok_or_else(|| Invalid::new("grace_seconds", "is too large"))?;
        let mut want = Want::key(&r.id);
        if let Some(v) = &r.value {
            want = want.and_hash(KeyHash::of(v));
        }
        let (key, value) =
            self.catalog.update(want, |d, now| ops::rotate_key(d, &r.id, r.value.clone(), grace_ms, now)).await?;
        tracing::info!(key_id = %key.id, grace_seconds = r.grace_seconds, "API key rotated");
        Ok(Response::new(pb::CreateApiKeyResponse { key: Some(self.answer_key(key).await?), value }))
    }

    async fn put_stage(&self, req: Request<pb::PutStageRequest>) -> Res<pb::Stage> {
        let r = req.into_inner();
        let mut methods = Vec::new();
        for (i, m) in r.methods.iter().enumerate() {
            let throttle =
                m.throttle.as_ref().map(|t| throttle_from(&format!("methods[{i}].throttle"), t)).transpose()?;
            methods.push((
                m.method.clone(),
                MethodSetting { throttle, api_key_required: m.api_key_required.unwrap_or(true) },
            ));
        }
        let st = self
            .catalog
            .update(Want::nothing(), |d, _| {
                ops::put_stage(d, &r.stage, r.api_name.clone(), methods.clone(), r.remove_methods.clone())
            })
            .await?;
        tracing::info!(stage = %st.stage, "stage put");
        Ok(Response::new(stage_to(self.catalog.snapshot().small(), &st)))
    }

    async fn get_stage(&self, req: Request<pb::GetStageRequest>) -> Res<pb::Stage> {
        let stage = StageRef::parse(&req.into_inner().stage)?;
        let snap = self.catalog.snapshot();
        let small = snap.small();
        let s = small
            .stage_records
            .get(&stage.to_string())
            .ok_or_else(|| AdminError::NotFound(format!("stage {stage} does not exist")))?;
        Ok(Response::new(stage_to(small, s)))
    }

    async fn list_stages(&self, req: Request<pb::ListStagesRequest>) -> Res<pb::ListStagesResponse> {
        let api = req.into_inner().api_id;
        let snap = self.catalog.snapshot();
        let small = snap.small();
        let stages = small
            .stage_records
            .values()
            .filter(|s| api.is_empty() || s.stage.api_id == api)
            .map(|s| stage_to(small, s))
            .collect();
        Ok(Response::new(pb::ListStagesResponse { stages }))
    }

    async fn delete_stage(&self, req: Request<pb::DeleteStageRequest>) -> Res<pb::DeleteResponse> {
        let stage = req.into_inner().stage;
        self.catalog.update(Want::nothing(), |d, _| ops::delete_stage(d, &stage)).await?;
        tracing::info!(%stage, "stage deleted");
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn delete_api(&self, req: Request<pb::DeleteApiRequest>) -> Res<pb::DeleteResponse> {
        let api = req.into_inner().api_id;
        require("api_id", &api)?;
        self.catalog.update(Want::nothing(), |d, _| ops::delete_api(d, &api)).await?;
        tracing::info!(api_id = %api, "API deleted");
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn create_usage_plan(&self, req: Request<pb::CreateUsagePlanRequest>) -> Res<pb::UsagePlan> {
        let r = req.into_inner();
        require("name", &r.name)?;
        let new = NewPlan {
            id: r.id,
            name: r.name,
            description: r.description,
            throttle: r.throttle.as_ref().map(|t| throttle_from("throttle", t)).transpose()?,
            quota: r.quota.as_ref().map(quota_from).transpose()?,
            api_stages: r
                .api_stages
                .iter()
                .enumerate()
                .map(|(i, s)| plan_stage_from(i, s))
                .collect::<Result<_, _>>()?,
            admission: admission_from(r.admission)?,
            shadow: r.shadow,
            alerts: r.alerts,
            tags: tags_from(r.tags),
        };
        let plan = self.catalog.update(Want::nothing(), |d, now| ops::create_plan(d, new.clone(), now)).await?;
        tracing::info!(plan_id = %plan.id, "usage plan created");
        Ok(Response::new(plan_to(&plan)))
    }

    async fn get_usage_plan(&self, req: Request<pb::GetUsagePlanRequest>) -> Res<pb::UsagePlan> {
        let id = req.into_inner().id;
        require("id", &id)?;
        let snap = self.catalog.snapshot();
        let p = snap
            .small()
            .plan_records
            .get(&id)
            .ok_or_else(|| AdminError::NotFound(format!("usage plan {id:?} does not exist")))?;
        Ok(Response::new(plan_to(p)))
    }

    async fn list_usage_plans(&self, req: Request<pb::ListUsagePlansRequest>) -> Res<pb::ListUsagePlansResponse> {
        let r = req.into_inner();
        let of_key = match r.key_id.as_str() {
            "" => None,
            id => Some(self.catalog.key(id).await?.map(|k| k.plans).unwrap_or_default()),
        };
        let tags = tags_from(r.tags);
        validate_tags(&tags)?;
        let snap = self.catalog.snapshot();
        // Plans are few (all in every replica's snapshot): filtered here,
        // before paging, so a page is full and the token still works.
        let items = snap
            .small()
            .plan_records
            .values()
            .filter(|p| of_key.as_ref().is_none_or(|ids| ids.contains(&p.id)))
            .filter(|p| tags.iter().all(|(k, v)| p.tags.get(k) == Some(v)))
            .map(|p| (p.id.clone(), p));
        let (plans, next) = ops::page(items, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListUsagePlansResponse {
            plans: plans.into_iter().map(plan_to).collect(),
            next_page_token: next,
        }))
    }

    async fn update_usage_plan(&self, req: Request<pb::UpdateUsagePlanRequest>) -> Res<pb::UsagePlan> {
        let r = req.into_inner();
        require("id", &r.id)?;
        if r.clear_throttle && r.throttle.is_some() {
            return Err(Invalid::new("throttle", "give either throttle or clear_throttle, not both").into());
        }
        if r.clear_quota && r.quota.is_some() {
            return Err(Invalid::new("quota", "give either quota or clear_quota, not both").into());
        }
        if let Some(n) = &r.name {
            require("name", n)?;
        }
        let throttle = match (&r.throttle, r.clear_throttle) {
            (Some(t), _) => Some(Some(throttle_from("throttle", t)?)),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let quota = match (&r.quota, r.clear_quota) {
            (Some(q), _) => Some(Some(quota_from(q)?)),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let mut set = Vec::new();
        for (i, m) in r.set_method_throttles.iter().enumerate() {
            let t = m
                .throttle
                .as_ref()
                .ok_or_else(|| Invalid::new(format!("set_method_throttles[{i}].throttle"), "is required"))?;
            set.push((
                m.stage.clone(),
                m.method.clone(),
                throttle_from(&format!("set_method_throttles[{i}].throttle"), t)?,
            ));
        }
        let patch = PlanPatch {
            name: r.name,
            description: r.description,
            throttle,
            quota,
            add_stages: r
                .add_stages
                .iter()
                .enumerate()
                .map(|(i, s)| plan_stage_from(i, s))
                .collect::<Result<_, _>>()?,
            remove_stages: r.remove_stages,
            set_method_throttles: set,
            remove_method_throttles: r.remove_method_throttles.into_iter().map(|m| (m.stage, m.method)).collect(),
            admission: r.admission.map(admission_from).transpose()?,
            shadow: r.shadow,
            alerts: alerts_patch(r.alerts, r.clear_alerts)?,
            tags: tags_patch(r.tags, r.clear_tags)?,
        };
        let plan = self.catalog.update(Want::nothing(), |d, _| ops::update_plan(d, &r.id, patch.clone())).await?;
        tracing::info!(plan_id = %plan.id, "usage plan updated");
        Ok(Response::new(plan_to(&plan)))
    }

    async fn delete_usage_plan(&self, req: Request<pb::DeleteUsagePlanRequest>) -> Res<pb::DeleteResponse> {
        let id = req.into_inner().id;
        require("id", &id)?;
        self.catalog.delete_plan(&id).await?;
        tracing::info!(plan_id = %id, "usage plan deleted");
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn add_usage_plan_key(&self, req: Request<pb::UsagePlanKeyRequest>) -> Res<pb::UsagePlanKey> {
        let r = req.into_inner();
        require("usage_plan_id", &r.usage_plan_id)?;
        require("key_id", &r.key_id)?;
        let k =
            self.catalog.update(Want::key(&r.key_id), |d, _| ops::add_plan_key(d, &r.usage_plan_id, &r.key_id)).await?;
        tracing::info!(plan_id = %r.usage_plan_id, key_id = %r.key_id, "key added to usage plan");
        Ok(Response::new(pb::UsagePlanKey { usage_plan_id: r.usage_plan_id, key: Some(self.answer_key(k).await?) }))
    }

    async fn remove_usage_plan_key(&self, req: Request<pb::UsagePlanKeyRequest>) -> Res<pb::DeleteResponse> {
        let r = req.into_inner();
        require("usage_plan_id", &r.usage_plan_id)?;
        require("key_id", &r.key_id)?;
        self.catalog.update(Want::key(&r.key_id), |d, _| ops::remove_plan_key(d, &r.usage_plan_id, &r.key_id)).await?;
        tracing::info!(plan_id = %r.usage_plan_id, key_id = %r.key_id, "key removed from usage plan");
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn list_usage_plan_keys(
        &self,
        req: Request<pb::ListUsagePlanKeysRequest>,
    ) -> Res<pb::ListUsagePlanKeysResponse> {
        let r = req.into_inner();
        require("usage_plan_id", &r.usage_plan_id)?;
        if !self.catalog.snapshot().small().plan_records.contains_key(&r.usage_plan_id) {
            return Err(AdminError::NotFound(format!("usage plan {:?} does not exist", r.usage_plan_id)).into());
        }
        let size = page_size(r.page_size)?;
        let after = decode_token(&r.page_token)?;
        let (keys, next) =
            self.catalog.list_plan_keys(&r.usage_plan_id, &r.name_prefix, size, after.as_deref()).await?;
        Ok(Response::new(pb::ListUsagePlanKeysResponse {
            keys: keys.iter().map(record_to).collect(),
            next_page_token: encode_token(next),
        }))
    }

    async fn get_usage(&self, req: Request<pb::GetUsageRequest>) -> Res<pb::Usage> {
        let r = req.into_inner();
        Ok(Response::new(self.usage.get_usage(&self.catalog, r).await?))
    }

    async fn update_usage(&self, req: Request<pb::UpdateUsageRequest>) -> Res<pb::UsageUpdated> {
        let r = req.into_inner();
        let done = self.usage.update_usage(&self.catalog, r).await?;
        // The limit store changed, not the catalog: audited here, after it.
        if let Some(caller) = audit::current() {
            let mut record = AuditRecord::of(&caller, crate::model::now_ms());
            let after = serde_json::json!({ "remaining": done.remaining, "period_end_ms": done.period_end_ms });
            record.add(format!("usage:{}/{}", done.usage_plan_id, done.key_id), None, Some(after));
            self.catalog.append_audit(record).await.map_err(|e| {
                AdminError::Unavailable(format!(
                    "the remaining quota is set, but its audit record could not be written ({e})"
                ))
            })?;
        }
        Ok(Response::new(done))
    }

    async fn list_audit_records(&self, req: Request<pb::ListAuditRecordsRequest>) -> Res<pb::ListAuditRecordsResponse> {
        let r = req.into_inner();
        let (size, after) = stream_page(r.page_size, &r.page_token)?;
        let (records, next) = self.catalog.audit_records(r.since_ms, after.as_deref(), size).await?;
        Ok(Response::new(pb::ListAuditRecordsResponse {
            records: records.into_iter().map(audit_to).collect(),
            next_page_token: encode_token(next),
        }))
    }

    async fn list_events(&self, req: Request<pb::ListEventsRequest>) -> Res<pb::ListEventsResponse> {
        let r = req.into_inner();
        let (size, after) = stream_page(r.page_size, &r.page_token)?;
        let (events, next) = self.usage.events(r.since_ms, after.as_deref(), size).await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: events.into_iter().map(event_to).collect(),
            next_page_token: encode_token(next),
        }))
    }
}

/// A page of a stream read oldest first (the audit trail, alert events):
/// its size (1–1000, 0 meaning 100) and the id to continue after.
fn stream_page(page_size: u32, page_token: &str) -> Result<(usize, Option<String>), Invalid> {
    let size = match page_size {
        0 => 100,
        n @ 1..=1000 => n as usize,
        n => return Err(Invalid::new("page_size", format!("must be 1 to 1000, got {n}"))),
    };
    let after = decode_token(page_token)?;
    if after.as_deref().is_some_and(|a| crate::catalog::memory::parse_audit_id(a).is_none()) {
        return Err(Invalid::new("page_token", "is not a token from a previous answer"));
    }
    Ok((size, after))
}

fn event_to(e: crate::alerts::AlertEvent) -> pb::Event {
    pb::Event {
        id: e.id,
        time_ms: e.time_ms,
        key_id: e.key_id,
        usage_plan_id: e.plan_id,
        threshold: e.threshold,
        limit: e.limit,
        used: e.used,
        period_start_ms: e.period_start_ms,
        period_end_ms: e.period_end_ms,
    }
}

fn audit_to(r: AuditRecord) -> pb::AuditRecord {
    let text = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
    pb::AuditRecord {
        id: r.id,
        time_ms: r.time_ms,
        token_name: r.token,
        peer: r.peer,
        operation: r.operation,
        record_ids: r.ids,
        changes: r
            .changes
            .into_iter()
            .map(|c| pb::AuditChange { record: c.record, field: c.field, before: text(c.before), after: text(c.after) })
            .collect(),
    }
}
