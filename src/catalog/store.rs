//! Where the catalog lives and how every replica keeps its snapshot fresh.
//!
//! [`CatalogService`] holds the compiled snapshot that the data plane reads
//! (lock-free, no I/O) and runs control-plane changes as transactions:
//! `update(f)` applies `f` to a copy of the records, checks the result as a
//! whole ([`Catalog::compile`]: references, one plan per stage per key,
//! unique values), stores it, and swaps the snapshot.
//!
//! - **Memory** (no Redis): the records live in this process; changes are
//!   lost on restart (the catalog file is loaded again).
//! - **Redis**: the records live in Redis (`store/keys.rs`, `{cat}` keys).
//!   A change is an optimistic transaction: WATCH the version key, compute,
//!   MULTI / write the changed records / INCR version / PUBLISH / EXEC, and
//!   start over if another writer got in between. Two admins racing to put a
//!   key into two plans sharing a stage are thus serialised, and the second
//!   is refused. Every replica hears the new version on the pub/sub channel
//!   and reloads; it also polls the version every `poll` interval, so a lost
//!   message or a dropped subscription heals within that interval.
//!
//! With Redis, the catalog file is a bootstrap: at start (and after Redis was
//! reset) a replica applies it only if its digest was never applied, by the
//! rules of [`super::bootstrap`], in one transaction with the file state
//! (`file_digests`, `file_records`). A file that cannot be applied is logged;
//! it never keeps a replica from serving the catalog Redis has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::{Connection, Pool, Runtime, Timeouts};
use futures::StreamExt;
use redis::AsyncCommands;
use serde::{de::DeserializeOwned, Serialize};

use super::admin::{prune_old_values, AdminError};
use super::bootstrap::{self, Applied, FileState};
use super::file::CatalogFile;
use super::{Catalog, CatalogData, CatalogHandle, PlanKey};
use crate::store::keys::Keys;
use crate::store::redis::redact_url;

/// The catalog of this process, kept in step with its store.
pub struct CatalogService {
    handle: CatalogHandle,
    version: AtomicU64,
    /// Serialises installs so that the version only moves forward.
    install_lock: Mutex<()>,
    ready: AtomicBool,
    /// Whether the snapshot came from the store (a Redis catalog starts with
    /// the file's records, which are not a base to compute changes from).
    synced: AtomicBool,
    backend: Backend,
}

enum Backend {
    Memory(tokio::sync::Mutex<()>),
    Redis(Box<RedisCatalog>),
}

struct RedisCatalog {
    pool: Pool,
    client: redis::Client,
    keys: Keys,
    url: String,
    poll: Duration,
    /// The catalog file, applied at start and again after a Redis reset.
    file: Option<CatalogFile>,
    /// An application of the file was cut short by Redis going away; the
    /// poll tries again.
    file_pending: AtomicBool,
    /// Serialises loads, so that a late, older load never follows a newer one
    /// (an older version then means only one thing: Redis was reset).
    load_lock: tokio::sync::Mutex<()>,
}

const TABLES: [&str; 5] = ["apis", "stages", "plans", "keys", "old_values"];

/// How many times a transaction is tried before the caller is told to retry.
const ATTEMPTS: usize = 32;

/// A catalog transaction under way: the version key is watched, and `data`
/// is a copy of the records at version `v`, to be changed and committed.
struct Tx {
    conn: Connection,
    v: u64,
    /// The snapshot `data` was copied from.
    old: Arc<Catalog>,
    data: CatalogData,
    now: u64,
    /// Loading the records showed that Redis was reset.
    reset: bool,
}

impl Tx {
    /// Gives up the transaction (UNWATCH), so the pooled connection is clean.
    async fn abort(mut self) {
        let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query_async(&mut self.conn).await;
    }
}

/// What [`CatalogService::apply_file`] did.
enum FileOutcome {
    /// A file with this digest was applied before, at this time (ms).
    AlreadyApplied(u64),
    /// Applied now.
    Applied(Applied),
}

impl CatalogService {
    /// A catalog kept in memory, starting from `initial`.
    pub fn memory(initial: CatalogData) -> Result<Arc<Self>, AdminError> {
        let catalog = Catalog::compile(initial)?;
        Ok(Arc::new(Self {
            handle: CatalogHandle::new(catalog),
            version: AtomicU64::new(1),
            install_lock: Mutex::new(()),
            ready: AtomicBool::new(true),
            synced: AtomicBool::new(true),
            backend: Backend::Memory(tokio::sync::Mutex::new(())),
        }))
    }

    /// A catalog in Redis. Starts unready with the file's records as its
    /// snapshot; a background task loads the catalog once Redis can be
    /// reached, applies the catalog file (if any, and if never applied
    /// before), becomes ready, and then keeps the catalog fresh.
    pub fn redis(url: &str, keys: Keys, poll: Duration, file: Option<CatalogFile>) -> Result<Arc<Self>, AdminError> {
        let client = redis::Client::open(url).map_err(|e| {
            AdminError::Invalid(crate::model::Invalid::new("redis_url", format!("{}: {e}", redact_url(url))))
        })?;
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(8);
        pool_cfg.timeouts = Timeouts {
            wait: Some(Duration::from_secs(2)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        };
        cfg.pool = Some(pool_cfg);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| AdminError::Internal(format!("cannot create the Redis pool: {e}")))?;
        let catalog = Catalog::compile(file.as_ref().map(|f| f.records.clone()).unwrap_or_default())?;
        let svc = Arc::new(Self {
            handle: CatalogHandle::new(catalog),
            version: AtomicU64::new(0),
            install_lock: Mutex::new(()),
            ready: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            backend: Backend::Redis(Box::new(RedisCatalog {
                pool,
                client,
                keys,
                url: url.to_string(),
                poll,
                file,
                file_pending: AtomicBool::new(false),
                load_lock: tokio::sync::Mutex::new(()),
            })),
        });
        tokio::spawn(sync(svc.clone()));
        Ok(svc)
    }

    /// The snapshot handle the data plane reads.
    pub fn handle(&self) -> CatalogHandle {
        self.handle.clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Catalog> {
        self.handle.load_full()
    }

    /// The version of the current snapshot.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Whether the catalog has been loaded from its store.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Installs a catalog of version `v` read from the store, unless it is the
    /// version we have. Loads are serialised, so a version older than ours
    /// means the store was reset (a Redis restart without persistence, a
    /// FLUSHALL): that catalog is installed too, and the answer says so.
    fn install(&self, v: u64, catalog: Catalog) -> Install {
        let _g = self.install_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.version.load(Ordering::SeqCst);
        let synced = self.synced.load(Ordering::SeqCst);
        if synced && v == current {
            return Install::Same;
        }
        self.handle.store(catalog);
        self.version.store(v, Ordering::SeqCst);
        self.synced.store(true, Ordering::SeqCst);
        if synced && v < current {
            tracing::warn!(from = current, to = v, "the catalog version went back: Redis was reset; reloaded");
            Install::Reset
        } else {
            Install::Newer
        }
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Runs a change as a transaction: `f` edits a copy of the records; the
    /// result is checked as a whole, stored, and installed. `f` may run more
    /// than once (when another writer got in first), so it must not have side
    /// effects beyond the records it is given.
    pub async fn update<T>(
        &self,
        mut f: impl FnMut(&mut CatalogData, u64) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        match &self.backend {
            Backend::Memory(lock) => {
                let _g = lock.lock().await;
                let now = crate::model::now_ms();
                let mut data = self.snapshot().data().clone();
                prune_old_values(&mut data, now);
                let out = f(&mut data, now)?;
                let catalog = Catalog::compile(data)?;
                let v = self.version() + 1;
                self.install(v, catalog);
                Ok(out)
            }
            Backend::Redis(r) => {
                for _ in 0..ATTEMPTS {
                    if let Some(out) = self.try_redis_update(r, &mut f).await? {
                        return Ok(out);
                    }
                    backoff().await;
                }
                Err(AdminError::Unavailable("the catalog is changing too fast to apply this change; retry".into()))
            }
        }
    }

    /// One attempt; `None` when another writer got in first.
    async fn try_redis_update<T>(
        &self,
        r: &RedisCatalog,
        f: &mut impl FnMut(&mut CatalogData, u64) -> Result<T, AdminError>,
    ) -> Result<Option<T>, AdminError> {
        let Some(mut tx) = self.begin(r).await? else { return Ok(None) };
        if tx.reset && r.file.is_some() {
            // Redis was reset: put the catalog file back first, then retry.
            tx.abort().await;
            self.apply_file_and_log(r).await?;
            return Ok(None);
        }
        let out = match f(&mut tx.data, tx.now) {
            Ok(o) => o,
            Err(e) => {
                tx.abort().await;
                return Err(e);
            }
        };
        Ok(self.commit(r, tx, None).await?.then_some(out))
    }

    /// Starts a transaction: WATCH the version key and, if the snapshot is
    /// not of that version, load the records of that version. `None` when
    /// the version moved while loading.
    async fn begin(&self, r: &RedisCatalog) -> Result<Option<Tx>, AdminError> {
        let mut conn = r.pool.get().await.map_err(|e| unavailable(&r.url, e))?;
        let version_key = r.keys.catalog("version");
        redis::cmd("WATCH").arg(&version_key).query_async::<()>(&mut conn).await.map_err(|e| unavailable(&r.url, e))?;
        let v: u64 = conn.get::<_, Option<u64>>(&version_key).await.map_err(|e| unavailable(&r.url, e))?.unwrap_or(0);
        let now = crate::model::now_ms();
        let mut tx = Tx { conn, v, old: self.snapshot(), data: CatalogData::default(), now, reset: false };
        if v != self.version() || !self.synced() {
            let _g = r.load_lock.lock().await;
            let loaded = match load(r).await {
                Ok((loaded_v, data)) if loaded_v == v => Catalog::compile(data)
                    .map_err(|e| AdminError::Internal(format!("the stored catalog is invalid: {e}"))),
                Ok(_) => {
                    tx.abort().await;
                    return Ok(None);
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(catalog) => tx.reset = self.install(v, catalog) == Install::Reset,
                Err(e) => {
                    tx.abort().await;
                    return Err(e);
                }
            }
            tx.old = self.snapshot();
        }
        tx.data = tx.old.data().clone();
        prune_old_values(&mut tx.data, now);
        Ok(Some(tx))
    }

    /// Checks the changed records as a whole, writes what changed (with the
    /// catalog file's state, `(stored, new)`, when given) and the new version
    /// in one MULTI/EXEC, and installs the result. `false` when another
    /// writer got in first.
    async fn commit(
        &self,
        r: &RedisCatalog,
        mut tx: Tx,
        file_state: Option<(&FileState, &FileState)>,
    ) -> Result<bool, AdminError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let checked = Catalog::compile(tx.data.clone())
            .map_err(AdminError::from)
            .and_then(|c| diff_into(&mut pipe, &r.keys, tx.old.data(), &tx.data).map(|()| c));
        let catalog = match checked {
            Ok(c) => c,
            Err(e) => {
                tx.abort().await;
                return Err(e);
            }
        };
        if let Some((stored, new)) = file_state {
            file_state_into(&mut pipe, &r.keys, stored, new);
        }
        pipe.incr(r.keys.catalog("version"), 1).ignore();
        pipe.publish(r.keys.catalog("changes"), tx.v + 1).ignore();
        let done: Option<()> = pipe.query_async(&mut tx.conn).await.map_err(|e| unavailable(&r.url, e))?;
        if done.is_none() {
            return Ok(false);
        }
        self.install(tx.v + 1, catalog);
        Ok(true)
    }

    /// Applies the catalog file unless a file with its digest was applied
    /// before (docs/admin.md, "The catalog file at start").
    async fn apply_file(&self, r: &RedisCatalog, file: &CatalogFile) -> Result<FileOutcome, AdminError> {
        for _ in 0..ATTEMPTS {
            if let Some(out) = self.try_apply_file(r, file).await? {
                return Ok(out);
            }
            backoff().await;
        }
        Err(AdminError::Unavailable("the catalog is changing too fast to apply the catalog file".into()))
    }

    /// One attempt; `None` when another writer got in first. The file state
    /// is read inside the transaction: of two replicas starting together
    /// with a new file, one applies it and the other sees it applied.
    async fn try_apply_file(&self, r: &RedisCatalog, file: &CatalogFile) -> Result<Option<FileOutcome>, AdminError> {
        let Some(mut tx) = self.begin(r).await? else { return Ok(None) };
        let state = match read_file_state(&mut tx.conn, &r.keys).await {
            Ok(s) => s,
            Err(e) => {
                tx.abort().await;
                return Err(e);
            }
        };
        if let Some(at) = state.applied_at(&file.digest) {
            tx.abort().await;
            return Ok(Some(FileOutcome::AlreadyApplied(at)));
        }
        let applied = bootstrap::apply(&mut tx.data, &file.records, &state, &file.digest, tx.now);
        let done = self.commit(r, tx, Some((&state, &applied.state))).await?;
        Ok(done.then_some(FileOutcome::Applied(applied)))
    }

    /// Applies the catalog file, if there is one, and logs what happened.
    /// Fails only when Redis cannot be reached: a file that cannot be applied
    /// is logged, and the catalog is served as Redis has it.
    async fn apply_file_and_log(&self, r: &RedisCatalog) -> Result<(), AdminError> {
        let Some(file) = &r.file else { return Ok(()) };
        let sha256 = &file.digest[..12];
        r.file_pending.store(true, Ordering::SeqCst);
        match self.apply_file(r, file).await {
            Ok(FileOutcome::Applied(applied)) => applied.log(&file.name, &file.digest),
            Ok(FileOutcome::AlreadyApplied(at)) => {
                metrics::counter!(bootstrap::CONFLICTS_METRIC).increment(0);
                let at = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at));
                tracing::info!(file = %file.name, sha256, "catalog file already applied at {at}; not applied again");
            }
            Err(e @ AdminError::Unavailable(_)) => return Err(e),
            Err(e) => tracing::error!(
                file = %file.name,
                sha256,
                "the catalog file cannot be applied: {e}; serving the catalog as Redis has it"
            ),
        }
        r.file_pending.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Loads the catalog from Redis if its version differs from ours; after a
    /// reset of Redis, applies the catalog file again.
    async fn refresh(&self, r: &RedisCatalog) -> Result<bool, AdminError> {
        let installed = {
            let _g = r.load_lock.lock().await;
            let mut conn = r.pool.get().await.map_err(|e| unavailable(&r.url, e))?;
            let v: u64 = conn
                .get::<_, Option<u64>>(r.keys.catalog("version"))
                .await
                .map_err(|e| unavailable(&r.url, e))?
                .unwrap_or(0);
            drop(conn);
            if v == self.version() && self.synced() {
                return Ok(false);
            }
            let (v, data) = load(r).await?;
            match Catalog::compile(data) {
                Ok(c) => self.install(v, c),
                Err(e) => {
                    tracing::error!(version = v, error = %e, "the catalog in Redis is invalid; keeping the previous one");
                    return Ok(false);
                }
            }
        };
        if installed == Install::Reset {
            self.apply_file_and_log(r).await?;
        }
        Ok(installed != Install::Same)
    }
}

/// A short random pause before a transaction is tried again.
async fn backoff() {
    tokio::time::sleep(Duration::from_millis(rand::random_range(1..20))).await;
}

/// What [`CatalogService::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// Nothing: we had that version.
    Same,
    /// A newer version (or the first load).
    Newer,
    /// An older version: the store was reset.
    Reset,
}

fn unavailable(url: &str, e: impl std::fmt::Display) -> AdminError {
    AdminError::Unavailable(format!("the catalog store ({}) cannot be reached: {e}", redact_url(url)))
}

fn to_json<T: Serialize>(v: &T) -> Result<String, AdminError> {
    serde_json::to_string(v).map_err(|e| AdminError::Internal(format!("cannot encode a catalog record: {e}")))
}

/// Adds to `pipe` the writes that turn `old` into `new`.
fn diff_into(pipe: &mut redis::Pipeline, keys: &Keys, old: &CatalogData, new: &CatalogData) -> Result<(), AdminError> {
    fn table<T: Serialize + PartialEq>(
        pipe: &mut redis::Pipeline,
        key: String,
        old: &BTreeMap<String, T>,
        new: &BTreeMap<String, T>,
    ) -> Result<(), AdminError> {
        for (id, rec) in new {
            if old.get(id) != Some(rec) {
                pipe.hset(&key, id, to_json(rec)?).ignore();
            }
        }
        for id in old.keys().filter(|id| !new.contains_key(*id)) {
            pipe.hdel(&key, id).ignore();
        }
        Ok(())
    }
    table(pipe, keys.catalog("apis"), &old.apis, &new.apis)?;
    table(pipe, keys.catalog("stages"), &old.stages, &new.stages)?;
    table(pipe, keys.catalog("plans"), &old.plans, &new.plans)?;
    table(pipe, keys.catalog("keys"), &old.keys, &new.keys)?;
    table(pipe, keys.catalog("old_values"), &old.old_values, &new.old_values)?;
    let pk = keys.catalog("plan_keys");
    for x in new.plan_keys.difference(&old.plan_keys) {
        pipe.sadd(&pk, format!("{}/{}", x.plan_id, x.key_id)).ignore();
    }
    for x in old.plan_keys.difference(&new.plan_keys) {
        pipe.srem(&pk, format!("{}/{}", x.plan_id, x.key_id)).ignore();
    }
    Ok(())
}

/// Reads the whole catalog in one MULTI/EXEC, so it is one consistent version.
async fn load(r: &RedisCatalog) -> Result<(u64, CatalogData), AdminError> {
    let mut conn = r.pool.get().await.map_err(|e| unavailable(&r.url, e))?;
    let mut pipe = redis::pipe();
    pipe.atomic().get(r.keys.catalog("version"));
    for t in TABLES {
        pipe.hgetall(r.keys.catalog(t));
    }
    pipe.smembers(r.keys.catalog("plan_keys"));
    type Raw = (
        Option<u64>,
        Vec<(String, String)>,
        Vec<(String, String)>,
        Vec<(String, String)>,
        Vec<(String, String)>,
        Vec<(String, String)>,
        Vec<String>,
    );
    let (v, apis, stages, plans, keys, old, pks): Raw =
        pipe.query_async(&mut conn).await.map_err(|e| unavailable(&r.url, e))?;
    fn parse<T: DeserializeOwned>(table: &str, rows: Vec<(String, String)>) -> Result<BTreeMap<String, T>, AdminError> {
        rows.into_iter()
            .map(|(id, json)| {
                serde_json::from_str(&json)
                    .map(|v| (id.clone(), v))
                    .map_err(|e| AdminError::Internal(format!("catalog record {table}/{id} cannot be read: {e}")))
            })
            .collect()
    }
    let plan_keys: BTreeSet<PlanKey> = pks
        .into_iter()
        .filter_map(|m| m.split_once('/').map(|(p, k)| PlanKey { plan_id: p.to_string(), key_id: k.to_string() }))
        .collect();
    Ok((
        v.unwrap_or(0),
        CatalogData {
            apis: parse("apis", apis)?,
            stages: parse("stages", stages)?,
            plans: parse("plans", plans)?,
            keys: parse("keys", keys)?,
            old_values: parse("old_values", old)?,
            plan_keys,
        },
    ))
}

/// Reads the catalog file's state (which files were applied, and what they
/// applied to each record). A state that is not what tollgate writes is an
/// `Internal` error (the file is then not applied), not a reason to wait.
async fn read_file_state(conn: &mut Connection, keys: &Keys) -> Result<FileState, AdminError> {
    let (digests, records) = (keys.catalog_file_digests(), keys.catalog_file_records());
    let (applied, fingerprints) = redis::pipe()
        .hgetall(&digests)
        .hgetall(&records)
        .query_async::<(BTreeMap<String, u64>, BTreeMap<String, String>)>(conn)
        .await
        .map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                AdminError::Unavailable(format!("cannot read the catalog file state: {e}"))
            } else {
                AdminError::Internal(format!(
                    "the catalog file state in Redis ({digests}, {records}) cannot be read: {e}; delete both keys to apply the file as if no file had been applied"
                ))
            }
        })?;
    Ok(FileState { applied, fingerprints })
}

/// Adds to `pipe` the writes that turn the stored file state into `new`.
fn file_state_into(pipe: &mut redis::Pipeline, keys: &Keys, stored: &FileState, new: &FileState) {
    fn hash<V: PartialEq + redis::ToRedisArgs + redis::ToSingleRedisArg>(
        pipe: &mut redis::Pipeline,
        key: String,
        stored: &BTreeMap<String, V>,
        new: &BTreeMap<String, V>,
    ) {
        for (field, value) in new.iter().filter(|(f, v)| stored.get(*f) != Some(*v)) {
            pipe.hset(&key, field, value).ignore();
        }
        for field in stored.keys().filter(|f| !new.contains_key(*f)) {
            pipe.hdel(&key, field).ignore();
        }
    }
    hash(pipe, keys.catalog_file_digests(), &stored.applied, &new.applied);
    hash(pipe, keys.catalog_file_records(), &stored.fingerprints, &new.fingerprints);
}

/// The background task of a Redis catalog: first load, the catalog file,
/// then pub/sub plus polling.
async fn sync(svc: Arc<CatalogService>) {
    let Backend::Redis(r) = &svc.backend else { return };
    first_load(&svc, r).await;
    let mut delay = Duration::from_millis(100);
    while let Err(e) = svc.apply_file_and_log(r).await {
        tracing::warn!("the catalog file is not applied yet: {e}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    svc.ready.store(true, Ordering::SeqCst);
    tracing::info!(version = svc.version(), "catalog loaded from Redis");

    let listener = svc.clone();
    tokio::spawn(async move {
        let Backend::Redis(r) = &listener.backend else { return };
        loop {
            if let Err(e) = listen(&listener, r).await {
                tracing::debug!("catalog change subscription lost: {e}; resubscribing");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    loop {
        tokio::time::sleep(r.poll).await;
        if r.file_pending.load(Ordering::SeqCst) {
            if let Err(e) = svc.apply_file_and_log(r).await {
                tracing::warn!("the catalog file is not applied again yet after the Redis reset: {e}");
            }
        }
        match svc.refresh(r).await {
            Ok(true) => tracing::info!(version = svc.version(), "catalog reloaded (poll)"),
            Ok(false) => {}
            Err(e) => tracing::debug!("catalog poll failed: {e}"),
        }
    }
}

/// Loads the catalog from Redis, retrying until Redis answers with a valid
/// catalog.
async fn first_load(svc: &CatalogService, r: &RedisCatalog) {
    let mut delay = Duration::from_millis(100);
    loop {
        match svc.refresh(r).await {
            Ok(_) if svc.synced() => return,
            // `refresh` logged why the stored catalog cannot be used.
            Ok(_) => {}
            Err(e) => tracing::warn!("catalog not loaded yet: {e}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Subscribes to the change channel and reloads on every message.
async fn listen(svc: &CatalogService, r: &RedisCatalog) -> Result<(), AdminError> {
    let mut pubsub = r.client.get_async_pubsub().await.map_err(|e| unavailable(&r.url, e))?;
    pubsub.subscribe(r.keys.catalog("changes")).await.map_err(|e| unavailable(&r.url, e))?;
    // Changes made while we were not subscribed.
    svc.refresh(r).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let v: u64 = msg.get_payload().unwrap_or(u64::MAX);
        if v > svc.version() {
            if let Err(e) = svc.refresh(r).await {
                tracing::debug!("catalog reload failed: {e}");
            }
        }
    }
    Err(AdminError::Unavailable("subscription closed".into()))
}
