//! The catalog: APIs, stages, usage plans, API keys and subscriptions, and
//! the in-process snapshot that answers every lookup of the hot path without
//! I/O.
//!
//! - [`CatalogData`] is a plain set of records: a catalog file's
//!   ([`file`](mod@file)), or the part of a stored catalog a transaction
//!   works on (`records.rs`).
//! - [`Catalog`] (`snapshot.rs`) is the data plane's compact, immutable view;
//!   a [`CatalogHandle`] holds the current one behind an `ArcSwap`: readers
//!   take it without a lock; a change swaps in a new one that shares all it
//!   did not touch.
//! - [`store::CatalogService`] keeps the snapshot in step with where the
//!   records live (this process, or Redis: `memory.rs`, `redis.rs`) and runs
//!   the control plane's changes (`admin.rs`) as transactions.

pub mod admin;
pub mod bootstrap;
pub mod csv_import;
pub mod file;
pub mod memory;
pub mod records;
pub mod redis;
pub mod snapshot;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use snapshot::{Catalog, CompiledStage, KeyEntry, StagePlan};

use crate::model::{Api, ApiKey, Invalid, KeyHash, Stage, UsagePlan};

/// A subscription: the key may call the plan's stages under the plan's limits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PlanKey {
    /// The usage plan.
    pub plan_id: String,
    /// The API key.
    pub key_id: String,
}

/// An old value of a rotated key, still accepted until `valid_until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OldValue {
    /// The key it opens.
    pub key_id: String,
    /// Until when (ms since the epoch, exclusive).
    pub valid_until_ms: u64,
}

/// Every record of a catalog, by id, as a source (file, memory, Redis) holds
/// them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogData {
    /// APIs by id.
    pub apis: BTreeMap<String, Api>,
    /// Stages by `API/STAGE`.
    pub stages: BTreeMap<String, Stage>,
    /// Usage plans by id.
    pub plans: BTreeMap<String, UsagePlan>,
    /// API keys by id (hashes only).
    pub keys: BTreeMap<String, ApiKey>,
    /// Old values of rotated keys in their grace period, by value hash (hex).
    pub old_values: BTreeMap<String, OldValue>,
    /// Subscriptions.
    pub plan_keys: BTreeSet<PlanKey>,
}

impl CatalogData {
    /// The plans a key is subscribed to: O(plans × log subscriptions), as
    /// subscriptions are ordered by plan first and plans are few.
    pub fn plans_of_key<'a>(&'a self, key_id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.plans
            .keys()
            .filter(move |p| self.plan_keys.contains(&PlanKey { plan_id: (*p).clone(), key_id: key_id.to_string() }))
            .map(String::as_str)
    }

    /// The key with this value hash, if any (a linear scan: for the few keys
    /// of a transaction's partial view).
    pub fn key_by_hash(&self, hash: &KeyHash) -> Option<&ApiKey> {
        self.keys.values().find(|k| &k.value_hash == hash)
    }
}

/// Why records do not form a catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A record is malformed or refers to something that does not exist.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Records conflict (a key in two plans that share a stage, a value used
    /// twice): FAILED_PRECONDITION.
    #[error("{0}")]
    Conflict(String),
}

/// The current catalog snapshot, shared by every request, and its
/// *generation*: a number that moves on whenever the snapshot is replaced or
/// the limits' state changed behind the decisions' back (UpdateUsage), so
/// that what was learned from an older one (the deny cache,
/// `limiter::deny`) can be told apart.
#[derive(Clone)]
pub struct CatalogHandle(Arc<ArcSwap<Catalog>>, Arc<AtomicBool>, Arc<AtomicU64>);

impl CatalogHandle {
    /// A handle on `catalog`, counted as loaded.
    pub fn new(catalog: Catalog) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(catalog)), Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)))
    }

    /// The generation. Read it *before* [`CatalogHandle::load`]: the snapshot
    /// loaded after it is then of this generation or newer.
    pub fn generation(&self) -> u64 {
        self.2.load(Ordering::Acquire)
    }

    /// Moves the generation on (after the change it stands for is in place).
    pub fn touch(&self) {
        self.2.fetch_add(1, Ordering::AcqRel);
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.0.load()
    }

    /// The current snapshot, as an owned `Arc`.
    pub fn load_full(&self) -> Arc<Catalog> {
        self.0.load_full()
    }

    /// Replaces the snapshot (and moves the generation on).
    pub fn store(&self, catalog: Catalog) {
        self.0.store(Arc::new(catalog));
        self.touch();
    }

    /// Whether the snapshot holds the catalog (a Redis catalog is empty until
    /// its first load: decisions then answer UNAVAILABLE, not 403).
    pub fn is_loaded(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    /// Marks the snapshot loaded or not.
    pub fn set_loaded(&self, loaded: bool) {
        self.1.store(loaded, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MethodSetting, PlanStage, StageRef, Throttle};

    /// A catalog read from Redis (written by an older version, or by hand) is
    /// checked like a new one: a throttle out of bounds is refused, naming
    /// the record and the field, before any decision can use it.
    #[test]
    fn loading_checks_every_throttle() {
        let sr = StageRef::parse("shop/prod").unwrap();
        let tiny = Throttle { rate_limit: 1e-16, burst_limit: 1 };
        let mut d = CatalogData::default();
        d.apis.insert("shop".into(), Api { id: "shop".into(), name: "shop".into() });
        let methods = [("/x/GET".to_string(), MethodSetting { throttle: Some(tiny), api_key_required: true })];
        d.stages.insert("shop/prod".into(), Stage { stage: sr.clone(), methods: methods.into_iter().collect() });
        let e = Catalog::compile(d.clone()).unwrap_err().to_string();
        assert!(e.contains("stage shop/prod: methods[/x/GET].throttle.rate_limit"), "{e}");

        d.stages.get_mut("shop/prod").unwrap().methods.clear();
        let plan = UsagePlan {
            id: "p".into(),
            name: "P".into(),
            description: String::new(),
            throttle: Some(tiny),
            quota: None,
            api_stages: vec![PlanStage { stage: sr, throttle: Default::default() }],
            created_at_ms: 0,
            admission: Default::default(),
            shadow: false,
            alerts: Vec::new(),
            tags: Default::default(),
        };
        d.plans.insert("p".into(), plan);
        let e = Catalog::compile(d).unwrap_err().to_string();
        assert!(e.contains("usage plan \"p\".throttle.rate_limit"), "{e}");
    }
}
