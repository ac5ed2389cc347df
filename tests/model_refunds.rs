//! Model-based tests of refunds (issue 14; docs/semantics.md, "Refunds"),
//! beside tests/model.rs: random sequences mixing decisions, time steps
//! (across midnight: a DAY quota's period ends between a decision and its
//! refund) and refunds of earlier decisions — again and again, late, past
//! their period — run against a small reference model and the memory
//! store and the Redis store (on a test clock). Every decision and every
//! refund must give the model's answer, and the model itself checks what
//! refunds may never do: give back to a decision more than it took, or
//! twice. The usage records are compared at the end.
//!
//! Bounded for CI (128 sequences per store);
//! `PROPTEST_CASES=2000 cargo nextest run --test model_refunds` runs more.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::redis::RedisServer;
use tollgate::model::{Period, Quota, Throttle};
use tollgate::store::clock::{Clock, ManualClock};
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::RedisStore;
use tollgate::store::{Check, DayUsage, Limit, LimitStore, Refund, RefundOutcome, Rule, UsageKeys};

const NANO: i128 = 1_000_000_000;
const DAY_MS: i128 = 86_400_000;

/// A sequence's limits: the key's plan throttle and quota (fields of its
/// state hash, which counts usage) and a stage throttle (a key of its own).
#[derive(Debug, Clone, Copy)]
struct Limits {
    plan: (u64, u32),
    stage: (u64, u32),
    quota: u64,
    period: Period,
}

#[derive(Debug, Clone)]
enum Step {
    /// The clock moves forward by this many µs.
    Advance(u64),
    /// A decision of this cost.
    Decide(u64),
    /// A refund of the earlier decision with this index (modulo how many
    /// there were); repeats included.
    Refund(usize),
}

#[derive(Debug, Clone)]
struct Sequence {
    start_us: u64,
    limits: Limits,
    window_ms: u64,
    steps: Vec<Step>,
}

/// The start of the period containing day `today` (days since 1970-01-01).
fn period_start(period: Period, today: i128) -> i128 {
    match period {
        Period::Day => today,
        // 1970-01-01 was a Thursday: Monday is 3 days before.
        Period::Week => today - (today + 3).rem_euclid(7),
        Period::Month => unreachable!("not in these sequences"),
    }
}

/// One decision as the model remembers it.
#[derive(Debug, Clone)]
struct Taken {
    allowed: bool,
    at_ms: i128,
    cost: i128,
    period_day: i128,
    usage_day: i128,
    /// Times given back (the invariant: at most once).
    given: u32,
}

/// Tokens available per bucket (billionths, and when), quota used per
/// period start day, usage (n, q) per day.
#[derive(Default)]
struct Model {
    tokens: HashMap<&'static str, (i128, i128)>,
    used: HashMap<i128, i128>,
    usage: HashMap<i128, (i128, Option<i128>)>,
    taken: Vec<Taken>,
}

impl Model {
    fn avail(&self, name: &'static str, (rate, burst): (u64, u32), now_us: i128) -> i128 {
        let cap = burst as i128 * NANO;
        match self.tokens.get(name) {
            None => cap,
            Some(&(a, at)) => (a + rate as i128 * (now_us - at).max(0)).min(cap),
        }
    }

    fn decide(&mut self, l: &Limits, cost: i128, now_us: i128) -> bool {
        let now_ms = now_us.div_euclid(1000);
        let today = now_ms.div_euclid(DAY_MS);
        let start = period_start(l.period, today);
        let plan = self.avail("plan", l.plan, now_us);
        let stage = self.avail("stage", l.stage, now_us);
        let used = self.used.get(&start).copied().unwrap_or(0);
        let allowed = cost <= l.plan.1 as i128
            && plan >= cost * NANO
            && used + cost <= l.quota as i128
            && cost <= l.stage.1 as i128
            && stage >= cost * NANO;
        if allowed {
            self.tokens.insert("plan", (plan - cost * NANO, now_us));
            self.tokens.insert("stage", (stage - cost * NANO, now_us));
            self.used.insert(start, used + cost);
            let (n, _) = self.usage.get(&today).copied().unwrap_or((0, None));
            self.usage.insert(today, (n + cost, Some(used + cost)));
        }
        self.taken.push(Taken { allowed, at_ms: now_ms, cost, period_day: start, usage_day: today, given: 0 });
        allowed
    }

    /// docs/semantics.md, "Refunds": refused past the window, in another
    /// period, or the second time; else the cost goes back to each bucket
    /// (never above full), the quota and the decision day's usage.
    fn refund(&mut self, l: &Limits, i: usize, window_ms: i128, now_us: i128) -> RefundOutcome {
        let now_ms = now_us.div_euclid(1000);
        let today = now_ms.div_euclid(DAY_MS);
        let t = self.taken[i].clone();
        if now_ms > t.at_ms + window_ms {
            return RefundOutcome::WindowPassed;
        }
        let start = period_start(l.period, today);
        if start != t.period_day {
            return RefundOutcome::PeriodPassed;
        }
        if t.given > 0 {
            return RefundOutcome::AlreadyRefunded;
        }
        self.taken[i].given += 1;
        for (name, b) in [("plan", l.plan), ("stage", l.stage)] {
            let a = self.avail(name, b, now_us);
            self.tokens.insert(name, ((a + t.cost * NANO).min(b.1 as i128 * NANO), now_us));
        }
        let used = self.used.get(&start).copied().unwrap_or(0) - t.cost;
        self.used.insert(start, used);
        if let Some(&(n, q)) = self.usage.get(&t.usage_day) {
            let q = if t.usage_day == today { Some(used) } else { q };
            self.usage.insert(t.usage_day, ((n - t.cost).max(0), q));
        }
        if t.usage_day < today {
            let n = self.usage.get(&today).map_or(0, |u| u.0);
            self.usage.insert(today, (n, Some(used)));
        }
        RefundOutcome::Refunded { quota_remaining: Some((l.quota as i128 - used).max(0) as u64) }
    }
}

fn sequence() -> impl Strategy<Value = Sequence> {
    let limits = (
        (1u64..=5_000, 1u32..=10),
        (1u64..=50_000, 5u32..=30),
        1u64..=25,
        prop_oneof![3 => Just(Period::Day), 1 => Just(Period::Week)],
    )
        .prop_map(|(plan, stage, quota, period)| Limits { plan, stage, quota, period });
    let step = prop_oneof![
        2 => prop_oneof![1u64..=1000, 1u64..=5_000_000, 1u64..=1_800_000_000].prop_map(Step::Advance),
        4 => prop_oneof![4 => Just(1u64), 1 => 1u64..=6].prop_map(Step::Decide),
        4 => (0usize..64).prop_map(Step::Refund),
    ];
    (
        // 2020 to 2035, starting up to two hours before a midnight UTC.
        18_262i64..23_000,
        0u64..7_200_000_000,
        limits,
        prop_oneof![Just(1_000u64), Just(3_600_000u64)],
        prop::collection::vec(step, 1..=60),
    )
        .prop_map(|(day, before, limits, window_ms, steps)| Sequence {
            start_us: (day as u64 + 1) * 86_400_000_000 - before,
            limits,
            window_ms,
            steps,
        })
}

enum Subject<'a> {
    Memory,
    Redis(&'a RedisStore),
}

static CASE: AtomicU64 = AtomicU64::new(0);
/// Refund outcomes seen: refunded, already, window, period.
static SEEN: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

async fn run(seq: &Sequence, subject: &Subject<'_>, clock: &Arc<ManualClock>) -> Result<(), TestCaseError> {
    clock.set_us(seq.start_us);
    let memory = MemoryStore::with_clock(clock.clone());
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let state = format!("r{case}:{{k:x}}:s");
    let usage = UsageKeys { state: state.clone(), zone: None, alerts: None };
    let l = seq.limits;
    let bucket =
        |(rate, burst): (u64, u32)| Rule::Bucket(Throttle { rate_limit: rate as f64 / 1000.0, burst_limit: burst });
    let limits = vec![
        Limit { key: state.clone(), field: Some("b".into()), rule: bucket(l.plan) },
        Limit {
            key: state.clone(),
            field: Some("q".into()),
            rule: Rule::Quota {
                quota: Quota { limit: l.quota, period: l.period, offset: 0, time_zone: None, anchor_day: 0 },
                created_at_ms: 0,
            },
        },
        Limit { key: format!("r{case}:{{s:x}}:tb"), field: None, rule: bucket(l.stage) },
    ];
    let mut model = Model::default();
    let mut days = Vec::new();
    for (n, step) in seq.steps.iter().enumerate() {
        let now = clock.now_us() as i128;
        match step {
            Step::Advance(us) => clock.advance(Duration::from_micros(*us)),
            Step::Decide(cost) => {
                let check = Check {
                    limits: limits.clone(),
                    cost: *cost,
                    usage: Some(usage.clone()),
                    lease: Default::default(),
                };
                let got = match subject {
                    Subject::Memory => memory.decide(&check),
                    Subject::Redis(s) => {
                        s.check(check).await.map_err(|e| TestCaseError::fail(format!("step {n}: {e}")))?
                    }
                };
                let want = model.decide(&l, *cost as i128, now);
                prop_assert_eq!(got.allowed, want, "step {}: a decision of cost {}", n, cost);
                days.push(now.div_euclid(1000).div_euclid(DAY_MS) as i64);
            }
            Step::Refund(which) => {
                let allowed: Vec<usize> = (0..model.taken.len()).filter(|&i| model.taken[i].allowed).collect();
                if allowed.is_empty() {
                    continue;
                }
                let i = allowed[which % allowed.len()];
                let t = model.taken[i].clone();
                let refund = Refund {
                    limits: limits.clone(),
                    cost: t.cost as u64,
                    usage: Some(usage.clone()),
                    usage_day: t.usage_day as i64,
                    period_day: Some(t.period_day as i64),
                    until_ms: (t.at_ms + seq.window_ms as i128) as u64,
                    marker: format!("r{case}:{{k:x}}:r:{i}"),
                };
                let got = match subject {
                    Subject::Memory => memory.refund(refund).await,
                    Subject::Redis(s) => s.refund(refund).await,
                }
                .map_err(|e| TestCaseError::fail(format!("step {n}: {e}")))?;
                let want = model.refund(&l, i, seq.window_ms as i128, now);
                prop_assert_eq!(got, want, "step {}: refund of decision {} ({:?})", n, i, t);
                let k = match got {
                    RefundOutcome::Refunded { .. } => 0,
                    RefundOutcome::AlreadyRefunded => 1,
                    RefundOutcome::WindowPassed => 2,
                    RefundOutcome::PeriodPassed => 3,
                };
                SEEN[k].fetch_add(1, Ordering::Relaxed);
                days.push(now.div_euclid(1000).div_euclid(DAY_MS) as i64);
                // What refunds may never do, whatever the stores say.
                prop_assert!(model.taken.iter().all(|t| t.given <= 1 && (t.allowed || t.given == 0)));
            }
        }
    }
    days.sort();
    days.dedup();
    let got = match subject {
        Subject::Memory => memory.read_usage(vec![usage.clone()], days.clone()).await,
        Subject::Redis(s) => s.read_usage(vec![usage.clone()], days.clone()).await,
    }
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want: Vec<Option<DayUsage>> = days
        .iter()
        .map(|d| model.usage.get(&(*d as i128)).map(|&(n, q)| DayUsage { n: n as i64, q: q.map(|q| q as i64) }))
        .collect();
    prop_assert_eq!(got, want, "usage of days {:?}", days);
    Ok(())
}

fn check_against_model(subject: &Subject<'_>, rt: &tokio::runtime::Runtime, clock: &Arc<ManualClock>) {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&sequence(), |seq| rt.block_on(run(&seq, subject, clock))) {
        panic!("{e}");
    }
    let seen = SEEN.each_ref().map(|s| s.load(Ordering::Relaxed));
    eprintln!(
        "refunds: {} given back, {} already refunded, {} past the window, {} past the period",
        seen[0], seen[1], seen[2], seen[3]
    );
    assert!(seen.iter().all(|&n| n > 0), "the sequences reach every outcome: {seen:?}");
}

#[test]
fn memory_store_refunds_as_the_model_says() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    check_against_model(&Subject::Memory, &rt, &Arc::new(ManualClock::new(0)));
}

#[test]
fn redis_store_refunds_as_the_model_says() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(0));
    let store = rt.block_on(server.ready_store(Some(clock.clone())));
    check_against_model(&Subject::Redis(&store), &rt, &clock);
}
