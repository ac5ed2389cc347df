//! Shadow plans in the model-based suite (issue 14; docs/semantics.md,
//! "Shadow plans"): random sequences of requests, at random instants (the
//! test clock), through two limiters on the same store kind and the same
//! clock: one whose plan enforces, one whose plan is the same plan with
//! `shadow: true`. The enforcing twin's answers are the model (the plain
//! model-based suite, tests/model.rs, proves them exact); the shadow twin
//! must answer, request for request:
//!
//! - where the enforcing plan allows: the same allow, the same numbers;
//! - where it denies for the plan's own limits (per-method throttle, plan
//!   throttle, quota): an allow with `shadow_denied` = that reason and the
//!   same numbers describing the limit that would have denied;
//! - and in both cases, the stage's shared throttle still denies for real
//!   once it is used up: it counts every request the shadow twin let
//!   through (its own model below: a bucket that never refills within a
//!   sequence, so a counter).
//!
//! The plan's limits take nothing for a would-be denial, so both twins keep
//! the same state, which the usage records compare at the end of each
//! sequence. On the memory store, on Redis, and on Redis behind the deny
//! cache (a shadow plan's cached denials must still be answered as
//! shadow allows).
//!
//! 128 sequences per store in CI; more with `PROPTEST_CASES=2000`.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::redis::RedisServer;
use tollgate::catalog::{file, Catalog, CatalogHandle};
use tollgate::limiter::{Decision, DenyCache, LimitKind, Limiter, Reason, Request};
use tollgate::store::clock::{Clock, ManualClock};
use tollgate::store::keys::Keys;
use tollgate::store::memory::MemoryStore;
use tollgate::store::{DayUsage, LimitStore, Store};

const KEY: &str = "shadowmodel0123456789abcdefghijklmnopq";
const STAGE: &str = "shop/prod";
/// Has a plan per-method throttle and the stage's shared throttle.
const M1: &str = "/orders/POST";
/// Has neither.
const M2: &str = "/orders/GET";
const DAY_US: u64 = 86_400_000_000;

/// One sequence's plan and stage.
#[derive(Debug, Clone)]
struct Limits {
    plan_rate: f64,
    plan_burst: u32,
    method_rate: f64,
    method_burst: u32,
    quota: u64,
    /// The stage throttle of M1: its rate (0.001/s) refills less than a
    /// token in any sequence (at most 60 steps of at most 10 s), so it is
    /// a counter of `stage_burst` units.
    stage_burst: u32,
}

#[derive(Debug, Clone)]
struct Step {
    advance_us: u64,
    m1: bool,
    cost: u64,
}

#[derive(Debug, Clone)]
struct Sequence {
    limits: Limits,
    start_us: u64,
    steps: Vec<Step>,
}

fn catalog_yaml(l: &Limits, shadow: bool) -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
        methods:
          {M2}: {{}}
          {M1}:
            throttle: {{ rate_limit: 0.001, burst_limit: {stage_burst} }}
usage_plans:
  - id: plan
    name: Plan
    shadow: {shadow}
    throttle: {{ rate_limit: {plan_rate}, burst_limit: {plan_burst} }}
    quota: {{ limit: {quota}, period: DAY }}
    api_stages:
      - stage: {STAGE}
        throttle:
          {M1}: {{ rate_limit: {method_rate}, burst_limit: {method_burst} }}
api_keys:
  - name: k
    value: {KEY}
    usage_plans: [plan]
"#,
        stage_burst = l.stage_burst,
        plan_rate = l.plan_rate,
        plan_burst = l.plan_burst,
        quota = l.quota,
        method_rate = l.method_rate,
        method_burst = l.method_burst,
    )
}

fn log_uniform(max: u64) -> impl Strategy<Value = u64> {
    (0.0f64..(max as f64).ln()).prop_map(|x| x.exp() as u64)
}

fn sequence() -> impl Strategy<Value = Sequence> {
    let limits = (
        prop::sample::select(vec![0.5f64, 2.0, 10.0, 250.0]),
        1u32..6,
        prop::sample::select(vec![0.25f64, 1.0, 5.0]),
        1u32..5,
        2u64..30,
        1u32..40,
    )
        .prop_map(|(plan_rate, plan_burst, method_rate, method_burst, quota, stage_burst)| Limits {
            plan_rate,
            plan_burst,
            method_rate,
            method_burst,
            quota,
            stage_burst,
        });
    let step = (log_uniform(10_000_000), any::<bool>(), 1u64..4).prop_map(|(advance_us, m1, cost)| Step {
        advance_us,
        m1,
        cost,
    });
    // A start in 2026, half of them in the last two minutes of a day, so
    // that sequences cross midnight (the daily quota starts again).
    let start = (0u64..365, prop_oneof![0u64..DAY_US, (DAY_US - 120_000_000)..DAY_US])
        .prop_map(|(day, us)| (20_454 + day) * DAY_US + us);
    (limits, start, prop::collection::vec(step, 1..60)).prop_map(|(limits, start_us, steps)| Sequence {
        limits,
        start_us,
        steps,
    })
}

/// Which store the twins run on.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Memory,
    Redis(&'a RedisServer),
    RedisDenyCache(&'a RedisServer),
}

static CASE: AtomicU64 = AtomicU64::new(0);
static SEEN: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// A limiter over `store` whose catalog is `limits` (shadow or not), its
/// state under `prefix`.
fn limiter(l: &Limits, shadow: bool, store: Store, prefix: &str, cache: Option<DenyCache>) -> Limiter<Store> {
    let yaml = catalog_yaml(l, shadow);
    let data = file::parse("model.yaml", &yaml, 1).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let catalog = CatalogHandle::new(Catalog::compile(data).expect("the catalog compiles"));
    let limiter = Limiter::new(catalog, store, Keys::new(prefix), None);
    match cache {
        Some(c) => limiter.with_deny_cache(c),
        None => limiter,
    }
}

async fn redis_store(server: &RedisServer, clock: &Arc<ManualClock>) -> Store {
    Store::Redis(Arc::new(server.ready_store(Some(clock.clone())).await))
}

async fn ask(l: &Limiter<Store>, method: &str, cost: u64) -> Decision {
    l.authorize(Request { api_key: Some(KEY), stage: STAGE, method, cost }).await.expect("authorize answers")
}

fn plan_reason(d: &Decision) -> bool {
    !d.allowed && d.rate.is_some_and(|r| r.kind.is_plan_limit())
}

async fn run(seq: &Sequence, subject: Subject<'_>) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(seq.start_us));
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let (ep, sp) = (format!("e{case}:"), format!("s{case}:"));
    let cache = || Some(DenyCache::with_clock(1000, clock.clone()));
    let (es, ss, caches) = match subject {
        Subject::Memory => (
            Store::Memory(Arc::new(MemoryStore::with_clock(clock.clone()))),
            Store::Memory(Arc::new(MemoryStore::with_clock(clock.clone()))),
            false,
        ),
        Subject::Redis(server) => {
            let store = redis_store(server, &clock).await;
            (store.clone(), store, false)
        }
        Subject::RedisDenyCache(server) => {
            let store = redis_store(server, &clock).await;
            (store.clone(), store, true)
        }
    };
    let enforcing = limiter(&seq.limits, false, es.clone(), &ep, if caches { cache() } else { None });
    let shadow = limiter(&seq.limits, true, ss.clone(), &sp, if caches { cache() } else { None });

    // The shadow twin's stage throttle: units its M1 requests took.
    let mut stage_used = 0u64;
    let mut key_id = None;
    // Units the enforcing twin took at the step that ended the sequence
    // (the shadow twin's stage throttle denied it): in its usage only.
    let mut ahead = 0;
    let burst = seq.limits.stage_burst as u64;
    for (n, step) in seq.steps.iter().enumerate() {
        clock.advance(Duration::from_micros(step.advance_us));
        let method = if step.m1 { M1 } else { M2 };
        let e = ask(&enforcing, method, step.cost).await;
        let s = ask(&shadow, method, step.cost).await;
        key_id = e.key_id.clone();
        let at =
            format!("step {n} ({method}, cost {}) at {} µs:\nenforcing {e:?}\nshadow {s:?}", step.cost, clock.now_us());
        prop_assert!(
            e.allowed || e.reason == Reason::Throttled || e.reason == Reason::QuotaExceeded,
            "unexpected answer {}",
            at
        );
        let stage_passes = !step.m1 || stage_used + step.cost <= burst;
        let stage_denied = e.rate.is_some_and(|r| r.kind == LimitKind::StageMethodThrottle) && !e.allowed;
        if !stage_passes || stage_denied {
            // The shared throttle denies the shadow twin for real (its
            // count is at least the enforcing twin's: it also let through
            // the would-be denials). From here the twins' plan states part
            // (one consumes, the other not): the sequence ends.
            if !stage_passes {
                prop_assert!(!s.allowed && s.shadow_denied.is_none(), "the stage throttle must deny: {}", at);
                prop_assert_eq!(s.reason, Reason::Throttled, "{}", at);
                prop_assert_eq!(s.rate.map(|r| r.kind), Some(LimitKind::StageMethodThrottle), "{}", at);
                SEEN[2].fetch_add(1, Ordering::Relaxed);
            }
            if e.allowed {
                ahead = step.cost as i64;
            }
            break;
        }
        prop_assert!(s.allowed, "a shadow plan never denies for its own limits: {}", at);
        if step.m1 {
            stage_used += step.cost;
        }
        if e.allowed {
            prop_assert_eq!(s.shadow_denied, None, "{}", at);
        } else {
            prop_assert!(plan_reason(&e), "a denial for the plan's own limits: {}", at);
            prop_assert_eq!(s.shadow_denied, Some(e.reason), "{}", at);
            SEEN[1].fetch_add(1, Ordering::Relaxed);
        }
        // The numbers: the same limit, except where the stage throttle
        // (whose counts differ between the twins) is the tightest.
        let stage = |d: &Decision| d.rate.is_some_and(|r| r.kind == LimitKind::StageMethodThrottle);
        if !stage(&e) && !stage(&s) {
            prop_assert_eq!(s.rate, e.rate, "{}", at);
        }
        prop_assert_eq!(s.retry_after_ms, None, "{}", at);
        SEEN[0].fetch_add(1, Ordering::Relaxed);
    }

    // The same usage records: a would-be denial counts nothing.
    let day = (clock.now_us() / DAY_US) as i64;
    let days = vec![day - 1, day];
    let Some(key_id) = key_id else { return Ok(()) };
    let ek = Keys::new(&ep).usage(&key_id, "plan");
    let sk = Keys::new(&sp).usage(&key_id, "plan");
    let eu = es.read_usage(vec![ek], days.clone()).await.expect("read usage");
    let mut su = ss.read_usage(vec![sk], days).await.expect("read usage");
    if ahead > 0 {
        let today = su[1].get_or_insert(DayUsage { n: 0, q: Some(0) });
        today.n += ahead;
        today.q = today.q.map(|q| q + ahead);
    }
    prop_assert_eq!(su, eu, "usage records (the enforcing twin's last step: {} more)", ahead);
    Ok(())
}

fn check(subject: Subject<'_>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&sequence(), |seq| rt.block_on(run(&seq, subject))) {
        panic!("{e}");
    }
    let [agreed, shadowed, stage] = [&SEEN[0], &SEEN[1], &SEEN[2]].map(|s| s.load(Ordering::Relaxed));
    eprintln!("{cases} sequences: {agreed} answers as the model says, {shadowed} of them shadow denials; {stage} stage denials");
    assert!(shadowed > 0 && stage > 0, "the sequences never reached a shadow denial or the stage throttle");
}

#[test]
fn a_shadow_plan_on_the_memory_store_matches_its_enforcing_twin() {
    check(Subject::Memory);
}

#[test]
fn a_shadow_plan_on_redis_matches_its_enforcing_twin() {
    let server = RedisServer::start();
    check(Subject::Redis(&server));
}

#[test]
fn a_shadow_plan_on_redis_behind_the_deny_cache_matches_its_enforcing_twin() {
    let server = RedisServer::start();
    check(Subject::RedisDenyCache(&server));
}
