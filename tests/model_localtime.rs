//! Model-based tests of local-time quotas (issue 14; docs/semantics.md,
//! "Local-time quotas"): quotas with a `time_zone` and/or an `anchor_day`,
//! on the memory store and on Redis (with the `test-clock` feature, so the
//! scripts decide at the instants a sequence picks).
//!
//! The reference model below computes periods on its own, with jiff's
//! zoned arithmetic (a date's `start_of_day` in the zone, `1.month()` steps,
//! the weekday's offset from Monday), not with the code under test (which
//! converts day numbers and local midnights itself, in `src/localtime.rs`,
//! and for Redis hands a period table to `decide.lua`). Sequences start
//! next to the daylight-saving changes of America/New_York and
//! Europe/Berlin (a 23-hour and a 25-hour day each), Lord Howe's half-hour
//! change, month ends and Februaries of a leap and a common year, and step
//! to a microsecond either side of each period end.
//!
//! Below the sequences, explicit cases with hand-written instants (a 23-hour
//! day resets 23 hours after local midnight, ...), on both stores.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Date as JDate;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::redis::RedisServer;
use tollgate::localtime::Zone;
use tollgate::model::{Period, Quota};
use tollgate::store::clock::{Clock, ManualClock};
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::RedisStore;
use tollgate::store::{Check, DayUsage, Limit, LimitStore, Rule, UsageKeys, Verdict};

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// The zones the sequences use (None: UTC, with an anchor day).
const ZONES: [Option<&str>; 6] = [
    Some("America/New_York"),
    Some("Europe/Berlin"),
    Some("Asia/Tokyo"),
    Some("Australia/Lord_Howe"),
    Some("Asia/Kolkata"),
    None,
];

/// Instants next to which sequences start (a sequence starts up to 3 days
/// before one).
const NEAR: [&str; 9] = [
    "2026-03-08T07:00:00Z", // New York: 02:00 EST -> 03:00 EDT (a 23-hour day)
    "2026-11-01T06:00:00Z", // New York: 02:00 EDT -> 01:00 EST (a 25-hour day)
    "2026-03-29T01:00:00Z", // Berlin: 02:00 CET -> 03:00 CEST
    "2026-10-25T01:00:00Z", // Berlin: 03:00 CEST -> 02:00 CET
    "2026-04-04T15:00:00Z", // Lord Howe: 02:00 +11 -> 01:30 +10:30
    "2024-02-28T12:00:00Z", // a leap February's end
    "2026-02-28T12:00:00Z", // a common February's end
    "2026-12-31T15:00:00Z", // a year's end in Tokyo
    "2026-01-15T00:00:00Z", // an anchor day
];

fn ts_ms(s: &str) -> i64 {
    s.parse::<Timestamp>().unwrap().as_millisecond()
}

/// A quota as a sequence defines it.
#[derive(Debug, Clone, Copy)]
struct QSpec {
    limit: u64,
    period: Period,
    zone: Option<&'static str>,
    anchor: u32,
    offset: u64,
    created_ms: u64,
}

impl QSpec {
    fn quota(&self) -> Quota {
        Quota {
            limit: self.limit,
            period: self.period,
            offset: self.offset,
            time_zone: self.zone.map(|z| Zone::parse(z).unwrap()),
            anchor_day: self.anchor,
        }
    }

    fn tz(&self) -> TimeZone {
        self.zone.map_or(TimeZone::UTC, |z| TimeZone::get(z).unwrap())
    }
}

/// Days since 1970-01-01 of a date.
fn day_number(d: JDate) -> i64 {
    d.duration_since(jiff::civil::date(1970, 1, 1)).as_secs().div_euclid(86_400)
}

/// The first instant of local date `d` in `tz`, by jiff's own
/// `start_of_day` (from noon, which exists in every zone used here).
fn first_instant(d: JDate, tz: &TimeZone) -> i64 {
    d.at(12, 0, 0, 0).to_zoned_datetime(tz.clone()).unwrap().start_of_day().unwrap().timestamp().as_millisecond()
}

/// The local date of instant `ms` in `tz`.
fn local_date(ms: i64, tz: &TimeZone) -> JDate {
    Timestamp::from_millisecond(ms).unwrap().to_zoned_datetime(tz.clone()).date()
}

/// The period of `q` containing instant `ms`: (start ms, end ms, start day).
fn ref_period(q: &QSpec, ms: i64) -> (i64, i64, i64) {
    let tz = q.tz();
    let d = local_date(ms, &tz);
    let (start, end) = match q.period {
        Period::Day => (d, d.checked_add(1.day()).unwrap()),
        Period::Week => {
            let monday = d.checked_sub(i64::from(d.weekday().to_monday_zero_offset()).days()).unwrap();
            (monday, monday.checked_add(7.days()).unwrap())
        }
        Period::Month => {
            let a = q.anchor.max(1) as i8;
            let s = if d.day() >= a {
                d.with().day(a).build().unwrap()
            } else {
                d.checked_sub(1.month()).unwrap().with().day(a).build().unwrap()
            };
            (s, s.checked_add(1.month()).unwrap())
        }
    };
    (first_instant(start, &tz), first_instant(end, &tz), day_number(start))
}

/// The local date (day number) whose usage record instant `ms` counts in.
fn ref_usage_day(q: &QSpec, ms: i64) -> i64 {
    match q.zone {
        Some(_) => day_number(local_date(ms, &q.tz())),
        None => ms.div_euclid(86_400_000),
    }
}

#[derive(Default)]
struct Model {
    /// (quota, period start day) -> used.
    used: HashMap<(usize, i64), i64>,
    /// (quota's state hash, local day) -> (n, q).
    usage: HashMap<(usize, i64), (i64, Option<i64>)>,
}

impl Model {
    fn eff(q: &QSpec, start: i64, end: i64) -> i64 {
        let created = q.created_ms as i64;
        (q.limit - if (start..end).contains(&created) { q.offset } else { 0 }) as i64
    }

    fn decide(&mut self, i: usize, q: &QSpec, cost: u64, usage: bool, now_ms: i64) -> Verdict {
        let (start, end, day) = ref_period(q, now_ms);
        let eff = Self::eff(q, start, end);
        let used = self.used.get(&(i, day)).copied().unwrap_or(0);
        let reset = (end - now_ms) as u64;
        let cost = cost as i64;
        if used + cost > eff {
            return Verdict {
                allowed: false,
                index: Some(0),
                limit: eff as u64,
                remaining: (eff - used).max(0) as u64,
                reset_ms: reset,
                retry_after_ms: Some(reset),
                grant: None,
                soft: false,
            };
        }
        self.used.insert((i, day), used + cost);
        if usage {
            let u = self.usage.entry((i, ref_usage_day(q, now_ms))).or_insert((0, None));
            u.0 += cost;
            u.1 = Some(used + cost);
        }
        Verdict {
            allowed: true,
            index: Some(0),
            limit: eff as u64,
            remaining: (eff - used - cost) as u64,
            reset_ms: reset,
            retry_after_ms: None,
            grant: None,
            soft: false,
        }
    }

    fn set_remaining(&mut self, i: usize, q: &QSpec, remaining: u64, now_ms: i64) -> (u64, u64) {
        let (start, end, day) = ref_period(q, now_ms);
        let used = Self::eff(q, start, end) - remaining as i64;
        self.used.insert((i, day), used);
        let u = self.usage.entry((i, ref_usage_day(q, now_ms))).or_insert((0, None));
        u.1 = Some(used);
        (remaining, end as u64)
    }
}

// ---------------------------------------------------------------------------
// Random sequences
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// The clock moves forward by this many µs.
    Advance(u64),
    /// The clock moves to `delta` µs from the end of quota `q`'s current
    /// period (by the model), when that is ahead.
    ToPeriodEnd { q: usize, delta: i64 },
    /// Requests decided together (one script call on Redis): (quota, cost,
    /// counts usage).
    Batch(Vec<(usize, u64, bool)>),
    /// UpdateUsage.
    SetRemaining { q: usize, remaining: u64 },
}

#[derive(Debug, Clone)]
struct Sequence {
    start_us: u64,
    quotas: Vec<QSpec>,
    steps: Vec<Step>,
}

fn qspec(start_ms: u64) -> impl Strategy<Value = QSpec> {
    (
        1u64..=12,
        prop_oneof![Just(Period::Day), Just(Period::Week), Just(Period::Month)],
        prop::sample::select(ZONES.to_vec()),
        prop_oneof![Just(0u32), Just(1), Just(15), Just(28), 2u32..=28],
        any::<prop::sample::Index>(),
        0u64..=80 * 86_400_000,
    )
        .prop_map(move |(limit, period, zone, anchor, off, c)| {
            // (UTC with no anchor is the model.rs suite's: here UTC is a
            // MONTH with an anchor day)
            let period = if zone.is_none() { Period::Month } else { period };
            let anchor = if period == Period::Month { anchor } else { 0 };
            let anchor = if zone.is_none() && anchor <= 1 { 15 } else { anchor };
            QSpec {
                limit,
                period,
                zone,
                anchor,
                offset: if off.index(3) == 0 { 0 } else { off.index(limit as usize) as u64 },
                created_ms: (start_ms + c).saturating_sub(40 * 86_400_000),
            }
        })
}

fn step(n: usize) -> impl Strategy<Value = Step> {
    let advance =
        prop_oneof![1u64..=1_000, 1u64..=3_600_000_000, 1u64..=30 * 3_600_000_000, 1u64..=9 * 86_400_000_000,]
            .prop_map(Step::Advance);
    let to_end = (0..n, prop_oneof![Just(0i64), -1000i64..=1000, -3_600_000_000i64..=3_600_000_000])
        .prop_map(|(q, delta)| Step::ToPeriodEnd { q, delta });
    let batch = prop::collection::vec((0..n, prop_oneof![3 => Just(1u64), 1 => 1u64..=5], any::<bool>()), 1..=5)
        .prop_map(Step::Batch);
    let set = (0..n, 0u64..=15).prop_map(|(q, remaining)| Step::SetRemaining { q, remaining });
    prop_oneof![3 => advance, 2 => to_end, 5 => batch, 1 => set]
}

fn sequence() -> impl Strategy<Value = Sequence> {
    (prop::sample::select(NEAR.to_vec()), 0u64..=3 * 86_400_000_000)
        .prop_flat_map(|(near, before)| {
            let start_us = (ts_ms(near) * 1000) as u64 - before;
            (Just(start_us), prop::collection::vec(qspec(start_us / 1000), 1..=3))
        })
        .prop_flat_map(|(start_us, quotas)| {
            let n = quotas.len();
            (Just(start_us), Just(quotas), prop::collection::vec(step(n), 1..=40))
        })
        .prop_map(|(start_us, quotas, steps)| Sequence { start_us, quotas, steps })
}

// ---------------------------------------------------------------------------
// Running a sequence against a store
// ---------------------------------------------------------------------------

enum Subject<'a> {
    Memory,
    Redis(&'a RedisStore),
}

/// How far a sequence's clock may go.
const MAX_SPAN_US: u64 = 70 * 86_400_000_000;

static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Requests denied (0) and allowed (1), and period ends crossed.
static STATS: [std::sync::atomic::AtomicU64; 2] =
    [std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0)];

async fn run(seq: &Sequence, subject: &Subject<'_>, clock: &Arc<ManualClock>) -> Result<(), TestCaseError> {
    use std::sync::atomic::Ordering;
    clock.set_us(seq.start_us);
    let memory = MemoryStore::with_clock(clock.clone());
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    // One state hash per quota (a plan's), counting its usage in its zone.
    let usage: Vec<UsageKeys> = seq
        .quotas
        .iter()
        .enumerate()
        .map(|(i, q)| UsageKeys { state: format!("lt{case}:{{k:x}}:s{i}"), zone: q.quota().time_zone, alerts: None })
        .collect();
    let mut model = Model::default();
    let mut days: Vec<(usize, i64)> = Vec::new();
    for (n, step) in seq.steps.iter().enumerate() {
        let now_us = clock.now_us();
        let now_ms = (now_us / 1000) as i64;
        match step {
            Step::Advance(us) => {
                if now_us + us - seq.start_us <= MAX_SPAN_US {
                    clock.advance(Duration::from_micros(*us));
                }
            }
            Step::ToPeriodEnd { q, delta } => {
                let end_us = ref_period(&seq.quotas[*q], now_ms).1 * 1000;
                let to = end_us + delta;
                if to > now_us as i64 && (to as u64) - seq.start_us <= MAX_SPAN_US {
                    clock.set_us(to as u64);
                }
            }
            Step::Batch(reqs) => {
                let checks: Vec<Check> = reqs
                    .iter()
                    .map(|&(i, cost, counts)| Check {
                        limits: vec![Limit {
                            key: usage[i].state.clone(),
                            field: Some("q".into()),
                            rule: Rule::Quota { quota: seq.quotas[i].quota(), created_at_ms: seq.quotas[i].created_ms },
                        }],
                        cost,
                        usage: counts.then(|| usage[i].clone()),
                        lease: Default::default(),
                    })
                    .collect();
                let got: Vec<Verdict> = match subject {
                    Subject::Memory => checks.iter().map(|c| memory.decide(c)).collect(),
                    Subject::Redis(store) => store
                        .check_batch(&checks)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("step {n}: {e}")))?
                        .into_iter()
                        .map(|v| v.map_err(|e| TestCaseError::fail(format!("step {n}: {e}"))))
                        .collect::<Result<_, _>>()?,
                };
                for (j, (&(i, cost, counts), v)) in reqs.iter().zip(got).enumerate() {
                    let want = model.decide(i, &seq.quotas[i], cost, counts, now_ms);
                    STATS[v.allowed as usize].fetch_add(1, Ordering::Relaxed);
                    prop_assert_eq!(
                        v,
                        want,
                        "step {} request {} at {}: quota {:?}",
                        n,
                        j,
                        Timestamp::from_millisecond(now_ms).unwrap(),
                        seq.quotas[i]
                    );
                    if counts {
                        days.push((i, ref_usage_day(&seq.quotas[i], now_ms)));
                    }
                }
            }
            Step::SetRemaining { q, remaining } => {
                let quota = seq.quotas[*q].quota();
                let created = seq.quotas[*q].created_ms;
                let got = match subject {
                    Subject::Memory => memory.set_remaining(&usage[*q], &quota, created, *remaining).await,
                    Subject::Redis(store) => store.set_remaining(&usage[*q], &quota, created, *remaining).await,
                }
                .map_err(|e| TestCaseError::fail(format!("step {n}: {e}")))?;
                let want = model.set_remaining(*q, &seq.quotas[*q], *remaining, now_ms);
                prop_assert_eq!(
                    got,
                    want,
                    "step {} UpdateUsage at {}",
                    n,
                    Timestamp::from_millisecond(now_ms).unwrap()
                );
                days.push((*q, ref_usage_day(&seq.quotas[*q], now_ms)));
            }
        }
    }
    // Every usage record of every local day used (and the days around), as
    // GetUsage reads them.
    for (i, u) in usage.iter().enumerate() {
        let mut ds: Vec<i64> = days.iter().filter(|d| d.0 == i).flat_map(|d| [d.1 - 1, d.1, d.1 + 1]).collect();
        ds.sort();
        ds.dedup();
        if ds.is_empty() {
            continue;
        }
        let got = match subject {
            Subject::Memory => memory.read_usage(vec![u.clone()], ds.clone()).await,
            Subject::Redis(store) => store.read_usage(vec![u.clone()], ds.clone()).await,
        }
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<Option<DayUsage>> =
            ds.iter().map(|d| model.usage.get(&(i, *d)).map(|&(n, q)| DayUsage { n, q })).collect();
        prop_assert_eq!(got, want, "usage records of quota {} ({:?}) on days {:?}", i, seq.quotas[i], ds);
    }
    Ok(())
}

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default_cases);
    Config { cases, failure_persistence: None, ..Config::default() }
}

fn check_against_model(subject: &Subject<'_>, rt: &tokio::runtime::Runtime, clock: &Arc<ManualClock>) {
    let mut runner = TestRunner::new(config(256));
    let result = runner.run(&sequence(), |seq| rt.block_on(run(&seq, subject, clock)));
    if let Err(e) = result {
        panic!("{e}");
    }
    let [denied, allowed] = [&STATS[0], &STATS[1]].map(|s| s.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!("{} sequences, {allowed} requests allowed and {denied} denied as the model says", runner.config().cases);
    assert!(denied > 0 && allowed > 0, "the sequences reached both answers");
}

async fn redis_store(server: &RedisServer, clock: &Arc<ManualClock>) -> RedisStore {
    server.ready_store(Some(clock.clone())).await
}

#[test]
fn memory_store_matches_the_local_time_model() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    check_against_model(&Subject::Memory, &rt, &clock);
}

#[test]
fn redis_store_matches_the_local_time_model() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(0));
    let store = rt.block_on(redis_store(&server, &clock));
    check_against_model(&Subject::Redis(&store), &rt, &clock);
}

// ---------------------------------------------------------------------------
// Explicit cases, hand-written instants
// ---------------------------------------------------------------------------

/// A memory store and a Redis store on one test clock; every check is
/// asked of both, which must answer alike.
struct Both {
    clock: Arc<ManualClock>,
    memory: MemoryStore,
    redis: RedisStore,
    _server: RedisServer,
}

impl Both {
    async fn start() -> Both {
        let server = RedisServer::start();
        let clock = Arc::new(ManualClock::new(0));
        let redis = redis_store(&server, &clock).await;
        Both { memory: MemoryStore::with_clock(clock.clone()), clock, redis, _server: server }
    }

    /// Sets the clock to an RFC 3339 instant.
    fn at(&self, instant: &str) {
        self.clock.set_us((ts_ms(instant) * 1000) as u64);
    }

    /// One request of cost 1 against `quota` in state hash `state`,
    /// counting usage: the verdict both stores agree on.
    async fn take(&self, state: &str, quota: &Quota) -> Verdict {
        let check = Check {
            limits: vec![Limit {
                key: state.into(),
                field: Some("q".into()),
                rule: Rule::Quota { quota: *quota, created_at_ms: 0 },
            }],
            cost: 1,
            usage: Some(UsageKeys { state: state.into(), zone: quota.time_zone, alerts: None }),
            lease: Default::default(),
        };
        let m = self.memory.decide(&check);
        let r = self.redis.check(check).await.expect("Redis decides");
        assert_eq!(m, r, "memory and Redis agree at {} µs", self.clock.now_us());
        m
    }

    async fn usage(&self, state: &str, day: &str) -> Option<DayUsage> {
        let keys = vec![UsageKeys { state: state.into(), zone: None, alerts: None }];
        let d = vec![tollgate::calendar::Date::parse(day).unwrap().days()];
        let m = self.memory.read_usage(keys.clone(), d.clone()).await.unwrap();
        let r = self.redis.read_usage(keys, d).await.unwrap();
        assert_eq!(m, r, "memory and Redis read the same records");
        m[0]
    }
}

fn quota(limit: u64, period: Period, zone: Option<&str>, anchor: u32) -> Quota {
    Quota { limit, period, offset: 0, time_zone: zone.map(|z| Zone::parse(z).unwrap()), anchor_day: anchor }
}

const HOUR: u64 = 3_600_000;

/// New York, 2026-03-08: local midnight is 05:00Z; clocks go forward at
/// 2:00 EST, so the day ends 23 hours later (04:00Z on the 9th), where a
/// daily quota resets. 2026-11-01: 25 hours (04:00Z to 05:00Z next day).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_days_of_23_and_25_hours() {
    let s = Both::start().await;
    let q = quota(1, Period::Day, Some("America/New_York"), 0);
    s.at("2026-03-08T05:00:00Z");
    let v = s.take("ny1", &q).await;
    assert!(v.allowed);
    assert_eq!(v.reset_ms, 23 * HOUR, "the day of the spring change is 23 hours long");
    s.at("2026-03-09T03:59:59.999Z");
    let v = s.take("ny1", &q).await;
    assert!(!v.allowed);
    assert_eq!(v.retry_after_ms, Some(1));
    s.at("2026-03-09T04:00:00Z");
    assert!(s.take("ny1", &q).await.allowed, "a new day at local midnight, 23 hours after the last");

    s.at("2026-11-01T04:00:00Z");
    let v = s.take("ny2", &q).await;
    assert!(v.allowed);
    assert_eq!(v.reset_ms, 25 * HOUR, "the day of the autumn change is 25 hours long");
    s.at("2026-11-02T04:30:00Z"); // 24.5 hours later: 23:30 local, the same day
    assert!(!s.take("ny2", &q).await.allowed);
    s.at("2026-11-02T05:00:00Z");
    assert!(s.take("ny2", &q).await.allowed);
}

/// Berlin, 2026-03-29 (23 hours: 23:00Z to 22:00Z) and 2026-10-25 (25
/// hours: 22:00Z to 23:00Z).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berlin_days_of_23_and_25_hours() {
    let s = Both::start().await;
    let q = quota(1, Period::Day, Some("Europe/Berlin"), 0);
    s.at("2026-03-28T23:00:00Z");
    assert_eq!(s.take("b1", &q).await.reset_ms, 23 * HOUR);
    s.at("2026-03-29T21:59:59.999Z");
    assert!(!s.take("b1", &q).await.allowed);
    s.at("2026-03-29T22:00:00Z");
    assert!(s.take("b1", &q).await.allowed);

    s.at("2026-10-24T22:00:00Z");
    assert_eq!(s.take("b2", &q).await.reset_ms, 25 * HOUR);
    s.at("2026-10-25T22:59:59.999Z");
    assert!(!s.take("b2", &q).await.allowed);
    s.at("2026-10-25T23:00:00Z");
    assert!(s.take("b2", &q).await.allowed);
}

/// WEEK in Tokyo starts Monday 00:00 JST (Sunday 15:00Z); MONTH in Berlin
/// ends at local midnight in summer time (22:00Z).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn week_and_month_in_a_zone() {
    let s = Both::start().await;
    let w = quota(1, Period::Week, Some("Asia/Tokyo"), 0);
    s.at("2026-11-22T14:59:59.999Z"); // Sunday 23:59:59.999 JST
    let v = s.take("w", &w).await;
    assert!(v.allowed);
    assert_eq!(v.reset_ms, 1);
    s.at("2026-11-22T15:00:00Z"); // Monday 2026-11-23 00:00 JST
    let v = s.take("w", &w).await;
    assert!(v.allowed, "a new week at Monday's local midnight");
    assert_eq!(v.reset_ms, 7 * 24 * HOUR);

    let m = quota(1, Period::Month, Some("Europe/Berlin"), 0);
    s.at("2026-03-15T00:00:00Z");
    let v = s.take("m", &m).await;
    assert_eq!(v.reset_ms, (ts_ms("2026-03-31T22:00:00Z") - ts_ms("2026-03-15T00:00:00Z")) as u64);
    s.at("2026-03-31T21:59:59.999Z");
    assert!(!s.take("m", &m).await.allowed);
    s.at("2026-03-31T22:00:00Z");
    assert!(s.take("m", &m).await.allowed, "April starts at 00:00 CEST");
}

/// Anchor days: 15 in UTC (Jan 15 to Feb 15), 28 around the Februaries of
/// 2024 (leap) and 2026, and 15 in Tokyo (Feb 15 00:00 JST = Feb 14 15:00Z).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_days() {
    let s = Both::start().await;
    let a15 = quota(1, Period::Month, None, 15);
    s.at("2026-01-20T00:00:00Z");
    let v = s.take("a15", &a15).await;
    assert_eq!(v.reset_ms, (ts_ms("2026-02-15T00:00:00Z") - ts_ms("2026-01-20T00:00:00Z")) as u64);
    s.at("2026-02-14T23:59:59.999Z");
    assert!(!s.take("a15", &a15).await.allowed);
    s.at("2026-02-15T00:00:00Z");
    assert!(s.take("a15", &a15).await.allowed);

    let a28 = quota(1, Period::Month, None, 28);
    for (key, before, start, next) in [
        ("leap", "2024-02-27T23:59:59.999Z", "2024-02-28T00:00:00Z", "2024-03-28T00:00:00Z"),
        ("common", "2026-02-27T23:59:59.999Z", "2026-02-28T00:00:00Z", "2026-03-28T00:00:00Z"),
    ] {
        s.at(before);
        assert_eq!(s.take(key, &a28).await.reset_ms, 1, "{key}: the period before ends on Feb 28");
        s.at(start);
        let v = s.take(key, &a28).await;
        assert!(v.allowed, "{key}");
        assert_eq!(v.reset_ms, (ts_ms(next) - ts_ms(start)) as u64, "{key}: Feb 28 to Mar 28");
    }

    let tokyo = quota(1, Period::Month, Some("Asia/Tokyo"), 15);
    s.at("2026-02-14T14:59:59.999Z");
    assert_eq!(s.take("t15", &tokyo).await.reset_ms, 1);
    s.at("2026-02-14T15:00:00Z");
    assert!(s.take("t15", &tokyo).await.allowed, "Feb 15 00:00 JST");
}

/// Usage of a plan in a zone is kept per local date: 16:00Z on Nov 22 is
/// Nov 23 in Tokyo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_on_the_local_date() {
    let s = Both::start().await;
    let q = quota(10, Period::Day, Some("Asia/Tokyo"), 0);
    s.at("2026-11-22T16:00:00Z");
    s.take("u", &q).await;
    s.take("u", &q).await;
    assert_eq!(s.usage("u", "2026-11-23").await, Some(DayUsage { n: 2, q: Some(2) }));
    assert_eq!(s.usage("u", "2026-11-22").await, None);
}

/// Validation: unknown zones, anchors outside 1-28 or on DAY/WEEK.
#[test]
fn bad_zones_and_anchors_are_refused() {
    let e = Zone::parse("Asia/Tokio").unwrap_err();
    assert_eq!(e.to_string(), "time_zone: unknown time zone 'Asia/Tokio' (an IANA name such as Asia/Tokyo)");
    let q = |period, anchor| Quota { limit: 5, period, offset: 0, time_zone: None, anchor_day: anchor };
    let e = q(Period::Month, 29).validate().unwrap_err();
    assert_eq!(e.field, "anchor_day");
    assert!(e.message.contains("1 to 28"), "{e}");
    assert!(q(Period::Month, 28).validate().is_ok());
    assert!(q(Period::Month, 1).validate().is_ok());
    assert!(q(Period::Day, 1).validate().unwrap_err().message.contains("MONTH quotas only"));
    assert!(q(Period::Week, 15).validate().is_err());
}

/// Redis's clock decides, whatever the replica's: the replica sends the
/// periods around ITS clock and the script picks the one containing Redis's
/// time. A replica an hour ahead (already in the next local day) still
/// counts in Redis's day; a replica two days off gets a clear error and
/// nothing is counted. (One process per test under nextest: the skew is
/// this process's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_clock_decides_and_a_replica_a_period_off_is_refused() {
    use std::sync::atomic::Ordering;
    use tollgate::store::redis::REPLICA_SKEW_MS;
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(0));
    let redis = redis_store(&server, &clock).await;
    let q = quota(1, Period::Day, Some("America/New_York"), 0);
    let check = |state: &str| Check {
        limits: vec![Limit {
            key: state.into(),
            field: Some("q".into()),
            rule: Rule::Quota { quota: q, created_at_ms: 0 },
        }],
        cost: 1,
        usage: Some(UsageKeys { state: state.into(), zone: q.time_zone, alerts: None }),
        lease: Default::default(),
    };
    // Redis: 23:30 local on 2026-03-08 (03:30Z on the 9th); the replica is an
    // hour ahead, in the 9th already.
    clock.set_us((ts_ms("2026-03-09T03:30:00Z") * 1000) as u64);
    REPLICA_SKEW_MS.store(3_600_000, Ordering::Relaxed);
    let v = redis.check(check("skew")).await.unwrap();
    assert!(v.allowed);
    assert_eq!(v.reset_ms, 30 * 60 * 1000, "Redis's day (the 8th) ends in 30 minutes");
    assert!(!redis.check(check("skew")).await.unwrap().allowed, "counted in Redis's day");
    let day8 = tollgate::calendar::Date::parse("2026-03-08").unwrap().days();
    let read =
        redis.read_usage(vec![UsageKeys { state: "skew".into(), zone: None, alerts: None }], vec![day8]).await.unwrap();
    assert_eq!(read[0].map(|u| u.n), Some(1), "usage on Redis's local date");

    // Two days off: no period of the table contains Redis's time.
    REPLICA_SKEW_MS.store(2 * 86_400_000, Ordering::Relaxed);
    let e = redis.check(check("far")).await.unwrap_err();
    assert!(e.to_string().contains("a whole period away from Redis's"), "{e}");
    REPLICA_SKEW_MS.store(0, Ordering::Relaxed);
    assert!(redis.check(check("far")).await.unwrap().allowed, "nothing was counted by the refused request");
}
