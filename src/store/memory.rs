//! The embedded store: limits kept in this process, with exactly the
//! semantics of the Redis script (`redis/scripts/decide.lua`), so that
//! `tollgate serve` works with nothing else installed.
//!
//! One mutex guards the whole state; a decision holds it for a few hundred
//! nanoseconds and never across an await. Expired entries are swept every
//! few thousand decisions, so memory stays bounded by the live limits.
//! Time comes from a [`Clock`], which tests can control.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::bucket::{self, BucketState, Take};
pub use super::clock::{Clock, ManualClock, SystemClock};
use super::keys::QUOTA_FIELD;
use super::{Check, DayUsage, LeaseOp, LimitStore, Refund, RefundOutcome, Rule, StoreError, UsageKeys, Verdict};
use crate::alerts::{AlertEvent, AlertSpec, Crossing, EventRing};
use crate::calendar::DAY_MS;
use crate::localtime::{quota_period, usage_day};
use crate::model::Quota;

#[derive(Debug, Clone, Copy)]
enum Value {
    /// A token bucket (`bucket.rs`).
    Bucket(BucketState),
    /// Quota used in the period starting on local date `start_day` (days
    /// since 1970-01-01), as `decide.lua`'s `STARTDAY`.
    Quota { start_day: i64, used: i64 },
    /// The quota alerts fired in the period starting at `start_ms`: bit
    /// `t - 1` for threshold `t` (`crate::alerts`; field `a`, as in Redis).
    Alerts { start_ms: u64, fired: u128 },
}

#[derive(Debug, Clone, Copy)]
struct Entry<V> {
    value: V,
    /// Expiry instant, µs since the epoch.
    expires_us: u64,
}

/// One day's usage: used, and quota used after the day's last change.
#[derive(Debug, Clone, Copy)]
struct Usage {
    n: i64,
    q: Option<i64>,
}

/// The stored limits, laid out as in Redis (`keys.rs`): per key, its
/// fields (a limit with a key of its own has the field `""`), so that a
/// decision looks its limits up without building a string; and per state
/// key, its usage per day (days since 1970-01-01).
#[derive(Default)]
struct State {
    map: HashMap<String, HashMap<String, Entry<Value>>>,
    usage: HashMap<String, HashMap<i64, Entry<Usage>>>,
    /// Refund markers (`keys::refund_marker`) → expiry instant, µs.
    refunded: HashMap<String, u64>,
    ops: u64,
}

impl State {
    fn get(&self, key: &str, field: Option<&str>, now_us: u64) -> Option<Value> {
        let e = self.map.get(key)?.get(field.unwrap_or(""))?;
        (e.expires_us > now_us).then_some(e.value)
    }

    fn put(&mut self, key: &str, field: Option<&str>, value: Value, expires_us: u64) {
        let fields = match self.map.get_mut(key) {
            Some(f) => f,
            None => self.map.entry(key.to_string()).or_default(),
        };
        let field = field.unwrap_or("");
        match fields.get_mut(field) {
            Some(e) => *e = Entry { value, expires_us },
            None => {
                fields.insert(field.to_string(), Entry { value, expires_us });
            }
        }
    }

    fn usage(&self, key: &str, day: i64, now_us: u64) -> Option<Usage> {
        let e = self.usage.get(key)?.get(&day)?;
        (e.expires_us > now_us).then_some(e.value)
    }

    fn put_usage(&mut self, key: &str, day: i64, value: Usage) {
        let days = match self.usage.get_mut(key) {
            Some(d) => d,
            None => self.usage.entry(key.to_string()).or_default(),
        };
        // kept 92 days: readable until the start of day + 93
        let expires_us = (day as u64 + USAGE_DAYS) * DAY_MS * 1000;
        days.insert(day, Entry { value, expires_us });
    }

    fn sweep(&mut self, now_us: u64) {
        self.map.retain(|_, f| {
            f.retain(|_, e| e.expires_us > now_us);
            !f.is_empty()
        });
        self.usage.retain(|_, d| {
            d.retain(|_, e| e.expires_us > now_us);
            !d.is_empty()
        });
        self.refunded.retain(|_, e| *e > now_us);
    }
}

/// Days a day's usage stays readable, from its start (92 kept).
const USAGE_DAYS: u64 = 93;

/// Limits kept in this process.
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Box<dyn Clock>,
    /// The quota alert events (`crate::alerts`): appended under the state's
    /// lock by the decision that crossed the threshold.
    pub events: Arc<EventRing>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

struct Write<'a> {
    limit: &'a super::Limit,
    value: Value,
    expires_us: u64,
}

impl MemoryStore {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// A store on the given clock.
    pub fn with_clock(clock: impl Clock) -> Self {
        Self { state: Mutex::new(State::default()), clock: Box::new(clock), events: Arc::default() }
    }

    /// The current time of this store's clock, µs since the epoch.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied decision
        // (writes are applied after all checks), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of live entries (tests).
    pub fn len(&self) -> usize {
        let now = self.now_us();
        let st = self.lock();
        let limits = st.map.values().flat_map(|f| f.values()).filter(|e| e.expires_us > now).count();
        limits + st.usage.values().flat_map(|d| d.values()).filter(|e| e.expires_us > now).count()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides one check at the clock's current time (the same steps as
    /// `decide.lua`).
    pub fn decide(&self, check: &Check) -> Verdict {
        let now_us = self.clock.now_us();
        let now_ms = now_us / 1000;
        let cost = check.cost;
        if let LeaseOp::Settle { .. } = check.lease {
            // (this store never leases: there is nothing to settle)
            return Verdict::UNLIMITED;
        }
        let mut st = self.lock();
        st.ops += 1;
        if st.ops.is_multiple_of(4096) {
            st.sweep(now_us);
        }

        let mut best: Option<usize> = None;
        let (mut best_limit, mut best_rem, mut best_reset) = (0u64, 0u64, 0u64);
        let mut writes = Vec::with_capacity(check.limits.len());
        let mut quota_used = None;
        // the quota's limit and period (quota alerts)
        let mut quota_at: Option<(&super::Limit, i64, u64, u64)> = None;
        for (i, limit) in check.limits.iter().enumerate() {
            match &limit.rule {
                Rule::Bucket(t) => {
                    let prev = match st.get(&limit.key, limit.field.as_deref(), now_us) {
                        Some(Value::Bucket(b)) => Some(b),
                        _ => None,
                    };
                    let burst = u64::from(t.burst_limit);
                    match bucket::take(prev, t.rate_milli(), burst, cost, now_us) {
                        Take::Deny { remaining, reset_ms, retry_after_ms } => {
                            return Verdict {
                                allowed: false,
                                index: Some(i),
                                limit: burst,
                                remaining,
                                reset_ms,
                                retry_after_ms,
                                grant: None,
                                soft: false,
                            };
                        }
                        Take::Allow { state, remaining, reset_ms, ttl_ms } => {
                            let expires_us = now_us.saturating_add(ttl_ms.saturating_mul(1000));
                            writes.push(Write { limit, value: Value::Bucket(state), expires_us });
                            if best.is_none() || remaining < best_rem {
                                (best, best_limit, best_rem, best_reset) = (Some(i), burst, remaining, reset_ms);
                            }
                        }
                    }
                }
                Rule::Quota { quota, created_at_ms } => {
                    let (start_day, start, end) = quota_period(quota, now_ms);
                    let first = (start..end).contains(created_at_ms);
                    let eff = if first { quota.limit - quota.offset } else { quota.limit } as i64;
                    let used = match st.get(&limit.key, limit.field.as_deref(), now_us) {
                        Some(Value::Quota { start_day: d, used }) if d == start_day => used,
                        _ => 0,
                    };
                    let reset = end - now_ms;
                    if used + cost as i64 > eff {
                        return Verdict {
                            allowed: false,
                            index: Some(i),
                            limit: eff.max(0) as u64,
                            remaining: (eff - used).max(0) as u64,
                            reset_ms: reset,
                            retry_after_ms: Some(reset),
                            grant: None,
                            soft: false,
                        };
                    }
                    let rem = (eff - used - cost as i64) as u64;
                    quota_used = Some(used + cost as i64);
                    quota_at = Some((limit, eff, start, end));
                    let value = Value::Quota { start_day, used: used + cost as i64 };
                    writes.push(Write { limit, value, expires_us: end * 1000 });
                    if best.is_none() || rem < best_rem {
                        (best, best_limit, best_rem, best_reset) = (Some(i), eff as u64, rem, reset);
                    }
                }
            }
        }

        for w in writes {
            st.put(&w.limit.key, w.limit.field.as_deref(), w.value, w.expires_us);
        }
        if let Some(u) = &check.usage {
            let today = usage_day(u.zone, now_ms);
            let Usage { n, q } = st.usage(&u.state, today, now_us).unwrap_or(Usage { n: 0, q: None });
            st.put_usage(&u.state, today, Usage { n: n + cost as i64, q: quota_used.or(q) });
            if let (Some(spec), Some((limit, eff, start, end)), Some(used)) = (&u.alerts, quota_at, quota_used) {
                let crossing = Crossing {
                    threshold: 0,
                    limit: eff.max(0) as u64,
                    used: used.max(0) as u64,
                    period_start_ms: start,
                    period_end_ms: end,
                };
                self.alerts_after(&mut st, &limit.key, spec, crossing, now_ms);
            }
        }
        Verdict {
            allowed: true,
            index: best,
            limit: best_limit,
            remaining: best_rem,
            reset_ms: best_reset,
            retry_after_ms: None,
            grant: None,
            soft: false,
        }
    }
}

impl MemoryStore {
    /// Gives back what one decision consumed, once, at the clock's current
    /// time (the same steps as `decide.lua`'s op "F"; docs/semantics.md,
    /// "Refunds").
    pub fn give_back(&self, r: &Refund) -> RefundOutcome {
        let now_us = self.clock.now_us();
        let now_ms = now_us / 1000;
        let today = usage_day(r.usage.as_ref().and_then(|u| u.zone), now_ms);
        if now_ms > r.until_ms {
            return RefundOutcome::WindowPassed;
        }
        let mut st = self.lock();
        let mut writes = Vec::with_capacity(r.limits.len());
        let mut quota = None;
        for limit in &r.limits {
            let prev = st.get(&limit.key, limit.field.as_deref(), now_us);
            match &limit.rule {
                Rule::Bucket(t) => {
                    let prev = match prev {
                        Some(Value::Bucket(b)) => Some(b),
                        _ => None,
                    };
                    let (state, ttl_ms) = bucket::give(prev, t.rate_milli(), r.cost, now_us);
                    let expires_us = now_us.saturating_add(ttl_ms.saturating_mul(1000));
                    writes.push(Write { limit, value: Value::Bucket(state), expires_us });
                }
                Rule::Quota { quota: q, created_at_ms } => {
                    let (start_day, start, end) = quota_period(q, now_ms);
                    if r.period_day != Some(start_day) {
                        return RefundOutcome::PeriodPassed;
                    }
                    let first = (start..end).contains(created_at_ms);
                    let eff = if first { q.limit - q.offset } else { q.limit } as i64;
                    let used = match prev {
                        Some(Value::Quota { start_day: d, used }) if d == start_day => used,
                        _ => 0,
                    } - r.cost as i64;
                    quota = Some((used, (eff - used).max(0) as u64));
                    writes.push(Write { limit, value: Value::Quota { start_day, used }, expires_us: end * 1000 });
                }
            }
        }
        if st.refunded.get(&r.marker).is_some_and(|&e| e > now_us) {
            return RefundOutcome::AlreadyRefunded;
        }
        st.refunded.insert(r.marker.clone(), (r.until_ms + 1) * 1000);
        for w in writes {
            st.put(&w.limit.key, w.limit.field.as_deref(), w.value, w.expires_us);
        }
        if let Some(u) = &r.usage {
            if let Some(Usage { n, q }) = st.usage(&u.state, r.usage_day, now_us) {
                let q = if r.usage_day == today { quota.map(|(used, _)| used).or(q) } else { q };
                st.put_usage(&u.state, r.usage_day, Usage { n: (n - r.cost as i64).max(0), q });
            }
            if let (Some((used, _)), true) = (quota, r.usage_day < today) {
                let n = st.usage(&u.state, today, now_us).map_or(0, |u| u.n);
                st.put_usage(&u.state, today, Usage { n, q: Some(used) });
            }
        }
        RefundOutcome::Refunded { quota_remaining: quota.map(|(_, rem)| rem) }
    }
}

impl MemoryStore {
    /// Quota alerts (`decide.lua`'s `alerts_after`): the thresholds of
    /// `spec` that `c.used` of `c.limit` reaches and that have not fired in
    /// the period of `c` get their bit set in the state's field `a` and an
    /// event each, under the state's lock: once per key, threshold and
    /// period.
    fn alerts_after(&self, st: &mut State, state: &str, spec: &AlertSpec, c: Crossing, now_ms: u64) {
        if c.limit == 0 {
            return;
        }
        let mut fired = match st.get(state, Some(ALERTS_FIELD), now_ms * 1000) {
            Some(Value::Alerts { start_ms, fired }) if start_ms == c.period_start_ms => fired,
            _ => 0,
        };
        let before = fired;
        for &t in &spec.thresholds {
            let bit = 1u128 << (t.clamp(1, 100) - 1);
            if fired & bit == 0 && crate::alerts::reaches(c.used, c.limit, t) {
                fired |= bit;
                self.events.push(AlertEvent::of(spec, &Crossing { threshold: t, ..c }, now_ms));
            }
        }
        if fired != before {
            let value = Value::Alerts { start_ms: c.period_start_ms, fired };
            st.put(state, Some(ALERTS_FIELD), value, c.period_end_ms * 1000);
        }
    }
}

/// The field of a state that keeps the quota alerts fired (as in Redis).
const ALERTS_FIELD: &str = "a";

impl LimitStore for MemoryStore {
    async fn check(&self, check: Check) -> Result<Verdict, StoreError> {
        Ok(self.decide(&check))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    async fn read_usage(&self, keys: Vec<UsageKeys>, days: Vec<i64>) -> Result<Vec<Option<DayUsage>>, StoreError> {
        let now = self.now_us();
        let st = self.lock();
        Ok(keys
            .iter()
            .flat_map(|k| days.iter().map(|&d| st.usage(&k.state, d, now).map(|Usage { n, q }| DayUsage { n, q })))
            .collect())
    }

    async fn set_remaining(
        &self,
        usage: &UsageKeys,
        quota: &Quota,
        created_at_ms: u64,
        remaining: u64,
    ) -> Result<(u64, u64), StoreError> {
        let now_us = self.now_us();
        let now_ms = now_us / 1000;
        let (start_day, start, end) = quota_period(quota, now_ms);
        let first = (start..end).contains(&created_at_ms);
        let eff = if first { quota.limit - quota.offset } else { quota.limit } as i64;
        let used = eff - remaining as i64;
        let mut st = self.lock();
        st.put(&usage.state, Some(QUOTA_FIELD), Value::Quota { start_day, used }, end * 1000);
        let today = usage_day(quota.time_zone, now_ms);
        let n = st.usage(&usage.state, today, now_us).map_or(0, |u| u.n);
        st.put_usage(&usage.state, today, Usage { n, q: Some(used) });
        Ok((remaining, end))
    }

    async fn refund(&self, refund: Refund) -> Result<RefundOutcome, StoreError> {
        Ok(self.give_back(&refund))
    }
}
