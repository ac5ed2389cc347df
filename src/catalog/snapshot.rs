//! The data plane's view of the catalog: an immutable snapshot that answers
//! every lookup of a decision without I/O and without a lock, compact enough
//! for millions of keys, and cheap to change one record at a time.
//!
//! - **Keys** live in [`SHARDS`] shards by the first 12 bits of their value's
//!   SHA-256 (uniform), each a sorted `Vec` searched by binary search: no
//!   hash-table slack, about 80 bytes per key plus its id. A disabled key is
//!   not in the table at all (it answers like an unknown key); a rotated-out
//!   value in its grace period is an entry of its own, valid until then.
//! - **Plans, stages and APIs** are few (API Gateway allows 300 plans per
//!   account): they are kept whole and compiled, and rebuilt when one changes.
//!
//! A change makes a new snapshot that shares everything it does not touch:
//! changing one key copies one shard (1/4096 of the keys), not the catalog.
//! Builders ([`Builder`]) apply record changes and hand out the new snapshot;
//! readers hold an `Arc` to the old one as long as they need it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::records::{self, KeyRecord};
use super::{CatalogData, CatalogError};
use crate::model::{Api, KeyHash, MethodSetting, MethodTable, Stage, StageRef, Throttle, UsagePlan};

/// Number of key shards (by the first 12 bits of the value hash). A change
/// copies the shards of the keys it touches: at a million keys a shard holds
/// about 250 entries (20 KB), so a change of 500 keys copies about 10 MB
/// rather than the whole table; the root (4,096 pointers) is copied too.
pub const SHARDS: usize = 4096;

/// The plans a key is subscribed to, by id. Almost every key has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PlanIds {
    /// None.
    #[default]
    None,
    /// One plan.
    One(Arc<str>),
    /// Several.
    Many(Box<[Arc<str>]>),
}

impl PlanIds {
    /// The ids.
    pub fn as_slice(&self) -> &[Arc<str>] {
        match self {
            PlanIds::None => &[],
            PlanIds::One(p) => std::slice::from_ref(p),
            PlanIds::Many(ps) => ps,
        }
    }

    /// From a list.
    pub fn from_vec(mut v: Vec<Arc<str>>) -> Self {
        match v.len() {
            0 => PlanIds::None,
            1 => PlanIds::One(v.pop().expect("one")),
            _ => PlanIds::Many(v.into_boxed_slice()),
        }
    }
}

/// A key value as the data plane knows it: which key it opens, until when,
/// and the key's plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key's id.
    pub id: Box<str>,
    /// The value opens the key before this instant (ms since the epoch): the
    /// key's expiry, or for a rotated-out value the end of its grace period;
    /// `u64::MAX` for never.
    pub until_ms: u64,
    /// The key's plans.
    pub plans: PlanIds,
}

impl KeyEntry {
    /// Whether the value opens the key at `now_ms`.
    pub fn usable_at(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }
}

/// One shard of the key table: entries sorted by hash.
#[derive(Debug, Clone, Default)]
pub struct Shard(Vec<(KeyHash, KeyEntry)>);

impl Shard {
    fn find(&self, h: &KeyHash) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(h))
    }

    fn get(&self, h: &KeyHash) -> Option<&KeyEntry> {
        self.find(h).ok().map(|i| &self.0[i].1)
    }
}

fn shard_of(h: &KeyHash) -> usize {
    ((h.0[0] as usize) << 4) | (h.0[1] as usize >> 4)
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

/// A plan compiled for lookups: its stages.
#[derive(Debug)]
pub struct CompiledPlan {
    /// Per stage (`API/STAGE`).
    pub stages: HashMap<String, Arc<StagePlan>>,
}

/// The small tables, compiled together: APIs, stages, plans.
#[derive(Debug, Default)]
pub struct Small {
    /// APIs by id.
    pub apis: BTreeMap<String, Api>,
    /// Stage records by `API/STAGE`.
    pub stage_records: BTreeMap<String, Stage>,
    /// Plan records by id.
    pub plan_records: BTreeMap<String, UsagePlan>,
    stages: HashMap<String, Arc<CompiledStage>>,
    plans: HashMap<Arc<str>, Arc<CompiledPlan>>,
}

impl Small {
    /// Compiles the small tables, checking what each record refers to.
    pub fn compile(
        apis: BTreeMap<String, Api>,
        stage_records: BTreeMap<String, Stage>,
        plan_records: BTreeMap<String, UsagePlan>,
    ) -> Result<Self, crate::model::Invalid> {
        use crate::model::Invalid;
        let mut stages = HashMap::new();
        for s in stage_records.values() {
            if !apis.contains_key(s.stage.api_id.as_str()) {
                let msg = format!("stage {} belongs to unknown API {:?}", s.stage, s.stage.api_id);
                return Err(Invalid::new("stages", msg));
            }
            let methods = MethodTable::parse(s.methods.iter().map(|(m, setting)| (m, *setting)))
                .map_err(|e| Invalid::new(format!("stage {}: methods", s.stage), e.message))?;
            for (m, setting) in &s.methods {
                if let Some(t) = &setting.throttle {
                    t.validate().map_err(|e| e.within(&format!("stage {}: methods[{m}].throttle", s.stage)))?;
                }
            }
            let compiled = CompiledStage { stage: s.stage.clone(), methods };
            stages.insert(s.stage.to_string(), Arc::new(compiled));
        }
        let mut plans = HashMap::new();
        for p in plan_records.values() {
            p.validate().map_err(|e| e.within(&format!("usage plan {:?}", p.id)))?;
            let plan = Arc::new(p.clone());
            let mut per_stage = HashMap::new();
            for ps in &p.api_stages {
                let name = ps.stage.to_string();
                if !stages.contains_key(&name) {
                    let field = format!("usage plan {:?}: api_stages", p.id);
                    return Err(Invalid::new(field, format!("stage {} does not exist", ps.stage)));
                }
                let method_throttles = MethodTable::parse(ps.throttle.iter().map(|(m, t)| (m, *t))).map_err(|e| {
                    Invalid::new(format!("usage plan {:?}: stage {}: throttle", p.id, ps.stage), e.message)
                })?;
                let sp = StagePlan { plan: plan.clone(), method_throttles };
                per_stage.insert(name, Arc::new(sp));
            }
            plans.insert(Arc::from(p.id.as_str()), Arc::new(CompiledPlan { stages: per_stage }));
        }
        Ok(Self { apis, stage_records, plan_records, stages, plans })
    }

    /// The plans that contain `stage`.
    pub fn plans_with_stage<'a>(&'a self, stage: &'a str) -> impl Iterator<Item = &'a UsagePlan> + 'a {
        self.plan_records.values().filter(move |p| p.api_stages.iter().any(|s| s.stage.to_string() == stage))
    }
}

/// An immutable snapshot of the catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    small: Arc<Small>,
    shards: Arc<[Arc<Shard>]>,
    keys: usize,
}

impl Default for Catalog {
    fn default() -> Self {
        Self { small: Arc::default(), shards: (0..SHARDS).map(|_| Arc::default()).collect(), keys: 0 }
    }
}

impl Catalog {
    /// A stage by `API/STAGE`.
    pub fn stage(&self, stage: &str) -> Option<&CompiledStage> {
        self.small.stages.get(stage).map(|s| &**s)
    }

    /// The entry a value hash opens.
    pub fn key_by_hash(&self, hash: &KeyHash) -> Option<&KeyEntry> {
        self.shards[shard_of(hash)].get(hash)
    }

    /// The one plan of `entry` that contains `stage` (a key has at most one).
    pub fn plan_for(&self, entry: &KeyEntry, stage: &str) -> Option<&Arc<StagePlan>> {
        entry.plans.as_slice().iter().find_map(|p| self.small.plans.get(p).and_then(|cp| cp.stages.get(stage)))
    }

    /// Plan `plan_id` as it applies to `stage`, if it exists and has it.
    pub fn plan_in_stage(&self, plan_id: &str, stage: &str) -> Option<&Arc<StagePlan>> {
        self.small.plans.get(plan_id).and_then(|cp| cp.stages.get(stage))
    }

    /// The small tables (APIs, stages, plans).
    pub fn small(&self) -> &Small {
        &self.small
    }

    /// How many entries the key table holds (current and rotated-out values).
    pub fn key_entries(&self) -> usize {
        self.keys
    }

    /// A builder that starts from this snapshot.
    pub fn edit(&self) -> Builder {
        Builder { base: self.clone(), small: None, compiled: None }
    }

    /// Checks a whole catalog (every reference, one plan per stage per key,
    /// unique values) and builds its snapshot.
    pub fn compile(data: CatalogData) -> Result<Self, CatalogError> {
        records::check_partial(&data)?;
        let idx = records::index(&data);
        let small = Small::compile(data.apis.clone(), data.stages.clone(), data.plans.clone())?;
        let mut entries = Vec::with_capacity(data.keys.len());
        for id in data.keys.keys() {
            if let Some(rec) = records::key_record(&data, id, &idx) {
                entries.extend(entries_of(&KeyLean::of(&rec), &small));
            }
        }
        Ok(bulk(small, entries))
    }
}

/// What the data plane needs of a key record; read from stored JSON without
/// the fields it does not need (a full load parses a million of these).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct KeyLean<'a> {
    /// The key's id.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// Disabled keys get no entry.
    pub enabled: bool,
    /// The current value's hash.
    pub value_hash: KeyHash,
    /// Expiry, ms since the epoch.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Plan ids.
    #[serde(default, borrow)]
    pub plans: Vec<std::borrow::Cow<'a, str>>,
    /// Rotated-out values.
    #[serde(default)]
    pub rotated: Vec<records::Rotated>,
}

impl<'a> KeyLean<'a> {
    /// The lean view of a whole record.
    pub fn of(rec: &'a KeyRecord) -> Self {
        Self {
            id: rec.key.id.as_str().into(),
            enabled: rec.key.enabled,
            value_hash: rec.key.value_hash,
            expires_at_ms: rec.key.expires_at_ms,
            plans: rec.plans.iter().map(|p| p.as_str().into()).collect(),
            rotated: rec.rotated.clone(),
        }
    }
}

/// The entries a key record puts into the key table: its current value
/// (unless disabled) and its rotated-out values still in their grace period.
/// Plan ids share the small tables' strings where the plan exists.
pub fn entries_of(key: &KeyLean<'_>, small: &Small) -> Vec<(KeyHash, KeyEntry)> {
    if !key.enabled {
        return Vec::new();
    }
    let plans = PlanIds::from_vec(
        key.plans
            .iter()
            .map(|p| small.plans.get_key_value(&**p).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(&**p)))
            .collect(),
    );
    let until_ms = key.expires_at_ms.unwrap_or(u64::MAX);
    let id: &str = &key.id;
    let mut out = Vec::with_capacity(1 + key.rotated.len());
    out.push((key.value_hash, KeyEntry { id: id.into(), until_ms, plans: plans.clone() }));
    for old in &key.rotated {
        let until_ms = old.valid_until_ms.min(until_ms);
        out.push((old.hash, KeyEntry { id: id.into(), until_ms, plans: plans.clone() }));
    }
    out
}

/// Makes a new snapshot from an old one, one change at a time.
pub struct Builder {
    base: Catalog,
    small: Option<SmallRecords>,
    compiled: Option<Arc<Small>>,
}

/// The small tables' records: APIs, stages, plans.
type SmallRecords = (BTreeMap<String, Api>, BTreeMap<String, Stage>, BTreeMap<String, UsagePlan>);

impl Builder {
    /// Removes the entry of `hash`, if it belongs to key `id`.
    pub fn remove(&mut self, hash: &KeyHash, id: &str) {
        let shards = Arc::make_mut(&mut self.base.shards);
        let shard = &mut shards[shard_of(hash)];
        if let Ok(i) = shard.find(hash) {
            if &*shard.0[i].1.id == id {
                Arc::make_mut(shard).0.remove(i);
                self.base.keys -= 1;
            }
        }
    }

    /// Puts an entry (replacing one of the same hash).
    pub fn insert(&mut self, hash: KeyHash, entry: KeyEntry) {
        let shards = Arc::make_mut(&mut self.base.shards);
        let shard = Arc::make_mut(&mut shards[shard_of(&hash)]);
        match shard.find(&hash) {
            Ok(i) => shard.0[i].1 = entry,
            Err(i) => {
                shard.0.insert(i, (hash, entry));
                self.base.keys += 1;
            }
        }
    }

    fn small_mut(&mut self) -> &mut SmallRecords {
        self.compiled = None;
        let s = &self.base.small;
        self.small.get_or_insert_with(|| (s.apis.clone(), s.stage_records.clone(), s.plan_records.clone()))
    }

    /// Sets (or with `None` removes) an API.
    pub fn api(&mut self, id: &str, api: Option<Api>) {
        let apis = &mut self.small_mut().0;
        match api {
            Some(a) => apis.insert(id.to_string(), a),
            None => apis.remove(id),
        };
    }

    /// Sets (or removes) a stage.
    pub fn stage(&mut self, id: &str, stage: Option<Stage>) {
        let stages = &mut self.small_mut().1;
        match stage {
            Some(s) => stages.insert(id.to_string(), s),
            None => stages.remove(id),
        };
    }

    /// Sets (or removes) a plan.
    pub fn plan(&mut self, id: &str, plan: Option<UsagePlan>) {
        let plans = &mut self.small_mut().2;
        match plan {
            Some(p) => plans.insert(id.to_string(), p),
            None => plans.remove(id),
        };
    }

    /// The small tables as they will be (compiled once), for building key
    /// entries that share their plan ids.
    pub fn small_preview(&mut self) -> Result<Arc<Small>, crate::model::Invalid> {
        if let Some(c) = &self.compiled {
            return Ok(c.clone());
        }
        let compiled = match &self.small {
            None => self.base.small.clone(),
            Some((a, s, p)) => Arc::new(Small::compile(a.clone(), s.clone(), p.clone())?),
        };
        self.compiled = Some(compiled.clone());
        Ok(compiled)
    }

    /// The new snapshot; fails when the small tables do not compile.
    pub fn build(mut self) -> Result<Catalog, crate::model::Invalid> {
        if self.small.is_some() {
            self.base.small = self.small_preview()?;
        }
        Ok(self.base)
    }
}

/// Builds a key table at once from many entries (a full load): sorts each
/// shard once instead of inserting one by one. A hash given twice keeps the
/// last entry.
pub fn bulk(small: Small, entries: impl IntoIterator<Item = (KeyHash, KeyEntry)>) -> Catalog {
    let mut shards: Vec<Vec<(KeyHash, KeyEntry)>> = (0..SHARDS).map(|_| Vec::new()).collect();
    for (h, e) in entries {
        shards[shard_of(&h)].push((h, e));
    }
    let mut keys = 0;
    let shards: Arc<[Arc<Shard>]> = shards
        .into_iter()
        .map(|mut v| {
            // Stable sort, then keep the last of equal hashes.
            v.sort_by_key(|e| e.0);
            let mut out: Vec<(KeyHash, KeyEntry)> = Vec::with_capacity(v.len());
            for item in v {
                match out.last_mut() {
                    Some(last) if last.0 == item.0 => *last = item,
                    _ => out.push(item),
                }
            }
            out.shrink_to_fit();
            keys += out.len();
            Arc::new(Shard(out))
        })
        .collect();
    Catalog { small: Arc::new(small), shards, keys }
}
