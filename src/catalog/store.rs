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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::{Pool, Runtime, Timeouts};
use futures::StreamExt;
use redis::AsyncCommands;
use serde::{de::DeserializeOwned, Serialize};

use super::admin::{apply_bootstrap, prune_old_values, AdminError};
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
    bootstrap: CatalogData,
    /// Serialises loads, so that a late, older load never follows a newer one
    /// (an older version then means only one thing: Redis was reset).
    load_lock: tokio::sync::Mutex<()>,
}

const TABLES: [&str; 5] = ["apis", "stages", "plans", "keys", "old_values"];

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

    /// A catalog in Redis. Starts unready with `bootstrap` as its snapshot;
    /// a background task applies `bootstrap` to Redis as upserts once Redis
    /// can be reached, loads the catalog, and then keeps it fresh.
    pub fn redis(url: &str, keys: Keys, poll: Duration, bootstrap: CatalogData) -> Result<Arc<Self>, AdminError> {
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
        let catalog = Catalog::compile(bootstrap.clone())?;
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
                bootstrap: bootstrap.clone(),
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
                for _ in 0..32 {
                    if let Some(out) = self.try_redis_update(r, &mut f).await? {
                        return Ok(out);
                    }
                    tokio::time::sleep(Duration::from_millis(rand::random_range(1..20))).await;
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
        let mut conn = r.pool.get().await.map_err(|e| unavailable(&r.url, e))?;
        let version_key = r.keys.catalog("version");
        redis::cmd("WATCH").arg(&version_key).query_async::<()>(&mut conn).await.map_err(|e| unavailable(&r.url, e))?;
        let v: u64 = conn.get::<_, Option<u64>>(&version_key).await.map_err(|e| unavailable(&r.url, e))?.unwrap_or(0);
        let mut reset = false;
        if v != self.version() || !self.synced() {
            let _g = r.load_lock.lock().await;
            let (loaded_v, data) = load(r).await?;
            if loaded_v != v {
                let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query_async(&mut conn).await;
                return Ok(None);
            }
            let catalog = Catalog::compile(data)
                .map_err(|e| AdminError::Internal(format!("the stored catalog is invalid: {e}")))?;
            reset = self.install(v, catalog) == Install::Reset;
        }
        let old = self.snapshot();
        let now = crate::model::now_ms();
        let mut data = old.data().clone();
        prune_old_values(&mut data, now);
        if reset {
            // Redis was reset: put the catalog file back along with this change.
            apply_bootstrap(&mut data, &r.bootstrap, now)?;
        }
        let out = match f(&mut data, now) {
            Ok(o) => o,
            Err(e) => {
                let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query_async(&mut conn).await;
                return Err(e);
            }
        };
        let catalog = match Catalog::compile(data.clone()) {
            Ok(c) => c,
            Err(e) => {
                let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query_async(&mut conn).await;
                return Err(e.into());
            }
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        diff_into(&mut pipe, &r.keys, old.data(), &data)?;
        pipe.incr(&version_key, 1).ignore();
        pipe.publish(r.keys.catalog("changes"), v + 1).ignore();
        let done: Option<()> = pipe.query_async(&mut conn).await.map_err(|e| unavailable(&r.url, e))?;
        if done.is_none() {
            return Ok(None);
        }
        self.install(v + 1, catalog);
        Ok(Some(out))
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
        if installed == Install::Reset && r.bootstrap != CatalogData::default() {
            self.update(|d, now| apply_bootstrap(d, &r.bootstrap, now)).await?;
            tracing::warn!("applied the catalog file again after the Redis reset; changes made at runtime are lost");
        }
        Ok(installed != Install::Same)
    }
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

/// The background task of a Redis catalog: bootstrap, first load, then
/// pub/sub plus polling.
async fn sync(svc: Arc<CatalogService>) {
    let Backend::Redis(r) = &svc.backend else { return };
    let bootstrap = &r.bootstrap;
    let mut delay = Duration::from_millis(100);
    loop {
        let result = if *bootstrap == CatalogData::default() {
            svc.refresh(r).await.map(|_| ())
        } else {
            svc.update(|d, now| apply_bootstrap(d, bootstrap, now)).await
        };
        match result {
            Ok(()) => break,
            Err(AdminError::Unavailable(m)) => {
                tracing::warn!("catalog not loaded yet: {m}; retrying in {delay:?}");
            }
            Err(e) => {
                tracing::error!(
                    "the catalog file cannot be applied to the catalog in Redis: {e}; retrying in {delay:?}"
                );
            }
        }
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
        match svc.refresh(r).await {
            Ok(true) => tracing::info!(version = svc.version(), "catalog reloaded (poll)"),
            Ok(false) => {}
            Err(e) => tracing::debug!("catalog poll failed: {e}"),
        }
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
