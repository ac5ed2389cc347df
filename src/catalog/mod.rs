//! The catalog: APIs, stages, usage plans, API keys and subscriptions, and
//! the in-process snapshot that answers every lookup of the hot path without
//! I/O.
//!
//! [`CatalogData`] is the plain list of records, as a source (the YAML file of
//! [`file`], later Redis) gives them. [`Catalog::compile`] checks the
//! references between them (every plan stage exists, every subscription names
//! a known plan and key, a key has at most one plan per stage) and builds the
//! lookup tables: key hash → key and its plan per stage, stage → method
//! settings. A [`CatalogHandle`] holds the current snapshot behind an
//! `ArcSwap`: readers take it without a lock; a change swaps in a new one.

pub mod file;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::{
    Api, ApiKey, Invalid, KeyHash, MethodPattern, MethodSetting, MethodTable, Stage, StageRef,
    Throttle, UsagePlan,
};

/// A subscription: the key may call the plan's stages under the plan's limits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PlanKey {
    /// The usage plan.
    pub plan_id: String,
    /// The API key.
    pub key_id: String,
}

/// Every record of a catalog, as its source gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogData {
    /// APIs.
    pub apis: Vec<Api>,
    /// Stages with their method settings.
    pub stages: Vec<Stage>,
    /// Usage plans.
    pub plans: Vec<UsagePlan>,
    /// API keys (hashes only).
    pub keys: Vec<ApiKey>,
    /// Extra hashes that still open a key until an instant (ms since the
    /// epoch): old values of a rotated key in their grace period.
    pub extra_hashes: Vec<(KeyHash, String, u64)>,
    /// Subscriptions.
    pub plan_keys: Vec<PlanKey>,
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
    pub fn compile(data: CatalogData) -> Result<Self, Invalid> {
        let mut stages = HashMap::new();
        let apis: HashMap<&str, &Api> = data.apis.iter().map(|a| (a.id.as_str(), a)).collect();
        for s in &data.stages {
            if !apis.contains_key(s.stage.api_id.as_str()) {
                return Err(Invalid::new(
                    "stages",
                    format!(
                        "stage {} belongs to unknown API {:?}",
                        s.stage, s.stage.api_id
                    ),
                ));
            }
            let mut methods = Vec::new();
            for (m, setting) in &s.methods {
                let p = MethodPattern::parse(m)
                    .map_err(|e| Invalid::new(format!("stage {}: methods", s.stage), e.0))?;
                methods.push((p, *setting));
            }
            stages.insert(
                s.stage.to_string(),
                CompiledStage {
                    stage: s.stage.clone(),
                    methods: MethodTable::new(methods),
                },
            );
        }

        let mut plans: HashMap<&str, (Arc<UsagePlan>, PlanStages)> =
            HashMap::new();
        for p in &data.plans {
            p.validate()
                .map_err(|e| e.within(&format!("usage plan {:?}", p.id)))?;
            let mut per_stage = BTreeMap::new();
            let plan = Arc::new(p.clone());
            for ps in &p.api_stages {
                if !stages.contains_key(&ps.stage.to_string()) {
                    return Err(Invalid::new(
                        format!("usage plan {:?}: api_stages", p.id),
                        format!("stage {} does not exist", ps.stage),
                    ));
                }
                let mut table = Vec::new();
                for (m, t) in &ps.throttle {
                    let pat = MethodPattern::parse(m)
                        .map_err(|e| Invalid::new(format!("usage plan {:?}", p.id), e.0))?;
                    table.push((pat, *t));
                }
                per_stage.insert(
                    ps.stage.to_string(),
                    Arc::new(StagePlan {
                        plan: plan.clone(),
                        method_throttles: MethodTable::new(table),
                    }),
                );
            }
            if plans.insert(p.id.as_str(), (plan, per_stage)).is_some() {
                return Err(Invalid::new(
                    "usage_plans",
                    format!("usage plan id {:?} is used twice", p.id),
                ));
            }
        }

        let mut by_key: HashMap<&str, HashMap<String, Arc<StagePlan>>> = HashMap::new();
        let key_ids: HashMap<&str, &ApiKey> =
            data.keys.iter().map(|k| (k.id.as_str(), k)).collect();
        for pk in &data.plan_keys {
            let Some((_, per_stage)) = plans.get(pk.plan_id.as_str()) else {
                return Err(Invalid::new(
                    "usage plan keys",
                    format!("usage plan {:?} does not exist", pk.plan_id),
                ));
            };
            if !key_ids.contains_key(pk.key_id.as_str()) {
                return Err(Invalid::new(
                    "usage plan keys",
                    format!("API key {:?} does not exist", pk.key_id),
                ));
            }
            let entry = by_key.entry(pk.key_id.as_str()).or_default();
            for (stage, sp) in per_stage {
                if let Some(other) = entry.get(stage) {
                    if other.plan.id != pk.plan_id {
                        return Err(Invalid::new(
                            "usage plan keys",
                            format!(
                                "API key {:?} cannot be in usage plan {:?}: it is already in usage plan {:?}, which also contains stage {stage}; a key may have only one plan per stage",
                                pk.key_id, pk.plan_id, other.plan.id
                            ),
                        ));
                    }
                }
                entry.insert(stage.clone(), sp.clone());
            }
        }

        let mut keys = HashMap::new();
        let mut entries: HashMap<&str, Arc<KeyEntry>> = HashMap::new();
        for k in &data.keys {
            let e = Arc::new(KeyEntry {
                key: Arc::new(k.clone()),
                plans_by_stage: by_key.remove(k.id.as_str()).unwrap_or_default(),
                valid_until_ms: None,
            });
            if keys.insert(k.value_hash, e.clone()).is_some() {
                return Err(Invalid::new(
                    "api_keys",
                    format!("API key {:?} has the same value as another key", k.name),
                ));
            }
            if entries.insert(k.id.as_str(), e).is_some() {
                return Err(Invalid::new(
                    "api_keys",
                    format!("API key id {:?} is used twice", k.id),
                ));
            }
        }
        for (hash, key_id, until) in &data.extra_hashes {
            if let Some(e) = entries.get(key_id.as_str()) {
                keys.entry(*hash).or_insert_with(|| {
                    Arc::new(KeyEntry {
                        key: e.key.clone(),
                        plans_by_stage: e.plans_by_stage.clone(),
                        valid_until_ms: Some(*until),
                    })
                });
            }
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

    /// Replaces the snapshot.
    pub fn store(&self, catalog: Catalog) {
        self.0.store(Arc::new(catalog));
    }
}
