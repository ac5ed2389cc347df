//! Leased admission (issue 11; docs/semantics.md, "Leased admission").
//!
//! 1. Model-based, on a test clock: random sequences of requests from three
//!    replicas (each a `LeaseTable` in front of its own Redis store, one
//!    Redis), with time steps, settles on time, late and never (a replica
//!    that stops), against a plan of a bucket and a quota. Checked on every
//!    sequence: every admission (local or by Redis) passes an exact bucket
//!    fed with the admissions before it, at the instant it was made; the
//!    quota admits at most its limit; with every lease settled, the usage
//!    counts exactly what was admitted, and what is left of the quota is
//!    exactly the limit less what was admitted (a key can use its whole
//!    quota).
//! 2. With real replicas: 3 servers × 16 callers on a leased plan; the quota
//!    admits exactly its limit, the bucket at most `burst + rate × elapsed`,
//!    Redis runs far fewer script calls than decisions, and the usage counts
//!    every admission once the replicas stop.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::redis::RedisServer;
use support::{req, write_temp, TollgateProcess, ADMIN_TOKEN};
use tollgate::api::pb;
use tollgate::calendar::DAY_MS;
use tollgate::limiter::lease::{Admit, LeaseTable, LEASE_MS};
use tollgate::model::{Period, Quota, Throttle};
use tollgate::store::bucket::{take, BucketState, Take};
use tollgate::store::clock::{Clock, ManualClock};
use tollgate::store::redis::RedisStore;
use tollgate::store::{Check, LeaseOp, Limit, LimitStore, Rule, UsageKeys, Verdict};

// ---------------------------------------------------------------------------
// 1. Model-based
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// The clock moves by this many µs, every replica's settler looking for
    /// due leases every 10 ms of it (as the server's does).
    Advance(u64),
    /// The clock moves by this many µs with no settler running (settles
    /// come late: the leases lapse).
    AdvanceQuiet(u64),
    /// Replica `r` asks for `cost`.
    Request { r: usize, cost: u64 },
    /// Replica `r` stops without settling (its leases lapse); a new one
    /// takes its place.
    Crash { r: usize },
}

#[derive(Debug, Clone)]
struct Sequence {
    rate_milli: u64,
    burst: u32,
    quota: u64,
    steps: Vec<Step>,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop_oneof![1u64..=1_000, 1u64..=50_000, 1u64..=300_000].prop_map(Step::Advance),
        1 => (1u64..=500_000).prop_map(Step::AdvanceQuiet),
        16 => (0usize..3, prop_oneof![6 => Just(1u64), 1 => 1u64..=5]).prop_map(|(r, cost)| Step::Request { r, cost }),
        1 => (0usize..3).prop_map(|r| Step::Crash { r }),
    ]
}

fn sequence() -> impl Strategy<Value = Sequence> {
    (
        prop_oneof![1_000u64..=50_000, 50_000u64..=5_000_000],
        prop_oneof![1u32..=20, 20u32..=2_000],
        prop_oneof![1u64..=50, 50u64..=5_000],
        prop::collection::vec(step(), 1..=300),
        // a third of the sequences have replicas that stop or stall
        prop::bool::weighted(0.33),
    )
        .prop_map(|(rate_milli, burst, quota, mut steps, chaos)| {
            if !chaos {
                for s in &mut steps {
                    if matches!(s, Step::AdvanceQuiet(_) | Step::Crash { .. }) {
                        *s = Step::Advance(10_000);
                    }
                }
            }
            Sequence { rate_milli, burst, quota, steps }
        })
}

/// One replica: its lease table (the store is shared: one Redis).
struct Replica {
    table: LeaseTable,
}

/// Decides `check` as the limiter does with a lease table: from the lease,
/// or through the store (asking for a lease when the table says so).
async fn decide(table: &LeaseTable, store: &RedisStore, mut check: Check) -> Result<Verdict, String> {
    let (admit, sig) = table.admit(&check);
    match admit {
        Admit::Local(v) => {
            LOCAL.fetch_add(1, Ordering::Relaxed);
            Ok(v)
        }
        Admit::Plain => store.check(check).await.map_err(|e| e.to_string()),
        Admit::Ask(n) => {
            check.lease = LeaseOp::Ask(n);
            let sent = table.now_us();
            let v = store.check(check.clone()).await.map_err(|e| e.to_string());
            if v.as_ref().is_ok_and(|v| v.grant.is_some()) {
                LEASED.fetch_add(1, Ordering::Relaxed);
            }
            table.granted(sig, sent, check, v.as_ref().ok());
            v
        }
    }
}

/// Sends `settles`; returns whether any came after its slot ended (its
/// lease lapsed in Redis: charged in full).
async fn settle(store: &RedisStore, settles: Vec<Check>, now_us: u64) -> Result<bool, TestCaseError> {
    let mut late = false;
    for c in settles {
        if let LeaseOp::Settle { slot, .. } = c.lease {
            late |= now_us / 1000 >= slot * LEASE_MS;
        }
        store.check(c).await.map_err(|e| TestCaseError::fail(format!("settle: {e}")))?;
    }
    Ok(late)
}

static CASE: AtomicU64 = AtomicU64::new(0);
static LOCAL: AtomicU64 = AtomicU64::new(0);
static LEASED: AtomicU64 = AtomicU64::new(0);
static LAPSED: AtomicU64 = AtomicU64::new(0);
static ALL: AtomicU64 = AtomicU64::new(0);

async fn run(seq: &Sequence, store: &RedisStore, clock: &Arc<ManualClock>) -> Result<(), TestCaseError> {
    // Mid-month, mid-day: the sequence (at most 300 × 0.3 s) stays in one
    // quota period and one day.
    let start_us = 1_800_000_000_000_000 - 1_800_000_000_000_000 % (DAY_MS * 1000) + 12 * 3_600_000_000;
    clock.set_us(start_us);
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let state = format!("lease{case}:{{k:x}}:s");
    let throttle = Throttle { rate_limit: seq.rate_milli as f64 / 1000.0, burst_limit: seq.burst };
    let quota = Quota { limit: seq.quota, period: Period::Month, offset: 0, time_zone: None, anchor_day: 0 };
    let limits = vec![
        Limit { key: state.clone(), field: Some("b".into()), rule: Rule::Bucket(throttle) },
        Limit { key: state.clone(), field: Some("q".into()), rule: Rule::Quota { quota, created_at_ms: 0 } },
    ];
    let usage = UsageKeys { state: state.clone(), zone: None, alerts: None };
    let check = |cost: u64| Check { limits: limits.clone(), cost, usage: Some(usage.clone()), lease: LeaseOp::None };
    let new_replica = || Replica { table: LeaseTable::with_clock(1_000, clock.clone()) };
    let mut replicas: Vec<Replica> = (0..3).map(|_| new_replica()).collect();

    // The exact bucket fed with every admission, at its instant.
    let mut exact: Option<BucketState> = None;
    let mut admitted = 0u64;
    // whether a lease was charged in full (a replica stopped holding one, or
    // a settle came late)
    let mut lapsed = false;
    for (n, s) in seq.steps.iter().enumerate() {
        match s {
            Step::Advance(us) => {
                let mut left = *us;
                while left > 0 {
                    let tick = left.min(10_000);
                    clock.advance(Duration::from_micros(tick));
                    left -= tick;
                    for r in &replicas {
                        lapsed |= settle(store, r.table.due(), clock.now_us()).await?;
                    }
                }
            }
            Step::AdvanceQuiet(us) => clock.advance(Duration::from_micros(*us)),
            Step::Crash { r } => {
                lapsed |= replicas[*r].table.pools() > 0;
                replicas[*r] = new_replica();
            }
            Step::Request { r, cost } => {
                let v = decide(&replicas[*r].table, store, check(*cost))
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {n}: {e}")))?;
                ALL.fetch_add(1, Ordering::Relaxed);
                if !v.allowed {
                    continue;
                }
                let now = clock.now_us();
                match take(exact, seq.rate_milli, u64::from(seq.burst), *cost, now) {
                    Take::Allow { state, .. } => exact = Some(state),
                    Take::Deny { .. } => {
                        return Err(TestCaseError::fail(format!(
                            "step {n}: replica {r} admitted {cost} at {} µs, which an exact bucket denies",
                            now - start_us
                        )))
                    }
                }
                admitted += cost;
                prop_assert!(
                    admitted <= seq.quota,
                    "step {}: {} admitted, over the quota of {}",
                    n,
                    admitted,
                    seq.quota
                );
            }
        }
    }
    // Every lease settled: the usage is what was admitted (unless a replica
    // stopped with its count), and the quota has exactly the rest left (at
    // most the rest when a lease lapsed).
    for r in &replicas {
        lapsed |= settle(store, r.table.drain(), clock.now_us()).await?;
    }
    let crashed = seq.steps.iter().any(|s| matches!(s, Step::Crash { .. }));
    let today = (clock.now_us() / 1000 / DAY_MS) as i64;
    let got =
        store.read_usage(vec![usage.clone()], vec![today]).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let used = got[0].map_or(0, |d| d.n) as u64;
    if crashed {
        prop_assert!(used <= admitted, "usage {} above the {} admitted", used, admitted);
    } else {
        prop_assert_eq!(used, admitted, "usage after every settle");
    }
    // The quota alone, one unit: its remaining tells what is left.
    let probe = Check { limits: vec![limits[1].clone()], cost: 1, usage: None, lease: LeaseOp::None };
    let v = store.check(probe).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let left = if v.allowed { v.remaining + 1 } else { v.remaining };
    if lapsed {
        LAPSED.fetch_add(1, Ordering::Relaxed);
        prop_assert!(admitted + left <= seq.quota, "{} admitted and {} left of {}", admitted, left, seq.quota);
    } else {
        prop_assert_eq!(admitted + left, seq.quota, "the quota left after every settle");
    }
    Ok(())
}

#[test]
fn leased_replicas_never_admit_more_than_one_exact_bucket_and_quota() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(0));
    let store = rt.block_on(server.ready_store(Some(clock.clone())));
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&sequence(), |seq| rt.block_on(run(&seq, &store, &clock)));
    if let Err(e) = result {
        panic!("{e}");
    }
    let [all, local, leased, lapsed] = [&ALL, &LOCAL, &LEASED, &LAPSED].map(|a| a.load(Ordering::Relaxed));
    eprintln!("{all} requests, {local} admitted from {leased} leases; {lapsed} sequences with a lapsed lease");
    // The sequences reached what they are about.
    assert!(local > 0 && leased > 0 && lapsed > 0 && lapsed < runner.config().cases as u64);
}

// ---------------------------------------------------------------------------
// 2. Real replicas
// ---------------------------------------------------------------------------

const KEY: &str = "leasedkey0123456789abcdefghijklmnopqrstu";

/// Two leased plans, each on a stage of its own: "q" with a quota of 3,000 a
/// month (and a throttle that never binds), "b" with a bucket of 1,000/s,
/// burst 100; one key on both.
const CATALOG: &str = "apis:
  - id: api
    stages:
      - name: q
      - name: b
usage_plans:
  - id: q
    name: q
    admission: leased
    throttle: { rate_limit: 1000000, burst_limit: 100000 }
    quota: { limit: 3000, period: MONTH }
    api_stages:
      - stage: api/q
  - id: b
    name: b
    admission: leased
    throttle: { rate_limit: 1000, burst_limit: 100 }
    api_stages:
      - stage: api/b
api_keys:
  - name: flood
    value: leasedkey0123456789abcdefghijklmnopqrstu
    usage_plans: [q, b]
";

type Client = pb::authorizer_client::AuthorizerClient<tonic::transport::Channel>;

async fn ask(c: &mut Client, stage: &str) -> pb::AuthorizeResponse {
    c.authorize(req(Some(KEY), &format!("api/{stage}"), "/things/GET", None)).await.expect("authorize").into_inner()
}

async fn redis_us(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1_000_000 + us
}

/// The sum of a counter (all its label sets matching `labels`) over
/// replicas.
async fn counter(procs: &[TollgateProcess], name: &str, labels: &str) -> u64 {
    let mut n = 0;
    for p in procs {
        let text = p.metrics_text().await;
        n += text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    n
}

/// 3 replicas × 16 callers on `stage`, each caller `per_caller` requests;
/// returns how many were allowed.
async fn hammer(clients: &[Client], stage: &'static str, per_caller: usize) -> u64 {
    let mut tasks = Vec::new();
    for c in clients {
        for _ in 0..16 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                for _ in 0..per_caller {
                    n += ask(&mut c, stage).await.allowed as u64;
                }
                n
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// Real replicas, real time: the quota admits exactly its limit (all of it,
/// once the leases are back), the bucket at most `burst + rate × elapsed`
/// (by Redis's clock), with far fewer script calls than decisions; the usage
/// counts every admission once the replicas stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_replicas_admit_exactly_the_limits_with_few_redis_calls() {
    let redis = RedisServer::start();
    let (_dir, path) = write_temp("catalog.yaml", CATALOG);
    let url = redis.url();
    let path = path.to_str().unwrap();
    let procs: Vec<TollgateProcess> = (0..3)
        .map(|_| {
            TollgateProcess::start_with_env(
                &["--config", path, "--redis-url", &url, "--metrics-listen", "127.0.0.1:0"],
                &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
            )
        })
        .collect();
    let mut clients = Vec::new();
    for p in &procs {
        p.wait_serving().await;
        clients.push(p.authorizer().await);
    }
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();

    // The quota: 2,400 requests against 3,000 (what the leases hold at the
    // end goes back).
    let calls_before = redis.script_calls().await;
    let allowed = hammer(&clients, "q", 50).await;
    let calls = redis.script_calls().await - calls_before;
    assert!(allowed <= 3000, "{allowed} admitted, over the quota of 3,000");
    let local = counter(&procs, "tollgate_lease_admissions_total", "").await;
    eprintln!("quota: 2400 requests, {allowed} allowed ({local} from leases), {calls} script calls");
    assert!(local > 0, "no request was admitted from a lease");
    assert!(calls * 2 < 2400, "{calls} script calls for 2,400 decisions: the leases saved little");

    // Once every lease is back (each is used 100 ms; settled within the
    // next 100), the rest of the quota passes, one request at a time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = clients[0].clone();
    let mut rest = 0;
    loop {
        let r = ask(&mut c, "q").await;
        if !r.allowed {
            assert_eq!(r.reason(), pb::Reason::QuotaExceeded);
            break;
        }
        rest += 1;
        assert!(allowed + rest <= 3000, "over the quota");
    }
    eprintln!("then {rest} more, one at a time");
    let lapsed = counter(&procs, "tollgate_lease_settles_total", "outcome=\"lapsed\"").await;
    if lapsed == 0 {
        assert_eq!(allowed + rest, 3000, "the whole quota is used, leases given back");
    } else {
        // (a settle came late on a loaded machine: that lease was charged in full)
        eprintln!("{lapsed} leases lapsed");
    }

    // The bucket, for about a second.
    let t0 = redis_us(&mut conn).await;
    let admitted = hammer(&clients, "b", 60).await;
    let elapsed_s = (redis_us(&mut conn).await - t0) as f64 / 1e6;
    let bound = 100.0 + 1000.0 * elapsed_s;
    eprintln!("bucket: {admitted} admitted in {elapsed_s:.3} s (bound {bound:.0})");
    assert!(admitted as f64 <= bound, "{admitted} admitted in {elapsed_s:.3} s: more than {bound:.1}");
    assert!(admitted >= 100, "the burst passes");

    // Stopped replicas give their leases back: the usage counts every
    // admission.
    let last = ask(&mut c, "b").await;
    let (key_id, admitted_b) = (last.key_id, admitted + last.allowed as u64);
    for p in procs {
        assert!(p.terminate().success());
    }
    let keys = tollgate::store::keys::Keys::default();
    for (plan, want) in [("q", allowed + rest), ("b", admitted_b)] {
        let u: String =
            redis::cmd("HGET").arg(keys.state(&key_id, plan)).arg("u").query_async(&mut conn).await.unwrap();
        let n: u64 = u.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(n, want, "plan {plan}: the usage ({u}) counts every admission");
    }
}

/// Runs the CLI; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run the CLI");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// A plan's admission: set at creation and by update (Admin and CLI), shown
/// by get, checked; a plan switched to leased at runtime starts leasing, and
/// switched back stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_is_a_plan_setting_changed_at_runtime() {
    let redis = RedisServer::start();
    let url = redis.url();
    let p = TollgateProcess::start_with_env(
        &["--redis-url", &url, "--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    p.wait_serving().await;
    let mut a = p.admin().await;
    a.put_stage(pb::PutStageRequest { stage: "api/q".into(), ..Default::default() }).await.expect("stage");
    let bad = a
        .create_usage_plan(pb::CreateUsagePlanRequest { name: "bad".into(), admission: 7, ..Default::default() })
        .await
        .expect_err("an unknown admission");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("admission"), "{bad:?}");
    let plan = a
        .create_usage_plan(pb::CreateUsagePlanRequest {
            name: "hot".into(),
            id: Some("hot".into()),
            throttle: Some(pb::Throttle { rate_limit: 100_000.0, burst_limit: 10_000 }),
            api_stages: vec![pb::PlanStage { stage: "api/q".into(), ..Default::default() }],
            admission: pb::Admission::Leased as i32,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(plan.admission(), pb::Admission::Leased);
    let key = a
        .create_api_key(pb::CreateApiKeyRequest { name: "k".into(), value: Some(KEY.into()), ..Default::default() })
        .await
        .expect("key")
        .into_inner();
    let key_id = key.key.unwrap().id;
    a.add_usage_plan_key(pb::UsagePlanKeyRequest { usage_plan_id: "hot".into(), key_id }).await.expect("subscribe");

    let mut c = p.authorizer().await;
    let leased = |p: &TollgateProcess| {
        let p = p.metrics_addr();
        async move {
            let text =
                tokio::task::spawn_blocking(move || support::http::get(p, "/metrics", &[]).text()).await.unwrap();
            text.lines()
                .find(|l| l.starts_with("tollgate_lease_admissions_total"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    for _ in 0..50 {
        assert!(ask(&mut c, "q").await.allowed);
    }
    let n = leased(&p).await;
    assert!(n > 0, "a leased plan admits from leases");

    // Exact through the CLI; get shows it.
    let admin = p.admin_url();
    let (code, _, err) = cli(&["plans", "update", "hot", "--admission", "exact", "--server", &admin]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["plans", "get", "hot", "--json", "--server", &admin]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["admission"], "exact", "{out}");
    for _ in 0..50 {
        assert!(ask(&mut c, "q").await.allowed);
    }
    assert_eq!(leased(&p).await, n, "an exact plan never admits from a lease");
    let (code, _, err) = cli(&["plans", "update", "hot", "--admission", "fast", "--server", &admin]);
    assert_ne!(code, 0);
    assert!(err.contains("exact or leased"), "{err}");

    // The HTTP API writes and reads it by name.
    let http = p.http_addr();
    let r = tokio::task::spawn_blocking(move || {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let patched = support::http::send(http, "PATCH", "/v1/plans/hot", &h, br#"{"admission":"LEASED"}"#);
        let bad = support::http::send(http, "PATCH", "/v1/plans/hot", &h, br#"{"admission":"FAST"}"#);
        (patched, bad, support::http::get(http, "/v1/plans/hot", &h[..1]))
    })
    .await
    .unwrap();
    assert_eq!(r.0.status, 200, "{}", r.0.text());
    assert_eq!(r.1.status, 400, "{}", r.1.text());
    assert!(r.1.text().contains("admission"), "{}", r.1.text());
    assert_eq!(r.2.json()["admission"], "LEASED", "{}", r.2.text());

    // The catalog file: a misspelt admission names its line.
    let (_dir, path) =
        write_temp("c.yaml", "usage_plans:\n  - id: p\n    name: p\n    admission: fast\n    api_stages: []\n");
    let (code, _, err) = cli(&["check-config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains(":4:") && err.contains("admission"), "{err}");
}
