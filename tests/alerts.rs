//! Quota alerts (issue 14; docs/semantics.md, "Quota alerts"): a plan's
//! `alerts` thresholds each record ONE event per key and period when the
//! key's quota use reaches them, whatever the replicas and callers; a new
//! period fires again; events are read back over gRPC, HTTP and the CLI
//! (role `read`), and delivered to a webhook, signed, at least once, by
//! whichever replica is alive.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::redis::RedisServer;
use support::{admin_client, req, write_temp, TollgateProcess, ADMIN_TOKEN};
use tollgate::alerts::{AlertEvent, AlertSpec};
use tollgate::api::pb;
use tollgate::model::{Period, Quota};
use tollgate::store::keys::Keys;
use tollgate::store::memory::{Clock, ManualClock, MemoryStore};
use tollgate::store::redis::target::{Mode, Target};
use tollgate::store::redis::{RedisSettings, RedisStore};
use tollgate::store::{Check, LeaseOp, Limit, LimitStore, Rule, Store};

const DAY_US: u64 = 86_400_000_000;

/// A quota check of `key` in `plan` (limit per DAY) with alert thresholds.
fn check(key: &str, plan: &str, limit: u64, thresholds: &[u32]) -> Check {
    let keys = Keys::default();
    let mut usage = keys.usage(key, plan);
    usage.alerts = Some(Arc::new(AlertSpec {
        thresholds: thresholds.to_vec(),
        key_id: key.to_string(),
        plan_id: plan.to_string(),
    }));
    let quota = Quota { limit, period: Period::Day, offset: 0, time_zone: None, anchor_day: 0 };
    Check {
        limits: vec![Limit {
            key: usage.state.clone(),
            field: Some("q".into()),
            rule: Rule::Quota { quota, created_at_ms: 0 },
        }],
        cost: 1,
        usage: Some(usage),
        lease: LeaseOp::None,
    }
}

/// Events counted by (key, threshold).
fn counts(events: &[AlertEvent]) -> BTreeMap<(String, u32), usize> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry((e.key_id.clone(), e.threshold)).or_insert(0) += 1;
    }
    out
}

async fn all_events(store: &Store) -> Vec<AlertEvent> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, next) = store.events(0, after.as_deref(), 7).await.expect("read events");
        out.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// Three keys (quota 256, 300, 300 a day; thresholds 10, 50, 80, 100) each
/// asked 256 times by 64 callers per store: key0 reaches 100 %, the others
/// 85 %. Exactly one event per key and threshold reached, none for 100 % on
/// key1 and key2, and every request admitted.
async fn crossings_under_load(stores: &[Store]) -> Vec<AlertEvent> {
    crossings_under_load_with(stores, Duration::ZERO).await
}

/// [`crossings_under_load`], waiting up to `settle` for the events to be
/// appended (a cluster's replica appends them after the decision).
async fn crossings_under_load_with(stores: &[Store], settle: Duration) -> Vec<AlertEvent> {
    let limits = [256u64, 300, 300];
    let thresholds = [10, 50, 80, 100];
    let mut tasks = Vec::new();
    let callers = 192 / stores.len();
    for (s, store) in stores.iter().enumerate() {
        for c in 0..callers {
            let store = store.clone();
            let caller = s * callers + c;
            tasks.push(tokio::spawn(async move {
                let k = caller % 3;
                let mut allowed = 0;
                for _ in 0..4 {
                    let v = store.check(check(&format!("key{k}"), "p", limits[k], &thresholds)).await.expect("decide");
                    allowed += usize::from(v.allowed);
                }
                allowed
            }));
        }
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    assert_eq!(allowed, 768, "every request is within its quota");
    let deadline = Instant::now() + settle;
    let mut events = all_events(&stores[0]).await;
    while events.len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        events = all_events(&stores[0]).await;
    }
    let mut want = BTreeMap::new();
    for k in 0..3 {
        for t in [10, 50, 80] {
            want.insert((format!("key{k}"), t), 1);
        }
    }
    want.insert(("key0".to_string(), 100), 1);
    assert_eq!(counts(&events), want, "one event per key and threshold reached: {events:#?}");
    for e in &events {
        assert_eq!(e.plan_id, "p");
        let limit = limits[e.key_id[3..].parse::<usize>().unwrap()];
        assert_eq!(e.limit, limit);
        // the request that crossed it: the first at or above the threshold
        assert_eq!(e.used, (u64::from(e.threshold) * limit).div_ceil(100), "{e:?}");
        assert_eq!(e.period_end_ms - e.period_start_ms, 86_400_000);
        assert!(e.time_ms > 0 && !e.id.is_empty());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_per_crossing_with_three_replicas_on_redis() {
    let server = RedisServer::start();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let s = server.ready_store(None).await;
        stores.push(Store::Redis(Arc::new(s)));
    }
    let events = crossings_under_load(&stores).await;
    // The stream holds exactly these, in id order; nothing else carries a
    // key's value.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let len: usize = redis::cmd("XLEN").arg("tg:{cat}:events").query_async(&mut conn).await.unwrap();
    assert_eq!(len, events.len());
    let bits: String = redis::cmd("HGET").arg("tg:{k:key1}:s:p").arg("a").query_async(&mut conn).await.unwrap();
    // 10, 50 (bits 9 and 49 of LO) and 80 (bit 29 of HI)
    assert_eq!(
        bits.split(':').skip(1).collect::<Vec<_>>(),
        [(1u64 << 9 | 1 << 49).to_string(), (1u64 << 29).to_string()]
    );
}

/// On a Redis Cluster the stream is in another slot than the keys: the
/// script marks the bit and answers the crossing, the replica appends the
/// event right after. Still one per key and threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_per_crossing_with_three_replicas_on_a_cluster() {
    let cluster = support::redis::RedisCluster::start(3);
    let urls = cluster.urls().join(",");
    let mut stores = Vec::new();
    for _ in 0..3 {
        let target = Target::new(Mode::Cluster, &urls, None, None).unwrap();
        let mut settings = RedisSettings::with_target(target);
        settings.timeout = Duration::from_secs(2);
        let s = RedisStore::open(settings).expect("open");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.is_ready() {
            assert!(Instant::now() < deadline, "the cluster never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stores.push(Store::Redis(Arc::new(s)));
    }
    // (the events are appended on tasks of their own, right after the calls)
    let events = crossings_under_load_with(&stores, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_per_crossing_in_memory() {
    let store = Store::Memory(Arc::new(MemoryStore::new()));
    crossings_under_load(&[store]).await;
}

#[tokio::test]
async fn a_plan_without_alerts_records_nothing() {
    let store = Store::Memory(Arc::new(MemoryStore::new()));
    let server = RedisServer::start();
    let redis = server.ready_store(None).await;
    let redis = Store::Redis(Arc::new(redis));
    for s in [&store, &redis] {
        let mut c = check("k", "p", 2, &[50]);
        c.usage.as_mut().unwrap().alerts = None;
        for _ in 0..2 {
            assert!(s.check(c.clone()).await.unwrap().allowed);
        }
        assert!(all_events(s).await.is_empty());
    }
}

/// Leased admission: tokens leased and then used count when the lease is
/// settled; a crossing at the settle fires like any other.
#[tokio::test]
async fn a_crossing_at_a_lease_settle_fires_once() {
    let server = RedisServer::start();
    let redis = server.ready_store(None).await;
    let store = Store::Redis(Arc::new(redis));
    let base = check("k", "p", 40, &[50, 100]);
    // A take that leases 8 more tokens (a quarter of the 39 left, at most 8).
    let ask = Check { lease: LeaseOp::Ask(8), ..base.clone() };
    let v = store.check(ask).await.unwrap();
    let grant = v.grant.expect("a lease");
    assert!(all_events(&store).await.is_empty(), "1 of 40 used");
    // 19 more are charged one by one (20 of 40 would be 50 %, but the
    // leased tokens are not used yet)...
    for _ in 0..18 {
        assert!(store.check(base.clone()).await.unwrap().allowed);
    }
    assert!(all_events(&store).await.is_empty(), "19 of 40 used");
    // ...then the lease is settled with all its tokens used: 27 of 40.
    let settle =
        Check { cost: grant.tokens, lease: LeaseOp::Settle { leased: grant.tokens, slot: grant.slot }, ..base.clone() };
    store.check(settle).await.unwrap();
    let events = all_events(&store).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].threshold, events[0].used), (50, 19 + grant.tokens));
    assert!(store.check(base.clone()).await.unwrap().allowed);
    assert_eq!(all_events(&store).await.len(), 1, "50 % fired once");
}

/// A clock shared with the test.
struct Shared(Arc<ManualClock>);

impl Clock for Shared {
    fn now_us(&self) -> u64 {
        self.0.now_us()
    }
}

/// Day 1: reaching 50 % fires once; more use fires nothing more. Day 2 (a
/// new period): it fires again, with the new period.
async fn new_period(store: &Store, clock: &ManualClock) {
    let c = check("k", "p", 4, &[50]);
    clock.set_us(20_000 * DAY_US + 3_600_000_000);
    for _ in 0..4 {
        assert!(store.check(c.clone()).await.unwrap().allowed);
    }
    let events = all_events(store).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].used, events[0].period_start_ms), (2, 20_000 * 86_400_000));
    clock.advance(Duration::from_secs(86_400));
    assert!(store.check(c.clone()).await.unwrap().allowed);
    assert_eq!(all_events(store).await.len(), 1, "1 of 4 is below 50 %");
    assert!(store.check(c.clone()).await.unwrap().allowed);
    let events = all_events(store).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[1].used, events[1].period_start_ms), (2, 20_001 * 86_400_000));
}

#[tokio::test]
async fn a_new_period_fires_again_in_memory() {
    let clock = Arc::new(ManualClock::new(0));
    let store = Store::Memory(Arc::new(MemoryStore::with_clock(Shared(clock.clone()))));
    new_period(&store, &clock).await;
}

#[tokio::test]
async fn a_new_period_fires_again_on_redis() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(0));
    let redis = server.ready_store(Some(clock.clone())).await;
    new_period(&Store::Redis(Arc::new(redis)), &clock).await;
}

/// In a time zone (Asia/Tokyo, UTC+9): the period, and so the event's
/// `period_start_ms`, starts at local midnight (15:00 UTC the day before),
/// and a new local day fires again although the UTC date is the same.
async fn new_local_period(store: &Store, clock: &ManualClock) {
    let zone = Some(tollgate::localtime::Zone::parse("Asia/Tokyo").expect("a zone"));
    let mut c = check("z", "p", 4, &[50]);
    c.usage.as_mut().unwrap().zone = zone;
    if let Rule::Quota { quota, .. } = &mut c.limits[0].rule {
        quota.time_zone = zone;
    }
    const HOUR_MS: u64 = 3_600_000;
    // 01:00 UTC on day 20,000 = 10:00 in Tokyo: the local day began at
    // 15:00 UTC on day 19,999.
    clock.set_us(20_000 * DAY_US + 3_600_000_000);
    for _ in 0..2 {
        assert!(store.check(c.clone()).await.unwrap().allowed);
    }
    let events = all_events(store).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let local_midnight = 20_000 * 86_400_000 - 9 * HOUR_MS;
    assert_eq!((events[0].period_start_ms, events[0].period_end_ms), (local_midnight, local_midnight + 24 * HOUR_MS));
    // 16:00 UTC on the same UTC date = 01:00 the next day in Tokyo.
    clock.set_us(20_000 * DAY_US + 16 * 3_600_000_000);
    for _ in 0..2 {
        assert!(store.check(c.clone()).await.unwrap().allowed);
    }
    let events = all_events(store).await;
    assert_eq!(events.len(), 2, "a new local day fires again: {events:?}");
    assert_eq!(events[1].period_start_ms, local_midnight + 24 * HOUR_MS);
}

#[tokio::test]
async fn a_new_local_period_fires_again_in_memory() {
    let clock = Arc::new(ManualClock::new(0));
    let store = Store::Memory(Arc::new(MemoryStore::with_clock(Shared(clock.clone()))));
    new_local_period(&store, &clock).await;
}

#[tokio::test]
async fn a_new_local_period_fires_again_on_redis() {
    let server = RedisServer::start();
    let clock = Arc::new(ManualClock::new(0));
    let redis = server.ready_store(Some(clock.clone())).await;
    new_local_period(&Store::Redis(Arc::new(redis)), &clock).await;
}

// ---- through the server: Admin, HTTP, CLI ----

const READ: &str = "read-token-0123456789abcdef";
const KEY1: &str = "alertkeyone0123456789abcdefghijklmn";
const KEY2: &str = "alertkeytwo0123456789abcdefghijklmn";
const KEY3: &str = "alertkeythree23456789abcdefghijklmn";

/// Plan "metered": 4 a day, alerts at 50 % and 100 %; three keys.
const CATALOG: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
        methods:
          /pets/GET: {}
usage_plans:
  - id: metered
    name: Metered
    quota: { limit: 4, period: DAY }
    alerts: [100, 50]
    api_stages:
      - stage: petstore/prod
api_keys:
  - id: k1
    name: one
    value: alertkeyone0123456789abcdefghijklmn
    usage_plans: [metered]
  - id: k2
    name: two
    value: alertkeytwo0123456789abcdefghijklmn
    usage_plans: [metered]
  - id: k3
    name: three
    value: alertkeythree23456789abcdefghijklmn
    usage_plans: [metered]
"#;

fn tokens_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let y = format!(
        "tokens:\n  - name: dash\n    role: read\n    sha256: {}\n",
        hex::encode(Sha256::digest(READ.as_bytes()))
    );
    write_temp("tokens.yaml", &y)
}

struct Server {
    p: TollgateProcess,
    _dirs: Vec<tempfile::TempDir>,
}

fn serve(redis: Option<&RedisServer>, extra: &[&str]) -> Server {
    let (d1, catalog) = write_temp("catalog.yaml", CATALOG);
    let (d2, tokens) = tokens_file();
    let url = redis.map(|r| r.url());
    let mut args = vec![
        "--config",
        catalog.to_str().unwrap(),
        "--admin-tokens-file",
        tokens.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    if let Some(u) = &url {
        args.extend(["--redis-url", u.as_str()]);
    }
    args.extend_from_slice(extra);
    let p = TollgateProcess::start_with_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    Server { p, _dirs: vec![d1, d2] }
}

async fn use_quota(p: &TollgateProcess, key: &str, n: usize) {
    let mut c = p.authorizer().await;
    for _ in 0..n {
        let r = c.authorize(req(Some(key), "petstore/prod", "/pets/GET", None)).await.unwrap().into_inner();
        assert!(r.allowed, "{r:?}");
    }
}

#[tokio::test]
async fn events_are_listed_over_grpc_http_and_the_cli() {
    let s = serve(None, &[]);
    let p = &s.p;
    p.wait_serving().await;
    let before = tollgate::model::now_ms();
    use_quota(p, KEY1, 4).await;
    use_quota(p, KEY2, 2).await;

    // gRPC, a page at a time, with the read role.
    let mut read = admin_client(p.admin_addr(), Some(READ)).await;
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = read
            .list_events(pb::ListEventsRequest { since_ms: 0, page_size: 1, page_token })
            .await
            .expect("list events")
            .into_inner();
        assert!(r.events.len() <= 1);
        events.extend(r.events);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    let seen: Vec<(&str, u32, u64)> = events.iter().map(|e| (e.key_id.as_str(), e.threshold, e.used)).collect();
    assert_eq!(seen, [("k1", 50, 2), ("k1", 100, 4), ("k2", 50, 2)]);
    for e in &events {
        assert_eq!((e.usage_plan_id.as_str(), e.limit), ("metered", 4));
        assert!(e.time_ms >= before - 1000, "{e:?}");
    }
    // --since: only what came after.
    let r = read
        .list_events(pb::ListEventsRequest { since_ms: events[2].time_ms + 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.events.is_empty(), "{r:?}");
    let bad = read.list_events(pb::ListEventsRequest { page_size: 1001, ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // Roles: no token, a wrong token.
    let mut anon = admin_client(p.admin_addr(), None).await;
    assert_eq!(
        anon.list_events(pb::ListEventsRequest::default()).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut wrong = admin_client(p.admin_addr(), Some("not-a-token-0123456789")).await;
    assert_eq!(
        wrong.list_events(pb::ListEventsRequest::default()).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // HTTP.
    let auth = format!("Bearer {READ}");
    let r = support::http::get(p.http_addr(), "/v1/events?page_size=2", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["events"][1]["threshold"], 100);
    assert_eq!(page["events"][1]["usage_plan_id"], "metered");
    let next = page["next_page_token"].as_str().unwrap().to_string();
    let r = support::http::get(p.http_addr(), &format!("/v1/events?page_token={next}"), &[("authorization", &auth)]);
    assert_eq!(r.json()["events"][0]["key_id"], "k2");
    assert_eq!(support::http::get(p.http_addr(), "/v1/events", &[]).status, 401);
    let openapi = support::http::get(p.http_addr(), "/openapi.json", &[]).text();
    assert!(openapi.contains("/v1/events"), "the route is in the OpenAPI document");

    // The CLI.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .args(["--server", &p.admin_url()])
            .env("TOLLGATE_ADMIN_TOKEN", READ)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json = run(&["events", "list", "--json"]);
    let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{json}");
    assert_eq!((lines[1]["key_id"].as_str(), lines[1]["threshold"].as_u64()), (Some("k1"), Some(100)));
    assert_eq!(run(&["events", "list", "--json", "--since", "1h"]).lines().count(), 3);
    assert_eq!(run(&["events", "list", "--json", "--limit", "2"]).lines().count(), 2);
    assert_eq!(run(&["events", "list", "--json", "--since", "2100-01-01"]).lines().count(), 0);
    let table = run(&["events", "list"]);
    assert!(table.contains("THRESHOLD") && table.contains("100%") && table.contains("4 of 4"), "{table}");
    // The plan shows its alerts.
    let plan = run(&["plans", "get", "metered"]);
    assert!(plan.contains("50%, 100% of the quota"), "{plan}");
    // Never a key's value anywhere.
    assert!(!json.contains(KEY1) && !json.contains(KEY2));
}

#[tokio::test]
async fn alerts_are_validated_and_managed_through_the_admin_api() {
    let s = serve(None, &[]);
    let p = &s.p;
    p.wait_serving().await;
    let mut ops = p.admin().await;
    let create = |alerts: Vec<u32>, quota: bool| pb::CreateUsagePlanRequest {
        name: "x".into(),
        quota: quota.then(|| pb::Quota { limit: 10, period: "DAY".into(), offset: 0, ..Default::default() }),
        alerts,
        ..Default::default()
    };
    for (alerts, quota, why) in [
        (vec![0], true, "from 1 to 100"),
        (vec![101], true, "from 1 to 100"),
        (vec![50, 50], true, "listed twice"),
        ((1..=11).collect(), true, "at most 10"),
        (vec![80], false, "need a quota"),
    ] {
        let e = ops.create_usage_plan(create(alerts.clone(), quota)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{alerts:?}: {e:?}");
        assert!(e.message().contains("alerts") && e.message().contains(why), "{alerts:?}: {}", e.message());
    }
    let plan = ops.create_usage_plan(create(vec![100, 80], true)).await.unwrap().into_inner();
    assert_eq!(plan.alerts, [80, 100], "kept in order");
    let update = |alerts: Vec<u32>, clear: bool| pb::UpdateUsagePlanRequest {
        id: plan.id.clone(),
        alerts,
        clear_alerts: clear,
        ..Default::default()
    };
    let p2 = ops.update_usage_plan(update(vec![90], false)).await.unwrap().into_inner();
    assert_eq!(p2.alerts, [90]);
    let e = ops.update_usage_plan(update(vec![90], true)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A quota cannot go while alerts need it.
    let e = ops
        .update_usage_plan(pb::UpdateUsagePlanRequest { id: plan.id.clone(), clear_quota: true, ..Default::default() })
        .await
        .unwrap_err();
    assert!(e.message().contains("alerts"), "{e:?}");
    let p3 = ops.update_usage_plan(update(vec![], true)).await.unwrap().into_inner();
    assert!(p3.alerts.is_empty());
    // The CLI: --alert, --clear-alerts.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .args(["--server", &p.admin_url(), "--json"])
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let j = run(&[
        "plans",
        "create",
        "--name",
        "cli",
        "--stage",
        "petstore/prod",
        "--quota-limit",
        "5",
        "--quota-period",
        "DAY",
        "--alert",
        "80",
        "--alert",
        "100",
    ]);
    assert_eq!(j["alerts"], serde_json::json!([80, 100]));
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(run(&["plans", "update", &id, "--clear-alerts"])["alerts"], serde_json::json!([]));
    // HTTP JSON.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = support::http::send(
        p.http_addr(),
        "PATCH",
        &format!("/v1/plans/{id}"),
        &[("authorization", &auth), ("content-type", "application/json")],
        br#"{"alerts": [25, 75]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alerts"], serde_json::json!([25, 75]));
}

// ---- the webhook ----

const SECRET: &str = "whsec-0123456789";

/// What the test receiver does with each attempt at an event.
#[derive(Default)]
struct Receiver {
    /// Attempts per event id.
    attempts: HashMap<String, usize>,
    /// Accepted deliveries: (event id header, signature header, body).
    delivered: Vec<(String, String, String)>,
    /// While set, requests are held without an answer.
    hold: bool,
    /// The ids of the requests held.
    held: Vec<String>,
}

type Shared2 = Arc<Mutex<Receiver>>;

/// An axum server: each event's first attempt is answered 500, its second
/// gets a response whose body breaks off (the connection is dropped), its
/// third and later are accepted (204).
async fn receiver() -> (String, Shared2, tokio::task::JoinHandle<()>) {
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::Response;
    let state: Shared2 = Arc::default();
    let st = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let st = st.clone();
            async move {
                let id = headers.get("x-tollgate-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let sig = headers.get("x-tollgate-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                while st.lock().unwrap().hold {
                    if !st.lock().unwrap().held.contains(&id) {
                        st.lock().unwrap().held.push(id.clone());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let n = {
                    let mut g = st.lock().unwrap();
                    let n = g.attempts.entry(id.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                match n {
                    1 => Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body(Body::empty()).unwrap(),
                    2 => {
                        let broken = futures::stream::once(async {
                            Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("dropped"))
                        });
                        Response::builder().status(StatusCode::OK).body(Body::from_stream(broken)).unwrap()
                    }
                    _ => {
                        st.lock().unwrap().delivered.push((id, sig, body));
                        Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()).unwrap()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, state, task)
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks every delivery's signature and body, and that every event in the
/// stream was delivered.
fn check_deliveries(state: &Shared2, events: &[pb::Event]) {
    let g = state.lock().unwrap();
    for (id, sig, body) in &g.delivered {
        assert!(tollgate::alerts::webhook::verify(SECRET.as_bytes(), sig, body.as_bytes()), "{sig} {body}");
        assert!(!tollgate::alerts::webhook::verify(b"another secret", sig, body.as_bytes()));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["id"].as_str(), Some(id.as_str()), "{body}");
        assert_eq!(v["type"], "quota.threshold_crossed");
    }
    for e in events {
        let d = g.delivered.iter().find(|(id, _, _)| *id == e.id);
        let (_, _, body) = d.unwrap_or_else(|| panic!("event {} was never delivered", e.id));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (v["key_id"].as_str(), v["threshold"].as_u64()),
            (Some(e.key_id.as_str()), Some(u64::from(e.threshold)))
        );
        assert_eq!((v["used"].as_u64(), v["limit"].as_u64()), (Some(e.used), Some(e.limit)));
        assert!(g.attempts[&e.id] >= 3, "a 500 and a dropped connection came first");
    }
}

async fn listed(p: &TollgateProcess) -> Vec<pb::Event> {
    let mut read = admin_client(p.admin_addr(), Some(READ)).await;
    read.list_events(pb::ListEventsRequest::default()).await.unwrap().into_inner().events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_delivers_every_event_signed_after_failures_in_memory() {
    let (url, state, _task) = receiver().await;
    let s = serve(None, &["--webhook-url", &url, "--webhook-secret", SECRET]);
    s.p.wait_serving().await;
    use_quota(&s.p, KEY1, 4).await;
    let events = listed(&s.p).await;
    assert_eq!(events.len(), 2);
    wait_for("both deliveries", 30, || {
        let g = state.lock().unwrap();
        events.iter().all(|e| g.delivered.iter().any(|(id, _, _)| *id == e.id))
    })
    .await;
    check_deliveries(&state, &events);
    let metrics = s.p.metrics_text().await;
    assert!(metrics.contains("tollgate_webhook_deliveries_total{result=\"failed\"} 4"), "{metrics}");
    assert!(metrics.contains("tollgate_alert_events_total 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_delivers_at_least_once_whatever_replica_dies_on_redis() {
    let redis = RedisServer::start();
    let (url, state, _task) = receiver().await;
    let hook = ["--webhook-url", url.as_str(), "--webhook-secret", SECRET, "--webhook-claim-after-secs", "1"];
    // Two replicas share the stream: four events, each delivered once it
    // gets through the 500 and the dropped connection.
    let a = serve(Some(&redis), &hook);
    let b = serve(Some(&redis), &hook);
    a.p.wait_serving().await;
    b.p.wait_serving().await;
    use_quota(&a.p, KEY1, 2).await;
    use_quota(&b.p, KEY1, 2).await;
    use_quota(&b.p, KEY2, 4).await;
    let events = listed(&a.p).await;
    assert_eq!(events.len(), 4, "{events:?}");
    wait_for("four deliveries", 60, || {
        let g = state.lock().unwrap();
        events.iter().all(|e| g.delivered.iter().any(|(id, _, _)| *id == e.id))
    })
    .await;
    check_deliveries(&state, &events);

    // A replica dies while its delivery is in flight: another delivers it.
    drop(b);
    state.lock().unwrap().hold = true;
    use_quota(&a.p, KEY3, 2).await;
    let fresh = listed(&a.p).await.into_iter().find(|e| e.key_id == "k3").expect("k3's event");
    let held_id = fresh.id.clone();
    wait_for("replica a to be delivering k3's event", 20, || state.lock().unwrap().held.contains(&held_id)).await;
    drop(a);
    state.lock().unwrap().hold = false;
    // A new replica takes it over once it has been idle a second.
    let d = serve(Some(&redis), &hook);
    d.p.wait_serving().await;
    wait_for("the held event delivered by another replica", 60, || {
        state.lock().unwrap().delivered.iter().any(|(id, _, _)| *id == held_id)
    })
    .await;
    check_deliveries(&state, &[fresh]);
    let log = d.p.log();
    assert!(log.contains("taken over"), "{log}");
}
