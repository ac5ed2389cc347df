//! The catalog: APIs, stages, usage plans, API keys and subscriptions, and
//! the in-process snapshot that answers every lookup of the hot path without
//! I/O.
//!
//! [`CatalogData`] is the plain list of records, as a source (the YAML file of
//! [`file`](mod@file), later Redis) gives them. [`Catalog::compile`] checks the
//! references between them (every plan stage exists, every subscription names
//! a known plan and key, a key has at most one plan per stage) and builds the
//! lookup tables: key hash → key and its plan per stage, stage → method
//! settings. A [`CatalogHandle`] holds the current snapshot behind an
//! `ArcSwap`: readers take it without a lock; a change swaps in a new one.

pub mod admin;
pub mod bootstrap;
pub mod csv_import;
pub mod file;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::{Api, ApiKey, Invalid, KeyHash, MethodSetting, MethodTable, Stage, StageRef, Throttle, UsagePlan};

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
    /// The plans a key is subscribed to.
    pub fn plans_of_key<'a>(&'a self, key_id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.plan_keys.iter().filter(move |pk| pk.key_id == key_id).map(|pk| pk.plan_id.as_str())
    }

    /// The key with this value hash, if any.
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

/// A stage compiled for lookups.
#[derive(Debug)]
pub struct CompiledStage {
    /// Which stage.
    pub stage: StageRef,
    /// Its method settings by pattern.
    pub methods: MethodTable<MethodSetting>,
}

/// One plan as it applies to one stage.
#[derive(Debug)]
pub struct StagePlan {
    /// The plan.
    pub plan: Arc<UsagePlan>,
    /// The plan's per-method throttles on this stage.
    pub method_throttles: MethodTable<Throttle>,
}

/// A plan's stages, by `API/STAGE`.
type PlanStages = BTreeMap<String, Arc<StagePlan>>;

/// A key and where it may go.
#[derive(Debug)]
pub struct KeyEntry {
    /// The key record.
    pub key: Arc<ApiKey>,
    /// For each stage (`API/STAGE`) the one plan of this key that contains it.
    pub plans_by_stage: HashMap<String, Arc<StagePlan>>,
    /// For a rotated-out value: until when it still opens the key.
    pub valid_until_ms: Option<u64>,
}

/// An immutable, compiled catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    data: CatalogData,
    stages: HashMap<String, CompiledStage>,
    keys: HashMap<KeyHash, Arc<KeyEntry>>,
}

impl Catalog {
    /// Checks the references between records and builds the lookup tables.
    pub fn compile(data: CatalogData) -> Result<Self, CatalogError> {
        let mut stages = HashMap::new();
        for s in data.stages.values() {
            if !data.apis.contains_key(s.stage.api_id.as_str()) {
                let msg = format!("stage {} belongs to unknown API {:?}", s.stage, s.stage.api_id);
                return Err(Invalid::new("stages", msg).into());
            }
            let methods = MethodTable::parse(s.methods.iter().map(|(m, setting)| (m, *setting)))
                .map_err(|e| Invalid::new(format!("stage {}: methods", s.stage), e.message))?;
            for (m, setting) in &s.methods {
                if let Some(t) = &setting.throttle {
                    t.validate().map_err(|e| e.within(&format!("stage {}: methods[{m}].throttle", s.stage)))?;
                }
            }
            let compiled = CompiledStage { stage: s.stage.clone(), methods };
            stages.insert(s.stage.to_string(), compiled);
        }

        let mut plans: HashMap<&str, PlanStages> = HashMap::new();
        for p in data.plans.values() {
            p.validate().map_err(|e| e.within(&format!("usage plan {:?}", p.id)))?;
            let mut per_stage = BTreeMap::new();
            let plan = Arc::new(p.clone());
            for ps in &p.api_stages {
                if !stages.contains_key(&ps.stage.to_string()) {
                    let field = format!("usage plan {:?}: api_stages", p.id);
                    return Err(Invalid::new(field, format!("stage {} does not exist", ps.stage)).into());
                }
                let method_throttles = MethodTable::parse(ps.throttle.iter().map(|(m, t)| (m, *t))).map_err(|e| {
                    Invalid::new(format!("usage plan {:?}: stage {}: throttle", p.id, ps.stage), e.message)
                })?;
                let sp = StagePlan { plan: plan.clone(), method_throttles };
                per_stage.insert(ps.stage.to_string(), Arc::new(sp));
            }
            plans.insert(p.id.as_str(), per_stage);
        }

        let mut by_key: HashMap<&str, HashMap<String, Arc<StagePlan>>> = HashMap::new();
        for pk in &data.plan_keys {
            let Some(per_stage) = plans.get(pk.plan_id.as_str()) else {
                let msg = format!("usage plan {:?} does not exist", pk.plan_id);
                return Err(Invalid::new("usage plan keys", msg).into());
            };
            if !data.keys.contains_key(pk.key_id.as_str()) {
                let msg = format!("API key {:?} does not exist", pk.key_id);
                return Err(Invalid::new("usage plan keys", msg).into());
            }
            let entry = by_key.entry(pk.key_id.as_str()).or_default();
            for (stage, sp) in per_stage {
                if let Some(other) = entry.get(stage) {
                    if other.plan.id != pk.plan_id {
                        return Err(CatalogError::Conflict(format!(
                            "API key {:?} cannot be in usage plan {:?}: it is already in usage plan {:?}, which also contains stage {stage}; a key may have only one plan per stage",
                            pk.key_id, pk.plan_id, other.plan.id
                        )));
                    }
                }
                entry.insert(stage.clone(), sp.clone());
            }
        }

        let mut keys = HashMap::new();
        let mut entries: HashMap<&str, Arc<KeyEntry>> = HashMap::new();
        for k in data.keys.values() {
            let e = Arc::new(KeyEntry {
                key: Arc::new(k.clone()),
                plans_by_stage: by_key.remove(k.id.as_str()).unwrap_or_default(),
                valid_until_ms: None,
            });
            if let Some(other) = keys.insert(k.value_hash, e.clone()) {
                return Err(CatalogError::Conflict(format!(
                    "API keys {:?} and {:?} have the same value; values must be unique",
                    other.key.id, k.id
                )));
            }
            entries.insert(k.id.as_str(), e);
        }
        for (hash, old) in &data.old_values {
            let (Some(e), Some(hash)) = (entries.get(old.key_id.as_str()), KeyHash::from_hex(hash)) else {
                continue;
            };
            keys.entry(hash).or_insert_with(|| {
                Arc::new(KeyEntry {
                    key: e.key.clone(),
                    plans_by_stage: e.plans_by_stage.clone(),
                    valid_until_ms: Some(old.valid_until_ms),
                })
            });
        }
        Ok(Self { data, stages, keys })
    }

    /// The records the catalog was compiled from.
    pub fn data(&self) -> &CatalogData {
        &self.data
    }

    /// A stage by `API/STAGE`.
    pub fn stage(&self, stage: &str) -> Option<&CompiledStage> {
        self.stages.get(stage)
    }

    /// A key by the hash of its value.
    pub fn key_by_hash(&self, hash: &KeyHash) -> Option<&Arc<KeyEntry>> {
        self.keys.get(hash)
    }
}

/// The current catalog snapshot, shared by every request.
#[derive(Clone)]
pub struct CatalogHandle(Arc<ArcSwap<Catalog>>);

impl CatalogHandle {
    /// A handle on `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(catalog)))
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.0.load()
    }

    /// The current snapshot, as an owned `Arc`.
    pub fn load_full(&self) -> Arc<Catalog> {
        self.0.load_full()
    }

    /// Replaces the snapshot.
    pub fn store(&self, catalog: Catalog) {
        self.0.store(Arc::new(catalog));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PlanStage, Stage};

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
        };
        d.plans.insert("p".into(), plan);
        let e = Catalog::compile(d).unwrap_err().to_string();
        assert!(e.contains("usage plan \"p\".throttle.rate_limit"), "{e}");
    }
}
