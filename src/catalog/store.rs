//! Where the catalog lives and how every replica keeps its snapshot fresh.
//!
//! [`CatalogService`] holds the snapshot the data plane reads (lock-free, no
//! I/O; `snapshot.rs`) and runs control-plane changes as transactions over
//! the records: [`CatalogService::update`] loads the small tables and the
//! keys the change needs ([`Want`]), lets a pure function of `admin.rs` edit
//! them, checks the result ([`records::check_partial`] plus the store's own
//! index checks), writes what changed, and applies the same change to the
//! snapshot. No change copies the catalog: a transaction reads and writes
//! O(records it touches), and the snapshot copies one shard per changed key.
//!
//! - **Memory** (no Redis): the records and their indexes live in this
//!   process (`memory.rs`); changes are lost on restart (the catalog file is
//!   loaded again).
//! - **Redis** (`redis.rs`): a change is an optimistic transaction on the
//!   catalog's `head` (WATCH, MULTI/EXEC, start over if another writer got in
//!   first), and appends one entry to the change log, a stream. Every
//!   replica follows the log (XREAD): for each entry it reads the changed
//!   records again and patches its snapshot, so Redis works in proportion to
//!   the change, never to the catalog. A replica loads the whole catalog (in
//!   chunks) only at start, or when the log shows a gap, a trimmed stretch, a
//!   new epoch (Redis was emptied) or a history other than the one it saw (a
//!   restored Redis). Starting a replica writes nothing.
//!
//! With Redis, the catalog file is a bootstrap: at start (and after Redis was
//! emptied) a replica applies it only if its digest was never applied, by the
//! rules of [`super::bootstrap`], in transactions of at most `redis::TX_KEYS`
//! keys, each with its part of the file state (`file_records`); the digest is
//! remembered with the last one. A file that cannot be applied is logged; it
//! never keeps a replica from serving the catalog Redis has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, OwnedMutexGuard};

use super::admin::{AdminError, ImportRow, ImportWarning};
use super::bootstrap::{self, Applied, FileState, Outcome, Record};
use super::file::CatalogFile;
use super::memory::MemoryRecords;
use super::records::{add_keys, check_partial, Change, ChangeSet, KeyRecord, Position, Want};
use super::redis::{Committed, FileDelta, Index, RedisRecords, RedisTx, CHUNK, FOLLOW_BLOCK, TX_KEYS};
use super::snapshot::{self, entries_of, Catalog, KeyLean, Small};
use super::{CatalogData, CatalogHandle, PlanKey};
use crate::audit::AuditRecord;
use crate::model::{Api, Stage, Tags, UsagePlan};
use crate::store::keys::Keys;

/// How many times a transaction is tried before the caller is told to retry.
const ATTEMPTS: usize = 32;

/// How long a transaction waits for this replica's snapshot to reach the
/// catalog's head before it gives up (UNAVAILABLE).
const CATCH_UP: Duration = Duration::from_secs(5);

/// The catalog of this process, kept in step with its store.
pub struct CatalogService {
    handle: CatalogHandle,
    /// Where the installed snapshot stands; `None` before the first load.
    at: Mutex<Option<Position>>,
    /// Tells waiters the snapshot moved.
    moved: watch::Sender<u64>,
    /// Serialises changes to the snapshot.
    install: tokio::sync::Mutex<()>,
    /// Serialises this replica's transactions: concurrent writers on one
    /// replica would only invalidate each other's WATCH and retry; across
    /// replicas the WATCH on `head` orders them.
    writer: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    backend: Backend,
    /// About how many audit records are kept (`--audit-max-records`).
    audit_max: AtomicUsize,
}

enum Backend {
    Memory(Arc<tokio::sync::Mutex<MemoryRecords>>),
    Redis(Box<RedisSide>),
}

struct RedisSide {
    records: RedisRecords,
    /// How often the follower looks at `head` when no change comes.
    poll: Duration,
    /// The catalog file, applied at start and again after Redis was emptied.
    file: Option<CatalogFile>,
    /// An application of the file was cut short; the follower tries again.
    file_pending: AtomicBool,
    /// Asks the follower to look at the log now.
    wake: Notify,
}

/// A transaction under way.
enum Tx {
    Memory(OwnedMutexGuard<MemoryRecords>),
    Redis(RedisTx),
}

/// The records a transaction starts from.
struct Working {
    tx: Tx,
    before: CatalogData,
    now: u64,
}

/// How a commit ended.
enum Done {
    /// Written (or nothing to write).
    Yes,
    /// Another writer got in first.
    Retry,
}

/// What [`CatalogService::apply_file`] did.
enum FileOutcome {
    /// A file with this digest was applied before, at this time (ms).
    AlreadyApplied(u64),
    /// Applied now.
    Applied(Applied),
}

/// A filter of [`CatalogService::list_keys`].
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Names starting with this.
    pub name_prefix: String,
    /// This customer's keys only.
    pub customer_id: String,
    /// Keys with every one of these tags (key and value equal).
    pub tags: Tags,
}

impl KeyFilter {
    /// Whether `r` passes the filters that the walked index does not
    /// already guarantee (all of them are checked: cheap, and always right).
    fn matches(&self, r: &KeyRecord) -> bool {
        r.key.name.starts_with(&self.name_prefix)
            && (self.customer_id.is_empty() || r.key.customer_id == self.customer_id)
            && self.tags.iter().all(|(k, v)| r.key.tags.get(k) == Some(v))
    }
}

impl CatalogService {
    /// A catalog kept in memory, starting from `initial` (checked whole).
    pub fn memory(initial: CatalogData) -> Result<Arc<Self>, AdminError> {
        let catalog = Catalog::compile(initial.clone())?;
        let mut recs = MemoryRecords::default();
        let mut set = ChangeSet::diff(&CatalogData::default(), &initial);
        set.added_stages.clear();
        if !set.is_empty() {
            recs.commit(&set)?;
        }
        let at = recs.at.clone();
        let svc = Self::new(catalog, Backend::Memory(Arc::new(tokio::sync::Mutex::new(recs))));
        *svc.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        svc.handle.set_loaded(true);
        svc.ready.store(true, Ordering::SeqCst);
        Ok(Arc::new(svc))
    }

    /// A catalog in Redis. Starts unready, with nothing loaded (decisions
    /// answer UNAVAILABLE); a background task loads the catalog once Redis
    /// can be reached, applies the catalog file (if any, and if never
    /// applied before), becomes ready, and then follows the change log.
    pub fn redis(
        target: crate::store::redis::target::Target,
        keys: Keys,
        poll: Duration,
        file: Option<CatalogFile>,
    ) -> Result<Arc<Self>, AdminError> {
        let records = RedisRecords::open(target, keys)?;
        let side = RedisSide { records, poll, file, file_pending: AtomicBool::new(false), wake: Notify::new() };
        let svc = Arc::new(Self::new(Catalog::default(), Backend::Redis(Box::new(side))));
        svc.handle.set_loaded(false);
        tokio::spawn(follow(svc.clone()));
        Ok(svc)
    }

    fn new(catalog: Catalog, backend: Backend) -> Self {
        Self {
            handle: CatalogHandle::new(catalog),
            at: Mutex::new(None),
            moved: watch::channel(0).0,
            install: tokio::sync::Mutex::new(()),
            writer: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            backend,
            audit_max: AtomicUsize::new(crate::audit::DEFAULT_MAX_RECORDS),
        }
    }

    /// The snapshot handle the data plane reads.
    pub fn handle(&self) -> CatalogHandle {
        self.handle.clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Catalog> {
        self.handle.load_full()
    }

    /// Where the snapshot stands (`None` before the first load).
    pub fn position(&self) -> Option<Position> {
        self.at.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The snapshot's version (0 before the first load).
    pub fn version(&self) -> u64 {
        self.position().map_or(0, |p| p.version)
    }

    /// Whether the catalog has been loaded from its store.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Installs `catalog` at `at` (the caller holds `install`).
    fn set(&self, catalog: Catalog, at: Position) {
        self.handle.store(catalog);
        self.handle.set_loaded(true);
        let v = at.version;
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        metrics::gauge!("tollgate_catalog_version").set(v as f64);
        self.moved.send_replace(v);
    }

    // ---- transactions ----

    /// Runs a change as a transaction: `f` edits the records `want` names
    /// (and the small tables); the result is checked, written and applied to
    /// the snapshot. `f` may run more than once (when another writer got in
    /// first), so it must not have side effects beyond the records it gets.
    pub async fn update<T>(
        &self,
        want: Want,
        mut f: impl FnMut(&mut CatalogData, u64) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let _one_at_a_time = self.writer.lock().await;
        for _ in 0..ATTEMPTS {
            let Some(w) = self.begin(&want).await? else {
                backoff().await;
                continue;
            };
            let mut after = w.before.clone();
            let out = match f(&mut after, w.now) {
                Ok(o) => o,
                Err(e) => {
                    abort(w.tx).await;
                    return Err(e);
                }
            };
            match self.commit(w, &after, &FileDelta::default()).await? {
                Done::Yes => return Ok(out),
                Done::Retry => backoff().await,
            }
        }
        Err(AdminError::Unavailable("the catalog is changing too fast to apply this change; retry".into()))
    }

    /// Runs `f` on the records `want` names without writing anything (a dry
    /// run: what `update` would answer now).
    pub async fn dry_run<T>(
        &self,
        want: Want,
        f: impl FnOnce(&mut CatalogData, u64) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        for _ in 0..ATTEMPTS {
            if let Some(w) = self.begin(&want).await? {
                let mut after = w.before.clone();
                let out = f(&mut after, w.now);
                abort(w.tx).await;
                return out;
            }
            backoff().await;
        }
        Err(AdminError::Unavailable("the catalog is changing too fast; retry".into()))
    }

    /// Imports CSV rows (`admin::import_keys`) in transactions of at most
    /// [`TX_KEYS`] rows, so that an import of any size never holds Redis for
    /// long. With `fail_on_warnings`, every chunk is first tried without
    /// writing, and any warning means nothing is imported (a change racing
    /// the import can still make a row fail later; it then comes back as a
    /// warning). Safe to run again: rows whose value exists update that key.
    pub async fn import_keys(
        &self,
        rows: Vec<ImportRow>,
        mut warnings: Vec<ImportWarning>,
        fail_on_warnings: bool,
    ) -> Result<(Vec<String>, Vec<ImportWarning>), AdminError> {
        let want = |chunk: &[ImportRow]| Want {
            ids: Vec::new(),
            hashes: chunk.iter().map(|r| crate::model::KeyHash::of(&r.value)).collect(),
        };
        if fail_on_warnings {
            for chunk in rows.chunks(TX_KEYS) {
                let (_, w) = self
                    .dry_run(want(chunk), |d, now| super::admin::import_keys(d, chunk.to_vec(), Vec::new(), false, now))
                    .await?;
                warnings.extend(w);
            }
            if !warnings.is_empty() {
                warnings.sort_by_key(|w| w.line);
                let now = crate::model::now_ms();
                super::admin::import_keys(&mut CatalogData::default(), Vec::new(), warnings, true, now)?;
                unreachable!("warnings with fail_on_warnings are an error");
            }
        }
        let mut ids = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(TX_KEYS) {
            let (i, w) = self
                .update(want(chunk), |d, now| super::admin::import_keys(d, chunk.to_vec(), Vec::new(), false, now))
                .await?;
            ids.extend(i);
            warnings.extend(w);
        }
        warnings.sort_by_key(|w| w.line);
        Ok((ids, warnings))
    }

    /// Begins a transaction and loads what `want` names. `None`: the catalog
    /// moved on while this replica caught up; start over.
    async fn begin(&self, want: &Want) -> Result<Option<Working>, AdminError> {
        let now = crate::model::now_ms();
        match &self.backend {
            Backend::Memory(m) => {
                let g = m.clone().lock_owned().await;
                let mut before = CatalogData {
                    apis: g.apis.clone(),
                    stages: g.stages.clone(),
                    plans: g.plans.clone(),
                    ..CatalogData::default()
                };
                add_keys(&mut before, g.fetch_keys(&want.ids, &want.hashes));
                prune_rotated(&mut before, now);
                Ok(Some(Working { tx: Tx::Memory(g), before, now }))
            }
            Backend::Redis(r) => {
                let mut tx = r.records.begin().await?;
                if !self.caught_up(r, &tx.at).await {
                    tx.abort().await;
                    return Ok(None);
                }
                let small = self.snapshot();
                let small = small.small();
                let mut before = CatalogData {
                    apis: small.apis.clone(),
                    stages: small.stage_records.clone(),
                    plans: small.plan_records.clone(),
                    ..CatalogData::default()
                };
                let keys = match r.records.fetch_keys(&mut tx, &want.ids, &want.hashes).await {
                    Ok(k) => k,
                    Err(e) => {
                        tx.abort().await;
                        return Err(e);
                    }
                };
                add_keys(&mut before, keys);
                prune_rotated(&mut before, now);
                Ok(Some(Working { tx: Tx::Redis(tx), before, now }))
            }
        }
    }

    /// Brings the snapshot to `head` (reading the log itself, so that it
    /// works also while the follower is busy, e.g. applying the catalog file
    /// at start); false if the catalog moved past `head`, or the log does not
    /// lead there (the follower then loads everything again).
    async fn caught_up(&self, r: &RedisSide, head: &Position) -> bool {
        let deadline = Instant::now() + CATCH_UP;
        let mut moved = self.moved.subscribe();
        loop {
            match self.position() {
                Some(p) if &p == head => return true,
                Some(p) if p.epoch == head.epoch && p.version > head.version => return false,
                Some(p) if p.epoch == head.epoch || p.epoch.is_empty() => match self.catch_up_from_log(r).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(()) => {
                        r.wake.notify_one();
                        return false;
                    }
                },
                _ => r.wake.notify_one(),
            }
            if tokio::time::timeout_at(deadline.into(), moved.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// Applies the log entries after the snapshot's position, if any: `true`
    /// when it moved, `Err` when the log does not continue it.
    async fn catch_up_from_log(&self, r: &RedisSide) -> Result<bool, ()> {
        let _g = self.install.lock().await;
        let Some(at) = self.position() else { return Err(()) };
        let mut conn = r.records.pooled().await.map_err(|_| ())?;
        let changes = r.records.changes_after(&mut conn, at.version, None).await.map_err(|_| ())?;
        if changes.is_empty() {
            return Ok(false);
        }
        match apply_changes(r, (*self.snapshot()).clone(), &at, &changes).await {
            Ok(Ok((catalog, pos))) => {
                let moved = pos != at;
                if moved {
                    self.set(catalog, pos);
                }
                Ok(moved)
            }
            _ => Err(()),
        }
    }

    /// Checks `after`, writes what changed since `w.before` (with the file
    /// state's `file` changes), and applies it to the snapshot.
    async fn commit(&self, w: Working, after: &CatalogData, file: &FileDelta) -> Result<Done, AdminError> {
        if let Err(e) = check_partial(after) {
            abort(w.tx).await;
            return Err(e.into());
        }
        let set = ChangeSet::diff(&w.before, after);
        // A change made by an Admin call is audited in its own transaction.
        let audit = crate::audit::current()
            .filter(|_| !set.is_empty())
            .map(|caller| crate::audit::record(&caller, &w.before, &set, w.now));
        self.commit_set(w, &set, &after.plans, file, audit.as_ref()).await
    }

    /// Writes `set` (checked) after `w`, and applies it to the snapshot.
    async fn commit_set(
        &self,
        w: Working,
        set: &ChangeSet,
        plans: &BTreeMap<String, UsagePlan>,
        file: &FileDelta,
        audit: Option<&AuditRecord>,
    ) -> Result<Done, AdminError> {
        if set.is_empty() && file.fingerprints.is_empty() && file.applied.is_empty() {
            abort(w.tx).await;
            return Ok(Done::Yes);
        }
        let max = self.audit_max.load(Ordering::Relaxed);
        let (change, at) = match w.tx {
            Tx::Memory(mut g) => match g.commit(set)? {
                Some(change) => {
                    if let Some(a) = audit {
                        g.append_audit(a.clone(), max);
                    }
                    (change, g.at.clone())
                }
                None => return Ok(Done::Retry),
            },
            Tx::Redis(tx) => {
                let Backend::Redis(r) = &self.backend else { unreachable!("a Redis transaction") };
                match r.records.commit(tx, set, plans, file, audit.map(|a| (a, max))).await? {
                    Committed::Done(done) => *done,
                    Committed::Retry => return Ok(Done::Retry),
                }
            }
        };
        if let Some(a) = audit {
            a.log();
        }
        self.apply_local(set, &change, at).await;
        Ok(Done::Yes)
    }

    // ---- the audit trail ----

    /// Keeps about `n` audit records (`--audit-max-records`).
    pub fn set_audit_max(&self, n: usize) {
        self.audit_max.store(n.max(1), Ordering::Relaxed);
    }

    /// Appends an audit record of a change made outside the catalog
    /// (UpdateUsage), and logs it.
    pub async fn append_audit(&self, record: AuditRecord) -> Result<(), AdminError> {
        let max = self.audit_max.load(Ordering::Relaxed);
        match &self.backend {
            Backend::Memory(m) => m.lock().await.append_audit(record.clone(), max),
            Backend::Redis(r) => r.records.append_audit(&record, max).await?,
        }
        record.log();
        Ok(())
    }

    /// Up to `limit` audit records, oldest first: those after the record
    /// `after` (an id from a previous page), or else from `since_ms`. Also
    /// the id to continue from, when there may be more.
    pub async fn audit_records(
        &self,
        since_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, Option<String>), AdminError> {
        let records = match &self.backend {
            Backend::Memory(m) => m.lock().await.audit_records(since_ms, after, limit),
            Backend::Redis(r) => r.records.audit_records(since_ms, after, limit).await?,
        };
        let next = (records.len() == limit).then(|| records.last().map(|r| r.id.clone())).flatten();
        Ok((records, next))
    }

    /// Tells every replica that UpdateUsage set the remaining quota of key
    /// `key_id` (call it after the store did): this replica's catalog
    /// generation moves on at once, and with Redis a record in the change log
    /// (a change of no records, `ChangeSet::usage`) moves every replica's on
    /// when it reads it. Either way the deny caches (`limiter::deny`) forget
    /// what they learned before. An error means the other replicas were not
    /// told (the call may be repeated).
    pub async fn usage_changed(&self, key_id: &str) -> Result<(), AdminError> {
        self.handle.touch();
        if let Backend::Memory(_) = &self.backend {
            return Ok(());
        }
        let _one_at_a_time = self.writer.lock().await;
        let set = ChangeSet { usage: vec![key_id.to_string()], ..ChangeSet::default() };
        for _ in 0..ATTEMPTS {
            let Some(w) = self.begin(&Want::nothing()).await? else {
                backoff().await;
                continue;
            };
            let plans = w.before.plans.clone();
            match self.commit_set(w, &set, &plans, &FileDelta::default(), None).await? {
                Done::Yes => return Ok(()),
                Done::Retry => backoff().await,
            }
        }
        Err(AdminError::Unavailable("the catalog is changing too fast to record this change; retry".into()))
    }

    /// Applies a change this replica made to its snapshot, unless the
    /// follower got there first.
    async fn apply_local(&self, set: &ChangeSet, change: &Change, at: Position) {
        let _g = self.install.lock().await;
        let follows = match self.position() {
            Some(p) => p.version + 1 == change.version && p.id == change.prev,
            None => false,
        };
        if !follows {
            if let Backend::Redis(r) = &self.backend {
                r.wake.notify_one();
            }
            return;
        }
        let snap = self.snapshot();
        let mut b = snap.edit();
        for (id, api) in &set.apis {
            b.api(id, api.clone());
        }
        for (id, stage) in &set.stages {
            b.stage(id, stage.clone());
        }
        for (id, plan) in &set.plans {
            b.plan(id, plan.clone());
        }
        let small = match b.small_preview() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("a catalog change does not compile ({e}); reloading");
                self.request_reload();
                return;
            }
        };
        for k in &set.keys {
            if let Some(before) = &k.before {
                for h in before.hashes() {
                    b.remove(&h, &k.id);
                }
            }
            if let Some(after) = &k.after {
                for (h, e) in entries_of(&KeyLean::of(after), &small) {
                    b.insert(h, e);
                }
            }
        }
        match b.build() {
            Ok(c) => self.set(c, at),
            Err(e) => {
                tracing::error!("a catalog change does not compile ({e}); reloading");
                self.request_reload();
            }
        }
    }

    fn request_reload(&self) {
        if let Backend::Redis(r) = &self.backend {
            *self.at.lock().unwrap_or_else(|p| p.into_inner()) = None;
            r.wake.notify_one();
        }
    }

    // ---- reads for the Admin service ----

    /// One key record.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, AdminError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.lock().await.keys.get(id).cloned()),
            Backend::Redis(r) => r.records.key(id).await,
        }
    }

    /// A page of an index; members from `from` (inclusive) to `to`
    /// (exclusive), after `after`.
    async fn page_of(
        &self,
        which: Index<'_>,
        from: &str,
        to: Option<&str>,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, AdminError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.lock().await.index_page(&which, from, to, after, n)),
            Backend::Redis(r) => r.records.index_page(&r.records.index(&which), from, to, after, n).await,
        }
    }

    async fn records_in_order(&self, ids: &[String]) -> Result<Vec<KeyRecord>, AdminError> {
        match &self.backend {
            Backend::Memory(m) => {
                let g = m.lock().await;
                Ok(ids.iter().filter_map(|id| g.keys.get(id).cloned()).collect())
            }
            Backend::Redis(r) => r.records.keys_in_order(ids).await,
        }
    }

    /// A page of keys, filtered by name prefix, customer and tags; `after`
    /// is the opaque position of the previous page. Walks one index (by
    /// customer, else by the first tag asked for, else by name, else by id),
    /// so a page costs O(log n + page) when the index is the only filter;
    /// the other filters are applied to the walked keys before paging (a
    /// filter that few of the index's keys pass reads more of it per page).
    /// Returns the keys and the next page's position (empty at the end).
    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        size: usize,
        after: Option<&str>,
    ) -> Result<(Vec<KeyRecord>, Option<String>), AdminError> {
        let (which, from, to) = if !filter.customer_id.is_empty() {
            let from = format!("{}\0", filter.customer_id);
            let to = format!("{}\u{1}", filter.customer_id);
            (Index::Customers, from, Some(to))
        } else if let Some((k, v)) = filter.tags.iter().next() {
            (Index::Tags, format!("{k}\0{v}\0"), Some(format!("{k}\0{v}\u{1}")))
        } else if !filter.name_prefix.is_empty() {
            (Index::Names, filter.name_prefix.clone(), prefix_end(&filter.name_prefix))
        } else {
            (Index::Ids, String::new(), None)
        };
        let id_of = |m: &str| m.rsplit_once('\0').map_or(m, |(_, id)| id).to_string();
        // What the index alone guarantees needs no check per key.
        let only_index = match which {
            Index::Customers => filter.name_prefix.is_empty() && filter.tags.is_empty(),
            Index::Tags => filter.name_prefix.is_empty() && filter.tags.len() == 1,
            _ => true,
        };
        let post = (!only_index).then_some(filter);
        self.walk(which, &from, to.as_deref(), after, size, id_of, post).await
    }

    /// A page of a plan's keys (by id), filtered by name prefix.
    pub async fn list_plan_keys(
        &self,
        plan: &str,
        name_prefix: &str,
        size: usize,
        after: Option<&str>,
    ) -> Result<(Vec<KeyRecord>, Option<String>), AdminError> {
        let filter = KeyFilter { name_prefix: name_prefix.to_string(), ..KeyFilter::default() };
        let post = (!name_prefix.is_empty()).then_some(&filter);
        self.walk(Index::Plan(plan), "", None, after, size, str::to_string, post).await
    }

    /// Walks an index in batches, keeping the records that pass `post` (all
    /// without it), until a page is full or the index ends.
    #[allow(clippy::too_many_arguments)]
    async fn walk(
        &self,
        which: Index<'_>,
        from: &str,
        to: Option<&str>,
        after: Option<&str>,
        size: usize,
        id_of: impl Fn(&str) -> String,
        post: Option<&KeyFilter>,
    ) -> Result<(Vec<KeyRecord>, Option<String>), AdminError> {
        let mut out = Vec::with_capacity(size);
        let mut cursor = after.map(str::to_string);
        let batch = if post.is_none() { size + 1 } else { CHUNK };
        loop {
            let which = match &which {
                Index::Ids => Index::Ids,
                Index::Names => Index::Names,
                Index::Customers => Index::Customers,
                Index::Tags => Index::Tags,
                Index::Plan(p) => Index::Plan(p),
            };
            let members = self.page_of(which, from, to, cursor.as_deref(), batch).await?;
            let ended = members.len() < batch;
            let ids: Vec<String> = members.iter().map(|m| id_of(m)).collect();
            let recs = self.records_in_order(&ids).await?;
            let by_id: BTreeMap<&str, &KeyRecord> = recs.iter().map(|r| (r.key.id.as_str(), r)).collect();
            for (m, id) in members.iter().zip(&ids) {
                let Some(r) = by_id.get(id.as_str()) else { continue };
                if post.is_some_and(|f| !f.matches(r)) {
                    cursor = Some(m.clone());
                    continue;
                }
                if out.len() == size {
                    return Ok((out, cursor));
                }
                out.push((*r).clone());
                cursor = Some(m.clone());
            }
            if ended {
                return Ok((out, None));
            }
        }
    }

    /// How many keys a plan has.
    pub async fn plan_key_count(&self, plan: &str) -> Result<u64, AdminError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.lock().await.plan_key_count(plan)),
            Backend::Redis(r) => r.records.plan_key_count(plan).await,
        }
    }

    /// Up to `n` ids of a plan's keys after `after`, in order.
    pub async fn plan_key_ids(&self, plan: &str, after: Option<&str>, n: usize) -> Result<Vec<String>, AdminError> {
        self.page_of(Index::Plan(plan), "", None, after, n).await
    }

    /// Deletes a usage plan: first its subscriptions, a chunk of keys per
    /// transaction (a plan may have millions), then the plan. While it runs
    /// the plan still exists, and keys added meanwhile are removed too.
    pub async fn delete_plan(&self, id: &str) -> Result<(), AdminError> {
        if !self.snapshot().small().plan_records.contains_key(id) {
            return Err(AdminError::NotFound(format!("usage plan {id:?} does not exist")));
        }
        loop {
            let ids = self.plan_key_ids(id, None, TX_KEYS).await?;
            if ids.is_empty() {
                break;
            }
            let want = Want { ids, hashes: Vec::new() };
            self.update(want, |d, _| {
                d.plan_keys.retain(|pk| pk.plan_id != id);
                Ok(())
            })
            .await?;
        }
        let plan = id.to_string();
        self.update(Want::nothing(), |d, _| super::admin::delete_plan(d, &plan)).await?;
        // Keys subscribed while the plan's last chunk was being written.
        while !self.plan_key_ids(id, None, 1).await?.is_empty() {
            let ids = self.plan_key_ids(id, None, TX_KEYS).await?;
            self.update(Want { ids, hashes: Vec::new() }, |d, _| {
                d.plan_keys.retain(|pk| pk.plan_id != id);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    // ---- the catalog file ----

    /// Applies the catalog file unless a file with its digest was applied
    /// before (docs/admin.md, "The catalog file at start"), in transactions
    /// of at most [`TX_KEYS`] keys; the digest is remembered with the last.
    async fn apply_file(&self, r: &RedisSide, file: &CatalogFile) -> Result<FileOutcome, AdminError> {
        let parts = split_file(&file.records);
        let plan_names: Vec<String> = file.records.plans.keys().map(|p| Record::Plan(p.clone()).name()).collect();
        let mut report = Vec::new();
        let mut last_state = FileState::default();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let mut names = record_names(part);
            names.extend(plan_names.iter().cloned());
            names.sort();
            names.dedup();
            let want = Want {
                ids: part.keys.keys().cloned().collect(),
                hashes: part.keys.values().map(|k| k.value_hash).collect(),
            };
            let mut done = false;
            let _one_at_a_time = self.writer.lock().await;
            for _ in 0..ATTEMPTS {
                let Some(mut w) = self.begin(&want).await? else {
                    backoff().await;
                    continue;
                };
                let Tx::Redis(tx) = &mut w.tx else { unreachable!("files apply to Redis") };
                let state = match r.records.file_state(tx, &names).await {
                    Ok(s) => s,
                    Err(e) => {
                        abort(w.tx).await;
                        return Err(e);
                    }
                };
                if i == 0 {
                    if let Some(at) = state.applied_at(&file.digest) {
                        abort(w.tx).await;
                        return Ok(FileOutcome::AlreadyApplied(at));
                    }
                }
                let mut after = w.before.clone();
                let mut applied = bootstrap::apply(&mut after, part, &state, &file.digest, w.now);
                if !last {
                    applied.state.applied = state.applied.clone();
                }
                let delta = FileDelta::between(&state, &applied.state);
                if let Done::Yes = self.commit(w, &after, &delta).await? {
                    report.extend(applied.report.into_iter().filter(|(_, o)| *o != Outcome::NoLongerInFile));
                    last_state = applied.state;
                    done = true;
                    break;
                }
                backoff().await;
            }
            if !done {
                return Err(AdminError::Unavailable(
                    "the catalog is changing too fast to apply the catalog file".into(),
                ));
            }
        }
        report.extend(self.no_longer_in_file(r, file).await?);
        Ok(FileOutcome::Applied(Applied { state: last_state, report }))
    }

    /// The records a previous file applied that this one does not list and
    /// that are still in the catalog.
    async fn no_longer_in_file(&self, r: &RedisSide, file: &CatalogFile) -> Result<Vec<(Record, Outcome)>, AdminError> {
        let listed: BTreeSet<String> = record_names(&file.records).into_iter().collect();
        let gone: Vec<Record> = r
            .records
            .all_fingerprints()
            .await?
            .into_iter()
            .filter(|n| !listed.contains(n))
            .filter_map(|n| Record::parse(&n))
            .collect();
        let snap = self.snapshot();
        let mut out = Vec::new();
        for rec in gone {
            let exists = match &rec {
                Record::Api(id) => snap.small().apis.contains_key(id),
                Record::Stage(s) => snap.small().stage_records.contains_key(s),
                Record::Plan(id) => snap.small().plan_records.contains_key(id),
                Record::Key(id) => r.records.key(id).await?.is_some(),
                Record::Subscription(pk) => {
                    r.records.key(&pk.key_id).await?.is_some_and(|k| k.plans.contains(&pk.plan_id))
                }
            };
            if exists {
                out.push((rec, Outcome::NoLongerInFile));
            }
        }
        Ok(out)
    }

    /// Applies the catalog file, if there is one, and logs what happened.
    /// Fails only when Redis cannot be reached: a file that cannot be applied
    /// is logged, and the catalog is served as Redis has it.
    async fn apply_file_and_log(&self, r: &RedisSide) -> Result<(), AdminError> {
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
}

/// The data plane's part of a stored key record.
fn lean<'a>(id: &str, json: &'a str) -> Result<KeyLean<'a>, AdminError> {
    serde_json::from_str(json)
        .map_err(|e| AdminError::Internal(format!("catalog record keys/{id} cannot be read: {e}")))
}

/// Gives up a transaction.
async fn abort(tx: Tx) {
    match tx {
        Tx::Memory(_) => {}
        Tx::Redis(t) => t.abort().await,
    }
}

/// Drops rotated values whose grace period is over, from the loaded keys.
fn prune_rotated(d: &mut CatalogData, now: u64) {
    d.old_values.retain(|_, o| o.valid_until_ms > now);
}

/// A short random pause before a transaction is tried again.
async fn backoff() {
    tokio::time::sleep(Duration::from_millis(rand::random_range(1..20))).await;
}

/// The end (exclusive) of the strings starting with `prefix`, if any.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(next) = char::from_u32(c as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Splits a file's records into parts of at most [`TX_KEYS`] keys: the first
/// part also has every API, stage and plan; each key goes with its
/// subscriptions.
fn split_file(file: &CatalogData) -> Vec<CatalogData> {
    let mut subs: BTreeMap<&str, Vec<&PlanKey>> = BTreeMap::new();
    for pk in &file.plan_keys {
        subs.entry(pk.key_id.as_str()).or_default().push(pk);
    }
    let mut parts = vec![CatalogData {
        apis: file.apis.clone(),
        stages: file.stages.clone(),
        plans: file.plans.clone(),
        ..CatalogData::default()
    }];
    for (id, key) in &file.keys {
        if parts.last().is_some_and(|p| p.keys.len() >= TX_KEYS) {
            parts.push(CatalogData::default());
        }
        let part = parts.last_mut().expect("at least one part");
        part.keys.insert(id.clone(), key.clone());
        for pk in subs.get(id.as_str()).into_iter().flatten() {
            part.plan_keys.insert((*pk).clone());
        }
    }
    parts
}

/// The fingerprint names of a part's records.
fn record_names(d: &CatalogData) -> Vec<String> {
    d.apis
        .keys()
        .map(|id| Record::Api(id.clone()))
        .chain(d.stages.keys().map(|s| Record::Stage(s.clone())))
        .chain(d.plans.keys().map(|id| Record::Plan(id.clone())))
        .chain(d.keys.keys().map(|id| Record::Key(id.clone())))
        .chain(d.plan_keys.iter().map(|pk| Record::Subscription(pk.clone())))
        .map(|r| r.name())
        .collect()
}

// ---- the follower: full loads and the change log ----

/// Why following stopped.
enum Stop {
    /// The log does not continue what this replica saw: load everything.
    Reload(String),
    /// Redis is away.
    Unavailable(AdminError),
}

/// The background task of a Redis catalog: load, apply the file, become
/// ready, follow the log; load again when the log says so.
async fn follow(svc: Arc<CatalogService>) {
    let Backend::Redis(r) = &svc.backend else { return };
    let mut delay = Duration::from_millis(100);
    loop {
        match full_load(&svc, r).await {
            Ok(reset) => {
                if !svc.is_ready() || reset {
                    // The file, applied by this task: on failure (Redis went
                    // away, or the catalog changed under it in a way the log
                    // cannot explain) load again and retry.
                    if let Err(e) = svc.apply_file_and_log(r).await {
                        tracing::warn!("the catalog file is not applied yet: {e}; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                    if !svc.is_ready() {
                        svc.ready.store(true, Ordering::SeqCst);
                        tracing::info!(at = %svc.position().unwrap_or_default(), "catalog loaded from Redis");
                    }
                }
                delay = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!("catalog not loaded yet: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        match follow_log(&svc, r).await {
            Stop::Reload(why) => tracing::warn!("reloading the whole catalog: {why}"),
            Stop::Unavailable(e) => {
                tracing::debug!("catalog change log: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Loads the whole catalog: the small tables, then every key in chunks, then
/// the changes made meanwhile from the log. Returns whether Redis was
/// emptied or replaced since the last load (a new epoch, or a history going
/// back), which calls for the catalog file again.
async fn full_load(svc: &CatalogService, r: &RedisSide) -> Result<bool, AdminError> {
    loop {
        let started = Instant::now();
        let head = r.records.head().await?;
        let apis: BTreeMap<String, Api> = r.records.scan_table("apis").await?;
        let stages: BTreeMap<String, Stage> = r.records.scan_table("stages").await?;
        let plans: BTreeMap<String, UsagePlan> = r.records.scan_table("plans").await?;
        let small = match Small::compile(apis, stages, plans) {
            Ok(s) => s,
            Err(e) => {
                // Read while a change was half way through the tables (a
                // plan naming a stage not yet read): read them again.
                tracing::debug!("catalog tables read mid-change ({e}); reading again");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut entries = Vec::new();
        let mut count = 0usize;
        r.records
            .scan_keys(|id, json| {
                count += 1;
                let rec = lean(id, json)?;
                entries.extend(entries_of(&rec, &small));
                Ok(())
            })
            .await?;
        let mut catalog = snapshot::bulk(small, entries);
        let _g = svc.install.lock().await;
        let reset = match svc.position() {
            Some(p) => p.epoch != head.epoch || p.version > head.version,
            None => false,
        };
        let mut at = head.clone();
        let mut conn = r.records.follower().await?;
        loop {
            let changes = r.records.changes_after(&mut conn, at.version, None).await?;
            if changes.is_empty() {
                break;
            }
            match apply_changes(r, catalog.clone(), &at, &changes).await? {
                Ok((c, p)) => {
                    catalog = c;
                    at = p;
                }
                Err(why) => {
                    tracing::debug!("catalog changed too much during the load ({why}); loading again");
                    at = Position { version: u64::MAX, ..Position::default() };
                    break;
                }
            }
        }
        if at.version == u64::MAX {
            continue;
        }
        tracing::info!(keys = count, entries = catalog.key_entries(), at = %at, took_ms = started.elapsed().as_millis() as u64, "catalog loaded");
        if reset {
            tracing::warn!(at = %at, "Redis was emptied or restored: the catalog there is not the one this replica had; reloaded");
        }
        svc.set(catalog, at);
        return Ok(reset);
    }
}

/// Applies log entries after `at` to `catalog`, reading the changed records
/// again. `Ok(Err(why))` when the entries do not continue `at`.
async fn apply_changes(
    r: &RedisSide,
    catalog: Catalog,
    at: &Position,
    changes: &[Change],
) -> Result<Result<(Catalog, Position), String>, AdminError> {
    let mut pos = at.clone();
    let mut keys: BTreeMap<String, Vec<crate::model::KeyHash>> = BTreeMap::new();
    let (mut plans, mut stages, mut apis) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for c in changes {
        if c.version <= pos.version {
            continue;
        }
        let chained =
            c.version == pos.version + 1 && c.prev == pos.id && (pos.epoch.is_empty() || c.epoch == pos.epoch);
        if !chained {
            return Ok(Err(format!("change {} of epoch {} does not follow {pos}", c.version, c.epoch)));
        }
        for (id, hs) in &c.keys {
            keys.entry(id.clone()).or_default().extend(hs.iter().copied());
        }
        plans.extend(c.plans.iter().cloned());
        stages.extend(c.stages.iter().cloned());
        apis.extend(c.apis.iter().cloned());
        pos = Position { epoch: c.epoch.clone(), version: c.version, id: c.id.clone() };
    }
    if pos == *at {
        return Ok(Ok((catalog, pos)));
    }
    let mut b = catalog.edit();
    for (id, api) in r.records.small_records::<Api>("apis", &apis.into_iter().collect::<Vec<_>>()).await? {
        b.api(&id, api);
    }
    for (id, st) in r.records.small_records::<Stage>("stages", &stages.into_iter().collect::<Vec<_>>()).await? {
        b.stage(&id, st);
    }
    for (id, p) in r.records.small_records::<UsagePlan>("plans", &plans.into_iter().collect::<Vec<_>>()).await? {
        b.plan(&id, p);
    }
    let small = match b.small_preview() {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("the changed plans and stages do not compile: {e}"))),
    };
    for (id, hs) in &keys {
        for h in hs {
            b.remove(h, id);
        }
    }
    let ids: Vec<String> = keys.keys().cloned().collect();
    for chunk in ids.chunks(CHUNK) {
        r.records
            .raw_keys(chunk, |id, json| {
                let rec = lean(id, json)?;
                for (h, e) in entries_of(&rec, &small) {
                    b.insert(h, e);
                }
                Ok(())
            })
            .await?;
    }
    match b.build() {
        Ok(c) => Ok(Ok((c, pos))),
        Err(e) => Ok(Err(format!("the changed records do not compile: {e}"))),
    }
}

/// Follows the change log from where the snapshot stands.
async fn follow_log(svc: &CatalogService, r: &RedisSide) -> Stop {
    let mut conn = match r.records.follower().await {
        Ok(c) => c,
        Err(e) => return Stop::Unavailable(e),
    };
    let mut last_head_check = Instant::now();
    loop {
        let Some(at) = svc.position() else { return Stop::Reload("a reload was asked for".into()) };
        let block = FOLLOW_BLOCK.min(r.poll);
        let changes = tokio::select! {
            c = r.records.changes_after(&mut conn, at.version, Some(block)) => c,
            _ = r.wake.notified() => continue,
        };
        let changes = match changes {
            Ok(c) => c,
            Err(e) => return Stop::Unavailable(e),
        };
        if changes.is_empty() || last_head_check.elapsed() >= r.poll {
            last_head_check = Instant::now();
            if r.file_pending.load(Ordering::SeqCst) {
                if let Err(e) = svc.apply_file_and_log(r).await {
                    tracing::warn!("the catalog file is not applied again yet after Redis was emptied: {e}");
                }
            }
            match r.records.head_on(&mut conn).await {
                Ok(head) => {
                    let moved_on = (!at.epoch.is_empty() && head.epoch != at.epoch)
                        || head.version < at.version
                        || (head.version == at.version && head.id != at.id);
                    if moved_on {
                        return Stop::Reload(format!("the catalog in Redis is at {head}, this replica at {at}"));
                    }
                    if changes.is_empty() && head.version > at.version {
                        // Behind, and the log holds nothing after us: trimmed.
                        let next = r.records.changes_after(&mut conn, at.version, None).await;
                        if matches!(next, Ok(ref c) if c.is_empty()) {
                            return Stop::Reload(format!("the change log no longer holds the changes after {at}"));
                        }
                    }
                }
                Err(e) => return Stop::Unavailable(e),
            }
            if changes.is_empty() {
                continue;
            }
        }
        let _g = svc.install.lock().await;
        let Some(at) = svc.position() else { return Stop::Reload("a reload was asked for".into()) };
        match apply_changes(r, (*svc.snapshot()).clone(), &at, &changes).await {
            Ok(Ok((catalog, pos))) => {
                if pos != at {
                    svc.set(catalog, pos);
                }
            }
            Ok(Err(why)) => return Stop::Reload(why),
            Err(e) => return Stop::Unavailable(e),
        }
    }
}
