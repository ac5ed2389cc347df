//! The shared store: limits in Redis, decided by one Lua script call.
//!
//! # Hot path
//! `ARCHITECTURE.md` ("Hot path budget") measured that a pool checkout per
//! call is the slowest way to talk to Redis and that deciding many pending
//! requests in ONE script call is the fastest. So decisions go through a
//! batcher task: callers send their [`Check`] over a channel; the batcher
//! takes whatever is pending (up to `max_batch`), runs `decide.lua` once for
//! all of them on a multiplexed [`ConnectionManager`], and answers each
//! caller. At most `max_in_flight` batches run at once; while they do, new
//! requests queue up and form the next batch, so batching grows with load and
//! adds no wait when idle. Each request in a batch is still all-or-nothing.
//!
//! # Failures
//! - NOSCRIPT (after a Redis restart or `SCRIPT FLUSH`): `Script::invoke_async`
//!   sends EVALSHA, and on NOSCRIPT loads the script and sends it again. That
//!   is safe: a NOSCRIPT reply means nothing ran. (A script inside a pipeline
//!   would not be retried this way; we never pipeline scripts.)
//! - Every batch has a deadline (`timeout`); past it, or when Redis cannot be
//!   reached, the callers get [`StoreError::Unavailable`] (gRPC UNAVAILABLE).
//!   The connection manager reconnects by itself; a probe task PINGs Redis
//!   every second so that health reports NOT_SERVING while Redis is away and
//!   SERVING again when it is back.
//! - Redis unreachable at start is not fatal: the store starts, unready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{gcra_params, Check, DayUsage, LimitStore, Rule, StoreError, Verdict};
use crate::model::Quota;

/// Builds a script from its file, with `calendar.lua` inserted at its
/// `-- @calendar` line.
fn script(body: &str) -> redis::Script {
    let calendar = include_str!("scripts/calendar.lua");
    let mut out = String::with_capacity(body.len() + calendar.len());
    for line in body.lines() {
        if line.starts_with("-- @calendar") {
            out.push_str(calendar);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    redis::Script::new(&out)
}

/// The decision script (see its header for KEYS and ARGV).
static DECIDE: LazyLock<redis::Script> = LazyLock::new(|| script(include_str!("scripts/decide.lua")));

/// UpdateUsage's script.
static SET_REMAINING: LazyLock<redis::Script> = LazyLock::new(|| script(include_str!("scripts/set_remaining.lua")));

/// How the Redis store behaves.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…`.
    pub url: String,
    /// Deadline of one decision's round trip to Redis.
    pub timeout: Duration,
    /// Most requests decided by one script call.
    pub max_batch: usize,
    /// Most script calls in flight at once.
    pub max_in_flight: usize,
}

impl RedisSettings {
    /// Defaults for `url`.
    pub fn new(url: &str) -> Self {
        Self { url: url.to_string(), timeout: super::DEFAULT_TIMEOUT, max_batch: 64, max_in_flight: 4 }
    }
}

struct Job {
    check: Check,
    reply: oneshot::Sender<Result<Verdict, StoreError>>,
}

/// Limits in Redis, shared by every replica that points at it.
pub struct RedisStore {
    jobs: mpsc::Sender<Job>,
    ready: Arc<AtomicBool>,
    conn: ConnectionManager,
}

/// Classifies a Redis error: connection trouble and timeouts are transient
/// (UNAVAILABLE); anything else the server said is internal.
pub fn classify(e: redis::RedisError) -> StoreError {
    use redis::{ErrorKind::Server, ServerErrorKind as S};
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.kind(), Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown));
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
    /// Opens the store. Fails only when the URL is malformed; an unreachable
    /// Redis leaves the store unready until it can be reached.
    pub fn open(settings: RedisSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| StoreError::Internal(format!("invalid Redis URL {}: {e}", redact_url(&settings.url))))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Internal(format!("cannot set up the Redis connection: {e}")))?;
        let ready = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(settings.max_batch * settings.max_in_flight * 16);
        tokio::spawn(batcher(rx, conn.clone(), settings.clone(), ready.clone()));
        tokio::spawn(probe(conn.clone(), ready.clone(), settings.url.clone()));
        Ok(Self { jobs: tx, ready, conn })
    }

    /// A connection to the same Redis (shares the multiplexed connection).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

impl LimitStore for RedisStore {
    async fn check(&self, check: Check) -> Result<Verdict, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .try_send(Job { check, reply })
            .map_err(|_| StoreError::Unavailable("too many decisions waiting for Redis".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the Redis batcher stopped".into()))?
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    async fn read_usage(&self, keys: Vec<String>) -> Result<Vec<Option<DayUsage>>, StoreError> {
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(keys.len());
        // Pipelines of bounded size, so one huge read does not stall others.
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("HMGET").arg(k).arg("n").arg("q");
            }
            let rows: Vec<(Option<i64>, Option<i64>)> = pipe.query_async(&mut conn).await.map_err(classify)?;
            out.extend(
                rows.into_iter()
                    .map(|(n, q)| (n.is_some() || q.is_some()).then_some(DayUsage { n: n.unwrap_or(0), q })),
            );
        }
        Ok(out)
    }

    async fn set_remaining(
        &self,
        quota_base: &str,
        usage_base: &str,
        quota: &Quota,
        created_at_ms: u64,
        remaining: u64,
    ) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = SET_REMAINING.prepare_invoke();
        inv.key(quota_base).key(usage_base);
        inv.arg(quota.limit).arg(quota.offset).arg(created_at_ms).arg(quota.period.code()).arg(remaining);
        let (r, end): (u64, u64) = inv.invoke_async(&mut conn).await.map_err(classify)?;
        Ok((r, end))
    }
}

/// Asks Redis every second whether it is there (`INFO cluster`, as cheap as
/// a PING) and records the answer. A Redis Cluster node counts as not ready:
/// cluster mode is not supported yet (docs/architecture.md), and a
/// single-node client would get MOVED errors for most keys.
async fn probe(mut conn: ConnectionManager, ready: Arc<AtomicBool>, url: String) {
    #[derive(PartialEq, Clone, Copy)]
    enum State {
        Up,
        Down,
        Cluster,
    }
    let mut was = None;
    loop {
        let info = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("INFO").arg("cluster").query_async::<String>(&mut conn),
        )
        .await;
        let state = match info {
            Ok(Ok(text)) if text.contains("cluster_enabled:1") => State::Cluster,
            Ok(Ok(_)) => State::Up,
            _ => State::Down,
        };
        ready.store(state == State::Up, Ordering::Relaxed);
        if was != Some(state) {
            let redis = redact_url(&url);
            match state {
                State::Up => tracing::info!(%redis, "Redis is reachable"),
                State::Down => {
                    tracing::warn!(%redis, "Redis is not reachable; decisions answer UNAVAILABLE until it is")
                }
                State::Cluster => tracing::error!(
                    %redis,
                    "this Redis is a Redis Cluster node, which tollgate does not support yet: use a single Redis \
                     (with replicas / Sentinel for availability)"
                ),
            }
            was = Some(state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn batcher(mut rx: mpsc::Receiver<Job>, conn: ConnectionManager, s: RedisSettings, ready: Arc<AtomicBool>) {
    let slots = Arc::new(Semaphore::new(s.max_in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(8);
        batch.push(first);
        while batch.len() < s.max_batch {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut conn = conn.clone();
        let timeout = s.timeout;
        let ready = ready.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, run_batch(&mut conn, &batch)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!("Redis did not answer within {timeout:?}"))),
            };
            drop(permit);
            match result {
                Ok(verdicts) => {
                    for (job, v) in batch.into_iter().zip(verdicts) {
                        let _ = job.reply.send(Ok(v));
                    }
                }
                Err(e) => {
                    if e.is_transient() {
                        ready.store(false, Ordering::Relaxed);
                    }
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Runs `decide.lua` once for all jobs of a batch.
async fn run_batch(conn: &mut ConnectionManager, batch: &[Job]) -> Result<Vec<Verdict>, StoreError> {
    // One EVALSHA built directly: a `Cmd` keeps its arguments in one buffer,
    // where `Script::prepare_invoke` allocates (and later copies) every
    // argument on its own; a batch has hundreds of them.
    let nkeys: usize = batch.iter().map(|j| j.check.limits.len() + j.check.usage_key.is_some() as usize).sum();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(DECIDE.get_hash()).arg(nkeys);
    for c in batch.iter().map(|j| &j.check) {
        for l in &c.limits {
            cmd.arg(&l.key);
        }
        if let Some(u) = &c.usage_key {
            cmd.arg(u);
        }
    }
    cmd.arg(batch.len());
    for c in batch.iter().map(|j| &j.check) {
        cmd.arg(c.cost).arg(c.limits.len()).arg(if c.usage_key.is_some() { "1" } else { "0" });
        for l in &c.limits {
            match &l.rule {
                Rule::Bucket(t) => {
                    let (interval, tolerance) = gcra_params(t);
                    cmd.arg("B").arg(interval).arg(tolerance).arg(t.burst_limit).arg(0);
                }
                Rule::Quota { quota, created_at_ms } => {
                    cmd.arg("Q").arg(quota.limit).arg(quota.offset).arg(*created_at_ms).arg(quota.period.code());
                }
            }
        }
    }
    let out: Vec<i64> = match cmd.query_async(conn).await {
        // NOSCRIPT: nothing ran, so loading the script and sending the same
        // command again cannot charge anything twice.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            DECIDE.load_async(conn).await.map_err(classify)?;
            cmd.query_async(conn).await.map_err(classify)?
        }
        r => r.map_err(classify)?,
    };
    if out.len() != batch.len() * 6 {
        return Err(StoreError::Internal(format!(
            "decide.lua returned {} values for {} requests",
            out.len(),
            batch.len()
        )));
    }
    Ok(out
        .chunks_exact(6)
        .map(|r| Verdict {
            allowed: r[0] == 1,
            index: (r[1] > 0).then(|| r[1] as usize - 1),
            limit: r[2].max(0) as u64,
            remaining: r[3].max(0) as u64,
            reset_ms: r[4].max(0) as u64,
            retry_after_ms: (r[5] >= 0).then_some(r[5] as u64),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

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
