//! The local deny cache (issue 11; docs/semantics.md, "The local deny
//! cache"): a request that Redis denied is denied again locally, with no
//! Redis call, for as long as nothing can make Redis allow it — and not a
//! microsecond longer. It never allows anything: only Redis allows.
//!
//! What an entry says, for one limit (named by [`limit_id`]):
//!
//! - **A bucket** denied a request of cost `c` with `retry_after_ms = r`:
//!   a bucket only refills with time, so until `r` has passed every request
//!   of cost `>= c` that includes this limit is denied again. No entry when
//!   `retry_after_ms` is `None` (cost above the burst: it never passes).
//! - **A quota** denied a request with `remaining = R` (`R < cost`): within
//!   a period the quota left only falls (only UpdateUsage raises it, and
//!   that invalidates the cache, below), so until the period ends
//!   (`reset_ms`) every request of cost `> R` on this limit is denied again.
//!
//! **When an entry ends (decision).** The wait is counted on this process's
//! monotonic clock from the instant the request was *handed to the store*
//! (`sent_us`), which is before Redis decided; and it is cut by one
//! millisecond, because Redis rounds `retry_after_ms` (and a quota's
//! `reset_ms`) *up* to a whole millisecond: the true wait `x` lies in
//! `(r - 1 ms, r]`. So an entry ends at `sent + r - 1 ms < decision + x`:
//! every request the cache denies, Redis would have denied at that instant.
//! (Counting from the instant the answer was *received* would overshoot by
//! the round trip plus the rounding: the cache would then deny requests Redis
//! allows.) The price is at most a millisecond and a round trip per entry
//! during which requests go to Redis and are denied there.
//!
//! **Invalidation (decision).** Every entry carries the catalog *generation*
//! (`CatalogHandle::generation`) read before the request's limits were
//! resolved; an entry of another generation is dead. The generation moves on
//! every catalog change this replica applies (its own, or one read from the
//! change log) and on every UpdateUsage (which appends a record to the change
//! log, so every replica moves on; `CatalogService::usage_changed`). The
//! whole cache is therefore cleared by any of them: simple, and both are
//! rare next to decisions.
//!
//! **The answer.** A hit answers as the cached limit would: a bucket's or the
//! quota's numbers, with `reset_ms` and `retry_after_ms` recomputed for the
//! time left (and the retry-after for the extra tokens of a larger cost).
//! **(decision)** The request is denied by the cached limit; whether a limit
//! earlier in the order is also exhausted is not looked at (Redis would name
//! that one).
//!
//! **Memory and contention.** At most `capacity` entries (default
//! [`DEFAULT_CAPACITY`]) in [`SHARDS`] shards, each a small `HashMap` behind
//! its own mutex, held for a hash lookup: no lock is shared by all requests.
//! A full shard first drops its dead entries, then the one that ends first.
//! An empty cache costs one atomic load per decision.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::bucket::NANO;
use crate::store::clock::{Clock, Monotonic};
use crate::store::{Limit, Rule, Verdict};

/// How many entries a cache holds by default: about 100 bytes each
/// (the limit's key, the numbers, the map's slack), so about 10 MB at most.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How many shards (each with its own lock) the entries are spread over.
pub const SHARDS: usize = 64;

/// The name of a limit in the cache: the kind of its rule, its storage key
/// and its field there (a key's limits in a plan share one hash). The ONE
/// place that says which limits are "the same limit"; two limits with equal
/// ids share one state in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitId<'a> {
    /// 0: a bucket; 1: a quota.
    pub kind: u8,
    /// `Limit::key`.
    pub key: &'a str,
    /// `Limit::field` (`""`: none).
    pub field: &'a str,
}

/// The id of `limit` (see [`LimitId`]).
pub fn limit_id(limit: &Limit) -> LimitId<'_> {
    let kind = match limit.rule {
        Rule::Bucket(_) => 0,
        Rule::Quota { .. } => 1,
    };
    LimitId { kind, key: &limit.key, field: limit.field.as_deref().unwrap_or("") }
}

/// What an entry remembers of the denial.
#[derive(Debug, Clone, Copy)]
enum Denial {
    /// A bucket: `burst` and `rate_milli` of its rule, `cost` denied.
    Bucket { burst: u64, rate_milli: u64, cost: u64 },
    /// A quota.
    Quota,
}

#[derive(Debug)]
struct Entry {
    kind: u8,
    key: Box<str>,
    field: Box<str>,
    generation: u64,
    /// When the denied request was handed to the store (cache clock, µs).
    sent_us: u64,
    /// The entry holds while the clock is below this (µs).
    until_us: u64,
    /// Requests of at least this cost are denied.
    min_cost: u64,
    /// The store's numbers for the denial.
    verdict: Verdict,
    denial: Denial,
}

impl Entry {
    fn is(&self, id: &LimitId<'_>) -> bool {
        self.kind == id.kind && &*self.key == id.key && &*self.field == id.field
    }

    fn live(&self, generation: u64, now_us: u64) -> bool {
        self.generation == generation && now_us < self.until_us
    }

    /// The answer to a request of `cost` at `now_us`, as limit `index` of
    /// its check.
    fn answer(&self, index: usize, cost: u64, now_us: u64) -> Verdict {
        let gone = now_us.saturating_sub(self.sent_us);
        let left = |ms: u64| ms.saturating_mul(1000).saturating_sub(gone).div_ceil(1000);
        let v = self.verdict;
        let (remaining, retry_after_ms) = match self.denial {
            Denial::Bucket { burst, rate_milli, cost: denied } => {
                let reset_left_us = v.reset_ms.saturating_mul(1000).saturating_sub(gone);
                // At most this much is missing from a full bucket now
                // (`reset_ms` was rounded up); never report as many tokens as
                // the denied cost needs.
                let missing = u128::from(reset_left_us) * u128::from(rate_milli);
                let tokens = u128::from(burst * NANO).saturating_sub(missing) / u128::from(NANO);
                let remaining = (tokens as u64).max(v.remaining).min(denied.saturating_sub(1));
                let retry = (cost <= burst && rate_milli > 0).then(|| {
                    let base = v.retry_after_ms.unwrap_or(0).saturating_mul(1000).saturating_sub(gone);
                    let extra = (cost - denied.min(cost)).saturating_mul(NANO).div_ceil(rate_milli);
                    (base + extra).div_ceil(1000).max(1)
                });
                (remaining, retry)
            }
            Denial::Quota => (v.remaining, Some(left(v.reset_ms).max(1))),
        };
        Verdict {
            allowed: false,
            index: Some(index),
            limit: v.limit,
            remaining,
            reset_ms: left(v.reset_ms),
            retry_after_ms,
            grant: None,
            soft: false,
        }
    }
}

/// The cache (see the module's documentation).
pub struct DenyCache {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    hasher: RandomState,
    len: AtomicUsize,
    per_shard: usize,
    clock: Arc<dyn Clock>,
    shared_throttles: bool,
}

impl std::fmt::Debug for DenyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyCache").field("len", &self.len()).field("capacity", &self.capacity()).finish()
    }
}

impl DenyCache {
    /// A cache of at most `capacity` entries, on the monotonic clock.
    pub fn new(capacity: usize) -> Self {
        Self::on_clock(capacity, Arc::new(Monotonic::start()))
    }

    /// A cache on a test clock (µs): the model-based suite drives the Redis
    /// store and the cache on one clock. Only in test builds.
    #[cfg(any(test, feature = "test-clock"))]
    pub fn with_clock(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        Self::on_clock(capacity, clock)
    }

    fn on_clock(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            per_shard,
            clock,
            shared_throttles: true,
        }
    }

    /// Whether denials by the throttles shared by many keys (a stage's
    /// method throttle, the account throttle) are cached: true by default;
    /// false on a Redis Cluster, where such a bucket can be given tokens
    /// back (`store::redis::cluster`, a refund) and so refill sooner than its
    /// retry-after said.
    pub fn shared_throttles(mut self, yes: bool) -> Self {
        self.shared_throttles = yes;
        self
    }

    /// See [`DenyCache::shared_throttles`].
    pub fn caches_shared_throttles(&self) -> bool {
        self.shared_throttles
    }

    /// Now, on the cache's clock (µs): read it just before handing a check
    /// to the store, and give it to [`DenyCache::learn`].
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Entries held (dead ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries it holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn slot(&self, id: &LimitId<'_>) -> (u64, MutexGuard<'_, HashMap<u64, Entry>>) {
        let h = self.hasher.hash_one(id);
        // The low bits pick the shard; the map hashes the whole value again.
        let shard = &self.shards[(h as usize) % SHARDS];
        (h, shard.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The answer for a request of `cost` checking `limits`, if a live entry
    /// of one of them (the first in their order) denies it.
    pub fn lookup(&self, generation: u64, limits: &[Limit], cost: u64) -> Option<Verdict> {
        if self.is_empty() {
            return None;
        }
        let now = self.clock.now_us();
        for (i, l) in limits.iter().enumerate() {
            let id = limit_id(l);
            let (h, mut shard) = self.slot(&id);
            let Some(e) = shard.get(&h).filter(|e| e.is(&id)) else { continue };
            if e.live(generation, now) {
                if cost >= e.min_cost {
                    return Some(e.answer(i, cost, now));
                }
            } else if e.generation < generation || now >= e.until_us {
                shard.remove(&h);
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        None
    }

    /// Learns from the store's denial `verdict` of a request of `cost`
    /// handed to it at `sent_us` (see [`DenyCache::now_us`]); `limit` is the
    /// limit the verdict names (the failing one), resolved from the catalog
    /// of `generation`.
    pub fn learn(&self, generation: u64, sent_us: u64, limit: &Limit, cost: u64, verdict: &Verdict) {
        if verdict.allowed {
            return;
        }
        let (min_cost, wait_ms, denial) = match limit.rule {
            Rule::Bucket(t) => {
                let Some(r) = verdict.retry_after_ms else { return };
                (cost, r, Denial::Bucket { burst: u64::from(t.burst_limit), rate_milli: t.rate_milli(), cost })
            }
            Rule::Quota { .. } => (verdict.remaining.saturating_add(1), verdict.reset_ms, Denial::Quota),
        };
        // The true wait is above `wait_ms - 1` ms (rounded up by the store).
        if wait_ms < 2 || min_cost > cost {
            return;
        }
        let until_us = sent_us.saturating_add((wait_ms - 1).saturating_mul(1000));
        let now = self.clock.now_us();
        if until_us <= now {
            return;
        }
        let id = limit_id(limit);
        let (h, mut shard) = self.slot(&id);
        if let Some(old) = shard.get(&h).filter(|e| e.is(&id)) {
            // Keep an entry that says more (lower cost, longer), or that is
            // of a newer catalog than this denial.
            let dominates = old.live(generation, now) && old.min_cost <= min_cost && old.until_us >= until_us;
            if dominates || old.generation > generation {
                return;
            }
        }
        let entry = Entry {
            kind: id.kind,
            key: id.key.into(),
            field: id.field.into(),
            generation,
            sent_us,
            until_us,
            min_cost,
            verdict: *verdict,
            denial,
        };
        if !shard.contains_key(&h) && shard.len() >= self.per_shard {
            self.evict(&mut shard, generation, now);
        }
        if shard.insert(h, entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes room in a full shard: drops dead entries, else the one that
    /// ends first.
    fn evict(&self, shard: &mut HashMap<u64, Entry>, generation: u64, now: u64) {
        let before = shard.len();
        shard.retain(|_, e| e.live(generation, now));
        if shard.len() == before {
            if let Some(h) = shard.iter().min_by_key(|(_, e)| e.until_us).map(|(h, _)| *h) {
                shard.remove(&h);
            }
        }
        self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
    }

    /// Drops the entries of `limits` (a refund gave them tokens back:
    /// docs/semantics.md, "Refunds"). A denial learned by a request that was
    /// in flight during the refund may still come in after; it ends on its
    /// own, as other replicas' entries do.
    pub fn forget(&self, limits: &[Limit]) {
        for l in limits {
            let id = limit_id(l);
            let (h, mut shard) = self.slot(&id);
            if shard.get(&h).is_some_and(|e| e.is(&id)) {
                shard.remove(&h);
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            self.len.fetch_sub(s.len(), Ordering::Relaxed);
            s.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Period, Quota, Throttle};
    use crate::store::clock::ManualClock;

    fn bucket(key: &str, rate: f64, burst: u32) -> Limit {
        Limit { key: key.into(), field: None, rule: Rule::Bucket(Throttle { rate_limit: rate, burst_limit: burst }) }
    }

    fn quota(key: &str) -> Limit {
        let quota = Quota { limit: 10, period: Period::Day, offset: 0, time_zone: None, anchor_day: 0 };
        Limit { key: key.into(), field: Some("q".into()), rule: Rule::Quota { quota, created_at_ms: 0 } }
    }

    fn denied(limit: u64, remaining: u64, reset_ms: u64, retry: Option<u64>) -> Verdict {
        Verdict {
            allowed: false,
            index: Some(0),
            limit,
            remaining,
            reset_ms,
            retry_after_ms: retry,
            grant: None,
            soft: false,
        }
    }

    fn cache() -> (Arc<ManualClock>, DenyCache) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        (clock.clone(), DenyCache::with_clock(100, clock))
    }

    #[test]
    fn a_bucket_denial_holds_for_retry_after_less_a_millisecond_from_the_send() {
        let (clock, c) = cache();
        let b = bucket("b", 5.0, 5);
        let sent = clock.now_us();
        clock.advance(std::time::Duration::from_millis(3)); // the round trip
        c.learn(7, sent, &b, 2, &denied(5, 1, 800, Some(200)));
        assert_eq!(c.len(), 1);
        let limits = [bucket("other", 1.0, 1), b.clone()];
        // Cost 2 and more: denied, as the second limit of this check.
        let v = c.lookup(7, &limits, 2).expect("cached");
        assert_eq!((v.allowed, v.index, v.limit, v.remaining), (false, Some(1), 5, 1));
        assert_eq!((v.reset_ms, v.retry_after_ms), (797, Some(197)));
        // A larger cost waits longer: one more token at 5/s is 200 ms.
        assert_eq!(c.lookup(7, &limits, 3).unwrap().retry_after_ms, Some(397));
        // Above the burst: never.
        assert_eq!(c.lookup(7, &limits, 6).unwrap().retry_after_ms, None);
        // A smaller cost goes to the store.
        assert!(c.lookup(7, &limits, 1).is_none());
        // Another generation: dead, and dropped.
        assert!(c.lookup(8, &limits, 2).is_none());
        assert!(c.is_empty());
        // Ends 1 ms before sent + retry.
        c.learn(8, sent, &b, 2, &denied(5, 1, 800, Some(200)));
        clock.set_us(sent + 198_999);
        assert!(c.lookup(8, &limits, 2).is_some());
        clock.set_us(sent + 199_000);
        assert!(c.lookup(8, &limits, 2).is_none());
    }

    #[test]
    fn nothing_is_cached_that_could_not_hold() {
        let (clock, c) = cache();
        let now = clock.now_us();
        // Cost above the burst (no retry-after), a 1 ms wait, an allow.
        c.learn(1, now, &bucket("b", 5.0, 5), 6, &denied(5, 5, 0, None));
        c.learn(1, now, &bucket("b", 5.0, 5), 1, &denied(5, 0, 200, Some(1)));
        c.learn(1, now, &bucket("b", 5.0, 5), 1, &Verdict { allowed: true, ..denied(5, 0, 200, None) });
        // Already over by the time the answer came.
        c.learn(1, now - 500_000, &bucket("b", 5.0, 5), 1, &denied(5, 0, 200, Some(200)));
        assert!(c.is_empty());
    }

    #[test]
    fn a_quota_denial_denies_costs_above_the_remaining_until_the_period_ends() {
        let (clock, c) = cache();
        let q = quota("q");
        let sent = clock.now_us();
        c.learn(1, sent, &q, 3, &denied(10, 2, 60_000, Some(60_000)));
        assert!(c.lookup(1, std::slice::from_ref(&q), 2).is_none(), "2 may still pass");
        let v = c.lookup(1, std::slice::from_ref(&q), 3).unwrap();
        assert_eq!((v.remaining, v.reset_ms, v.retry_after_ms), (2, 60_000, Some(60_000)));
        clock.advance(std::time::Duration::from_millis(59_998));
        assert_eq!(c.lookup(1, std::slice::from_ref(&q), 9).unwrap().retry_after_ms, Some(2));
        clock.advance(std::time::Duration::from_millis(1));
        assert!(c.lookup(1, std::slice::from_ref(&q), 9).is_none());
    }

    #[test]
    fn a_bucket_and_a_quota_of_one_key_are_two_limits() {
        let (clock, c) = cache();
        c.learn(1, clock.now_us(), &quota("same"), 1, &denied(10, 0, 60_000, Some(60_000)));
        assert!(c.lookup(1, &[bucket("same", 1.0, 1)], 5).is_none());
        assert!(c.lookup(1, &[quota("same")], 1).is_some());
    }

    #[test]
    fn the_entry_that_says_more_is_kept() {
        let (clock, c) = cache();
        let b = bucket("b", 1.0, 10);
        let t = clock.now_us();
        c.learn(1, t, &b, 1, &denied(10, 0, 10_000, Some(1000)));
        // Cost 5 denied for less long: says less, ignored.
        c.learn(1, t, &b, 5, &denied(10, 0, 10_000, Some(900)));
        assert!(c.lookup(1, std::slice::from_ref(&b), 1).is_some());
        // A newer generation replaces it.
        c.learn(2, t, &b, 5, &denied(10, 0, 10_000, Some(5000)));
        assert!(c.lookup(2, std::slice::from_ref(&b), 1).is_none());
        assert!(c.lookup(2, std::slice::from_ref(&b), 5).is_some());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let (clock, c) = cache();
        let cap = c.capacity();
        assert!((100..=100 + SHARDS).contains(&cap), "{cap}");
        let t = clock.now_us();
        for i in 0..10 * cap {
            c.learn(1, t, &bucket(&format!("b{i}"), 1.0, 1), 1, &denied(1, 0, 1000, Some(1000 + i as u64)));
        }
        assert!(c.len() <= cap, "{} > {cap}", c.len());
        // The latest entries are kept (the ones ending first were evicted).
        let last = bucket(&format!("b{}", 10 * cap - 1), 1.0, 1);
        assert!(c.lookup(1, &[last], 1).is_some());
        c.clear();
        assert!(c.is_empty());
    }
}
