//! Usage metering (issue 4): quota periods at their UTC boundaries, the
//! plan's offset, GetUsage and UpdateUsage, on both stores and across
//! replicas (docs/usage.md, docs/semantics.md "Quota periods" and "Usage").
//!
//! - Period boundaries and the offset rule run on the memory store with a
//!   [`ManualClock`], so a test can stand at 23:59:59.999 and then at 00:00.
//! - Redis's clock cannot be moved: its tests write quota counters and daily
//!   usage records for chosen periods and dates directly, under the key names
//!   of `src/store/keys.rs`, and the GetUsage scenarios assert that both
//!   stores give the same answers.
//! - UpdateUsage and exactness go through real `tollgate serve` processes on
//!   one Redis, over gRPC.
//! - The Lua calendar (`calendar.lua`) is checked day by day against
//!   `src/calendar.rs` around leap years and century boundaries.
//!
//! Tests on Redis's real clock skip (with a message) rather than fail when
//! they run within a minute of the end of the period they depend on.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::pb;
use tollgate::calendar::{period_bounds_ms, period_days, Date, DAY_MS};
use tollgate::catalog::admin::AdminError;
use tollgate::catalog::store::CatalogService;
use tollgate::catalog::{file, Catalog, CatalogHandle};
use tollgate::limiter::{Decision, LimitKind, Limiter, Reason, Request};
use tollgate::model::Period;
use tollgate::store::keys::Keys;
use tollgate::store::memory::{ManualClock, MemoryStore};
use tollgate::store::redis::{RedisSettings, RedisStore};
use tollgate::store::{LimitStore, Store};
use tollgate::usage::UsageService;
use tonic::Code;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Milliseconds since the epoch of `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS.mmm`
/// (UTC).
fn t(s: &str) -> u64 {
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00.000"));
    let d = Date::parse(date).unwrap_or_else(|| panic!("bad date in {s:?}"));
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let p: Vec<u64> = hms.split(':').map(|x| x.parse().expect("HH:MM:SS")).collect();
    d.days() as u64 * DAY_MS + ((p[0] * 60 + p[1]) * 60 + p[2]) * 1000 + ms.parse::<u64>().expect("milliseconds")
}

/// The value of the key with id `id` (ids here are alphanumeric).
fn value(id: &str) -> String {
    format!("{id}{}", "v".repeat(40 - id.len()))
}

/// A catalog from YAML, its plans created at `created_ms`.
fn catalog(yaml: &str, created_ms: u64) -> Catalog {
    let data = file::parse("usage.yaml", yaml, created_ms).unwrap_or_else(|e| panic!("{e}"));
    Catalog::compile(data).expect("the catalog compiles")
}

/// The catalog as the Admin service has it (records and indexes), for the
/// usage calls.
fn service(yaml: &str, created_ms: u64) -> Arc<CatalogService> {
    let data = file::parse("usage.yaml", yaml, created_ms).unwrap_or_else(|e| panic!("{e}"));
    CatalogService::memory(data).expect("the catalog compiles")
}

fn limiter(store: &Store, yaml: &str, created_ms: u64, keys: Keys) -> Limiter<Store> {
    Limiter::new(CatalogHandle::new(catalog(yaml, created_ms)), store.clone(), keys, None)
}

/// One plan `p` with the given quota on stage `shop/prod`, and key `k1` in it.
fn one_plan(quota: &str) -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
usage_plans:
  - id: p
    name: P
    quota: {quota}
    api_stages:
      - stage: shop/prod
api_keys:
  - id: k1
    name: one
    value: {}
    usage_plans: [p]
"#,
        value("k1")
    )
}

/// Authorize: key `key_id` calls `/items/GET` of `stage`.
async fn call_on(l: &Limiter<Store>, key_id: &str, stage: &str, cost: u64) -> Decision {
    let v = value(key_id);
    l.authorize(Request { api_key: Some(&v), stage, method: "/items/GET", cost }).await.expect("authorize answers")
}

async fn call(l: &Limiter<Store>, key_id: &str) -> Decision {
    call_on(l, key_id, "shop/prod", 1).await
}

/// Calls (cost 1) until the first denial, at most `max`; returns how many
/// were allowed and the denial.
async fn allowed_until_denied(l: &Limiter<Store>, key_id: &str, stage: &str, max: u64) -> (u64, Decision) {
    for i in 0..max {
        let d = call_on(l, key_id, stage, 1).await;
        if !d.allowed {
            return (i, d);
        }
    }
    panic!("{max} calls of {key_id} on {stage} were all allowed");
}

/// The memory store on a clock the test moves.
struct Mem {
    clock: Arc<ManualClock>,
    store: Store,
}

impl Mem {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(0));
        let store = Store::Memory(Arc::new(MemoryStore::with_clock(clock.clone())));
        Self { clock, store }
    }

    /// Sets the clock to `ms`.
    fn set_ms(&self, ms: u64) -> u64 {
        self.clock.set_us(ms * 1000);
        ms
    }

    /// Sets the clock to a written instant (see [`t`]).
    fn set(&self, at: &str) -> u64 {
        self.set_ms(t(at))
    }
}

/// The Redis store on `server`, once it answers.
async fn redis_store(server: &RedisServer) -> Store {
    let store = Store::Redis(Arc::new(RedisStore::open(RedisSettings::new(&server.url())).expect("open")));
    for _ in 0..200 {
        if store.is_ready() {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the Redis store is not ready; log:\n{}", server.log());
}

/// A plain connection, for writing records and reading TTLs.
async fn redis_conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).expect("client");
    client.get_multiplexed_async_connection().await.expect("connect to the test Redis")
}

/// The Redis server's clock (what the scripts decide by), ms since the epoch.
async fn redis_now_ms(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.expect("TIME");
    s * 1000 + us / 1000
}

/// True (with a message) when less than `margin_ms` is left of the `period`
/// containing `now_ms`: a test that needs the period to last should not run.
fn too_close_to_period_end(now_ms: u64, period: Period, margin_ms: u64, test: &str) -> bool {
    let end = period_bounds_ms(period, now_ms).1;
    let close = end - now_ms < margin_ms;
    if close {
        eprintln!(
            "SKIPPED {test}: Redis's clock is {} s before the {period} period ends (UTC); this test needs the \
             period to last. Run it again after the boundary.",
            (end - now_ms) / 1000
        );
    }
    close
}

/// Sets the quota field (`DAY:USED`) of a key's state hash.
async fn set_quota(c: &mut redis::aio::MultiplexedConnection, state: &str, value: &str) {
    redis::cmd("HSET").arg(state).arg("q").arg(value).query_async::<()>(c).await.expect("HSET");
}

async fn pexpiretime(c: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME").arg(key).query_async(c).await.expect("PEXPIRETIME")
}

/// GetUsage's answer in a comparable shape: per key, `(used, remaining)` per day.
type Days = Vec<(u64, Option<u64>)>;

#[derive(Debug, PartialEq)]
struct Answer {
    start: String,
    end: String,
    items: BTreeMap<String, Days>,
    position: String,
}

fn answer(u: pb::Usage) -> Answer {
    Answer {
        start: u.start_date,
        end: u.end_date,
        items: u
            .items
            .into_iter()
            .map(|(k, ku)| (k, ku.days.into_iter().map(|d| (d.used, d.remaining)).collect()))
            .collect(),
        position: u.position,
    }
}

/// Days of a plan with a quota, from `(used, remaining)` pairs.
fn q(days: &[(u64, u64)]) -> Days {
    days.iter().map(|&(u, r)| (u, Some(r))).collect()
}

fn usage_req(plan: &str, start: &str, end: &str, key: Option<&str>, limit: u32, position: &str) -> pb::GetUsageRequest {
    pb::GetUsageRequest {
        usage_plan_id: plan.into(),
        start_date: start.into(),
        end_date: end.into(),
        key_id: key.map(str::to_string),
        limit,
        position: position.into(),
    }
}

/// The field of an INVALID_ARGUMENT, or a panic naming what came instead.
fn invalid_field<T: std::fmt::Debug>(r: Result<T, AdminError>) -> String {
    match r {
        Err(AdminError::Invalid(i)) => i.field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Period boundaries and the offset, on the memory store's manual clock
// ---------------------------------------------------------------------------

/// A `period` plan's quota (3) is used up at `use_up_at` and stays used up
/// at each of `still` and at the period's last millisecond; at `next`, the
/// next period's first millisecond, it is whole again until `next_end`.
/// Every answer's `reset_ms` (and a denial's `retry_after_ms`) is the time
/// left until the period's end.
async fn crossing(period: &str, use_up_at: &str, still: &[&str], next: &str, next_end: &str) {
    const LIMIT: u64 = 3;
    let m = Mem::new();
    let l = limiter(
        &m.store,
        &one_plan(&format!("{{ limit: {LIMIT}, period: {period} }}")),
        t("2020-01-01"),
        Keys::default(),
    );
    let p: Period = period.parse().unwrap();
    // The library's calendar agrees with the dates written here.
    assert_eq!(period_bounds_ms(p, t(use_up_at)).1, t(next), "the {period} containing {use_up_at} ends at {next}");
    assert_eq!(period_bounds_ms(p, t(next)), (t(next), t(next_end)), "the {period} from {next} ends at {next_end}");
    let (end, next_end) = (t(next), t(next_end));

    let now = m.set(use_up_at);
    for i in 0..LIMIT {
        let d = call(&l, "k1").await;
        assert!(d.allowed, "{period} call {i} at {use_up_at}: {d:?}");
        let r = d.rate.expect("numbers");
        assert_eq!((r.kind, r.limit, r.remaining, r.reset_ms), (LimitKind::PlanQuota, LIMIT, LIMIT - 1 - i, end - now));
    }
    let mut denied_at: Vec<u64> = std::iter::once(now).chain(still.iter().map(|s| t(s))).collect();
    denied_at.push(end - 1);
    for at in denied_at {
        m.set_ms(at);
        let d = call(&l, "k1").await;
        let when = Date::of_ms(at);
        assert!(!d.allowed, "{period}: still used up at {when} +{} ms: {d:?}", at % DAY_MS);
        assert_eq!(d.reason, Reason::QuotaExceeded);
        assert_eq!(
            d.retry_after_ms,
            Some(end - at),
            "{period} at {when} +{} ms: retry when the period ends",
            at % DAY_MS
        );
        let r = d.rate.expect("numbers");
        assert_eq!((r.limit, r.remaining, r.reset_ms), (LIMIT, 0, end - at));
    }

    m.set_ms(end);
    for i in 0..LIMIT {
        let d = call(&l, "k1").await;
        assert!(d.allowed, "{period}: whole again at {next} (call {i}): {d:?}");
        let r = d.rate.expect("numbers");
        assert_eq!((r.limit, r.remaining, r.reset_ms), (LIMIT, LIMIT - 1 - i, next_end - end));
    }
    let d = call(&l, "k1").await;
    assert_eq!((d.reason, d.retry_after_ms), (Reason::QuotaExceeded, Some(next_end - end)), "{period} at {next}");
}

#[tokio::test]
async fn day_quota_resets_at_midnight_utc() {
    crossing("DAY", "2027-03-10T00:00:00.000", &["2027-03-10T12:00:00.000"], "2027-03-11T00:00:00.000", "2027-03-12")
        .await;
    crossing("DAY", "2027-12-31T08:00:00.000", &[], "2028-01-01T00:00:00.000", "2028-01-02").await;
}

#[tokio::test]
async fn week_quota_resets_on_monday_utc() {
    // Monday 2027-03-08 00:00 starts a week; Sunday 2027-03-14 is its last day.
    crossing(
        "WEEK",
        "2027-03-08T00:00:00.000",
        &["2027-03-10T12:00:00.000", "2027-03-14T00:00:00.000"],
        "2027-03-15T00:00:00.000",
        "2027-03-22",
    )
    .await;
    // A week across a year's end: Monday 2027-12-27 to Monday 2028-01-03.
    crossing("WEEK", "2027-12-27T00:00:00.000", &["2028-01-01T12:00:00.000"], "2028-01-03T00:00:00.000", "2028-01-10")
        .await;
}

#[tokio::test]
async fn month_quota_resets_on_the_first_utc() {
    // February of a non-leap year ends after the 28th.
    crossing("MONTH", "2027-02-01T00:00:00.000", &["2027-02-28T00:00:00.000"], "2027-03-01T00:00:00.000", "2027-04-01")
        .await;
    // A leap year: 2028-02-29 is still February's period.
    crossing(
        "MONTH",
        "2028-02-01T00:00:00.000",
        &["2028-02-28T23:59:59.999", "2028-02-29T00:00:00.000", "2028-02-29T12:00:00.000"],
        "2028-03-01T00:00:00.000",
        "2028-04-01",
    )
    .await;
    // A 30-day month, and a year's end.
    crossing("MONTH", "2027-04-15T00:00:00.000", &["2027-04-30T00:00:00.000"], "2027-05-01T00:00:00.000", "2027-06-01")
        .await;
    crossing("MONTH", "2027-12-15T00:00:00.000", &[], "2028-01-01T00:00:00.000", "2028-02-01").await;
}

/// A plan (limit 5, offset 2) created at `created`: at `first` (in the
/// period containing `created`) 3 are allowed; from `next` on, 5.
async fn offset_case(period: &str, created: &str, first: &str, next: &str) {
    let m = Mem::new();
    let yaml = one_plan(&format!("{{ limit: 5, period: {period}, offset: 2 }}"));
    let l = limiter(&m.store, &yaml, t(created), Keys::default());
    for (at, expected) in [(first, 3), (next, 5)] {
        m.set(at);
        let d = call(&l, "k1").await;
        assert!(d.allowed, "{period} created {created}, at {at}: {d:?}");
        assert_eq!(d.rate.unwrap().limit, expected, "{period} created {created}, at {at}: the limit in force");
        let (n, denial) = allowed_until_denied(&l, "k1", "shop/prod", 10).await;
        assert_eq!(n + 1, expected, "{period} created {created}, at {at}: requests allowed");
        assert_eq!((denial.reason, denial.rate.unwrap().limit), (Reason::QuotaExceeded, expected));
    }
}

#[tokio::test]
async fn offset_applies_only_in_the_period_of_the_plans_creation() {
    // Created mid-period: limit - offset until the period ends, then the full limit.
    offset_case("MONTH", "2027-03-15T10:00:00.000", "2027-03-20T00:00:00.000", "2027-04-01T00:00:00.000").await;
    offset_case("WEEK", "2027-03-10T10:00:00.000", "2027-03-14T23:59:59.999", "2027-03-15T00:00:00.000").await;
    offset_case("DAY", "2027-03-10T10:00:00.000", "2027-03-10T23:00:00.000", "2027-03-11T00:00:00.000").await;
    // Created at a period's first millisecond: that period is the first.
    offset_case("MONTH", "2027-04-01T00:00:00.000", "2027-04-01T00:00:00.000", "2027-05-01T00:00:00.000").await;
    // Created at a period's last millisecond: the next period is already full.
    offset_case("MONTH", "2027-03-31T23:59:59.999", "2027-03-31T23:59:59.999", "2027-04-01T00:00:00.000").await;
}

#[tokio::test]
async fn offset_belongs_to_the_period_of_the_creation_time_even_when_it_is_ahead() {
    // A plan stamped by a writer whose clock runs ahead (created 00:00:00.100
    // of April, while the store's clock still shows March): the offset is
    // April's, not March's too.
    let m = Mem::new();
    let l = limiter(
        &m.store,
        &one_plan("{ limit: 5, period: MONTH, offset: 2 }"),
        t("2027-04-01T00:00:00.100"),
        Keys::default(),
    );
    m.set("2027-03-31T23:59:59.990");
    let (n, d) = allowed_until_denied(&l, "k1", "shop/prod", 10).await;
    assert_eq!((n, d.rate.unwrap().limit), (5, 5), "March: the plan's creation period is April");
    m.set("2027-04-01T00:00:00.000");
    let (n, d) = allowed_until_denied(&l, "k1", "shop/prod", 10).await;
    assert_eq!((n, d.rate.unwrap().limit), (3, 3), "April: the offset applies");
}

#[tokio::test]
async fn memory_keeps_daily_usage_92_days() {
    let m = Mem::new();
    let yaml = one_plan("{ limit: 5, period: DAY }");
    let l = limiter(&m.store, &yaml, t("2020-01-01"), Keys::default());
    let cat = service(&yaml, t("2020-01-01"));
    let usage = UsageService::new(m.store.clone(), Keys::default());
    m.set("2027-03-10T12:00:00.000");
    assert!(call(&l, "k1").await.allowed);
    // Kept until 92 days after the end of its day.
    for (at, expected) in
        [(t("2027-03-11") + 92 * DAY_MS - 1, (1, Some(4))), (t("2027-03-11") + 92 * DAY_MS, (0, Some(5)))]
    {
        m.set_ms(at);
        let u = usage.get_usage(&cat, usage_req("p", "2027-03-10", "2027-03-10", None, 0, "")).await.unwrap();
        assert_eq!(answer(u).items["k1"], vec![expected], "at {} +{} ms", Date::of_ms(at), at % DAY_MS);
    }
}

// ---------------------------------------------------------------------------
// 2. Periods on Redis: counters written for chosen periods
// ---------------------------------------------------------------------------

/// Three plans, one per period, each on its own stage, all with key `k1`.
fn three_periods(limits: &str) -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: d
      - name: w
      - name: m
usage_plans:
  - {{ id: pd, name: D, quota: {{ {limits}, period: DAY }}, api_stages: [{{ stage: shop/d }}] }}
  - {{ id: pw, name: W, quota: {{ {limits}, period: WEEK }}, api_stages: [{{ stage: shop/w }}] }}
  - {{ id: pm, name: M, quota: {{ {limits}, period: MONTH }}, api_stages: [{{ stage: shop/m }}] }}
api_keys:
  - {{ id: k1, name: one, value: {}, usage_plans: [pd, pw, pm] }}
"#,
        value("k1")
    )
}

const PERIODS: [(&str, &str, Period); 3] =
    [("pd", "shop/d", Period::Day), ("pw", "shop/w", Period::Week), ("pm", "shop/m", Period::Month)];

#[tokio::test]
async fn redis_reads_only_the_current_periods_counter() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    let mut c = redis_conn(&server).await;
    let keys = Keys::default();
    let l = limiter(&store, &three_periods("limit: 5"), t("2020-01-01"), keys.clone());
    for (plan, stage, period) in PERIODS {
        let now = redis_now_ms(&mut c).await;
        if too_close_to_period_end(
            now,
            period,
            60_000,
            &format!("redis_reads_only_the_current_periods_counter ({period})"),
        ) {
            continue;
        }
        let (start, end) = period_bounds_ms(period, now);
        let state = keys.state("k1", plan);
        let start_day = (start / DAY_MS) as i64;
        // The quota is `DAY:USED` in the key's state hash, DAY the start of
        // the period it counts. The previous period's, used up: counts 0.
        let previous = period_bounds_ms(period, start - 1).0 / DAY_MS;
        set_quota(&mut c, &state, &format!("{previous}:5")).await;
        let d = call_on(&l, "k1", stage, 1).await;
        assert_eq!((d.allowed, d.rate.unwrap().remaining), (true, 4), "{period}: a new period: {d:?}");
        // A day inside the period that is not its start names no period: 0.
        if period != Period::Day {
            set_quota(&mut c, &state, &format!("{}:5", start_day + 1)).await;
            let d = call_on(&l, "k1", stage, 1).await;
            assert_eq!((d.allowed, d.rate.unwrap().remaining), (true, 4), "{period}: not this period: {d:?}");
        }
        // The current period at limit - 1: exactly one more.
        set_quota(&mut c, &state, &format!("{start_day}:4")).await;

        let before = redis_now_ms(&mut c).await;
        let d = call_on(&l, "k1", stage, 1).await;
        let after = redis_now_ms(&mut c).await;
        assert!(d.allowed, "{period}: one left in the current period: {d:?}");
        let r = d.rate.unwrap();
        assert_eq!((r.kind, r.limit, r.remaining), (LimitKind::PlanQuota, 5, 0), "{period}");
        assert!(
            (end - after..=end - before).contains(&r.reset_ms),
            "{period}: reset_ms {} is the time to the period's end",
            r.reset_ms
        );

        let before = redis_now_ms(&mut c).await;
        let d = call_on(&l, "k1", stage, 1).await;
        let after = redis_now_ms(&mut c).await;
        assert_eq!(d.reason, Reason::QuotaExceeded, "{period}: {d:?}");
        let retry = d.retry_after_ms.expect("retry after the period ends");
        assert!(
            (end - after..=end - before).contains(&retry),
            "{period}: retry_after_ms {retry} is the time to the period's end"
        );
        assert_eq!(d.rate.unwrap().reset_ms, retry);

        let q: String = redis::cmd("HGET").arg(&state).arg("q").query_async(&mut c).await.unwrap();
        assert_eq!(q, format!("{start_day}:5"), "{period}: the allowed call counted, the denied one did not");
        // The state hash lives at least until the period ends (and as long
        // as the usage it holds: 92 days after today).
        assert!(pexpiretime(&mut c, &state).await >= end as i64, "{period}: the quota outlives its period");
    }
}

#[tokio::test]
async fn redis_offset_by_creation_time() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    let mut c = redis_conn(&server).await;
    for (_, stage, period) in PERIODS {
        let now = redis_now_ms(&mut c).await;
        if too_close_to_period_end(now, period, 60_000, &format!("redis_offset_by_creation_time ({period})")) {
            continue;
        }
        let (start, end) = period_bounds_ms(period, now);
        let cases = [
            ("created in the previous period", start - 1, 5),
            ("created at this period's first ms", start, 3),
            ("created now", now, 3),
            ("created in the next period (a writer's clock ahead)", end, 5),
        ];
        for (i, (what, created, expected)) in cases.into_iter().enumerate() {
            // Each case counts under its own prefix.
            let l = limiter(&store, &three_periods("limit: 5, offset: 2"), created, Keys::new(&format!("c{i}:")));
            let (n, d) = allowed_until_denied(&l, "k1", stage, 10).await;
            assert_eq!((n, d.rate.unwrap().limit), (expected, expected), "{period}, {what}");
        }
    }
}

#[tokio::test]
async fn redis_counts_usage_in_the_decision() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    let mut c = redis_conn(&server).await;
    let now = redis_now_ms(&mut c).await;
    if too_close_to_period_end(now, Period::Day, 60_000, "redis_counts_usage_in_the_decision") {
        return;
    }
    let keys = Keys::default();
    let yaml = three_periods("limit: 5");
    let l = limiter(&store, &yaml, t("2020-01-01"), keys.clone());
    let today = Date::of_ms(now);
    let (week_start, week_end) = period_bounds_ms(Period::Week, now);

    assert!(call_on(&l, "k1", "shop/w", 2).await.allowed);
    assert!(call_on(&l, "k1", "shop/w", 1).await.allowed);
    let state = keys.state("k1", "pw");
    let week_day = (week_start / DAY_MS) as i64;
    let fields = |c: &mut redis::aio::MultiplexedConnection| {
        let (mut c, state) = (c.clone(), state.clone());
        async move {
            let (u, q): (String, String) =
                redis::cmd("HMGET").arg(&state).arg("u").arg("q").query_async(&mut c).await.unwrap();
            (u, q)
        }
    };
    let day = today.days();
    assert_eq!(
        fields(&mut c).await,
        (format!("{day}:3:3"), format!("{week_day}:3")),
        "u: today, used today, quota used this week; q: the week's start and its quota used"
    );

    let (n, d) = allowed_until_denied(&l, "k1", "shop/w", 10).await;
    assert_eq!((n, d.reason), (2, Reason::QuotaExceeded));
    assert!(!call_on(&l, "k1", "shop/w", 1).await.allowed);
    assert_eq!(fields(&mut c).await, (format!("{day}:5:5"), format!("{week_day}:5")), "denied requests count nothing");

    // Kept at least until its usage is no longer readable (the start of
    // day + 93), and at most two days longer (its expiry is moved by days).
    let kept = (day as u64 + 93) * DAY_MS;
    let expires = pexpiretime(&mut c, &state).await as u64;
    assert!((kept..=kept + 2 * DAY_MS).contains(&expires), "the state hash expires at {expires}, kept {kept}");
    assert!(week_end <= expires, "the quota outlives its week");

    // GetUsage reads what the script wrote: earlier days of this week had the full quota.
    let usage = UsageService::new(store, keys);
    let first = Date::of_ms(week_start).to_string();
    let u = usage
        .get_usage(&service(&yaml, t("2020-01-01")), usage_req("pw", &first, &today.to_string(), None, 0, ""))
        .await;
    let mut expected = vec![(0, Some(5)); (today.days() - week_start as i64 / DAY_MS as i64) as usize];
    expected.push((5, Some(0)));
    assert_eq!(answer(u.unwrap()).items["k1"], expected);
}

// ---------------------------------------------------------------------------
// 3. GetUsage: the same answers from both stores
// ---------------------------------------------------------------------------

/// Plan `m` (100 a MONTH, offset 10, created 2027-01-10) on `shop/prod`, plan
/// `free` (no quota) on `shop/beta`. k3 joins `m` on 2027-01-29, k4 leaves it
/// on 2027-02-03.
fn billing(k3_in: bool, k4_in: bool) -> String {
    let sub = |on: bool| if on { "[m]" } else { "[]" };
    let mut y = String::from(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
      - name: beta
usage_plans:
  - id: m
    name: Monthly
    quota: { limit: 100, period: MONTH, offset: 10 }
    api_stages: [{ stage: shop/prod }]
  - id: free
    name: Free
    api_stages: [{ stage: shop/beta }]
api_keys:
"#,
    );
    for (id, plans) in
        [("k1", "[m, free]"), ("k2", "[m]"), ("k3", sub(k3_in)), ("k4", sub(k4_in)), ("k5", "[m]"), ("k6", "[m]")]
    {
        y.push_str(&format!("  - {{ id: {id}, name: {id}, value: {}, usage_plans: {plans} }}\n", value(id)));
    }
    y
}

const BILLING_CREATED: &str = "2027-01-10T09:00:00.000";
const K3_JOINS: &str = "2027-01-29T12:00:00.000";
const K4_LEAVES: &str = "2027-02-03T12:00:00.000";

/// The traffic: (when, key, stage, cost, expected reason).
const TRAFFIC: &[(&str, &str, &str, u64, Reason)] = &[
    ("2027-01-20T10:00:00.000", "k1", "shop/prod", 5, Reason::Ok), // before the range, same period
    ("2027-01-25T00:00:00.000", "k4", "shop/prod", 1, Reason::Ok), // the range's first ms
    ("2027-01-26T08:00:00.000", "k1", "shop/prod", 2, Reason::Ok),
    ("2027-01-26T09:00:00.000", "k1", "shop/beta", 2, Reason::Ok), // plan free
    ("2027-01-26T23:59:59.999", "k1", "shop/prod", 1, Reason::Ok),
    ("2027-01-28T12:00:00.000", "k3", "shop/prod", 4, Reason::NotSubscribed), // not in m yet
    ("2027-01-30T12:00:00.000", "k3", "shop/prod", 4, Reason::Ok),
    ("2027-01-31T23:59:59.999", "k5", "shop/prod", 90, Reason::Ok), // all of January's 100 - 10
    ("2027-01-31T23:59:59.999", "k5", "shop/prod", 1, Reason::QuotaExceeded),
    ("2027-02-01T00:00:00.000", "k5", "shop/prod", 1, Reason::Ok),
    ("2027-02-02T12:00:00.000", "k1", "shop/prod", 7, Reason::Ok),
    ("2027-02-02T13:00:00.000", "k4", "shop/prod", 2, Reason::Ok),
    ("2027-02-04T12:00:00.000", "k4", "shop/prod", 1, Reason::NotSubscribed), // left m
];

/// The daily records that traffic leaves: (key, plan, day, n, q), as
/// decide.lua writes them (`n` used that day, `q` quota used in the period
/// after the day's last call).
const RECORDS: &[(&str, &str, &str, i64, Option<i64>)] = &[
    ("k1", "m", "2027-01-20", 5, Some(5)),
    ("k1", "m", "2027-01-26", 3, Some(8)),
    ("k1", "m", "2027-02-02", 7, Some(7)),
    ("k1", "free", "2027-01-26", 2, None),
    ("k3", "m", "2027-01-30", 4, Some(4)),
    ("k4", "m", "2027-01-25", 1, Some(1)),
    ("k4", "m", "2027-02-02", 2, Some(2)),
    ("k5", "m", "2027-01-31", 90, Some(90)),
    ("k5", "m", "2027-02-01", 1, Some(1)),
];

/// Memory: the traffic at its instants, with the catalog changing as it did.
async fn billing_on_memory() -> Store {
    let m = Mem::new();
    let created = t(BILLING_CREATED);
    let handle = CatalogHandle::new(catalog(&billing(false, true), created));
    let l = Limiter::new(handle.clone(), m.store.clone(), Keys::default(), None);
    for &(at, key, stage, cost, reason) in TRAFFIC {
        let now = m.set(at);
        handle.store(catalog(&billing(now >= t(K3_JOINS), now < t(K4_LEAVES)), created));
        let d = call_on(&l, key, stage, cost).await;
        assert_eq!(d.reason, reason, "{key} at {at}: {d:?}");
    }
    // Queried on 2027-02-05 (within the 92 days the records are kept).
    m.set("2027-02-05T18:00:00.000");
    m.store
}

/// Redis: the same records, written directly.
async fn billing_on_redis(server: &RedisServer) -> Store {
    let store = redis_store(server).await;
    let mut c = redis_conn(server).await;
    let keys = Keys::default();
    // Earlier days are fields hYYYYMMDD of the state hash, `N` or `N:Q`.
    for &(key, plan, day, n, q) in RECORDS {
        let value = match q {
            Some(q) => format!("{n}:{q}"),
            None => n.to_string(),
        };
        let field = format!("h{}", Date::parse(day).unwrap().compact());
        redis::cmd("HSET").arg(keys.state(key, plan)).arg(field).arg(value).query_async::<()>(&mut c).await.unwrap();
    }
    store
}

#[tokio::test]
async fn get_usage_gives_the_same_answers_on_both_stores() {
    let server = RedisServer::start();
    let stores = [("memory", billing_on_memory().await), ("redis", billing_on_redis(&server).await)];

    // The stores hold the same records: every key, both plans, every day around the range.
    let keys = Keys::default();
    let mut names = Vec::new();
    for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        for plan in ["m", "free"] {
            names.push(keys.usage(key, plan));
        }
    }
    let days: Vec<i64> =
        (t("2027-01-15").div_euclid(DAY_MS)..=t("2027-02-06").div_euclid(DAY_MS)).map(|d| d as i64).collect();
    let (mem, red) = (
        stores[0].1.read_usage(names.clone(), days.clone()).await.unwrap(),
        stores[1].1.read_usage(names, days).await.unwrap(),
    );
    assert_eq!(mem, red, "the memory store's records are decide.lua's");
    assert_eq!(mem.iter().flatten().count(), RECORDS.len());

    let cat = service(&billing(true, false), t(BILLING_CREATED));
    let (from, to) = ("2027-01-25", "2027-02-05");
    // 12 days: Jan 25..31 (limit 100 - offset 10 = 90: the plan's first
    // month), Feb 1..5 (the full 100).
    let k1 = q(&[
        (0, 85),
        (3, 82),
        (0, 82),
        (0, 82),
        (0, 82),
        (0, 82),
        (0, 82),
        (0, 100),
        (7, 93),
        (0, 93),
        (0, 93),
        (0, 93),
    ]);
    let idle = q(&[
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 100),
        (0, 100),
        (0, 100),
        (0, 100),
        (0, 100),
    ]);
    // k3 joined on Jan 29: the days before show nothing used and the full quota.
    let k3 = q(&[
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (4, 86),
        (0, 86),
        (0, 100),
        (0, 100),
        (0, 100),
        (0, 100),
        (0, 100),
    ]);
    let k4 = q(&[
        (1, 89),
        (0, 89),
        (0, 89),
        (0, 89),
        (0, 89),
        (0, 89),
        (0, 89),
        (0, 100),
        (2, 98),
        (0, 98),
        (0, 98),
        (0, 98),
    ]);
    let k5 = q(&[
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (0, 90),
        (90, 0),
        (1, 99),
        (0, 99),
        (0, 99),
        (0, 99),
        (0, 99),
    ]);
    let all: BTreeMap<String, Days> = [("k1", &k1), ("k2", &idle), ("k3", &k3), ("k5", &k5), ("k6", &idle)]
        .map(|(k, d)| (k.to_string(), d.clone()))
        .into();

    let mut answers: Vec<Vec<Answer>> = Vec::new();
    for (name, store) in &stores {
        let svc = UsageService::new(store.clone(), Keys::default());
        let get = |r: pb::GetUsageRequest| {
            let svc = svc.clone();
            let cat = &cat;
            async move { answer(svc.get_usage(cat, r).await.unwrap_or_else(|e| panic!("{name}: {e}"))) }
        };
        let mut mine = Vec::new();

        // Every key of the plan (k4 has left it), one page.
        let a = get(usage_req("m", from, to, None, 0, "")).await;
        assert_eq!((a.start.as_str(), a.end.as_str(), a.position.as_str()), (from, to, ""), "{name}");
        assert_eq!(a.items, all, "{name}: every key of plan m");
        mine.push(a);

        // Pages of 2 keys: 3 pages, chained by `position`.
        let mut position = String::new();
        let mut pages = Vec::new();
        loop {
            let a = get(usage_req("m", from, to, None, 2, &position)).await;
            pages.push(a.items.keys().cloned().collect::<Vec<_>>());
            for (k, days) in &a.items {
                assert_eq!(days, &all[k], "{name}: {k} on a page");
            }
            position = a.position.clone();
            mine.push(a);
            if position.is_empty() {
                break;
            }
            assert!(pages.len() < 10, "{name}: pagination does not end");
        }
        assert_eq!(pages, [vec!["k1", "k2"], vec!["k3", "k5"], vec!["k6"]], "{name}: pages");

        // A key that left the plan, asked for by id: its history.
        let a = get(usage_req("m", from, to, Some("k4"), 0, "")).await;
        assert_eq!(a.items, BTreeMap::from([("k4".to_string(), k4.clone())]), "{name}: k4 by id");
        mine.push(a);

        // A range starting mid-period carries the period's earlier usage in.
        let a = get(usage_req("m", "2027-02-03", "2027-02-04", Some("k1"), 0, "")).await;
        assert_eq!(a.items["k1"], q(&[(0, 93), (0, 93)]), "{name}: carried from Feb 2");
        mine.push(a);

        // A plan without quota: no remaining.
        let a = get(usage_req("free", "2027-01-25", "2027-01-27", None, 0, "")).await;
        assert_eq!(
            a.items,
            BTreeMap::from([("k1".to_string(), vec![(0, None), (2, None), (0, None)])]),
            "{name}: free"
        );
        mine.push(a);

        // The offset belongs to the plan's first month only: not to the
        // month before the plan existed, nor to the one after.
        let a = get(usage_req("m", "2026-12-30", "2027-01-02", Some("k2"), 0, "")).await;
        assert_eq!(a.items["k2"], q(&[(0, 100), (0, 100), (0, 90), (0, 90)]), "{name}: December has no offset");
        mine.push(a);

        answers.push(mine);
    }
    assert_eq!(answers[0], answers[1], "memory and Redis answer alike, positions included");
}

#[tokio::test]
async fn get_usage_refuses_bad_ranges_and_pages() {
    let server = RedisServer::start();
    // 26 keys in plan p, for the default page size.
    let mut yaml = one_plan("{ limit: 5, period: DAY }");
    for i in 0..25 {
        let id = format!("x{i:02}");
        yaml.push_str(&format!("  - {{ id: {id}, name: {id}, value: {}, usage_plans: [p] }}\n", value(&id)));
    }
    let cat = service(&yaml, t("2020-01-01"));
    for (name, store) in [("memory", Mem::new().store), ("redis", redis_store(&server).await)] {
        let svc = UsageService::new(store, Keys::default());
        let get = |r: pb::GetUsageRequest| svc.get_usage(&cat, r);
        let field = |r: pb::GetUsageRequest| async { invalid_field(get(r).await) };

        assert_eq!(
            field(usage_req("p", "2027-02-05", "2027-01-25", None, 0, "")).await,
            "end_date",
            "{name}: reversed"
        );
        // 90 days is the most: Jan 1..Mar 31 2027 passes, one more day does not.
        assert_eq!(
            get(usage_req("p", "2027-01-01", "2027-03-31", Some("k1"), 0, "")).await.unwrap().items["k1"].days.len(),
            90
        );
        assert_eq!(field(usage_req("p", "2027-01-01", "2027-04-01", None, 0, "")).await, "end_date", "{name}: 91 days");
        assert_eq!(field(usage_req("p", "2020-01-01", "2027-04-01", None, 0, "")).await, "end_date", "{name}: years");
        for bad in [
            "",
            "2027-1-05",
            "2027/01/05",
            "2027-02-29",
            "2027-13-01",
            "2027-01-05T00:00",
            "27-01-05",
            "2027-+1-05",
            "+027-01-05",
            "2027-01-+5",
            "２０２７-01-05",
        ] {
            assert_eq!(field(usage_req("p", bad, "2027-01-05", None, 0, "")).await, "start_date", "{name}: {bad:?}");
            assert_eq!(field(usage_req("p", "2027-01-05", bad, None, 0, "")).await, "end_date", "{name}: {bad:?}");
        }
        assert_eq!(field(usage_req("p", "2027-01-05", "2027-01-05", None, 501, "")).await, "limit", "{name}");
        assert_eq!(field(usage_req("p", "2027-01-05", "2027-01-05", None, 0, "not a position")).await, "position");
        assert_eq!(field(usage_req("p", "2027-01-05", "2027-01-05", None, 0, "ff")).await, "position", "not UTF-8");
        assert_eq!(field(usage_req("", "2027-01-05", "2027-01-05", None, 0, "")).await, "usage_plan_id");
        assert!(matches!(
            get(usage_req("nope", "2027-01-05", "2027-01-05", None, 0, "")).await,
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            get(usage_req("p", "2027-01-05", "2027-01-05", Some("nokey"), 0, "")).await,
            Err(AdminError::NotFound(_))
        ));

        // limit unset (0) is the default page of 25; 500 is allowed.
        let first = get(usage_req("p", "2027-01-05", "2027-01-05", None, 0, "")).await.unwrap();
        assert_eq!(first.items.len(), 25, "{name}: default page");
        let rest = get(usage_req("p", "2027-01-05", "2027-01-05", None, 0, &first.position)).await.unwrap();
        assert_eq!((rest.items.len(), rest.position.as_str()), (1, ""), "{name}: last page");
        let all = get(usage_req("p", "2027-01-05", "2027-01-05", None, 500, "")).await.unwrap();
        assert_eq!((all.items.len(), all.position.as_str()), (26, ""), "{name}: limit 500");
    }
}

// ---------------------------------------------------------------------------
// 4. UpdateUsage
// ---------------------------------------------------------------------------

fn update_req(plan: &str, key: &str, remaining: i64) -> pb::UpdateUsageRequest {
    pb::UpdateUsageRequest { usage_plan_id: plan.into(), key_id: key.into(), remaining }
}

/// Plan `p` with the given quota and key k1 on `shop/prod`; plan `free` (no
/// quota) on `shop/beta` with k1 and k2.
fn grants(quota: &str) -> String {
    format!(
        r#"
apis:
  - id: shop
    stages:
      - name: prod
      - name: beta
usage_plans:
  - {{ id: p, name: P, quota: {quota}, api_stages: [{{ stage: shop/prod }}] }}
  - {{ id: free, name: Free, api_stages: [{{ stage: shop/beta }}] }}
api_keys:
  - {{ id: k1, name: one, value: {}, usage_plans: [p, free] }}
  - {{ id: k2, name: two, value: {}, usage_plans: [free] }}
"#,
        value("k1"),
        value("k2")
    )
}

#[tokio::test]
async fn update_usage_grants_for_the_current_period_only() {
    let m = Mem::new();
    let yaml = grants("{ limit: 10, period: MONTH }");
    let l = limiter(&m.store, &yaml, t("2020-01-01"), Keys::default());
    let cat = service(&yaml, t("2020-01-01"));
    let usage = UsageService::new(m.store.clone(), Keys::default());

    m.set("2027-03-10T12:00:00.000");
    let (n, _) = allowed_until_denied(&l, "k1", "shop/prod", 20).await;
    assert_eq!(n, 10);
    // A grant beyond the limit (API Gateway's temporary extension).
    let u = usage.update_usage(&cat, update_req("p", "k1", 25)).await.unwrap();
    assert_eq!((u.remaining, u.period_end_ms), (25, t("2027-04-01")));
    let d = call(&l, "k1").await;
    assert!(d.allowed);
    assert_eq!((d.rate.unwrap().limit, d.rate.unwrap().remaining), (10, 24), "the limit stays; remaining is the grant");
    let (n, _) = allowed_until_denied(&l, "k1", "shop/prod", 40).await;
    assert_eq!(n, 24);
    m.set("2027-03-31T23:59:59.999");
    assert!(!call(&l, "k1").await.allowed, "the grant is used up for the rest of March");
    let a = answer(usage.get_usage(&cat, usage_req("p", "2027-03-10", "2027-03-11", None, 0, "")).await.unwrap());
    assert_eq!(a.items["k1"], q(&[(35, 0), (0, 0)]));

    // The next period starts from the limit; the grant is gone.
    m.set("2027-04-01T00:00:00.000");
    let (n, _) = allowed_until_denied(&l, "k1", "shop/prod", 40).await;
    assert_eq!(n, 10);

    // Lowering: remaining 2 in a fresh period lets exactly 2 through, and
    // GetUsage shows it from that day on.
    m.set("2027-05-03T08:00:00.000");
    usage.update_usage(&cat, update_req("p", "k1", 2)).await.unwrap();
    let a = answer(usage.get_usage(&cat, usage_req("p", "2027-05-02", "2027-05-03", None, 0, "")).await.unwrap());
    assert_eq!(a.items["k1"], q(&[(0, 10), (0, 2)]));
    let (n, _) = allowed_until_denied(&l, "k1", "shop/prod", 40).await;
    assert_eq!(n, 2);
    // Remaining 0 stops the key at once.
    m.set("2027-06-01T00:00:00.000");
    usage.update_usage(&cat, update_req("p", "k1", 0)).await.unwrap();
    assert_eq!(call(&l, "k1").await.reason, Reason::QuotaExceeded);

    // Refusals.
    assert_eq!(invalid_field(usage.update_usage(&cat, update_req("p", "k1", -1)).await), "remaining");
    assert_eq!(invalid_field(usage.update_usage(&cat, update_req("p", "", 1)).await), "key_id");
    assert_eq!(invalid_field(usage.update_usage(&cat, update_req("", "k1", 1)).await), "usage_plan_id");
    let r = usage.update_usage(&cat, update_req("free", "k1", 5)).await;
    assert!(matches!(r, Err(AdminError::Conflict(ref m)) if m.contains("no quota")), "{r:?}");
    let r = usage.update_usage(&cat, update_req("p", "k2", 5)).await;
    assert!(matches!(r, Err(AdminError::NotFound(ref m)) if m.contains("not in usage plan")), "{r:?}");
    assert!(matches!(usage.update_usage(&cat, update_req("p", "nokey", 5)).await, Err(AdminError::NotFound(_))));
    assert!(matches!(usage.update_usage(&cat, update_req("nope", "k1", 5)).await, Err(AdminError::NotFound(_))));
}

#[tokio::test]
async fn update_usage_with_huge_grants_on_both_stores() {
    let server = RedisServer::start();
    let yaml = grants("{ limit: 10, period: MONTH }");
    let cat = service(&yaml, t("2020-01-01"));
    let mem = Mem::new();
    mem.set_ms(tollgate::model::now_ms());
    for (name, store) in [("memory", mem.store.clone()), ("redis", redis_store(&server).await)] {
        let usage = UsageService::new(store.clone(), Keys::default());
        let l = limiter(&store, &yaml, t("2020-01-01"), Keys::default());
        let today = Date::of_ms(tollgate::model::now_ms()).to_string();
        for remaining in [1_000_000_000_000, (1 << 53) - 1] {
            let u = usage.update_usage(&cat, update_req("p", "k1", remaining)).await.unwrap();
            assert_eq!(u.remaining, remaining as u64, "{name}");
            let d = call(&l, "k1").await;
            assert_eq!(d.rate.unwrap().remaining, remaining as u64 - 1, "{name}: {d:?}");
            let a = answer(usage.get_usage(&cat, usage_req("p", &today, &today, None, 0, "")).await.unwrap());
            assert_eq!(a.items["k1"][0].1, Some(remaining as u64 - 1), "{name}");
        }
        for remaining in [1 << 53, i64::MAX] {
            let r = usage.update_usage(&cat, update_req("p", "k1", remaining)).await;
            assert_eq!(invalid_field(r), "remaining", "{name}: {remaining} is more than a counter holds exactly");
        }
    }
}

/// Starts `n` replicas of one Redis with the catalog, and waits until each serves.
async fn replicas(redis: &RedisServer, yaml: &str, n: usize) -> (tempfile::TempDir, Vec<TollgateProcess>) {
    let (dir, path) = write_temp("catalog.yaml", yaml);
    let (path, url) = (path.to_str().unwrap().to_string(), redis.url());
    let procs: Vec<TollgateProcess> = (0..n)
        .map(|_| {
            TollgateProcess::start_with_env(
                &["--config", &path, "--redis-url", &url],
                &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
            )
        })
        .collect();
    for p in &procs {
        p.wait_serving().await;
    }
    (dir, procs)
}

async fn authorize(p: &TollgateProcess, key_id: &str) -> pb::AuthorizeResponse {
    let mut c = p.authorizer().await;
    c.authorize(req(Some(&value(key_id)), "shop/prod", "/items/GET", None)).await.expect("authorize").into_inner()
}

fn assert_code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, starts: &str) {
    let e = r.expect_err("an error status");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().starts_with(starts), "message {:?} should start with {starts:?}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_usage_on_one_replica_takes_effect_on_every_replica() {
    let redis = RedisServer::start();
    let mut c = redis_conn(&redis).await;
    if too_close_to_period_end(redis_now_ms(&mut c).await, Period::Month, 60_000, "update_usage_on_one_replica...") {
        return;
    }
    let (_dir, procs) = replicas(&redis, &grants("{ limit: 3, period: MONTH }"), 2).await;
    let (a, b) = (&procs[0], &procs[1]);
    for _ in 0..3 {
        assert!(authorize(b, "k1").await.allowed);
    }
    let denied = authorize(b, "k1").await;
    assert_eq!(denied.http_status, 429, "{denied:?}");

    // A grant beyond the limit, through A's Admin service...
    let mut admin_a = a.admin().await;
    let now = redis_now_ms(&mut c).await;
    let u = admin_a.update_usage(update_req("p", "k1", 5)).await.expect("UpdateUsage").into_inner();
    assert_eq!((u.usage_plan_id.as_str(), u.key_id.as_str(), u.remaining), ("p", "k1", 5));
    assert_eq!(u.period_end_ms, period_bounds_ms(Period::Month, now).1, "the grant lasts until the month ends");
    // ... is what B sees: at once in Redis; B's deny cache, which holds the
    // denial above, forgets it when B reads the record UpdateUsage appended
    // to the change log (docs/semantics.md, "The local deny cache"). Denials
    // meanwhile consume nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let r = authorize(b, "k1").await;
        if r.allowed || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(first.allowed, "{first:?}");
    let r = first.rate_limit.expect("numbers");
    assert_eq!((r.limit, r.remaining), (3, 4));
    // The rest of the grant, shared by both replicas.
    let mut allowed = 1;
    for i in 0..10 {
        if authorize(if i % 2 == 0 { a } else { b }, "k1").await.allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "exactly the grant, across both replicas");

    // Both replicas report it.
    let today = Date::of_ms(now).to_string();
    for p in [a, b] {
        let u = p.admin().await.get_usage(usage_req("p", &today, &today, None, 0, "")).await.unwrap().into_inner();
        assert_eq!(answer(u).items["k1"], q(&[(8, 0)]), "3 + a grant of 5, none left");
    }

    // Refusals, over gRPC.
    assert_code(admin_a.update_usage(update_req("p", "k1", -1)).await, Code::InvalidArgument, "remaining");
    assert_code(admin_a.update_usage(update_req("free", "k1", 5)).await, Code::FailedPrecondition, "usage plan");
    assert_code(admin_a.update_usage(update_req("p", "k2", 5)).await, Code::NotFound, "API key");
    assert_code(admin_a.update_usage(update_req("p", "nokey", 5)).await, Code::NotFound, "API key");
    assert_code(admin_a.update_usage(update_req("nope", "k1", 5)).await, Code::NotFound, "usage plan");
    assert_code(
        admin_a.get_usage(usage_req("p", &today, "2027-1-1", None, 0, "")).await,
        Code::InvalidArgument,
        "end_date",
    );
    // Nothing changed by the refusals.
    assert_eq!(authorize(b, "k1").await.http_status, 429);
}

// ---------------------------------------------------------------------------
// 5. Exactness across replicas
// ---------------------------------------------------------------------------

/// `callers` concurrent callers spread over the replicas, until `stop_after`
/// denials were seen or the deadline; returns (allowed, denied).
async fn hammer(procs: &[TollgateProcess], callers: usize, deadline: Instant, stop_after: u64) -> (u64, u64) {
    let mut clients = Vec::new();
    for p in procs {
        clients.push(p.authorizer().await);
    }
    let (allowed, denied) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let key = value("k1");
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut c = clients[i % clients.len()].clone();
        let (allowed, denied, key) = (allowed.clone(), denied.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline && denied.load(Ordering::Relaxed) < stop_after {
                let r = c.authorize(req(Some(&key), "shop/prod", "/items/GET", None)).await.expect("authorize");
                let r = r.into_inner();
                if r.allowed {
                    allowed.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(r.http_status, 429, "{r:?}");
                    denied.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (allowed.load(Ordering::Relaxed), denied.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_daily_quota_across_three_replicas_and_get_usage_agrees() {
    const TEST: &str = "exactly_the_daily_quota_across_three_replicas_and_get_usage_agrees";
    let redis = RedisServer::start();
    let mut c = redis_conn(&redis).await;
    let before = redis_now_ms(&mut c).await;
    if too_close_to_period_end(before, Period::Day, 120_000, TEST) {
        return;
    }
    let (_dir, procs) = replicas(&redis, &grants("{ limit: 1000, period: DAY }"), 3).await;
    let (allowed, denied) = hammer(&procs, 64, Instant::now() + Duration::from_secs(90), 128).await;
    let after = redis_now_ms(&mut c).await;
    if Date::of_ms(before) != Date::of_ms(after) {
        eprintln!("SKIPPED {TEST}: the run straddled midnight UTC, so the quota reset mid-run");
        return;
    }
    eprintln!("{TEST}: allowed {allowed}, denied {denied}");
    assert!(denied >= 128, "the run ended by time before the quota was used up: allowed {allowed}, denied {denied}");
    assert_eq!(allowed, 1000, "exactly the quota (denied {denied})");
    let today = Date::of_ms(before).to_string();
    for p in &procs {
        let u = p.admin().await.get_usage(usage_req("p", &today, &today, None, 0, "")).await.unwrap().into_inner();
        assert_eq!(answer(u).items["k1"], q(&[(1000, 0)]), "GetUsage on {}", p.addr);
    }
}

// ---------------------------------------------------------------------------
// The Lua calendar is the Rust calendar
// ---------------------------------------------------------------------------

/// Runs after calendar.lua: for each day of ARGV[1]..=ARGV[2], one line
/// `day days_from_civil(civil(day)) ymd(day)` then, per period D, W, M,
/// `start_ms end_ms suffix`, with `today` set to that day.
const LUA_PROBE: &str = r#"
local out = {}
for day = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  today = day
  periods = {}
  local y, m, d = civil(day)
  local line = { string.format('%d %d %s', day, days_from_civil(y, m, d), ymd(day)) }
  for _, code in ipairs({ 'D', 'W', 'M' }) do
    local p = period(code)
    line[#line + 1] = string.format('%.0f %.0f %s', p[1], p[2], p[3])
  end
  out[#out + 1] = table.concat(line, ' ')
end
return table.concat(out, '\n')
"#;

#[tokio::test]
async fn lua_calendar_agrees_with_the_rust_calendar() {
    let server = RedisServer::start();
    let mut c = redis_conn(&server).await;
    let script = format!("local today = 0\n{}\n{LUA_PROBE}", include_str!("../src/store/redis/scripts/calendar.lua"));
    // Leap years and century boundaries: 1600 and 2000 are leap years, 1900
    // and 2100 are not; 1600 is before the epoch; 2024 and 2028 are.
    let ranges = [
        ("1599-12-01", "1601-03-01"),
        ("1899-12-01", "1901-03-01"),
        ("1969-11-01", "1972-03-31"),
        ("1999-12-01", "2001-03-01"),
        ("2023-12-01", "2029-01-31"),
        ("2099-12-01", "2101-03-01"),
        ("2399-12-01", "2401-03-01"),
    ];
    let mut checked = 0;
    for (from, to) in ranges {
        let (from, to) = (Date::parse(from).unwrap().days(), Date::parse(to).unwrap().days());
        let text: String = redis::cmd("EVAL").arg(&script).arg(0).arg(from).arg(to).query_async(&mut c).await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as i64, to - from + 1);
        for (day, line) in (from..).zip(lines) {
            let date = Date::from_days(day);
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 12, "{line}");
            assert_eq!(f[0].parse::<i64>().unwrap(), day, "{line}");
            assert_eq!(f[1].parse::<i64>().unwrap(), day, "{date}: days_from_civil(civil(day))");
            assert_eq!(f[2], date.compact(), "{date}: ymd");
            for (i, p) in [Period::Day, Period::Week, Period::Month].into_iter().enumerate() {
                let (s, e) = period_days(p, day);
                let got = (f[3 + 3 * i].parse::<i64>().unwrap(), f[4 + 3 * i].parse::<i64>().unwrap(), f[5 + 3 * i]);
                let want = (s * DAY_MS as i64, e * DAY_MS as i64, format!(":{}", Date::from_days(s).compact()));
                assert_eq!((got.0, got.1, got.2.to_string()), want, "{date}: the {p} period");
            }
            checked += 1;
        }
    }
    assert!(checked > 4000, "{checked} days");
}
