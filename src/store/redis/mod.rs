//! The shared store: limits in Redis, decided by one Lua script call.
//!
//! # Hot path
//! The design this project started from (its ARCHITECTURE.md, "Hot path
//! budget", kept outside this repository) measured that a pool checkout per
//! call is the slowest way to talk to Redis and that deciding many pending
//! requests in ONE script call is the fastest. So decisions go through a
//! batcher task: callers send their [`Check`] over a channel; the batcher
//! takes whatever is pending (up to `max_batch`), runs `decide.lua` once for
//! all of them on a multiplexed [`ConnectionManager`], and answers each
//! caller. At most `max_in_flight` batches run at once; while they do, new
//! requests queue up and form the next batch, so batching grows with load and
//! adds no wait when idle. Each request in a batch is still all-or-nothing,
//! and one request's failure fails only that request (see `decide.lua`).
//!
//! # Deadlines
//! A decision's deadline (`timeout`) counts from its arrival, queueing
//! included: the caller gets UNAVAILABLE when it passes, whatever the batch
//! is doing. Before a batch is sent, requests whose caller has gone (the
//! client cancelled, or its own `grpc-timeout` passed and tonic dropped the
//! call) and requests past their deadline are taken out: they are never sent,
//! so never charged. A request already sent when its deadline passes may still
//! be charged (Redis runs it); its caller is answered UNAVAILABLE all the same.
//! A batch keeps its in-flight slot until Redis has answered it (or the
//! connection gives up, after [`response_timeout`]), so a struggling Redis
//! gets no more than `max_in_flight` script calls at once.
//!
//! # Failures
//! - NOSCRIPT (after a Redis restart or `SCRIPT FLUSH`): the batch's EVALSHA is
//!   answered NOSCRIPT, the script is loaded and the same command sent again.
//!   That is safe: a NOSCRIPT reply means nothing ran. (A script inside a
//!   pipeline would not be retried this way; we never pipeline scripts.)
//! - When Redis cannot be reached, callers get [`StoreError::Unavailable`]
//!   (gRPC UNAVAILABLE). The connection manager reconnects by itself.
//! - Readiness (gRPC health) follows a probe, and changes only on a sustained
//!   condition: NOT_SERVING once Redis has failed every probe for
//!   [`UNREADY_AFTER`] (at least [`UNREADY_AFTER_PROBES`] probes in a row),
//!   SERVING again at the first probe that succeeds. A single slow or failed
//!   batch does not flip it (it only makes the probe look at once), so a fleet
//!   behind a load balancer does not flap.
//! - Redis unreachable at start is not fatal: the store starts, unready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::{
    Check, DayUsage, Grant, LeaseOp, Limit, LimitStore, Refund, RefundOutcome, Rule, StoreError, UsageKeys, Verdict,
};
use link::{Conn, Link};

mod cluster;
pub mod events;
pub mod link;
pub mod target;
use crate::model::Quota;
use crate::telemetry::traces;

/// Builds a script from its file, with `clock.lua`, `calendar.lua` and
/// `state.lua` inserted at its `-- @clock`, `-- @calendar` and `-- @state`
/// lines.
fn script(body: &str) -> redis::Script {
    redis::Script::new(&script_code(body))
}

/// A script's code, with its inserts.
fn script_code(body: &str) -> String {
    let clock = include_str!("scripts/clock.lua");
    let calendar = include_str!("scripts/calendar.lua");
    let state = include_str!("scripts/state.lua");
    let mut out = String::with_capacity(body.len() + clock.len() + calendar.len() + state.len());
    for line in body.lines() {
        if line.starts_with("-- @clock") {
            out.push_str(clock);
        } else if line.starts_with("-- @calendar") {
            out.push_str(calendar);
        } else if line.starts_with("-- @state") {
            out.push_str(state);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The decision script's code (see its header for KEYS and ARGV).
static DECIDE_CODE: LazyLock<String> = LazyLock::new(|| script_code(include_str!("scripts/decide.lua")));

/// The decision script.
static DECIDE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(&DECIDE_CODE));

/// UpdateUsage's script.
static SET_REMAINING: LazyLock<redis::Script> = LazyLock::new(|| script(include_str!("scripts/set_remaining.lua")));

/// GetUsage's script.
static READ_USAGE: LazyLock<redis::Script> = LazyLock::new(|| script(include_str!("scripts/read_usage.lua")));

/// How often the probe asks Redis whether it is there, while it is.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the probe asks while Redis is failing.
pub const FAILING_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long Redis must have failed every probe before health says NOT_SERVING.
pub const UNREADY_AFTER: Duration = Duration::from_secs(1);
/// How many probes in a row must have failed before health says NOT_SERVING.
pub const UNREADY_AFTER_PROBES: u32 = 3;

/// The connection's own limit on waiting for a reply: four store deadlines,
/// at least a second. Callers are answered at their deadline; this only
/// bounds how long a batch may keep its in-flight slot while Redis is stuck.
pub fn response_timeout(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(1))
}

/// A clock the Redis store reads instead of Redis's `TIME` (builds with the
/// `test-clock` feature only: the model-based tests).
#[cfg(feature = "test-clock")]
#[derive(Clone)]
pub struct TestClock(pub Arc<dyn super::clock::Clock>);

#[cfg(feature = "test-clock")]
impl std::fmt::Debug for TestClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestClock({} µs)", self.0.now_us())
    }
}

/// Each batch acknowledged by replicas before its answers are given
/// (`WAIT`): an admitted request is then never forgotten by a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    /// How many replicas must have the batch.
    pub replicas: u32,
    /// How long to wait for them; past it the batch's callers get UNAVAILABLE.
    pub timeout: Duration,
}

/// How the Redis store behaves.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Where Redis is (mode, URLs, TLS).
    pub target: target::Target,
    /// Deadline of one decision, from its arrival to its answer.
    pub timeout: Duration,
    /// Most requests decided by one script call.
    pub max_batch: usize,
    /// Most script calls in flight at once.
    pub max_in_flight: usize,
    /// Replicas that must acknowledge each batch, if any.
    pub wait: Option<WaitReplicas>,
    /// Where quota alert events go: the stream (`Keys::events`) and about
    /// how many it keeps (`--events-max`).
    pub events: EventsAt,
    /// The scripts' clock instead of Redis's `TIME` (tests only).
    #[cfg(feature = "test-clock")]
    pub clock: Option<TestClock>,
}

impl RedisSettings {
    /// Defaults for one Redis at `url` (panics on a malformed URL: tests).
    pub fn new(url: &str) -> Self {
        Self::with_target(target::Target::single(url).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Defaults for `target`.
    pub fn with_target(target: target::Target) -> Self {
        Self {
            target,
            timeout: super::DEFAULT_TIMEOUT,
            max_batch: 64,
            max_in_flight: 4,
            wait: None,
            events: EventsAt::default(),
            #[cfg(feature = "test-clock")]
            clock: None,
        }
    }

    /// The scripts' clock argument (`clock.lua`): empty for Redis's `TIME`.
    fn clock_arg(&self) -> String {
        #[cfg(feature = "test-clock")]
        if let Some(c) = &self.clock {
            return c.0.now_us().to_string();
        }
        String::new()
    }
}

/// The stream of quota alert events, and about how many events it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsAt {
    /// Its key (`Keys::events`).
    pub stream: String,
    /// `MAXLEN ~` of its `XADD`s.
    pub max: usize,
}

impl Default for EventsAt {
    fn default() -> Self {
        Self { stream: super::keys::Keys::default().events(), max: crate::alerts::DEFAULT_MAX_EVENTS }
    }
}

struct Job {
    check: Check,
    reply: oneshot::Sender<Result<Verdict, StoreError>>,
    /// Arrival + the store deadline.
    deadline: Instant,
    /// The caller's store span, to record the batch size on (disabled, and
    /// free, when traces are off).
    span: tracing::Span,
}

/// Limits in Redis, shared by every replica that points at it.
pub struct RedisStore {
    jobs: mpsc::Sender<Job>,
    ready: Arc<AtomicBool>,
    link: Arc<Link>,
    settings: RedisSettings,
}

/// Classifies a Redis error: connection trouble and timeouts are transient
/// (UNAVAILABLE); anything else the server said is internal.
pub fn classify(e: redis::RedisError) -> StoreError {
    use redis::{ErrorKind::Server, ServerErrorKind as S};
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.kind(), redis::ErrorKind::ClusterConnectionNotFound)
        || matches!(
            e.kind(),
            Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::Moved | S::Ask)
        );
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

/// Query parameters whose value is hidden by [`redact_url`]: redis-rs reads
/// the password of a `redis+unix://` / `unix://` URL from `pass` (and only
/// the username from `user`, which is not a secret); `password` is hidden too,
/// for people who guess that name.
const SECRET_QUERY_KEYS: [&str; 2] = ["pass", "password"];

/// A Redis URL fit for logs and error messages: every place a password can
/// sit is replaced by `***`.
///
/// - `redis://user:pass@host`, `redis://:pass@host`, `rediss://…`: the
///   password (`user:***@`); a lone `secret@host` (no colon) is hidden whole,
///   since it is often a password written in the wrong place.
/// - `redis+unix:///path?pass=…`, `unix:///path?pass=…` (and any scheme):
///   the values of the query parameters in [`SECRET_QUERY_KEYS`], matched
///   after percent-decoding and ignoring case.
/// - A URL that redis-rs cannot parse, or with an `@` past its host (a
///   password with an unencoded `/`, `?` or `#`), could hold a secret
///   anywhere: if it contains `@` or `?` only its scheme is shown
///   (`redis://***`).
pub fn redact_url(url: &str) -> String {
    let Some(mut parsed) = redis::parse_redis_url(url) else {
        return redact_unparsable(url);
    };
    // An '@' past the host means a password with an unencoded '/', '?' or
    // '#' was split off into the path, query or fragment: hide it all.
    if [parsed.path(), parsed.query().unwrap_or(""), parsed.fragment().unwrap_or("")].iter().any(|p| p.contains('@')) {
        return redact_unparsable(url);
    }
    let hidden = match (parsed.username().is_empty(), parsed.password().is_some()) {
        (_, true) => parsed.set_password(Some("***")),
        (false, false) => parsed.set_username("***"),
        (true, false) => Ok(()),
    };
    if hidden.is_err() {
        return redact_unparsable(url);
    }
    if let Some(query) = parsed.query() {
        let query = redact_query(query, parsed.query_pairs().map(|(k, _)| k.into_owned()));
        parsed.set_query(Some(&query));
    }
    parsed.to_string()
}

/// `query` (raw, as in the URL) with the values of secret parameters
/// replaced; `decoded_keys` are its keys in order, as redis-rs decodes them
/// (the same `&`-separated, empty-skipping split as below).
fn redact_query(query: &str, decoded_keys: impl Iterator<Item = String>) -> String {
    let parts = query.split('&').filter(|p| !p.is_empty());
    let redacted: Vec<String> = parts
        .zip(decoded_keys)
        .map(|(raw, key)| {
            if SECRET_QUERY_KEYS.iter().any(|s| key.eq_ignore_ascii_case(s)) {
                let raw_key = raw.split('=').next().unwrap_or(raw);
                format!("{raw_key}=***")
            } else {
                raw.to_string()
            }
        })
        .collect();
    redacted.join("&")
}

/// What [`redact_url`] shows of a URL it cannot parse: all of it when no
/// secret can be in it (no userinfo `@`, no query `?`), else only its scheme.
fn redact_unparsable(url: &str) -> String {
    if !url.contains(['@', '?']) {
        return url.to_string();
    }
    match url.split_once("://") {
        Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)) => {
            format!("{scheme}://***")
        }
        _ => "***".to_string(),
    }
}

impl RedisStore {
    /// How the Redis deployment is organised (`--redis-mode`).
    pub fn mode(&self) -> target::Mode {
        self.settings.target.mode
    }

    /// Opens the store. Nothing is connected yet: an unreachable Redis leaves
    /// the store unready until it can be reached.
    pub fn open(settings: RedisSettings) -> Result<Self, StoreError> {
        let link = Link::new(settings.target.clone(), response_timeout(settings.timeout));
        let ready = Arc::new(AtomicBool::new(false));
        let look_now = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(settings.max_batch * settings.max_in_flight * 16);
        tokio::spawn(batcher(rx, link.clone(), settings.clone(), look_now.clone()));
        tokio::spawn(probe(link.clone(), ready.clone(), look_now));
        Ok(Self { jobs: tx, ready, link, settings })
    }

    /// Up to `limit` quota alert events after `after`, or else from
    /// `since_ms`, oldest first.
    pub async fn events(
        &self,
        since_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::alerts::AlertEvent>, StoreError> {
        events::page(&self.link, &self.settings.events.stream, since_ms, after, limit).await
    }

    /// The connection (the webhook's consumer reads the events stream on it).
    pub fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    /// Where quota alert events go.
    pub fn events_at(&self) -> &EventsAt {
        &self.settings.events
    }

    /// Decides `checks` in ONE script call per slot group, in their order,
    /// outside the batcher: what the batcher does with each batch. One answer
    /// per check; `Err` as a whole when Redis could not be asked. (The
    /// model-based tests use it to control exactly which requests share a
    /// script call.)
    pub async fn check_batch(&self, checks: &[Check]) -> Result<Vec<Result<Verdict, StoreError>>, StoreError> {
        let refs: Vec<&Check> = checks.iter().collect();
        run_batch(&self.link, &refs, &self.settings.clock_arg(), self.settings.wait, &self.settings.events).await
    }
}

impl LimitStore for RedisStore {
    async fn check(&self, check: Check) -> Result<Verdict, StoreError> {
        let timeout = self.settings.timeout;
        let deadline = Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        self.jobs
            .try_send(Job { check, reply, deadline, span: traces::current_span() })
            .map_err(|_| StoreError::Unavailable("too many decisions waiting for Redis".into()))?;
        // Dropping `rx` (our caller gave up, or the deadline passed) tells the
        // batcher not to send this request if it has not yet.
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Unavailable("the Redis batcher stopped".into())),
            Err(_) => Err(StoreError::Unavailable(format!("Redis did not answer within {timeout:?}"))),
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    async fn read_usage(&self, keys: Vec<UsageKeys>, days: Vec<i64>) -> Result<Vec<Option<DayUsage>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len() * days.len());
        let clock = self.settings.clock_arg();
        let invocation = |chunk: &[UsageKeys]| {
            let mut inv = READ_USAGE.prepare_invoke();
            for k in chunk {
                inv.key(&k.state);
            }
            inv.arg(&clock).arg(days.len());
            for d in &days {
                inv.arg(*d);
            }
            inv
        };
        match self.link.conn().await? {
            Conn::Node { mut conn, .. } => {
                // Calls of bounded size, so one huge read does not stall others.
                for chunk in keys.chunks((2000 / days.len().max(1)).max(1)) {
                    let r: Vec<Option<i64>> =
                        invocation(chunk).invoke_async(&mut conn).await.map_err(|e| self.failed(e))?;
                    out.extend(r.chunks_exact(2).map(day_usage));
                }
            }
            Conn::Cluster(conn) => {
                // Keys of many slots: one call each, a few hundred at once.
                for chunk in keys.chunks(200) {
                    let reads = chunk.iter().map(|k| {
                        let mut c = conn.clone();
                        let inv = invocation(std::slice::from_ref(k));
                        async move { inv.invoke_async::<Vec<Option<i64>>>(&mut c).await }
                    });
                    for r in futures::future::join_all(reads).await {
                        out.extend(r.map_err(classify)?.chunks_exact(2).map(day_usage));
                    }
                }
            }
        }
        if out.len() != keys.len() * days.len() {
            return Err(StoreError::Internal(format!(
                "read_usage.lua returned {} records for {} keys and {} days",
                out.len(),
                keys.len(),
                days.len()
            )));
        }
        Ok(out)
    }

    async fn set_remaining(
        &self,
        usage: &UsageKeys,
        quota: &Quota,
        created_at_ms: u64,
        remaining: u64,
    ) -> Result<(u64, u64), StoreError> {
        let mut inv = SET_REMAINING.prepare_invoke();
        inv.key(&usage.state);
        inv.arg(self.settings.clock_arg());
        inv.arg(quota.limit).arg(quota.offset).arg(created_at_ms);
        if quota.is_utc_plain() {
            inv.arg(quota.period.code());
        } else {
            let clock = self.settings.clock_arg();
            inv.arg(quota.calendar().cached_table(replica_now_ms(&clock)).code.as_str());
        }
        inv.arg(remaining);
        if let Some(z) = quota.time_zone {
            inv.arg(crate::localtime::day_table(z, replica_now_ms(&self.settings.clock_arg()) as u64).code.as_str());
        }
        let r: Result<(u64, u64), redis::RedisError> = match self.link.conn().await? {
            Conn::Node { mut conn, .. } => inv.invoke_async(&mut conn).await,
            Conn::Cluster(mut conn) => inv.invoke_async(&mut conn).await,
        };
        r.map_err(|e| self.failed(e))
    }

    async fn refund(&self, refund: Refund) -> Result<RefundOutcome, StoreError> {
        let clock = self.settings.clock_arg();
        match self.link.conn().await? {
            Conn::Node { mut conn, .. } => {
                let sub = Sub::give_back(&refund, refund.limits.iter().collect());
                let mut out = script_call(&mut conn, &[sub], &clock, self.settings.wait, None)
                    .await
                    .map_err(|e| self.failed(e))?;
                refund_outcome(out.0.pop().unwrap_or_else(|| Err(StoreError::Internal("no answer".into())))?)
            }
            Conn::Cluster(conn) => cluster::refund(conn, &refund, &clock, self.settings.wait).await,
        }
    }
}

impl RedisStore {
    /// The secret every replica signs decision ids with (docs/semantics.md,
    /// "Refunds"): `fresh` is stored at `key` unless a secret is there
    /// already (the first replica to start wins), and the stored one is
    /// returned. Never logged.
    pub async fn shared_secret(&self, key: &str, fresh: &str) -> Result<String, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg("redis.call('SET', KEYS[1], ARGV[1], 'NX'); return redis.call('GET', KEYS[1])")
            .arg(1)
            .arg(key)
            .arg(fresh);
        let r: redis::RedisResult<String> = match self.link.conn().await? {
            Conn::Node { mut conn, .. } => cmd.query_async(&mut conn).await,
            Conn::Cluster(mut conn) => cmd.query_async(&mut conn).await,
        };
        r.map_err(|e| self.failed(e))
    }
}

impl RedisStore {
    /// A Redis error as a store error, relocating the link when the error
    /// says it points at the wrong node.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        if self.link.calls_for_relocation(&e) {
            let link = self.link.clone();
            tokio::spawn(async move {
                let _ = link.relocate("a command was refused").await;
            });
        }
        classify(e)
    }
}

/// One day's record from `read_usage.lua` (`n`, `q`; nil: none).
fn day_usage(r: &[Option<i64>]) -> Option<DayUsage> {
    r[0].map(|n| DayUsage { n, q: r[1] })
}

/// What one probe saw.
#[derive(PartialEq, Clone, Copy, Debug)]
enum Seen {
    Up,
    Down,
    /// A replica where a primary was expected (a demoted primary).
    Replica,
    /// A Redis Cluster node in single or sentinel mode.
    WrongMode,
}

/// Asks Redis whether it is there and takes writes (single, sentinel:
/// `ROLE`, master; cluster: `CLUSTER INFO`, state ok) every
/// [`PROBE_INTERVAL`], or at once when a decision failed (`look_now`), and
/// sets `ready` by the rules in the module docs. A demoted primary, or with
/// Sentinel an unreachable one, makes the link find the primary again.
async fn probe(link: Arc<Link>, ready: Arc<AtomicBool>, look_now: Arc<Notify>) {
    let mut was = None;
    let mut failing: Option<(Instant, u32)> = None;
    let mut config_checked = false;
    loop {
        let seen = tokio::time::timeout(Duration::from_secs(1), look(&link)).await.unwrap_or(Seen::Down);
        if matches!(seen, Seen::Replica) || (seen == Seen::Down && link.target.mode == target::Mode::Sentinel) {
            let why = if seen == Seen::Replica { "the node is a replica now" } else { "the primary does not answer" };
            let _ = link.relocate(why).await;
        }
        let now = Instant::now();
        let is_ready = match seen {
            Seen::Up => {
                failing = None;
                true
            }
            Seen::WrongMode => false,
            Seen::Down | Seen::Replica => {
                let (since, n) = failing.get_or_insert((now, 0));
                *n += 1;
                let sustained = *n >= UNREADY_AFTER_PROBES && now.duration_since(*since) >= UNREADY_AFTER;
                ready.load(Ordering::Relaxed) && !sustained
            }
        };
        ready.store(is_ready, Ordering::Relaxed);
        metrics::gauge!("tollgate_redis_up").set(if seen == Seen::Up { 1.0 } else { 0.0 });
        report(&link, seen, &mut was);
        if seen == Seen::Up && !config_checked {
            config_checked = true;
            check_config(&link).await;
        }
        let pause = if seen == Seen::Up { PROBE_INTERVAL } else { FAILING_PROBE_INTERVAL };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = look_now.notified() => {}
        }
    }
}

/// One look at Redis.
async fn look(link: &Link) -> Seen {
    let Ok(conn) = link.conn().await else { return Seen::Down };
    match conn {
        Conn::Node { mut conn, .. } => {
            // INFO and ROLE answer while Redis loads its data, when scripts
            // would get LOADING: the persistence section tells.
            let info: redis::RedisResult<String> =
                redis::cmd("INFO").arg("cluster").arg("persistence").query_async(&mut conn).await;
            match info {
                Ok(t) if t.contains("cluster_enabled:1") => return Seen::WrongMode,
                Ok(t) if t.contains("\nloading:1") || t.contains("async_loading:1") => return Seen::Down,
                Ok(_) => {}
                Err(e) if link.calls_for_relocation(&e) => return Seen::Replica,
                Err(_) => return Seen::Down,
            }
            match redis::cmd("ROLE").query_async::<redis::Value>(&mut conn).await {
                Ok(redis::Value::Array(v)) => match v.first() {
                    Some(redis::Value::BulkString(r)) if r == b"master" => Seen::Up,
                    Some(redis::Value::SimpleString(r)) if r == "master" => Seen::Up,
                    _ => Seen::Replica,
                },
                Ok(_) | Err(_) => Seen::Down,
            }
        }
        Conn::Cluster(mut conn) => {
            let routing = || {
                redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::RandomPrimary,
                )
            };
            let mut slots = redis::cmd("CLUSTER");
            slots.arg("SLOTS");
            if let Ok(v) = conn.route_command(slots, routing()).await {
                link.set_slots(target::slot_ranges(&v));
            }
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("INFO");
            match conn.route_command(cmd, routing()).await.ok().and_then(|v| redis::from_redis_value::<String>(v).ok())
            {
                Some(t) if t.contains("cluster_state:ok") => Seen::Up,
                _ => Seen::Down,
            }
        }
    }
}

/// Warns (log and metric) when Redis may lose counters: an eviction policy
/// other than `noeviction` drops keys under memory pressure (every counter
/// has a TTL, so `volatile-*` policies drop them too), and without
/// persistence a restart forgets every count and the catalog. Checked once,
/// when Redis is first reached; a Redis that refuses `CONFIG GET` (managed
/// services) is reported as unknown.
async fn check_config(link: &Link) {
    let get = |param: &'static str| async move {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(param);
        let v: redis::RedisResult<Vec<String>> = match link.conn().await.ok()? {
            Conn::Node { mut conn, .. } => cmd.query_async(&mut conn).await,
            Conn::Cluster(mut conn) => {
                let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::RandomPrimary,
                );
                match conn.route_command(cmd, routing).await {
                    Ok(v) => redis::from_redis_value(v)
                        .map_err(|e| redis::RedisError::from((redis::ErrorKind::Parse, "CONFIG GET", e.to_string()))),
                    Err(e) => Err(e),
                }
            }
        };
        v.ok().and_then(|v| v.get(1).cloned())
    };
    let (policy, save, aof) = (get("maxmemory-policy").await, get("save").await, get("appendonly").await);
    let redis = link.describe();
    match policy.as_deref() {
        Some("noeviction") => metrics::gauge!("tollgate_redis_unsafe_config", "problem" => "eviction").set(0.0),
        Some(p) => {
            metrics::gauge!("tollgate_redis_unsafe_config", "problem" => "eviction").set(1.0);
            tracing::error!(
                %redis,
                policy = p,
                "Redis may evict tollgate's keys (maxmemory-policy {p}): quotas and throttles would silently reset; set maxmemory-policy noeviction"
            );
        }
        None => {
            tracing::warn!(%redis, "cannot read Redis's maxmemory-policy (CONFIG GET refused); make sure it is noeviction")
        }
    }
    match (save.as_deref(), aof.as_deref()) {
        (Some(""), Some("no")) => {
            metrics::gauge!("tollgate_redis_unsafe_config", "problem" => "persistence").set(1.0);
            tracing::warn!(
                %redis,
                "Redis has no persistence (no RDB snapshots, no AOF): a Redis restart forgets every count and the catalog; turn on appendonly (docs/operations.md)"
            );
        }
        (Some(_), Some(_)) => metrics::gauge!("tollgate_redis_unsafe_config", "problem" => "persistence").set(0.0),
        _ => {}
    }
}

/// Logs a change of what the probe sees.
fn report(link: &Link, seen: Seen, was: &mut Option<Seen>) {
    if *was == Some(seen) {
        return;
    }
    let redis = link.describe();
    match seen {
        Seen::Up => tracing::info!(%redis, "Redis is reachable"),
        Seen::Down => tracing::warn!(
            %redis,
            "Redis is not reachable; decisions answer UNAVAILABLE until it is (health: NOT_SERVING if it lasts)"
        ),
        Seen::Replica => tracing::warn!(%redis, "the Redis node is a replica, not a primary; looking for the primary"),
        Seen::WrongMode => tracing::error!(
            %redis,
            "this Redis is a Redis Cluster node: start tollgate with --redis-mode cluster (and the cluster's nodes in --redis-url)"
        ),
    }
    *was = Some(seen);
}

async fn batcher(mut rx: mpsc::Receiver<Job>, link: Arc<Link>, s: RedisSettings, look_now: Arc<Notify>) {
    let slots = Arc::new(Semaphore::new(s.max_in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // What is pending now forms the batch; jobs whose caller is gone or
        // whose deadline passed while they waited are never sent.
        let now = Instant::now();
        let mut batch = Vec::with_capacity(8);
        admit(first, now, &mut batch);
        while batch.len() < s.max_batch {
            match rx.try_recv() {
                Ok(j) => admit(j, now, &mut batch),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let link = link.clone();
        let clock = s.clock_arg();
        let wait = s.wait;
        let events = s.events.clone();
        let look_now = look_now.clone();
        for job in &batch {
            traces::record_batch_size(&job.span, batch.len());
        }
        tokio::spawn(async move {
            let checks: Vec<&Check> = batch.iter().map(|j| &j.check).collect();
            let result = run_batch(&link, &checks, &clock, wait, &events).await;
            // The slot is held until Redis answered (or the connection gave up).
            drop(permit);
            match result {
                Ok(verdicts) => {
                    for (job, v) in batch.into_iter().zip(verdicts) {
                        let _ = job.reply.send(v);
                    }
                }
                Err(e) => {
                    look_now.notify_one();
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Puts `job` into `batch` unless its caller is gone or its deadline passed.
fn admit(job: Job, now: Instant, batch: &mut Vec<Job>) {
    if job.reply.is_closed() {
        metrics::counter!("tollgate_store_dropped_total", "why" => "cancelled").increment(1);
    } else if now >= job.deadline {
        metrics::counter!("tollgate_store_dropped_total", "why" => "expired").increment(1);
        let _ = job.reply.send(Err(StoreError::Unavailable("the deadline passed before Redis was asked".into())));
    } else {
        batch.push(job);
    }
}

/// What a script call does with one request (`decide.lua`, ARGV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Check every limit; consume only if all pass.
    Take,
    /// Check only.
    Dry,
    /// Give the cost back to the buckets.
    Refund,
    /// Take, and lease up to this many tokens besides.
    Lease(u64),
    /// Settle a lease (`LeaseOp::Settle`): the cost is the tokens used.
    Settle {
        /// Tokens the lease held.
        leased: u64,
        /// Its slot.
        slot: u64,
    },
    /// Give an earlier decision's cost back, once (a [`Refund`]; the sub's
    /// `marker` names its marker key).
    GiveBack {
        /// The refund window's end, ms.
        until_ms: u64,
        /// The start day of the decision's quota period; -1: none.
        period_day: i64,
        /// The day whose usage counted the decision.
        usage_day: i64,
    },
}

/// One request as one script call sees it: some or all of a check's limits.
pub(crate) struct Sub<'a> {
    pub limits: Vec<&'a Limit>,
    pub cost: u64,
    pub usage: Option<&'a UsageKeys>,
    pub op: Op,
    /// With [`Op::GiveBack`]: the refund's marker key.
    pub marker: Option<&'a str>,
}

impl<'a> Sub<'a> {
    /// The whole check, taken.
    fn take(c: &'a Check) -> Self {
        let op = match c.lease {
            LeaseOp::None => Op::Take,
            LeaseOp::Ask(n) => Op::Lease(n),
            LeaseOp::Settle { leased, slot } => Op::Settle { leased, slot },
        };
        Sub { limits: c.limits.iter().collect(), cost: c.cost, usage: c.usage.as_ref(), op, marker: None }
    }

    /// Some of a refund's limits (those in the marker's slot: all of them
    /// on one node) given back once, with its usage.
    pub(crate) fn give_back(r: &'a Refund, limits: Vec<&'a Limit>) -> Self {
        let op = Op::GiveBack { until_ms: r.until_ms, period_day: r.period_day.unwrap_or(-1), usage_day: r.usage_day };
        Sub { limits, cost: r.cost, usage: r.usage.as_ref(), op, marker: Some(&r.marker) }
    }
}

/// A refund's outcome from the answer of its "F" request (`decide.lua`:
/// what it did in `limit`, the quota left in `remaining`, whether a limit
/// is a quota in `reset_ms`).
pub(crate) fn refund_outcome(v: Verdict) -> Result<RefundOutcome, StoreError> {
    match v.limit {
        1 => Ok(RefundOutcome::Refunded { quota_remaining: (v.reset_ms == 1).then_some(v.remaining) }),
        2 => Ok(RefundOutcome::AlreadyRefunded),
        3 => Ok(RefundOutcome::WindowPassed),
        4 => Ok(RefundOutcome::PeriodPassed),
        other => Err(StoreError::Internal(format!("decide.lua answered a refund with {other}"))),
    }
}

/// Builds the one EVALSHA of `decide.lua` for `subs`; `events`: the
/// stream the script appends quota alert events to (`None`: it answers the
/// crossings only, for the caller to append: a cluster, where the stream is
/// in another slot). A `Cmd` keeps its
/// arguments in one buffer, where `Script::prepare_invoke` allocates (and
/// later copies) every argument on its own; a batch has hundreds of them.
/// Each key is sent once (the script reads and writes it once), and named
/// by its index in KEYS.
pub(crate) fn decide_cmd<'a>(subs: &[Sub<'a>], clock: &str, events: Option<&'a EventsAt>) -> redis::Cmd {
    // Each key once, in order of first use; every name refers to its index.
    let mut keys: Vec<&'a str> = Vec::with_capacity(subs.len() * 2);
    let mut key_index: HashMap<&'a str, usize> = HashMap::with_capacity(subs.len() * 2);
    let mut key = |k: &'a str| -> usize {
        *key_index.entry(k).or_insert_with(|| {
            keys.push(k);
            keys.len()
        })
    };
    // Each rule once: its kind and three numbers. (A local-time quota's
    // kind is its period table around this replica's clock.)
    let now_ms = std::cell::OnceCell::new();
    let now = || *now_ms.get_or_init(|| replica_now_ms(clock));
    let mut rules: Vec<RuleArgs> = Vec::with_capacity(4);
    let mut rule_index: HashMap<RuleArgs, usize> = HashMap::with_capacity(4);
    let mut rule = |r: &Rule| -> usize {
        let args = rule_args(r, now);
        *rule_index.entry(args.clone()).or_insert_with(|| {
            rules.push(args);
            rules.len()
        })
    };
    // (key and rule index of each limit, and the usage's state hash) per sub
    let mut named: Vec<Named> = Vec::with_capacity(subs.len());
    let mut markers: Vec<usize> = Vec::new();
    for c in subs {
        let limits = c.limits.iter().map(|&l: &&'a Limit| (key(l.key.as_str()), rule(&l.rule))).collect();
        let counts = matches!(c.op, Op::Take | Op::Lease(_) | Op::Settle { .. } | Op::GiveBack { .. });
        let usage = c.usage.filter(|_| counts).map(|u: &'a UsageKeys| key(&u.state));
        markers.push(c.marker.map_or(0, &mut key));
        // (a quota alert's stream, named only by requests of plans with
        // alerts that take; a refund fires none)
        let alerts = c.usage.and_then(|u| u.alerts.as_ref()).filter(|_| !matches!(c.op, Op::GiveBack { .. }));
        let stream = match (usage, alerts, events) {
            (Some(_), Some(_), Some(e)) => Some(key(&e.stream)),
            (Some(_), Some(_), None) => Some(0),
            _ => None,
        };
        named.push((limits, usage, stream));
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(DECIDE.get_hash()).arg(keys.len());
    for k in &keys {
        cmd.arg(*k);
    }
    cmd.arg(clock).arg(subs.len()).arg(rules.len());
    for (kind, a, b, c) in &rules {
        cmd.arg(kind.as_str()).arg(*a).arg(*b).arg(*c);
    }
    for ((c, (limits, usage, stream)), marker) in subs.iter().zip(&named).zip(&markers) {
        let op = match (c.op, usage.is_some(), stream.is_some()) {
            (Op::GiveBack { .. }, true, _) => "FU",
            (Op::GiveBack { .. }, false, _) => "F",
            (Op::Take, true, true) => "TUA",
            (Op::Take, true, false) => "TU",
            (Op::Take, false, _) => "T",
            (Op::Lease(_), true, true) => "LUA",
            (Op::Lease(_), true, false) => "LU",
            (Op::Lease(_), false, _) => "L",
            (Op::Settle { .. }, true, true) => "SUA",
            (Op::Settle { .. }, true, false) => "SU",
            (Op::Settle { .. }, false, _) => "S",
            (Op::Dry, _, _) => "D",
            (Op::Refund, _, _) => "R",
        };
        // usage counted by local days: "Z" after the op (and after its "A"),
        // and the day table before the alerts' arguments
        let zone = c.usage.and_then(|u| u.zone).filter(|_| usage.is_some());
        match zone {
            Some(_) => cmd.arg(c.cost).arg(format!("{op}Z")).arg(c.limits.len()),
            None => cmd.arg(c.cost).arg(op).arg(c.limits.len()),
        };
        if let Some(state) = usage {
            cmd.arg(*state);
        }
        if let Some(z) = zone {
            cmd.arg(crate::localtime::day_table(z, now() as u64).code.as_str());
        }
        if let (Some(stream), Some(al)) = (stream, c.usage.and_then(|u| u.alerts.as_ref())) {
            cmd.arg(*stream).arg(events.map_or(0, |e| e.max)).arg(al.thresholds.len());
            for t in &al.thresholds {
                cmd.arg(*t);
            }
            cmd.arg(&al.key_id).arg(&al.plan_id);
        }
        match c.op {
            Op::Lease(ask) => {
                cmd.arg(ask);
            }
            Op::Settle { leased, slot } => {
                cmd.arg(leased).arg(slot);
            }
            Op::GiveBack { until_ms, period_day, usage_day } => {
                cmd.arg(*marker).arg(until_ms).arg(period_day).arg(usage_day);
            }
            _ => {}
        }
        for (l, (k, r)) in c.limits.iter().zip(limits) {
            cmd.arg(*k).arg(l.field.as_deref().unwrap_or("")).arg(*r);
        }
    }
    cmd
}

/// A sub's names in one script call: (key index, rule index) per limit,
/// the index of the state hash that counts its usage, and with quota alerts
/// the index of their stream (0: none).
type Named = (Vec<(usize, usize)>, Option<usize>, Option<usize>);

/// A rule as `decide.lua` reads it: its kind and three numbers.
type RuleArgs = (RuleKind, u64, u64, u64);

/// A rule's kind: a fixed code, or a local-time quota's period table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RuleKind {
    Code(&'static str),
    Table(Arc<crate::localtime::PeriodTable>),
}

impl RuleKind {
    fn as_str(&self) -> &str {
        match self {
            RuleKind::Code(c) => c,
            RuleKind::Table(t) => &t.code,
        }
    }
}

/// `now_ms`: the replica's clock, asked only for a local-time quota.
fn rule_args(r: &Rule, now_ms: impl FnOnce() -> i64) -> RuleArgs {
    match r {
        Rule::Bucket(t) => (RuleKind::Code("B"), t.rate_milli(), u64::from(t.burst_limit), 0),
        Rule::Quota { quota, created_at_ms } if quota.is_utc_plain() => {
            (RuleKind::Code(quota.period.code()), quota.limit, quota.offset, *created_at_ms)
        }
        Rule::Quota { quota, created_at_ms } => {
            let table = quota.calendar().cached_table(now_ms());
            (RuleKind::Table(table), quota.limit, quota.offset, *created_at_ms)
        }
    }
}

/// The replica's clock in ms, around which local-time period tables are
/// computed: the scripts' test clock when there is one (`clock.lua`), else
/// the system clock.
fn replica_now_ms(clock: &str) -> i64 {
    let now = match clock.parse::<i64>() {
        Ok(us) => us.div_euclid(1000),
        Err(_) => crate::model::now_ms().min(i64::MAX as u64) as i64,
    };
    #[cfg(feature = "test-clock")]
    let now = now + REPLICA_SKEW_MS.load(Ordering::Relaxed);
    now
}

/// Test-clock builds only: how far this process's replica clock is from the
/// scripts' clock, in ms, so that tests can show that Redis's clock decides
/// local-time periods (and what a replica a whole period off gets). One per
/// process: nextest runs each test in a process of its own.
#[cfg(feature = "test-clock")]
pub static REPLICA_SKEW_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Decides `checks`: one script call on one node, or the cluster protocol.
async fn run_batch(
    link: &Link,
    checks: &[&Check],
    clock: &str,
    wait: Option<WaitReplicas>,
    events: &EventsAt,
) -> Result<Vec<Result<Verdict, StoreError>>, StoreError> {
    match link.conn().await? {
        Conn::Node { mut conn, addr } => {
            let subs: Vec<Sub<'_>> = checks.iter().map(|c| Sub::take(c)).collect();
            let started = Instant::now();
            let out = script_call(&mut conn, &subs, clock, wait, Some(events)).await;
            metrics::histogram!("tollgate_redis_call_seconds", "node" => addr.clone()).record(started.elapsed());
            match out {
                Ok((v, crossings)) => {
                    events::appended(&crossings);
                    Ok(v)
                }
                Err(e) => {
                    metrics::counter!("tollgate_redis_errors_total", "node" => addr).increment(1);
                    if link.calls_for_relocation(&e) {
                        let _ = link.relocate("a script was refused").await;
                    }
                    Err(classify(e))
                }
            }
        }
        Conn::Cluster(conn) => {
            let (out, crossings, reconnect) = cluster::run(conn.clone(), link, checks, clock, wait).await;
            events::append_after(conn, events, checks, crossings);
            if reconnect {
                // The cluster connection lost a node it will not find again
                // by itself (seen after a failover): a new one reads the
                // topology afresh.
                let _ = link.relocate("the cluster connection lost a node").await;
            }
            Ok(out)
        }
    }
}

/// Runs `decide.lua` once for `subs` on `conn` (with `WAIT` after it when
/// asked): one answer per sub, and the quota alerts crossed. A NOSCRIPT
/// reply means nothing ran: the script is loaded and the same call sent
/// again.
pub(crate) async fn script_call<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    subs: &[Sub<'_>],
    clock: &str,
    wait: Option<WaitReplicas>,
    events: Option<&EventsAt>,
) -> redis::RedisResult<Answers> {
    let cmd = decide_cmd(subs, clock, events);
    let mut pipe = redis::pipe();
    pipe.add_command(cmd);
    if let Some(w) = wait {
        pipe.cmd("WAIT").arg(w.replicas).arg(w.timeout.as_millis() as u64);
    }
    let reply: Vec<redis::Value> = match pipe.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            DECIDE.load_async(conn).await?;
            pipe.query_async(conn).await?
        }
        r => r?,
    };
    answers(subs.len(), reply, wait)
}

/// One answer per request of a script call, and the quota alerts it
/// crossed.
pub(crate) type Answers = (Vec<Result<Verdict, StoreError>>, Vec<events::Crossed>);

/// The script's answers, checked against `WAIT`'s count when asked.
pub(crate) fn answers(
    n: usize,
    mut reply: Vec<redis::Value>,
    wait: Option<WaitReplicas>,
) -> redis::RedisResult<Answers> {
    // A cluster pipeline hands back a command's error as a value.
    if let Some(redis::Value::ServerError(e)) = reply.first() {
        return Err(redis::RedisError::from(e.clone()));
    }
    let acked = match (wait, reply.len()) {
        (Some(_), 2) => match reply.pop() {
            Some(redis::Value::Int(n)) => Some(n),
            _ => Some(0),
        },
        _ => None,
    };
    let mut values = match reply.pop() {
        Some(redis::Value::Array(v)) => v,
        other => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "decide.lua returned an unexpected reply",
                format!("{other:?}"),
            )))
        }
    };
    let crossed = events::crossed(&mut values, n * VALUES)?;
    if values.len() != n * VALUES {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "decide.lua returned a wrong number of values",
            format!("{} values for {n} requests", values.len()),
        )));
    }
    let mut out: Vec<Result<Verdict, StoreError>> = values.chunks_exact(VALUES).map(verdict).collect();
    if let (Some(w), Some(acked)) = (wait, acked) {
        if acked < i64::from(w.replicas) {
            metrics::counter!("tollgate_redis_wait_shortfalls_total").increment(1);
            let e = StoreError::Unavailable(format!(
                "the decision was acknowledged by {acked} replica(s) within {:?}, not the {} --redis-wait-replicas asks for",
                w.timeout, w.replicas
            ));
            for v in out.iter_mut().filter(|v| v.as_ref().is_ok_and(|v| v.allowed)) {
                *v = Err(e.clone());
            }
        }
    }
    Ok((out, crossed))
}

/// How many values `decide.lua` answers per request.
const VALUES: usize = 9;

/// One request's nine values from `decide.lua`.
fn verdict(r: &[redis::Value]) -> Result<Verdict, StoreError> {
    let int = |v: &redis::Value| match v {
        redis::Value::Int(i) => Some(*i),
        _ => None,
    };
    let nums: Option<Vec<i64>> = r.iter().map(int).collect();
    match nums {
        Some(r) if r[0] >= 0 => Ok(Verdict {
            allowed: r[0] == 1,
            index: (r[1] > 0).then(|| r[1] as usize - 1),
            limit: r[2].max(0) as u64,
            remaining: r[3].max(0) as u64,
            reset_ms: r[4].max(0) as u64,
            retry_after_ms: (r[5] >= 0).then_some(r[5] as u64),
            grant: (r[0] == 1 && r[6] > 0).then(|| Grant {
                tokens: r[6] as u64,
                slot: r[7].max(0) as u64,
                valid_ms: r[8].max(0) as u64,
            }),
            // a denial that leases decided, or a settle that found its
            // lease lapsed
            soft: (r[0] == 0 && r[6] == 1) || (r[0] == 1 && r[6] == 0 && r[7] == 1),
        }),
        _ => {
            let why = match &r[1] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            tracing::error!(error = %why, "decide.lua could not decide a request; it was not charged");
            Err(StoreError::Internal(format!("decide.lua: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    /// A refund's request in `decide.lua`'s ARGV, exactly as the script's
    /// header says: cost, "FU", the number of limits, the usage hash's
    /// index, the marker's index, the window's end, the period's start day,
    /// the usage day, then the limits.
    #[test]
    fn a_refund_call_has_the_documented_layout() {
        use super::{decide_cmd, Sub};
        use crate::model::{Period, Quota, Throttle};
        use crate::store::{Limit, Refund, Rule, UsageKeys};
        let r = Refund {
            limits: vec![
                Limit {
                    key: "tg:{k:a}:s:p".into(),
                    field: Some("b".into()),
                    rule: Rule::Bucket(Throttle { rate_limit: 2.0, burst_limit: 5 }),
                },
                Limit {
                    key: "tg:{k:a}:s:p".into(),
                    field: Some("q".into()),
                    rule: Rule::Quota {
                        quota: Quota { limit: 9, period: Period::Day, offset: 0, time_zone: None, anchor_day: 0 },
                        created_at_ms: 7,
                    },
                },
            ],
            cost: 3,
            usage: Some(UsageKeys { state: "tg:{k:a}:s:p".into(), zone: None, alerts: None }),
            usage_day: 20_001,
            period_day: Some(20_000),
            until_ms: 123,
            marker: "tg:{k:a}:r:ff".into(),
        };
        let cmd = decide_cmd(&[Sub::give_back(&r, r.limits.iter().collect())], "", None);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect();
        let want = [
            "2",
            "tg:{k:a}:s:p",
            "tg:{k:a}:r:ff",
            "",
            "1",
            "2",
            "B",
            "2000",
            "5",
            "0",
            "D",
            "9",
            "0",
            "7",
            "3",
            "FU",
            "2",
            "1",
            "2",
            "123",
            "20000",
            "20001",
            "1",
            "b",
            "1",
            "1",
            "q",
            "2",
        ];
        assert_eq!(args[2..], want, "{args:?}");
    }

    #[test]
    fn redacts_userinfo_passwords() {
        assert_eq!(redact_url("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact_url("redis://:secret@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("rediss://u:secret@h:6380/2#insecure"), "rediss://u:***@h:6380/2#insecure");
        assert_eq!(redact_url("valkey://u:secret@h"), "valkey://u:***@h");
        // Percent-encoded, and with characters that must be encoded.
        assert_eq!(redact_url("redis://u:s%40c%2Fr%3Aet@h:6379"), "redis://u:***@h:6379");
        // A lone user part: probably a password in the wrong place.
        assert_eq!(redact_url("redis://secret@h:6379"), "redis://***@h:6379");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://h:6379/0?protocol=resp3"), "redis://h:6379/0?protocol=resp3");
    }

    #[test]
    fn redacts_query_passwords_of_unix_urls() {
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=secret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("unix:///run/redis.sock?user=app&pass=secret&protocol=3"),
            "unix:///run/redis.sock?user=app&pass=***&protocol=3"
        );
        assert_eq!(redact_url("valkey+unix:///run/v.sock?pass=secret"), "valkey+unix:///run/v.sock?pass=***");
        // Every occurrence, encoded names, other cases, other schemes.
        assert_eq!(
            redact_url("unix:///s?pass=one&pa%73s=two&PASS=three&password=four&&db=0"),
            "unix:///s?pass=***&pa%73s=***&PASS=***&password=***&db=0"
        );
        assert_eq!(redact_url("redis://h:6379/?pass=secret"), "redis://h:6379/?pass=***");
        assert_eq!(redact_url("redis+unix:///run/redis.sock"), "redis+unix:///run/redis.sock");
    }

    #[test]
    fn hides_what_it_cannot_parse() {
        // Unencoded '/', '?' or '#' in a password: the URL does not parse.
        for url in [
            "redis://:pa/ss@h:6379",
            "redis://u:pa?ss@h",
            "redis://u:pa#ss@h",
            "u:secret@h:6379",
            // These parse, with the password's tail in the path, query, fragment.
            "redis://u:12/pass@h",
            "redis://u:12?pass@h",
            "redis://u:12#pass@h",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("pa") && !shown.contains("ss") && !shown.contains("secret"), "{url} -> {shown}");
        }
        assert_eq!(redact_url("redis://:pa/ss@h:6379"), "redis://***");
        assert_eq!(redact_url("http://u:secret@h"), "http://***");
        // Nothing secret can be in it: shown as given, to help fix it.
        assert_eq!(redact_url("redis://h:notaport"), "redis://h:notaport");
    }

    /// The password redis-rs itself reads from each form never survives.
    /// (`rediss://` is left out: this build of redis-rs has no TLS, so it
    /// refuses such URLs; the userinfo test above covers its form.)
    #[test]
    fn the_password_redis_reads_is_never_shown() {
        use redis::IntoConnectionInfo;
        for url in [
            "redis://u:hunter2@h:6379/0",
            "redis://:hunter2@h",
            "redis+unix:///run/redis.sock?pass=hunter2",
            "unix:///run/redis.sock?db=3&pass=hunter2",
        ] {
            let info = url.into_connection_info().expect(url);
            assert_eq!(info.redis_settings().password(), Some("hunter2"), "{url}: redis-rs reads this password");
            assert!(!redact_url(url).contains("hunter2"), "{url} -> {}", redact_url(url));
        }
    }
}
