//! Refunds (docs/semantics.md, "Refunds"): every allowed decision that
//! consumed a limit carries a *decision id*, and `Refund(decision_id)` gives
//! that decision's cost back to exactly the limits it consumed, once.
//!
//! **The id** is `base64url(payload ‖ tag)`: the payload says everything a
//! refund needs to rebuild the decision's [`Check`] from the catalog
//! (key, plan, stage, canonical method, cost) and to judge it (its instant,
//! the start day of the quota period it was charged in, its usage day),
//! plus a random 96-bit nonce that makes every id unique; the tag is the
//! first 128 bits of HMAC-SHA256 over the payload with the server's
//! *decision secret*. Possession of a validly signed id is the authority to
//! refund it (as the API key is for Authorize): nothing in it is secret, and
//! nothing in it can be changed. Why not a random id and a record per
//! decision: that is a write per decision; a signed id costs nothing until
//! it is refunded.
//!
//! **The secret** is shared by every replica: with Redis it is created once
//! (`SET NX`, `Keys::decision_secret`) and read by each replica at start
//! (until then, answers carry no id and refunds are UNAVAILABLE); with the
//! memory store it is random per process. `--decision-secret` pins it.
//! It is never logged.
//!
//! **Once**: the store creates the refund's marker (`Keys::refund_marker`,
//! in the slot of the key's state) and gives back in one atomic step
//! (`LimitStore::refund`).

use std::sync::{Arc, OnceLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{LimitKind, Limiter};
use crate::localtime::{quota_period, usage_day};
use crate::model::method::canonical_method;
use crate::model::Quota;
use crate::store::keys::{method_field, PLAN_BUCKET_FIELD, QUOTA_FIELD};
use crate::store::{Limit, LimitStore, Refund, RefundOutcome, Rule, StoreError};

/// How long after a decision it can be refunded, by default (`--refund-window`).
pub const DEFAULT_REFUND_WINDOW_MS: u64 = 3_600_000;

/// A decision made in the first this-many ms of its quota period (by the
/// deciding replica's clock) is not refunded: the replica's clock and
/// Redis's may disagree by that much about which period it was charged in,
/// and giving back to a period that was not charged would give more than was
/// taken.
pub const PERIOD_START_GUARD_MS: u64 = 1000;

/// The version byte of the payload.
const VERSION: u8 = 1;
/// Bytes of the tag kept (the first half of HMAC-SHA256).
const TAG_LEN: usize = 16;
/// Bytes of the nonce.
const NONCE_LEN: usize = 12;
/// The longest id accepted (a payload's strings are bounded by the catalog).
const MAX_ID_LEN: usize = 2048;

/// The secret that signs decision ids (never logged: no `Debug`). Kept as
/// the HMAC state already keyed with it (and fed the domain prefix), which
/// each id clones: two SHA-256 blocks fewer per decision than keying anew.
pub struct DecisionSigner {
    keyed: OnceLock<Hmac<Sha256>>,
}

impl Default for DecisionSigner {
    fn default() -> Self {
        Self::new()
    }
}

impl DecisionSigner {
    /// A signer whose secret is not known yet ([`DecisionSigner::set`]).
    pub fn new() -> Self {
        Self { keyed: OnceLock::new() }
    }

    /// A signer with `secret`.
    pub fn with_secret(secret: &[u8]) -> Self {
        let s = Self::new();
        s.set(secret);
        s
    }

    /// A signer with a random 256-bit secret (the memory store's default).
    pub fn random() -> Self {
        Self::with_secret(&rand::random::<[u8; 32]>())
    }

    /// Sets the secret (the first call wins).
    pub fn set(&self, secret: &[u8]) {
        // (HMAC takes a key of any length: this cannot fail)
        if let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) {
            m.update(b"tollgate decision id v1\0");
            let _ = self.keyed.set(m);
        }
    }

    /// Whether the secret is known.
    pub fn is_ready(&self) -> bool {
        self.keyed.get().is_some()
    }

    fn mac(&self) -> Option<Hmac<Sha256>> {
        self.keyed.get().cloned()
    }

    /// The id of `ticket`; `None` while the secret is unknown.
    pub fn sign(&self, ticket: &DecisionTicket) -> Option<String> {
        self.sign_payload(ticket.encode())
    }

    /// The id of an encoded payload ([`encode`]).
    fn sign_payload(&self, mut bytes: Vec<u8>) -> Option<String> {
        let mut mac = self.mac()?;
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        Some(base64url(&bytes))
    }

    /// The ticket an id carries, when its tag is right.
    pub fn open(&self, id: &str) -> Result<DecisionTicket, RefundError> {
        let bad = |why: &str| RefundError::Invalid(format!("decision_id {why}"));
        if id.is_empty() {
            return Err(bad("is empty; give the decision_id of an allowed Authorize answer"));
        }
        if id.len() > MAX_ID_LEN {
            return Err(bad("is too long to be a decision id"));
        }
        let bytes = unbase64url(id).ok_or_else(|| bad("is not base64url"))?;
        if bytes.len() <= TAG_LEN {
            return Err(bad("is too short to be a decision id"));
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut mac = self.mac().ok_or(RefundError::Unavailable("the decision secret is not known yet".into()))?;
        mac.update(payload);
        mac.verify_truncated_left(tag)
            .map_err(|_| bad("is not signed by this service (forged, altered, or from another deployment)"))?;
        DecisionTicket::decode(payload).ok_or_else(|| bad("is signed but not understood (a newer version?)"))
    }
}

/// What a decision id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionTicket {
    /// The decision's instant, ms since the epoch (the deciding replica's clock).
    pub at_ms: u64,
    /// Random: makes the id unique (and names its refund marker).
    pub nonce: [u8; NONCE_LEN],
    /// Units the decision consumed from each of its limits.
    pub cost: u64,
    /// The start day of the quota period it was charged in (days since
    /// 1970-01-01), when its plan had a quota.
    pub period_day: Option<i64>,
    /// The day whose usage counted it.
    pub usage_day: i64,
    /// The key's id.
    pub key_id: String,
    /// The plan's id.
    pub plan_id: String,
    /// `API/STAGE`.
    pub stage: String,
    /// The method, canonical.
    pub method: String,
}

impl DecisionTicket {
    /// The nonce in hex (the refund marker's name).
    pub fn nonce_hex(&self) -> String {
        hex::encode(self.nonce)
    }

    fn encode(&self) -> Vec<u8> {
        encode(
            self.at_ms,
            &self.nonce,
            self.cost,
            self.period_day,
            self.usage_day,
            [&self.key_id, &self.plan_id, &self.stage, &self.method],
        )
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        if r.take(1)?[0] != VERSION {
            return None;
        }
        let has_period = r.take(1)?[0] == 1;
        let at_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let nonce: [u8; NONCE_LEN] = r.take(NONCE_LEN)?.try_into().ok()?;
        let cost = u64::from(u32::from_be_bytes(r.take(4)?.try_into().ok()?));
        let period = i64::from(i32::from_be_bytes(r.take(4)?.try_into().ok()?));
        let usage_day = i64::from(i32::from_be_bytes(r.take(4)?.try_into().ok()?));
        let mut s = || -> Option<String> {
            let n = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
            String::from_utf8(r.take(n)?.to_vec()).ok()
        };
        let (key_id, plan_id, stage, method) = (s()?, s()?, s()?, s()?);
        if !r.0.is_empty() {
            return None;
        }
        let period_day = has_period.then_some(period);
        Some(Self { at_ms, nonce, cost, period_day, usage_day, key_id, plan_id, stage, method })
    }
}

/// A ticket's payload from its fields, borrowed: what an allowed decision
/// signs without making a [`DecisionTicket`] of owned strings first.
fn encode(
    at_ms: u64,
    nonce: &[u8; NONCE_LEN],
    cost: u64,
    period_day: Option<i64>,
    usage_day: i64,
    ids: [&str; 4],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(48 + ids.iter().map(|s| s.len()).sum::<usize>());
    b.push(VERSION);
    b.push(u8::from(period_day.is_some()));
    b.extend_from_slice(&at_ms.to_be_bytes());
    b.extend_from_slice(nonce);
    b.extend_from_slice(&(cost as u32).to_be_bytes());
    b.extend_from_slice(&(period_day.unwrap_or(0) as i32).to_be_bytes());
    b.extend_from_slice(&(usage_day as i32).to_be_bytes());
    for s in ids {
        let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(s.len() as u16).to_be_bytes());
        b.extend_from_slice(s);
    }
    b
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding (RFC 4648 §5): safe in headers, URLs, JSON.
fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn unbase64url(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // (the unused low bits of the last character must be zero: one id, one spelling)
    (acc == 0).then_some(out)
}

/// Refunds as a limiter does them: the signer and the window.
pub struct Refunds {
    /// Signs and opens decision ids.
    pub signer: Arc<DecisionSigner>,
    /// How long after a decision it can be refunded, ms.
    pub window_ms: u64,
}

/// What a refund gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refunded {
    /// The decision's key.
    pub key_id: String,
    /// Its plan.
    pub plan_id: String,
    /// The units given back to each limit.
    pub cost: u64,
    /// The quota left in the period after, when the plan has one.
    pub quota_remaining: Option<u64>,
}

/// Why a refund was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// Malformed or forged id (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// Refunded before (ALREADY_EXISTS).
    #[error("decision {0} was already refunded")]
    AlreadyRefunded(String),
    /// Past the window or the period (FAILED_PRECONDITION).
    #[error("{0}")]
    TooLate(String),
    /// Its key, plan or stage is gone (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// Not possible now (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RefundError> for tonic::Status {
    fn from(e: RefundError) -> Self {
        let m = e.to_string();
        match e {
            RefundError::Invalid(_) => tonic::Status::invalid_argument(m),
            RefundError::AlreadyRefunded(_) => tonic::Status::already_exists(m),
            RefundError::TooLate(_) => tonic::Status::failed_precondition(m),
            RefundError::NotFound(_) => tonic::Status::not_found(m),
            RefundError::Unavailable(_) => tonic::Status::unavailable(m),
            RefundError::Store(s) => s.into(),
        }
    }
}

impl<S: LimitStore> Limiter<S> {
    /// The same limiter, giving decision ids signed by `refunds.signer`.
    pub fn with_refunds(mut self, refunds: Refunds) -> Self {
        self.refunds = Some(Arc::new(refunds));
        self
    }

    /// The refund settings, if refunds are on.
    pub fn refunds(&self) -> Option<&Arc<Refunds>> {
        self.refunds.as_ref()
    }

    /// The id of an allowed decision that consumed a limit (`None` when
    /// refunds are off or the secret is not known yet). `quota`: the plan's
    /// quota, if it has one (its period, and the time zone its usage days
    /// are counted in).
    pub(super) fn decision_id(
        &self,
        key_id: &str,
        plan_id: &str,
        stage: &str,
        method: &str,
        cost: u64,
        quota: Option<Quota>,
    ) -> Option<String> {
        let refunds = self.refunds.as_ref()?;
        let now = crate::model::now_ms();
        let payload = encode(
            now,
            &rand::random(),
            cost,
            quota.map(|q| quota_period(&q, now).0),
            usage_day(quota.and_then(|q| q.time_zone), now),
            [key_id, plan_id, stage, method],
        );
        refunds.signer.sign_payload(payload)
    }

    /// Opens a decision id: its ticket, when it is well formed and signed
    /// by this deployment's secret.
    pub fn open_decision_id(&self, id: &str) -> Result<DecisionTicket, RefundError> {
        let refunds = self.refunds.as_ref().ok_or(RefundError::Unavailable("refunds are off on this server".into()))?;
        refunds.signer.open(id)
    }

    /// Gives back what the decision of `ticket` consumed, once: the limits
    /// are rebuilt from the catalog as it is now (a plan changed since is
    /// refunded as it is now), and the store gives back in one atomic step.
    pub async fn refund(&self, ticket: &DecisionTicket) -> Result<Refunded, RefundError> {
        let refunds = self.refunds.as_ref().ok_or(RefundError::Unavailable("refunds are off on this server".into()))?;
        if !self.catalog.is_loaded() {
            return Err(RefundError::Unavailable("the catalog is not loaded from Redis yet".into()));
        }
        let nonce = ticket.nonce_hex();
        let (limits, usage) = self.refund_limits(ticket)?;
        // The quota's period as the plan says now, at the decision's instant.
        let quota = limits.iter().find_map(|l| match l.rule {
            Rule::Quota { quota, .. } => Some(quota),
            Rule::Bucket(_) => None,
        });
        if let (Some(q), Some(_)) = (quota, ticket.period_day) {
            let (_, start_ms, _) = quota_period(&q, ticket.at_ms);
            if ticket.at_ms.saturating_sub(start_ms) < PERIOD_START_GUARD_MS {
                return Err(RefundError::TooLate(format!(
                    "decision {nonce} was made in the first second of its quota period, which the replicas' and the store's clocks may disagree on: it cannot be refunded"
                )));
            }
        }
        let refund = Refund {
            limits,
            cost: ticket.cost,
            usage: Some(usage),
            usage_day: ticket.usage_day,
            period_day: ticket.period_day,
            until_ms: ticket.at_ms.saturating_add(refunds.window_ms),
            marker: self.keys.refund_marker(&ticket.key_id, &nonce),
        };
        let outcome = self.store.refund(refund.clone()).await?;
        metrics::counter!("tollgate_refunds_total", "outcome" => outcome_name(&outcome)).increment(1);
        match outcome {
            RefundOutcome::Refunded { quota_remaining } => {
                if let Some(cache) = &self.deny {
                    cache.forget(&refund.limits);
                }
                Ok(Refunded {
                    key_id: ticket.key_id.clone(),
                    plan_id: ticket.plan_id.clone(),
                    cost: ticket.cost,
                    quota_remaining,
                })
            }
            RefundOutcome::AlreadyRefunded => Err(RefundError::AlreadyRefunded(nonce)),
            RefundOutcome::WindowPassed => Err(RefundError::TooLate(format!(
                "decision {nonce} is past its refund window ({} s after the decision, --refund-window)",
                refunds.window_ms / 1000
            ))),
            RefundOutcome::PeriodPassed => Err(RefundError::TooLate(format!(
                "decision {nonce} was charged in a quota period that has ended: only decisions of the current period can be refunded"
            ))),
        }
    }

    /// The limits the decision of `ticket` consumed, as the catalog says now
    /// (the same steps 6 a–e as `Limiter::decide`, for the key's plan), and
    /// where it counted usage.
    fn refund_limits(&self, t: &DecisionTicket) -> Result<(Vec<Limit>, crate::store::UsageKeys), RefundError> {
        let catalog = self.catalog.load();
        let gone = |what: String| RefundError::NotFound(format!("{what}: the decision cannot be refunded"));
        let stage = catalog.stage(&t.stage).ok_or_else(|| gone(format!("stage {} no longer exists", t.stage)))?;
        let method =
            canonical_method(&t.method).map_err(|_| gone(format!("method {:?} is not understood", t.method)))?;
        let sp = catalog.plan_in_stage(&t.plan_id, &t.stage).ok_or_else(|| {
            gone(format!("usage plan {} no longer exists or no longer has stage {}", t.plan_id, t.stage))
        })?;
        let (pattern, setting) = match stage.methods.lookup(&method) {
            Some((p, s)) => (p.as_str(), *s),
            None => ("*/*", Default::default()),
        };
        let plan = &sp.plan;
        let mut usage = self.keys.usage(&t.key_id, &plan.id);
        usage.zone = plan.quota.and_then(|q| q.time_zone);
        let mut limits = Vec::with_capacity(5);
        let mut add =
            |_: LimitKind, key: String, field: Option<String>, rule: Rule| limits.push(Limit { key, field, rule });
        if setting.api_key_required {
            if let Some((p, th)) = sp.method_throttles.lookup(&method) {
                let field = method_field(&stage.stage, p.as_str());
                add(LimitKind::PlanMethodThrottle, usage.state.clone(), Some(field), Rule::Bucket(*th));
            }
            if let Some(th) = plan.throttle {
                add(LimitKind::PlanThrottle, usage.state.clone(), Some(PLAN_BUCKET_FIELD.into()), Rule::Bucket(th));
            }
            if let Some(q) = plan.quota {
                let rule = Rule::Quota { quota: q, created_at_ms: plan.created_at_ms };
                add(LimitKind::PlanQuota, usage.state.clone(), Some(QUOTA_FIELD.into()), rule);
            }
        }
        if let Some(th) = setting.throttle {
            add(LimitKind::StageMethodThrottle, self.keys.stage_bucket(&stage.stage, pattern), None, Rule::Bucket(th));
        }
        if let Some(th) = self.account {
            add(LimitKind::AccountThrottle, self.keys.account_bucket(), None, Rule::Bucket(th));
        }
        Ok((limits, usage))
    }
}

fn outcome_name(o: &RefundOutcome) -> &'static str {
    match o {
        RefundOutcome::Refunded { .. } => "refunded",
        RefundOutcome::AlreadyRefunded => "already_refunded",
        RefundOutcome::WindowPassed => "window_passed",
        RefundOutcome::PeriodPassed => "period_passed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> DecisionTicket {
        DecisionTicket {
            at_ms: 1_800_000_000_123,
            nonce: [7; NONCE_LEN],
            cost: 3,
            period_day: Some(20_000),
            usage_day: 20_001,
            key_id: "k1".into(),
            plan_id: "gold".into(),
            stage: "petstore/prod".into(),
            method: "/pets/{petId}/GET".into(),
        }
    }

    #[test]
    fn an_id_opens_to_its_ticket() {
        let s = DecisionSigner::with_secret(b"secret");
        let id = s.sign(&ticket()).unwrap();
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
        assert_eq!(s.open(&id).unwrap(), ticket());
        let none = DecisionTicket { period_day: None, ..ticket() };
        assert_eq!(s.open(&s.sign(&none).unwrap()).unwrap(), none);
    }

    #[test]
    fn forged_altered_and_malformed_ids_are_refused() {
        let s = DecisionSigner::with_secret(b"secret");
        let id = s.sign(&ticket()).unwrap();
        let other = DecisionSigner::with_secret(b"other").sign(&ticket()).unwrap();
        assert!(matches!(s.open(&other), Err(RefundError::Invalid(_))));
        let mut bytes = unbase64url(&id).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            assert!(matches!(s.open(&base64url(&bytes)), Err(RefundError::Invalid(_))), "byte {i} flipped");
            bytes[i] ^= 1;
        }
        for bad in ["", "!!!!", "a", &id[..id.len() - 1], &"A".repeat(5000)] {
            assert!(matches!(s.open(bad), Err(RefundError::Invalid(_))), "{bad:?}");
        }
        assert!(matches!(DecisionSigner::new().open(&id), Err(RefundError::Unavailable(_))));
    }

    #[test]
    fn base64url_round_trips() {
        for n in 0..40u8 {
            let b: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase64url(&base64url(&b)).unwrap(), b);
        }
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
    }
}
