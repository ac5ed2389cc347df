//! The decision: from "key K calls method M of stage S with cost C" to an
//! answer, exactly as docs/semantics.md ("Authorize") says.
//!
//! The limiter resolves the stage, the method's settings, the key and its
//! plan from the catalog snapshot (no I/O), builds the list of limits that
//! apply, in the order of step 6 (a plan per-method throttle, b plan
//! throttle, c plan quota, d stage method throttle, e account throttle), and
//! hands them to the store for one atomic check-and-consume.
//!
//! With a [`DenyCache`] (`deny.rs`; the Redis store, `--deny-cache`), a
//! request that a live cached denial covers is answered here, with no store
//! call, and every denial the store answers is learned. With a
//! [`LeaseTable`] (`lease.rs`; Redis single/Sentinel, `--lease-max`), a
//! request of a plan with `admission: leased` is admitted from this
//! replica's lease when it holds enough tokens, before the deny cache is
//! looked at. A plan with `shadow: true` turns a denial by its own limits
//! into an allow that says so ([`Decision::shadow_denied`]), once the
//! request's shared throttles pass.

pub mod deny;

pub mod lease;

pub mod counts;

pub mod refund;

use tracing::{Instrument, Span};

use self::counts::DecisionCounts;

use crate::catalog::CatalogHandle;
use crate::model::method::{canonical_method, CanonicalMethod};
use crate::model::{Invalid, KeyHash, Throttle, KEY_VALUE_MAX};
use crate::store::keys::{method_field, Keys, PLAN_BUCKET_FIELD, QUOTA_FIELD};
use crate::store::{Check, Limit, LimitStore, Rule, StoreError, Verdict, MAX_COST};
use crate::telemetry::traces;
pub use deny::DenyCache;
pub use lease::LeaseTable;

use self::lease::Admit;
use crate::store::LeaseOp;
use std::sync::Arc;

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed.
    Ok,
    /// The stage does not exist (404).
    UnknownStage,
    /// Key missing, unknown, disabled or expired (403).
    InvalidApiKey,
    /// None of the key's plans contains the stage (403).
    NotSubscribed,
    /// A throttle is exhausted (429).
    Throttled,
    /// The quota of the period is used up (429).
    QuotaExceeded,
}

impl Reason {
    /// Every reason, in [`index`](Self::index) order.
    pub const ALL: [Reason; 6] = [
        Reason::Ok,
        Reason::UnknownStage,
        Reason::InvalidApiKey,
        Reason::NotSubscribed,
        Reason::Throttled,
        Reason::QuotaExceeded,
    ];

    /// The position of this reason in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        match self {
            Reason::Ok => 0,
            Reason::UnknownStage => 1,
            Reason::InvalidApiKey => 2,
            Reason::NotSubscribed => 3,
            Reason::Throttled => 4,
            Reason::QuotaExceeded => 5,
        }
    }

    /// The HTTP status API Gateway answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::Ok => 200,
            Reason::UnknownStage => 404,
            Reason::InvalidApiKey | Reason::NotSubscribed => 403,
            Reason::Throttled | Reason::QuotaExceeded => 429,
        }
    }

    /// The message of API Gateway's body.
    pub fn message(self) -> &'static str {
        match self {
            Reason::Ok => "OK",
            Reason::UnknownStage => "Not Found",
            Reason::InvalidApiKey | Reason::NotSubscribed => "Forbidden",
            Reason::Throttled => "Too Many Requests",
            Reason::QuotaExceeded => "Limit Exceeded",
        }
    }

    /// The name used on the wire and in JSON (`THROTTLED`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "OK",
            Reason::UnknownStage => "UNKNOWN_STAGE",
            Reason::InvalidApiKey => "INVALID_API_KEY",
            Reason::NotSubscribed => "NOT_SUBSCRIBED",
            Reason::Throttled => "THROTTLED",
            Reason::QuotaExceeded => "QUOTA_EXCEEDED",
        }
    }
}

/// The five kinds of limit (SEMANTICS.md step 6, a–e).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// a. the plan's throttle of one method, per key.
    PlanMethodThrottle,
    /// b. the plan's throttle, per key, over all its stages.
    PlanThrottle,
    /// c. the plan's quota, per key, over all its stages.
    PlanQuota,
    /// d. the stage's method throttle, all callers together.
    StageMethodThrottle,
    /// e. the account throttle, all traffic.
    AccountThrottle,
}

impl LimitKind {
    /// Whether the limit is the usage plan's own (a–c: per key), not a
    /// throttle shared by all callers of a stage or of the account.
    pub fn is_plan_limit(self) -> bool {
        matches!(self, LimitKind::PlanMethodThrottle | LimitKind::PlanThrottle | LimitKind::PlanQuota)
    }
}

/// The numbers of the limit an answer describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// Which limit.
    pub kind: LimitKind,
    /// Its capacity.
    pub limit: u64,
    /// Units left.
    pub remaining: u64,
    /// Milliseconds until whole again.
    pub reset_ms: u64,
    /// The policy window, seconds.
    pub window_secs: u64,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The key's id, when the key is known.
    pub key_id: Option<String>,
    /// The plan that applied.
    pub plan_id: Option<String>,
    /// The tightest applied limit (the failing one on a denial).
    pub rate: Option<RateInfo>,
    /// On a 429 that can pass later: ms until it could.
    pub retry_after_ms: Option<u64>,
    /// A shadow plan's limit would have denied with this reason (the
    /// request was allowed; `rate` describes that limit).
    pub shadow_denied: Option<Reason>,
    /// An allowed decision that consumed a limit: its signed id, for a
    /// refund (`refund.rs`; docs/semantics.md, "Refunds").
    pub decision_id: Option<String>,
}

impl Decision {
    /// A denial for `reason`, with nothing else known.
    pub fn deny(reason: Reason) -> Self {
        Self {
            allowed: false,
            reason,
            key_id: None,
            plan_id: None,
            rate: None,
            retry_after_ms: None,
            shadow_denied: None,
            decision_id: None,
        }
    }
}

/// One question, as the wire protocols deliver it (not yet validated).
///
/// `M` is the method: by default `&str` (any `AsRef<str>` will do), as the
/// client wrote it (`/path/VERB`, canonicalised by [`Limiter::authorize`]);
/// or `&CanonicalMethod`, already canonical
/// ([`Limiter::authorize_canonical`], for the Envoy services, which
/// canonicalise an HTTP request's path and method themselves).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a, M = &'a str> {
    /// The key value presented, if any.
    pub api_key: Option<&'a str>,
    /// `API/STAGE`.
    pub stage: &'a str,
    /// `/path/VERB`.
    pub method: M,
    /// Units to consume.
    pub cost: u64,
}

impl<'a, M> Request<'a, M> {
    /// The same question about another form of the method.
    fn with_method<N>(&self, method: N) -> Request<'a, N> {
        Request { api_key: self.api_key, stage: self.stage, method, cost: self.cost }
    }
}

/// Why a question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// Bad input (INVALID_ARGUMENT).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The store could not decide (UNAVAILABLE or INTERNAL).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthorizeError {
    /// The kind of failure, as metrics and traces name it: `invalid`,
    /// `unavailable` (may pass on retry) or `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthorizeError::Invalid(_) => "invalid",
            AuthorizeError::Store(s) if s.is_transient() => "unavailable",
            AuthorizeError::Store(_) => "internal",
        }
    }
}

/// Checks the shape of a request and returns its method in canonical form
/// (docs/semantics.md, "Canonical method form"). A key must be 1–128
/// characters of `[A-Za-z0-9]`: anything else cannot be a key and is bad
/// input; a well-formed value that matches no key is an ordinary 403.
pub fn validate<M: AsRef<str>>(req: &Request<'_, M>) -> Result<CanonicalMethod, Invalid> {
    validate_key_and_stage(req.api_key, req.stage)?;
    let method = canonical_method(req.method.as_ref()).map_err(|e| Invalid::new("method", e.message))?;
    validate_cost(req.cost)?;
    Ok(method)
}

fn validate_key_and_stage(api_key: Option<&str>, stage: &str) -> Result<(), Invalid> {
    if let Some(k) = api_key {
        if k.is_empty() {
            return Err(Invalid::new("api_key", "is empty; leave it unset when the client presented no key"));
        }
        if k.len() > KEY_VALUE_MAX {
            return Err(Invalid::new("api_key", format!("is longer than {KEY_VALUE_MAX} characters")));
        }
        if !k.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Invalid::new("api_key", "may contain only letters A-Z, a-z and digits 0-9"));
        }
    }
    if stage.is_empty() {
        return Err(Invalid::new("stage", "is empty; give the stage as API/STAGE, like \"petstore/prod\""));
    }
    if stage.len() > 129 || !stage.contains('/') {
        let shown: String = stage.chars().take(64).collect();
        return Err(Invalid::new("stage", format!("{shown:?} must be written API/STAGE, like \"petstore/prod\"")));
    }
    Ok(())
}

fn validate_cost(cost: u64) -> Result<(), Invalid> {
    if cost == 0 || cost > MAX_COST {
        return Err(Invalid::new("cost", format!("must be 1 to {MAX_COST}, got {cost}")));
    }
    Ok(())
}

/// Decides requests against a catalog and a store.
pub struct Limiter<S> {
    catalog: CatalogHandle,
    store: S,
    keys: Keys,
    account: Option<Throttle>,
    deny: Option<DenyCache>,
    leases: Option<Arc<LeaseTable>>,
    /// Decision ids and refunds (`refund.rs`), when on.
    refunds: Option<Arc<refund::Refunds>>,
    /// The answers given, as the metrics count them (`GET /v1/stats`).
    counts: DecisionCounts,
}

impl<S: LimitStore> Limiter<S> {
    /// A limiter; `account` is the server-wide throttle, if any.
    pub fn new(catalog: CatalogHandle, store: S, keys: Keys, account: Option<Throttle>) -> Self {
        Self {
            catalog,
            store,
            keys,
            account,
            deny: None,
            leases: None,
            refunds: None,
            counts: DecisionCounts::default(),
        }
    }

    /// The same limiter, admitting the requests of plans with `admission:
    /// leased` from leases it keeps in `table` (`lease.rs`). Someone must
    /// settle them: [`Limiter::settle_due`] every few ms (`crate::server`
    /// runs it), and [`Limiter::settle_all`] at shutdown.
    pub fn with_leases(mut self, table: Arc<LeaseTable>) -> Self {
        self.leases = Some(table);
        self
    }

    /// The lease table, if any.
    pub fn leases(&self) -> Option<&Arc<LeaseTable>> {
        self.leases.as_ref()
    }

    /// Sends the settles that are due (leases whose use ended) to the
    /// store, together; returns how many.
    pub async fn settle_due(&self) -> usize {
        match &self.leases {
            Some(t) => self.settle(t.due()).await,
            None => 0,
        }
    }

    /// Settles every lease now (at shutdown).
    pub async fn settle_all(&self) -> usize {
        match &self.leases {
            Some(t) => self.settle(t.drain()).await,
            None => 0,
        }
    }

    async fn settle(&self, checks: Vec<Check>) -> usize {
        let n = checks.len();
        if n == 0 {
            return 0;
        }
        let results = futures::future::join_all(checks.into_iter().map(|c| self.store.check(c))).await;
        for r in results {
            let outcome = match &r {
                Ok(v) if v.soft => "lapsed",
                Ok(_) => "ok",
                Err(_) => "failed",
            };
            metrics::counter!("tollgate_lease_settles_total", "outcome" => outcome).increment(1);
            if let Err(e) = r {
                // (the lease lapses in Redis: charged in full, its use not
                // counted in the usage)
                tracing::warn!(error = %e, "a lease could not be settled; it lapses");
            }
        }
        n
    }

    /// The same limiter, answering what `cache` holds without the store
    /// (`deny.rs`).
    pub fn with_deny_cache(mut self, cache: DenyCache) -> Self {
        self.deny = Some(cache);
        self
    }

    /// The deny cache, if any.
    pub fn deny_cache(&self) -> Option<&DenyCache> {
        self.deny.as_ref()
    }

    /// The answers given since this limiter started, by reason and by kind
    /// of failure (the same counts as the decision metrics).
    pub fn counts(&self) -> &DecisionCounts {
        &self.counts
    }

    /// Where the limiter keeps its state in the store.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The catalog.
    pub fn catalog(&self) -> &CatalogHandle {
        &self.catalog
    }

    /// Answers one request (SEMANTICS.md "Authorize", steps 1–7), and counts
    /// it in the metrics (`crate::telemetry`). The method is canonicalised
    /// once, here; every lookup and every limit's key uses that form.
    /// Each answer is traced in a decision span (`crate::telemetry::traces`).
    pub async fn authorize<M: AsRef<str>>(&self, req: Request<'_, M>) -> Result<Decision, AuthorizeError> {
        let span = traces::decision_span();
        let result = async {
            match validate(&req) {
                Ok(method) => self.decide(req.with_method(&method), &span).await,
                Err(e) => Err(e.into()),
            }
        }
        .instrument(span.clone())
        .await;
        answered(&span, &result, &self.counts);
        result
    }

    /// [`Limiter::authorize`] for a method already in canonical form.
    pub async fn authorize_canonical(&self, req: Request<'_, &CanonicalMethod>) -> Result<Decision, AuthorizeError> {
        let span = traces::decision_span();
        let result = async {
            match validate_key_and_stage(req.api_key, req.stage).and_then(|()| validate_cost(req.cost)) {
                Ok(()) => self.decide(req, &span).await,
                Err(e) => Err(e.into()),
            }
        }
        .instrument(span.clone())
        .await;
        answered(&span, &result, &self.counts);
        result
    }

    /// Steps 1–7 for a validated request, recorded on its decision `span`.
    async fn decide(&self, req: Request<'_, &CanonicalMethod>, span: &Span) -> Result<Decision, AuthorizeError> {
        traces::record_question(span, req.stage, req.method.as_str(), req.cost, req.api_key.is_some());
        if !self.catalog.is_loaded() {
            // A Redis catalog before its first load: answering from an empty
            // (or a file's) catalog would refuse valid keys, or let revoked
            // ones through.
            return Err(StoreError::Unavailable("the catalog is not loaded from Redis yet".into()).into());
        }
        // Before the snapshot: what the deny cache learns from this decision
        // is then tagged with a generation no newer than its limits.
        let generation = self.catalog.generation();
        let (check, kinds, mut decision, (leased, shadow)) = {
            let catalog = self.catalog.load();
            // 1. the stage
            let Some(stage) = catalog.stage(req.stage) else {
                return Ok(Decision::deny(Reason::UnknownStage));
            };
            // 2. the method's settings (most specific match)
            let (pattern, setting) = match stage.methods.lookup(req.method) {
                Some((p, s)) => (p.as_str(), *s),
                None => ("*/*", Default::default()),
            };
            // The limits for the store, and beside them each one's kind and
            // rule, for the numbers of the answer.
            let mut limits = Vec::with_capacity(5);
            let mut kinds: Vec<(LimitKind, Rule)> = Vec::with_capacity(5);
            let mut add = |kind: LimitKind, key: String, field: Option<String>, rule: Rule| {
                limits.push(Limit { key, field, rule });
                kinds.push((kind, rule));
            };
            let mut decision = Decision::deny(Reason::Ok);
            let mut usage = None;
            let (mut leased, mut shadow) = (false, false);
            // 3. methods that need no key: only stage and account throttles
            if setting.api_key_required {
                // 4. the key
                let entry = req.api_key.and_then(|v| catalog.key_by_hash(&KeyHash::of(v)));
                let now = crate::model::now_ms();
                let Some(entry) = entry.filter(|e| e.usable_at(now)) else {
                    return Ok(Decision::deny(Reason::InvalidApiKey));
                };
                let key_id = &*entry.id;
                decision.key_id = Some(key_id.to_string());
                // 5. the key's plan for this stage
                let Some(sp) = catalog.plan_for(entry, req.stage) else {
                    decision.reason = Reason::NotSubscribed;
                    return Ok(decision);
                };
                let plan = &sp.plan;
                decision.plan_id = Some(plan.id.clone());
                leased = plan.admission == crate::model::Admission::Leased;
                shadow = plan.shadow;
                // 6 a. the plan's per-method throttle
                // (a–c and the usage share the key's state hash in the plan)
                let mut keys = self.keys.usage(key_id, &plan.id);
                keys.zone = plan.quota.and_then(|q| q.time_zone);
                if let Some((p, t)) = sp.method_throttles.lookup(req.method) {
                    let field = method_field(&stage.stage, p.as_str());
                    add(LimitKind::PlanMethodThrottle, keys.state.clone(), Some(field), Rule::Bucket(*t));
                }
                // b. the plan's throttle
                if let Some(t) = plan.throttle {
                    let field = Some(PLAN_BUCKET_FIELD.to_string());
                    add(LimitKind::PlanThrottle, keys.state.clone(), field, Rule::Bucket(t));
                }
                // c. the plan's quota
                if let Some(q) = plan.quota {
                    let rule = Rule::Quota { quota: q, created_at_ms: plan.created_at_ms };
                    add(LimitKind::PlanQuota, keys.state.clone(), Some(QUOTA_FIELD.to_string()), rule);
                }
                usage = Some(with_alerts(keys, plan, key_id));
            }
            // d. the stage's method throttle
            if let Some(t) = setting.throttle {
                add(
                    LimitKind::StageMethodThrottle,
                    self.keys.stage_bucket(&stage.stage, pattern),
                    None,
                    Rule::Bucket(t),
                );
            }
            // e. the account throttle
            if let Some(t) = self.account {
                add(LimitKind::AccountThrottle, self.keys.account_bucket(), None, Rule::Bucket(t));
            }
            (Check { limits, cost: req.cost, usage, lease: LeaseOp::None }, kinds, decision, (leased, shadow))
        };
        let mut check = check;
        // Whether an allow gets a decision id (`refund.rs`): only when
        // something is consumed, of a key's plan.
        let refundable = self.refunds.is_some() && !check.limits.is_empty() && check.usage.is_some();
        // A shadow plan's request, denied by one of the plan's own limits,
        // still passes the shared throttles: kept here to ask them alone.
        let shared: Option<Vec<(usize, Limit)>> = shadow.then(|| {
            let shared = |i: &usize| !kinds[*i].0.is_plan_limit();
            (0..check.limits.len()).filter(shared).map(|i| (i, check.limits[i].clone())).collect()
        });
        let table = self.leases.as_ref().filter(|_| leased && !check.limits.is_empty());
        let (admit, sig) = match table {
            Some(t) => t.admit(&check),
            None => (Admit::Plain, 0),
        };
        let cached = match admit {
            Admit::Local(_) => None,
            _ => self.deny.as_ref().and_then(|d| d.lookup(generation, &check.limits, check.cost)),
        };
        let verdict = if check.limits.is_empty() && check.usage.is_none() {
            Verdict::UNLIMITED
        } else if let Admit::Local(v) = admit {
            metrics::counter!("tollgate_lease_admissions_total").increment(1);
            v
        } else if let Some(v) = cached {
            if let (Some(t), Admit::Ask(_)) = (table, admit) {
                t.unask(sig);
            }
            v
        } else {
            // A lease asked: what the table needs to keep of the check.
            let asked = match (table, admit) {
                (Some(t), Admit::Ask(n)) => {
                    check.lease = LeaseOp::Ask(n);
                    Some((t, t.now_us(), check.clone()))
                }
                _ => None,
            };
            // What the deny cache needs to learn from a denial: the instant
            // the check was handed to the store, and its limits.
            let learn = self.deny.as_ref().map(|d| (d, d.now_us(), check.limits.clone(), check.cost));
            let started = std::time::Instant::now();
            let span = traces::store_span(self.store.name(), check.limits.len());
            let verdict = self.store.check(check).instrument(span.clone()).await;
            metrics::histogram!("tollgate_store_seconds", "store" => self.store.name()).record(started.elapsed());
            if let Err(e) = &verdict {
                traces::record_error(&span, e);
            }
            if let Some((t, sent_us, asked)) = asked {
                if let Ok(Some(g)) = verdict.as_ref().map(|v| v.grant) {
                    metrics::counter!("tollgate_leases_total").increment(1);
                    metrics::counter!("tollgate_leased_tokens_total").increment(g.tokens);
                }
                t.granted(sig, sent_us, asked, verdict.as_ref().ok());
            }
            let verdict = verdict?;
            let learn = learn.filter(|_| !verdict.soft);
            if let (Some((cache, sent_us, limits, cost)), false, Some(i)) = (learn, verdict.allowed, verdict.index) {
                let shared = matches!(kinds[i].0, LimitKind::StageMethodThrottle | LimitKind::AccountThrottle);
                if !shared || cache.caches_shared_throttles() {
                    cache.learn(generation, sent_us, &limits[i], cost, &verdict);
                }
            }
            verdict
        };
        let verdict = match shared {
            Some(shared) => self.shadow(verdict, &kinds, shared, req.cost, &mut decision).await?,
            None => verdict,
        };
        decision.allowed = verdict.allowed;
        decision.rate = verdict.index.map(|i| RateInfo {
            kind: kinds[i].0,
            limit: verdict.limit,
            remaining: verdict.remaining,
            reset_ms: verdict.reset_ms,
            window_secs: window_secs(&kinds[i].1),
        });
        decision.reason = if verdict.allowed {
            Reason::Ok
        } else if matches!(decision.rate.map(|r| r.kind), Some(LimitKind::PlanQuota)) {
            Reason::QuotaExceeded
        } else {
            Reason::Throttled
        };
        decision.retry_after_ms = if verdict.allowed { None } else { verdict.retry_after_ms };
        if let (true, true, None, Some(key_id), Some(plan_id)) =
            (refundable, decision.allowed, decision.shadow_denied, &decision.key_id, &decision.plan_id)
        {
            let quota = kinds.iter().find_map(|(_, r)| match r {
                Rule::Quota { quota, .. } => Some(*quota),
                Rule::Bucket(_) => None,
            });
            decision.decision_id = self.decision_id(key_id, plan_id, req.stage, req.method.as_str(), req.cost, quota);
        }
        if cached.is_some() {
            traces::record_deny_cache_hit(span);
            // (a shadow plan's cached denial is answered as an allow: counted
            // by the denial it was)
            let reason = decision.shadow_denied.unwrap_or(decision.reason);
            metrics::counter!("tollgate_deny_cache_hits_total", "reason" => reason.as_str()).increment(1);
        }
        Ok(decision)
    }
}

impl<S: LimitStore> Limiter<S> {
    /// Shadow plans (docs/semantics.md, "Shadow plans"): a denial by one of
    /// the plan's own limits becomes an allow that says so, once the
    /// request's shared throttles (stage, account: not the plan's to waive)
    /// pass on their own; a denial by a shared throttle stands.
    async fn shadow(
        &self,
        verdict: Verdict,
        kinds: &[(LimitKind, Rule)],
        shared: Vec<(usize, Limit)>,
        cost: u64,
        decision: &mut Decision,
    ) -> Result<Verdict, AuthorizeError> {
        let Some(i) = verdict.index.filter(|&i| !verdict.allowed && kinds[i].0.is_plan_limit()) else {
            return Ok(verdict);
        };
        let would = if kinds[i].0 == LimitKind::PlanQuota { Reason::QuotaExceeded } else { Reason::Throttled };
        if !shared.is_empty() {
            let (index, limits): (Vec<usize>, Vec<Limit>) = shared.into_iter().unzip();
            let v = self.store.check(Check { limits, cost, usage: None, lease: LeaseOp::None }).await?;
            if !v.allowed {
                return Ok(Verdict { index: v.index.map(|j| index[j]), ..v });
            }
        }
        metrics::counter!("tollgate_shadow_denials_total", "reason" => would.as_str()).increment(1);
        decision.shadow_denied = Some(would);
        Ok(Verdict { allowed: true, retry_after_ms: None, soft: false, ..verdict })
    }
}

/// `keys` with the plan's quota alerts (`crate::alerts`), when it has a
/// quota and alerts: only then does the store get anything more to do.
fn with_alerts(
    mut keys: crate::store::UsageKeys,
    plan: &crate::model::UsagePlan,
    key_id: &str,
) -> crate::store::UsageKeys {
    if !plan.alerts.is_empty() && plan.quota.is_some() {
        keys.alerts = Some(Arc::new(crate::alerts::AlertSpec {
            thresholds: plan.alerts.clone(),
            key_id: key_id.to_string(),
            plan_id: plan.id.clone(),
        }));
    }
    keys
}

/// The policy window of a limit, in seconds: burst / rate for a bucket, the
/// length of the current period for a quota.
fn window_secs(rule: &Rule) -> u64 {
    match rule {
        Rule::Bucket(t) => t.window_secs(),
        Rule::Quota { quota, .. } => {
            let (_, s, e) = crate::localtime::quota_period(quota, crate::model::now_ms());
            (e - s) / 1000
        }
    }
}

/// Counts an answer in the metrics and in `counts`, and records it on its
/// decision span (`crate::telemetry`).
fn answered(span: &Span, result: &Result<Decision, AuthorizeError>, counts: &DecisionCounts) {
    traces::record_answer(span, result);
    counts.record(result);
    match result {
        Ok(d) => metrics::counter!("tollgate_decisions_total", "reason" => d.reason.as_str()).increment(1),
        Err(e) => metrics::counter!("tollgate_decision_errors_total", "kind" => e.kind()).increment(1),
    }
}
