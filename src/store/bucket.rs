//! The token bucket, in exact integer arithmetic: the one definition both
//! stores follow (`memory.rs` calls [`take`]; `redis/scripts/decide.lua`
//! does the same steps in Lua, and the conformance and model-based suites
//! hold them to each other and to docs/semantics.md).
//!
//! A bucket of capacity `burst` refilled at `rate` tokens per second is kept
//! as its *level* (the tokens missing from a full bucket) in billionths of a
//! token ([`NANO`]), and the instant of that level in microseconds. Rates are
//! kept in thousandths of a request per second (`Throttle::rate_milli`), so a
//! bucket regains exactly `rate_milli` billionths of a token per microsecond:
//! every step is an integer operation, nothing is rounded, and a bucket admits
//! exactly what `burst + rate × elapsed` allows at every rate. (Version one
//! kept GCRA's arrival time in whole microseconds and rounded every request's
//! step, which over-admitted at high rates.)
//!
//! Every number stays below 2^53 (Redis's Lua counts in doubles): a level is
//! at most `MAX_BURST × NANO` = 10^15, plus one request's cost, at most
//! `MAX_COST × NANO` = 10^15.

/// Billionths of a token per token.
pub const NANO: u64 = 1_000_000_000;

/// A bucket's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Tokens missing from a full bucket, in billionths, at `at_us`.
    pub level: u64,
    /// When `level` was measured, µs since the Unix epoch.
    pub at_us: u64,
}

/// The outcome of asking a bucket for `cost` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Enough tokens: store `state`, which expires after `ttl_ms` (the
    /// bucket is full again by then, so forgetting it changes nothing).
    Allow {
        /// The state to store.
        state: BucketState,
        /// Whole tokens left.
        remaining: u64,
        /// Milliseconds until the bucket is full again.
        reset_ms: u64,
        /// Lifetime of the stored state, ms (at least 1).
        ttl_ms: u64,
    },
    /// Not enough tokens; nothing changes.
    Deny {
        /// Whole tokens left.
        remaining: u64,
        /// Milliseconds until the bucket is full again.
        reset_ms: u64,
        /// Milliseconds until `cost` tokens are there; `None` when they never
        /// can be (cost above the burst).
        retry_after_ms: Option<u64>,
    },
}

/// The level of a stored bucket at `now_us`: what it had, drained by the
/// time since. A clock that went back drains nothing.
pub fn level_at(prev: Option<BucketState>, rate_milli: u64, now_us: u64) -> u64 {
    let Some(p) = prev else { return 0 };
    let elapsed = now_us.saturating_sub(p.at_us);
    let drained = u128::from(elapsed) * u128::from(rate_milli);
    u64::try_from(u128::from(p.level).saturating_sub(drained)).unwrap_or(0)
}

/// Asks a bucket (`rate_milli`, `burst`) in state `prev` (none: full) for
/// `cost` tokens at `now_us`.
pub fn take(prev: Option<BucketState>, rate_milli: u64, burst: u64, cost: u64, now_us: u64) -> Take {
    let level = level_at(prev, rate_milli, now_us);
    let cap = burst * NANO;
    let need = cost * NANO;
    let remaining = cap.saturating_sub(level) / NANO;
    if cost > burst || level + need > cap {
        return Take::Deny {
            remaining,
            reset_ms: ms_to_drain(level, rate_milli),
            retry_after_ms: (cost <= burst).then(|| ms_to_drain(level + need - cap, rate_milli)),
        };
    }
    let level = level + need;
    let at_us = prev.map_or(now_us, |p| p.at_us.max(now_us));
    let reset_ms = ms_to_drain(level, rate_milli);
    Take::Allow { state: BucketState { level, at_us }, remaining: (cap - level) / NANO, reset_ms, ttl_ms: reset_ms + 1 }
}

/// Gives `cost` tokens back to a bucket in state `prev` at `now_us` (a
/// refund, docs/semantics.md "Refunds"): its level goes down by the cost,
/// never below full. Returns the state to store and its lifetime in ms.
pub fn give(prev: Option<BucketState>, rate_milli: u64, cost: u64, now_us: u64) -> (BucketState, u64) {
    let level = level_at(prev, rate_milli, now_us).saturating_sub(cost.saturating_mul(NANO));
    let at_us = prev.map_or(now_us, |p| p.at_us.max(now_us));
    (BucketState { level, at_us }, ms_to_drain(level, rate_milli) + 1)
}

/// Milliseconds (rounded up) until `amount` billionths drain at `rate_milli`
/// per microsecond. A zero rate never drains; only a zero burst has one, and
/// it never stores a level.
fn ms_to_drain(amount: u64, rate_milli: u64) -> u64 {
    if amount == 0 || rate_milli == 0 {
        return 0;
    }
    amount.div_ceil(rate_milli).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(t: Take) -> Option<BucketState> {
        match t {
            Take::Allow { state, .. } => Some(state),
            Take::Deny { .. } => None,
        }
    }

    /// Burst 1000 in one instant admits exactly 1000 at every rate, where
    /// version one admitted 1,010 at 30,000/s and 1,250 at 400,000/s.
    #[test]
    fn one_instant_admits_exactly_the_burst() {
        for rate in [1.0, 30_000.0, 400_000.0, 2_000_001.0, 1e9] {
            let milli = (rate * 1000.0) as u64;
            let mut st = None;
            let mut n = 0;
            while let Some(s) = allowed(take(st, milli, 1000, 1, 1_000_000)) {
                st = Some(s);
                n += 1;
                assert!(n <= 1000, "rate {rate}");
            }
            assert_eq!(n, 1000, "rate {rate}");
        }
    }

    #[test]
    fn refills_exactly() {
        // 3 tokens per second, burst 2: empty at t=0, one token back after
        // 333,334 µs (1/3 s rounded up), not at 333,333.
        let milli = 3000;
        let s = allowed(take(None, milli, 2, 2, 0)).unwrap();
        assert_eq!(
            take(Some(s), milli, 2, 1, 333_333),
            Take::Deny { remaining: 0, reset_ms: 334, retry_after_ms: Some(1) }
        );
        assert!(allowed(take(Some(s), milli, 2, 1, 333_334)).is_some());
        match take(None, milli, 2, 1, 0) {
            Take::Allow { remaining, reset_ms, ttl_ms, .. } => assert_eq!((remaining, reset_ms, ttl_ms), (1, 334, 335)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn cost_above_burst_never_passes_and_zero_blocks() {
        assert_eq!(take(None, 1000, 2, 3, 0), Take::Deny { remaining: 2, reset_ms: 0, retry_after_ms: None });
        assert_eq!(take(None, 0, 0, 1, 0), Take::Deny { remaining: 0, reset_ms: 0, retry_after_ms: None });
    }

    #[test]
    fn clock_going_back_drains_nothing() {
        let s = allowed(take(None, 1000, 5, 5, 1_000_000)).unwrap();
        assert_eq!(level_at(Some(s), 1000, 0), 5 * NANO);
        let s2 = allowed(take(Some(s), 1000, 5, 0, 500_000)).unwrap();
        assert_eq!(s2.at_us, 1_000_000);
    }

    #[test]
    fn extremes_stay_exact() {
        // The largest burst and cost at the lowest and highest rates.
        let big = u64::from(crate::model::MAX_BURST);
        let s = allowed(take(None, 1, big, big, 0)).unwrap();
        assert_eq!(s.level, big * NANO);
        assert!(s.level + big * NANO < 1 << 53);
        assert_eq!(level_at(Some(s), 1, u64::MAX), 0);
        assert_eq!(level_at(Some(s), 1_000_000_000_000, 1), big * NANO - 1_000_000_000_000);
    }
}
