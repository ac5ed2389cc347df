//! Leased admission (issue 11; docs/semantics.md, "Leased admission"): for
//! a plan with `admission: leased`, a replica takes a small block of tokens
//! of every limit of a request from Redis at once, and admits the same
//! requests locally from it, with no Redis call, for a short while.
//!
//! **What Redis guarantees** (`decide.lua`, "Leases"). A lease is taken by
//! an ordinary decision that asks for more ([`LeaseOp::Ask`]); its tokens
//! are held in a *slot* of the limit's value, counted as taken and never
//! refilled while the slot lasts (more than [`LEASE_MS`] from the grant). The
//! replica reports what it used when its use ends ([`LeaseOp::Settle`]):
//! Redis then charges the used tokens, at that instant, and gives the rest
//! back. A lease that is never settled (the replica stopped) *lapses* when
//! its slot ends and is charged in full. Each token is so charged no earlier
//! than it was used, and held as taken from before its use: the replicas
//! together never admit more than one exact bucket or quota would.
//!
//! **What this table does.** One *pool* per distinct list of limits (a key,
//! its plan, the method's and the stage's throttles): the tokens leased,
//! used, and until when they may be used. A request whose pool has enough
//! tokens left is admitted here. Otherwise it goes to Redis; it asks for a
//! lease when its limits were asked for at least [`MIN_DEMAND`] units in the
//! current or the last use window (a key called now and then is decided per
//! request and costs no more Redis calls than without leases), sized to
//! twice the demand seen, at most `max_lease`. One lease is asked at a time per pool; the requests in
//! the meantime are decided one by one.
//!
//! **When a pool's use ends (decision).** A pool is used for at most
//! `valid_ms` (`LEASE_MS / 2`, less at the end of a quota period) counted on
//! this process's monotonic clock from the instant the asking request was
//! *handed to the store*, minus a millisecond: so before Redis's slot ends
//! (at least `LEASE_MS` after Redis decided) and before the quota period
//! ends, whatever the round trip. Then [`LeaseTable::due`] hands its settle
//! to the settler (`crate::server`), which has `LEASE_MS / 2` to reach Redis
//! before the slot ends; a later settle finds the lease lapsed (charged in
//! full) and only its usage is counted.
//!
//! **The answer** of a local admission is the granting decision's: the
//! limit with the least remaining, its remaining then less the tokens this
//! pool has used since, and its reset counted down. Other replicas' use
//! since is not seen.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::clock::{Clock, Monotonic};
use crate::store::{Check, LeaseOp, Limit, UsageKeys, Verdict};

/// A lease slot's length in Redis, ms (`state.lua`, `LEASE_MS`): a lease's
/// tokens are held at least this long after the grant; its replica uses them
/// for half of it.
pub const LEASE_MS: u64 = 200;

/// The largest lease asked by default (`--lease-max`).
pub const DEFAULT_MAX_LEASE: u64 = 10_000;

/// How many shards (each with its own lock) the pools are spread over.
const SHARDS: usize = 64;

/// The window over which demand is counted, µs: a pool's use.
const WINDOW_US: u64 = LEASE_MS * 1000 / 2;

/// The demand (units asked in a window, the current or the last) from
/// which a replica leases: about 80 a second. Below it a lease would save
/// few calls and cost its settle, and its slots would lengthen the values
/// every decision of those limits reads (measured: leasing from 2 a window
/// made 10,000 keys spread thin cost Redis 20 % more per decision).
const MIN_DEMAND: u64 = 8;

/// What the table says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Admitted from this replica's lease: no store call.
    Local(Verdict),
    /// Ask the store, and for a lease of this many tokens.
    Ask(u64),
    /// Ask the store, with no lease.
    Plain,
}

#[derive(Debug)]
struct Pool {
    /// The lease's limits (a request uses the pool only with the same).
    limits: Vec<Limit>,
    usage: Option<UsageKeys>,
    leased: u64,
    used: u64,
    slot: u64,
    /// Local use ends at this instant (µs, the table's clock).
    end_us: u64,
    /// The granting decision's numbers, and when it was asked.
    verdict: Verdict,
    sent_us: u64,
    id: u64,
}

impl Pool {
    fn settle(&self) -> Check {
        Check {
            limits: self.limits.clone(),
            cost: self.used,
            usage: self.usage.clone(),
            lease: LeaseOp::Settle { leased: self.leased, slot: self.slot },
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    pool: Option<Pool>,
    asking: bool,
    /// Demand: units asked in the current and the previous window.
    window_start_us: u64,
    this_window: u64,
    last_window: u64,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u64, Entry>,
    /// Pools to settle now (replaced by a newer lease).
    settle_now: Vec<Check>,
}

/// The leases of one replica (see the module's documentation).
pub struct LeaseTable {
    shards: Box<[Mutex<Shard>]>,
    /// (end of use, pool id, shard, signature): pools end in the order they
    /// were made (all last `valid_ms`, or less at a period's end).
    due: Mutex<VecDeque<(u64, u64, usize, u64)>>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    max_lease: u64,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable").field("max_lease", &self.max_lease).finish()
    }
}

impl LeaseTable {
    /// A table asking leases of at most `max_lease` tokens.
    pub fn new(max_lease: u64) -> Self {
        Self::on_clock(max_lease, Arc::new(Monotonic::start()))
    }

    /// A table on a test clock (µs): the model-based suite drives the Redis
    /// store and the table on one clock. Only in test builds.
    #[cfg(any(test, feature = "test-clock"))]
    pub fn with_clock(max_lease: u64, clock: Arc<dyn Clock>) -> Self {
        Self::on_clock(max_lease, clock)
    }

    fn on_clock(max_lease: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            due: Mutex::new(VecDeque::new()),
            hasher: RandomState::new(),
            clock,
            max_lease: max_lease.max(1),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The table's clock, µs.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    fn signature(&self, check: &Check) -> u64 {
        let mut h = self.hasher.build_hasher();
        for l in &check.limits {
            l.key.hash(&mut h);
            l.field.hash(&mut h);
        }
        h.finish()
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to do with `check`: admit it from a lease, or ask the store
    /// (for a lease, when its limits are in demand). Returns the signature
    /// to give [`granted`](Self::granted) with the store's answer.
    pub fn admit(&self, check: &Check) -> (Admit, u64) {
        let sig = self.signature(check);
        let now = self.now_us();
        let mut shard = self.shard(sig as usize % SHARDS);
        let e = shard.entries.entry(sig).or_default();
        if now.saturating_sub(e.window_start_us) >= WINDOW_US {
            let gap = now.saturating_sub(e.window_start_us);
            e.last_window = if gap < 2 * WINDOW_US { e.this_window } else { 0 };
            e.this_window = 0;
            e.window_start_us = now;
        }
        e.this_window = e.this_window.saturating_add(check.cost);
        if let Some(p) = &mut e.pool {
            if now < p.end_us && p.limits == check.limits && p.leased - p.used >= check.cost {
                p.used += check.cost;
                let gone_ms = now.saturating_sub(p.sent_us) / 1000;
                let v = Verdict {
                    remaining: p.verdict.remaining.saturating_sub(p.used),
                    reset_ms: p.verdict.reset_ms.saturating_sub(gone_ms),
                    grant: None,
                    ..p.verdict
                };
                return (Admit::Local(v), sig);
            }
        }
        if e.asking {
            return (Admit::Plain, sig);
        }
        let demand = e.this_window.max(e.last_window);
        if demand < MIN_DEMAND {
            return (Admit::Plain, sig);
        }
        e.asking = true;
        (Admit::Ask((2 * demand).clamp(MIN_DEMAND, self.max_lease)), sig)
    }

    /// The store's answer to a check that asked for a lease (`sent_us`: when
    /// it was handed to the store; `None`: the store failed). A grant
    /// becomes the pool of `sig`; the pool it replaces is settled now.
    pub fn granted(&self, sig: u64, sent_us: u64, check: Check, answer: Option<&Verdict>) {
        let mut shard = self.shard(sig as usize % SHARDS);
        let Some(e) = shard.entries.get_mut(&sig) else { return };
        e.asking = false;
        let Some((v, g)) = answer.and_then(|v| v.grant.map(|g| (v, g))) else { return };
        let end_us = sent_us + (g.valid_ms * 1000).saturating_sub(1000);
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pool = Pool {
            limits: check.limits,
            usage: check.usage,
            leased: g.tokens,
            used: 0,
            slot: g.slot,
            end_us,
            verdict: *v,
            sent_us,
            id,
        };
        let old = e.pool.replace(pool);
        if let Some(old) = old {
            shard.settle_now.push(old.settle());
        }
        drop(shard);
        self.due.lock().unwrap_or_else(|p| p.into_inner()).push_back((end_us, id, sig as usize % SHARDS, sig));
    }

    /// The lease asked for `sig` was not asked after all (a cached denial
    /// answered the request): another request may ask.
    pub fn unask(&self, sig: u64) {
        if let Some(e) = self.shard(sig as usize % SHARDS).entries.get_mut(&sig) {
            e.asking = false;
        }
    }

    /// The settles due now: pools whose use has ended, and pools replaced;
    /// and forgets idle entries. The settler calls it every few ms.
    pub fn due(&self) -> Vec<Check> {
        let now = self.now_us();
        let mut out = Vec::new();
        let mut ended = Vec::new();
        {
            let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
            while due.front().is_some_and(|d| d.0 <= now) {
                ended.extend(due.pop_front());
            }
        }
        for (_, id, s, sig) in ended {
            let mut shard = self.shard(s);
            if let Some(e) = shard.entries.get_mut(&sig) {
                if e.pool.as_ref().is_some_and(|p| p.id == id) {
                    out.extend(e.pool.take().map(|p| p.settle()));
                }
            }
        }
        for s in 0..SHARDS {
            let mut shard = self.shard(s);
            out.append(&mut shard.settle_now);
        }
        // forget entries idle for two windows (a slice of the shards per call)
        let s = (now / 10_000) as usize % SHARDS;
        let mut shard = self.shard(s);
        shard
            .entries
            .retain(|_, e| e.pool.is_some() || e.asking || now.saturating_sub(e.window_start_us) < 2 * WINDOW_US);
        out
    }

    /// Every pool's settle, now (at shutdown: what was leased goes back).
    pub fn drain(&self) -> Vec<Check> {
        let mut out = Vec::new();
        for s in 0..SHARDS {
            let mut shard = self.shard(s);
            out.append(&mut shard.settle_now);
            for e in shard.entries.values_mut() {
                out.extend(e.pool.take().map(|p| p.settle()));
            }
        }
        self.due.lock().unwrap_or_else(|p| p.into_inner()).clear();
        out
    }

    /// How many pools hold a lease now.
    pub fn pools(&self) -> usize {
        (0..SHARDS).map(|s| self.shard(s).entries.values().filter(|e| e.pool.is_some()).count()).sum()
    }
}
