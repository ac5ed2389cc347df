//! Limit storage: the one atomic step of every decision.
//!
//! A [`Check`] lists the limits that apply to one request (built by
//! `crate::limiter`), the cost, and where to count usage. A store checks all of
//! them and consumes `cost` from each only if all pass, in one atomic step,
//! and answers with a [`Verdict`].
//!
//! Two backends implement [`LimitStore`] with the same behaviour, proven by
//! the conformance suite (`tests/conformance.rs`):
//! - [`memory::MemoryStore`]: the embedded default, one process.
//! - [`redis::RedisStore`]: shared by any number of replicas; one Lua script
//!   call per decision (or per batch of concurrent decisions).
//!
//! The algorithms: a token bucket is kept in exact integer arithmetic
//! ([`bucket`]: its level in billionths of a token and the instant of that
//! level), so that it admits exactly what a bucket of capacity `burst`
//! refilled at `rate` per second, full at first use, admits. A quota is a
//! counter per period (calendar periods in UTC, `crate::calendar`, or in a
//! time zone and from an anchor day, `crate::localtime`). Where
//! each is kept: [`keys`].

pub mod bucket;
pub mod clock;
pub mod keys;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Quota, Throttle};

/// What one limit is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// A token bucket.
    Bucket(Throttle),
    /// A quota per period; `created_at_ms` is the plan's creation time (the
    /// offset applies in the period containing it).
    Quota {
        /// The quota.
        quota: Quota,
        /// The plan's creation time, ms since the epoch.
        created_at_ms: u64,
    },
}

/// One limit of a check: where it is kept and its rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The storage key (`keys.rs`): a key's state hash, or a stage or
    /// account bucket's own key.
    pub key: String,
    /// The field of the state hash (`keys::PLAN_BUCKET_FIELD`, ...); `None`
    /// for a limit with a key of its own.
    pub field: Option<String>,
    /// The rule.
    pub rule: Rule,
}

/// Where one key's usage in one plan is counted (`Keys::usage`): its state
/// hash, today's in one field and each earlier day's in a field of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageKeys {
    /// The state hash (`Keys::state`).
    pub state: String,
    /// The time zone of the plan's quota: its usage is counted per local
    /// date there (docs/semantics.md, "Local-time quotas"); `None`: per UTC
    /// date.
    pub zone: Option<crate::localtime::Zone>,
    /// The plan's quota alerts, when it has any (`crate::alerts`): passed
    /// to the store only then, so a plan without alerts costs nothing more.
    pub alerts: Option<Arc<crate::alerts::AlertSpec>>,
}

/// Everything one decision needs from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The limits, in the order in which they are checked; the first failing
    /// one is the reason of a denial.
    pub limits: Vec<Limit>,
    /// Units to take from each limit.
    pub cost: u64,
    /// Where to count the request's usage for today, when it has a key and
    /// plan.
    pub usage: Option<UsageKeys>,
    /// Leased admission (`crate::limiter::lease`): ask for tokens besides,
    /// or settle a lease. [`LeaseOp::None`] for an ordinary check.
    pub lease: LeaseOp,
}

/// What a check does about leases (docs/semantics.md, "Leased admission").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaseOp {
    /// An ordinary check.
    #[default]
    None,
    /// Check and consume as usual and, when allowed, lease up to this many
    /// more tokens of every limit. A store that does not lease (memory)
    /// grants none.
    Ask(u64),
    /// Settle a lease: `Check::cost` is the number of its tokens used; the
    /// limits are the lease's. Never denied.
    Settle {
        /// Tokens the lease held.
        leased: u64,
        /// Its slot ([`Grant::slot`]).
        slot: u64,
    },
}

/// Tokens leased to this replica by an allowed [`LeaseOp::Ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens of every limit of the check, besides the request's cost.
    pub tokens: u64,
    /// The slot that holds them in the store (given back when settling).
    pub slot: u64,
    /// How long the replica may admit from them, ms from when the check
    /// was handed to the store.
    pub valid_ms: u64,
}

/// A store's answer to a [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether every limit passed (and was consumed).
    pub allowed: bool,
    /// The limit the numbers describe (index into `Check::limits`): the
    /// failing one on a denial, the one with the least remaining on an allow;
    /// `None` when the check had no limits.
    pub index: Option<usize>,
    /// Its capacity (burst, or the quota limit in force this period).
    pub limit: u64,
    /// Units left after this decision.
    pub remaining: u64,
    /// Milliseconds until it is whole again.
    pub reset_ms: u64,
    /// On a denial: ms until the same request could pass; `None` when it
    /// never can (cost above burst), and on an allow.
    pub retry_after_ms: Option<u64>,
    /// On an allow that asked for a lease: the tokens leased, if any.
    pub grant: Option<Grant>,
    /// On a denial: the limit denied only because of tokens leased out to
    /// replicas, which a settle may give back at any moment (the deny cache
    /// does not keep such a denial). On a settle: the lease had lapsed (its
    /// slot ended before the settle came; it was charged in full).
    pub soft: bool,
}

impl Verdict {
    /// The verdict of a check with no limits: allowed.
    pub const UNLIMITED: Verdict = Verdict {
        allowed: true,
        index: None,
        limit: 0,
        remaining: 0,
        reset_ms: 0,
        retry_after_ms: None,
        grant: None,
        soft: false,
    };
}

/// Giving back what one allowed decision consumed (docs/semantics.md,
/// "Refunds"): the limits are rebuilt from the catalog by the limiter
/// (`crate::limiter::refund`), so they name the same storage as the
/// decision's [`Check`]. One atomic step: the refund's marker is created
/// (it exists only once) and `cost` is given back to every limit, or
/// nothing happens.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    /// The limits the decision consumed.
    pub limits: Vec<Limit>,
    /// Units to give back to each.
    pub cost: u64,
    /// Where the decision counted its usage, if it did.
    pub usage: Option<UsageKeys>,
    /// The day (since 1970-01-01) whose usage counted the decision.
    pub usage_day: i64,
    /// The start day of the quota period the decision was charged in, when
    /// a limit is a quota: a refund in another period is refused.
    pub period_day: Option<i64>,
    /// The refund window's end, ms since the epoch (by the store's clock).
    pub until_ms: u64,
    /// The key that marks the decision refunded (`Keys::refund_marker`), in
    /// the slot of the usage's state hash; kept until `until_ms`.
    pub marker: String,
}

/// What a [`Refund`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Given back; with a quota, the quota left in the period after.
    Refunded {
        /// The quota left, when a limit is a quota.
        quota_remaining: Option<u64>,
    },
    /// The decision was refunded before: nothing given back.
    AlreadyRefunded,
    /// The refund window has passed: nothing given back.
    WindowPassed,
    /// The quota period the decision was charged in has ended: nothing
    /// given back.
    PeriodPassed,
}

/// Why a store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; retrying later
    /// may work. Maps to gRPC UNAVAILABLE.
    #[error("limit store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something unexpected (a bug, or a key of the
    /// wrong type). Maps to gRPC INTERNAL.
    #[error("limit store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The storage of limits: check-and-consume, atomically.
pub trait LimitStore: Send + Sync + 'static {
    /// Checks every limit of `check` and consumes `check.cost` from each only
    /// if all pass, in one atomic step.
    fn check(&self, check: Check) -> impl Future<Output = Result<Verdict, StoreError>> + Send;

    /// Whether the store can currently answer (reported by gRPC health).
    fn is_ready(&self) -> bool;

    /// A short name for metrics and logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Reads the daily usage records of `keys` on `days` (days since
    /// 1970-01-01): for each key, one entry per day, in order; `None` for a
    /// day with no record, or one older than the 92 days kept.
    fn read_usage(
        &self,
        keys: Vec<UsageKeys>,
        days: Vec<i64>,
    ) -> impl Future<Output = Result<Vec<Option<DayUsage>>, StoreError>> + Send;

    /// Sets the quota left in the current period (by the store's clock) to
    /// `remaining`, and records it in today's usage. Returns the remaining
    /// quota and the period's end (ms since the epoch).
    fn set_remaining(
        &self,
        usage: &UsageKeys,
        quota: &Quota,
        created_at_ms: u64,
        remaining: u64,
    ) -> impl Future<Output = Result<(u64, u64), StoreError>> + Send;

    /// Gives back what one decision consumed, once (docs/semantics.md,
    /// "Refunds"): in one atomic step, unless its marker exists, the window
    /// passed or the quota period is another.
    fn refund(&self, refund: Refund) -> impl Future<Output = Result<RefundOutcome, StoreError>> + Send;
}

/// One day's usage record of one key in one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayUsage {
    /// Units used that day.
    pub n: i64,
    /// Quota used in the period after the day's last change, when the plan
    /// had a quota.
    pub q: Option<i64>,
}

/// The store chosen at start: memory or Redis.
#[derive(Clone)]
pub enum Store {
    /// Embedded, one process.
    Memory(Arc<memory::MemoryStore>),
    /// Shared, in Redis.
    Redis(Arc<redis::RedisStore>),
}

impl LimitStore for Store {
    async fn check(&self, check: Check) -> Result<Verdict, StoreError> {
        match self {
            Store::Memory(m) => m.check(check).await,
            Store::Redis(r) => r.check(check).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Store::Memory(m) => m.is_ready(),
            Store::Redis(r) => r.is_ready(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    async fn read_usage(&self, keys: Vec<UsageKeys>, days: Vec<i64>) -> Result<Vec<Option<DayUsage>>, StoreError> {
        match self {
            Store::Memory(m) => m.read_usage(keys, days).await,
            Store::Redis(r) => r.read_usage(keys, days).await,
        }
    }

    async fn set_remaining(
        &self,
        usage: &UsageKeys,
        quota: &Quota,
        created_at_ms: u64,
        remaining: u64,
    ) -> Result<(u64, u64), StoreError> {
        match self {
            Store::Memory(m) => m.set_remaining(usage, quota, created_at_ms, remaining).await,
            Store::Redis(r) => r.set_remaining(usage, quota, created_at_ms, remaining).await,
        }
    }

    async fn refund(&self, refund: Refund) -> Result<RefundOutcome, StoreError> {
        match self {
            Store::Memory(m) => m.refund(refund).await,
            Store::Redis(r) => r.refund(refund).await,
        }
    }
}

impl Store {
    /// Up to `limit` quota alert events after `after` (an id from a
    /// previous page), or else from `since_ms`, oldest first; and the id to
    /// continue after, when there may be more.
    pub async fn events(
        &self,
        since_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<crate::alerts::AlertEvent>, Option<String>), StoreError> {
        let events = match self {
            Store::Memory(m) => m.events.page(since_ms, after, limit),
            Store::Redis(r) => r.events(since_ms, after, limit).await?,
        };
        let next = (events.len() == limit).then(|| events.last().map(|e| e.id.clone())).flatten();
        Ok((events, next))
    }
}

/// The largest accepted cost of one request.
pub const MAX_COST: u64 = 1_000_000;

/// The store deadline used when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
