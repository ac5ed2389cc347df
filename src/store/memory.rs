//! The embedded store: limits kept in this process, with exactly the
//! semantics of the Redis script (`redis/scripts/decide.lua`), so that
//! `tollgate serve` works with nothing else installed.
//!
//! One mutex guards the whole state; a decision holds it for a few hundred
//! nanoseconds and never across an await. Expired entries are swept every
//! few thousand decisions, so memory stays bounded by the live limits.
//! Time comes from a [`Clock`], which tests can control.

use std::collections::HashMap;
use std::sync::Mutex;

use super::bucket::{self, BucketState, Take};
pub use super::clock::{Clock, ManualClock, SystemClock};
use super::{keys::dated, Check, DayUsage, LimitStore, Rule, StoreError, Verdict};
use crate::calendar::{period_bounds_ms, Date, DAY_MS};
use crate::model::Quota;

#[derive(Debug, Clone, Copy)]
enum Value {
    /// A token bucket (`bucket.rs`).
    Bucket(BucketState),
    /// A counter (quota used).
    Count(i64),
    /// Daily usage: used, and quota used after the day's last call.
    Usage { n: i64, q: Option<i64> },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    value: Value,
    /// Expiry instant, µs since the epoch.
    expires_us: u64,
}

#[derive(Default)]
struct State {
    map: HashMap<String, Entry>,
    ops: u64,
}

impl State {
    fn get(&self, key: &str, now_us: u64) -> Option<Value> {
        self.map.get(key).filter(|e| e.expires_us > now_us).map(|e| e.value)
    }

    fn sweep(&mut self, now_us: u64) {
        self.map.retain(|_, e| e.expires_us > now_us);
    }
}

/// Limits kept in this process.
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Box<dyn Clock>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

enum Write {
    Bucket { key: String, state: BucketState, expires_us: u64 },
    Count { key: String, expires_us: u64 },
}

impl MemoryStore {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// A store on the given clock.
    pub fn with_clock(clock: impl Clock) -> Self {
        Self { state: Mutex::new(State::default()), clock: Box::new(clock) }
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
        self.lock().map.values().filter(|e| e.expires_us > now).count()
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
        let today = Date::of_ms(now_ms);
        let cost = check.cost;
        let mut st = self.lock();
        st.ops += 1;
        if st.ops.is_multiple_of(4096) {
            st.sweep(now_us);
        }

        let mut best: Option<usize> = None;
        let (mut best_limit, mut best_rem, mut best_reset) = (0u64, 0u64, 0u64);
        let mut writes = Vec::with_capacity(check.limits.len());
        let mut quota_used = None;
        for (i, limit) in check.limits.iter().enumerate() {
            match &limit.rule {
                Rule::Bucket(t) => {
                    let prev = match st.get(&limit.key, now_us) {
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
                            };
                        }
                        Take::Allow { state, remaining, reset_ms, ttl_ms } => {
                            let expires_us = now_us.saturating_add(ttl_ms.saturating_mul(1000));
                            writes.push(Write::Bucket { key: limit.key.clone(), state, expires_us });
                            if best.is_none() || remaining < best_rem {
                                (best, best_limit, best_rem, best_reset) = (Some(i), burst, remaining, reset_ms);
                            }
                        }
                    }
                }
                Rule::Quota { quota, created_at_ms } => {
                    let (start, end) = period_bounds_ms(quota.period, now_ms);
                    let first = (start..end).contains(created_at_ms);
                    let eff = if first { quota.limit - quota.offset } else { quota.limit } as i64;
                    let key = dated(&limit.key, Date::of_ms(start));
                    let used = match st.get(&key, now_us) {
                        Some(Value::Count(c)) => c,
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
                        };
                    }
                    let rem = (eff - used - cost as i64) as u64;
                    quota_used = Some(used + cost as i64);
                    writes.push(Write::Count { key, expires_us: end * 1000 });
                    if best.is_none() || rem < best_rem {
                        (best, best_limit, best_rem, best_reset) = (Some(i), eff as u64, rem, reset);
                    }
                }
            }
        }

        for w in writes {
            match w {
                Write::Bucket { key, state, expires_us } => {
                    st.map.insert(key, Entry { value: Value::Bucket(state), expires_us });
                }
                Write::Count { key, expires_us } => {
                    let c = match st.get(&key, now_us) {
                        Some(Value::Count(c)) => c,
                        _ => 0,
                    };
                    st.map.insert(key, Entry { value: Value::Count(c + cost as i64), expires_us });
                }
            }
        }
        if let Some(base) = &check.usage_key {
            let key = dated(base, today);
            let (n, q) = match st.get(&key, now_us) {
                Some(Value::Usage { n, q }) => (n, q),
                _ => (0, None),
            };
            let expires_us = ((now_ms / DAY_MS + 1) * DAY_MS + 92 * DAY_MS) * 1000;
            st.map.insert(key, Entry { value: Value::Usage { n: n + cost as i64, q: quota_used.or(q) }, expires_us });
        }
        Verdict {
            allowed: true,
            index: best,
            limit: best_limit,
            remaining: best_rem,
            reset_ms: best_reset,
            retry_after_ms: None,
        }
    }
}

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

    async fn read_usage(&self, keys: Vec<String>) -> Result<Vec<Option<DayUsage>>, StoreError> {
        let now = self.now_us();
        let st = self.lock();
        Ok(keys
            .iter()
            .map(|k| match st.get(k, now) {
                Some(Value::Usage { n, q }) => Some(DayUsage { n, q }),
                _ => None,
            })
            .collect())
    }

    async fn set_remaining(
        &self,
        quota_base: &str,
        usage_base: &str,
        quota: &Quota,
        created_at_ms: u64,
        remaining: u64,
    ) -> Result<(u64, u64), StoreError> {
        let now_us = self.now_us();
        let now_ms = now_us / 1000;
        let (start, end) = period_bounds_ms(quota.period, now_ms);
        let first = (start..end).contains(&created_at_ms);
        let eff = if first { quota.limit - quota.offset } else { quota.limit } as i64;
        let used = eff - remaining as i64;
        let mut st = self.lock();
        st.map
            .insert(dated(quota_base, Date::of_ms(start)), Entry { value: Value::Count(used), expires_us: end * 1000 });
        let ukey = dated(usage_base, Date::of_ms(now_ms));
        let n = match st.get(&ukey, now_us) {
            Some(Value::Usage { n, .. }) => n,
            _ => 0,
        };
        let expires_us = ((now_ms / DAY_MS + 1) * DAY_MS + 92 * DAY_MS) * 1000;
        st.map.insert(ukey, Entry { value: Value::Usage { n, q: Some(used) }, expires_us });
        Ok((remaining, end))
    }
}
