//! The catalog in Redis: its layout, transactions, change log and loads.
//!
//! Everything lives under one hash tag (`{cat}`, see `store/keys.rs` for the
//! table), so that a transaction touches one slot, also on a cluster.
//!
//! - Records: `apis`, `stages`, `plans`, `keys` (hashes of id → JSON; a key's
//!   JSON holds its plans and rotated values, `records::KeyRecord`).
//! - Indexes kept in the same transaction as the records: `hashes` (value
//!   hash → key id: unique values, lookup by value), `key_ids`, `key_names`,
//!   `key_customers` and `key_tags` (sorted sets for paged listings) and one
//!   `plan_keys:PLAN` sorted set per plan (its subscribers).
//! - `head` (epoch, version, id of the last change) and `changes`, a stream
//!   with one entry per change (`records::Change`): what changed, never the
//!   records themselves.
//!
//! A transaction WATCHes `head`, reads what it needs (O(1) commands: HGET,
//! HMGET), checks, and writes the records, their indexes, the new `head` and
//! the log entry in one MULTI/EXEC; if another writer got in first, EXEC
//! fails and the caller starts over. Every command is bounded: reads of the
//! large tables go in chunks (HSCAN, HMGET of at most [`CHUNK`] fields), so
//! no catalog command holds Redis for long.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use deadpool_redis::{Connection, Pool, Runtime, Timeouts};
use redis::AsyncCommands;
use serde::de::DeserializeOwned;

use super::admin::AdminError;
use super::bootstrap::FileState;
use super::records::{Change, ChangeSet, KeyRecord, Position};
use crate::audit::AuditRecord;
use crate::model::{Api, KeyHash, Stage, UsagePlan};
use crate::store::keys::Keys;
use crate::store::redis::target::{slot_of, Mode, Target};

/// Most fields one command reads or writes in the large tables (an `HMGET`,
/// an `HSET`, a `ZADD`): each stays well under a millisecond of Redis's time.
pub const CHUNK: usize = 100;

/// Most keys one transaction changes (a chunk of an import, of a plan's
/// deletion, of the catalog file): its `EXEC` holds Redis a few ms.
pub const TX_KEYS: usize = 500;

/// The `COUNT` of a full load's `HSCAN`.
pub const SCAN_COUNT: usize = 100;

/// About how many changes the log keeps (`XADD MAXLEN ~`): a replica that
/// falls further behind loads the whole catalog again.
pub const LOG_LEN: usize = 100_000;

/// How long a replica's XREAD waits for the next change before it checks
/// `head` (a reset or a restore shows there).
pub const FOLLOW_BLOCK: Duration = Duration::from_secs(1);

/// The Redis side of the catalog.
pub struct RedisRecords {
    target: Target,
    keys: Keys,
    /// The node that serves `{cat}` (the primary; on a cluster, the
    /// primary of `{cat}`'s slot), found when first needed and again after
    /// an error says it moved.
    at: ArcSwapOption<Located>,
    relocating: tokio::sync::Mutex<()>,
}

/// Connections to the node that serves the catalog.
struct Located {
    pool: Pool,
    client: redis::Client,
    addr: String,
}

/// A transaction under way: `head` is watched on `conn`.
pub struct RedisTx {
    conn: Connection,
    /// Where the catalog stood when the transaction began.
    pub at: Position,
}

/// What a commit did.
pub enum Committed {
    /// Written: the change, and where the catalog now stands.
    Done(Box<(Change, Position)>),
    /// Another writer got in first: start over.
    Retry,
}

/// The catalog file's state changes written with a change.
#[derive(Debug, Clone, Default)]
pub struct FileDelta {
    /// Fingerprints to set (`Some`) or remove.
    pub fingerprints: BTreeMap<String, Option<String>>,
    /// Digests to remember (with when) or forget.
    pub applied: BTreeMap<String, Option<u64>>,
}

impl FileDelta {
    /// The writes that turn `stored` into `new`.
    pub fn between(stored: &FileState, new: &FileState) -> Self {
        fn diff<V: Clone + PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> BTreeMap<String, Option<V>> {
            let mut out: BTreeMap<String, Option<V>> =
                b.iter().filter(|(k, v)| a.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            out.extend(a.keys().filter(|k| !b.contains_key(*k)).map(|k| (k.clone(), None)));
            out
        }
        Self {
            fingerprints: diff(&stored.fingerprints, &new.fingerprints),
            applied: diff(&stored.applied, &new.applied),
        }
    }

    fn is_empty(&self) -> bool {
        self.fingerprints.is_empty() && self.applied.is_empty()
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(format!("{what}: {e}"))
}

impl RedisRecords {
    /// The catalog on `target` (nothing is connected until first needed).
    pub fn open(target: Target, keys: Keys) -> Result<Self, AdminError> {
        Ok(Self { target, keys, at: ArcSwapOption::empty(), relocating: tokio::sync::Mutex::new(()) })
    }

    /// The node serving the catalog: found (single: the URL; sentinel: the
    /// primary the sentinels name; cluster: the primary of `{cat}`'s slot)
    /// and connected when first needed, or after an error said it moved.
    async fn located(&self) -> Result<Arc<Located>, AdminError> {
        if let Some(l) = self.at.load_full() {
            return Ok(l);
        }
        let _g = self.relocating.lock().await;
        if let Some(l) = self.at.load_full() {
            return Ok(l);
        }
        let slot = slot_of(&self.keys.catalog("head"));
        let (host, port) = self.target.primary(Some(slot)).await.map_err(|e| self.unavailable(e))?;
        let client = match self.target.mode {
            Mode::Single => self.target.url_client(&self.target.urls[0]),
            _ => self.target.node(&host, port),
        }
        .map_err(|e| AdminError::Internal(e.to_string()))?;
        let mut cfg = deadpool_redis::Config::from_connection_info(Target::info_of(&client));
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
        let addr = format!("{host}:{port}");
        tracing::debug!(%addr, "the catalog is served by this node");
        let l = Arc::new(Located { pool, client, addr });
        self.at.store(Some(l.clone()));
        Ok(l)
    }

    /// Forgets the node serving the catalog, so that the next command finds
    /// it again.
    fn relocate(&self) {
        if self.at.swap(None).is_some() {
            tracing::info!("the catalog's Redis node moved (failover or resharding); finding it again");
        }
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// An error for Redis not answering.
    pub fn unavailable(&self, e: impl std::fmt::Display) -> AdminError {
        AdminError::Unavailable(format!("the catalog store ({}) cannot be reached: {e}", self.target.describe()))
    }

    /// A Redis error as an admin error: connection trouble and a node that
    /// no longer serves the catalog (MOVED, READONLY: a failover or a
    /// resharding, after which the node is found again) are UNAVAILABLE;
    /// anything else the server said is INTERNAL.
    fn err(&self, e: redis::RedisError) -> AdminError {
        use redis::{ErrorKind::Server, ServerErrorKind as S};
        let moved =
            matches!(e.kind(), Server(S::Moved | S::Ask | S::ReadOnly | S::MasterDown | S::TryAgain | S::ClusterDown))
                || e.to_string().contains("READONLY");
        let gone = e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal();
        if moved || (gone && self.target.mode != Mode::Single) {
            self.relocate();
        }
        if moved || gone || matches!(e.kind(), Server(S::BusyLoading)) {
            self.unavailable(e)
        } else {
            AdminError::Internal(format!("the catalog store answered with an error: {e}"))
        }
    }

    async fn conn(&self) -> Result<Connection, AdminError> {
        let l = self.located().await?;
        match l.pool.get().await {
            Ok(c) => Ok(c),
            Err(e) => {
                if self.target.mode != Mode::Single {
                    self.relocate();
                }
                Err(self.unavailable(format!("{} ({e})", l.addr)))
            }
        }
    }

    fn k(&self, part: &str) -> String {
        self.keys.catalog(part)
    }

    fn plan_keys_key(&self, plan: &str) -> String {
        self.keys.catalog(&format!("plan_keys:{plan}"))
    }

    /// Where the catalog stands now.
    pub async fn head(&self) -> Result<Position, AdminError> {
        let mut conn = self.conn().await?;
        read_head(&mut conn, &self.k("head")).await.map_err(|e| self.err(e))
    }

    /// Begins a transaction: WATCH `head` and read it.
    pub async fn begin(&self) -> Result<RedisTx, AdminError> {
        let mut conn = self.conn().await?;
        let head = self.k("head");
        redis::cmd("WATCH").arg(&head).query_async::<()>(&mut conn).await.map_err(|e| self.err(e))?;
        let at = read_head(&mut conn, &head).await.map_err(|e| self.err(e))?;
        Ok(RedisTx { conn, at })
    }

    /// Reads key records by id (missing ones are left out).
    pub async fn keys_by_id(&self, conn: &mut Connection, ids: &[String]) -> Result<Vec<KeyRecord>, AdminError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<Option<String>> =
                redis::cmd("HMGET").arg(self.k("keys")).arg(chunk).query_async(conn).await.map_err(|e| self.err(e))?;
            for (id, row) in chunk.iter().zip(rows) {
                if let Some(json) = row {
                    out.push(parse_record::<KeyRecord>("keys", id, &json)?);
                }
            }
        }
        Ok(out)
    }

    /// The key ids that own these value hashes (`None` for a free value).
    pub async fn owners(&self, conn: &mut Connection, hashes: &[KeyHash]) -> Result<Vec<Option<String>>, AdminError> {
        let mut out = Vec::with_capacity(hashes.len());
        for chunk in hashes.chunks(CHUNK) {
            let hex: Vec<String> = chunk.iter().map(KeyHash::to_hex).collect();
            let rows: Vec<Option<String>> =
                redis::cmd("HMGET").arg(self.k("hashes")).arg(&hex).query_async(conn).await.map_err(|e| self.err(e))?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Reads key records by id and by value hash.
    pub async fn fetch_keys(
        &self,
        tx: &mut RedisTx,
        ids: &[String],
        hashes: &[KeyHash],
    ) -> Result<Vec<KeyRecord>, AdminError> {
        let mut all: Vec<String> = ids.to_vec();
        all.extend(self.owners(&mut tx.conn, hashes).await?.into_iter().flatten());
        all.sort();
        all.dedup();
        self.keys_by_id(&mut tx.conn, &all).await
    }

    /// The catalog file's state for these records (and every digest).
    pub async fn file_state(&self, tx: &mut RedisTx, records: &[String]) -> Result<FileState, AdminError> {
        let (digests, names) = (self.keys.catalog_file_digests(), self.keys.catalog_file_records());
        let state_err = |e: redis::RedisError| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.unavailable(e)
            } else {
                AdminError::Internal(format!(
                    "the catalog file state in Redis ({digests}, {names}) cannot be read: {e}; delete both keys to apply the file as if no file had been applied"
                ))
            }
        };
        let applied: BTreeMap<String, u64> = tx.conn.hgetall(&digests).await.map_err(state_err)?;
        let mut fingerprints = BTreeMap::new();
        for chunk in records.chunks(CHUNK) {
            let rows: Vec<Option<String>> =
                redis::cmd("HMGET").arg(&names).arg(chunk).query_async(&mut tx.conn).await.map_err(state_err)?;
            fingerprints.extend(chunk.iter().zip(rows).filter_map(|(n, f)| f.map(|f| (n.clone(), f))));
        }
        Ok(FileState { applied, fingerprints })
    }

    /// Every fingerprint (to tell which records a file no longer lists).
    pub async fn all_fingerprints(&self) -> Result<Vec<String>, AdminError> {
        let mut conn = self.conn().await?;
        let rows = hscan(&mut conn, &self.keys.catalog_file_records()).await.map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(|(k, _)| k).collect())
    }

    /// Whether two plans have a subscriber in common.
    async fn share_a_key(&self, conn: &mut Connection, p: &str, q: &str) -> Result<bool, AdminError> {
        let n: u64 = redis::cmd("ZINTERCARD")
            .arg(2)
            .arg(self.plan_keys_key(p))
            .arg(self.plan_keys_key(q))
            .arg("LIMIT")
            .arg(1)
            .query_async(conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Checks what the partial view could not: new ids are free, new values
    /// belong to no other key, and a stage added to a plan is not in another
    /// plan of one of its keys. `Ok(false)`: a new id is taken (try again
    /// with another).
    async fn check(
        &self,
        tx: &mut RedisTx,
        set: &ChangeSet,
        plans: &BTreeMap<String, UsagePlan>,
    ) -> Result<bool, AdminError> {
        let new_ids: Vec<String> =
            set.keys.iter().filter(|k| k.before.is_none() && k.after.is_some()).map(|k| k.id.clone()).collect();
        if !self.keys_by_id(&mut tx.conn, &new_ids).await?.is_empty() {
            return Ok(false);
        }
        let mut new_hashes = Vec::new();
        for k in &set.keys {
            let Some(after) = &k.after else { continue };
            for h in after.hashes() {
                if !k.before.as_ref().is_some_and(|b| b.hashes().any(|x| x == h)) {
                    new_hashes.push((h, k.id.as_str()));
                }
            }
        }
        let hashes: Vec<KeyHash> = new_hashes.iter().map(|(h, _)| *h).collect();
        let owners = self.owners(&mut tx.conn, &hashes).await?;
        for ((_, id), owner) in new_hashes.iter().zip(owners) {
            if let Some(o) = owner.filter(|o| o != id) {
                if !set.keys.iter().any(|k| k.id == o) {
                    return Err(AdminError::AlreadyExists(format!(
                        "that value is already in use by API key {o:?}; values are unique"
                    )));
                }
            }
        }
        for (plan, stages) in &set.added_stages {
            for stage in stages {
                for other in plans.values().filter(|q| &q.id != plan) {
                    if other.api_stages.iter().any(|s| &s.stage.to_string() == stage)
                        && self.share_a_key(&mut tx.conn, plan, &other.id).await?
                    {
                        return Err(AdminError::Conflict(format!(
                            "stage {stage} cannot be added to usage plan {plan:?}: some of its keys are also in usage plan {:?}, which contains that stage; a key may have only one plan per stage",
                            other.id
                        )));
                    }
                }
            }
        }
        Ok(true)
    }

    /// Writes `set` (with the file state's `file` changes) as one
    /// transaction after `tx.at`, unless another writer got in first.
    pub async fn commit(
        &self,
        mut tx: RedisTx,
        set: &ChangeSet,
        plans: &BTreeMap<String, UsagePlan>,
        file: &FileDelta,
        audit: Option<(&AuditRecord, usize)>,
    ) -> Result<Committed, AdminError> {
        match self.check(&mut tx, set, plans).await {
            Ok(true) => {}
            Ok(false) => {
                unwatch(&mut tx.conn).await;
                return Ok(Committed::Retry);
            }
            Err(e) => {
                unwatch(&mut tx.conn).await;
                return Err(e);
            }
        }
        let epoch = if tx.at.epoch.is_empty() { super::records::random_id() } else { tx.at.epoch.clone() };
        let change = Change::of(set, &tx.at, &epoch);
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.write_records(&mut pipe, set)?;
        self.write_file_state(&mut pipe, file);
        pipe.hset_multiple(
            self.k("head"),
            &[("epoch", epoch.clone()), ("version", change.version.to_string()), ("id", change.id.clone())],
        )
        .ignore();
        pipe.cmd("XADD")
            .arg(self.k("changes"))
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_LEN)
            .arg(format!("0-{}", change.version))
            .arg(change.fields())
            .ignore();
        if let Some((record, max)) = audit {
            self.xadd_audit(&mut pipe, record, max);
        }
        let done: Option<()> = pipe.query_async(&mut tx.conn).await.map_err(|e| self.err(e))?;
        if done.is_none() {
            return Ok(Committed::Retry);
        }
        let at = Position { epoch, version: change.version, id: change.id.clone() };
        Ok(Committed::Done(Box::new((change, at))))
    }

    fn write_records(&self, pipe: &mut redis::Pipeline, set: &ChangeSet) -> Result<(), AdminError> {
        fn table<T: serde::Serialize>(
            pipe: &mut redis::Pipeline,
            key: String,
            rows: &BTreeMap<String, Option<T>>,
        ) -> Result<(), AdminError> {
            for (id, rec) in rows {
                match rec {
                    Some(r) => pipe.hset(&key, id, to_json(r)?).ignore(),
                    None => pipe.hdel(&key, id).ignore(),
                };
            }
            Ok(())
        }
        table(pipe, self.k("apis"), &set.apis)?;
        table(pipe, self.k("stages"), &set.stages)?;
        table(pipe, self.k("plans"), &set.plans)?;
        let (mut put, mut del) = (Vec::new(), Vec::new());
        let (mut hash_put, mut hash_del) = (Vec::new(), Vec::new());
        let (mut ids_add, mut ids_del) = (Vec::new(), Vec::new());
        let (mut names_add, mut names_del, mut cust_add, mut cust_del) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut tags_add, mut tags_del) = (Vec::new(), Vec::new());
        let mut plan_add: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut plan_del: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for k in &set.keys {
            let (b, a) = (k.before.as_ref(), k.after.as_ref());
            match a {
                Some(r) => put.push((k.id.clone(), to_json(r)?)),
                None => del.push(k.id.clone()),
            }
            let hb: Vec<KeyHash> = b.map(|r| r.hashes().collect()).unwrap_or_default();
            let ha: Vec<KeyHash> = a.map(|r| r.hashes().collect()).unwrap_or_default();
            hash_del.extend(hb.iter().filter(|h| !ha.contains(h)).map(KeyHash::to_hex));
            hash_put.extend(ha.iter().filter(|h| !hb.contains(h)).map(|h| (h.to_hex(), k.id.clone())));
            match (b, a) {
                (None, Some(_)) => ids_add.push(k.id.clone()),
                (Some(_), None) => ids_del.push(k.id.clone()),
                _ => {}
            }
            let name = |r: Option<&KeyRecord>| r.map(|r| index_member(&r.key.name, &k.id));
            let cust = |r: Option<&KeyRecord>| {
                r.filter(|r| !r.key.customer_id.is_empty()).map(|r| index_member(&r.key.customer_id, &k.id))
            };
            if name(b) != name(a) {
                names_del.extend(name(b));
                names_add.extend(name(a));
            }
            if cust(b) != cust(a) {
                cust_del.extend(cust(b));
                cust_add.extend(cust(a));
            }
            let tags = |r: Option<&KeyRecord>| -> Vec<String> {
                r.map(|r| r.key.tags.iter().map(|(t, v)| tag_member(t, v, &k.id)).collect()).unwrap_or_default()
            };
            let (tb, ta) = (tags(b), tags(a));
            tags_del.extend(tb.iter().filter(|m| !ta.contains(m)).cloned());
            tags_add.extend(ta.into_iter().filter(|m| !tb.contains(m)));
            let pb: &[String] = b.map(|r| r.plans.as_slice()).unwrap_or(&[]);
            let pa: &[String] = a.map(|r| r.plans.as_slice()).unwrap_or(&[]);
            for p in pa.iter().filter(|p| !pb.contains(p)) {
                plan_add.entry(p).or_default().push(&k.id);
            }
            for p in pb.iter().filter(|p| !pa.contains(p)) {
                plan_del.entry(p).or_default().push(&k.id);
            }
        }
        for c in put.chunks(CHUNK) {
            pipe.hset_multiple(self.k("keys"), c).ignore();
        }
        for c in del.chunks(CHUNK) {
            pipe.hdel(self.k("keys"), c).ignore();
        }
        for c in hash_del.chunks(CHUNK) {
            pipe.hdel(self.k("hashes"), c).ignore();
        }
        for c in hash_put.chunks(CHUNK) {
            pipe.hset_multiple(self.k("hashes"), c).ignore();
        }
        zset(pipe, self.k("key_ids"), &ids_add, &ids_del);
        zset(pipe, self.k("key_names"), &names_add, &names_del);
        zset(pipe, self.k("key_customers"), &cust_add, &cust_del);
        zset(pipe, self.k("key_tags"), &tags_add, &tags_del);
        for (p, ids) in plan_add {
            zset(pipe, self.plan_keys_key(p), &ids, &[]);
        }
        for (p, ids) in plan_del {
            zset::<&str>(pipe, self.plan_keys_key(p), &[], &ids);
        }
        Ok(())
    }

    fn write_file_state(&self, pipe: &mut redis::Pipeline, file: &FileDelta) {
        if file.is_empty() {
            return;
        }
        for (field, v) in &file.fingerprints {
            match v {
                Some(f) => pipe.hset(self.keys.catalog_file_records(), field, f).ignore(),
                None => pipe.hdel(self.keys.catalog_file_records(), field).ignore(),
            };
        }
        for (digest, at) in &file.applied {
            match at {
                Some(ms) => pipe.hset(self.keys.catalog_file_digests(), digest, ms).ignore(),
                None => pipe.hdel(self.keys.catalog_file_digests(), digest).ignore(),
            };
        }
    }

    /// Adds an audit record to the capped stream `{cat}:audit` (id `*`: the
    /// time of Redis; `MAXLEN ~ max`).
    fn xadd_audit(&self, pipe: &mut redis::Pipeline, record: &AuditRecord, max: usize) {
        pipe.cmd("XADD")
            .arg(self.keys.catalog_audit())
            .arg("MAXLEN")
            .arg("~")
            .arg(max)
            .arg("*")
            .arg("record")
            .arg(record.to_json())
            .ignore();
    }

    /// Appends an audit record on its own (a change outside the catalog).
    pub async fn append_audit(&self, record: &AuditRecord, max: usize) -> Result<(), AdminError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        self.xadd_audit(&mut pipe, record, max);
        pipe.query_async::<()>(&mut conn).await.map_err(|e| self.err(e))
    }

    /// Up to `limit` audit records after the one with id `after`, or else
    /// from `since_ms`, oldest first (`XRANGE`).
    pub async fn audit_records(
        &self,
        since_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, AdminError> {
        let mut conn = self.conn().await?;
        let reply = crate::ring::xrange(&mut conn, &self.keys.catalog_audit(), since_ms, after, limit)
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(reply.ids.len());
        for entry in reply.ids {
            let json: String = entry.get("record").unwrap_or_default();
            let mut r: AuditRecord =
                serde_json::from_str(&json).map_err(|e| internal("an audit record cannot be read", e))?;
            // The time shown is the entry's, Redis's clock at the commit:
            // the one `since_ms` selects by (the replica's clock, taken
            // before the transaction, may be a millisecond or more behind).
            if let Some((ms, _)) = super::memory::parse_audit_id(&entry.id) {
                r.time_ms = ms;
            }
            r.id = entry.id;
            out.push(r);
        }
        Ok(out)
    }

    /// Reads one key record.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, AdminError> {
        let mut conn = self.conn().await?;
        Ok(self.keys_by_id(&mut conn, &[id.to_string()]).await?.pop())
    }

    /// A page of an index (sorted set of members ordered as strings): up to
    /// `n` members in `[from, to)` after `after`.
    pub async fn index_page(
        &self,
        index: &str,
        from: &str,
        to: Option<&str>,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, AdminError> {
        let mut conn = self.conn().await?;
        let min = match after {
            Some(a) if a >= from => format!("({a}"),
            _ => format!("[{from}"),
        };
        let max = to.map(|t| format!("({t}")).unwrap_or_else(|| "+".to_string());
        redis::cmd("ZRANGE")
            .arg(index)
            .arg(min)
            .arg(max)
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(n)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// The index a listing walks: all keys, by name, by customer, or a plan's.
    pub fn index(&self, which: &Index<'_>) -> String {
        match which {
            Index::Ids => self.k("key_ids"),
            Index::Names => self.k("key_names"),
            Index::Customers => self.k("key_customers"),
            Index::Tags => self.k("key_tags"),
            Index::Plan(p) => self.plan_keys_key(p),
        }
    }

    /// How many keys a plan has.
    pub async fn plan_key_count(&self, plan: &str) -> Result<u64, AdminError> {
        let mut conn = self.conn().await?;
        conn.zcard(self.plan_keys_key(plan)).await.map_err(|e| self.err(e))
    }

    /// Reads key records by id as raw JSON, handing each to `each` (missing
    /// ones left out).
    pub async fn raw_keys(
        &self,
        ids: &[String],
        mut each: impl FnMut(&str, &str) -> Result<(), AdminError>,
    ) -> Result<(), AdminError> {
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.k("keys"))
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            for (id, row) in chunk.iter().zip(rows) {
                if let Some(json) = row {
                    each(id, &json)?;
                }
            }
        }
        Ok(())
    }

    /// Reads key records by id, in that order (missing ones left out).
    pub async fn keys_in_order(&self, ids: &[String]) -> Result<Vec<KeyRecord>, AdminError> {
        let mut conn = self.conn().await?;
        self.keys_by_id(&mut conn, ids).await
    }

    // ---- replicas: loads and the change log ----

    /// Reads a whole table in chunks.
    pub async fn scan_table<T: DeserializeOwned>(&self, table: &str) -> Result<BTreeMap<String, T>, AdminError> {
        let mut conn = self.conn().await?;
        let rows = hscan(&mut conn, &self.k(table)).await.map_err(|e| self.err(e))?;
        rows.into_iter().map(|(id, json)| parse_record(table, &id, &json).map(|r| (id, r))).collect()
    }

    /// Reads every key record in chunks, handing each chunk's raw JSON to
    /// `each` (a full load parses only what the data plane needs).
    pub async fn scan_keys(
        &self,
        mut each: impl FnMut(&str, &str) -> Result<(), AdminError>,
    ) -> Result<(), AdminError> {
        let mut conn = self.conn().await?;
        let key = self.k("keys");
        let mut cursor = 0u64;
        loop {
            let (next, rows): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            for (id, json) in &rows {
                each(id, json)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Small records by id (missing ones as `None`).
    pub async fn small_records<T: DeserializeOwned>(
        &self,
        table: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Option<T>)>, AdminError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Option<String>> =
            redis::cmd("HMGET").arg(self.k(table)).arg(ids).query_async(&mut conn).await.map_err(|e| self.err(e))?;
        ids.iter()
            .zip(rows)
            .map(|(id, row)| Ok((id.clone(), row.map(|j| parse_record(table, id, &j)).transpose()?)))
            .collect()
    }

    /// A connection of its own for following the change log (XREAD blocks it).
    pub async fn follower(&self) -> Result<redis::aio::MultiplexedConnection, AdminError> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(FOLLOW_BLOCK + Duration::from_secs(4)))
            .set_connection_timeout(Some(Duration::from_secs(2)));
        let l = self.located().await?;
        l.client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(|e| {
            if self.target.mode != Mode::Single {
                self.relocate();
            }
            self.unavailable(e)
        })
    }

    /// The changes after `version`, oldest first, at most [`CHUNK`]; with
    /// `block`, waits that long for one to come.
    pub async fn changes_after<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        version: u64,
        block: Option<Duration>,
    ) -> Result<Vec<Change>, AdminError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(CHUNK);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.k("changes")).arg(format!("0-{version}"));
        let reply: Option<redis::streams::StreamReadReply> = cmd.query_async(conn).await.map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for key in reply.into_iter().flat_map(|r| r.keys) {
            for entry in key.ids {
                let fields: HashMap<String, String> = entry
                    .map
                    .into_iter()
                    .filter_map(|(k, v)| redis::from_redis_value::<String>(v).ok().map(|v| (k, v)))
                    .collect();
                out.push(Change::parse(&fields).map_err(|e| internal("a catalog change cannot be read", e))?);
            }
        }
        Ok(out)
    }

    /// A pooled connection (for reading the log without blocking).
    pub async fn pooled(&self) -> Result<Connection, AdminError> {
        self.conn().await
    }

    /// Where the catalog stands, on the follower's connection.
    pub async fn head_on(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<Position, AdminError> {
        read_head(conn, &self.k("head")).await.map_err(|e| self.err(e))
    }
}

/// Which index a listing walks.
pub enum Index<'a> {
    /// Every key, by id.
    Ids,
    /// By name (`name\0id`).
    Names,
    /// By customer (`customer\0id`).
    Customers,
    /// By tag (`key\0value\0id`, one member per tag of a key).
    Tags,
    /// One plan's keys, by id.
    Plan(&'a str),
}

/// The member of a name or customer index: the value, a NUL, the key id
/// (names and customer ids hold no NUL: see `admin.rs`).
pub fn index_member(value: &str, id: &str) -> String {
    format!("{value}\0{id}")
}

/// The member of the tag index for the tag `key=value` of key `id` (tags
/// hold no NUL: `model::validate_tag` refuses control characters).
pub fn tag_member(key: &str, value: &str, id: &str) -> String {
    format!("{key}\0{value}\0{id}")
}

async fn read_head<C: redis::aio::ConnectionLike>(conn: &mut C, key: &str) -> redis::RedisResult<Position> {
    let m: HashMap<String, String> = redis::cmd("HGETALL").arg(key).query_async(conn).await?;
    Ok(Position {
        epoch: m.get("epoch").cloned().unwrap_or_default(),
        version: m.get("version").and_then(|v| v.parse().ok()).unwrap_or(0),
        id: m.get("id").cloned().unwrap_or_default(),
    })
}

async fn hscan<C: redis::aio::ConnectionLike>(conn: &mut C, key: &str) -> redis::RedisResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, rows): (u64, Vec<(String, String)>) =
            redis::cmd("HSCAN").arg(key).arg(cursor).arg("COUNT").arg(SCAN_COUNT).query_async(conn).await?;
        out.extend(rows);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

async fn unwatch(conn: &mut Connection) {
    let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query_async(conn).await;
}

impl RedisTx {
    /// Gives up the transaction (UNWATCH), so the pooled connection is clean.
    pub async fn abort(mut self) {
        unwatch(&mut self.conn).await;
    }
}

/// ZADD (score 0) and ZREM in chunks.
fn zset<T: redis::ToRedisArgs + redis::ToSingleRedisArg>(
    pipe: &mut redis::Pipeline,
    key: String,
    add: &[T],
    del: &[T],
) {
    for c in add.chunks(CHUNK) {
        let items: Vec<(u8, &T)> = c.iter().map(|m| (0, m)).collect();
        pipe.zadd_multiple(&key, &items).ignore();
    }
    for c in del.chunks(CHUNK) {
        pipe.zrem(&key, c).ignore();
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, AdminError> {
    serde_json::to_string(v).map_err(|e| internal("cannot encode a catalog record", e))
}

/// Parses a stored record, naming it on failure.
pub fn parse_record<T: DeserializeOwned>(table: &str, id: &str, json: &str) -> Result<T, AdminError> {
    serde_json::from_str(json)
        .map_err(|e| AdminError::Internal(format!("catalog record {table}/{id} cannot be read: {e}")))
}

/// Typed reads of the small tables.
pub type SmallTables = (BTreeMap<String, Api>, BTreeMap<String, Stage>, BTreeMap<String, UsagePlan>);
