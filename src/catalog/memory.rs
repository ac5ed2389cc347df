//! The catalog kept in this process (no Redis): the same records and
//! indexes as `redis.rs` keeps in Redis, in maps, so that a transaction and
//! a listing cost the same O(1) / O(log n) here as there. Changes are lost
//! when the process stops (the catalog file is loaded again at start).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::admin::AdminError;
use super::records::{Change, ChangeSet, KeyRecord, Position};
use super::redis::{index_member, tag_member};
use crate::audit::AuditRecord;
use crate::model::{Api, KeyHash, Stage, UsagePlan};

/// The records and their indexes.
#[derive(Debug, Default)]
pub struct MemoryRecords {
    /// APIs by id.
    pub apis: BTreeMap<String, Api>,
    /// Stages by `API/STAGE`.
    pub stages: BTreeMap<String, Stage>,
    /// Plans by id.
    pub plans: BTreeMap<String, UsagePlan>,
    /// Keys by id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Value hash (current or rotated) → key id.
    hashes: HashMap<KeyHash, String>,
    /// `name\0id`.
    names: BTreeSet<String>,
    /// `customer\0id`.
    customers: BTreeSet<String>,
    /// `key\0value\0id`, per tag of each key.
    tags: BTreeSet<String>,
    /// Plan id → its keys.
    plan_keys: HashMap<String, BTreeSet<String>>,
    /// Where the catalog stands.
    pub at: Position,
    /// The audit trail: the last records, with their ids (`MS-SEQ`).
    audit: crate::ring::Ring<AuditRecord>,
}

impl MemoryRecords {
    /// Appends an audit record, keeping the last `max`. Its id is `MS-SEQ`
    /// like a Redis stream's: its time, and a sequence within that ms.
    pub fn append_audit(&mut self, record: AuditRecord, max: usize) {
        self.audit.push(record, max);
    }

    /// Up to `limit` audit records after the one with id `after`, or else
    /// from `since_ms`, oldest first.
    pub fn audit_records(&self, since_ms: u64, after: Option<&str>, limit: usize) -> Vec<AuditRecord> {
        self.audit.page(since_ms, after, limit)
    }

    /// The key ids that own these value hashes.
    pub fn owners(&self, hashes: &[KeyHash]) -> Vec<Option<String>> {
        hashes.iter().map(|h| self.hashes.get(h).cloned()).collect()
    }

    /// Key records by id and by value hash.
    pub fn fetch_keys(&self, ids: &[String], hashes: &[KeyHash]) -> Vec<KeyRecord> {
        let mut all: BTreeSet<&String> = ids.iter().collect();
        all.extend(hashes.iter().filter_map(|h| self.hashes.get(h)));
        all.into_iter().filter_map(|id| self.keys.get(id).cloned()).collect()
    }

    /// The same checks as `RedisRecords::check`, on the maps.
    fn check(&self, set: &ChangeSet) -> Result<bool, AdminError> {
        if set.keys.iter().any(|k| k.before.is_none() && k.after.is_some() && self.keys.contains_key(&k.id)) {
            return Ok(false);
        }
        for k in &set.keys {
            let Some(after) = &k.after else { continue };
            for h in after.hashes() {
                if let Some(o) = self.hashes.get(&h).filter(|o| **o != k.id) {
                    if !set.keys.iter().any(|c| &c.id == o) {
                        return Err(AdminError::AlreadyExists(format!(
                            "that value is already in use by API key {o:?}; values are unique"
                        )));
                    }
                }
            }
        }
        for (plan, stages) in &set.added_stages {
            let Some(mine) = self.plan_keys.get(plan) else { continue };
            for stage in stages {
                for other in self.plans.values().filter(|q| &q.id != plan) {
                    if !other.api_stages.iter().any(|s| &s.stage.to_string() == stage) {
                        continue;
                    }
                    if self.plan_keys.get(&other.id).is_some_and(|theirs| theirs.iter().any(|k| mine.contains(k))) {
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

    /// Applies `set`; `Ok(None)` when a new id is taken (try again).
    pub fn commit(&mut self, set: &ChangeSet) -> Result<Option<Change>, AdminError> {
        if !self.check(set)? {
            return Ok(None);
        }
        fn table<T: Clone>(map: &mut BTreeMap<String, T>, rows: &BTreeMap<String, Option<T>>) {
            for (id, r) in rows {
                match r {
                    Some(r) => map.insert(id.clone(), r.clone()),
                    None => map.remove(id),
                };
            }
        }
        table(&mut self.apis, &set.apis);
        table(&mut self.stages, &set.stages);
        table(&mut self.plans, &set.plans);
        for k in &set.keys {
            if let Some(b) = &k.before {
                self.unindex(b);
            }
            match &k.after {
                Some(a) => {
                    self.index(a);
                    self.keys.insert(k.id.clone(), a.clone());
                }
                None => {
                    self.keys.remove(&k.id);
                }
            }
        }
        let epoch = if self.at.epoch.is_empty() { super::records::random_id() } else { self.at.epoch.clone() };
        let change = Change::of(set, &self.at, &epoch);
        self.at = Position { epoch, version: change.version, id: change.id.clone() };
        Ok(Some(change))
    }

    fn index(&mut self, r: &KeyRecord) {
        let id = &r.key.id;
        for h in r.hashes() {
            self.hashes.insert(h, id.clone());
        }
        self.names.insert(index_member(&r.key.name, id));
        if !r.key.customer_id.is_empty() {
            self.customers.insert(index_member(&r.key.customer_id, id));
        }
        self.tags.extend(r.key.tags.iter().map(|(k, v)| tag_member(k, v, id)));
        for p in &r.plans {
            self.plan_keys.entry(p.clone()).or_default().insert(id.clone());
        }
    }

    fn unindex(&mut self, r: &KeyRecord) {
        let id = &r.key.id;
        for h in r.hashes() {
            if self.hashes.get(&h) == Some(id) {
                self.hashes.remove(&h);
            }
        }
        self.names.remove(&index_member(&r.key.name, id));
        self.customers.remove(&index_member(&r.key.customer_id, id));
        for (k, v) in &r.key.tags {
            self.tags.remove(&tag_member(k, v, id));
        }
        for p in &r.plans {
            if let Some(set) = self.plan_keys.get_mut(p) {
                set.remove(id);
                if set.is_empty() {
                    self.plan_keys.remove(p);
                }
            }
        }
    }

    /// A page of an index: up to `n` members in `[from, to)` after `after`.
    pub fn index_page(
        &self,
        which: &super::redis::Index<'_>,
        from: &str,
        to: Option<&str>,
        after: Option<&str>,
        n: usize,
    ) -> Vec<String> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let lo = match after {
            Some(a) if a >= from => Excluded(a.to_string()),
            _ => Included(from.to_string()),
        };
        let hi = to.map(|t| Excluded(t.to_string())).unwrap_or(Unbounded);
        let empty = BTreeSet::new();
        let set: &BTreeSet<String> = match which {
            super::redis::Index::Ids => {
                return self.keys.range((lo, hi)).take(n).map(|(k, _)| k.clone()).collect();
            }
            super::redis::Index::Names => &self.names,
            super::redis::Index::Customers => &self.customers,
            super::redis::Index::Tags => &self.tags,
            super::redis::Index::Plan(p) => self.plan_keys.get(*p).unwrap_or(&empty),
        };
        set.range((lo, hi)).take(n).cloned().collect()
    }

    /// How many keys a plan has.
    pub fn plan_key_count(&self, plan: &str) -> u64 {
        self.plan_keys.get(plan).map_or(0, |s| s.len() as u64)
    }
}

/// An audit record's id (`MS-SEQ`) as numbers, to order by.
pub use crate::ring::parse_id as parse_audit_id;
