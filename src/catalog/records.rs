//! Catalog records as the stores keep them, and the changes between them.
//!
//! A transaction (`store.rs`) works on a *partial* [`CatalogData`]: all the
//! small tables (APIs, stages, plans: few) and only the keys it asked for
//! ([`Want`]: by id and by value hash), with their subscriptions and rotated
//! values. The control-plane operations (`admin.rs`) are pure functions on
//! it; [`ChangeSet::diff`] turns the before/after pair into the records to
//! write, and [`check_partial`] checks the rules that span records as far as
//! the loaded records go (the store checks the rest against its indexes:
//! unique values, new ids, a stage added to a plan whose keys have another
//! plan with that stage).
//!
//! A key is stored as one [`KeyRecord`]: the key, its plans and its rotated
//! values, so that a change to any of them is one record to write and, for
//! every replica, one record to read again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{CatalogData, CatalogError, OldValue, PlanKey};
use crate::model::{Api, ApiKey, Invalid, KeyHash, Stage, UsagePlan};

/// A rotated-out value of a key, still accepted until `valid_until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    /// The old value's hash.
    pub hash: KeyHash,
    /// Until when it opens the key (ms since the epoch, exclusive).
    pub valid_until_ms: u64,
}

/// A key as the stores keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The plans it is subscribed to, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<String>,
    /// Its rotated-out values in their grace period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotated: Vec<Rotated>,
}

impl KeyRecord {
    /// Every value hash that opens (or opened, within its grace) this key.
    pub fn hashes(&self) -> impl Iterator<Item = KeyHash> + '_ {
        std::iter::once(self.key.value_hash).chain(self.rotated.iter().map(|r| r.hash))
    }
}

/// The keys a transaction needs, beyond the small tables.
#[derive(Debug, Clone, Default)]
pub struct Want {
    /// Keys by id.
    pub ids: Vec<String>,
    /// Keys by one of their values' hashes (current or rotated).
    pub hashes: Vec<KeyHash>,
}

impl Want {
    /// Only the small tables.
    pub fn nothing() -> Self {
        Self::default()
    }

    /// One key by id.
    pub fn key(id: &str) -> Self {
        Self { ids: vec![id.to_string()], hashes: Vec::new() }
    }

    /// Also the key that has this value, if any.
    pub fn and_hash(mut self, h: KeyHash) -> Self {
        self.hashes.push(h);
        self
    }
}

/// Puts key records into a partial catalog.
pub fn add_keys(d: &mut CatalogData, records: impl IntoIterator<Item = KeyRecord>) {
    for r in records {
        for p in &r.plans {
            d.plan_keys.insert(PlanKey { plan_id: p.clone(), key_id: r.key.id.clone() });
        }
        for old in &r.rotated {
            d.old_values
                .insert(old.hash.to_hex(), OldValue { key_id: r.key.id.clone(), valid_until_ms: old.valid_until_ms });
        }
        d.keys.insert(r.key.id.clone(), r.key);
    }
}

/// The record of key `id` in a partial catalog: the key with its plans and
/// rotated values.
pub fn key_record(d: &CatalogData, id: &str, by_key: &Index) -> Option<KeyRecord> {
    let key = d.keys.get(id)?.clone();
    let (plans, rotated) = by_key.get(id).cloned().unwrap_or_default();
    Some(KeyRecord { key, plans, rotated })
}

/// Per key id: its plans and rotated values, from a partial catalog's sets.
pub type Index = HashMap<String, (Vec<String>, Vec<Rotated>)>;

/// Builds the per-key [`Index`] of a partial catalog.
pub fn index(d: &CatalogData) -> Index {
    let mut out: Index = HashMap::new();
    for pk in &d.plan_keys {
        out.entry(pk.key_id.clone()).or_default().0.push(pk.plan_id.clone());
    }
    for (h, old) in &d.old_values {
        if let Some(hash) = KeyHash::from_hex(h) {
            out.entry(old.key_id.clone()).or_default().1.push(Rotated { hash, valid_until_ms: old.valid_until_ms });
        }
    }
    for (plans, rotated) in out.values_mut() {
        plans.sort();
        rotated.sort_by_key(|r| r.hash);
    }
    out
}

/// One key's change: what it was and what it becomes (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The key's id.
    pub id: String,
    /// Before (as loaded); `None` for a key the transaction creates.
    pub before: Option<KeyRecord>,
    /// After; `None` for a deleted key.
    pub after: Option<KeyRecord>,
}

/// The records a transaction changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    /// APIs set (`Some`) or deleted.
    pub apis: BTreeMap<String, Option<Api>>,
    /// Stages set or deleted.
    pub stages: BTreeMap<String, Option<Stage>>,
    /// Plans set or deleted.
    pub plans: BTreeMap<String, Option<UsagePlan>>,
    /// Keys changed.
    pub keys: Vec<KeyChange>,
    /// For each plan whose stages grew: the stages added (the store checks
    /// that no key of the plan has another plan with one of them).
    pub added_stages: BTreeMap<String, Vec<String>>,
    /// Keys whose remaining quota UpdateUsage set (no record changes): the
    /// log entry tells every replica, whose deny cache then forgets what it
    /// learned (`limiter::deny`).
    pub usage: Vec<String>,
}

impl ChangeSet {
    /// What turns `before` into `after` (both partial, with the same keys
    /// loaded; a key only in `after` is new).
    pub fn diff(before: &CatalogData, after: &CatalogData) -> ChangeSet {
        fn table<T: Clone + PartialEq>(
            old: &BTreeMap<String, T>,
            new: &BTreeMap<String, T>,
        ) -> BTreeMap<String, Option<T>> {
            let mut out = BTreeMap::new();
            for (id, rec) in new {
                if old.get(id) != Some(rec) {
                    out.insert(id.clone(), Some(rec.clone()));
                }
            }
            for id in old.keys().filter(|id| !new.contains_key(*id)) {
                out.insert(id.clone(), None);
            }
            out
        }
        let (ib, ia) = (index(before), index(after));
        let ids: BTreeSet<&String> = before.keys.keys().chain(after.keys.keys()).collect();
        let keys = ids
            .into_iter()
            .filter_map(|id| {
                let (b, a) = (key_record(before, id, &ib), key_record(after, id, &ia));
                (b != a).then(|| KeyChange { id: id.clone(), before: b, after: a })
            })
            .collect();
        let mut added_stages = BTreeMap::new();
        for (id, plan) in &after.plans {
            let old: BTreeSet<String> = before
                .plans
                .get(id)
                .map(|p| p.api_stages.iter().map(|s| s.stage.to_string()).collect())
                .unwrap_or_default();
            let added: Vec<String> =
                plan.api_stages.iter().map(|s| s.stage.to_string()).filter(|s| !old.contains(s)).collect();
            if !added.is_empty() && before.plans.contains_key(id) {
                added_stages.insert(id.clone(), added);
            }
        }
        ChangeSet {
            apis: table(&before.apis, &after.apis),
            stages: table(&before.stages, &after.stages),
            plans: table(&before.plans, &after.plans),
            keys,
            added_stages,
            usage: Vec::new(),
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.apis.is_empty()
            && self.stages.is_empty()
            && self.plans.is_empty()
            && self.keys.is_empty()
            && self.usage.is_empty()
    }
}

/// Checks the rules that span records, over the records loaded: every plan
/// stage exists, every subscription names a known plan, a loaded key has at
/// most one plan per stage, and loaded keys have distinct values. The small
/// tables are always whole, so what is checked about them is complete.
pub fn check_partial(d: &CatalogData) -> Result<(), CatalogError> {
    super::snapshot::Small::compile(d.apis.clone(), d.stages.clone(), d.plans.clone())?;
    // Subscriptions by key (they are ordered by plan): only a key with two
    // plans or more can break the one-plan-per-stage rule. No allocation per
    // key, so a million-key file is checked in a second.
    let mut by_key: Vec<(&str, &str)> = Vec::with_capacity(d.plan_keys.len());
    for pk in &d.plan_keys {
        if !d.plans.contains_key(&pk.plan_id) {
            let msg = format!("usage plan {:?} does not exist", pk.plan_id);
            return Err(Invalid::new("usage plan keys", msg).into());
        }
        if !d.keys.contains_key(&pk.key_id) {
            let msg = format!("API key {:?} does not exist", pk.key_id);
            return Err(Invalid::new("usage plan keys", msg).into());
        }
        by_key.push((pk.key_id.as_str(), pk.plan_id.as_str()));
    }
    by_key.sort_unstable();
    for group in by_key.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for &(key, plan_id) in group {
            for s in &d.plans[plan_id].api_stages {
                let stage = s.stage.to_string();
                if let Some(other) = seen.get(&stage) {
                    return Err(CatalogError::Conflict(format!(
                        "API key {key:?} cannot be in usage plan {plan_id:?}: it is already in usage plan {other:?}, which also contains stage {stage}; a key may have only one plan per stage"
                    )));
                }
                seen.insert(stage, plan_id);
            }
        }
    }
    let mut values: HashMap<KeyHash, &str> = HashMap::new();
    for k in d.keys.values() {
        if let Some(other) = values.insert(k.value_hash, k.id.as_str()) {
            return Err(CatalogError::Conflict(format!(
                "API keys {other:?} and {:?} have the same value; values must be unique",
                k.id
            )));
        }
    }
    Ok(())
}

/// Where a catalog stands: which catalog (`epoch`, new when Redis starts
/// empty), how many changes it has seen (`version`), and the random id of
/// the last one, which the next change names as its `prev`: a restored
/// Redis, whose history differs from what a replica saw, breaks that chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The catalog's identity; empty before its first change.
    pub epoch: String,
    /// Changes so far.
    pub version: u64,
    /// The last change's id; empty before the first change.
    pub id: String,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            if self.epoch.is_empty() { "-" } else { &self.epoch[..self.epoch.len().min(8)] },
            self.version
        )
    }
}

/// A random id for an epoch or a change.
pub fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// One entry of the change log: which records changed at `version`. Keys
/// carry the value hashes they had before, so that a replica can drop them
/// without an index from id to hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The version this change made.
    pub version: u64,
    /// Its id.
    pub id: String,
    /// The id of the change before it.
    pub prev: String,
    /// The epoch.
    pub epoch: String,
    /// Keys changed, with the hashes they had before.
    pub keys: Vec<(String, Vec<KeyHash>)>,
    /// Plans changed.
    pub plans: Vec<String>,
    /// Stages changed.
    pub stages: Vec<String>,
    /// APIs changed.
    pub apis: Vec<String>,
    /// Keys whose usage UpdateUsage set (field `u`; a replica that does not
    /// know the field applies the entry as one that changes nothing).
    pub usage: Vec<String>,
}

impl Change {
    /// The log entry's fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let keys = self
            .keys
            .iter()
            .map(|(id, hs)| format!("{id}={}", hs.iter().map(|h| h.to_hex()).collect::<Vec<_>>().join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        vec![
            ("v", self.version.to_string()),
            ("id", self.id.clone()),
            ("prev", self.prev.clone()),
            ("epoch", self.epoch.clone()),
            ("k", keys),
            ("p", self.plans.join(" ")),
            ("s", self.stages.join(" ")),
            ("a", self.apis.join(" ")),
            ("u", self.usage.join(" ")),
        ]
    }

    /// Reads a log entry's fields back.
    pub fn parse(fields: &HashMap<String, String>) -> Result<Self, String> {
        let get = |f: &str| fields.get(f).map(String::as_str).unwrap_or("");
        let words = |f: &str| get(f).split(' ').filter(|w| !w.is_empty()).map(str::to_string).collect::<Vec<_>>();
        let version = get("v").parse().map_err(|_| format!("change without a version: {fields:?}"))?;
        let mut keys = Vec::new();
        for item in get("k").split(' ').filter(|w| !w.is_empty()) {
            let (id, hs) = item.split_once('=').ok_or_else(|| format!("malformed key change {item:?}"))?;
            let hashes = hs
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| KeyHash::from_hex(h).ok_or_else(|| format!("malformed hash in key change {id:?}")))
                .collect::<Result<_, _>>()?;
            keys.push((id.to_string(), hashes));
        }
        Ok(Change {
            version,
            id: get("id").to_string(),
            prev: get("prev").to_string(),
            epoch: get("epoch").to_string(),
            keys,
            plans: words("p"),
            stages: words("s"),
            apis: words("a"),
            usage: words("u"),
        })
    }

    /// The change that `set` makes at `version` after `at`.
    pub fn of(set: &ChangeSet, at: &Position, epoch: &str) -> Self {
        Change {
            version: at.version + 1,
            id: random_id(),
            prev: at.id.clone(),
            epoch: epoch.to_string(),
            keys: set
                .keys
                .iter()
                .map(|k| (k.id.clone(), k.before.as_ref().map(|b| b.hashes().collect()).unwrap_or_default()))
                .collect(),
            plans: set.plans.keys().cloned().collect(),
            stages: set.stages.keys().cloned().collect(),
            apis: set.apis.keys().cloned().collect(),
            usage: set.usage.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, value: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: format!("name of {id}"),
            description: String::new(),
            enabled: true,
            customer_id: String::new(),
            value_hash: KeyHash::of(value),
            value_hint: String::new(),
            created_at_ms: 1,
            updated_at_ms: 1,
            expires_at_ms: None,
            tags: Default::default(),
        }
    }

    #[test]
    fn key_records_round_trip_through_json_and_partials() {
        let rec = KeyRecord {
            key: key("k1", "v1"),
            plans: vec!["a".into(), "b".into()],
            rotated: vec![Rotated { hash: KeyHash::of("old"), valid_until_ms: 9 }],
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains("\"value_hash\":\"") && json.contains("\"plans\":[\"a\",\"b\"]"), "{json}");
        assert_eq!(serde_json::from_str::<KeyRecord>(&json).unwrap(), rec);
        let bare = serde_json::to_string(&KeyRecord { key: key("k2", "v2"), plans: vec![], rotated: vec![] }).unwrap();
        assert!(!bare.contains("plans") && !bare.contains("rotated"), "{bare}");

        let mut d = CatalogData::default();
        add_keys(&mut d, [rec.clone()]);
        assert_eq!(key_record(&d, "k1", &index(&d)), Some(rec));
    }

    #[test]
    fn diffs_name_what_changed_with_the_hashes_before() {
        let mut before = CatalogData::default();
        add_keys(&mut before, [KeyRecord { key: key("k1", "v1"), plans: vec![], rotated: vec![] }]);
        let mut after = before.clone();
        after.keys.get_mut("k1").unwrap().value_hash = KeyHash::of("v2");
        after.old_values.insert(KeyHash::of("v1").to_hex(), OldValue { key_id: "k1".into(), valid_until_ms: 5 });
        after.keys.insert("k2".into(), key("k2", "v3"));
        let set = ChangeSet::diff(&before, &after);
        assert_eq!(set.keys.len(), 2);
        assert!(set.keys[1].before.is_none());
        let at = Position { epoch: "e".into(), version: 7, id: "x".into() };
        let change = Change::of(&set, &at, "e");
        assert_eq!((change.version, change.prev.as_str()), (8, "x"));
        assert_eq!(change.keys[0], ("k1".to_string(), vec![KeyHash::of("v1")]));
        let fields: HashMap<String, String> = change.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(Change::parse(&fields).unwrap(), change);
        assert!(ChangeSet::diff(&after, &after).is_empty());
    }
}
