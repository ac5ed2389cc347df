//! The Redis store under faults (issue 8, defects 4 and 5), in-process
//! against a throwaway `redis-server`:
//!
//! - one request that cannot be decided (a corrupted key) fails alone: the
//!   other requests of its script call are decided and charged as usual, and
//!   it charges nothing;
//! - a decision's deadline counts from its arrival; a request whose caller
//!   gave up, or whose deadline passed while it queued, is never sent to
//!   Redis, so never charged;
//! - a batch keeps its in-flight slot until Redis has answered;
//! - one slow batch does not flip readiness; Redis gone for good does.
//!
//! Redis is made slow with `CLIENT PAUSE … WRITE` (scripts that may write wait,
//! `INFO` does not), so nothing here depends on timing beyond "the pause is
//! longer than the deadline".

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use tollgate::model::{Period, Quota, Throttle};
use tollgate::store::keys::Keys;
use tollgate::store::redis::{RedisSettings, RedisStore};
use tollgate::store::{Check, Limit, LimitStore, Rule, StoreError};

async fn open(server: &RedisServer, f: impl FnOnce(&mut RedisSettings)) -> RedisStore {
    let mut s = RedisSettings::new(&server.url());
    f(&mut s);
    let store = RedisStore::open(s).expect("open the Redis store");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_ready() {
        assert!(Instant::now() < deadline, "the Redis store never became ready; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
}

async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.expect("connect")
}

/// A request against one daily quota (key `k`'s in plan `p`), counting usage.
fn quota_check(k: &str, limit: u64) -> Check {
    let keys = Keys::default();
    Check {
        limits: vec![Limit {
            key: keys.state(k, "p"),
            field: Some("q".into()),
            rule: Rule::Quota {
                quota: Quota { limit, period: Period::Day, offset: 0, time_zone: None, anchor_day: 0 },
                created_at_ms: 0,
            },
        }],
        cost: 1,
        usage: Some(keys.usage(k, "p")),
        lease: Default::default(),
    }
}

/// A request against one bucket (key `k`'s plan throttle in plan `p`).
fn bucket_check(k: &str) -> Check {
    Check {
        limits: vec![Limit {
            key: Keys::default().state(k, "p"),
            field: Some("b".into()),
            rule: Rule::Bucket(Throttle { rate_limit: 1.0, burst_limit: 10 }),
        }],
        cost: 1,
        usage: None,
        lease: Default::default(),
    }
}

/// Today, by Redis's clock (days since 1970-01-01).
async fn redis_today(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, _): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s / 86_400
}

/// The quota key `k` used today (its state's `q` is `DAY:USED`).
async fn quota_used(c: &mut redis::aio::MultiplexedConnection, k: &str) -> i64 {
    let today = redis_today(c).await;
    let q: Option<String> =
        redis::cmd("HGET").arg(Keys::default().state(k, "p")).arg("q").query_async(c).await.unwrap();
    match q.as_deref().and_then(|q| q.split_once(':')) {
        Some((day, used)) if day == today.to_string() => used.parse().unwrap(),
        _ => 0,
    }
}

/// Pauses every client's writes (scripts included) for `ms`.
async fn pause_writes(c: &mut redis::aio::MultiplexedConnection, ms: u64) {
    redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE").query_async::<()>(c).await.expect("CLIENT PAUSE");
}

/// Defect 4: a request whose key is corrupted (a hash where a bucket should
/// be, a quota counter that is not a number) fails alone; the requests
/// before and after it in the same script call are decided and charged, and
/// it charges nothing, not even its other limits.
#[tokio::test]
async fn one_bad_request_fails_alone_in_its_batch() {
    let server = RedisServer::start();
    let store = open(&server, |_| {}).await;
    let mut c = conn(&server).await;
    let keys = Keys::default();
    // A string where key "bad"'s state hash should be.
    redis::cmd("SET").arg(keys.state("bad", "p")).arg("x").query_async::<()>(&mut c).await.unwrap();

    // The bad request's first limit is a healthy quota: it must not be charged.
    let mut bad = quota_check("bad2", 100);
    bad.limits.push(bucket_check("bad").limits.remove(0));
    let checks = vec![quota_check("a", 100), bad, quota_check("b", 100), bucket_check("c")];
    let out = store.check_batch(&checks).await.expect("the script call itself succeeds");
    assert!(out[0].as_ref().is_ok_and(|v| v.allowed), "{:?}", out[0]);
    match &out[1] {
        Err(StoreError::Internal(m)) => assert!(m.contains("WRONGTYPE") || m.contains("wrong kind"), "{m}"),
        other => panic!("the corrupted request fails with INTERNAL: {other:?}"),
    }
    assert!(out[2].as_ref().is_ok_and(|v| v.allowed), "{:?}", out[2]);
    assert!(out[3].as_ref().is_ok_and(|v| v.allowed && v.remaining == 9), "{:?}", out[3]);
    assert_eq!(quota_used(&mut c, "a").await, 1);
    assert_eq!(quota_used(&mut c, "b").await, 1);
    assert_eq!(quota_used(&mut c, "bad2").await, 0, "the failed request charged nothing");

    // A quota that holds garbage, and a usage record that holds garbage: the
    // same. (Yesterday's record moves to a field of its own.)
    let today = redis_today(&mut c).await;
    let hset = |key: String, field: &'static str, value: String| {
        let mut c = c.clone();
        async move { redis::cmd("HSET").arg(key).arg(field).arg(value).query_async::<()>(&mut c).await.unwrap() }
    };
    hset(keys.state("g", "p"), "q", "1.5x".into()).await;
    hset(keys.state("u", "p"), "u", "str".into()).await;
    hset(keys.state("h", "p"), "u", format!("{}:7", today - 1)).await;
    let checks = vec![quota_check("g", 100), quota_check("u", 100), quota_check("h", 100), quota_check("a", 100)];
    let out = store.check_batch(&checks).await.unwrap();
    assert!(matches!(&out[0], Err(StoreError::Internal(m)) if m.contains("1.5x")), "{:?}", out[0]);
    assert!(matches!(&out[1], Err(StoreError::Internal(m)) if m.contains("str")), "{:?}", out[1]);
    assert!(out[2].as_ref().is_ok_and(|v| v.allowed), "{:?}", out[2]);
    let moved: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys.state("h", "p"))
        .arg("u")
        .arg(format!("h{}", tollgate::calendar::Date::from_days(today as i64 - 1).compact()))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        moved,
        vec![Some(format!("{today}:1:1")), Some("7".to_string())],
        "yesterday's usage moved to its field"
    );
    assert!(out[3].as_ref().is_ok_and(|v| v.allowed), "{:?}", out[3]);
    assert_eq!(quota_used(&mut c, "u").await, 0, "the usage could not be counted: the quota was not charged");
    assert_eq!(quota_used(&mut c, "h").await, 1);
    assert_eq!(quota_used(&mut c, "a").await, 2);

    // Through the batcher too: the healthy caller gets its answer.
    assert!(store.check(quota_check("a", 100)).await.unwrap().allowed);
    assert!(matches!(store.check(bucket_check("bad")).await, Err(StoreError::Internal(_))));
}

/// Defect 5: a request whose caller gave up while it waited behind a busy
/// Redis is never sent, so never charged; a request already sent is.
#[tokio::test]
async fn cancelled_requests_are_not_charged() {
    let server = RedisServer::start();
    let store = Arc::new(
        open(&server, |s| {
            s.max_in_flight = 1;
            s.timeout = Duration::from_secs(5);
        })
        .await,
    );
    let mut c = conn(&server).await;
    pause_writes(&mut c, 800).await;
    // A takes the only in-flight slot and waits in Redis.
    let a = tokio::spawn({
        let store = store.clone();
        async move { store.check(quota_check("k", 100)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B queues behind it; its caller gives up after 100 ms.
    let b = tokio::time::timeout(Duration::from_millis(100), store.check(quota_check("k", 100))).await;
    assert!(b.is_err(), "B's caller gave up before Redis answered");
    let a = a.await.unwrap().expect("A is answered once Redis resumes");
    assert!(a.allowed);
    // Something after both, to be sure the batcher has moved past B.
    assert!(store.check(quota_check("other", 100)).await.unwrap().allowed);
    assert_eq!(quota_used(&mut c, "k").await, 1, "only A was charged: B was never sent");
}

/// Defect 5: the deadline counts from arrival, queueing included; a request
/// that waited past it is answered UNAVAILABLE and never sent. And the
/// in-flight slot of a timed-out batch is held until Redis answers, so the
/// queued request is not sent to the struggling Redis meanwhile.
#[tokio::test]
async fn deadline_counts_from_arrival_and_slots_wait_for_redis() {
    let server = RedisServer::start();
    let store = Arc::new(
        open(&server, |s| {
            s.max_in_flight = 1;
            s.timeout = Duration::from_millis(150);
        })
        .await,
    );
    let mut c = conn(&server).await;
    // Shorter than the connection's own reply limit (1 s here), which would
    // give up on A's batch (and its connection).
    pause_writes(&mut c, 700).await;
    let a = store.check(quota_check("k", 100)).await;
    assert!(matches!(a, Err(StoreError::Unavailable(_))), "A times out at its deadline: {a:?}");
    // A's batch still waits in Redis and keeps the slot: B queues, and its
    // deadline passes in the queue.
    let b = store.check(quota_check("k", 100)).await;
    assert!(matches!(b, Err(StoreError::Unavailable(_))), "{b:?}");
    // Once Redis resumes, A (already sent) is charged; B never was.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(v) = store.check(quota_check("other", 100)).await {
            assert!(v.allowed);
            break;
        }
        assert!(Instant::now() < deadline, "the store never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(quota_used(&mut c, "k").await, 1, "A was sent before its deadline and charged; B was never sent");
}

/// Defect 5: one slow batch does not flip readiness (a fleet would flap);
/// Redis gone for good does, and coming back restores it.
#[tokio::test]
async fn readiness_follows_a_sustained_condition_only() {
    let mut server = RedisServer::start();
    let store = open(&server, |s| s.timeout = Duration::from_millis(100)).await;
    let mut c = conn(&server).await;
    pause_writes(&mut c, 400).await;
    let r = store.check(quota_check("k", 100)).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(store.is_ready(), "one timed-out decision leaves the store ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.is_ready(), "Redis answered every probe: still ready");

    server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.is_ready() {
        assert!(Instant::now() < deadline, "the store stayed ready with Redis gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_ready() {
        assert!(Instant::now() < deadline, "the store never became ready again; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
