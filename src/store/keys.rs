//! Every storage key tollgate writes, built in one place.
//!
//! Both stores use the same names (the memory store as map keys), so that
//! what the docs say about Redis keys holds for both. Each key carries a
//! Redis Cluster hash tag (`{...}`): everything that one key's plan limits
//! and usage touch shares the tag `{k:KEY_ID}` and so one slot, which lets
//! a single script check SEMANTICS.md step 6 a–c and count usage on a
//! cluster too. Stage and account buckets have tags of their own.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P{k:KEY}:tbm:PLAN:API/STAGE:METHOD` | string `LEVEL:TIME` (`bucket.rs`) | plan per-method throttle of one key |
//! | `P{k:KEY}:tb:PLAN` | string `LEVEL:TIME` (`bucket.rs`) | plan throttle of one key |
//! | `P{k:KEY}:q:PLAN:YYYYMMDD` | string (count) | quota used in the period starting that day |
//! | `P{k:KEY}:u:PLAN:YYYYMMDD` | hash `n` used, `q` quota used after the day's last call | daily usage, kept 92 days |
//! | `P{s:API/STAGE}:tb:METHOD` | string `LEVEL:TIME` (`bucket.rs`) | stage method throttle, all callers |
//! | `P{acct}:tb` | string `LEVEL:TIME` (`bucket.rs`) | account throttle |
//!
//! The catalog (control plane) lives under one hash tag, so that a catalog
//! transaction (WATCH / MULTI / EXEC) touches one slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `P{cat}:head` | hash `epoch`, `version`, `id` | where the catalog stands: its epoch (new when Redis starts empty), the number of changes, the id of the last one |
//! | `P{cat}:changes` | stream, entry `0-VERSION` | the change log: per change its version, id, the previous change's id, and the ids of the records it changed (keys with the value hashes they had before); about 100,000 entries kept |
//! | `P{cat}:apis`, `:stages`, `:plans` | hash id → JSON | the small tables |
//! | `P{cat}:keys` | hash id → JSON | the keys, each with its plans and rotated-out values (value hashes only) |
//! | `P{cat}:hashes` | hash value-hash → key id | every value (current or in its grace period) and its key: unique values, lookups by value |
//! | `P{cat}:key_ids` | sorted set of key ids | listing all keys, in pages |
//! | `P{cat}:key_names`, `:key_customers` | sorted set of `NAME\0ID`, `CUSTOMER\0ID` | listing keys by name prefix or customer, in pages |
//! | `P{cat}:plan_keys:PLAN` | sorted set of key ids | a plan's keys, in pages (usage reports) |
//! | `P{cat}:file_digests` | hash digest → ms | the catalog files applied (SHA-256 of their bytes, hex) and when; the last 100 |
//! | `P{cat}:file_records` | hash record → fingerprint | for each record a catalog file applied (`api:ID`, `stage:API/STAGE`, `plan:ID`, `key:ID`, `sub:PLAN/KEY`), a hash of what the file last applied to it |
//!
//! `P` is the configurable prefix (default `tg:`). `METHOD` is the matched
//! pattern's canonical text (docs/semantics.md, "Canonical method form"), so
//! every spelling of a method counts in one bucket.

use crate::calendar::Date;
use crate::model::StageRef;

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("tg:")
    }
}

impl Keys {
    /// Keys under `prefix` (e.g. `tg:`).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Plan per-method throttle of one key.
    pub fn plan_method_bucket(&self, key_id: &str, plan_id: &str, stage: &StageRef, method: &str) -> String {
        format!("{}{{k:{key_id}}}:tbm:{plan_id}:{stage}:{method}", self.prefix)
    }

    /// Plan throttle of one key.
    pub fn plan_bucket(&self, key_id: &str, plan_id: &str) -> String {
        format!("{}{{k:{key_id}}}:tb:{plan_id}", self.prefix)
    }

    /// Quota base of one key in one plan (the store appends `:YYYYMMDD`).
    pub fn quota_base(&self, key_id: &str, plan_id: &str) -> String {
        format!("{}{{k:{key_id}}}:q:{plan_id}", self.prefix)
    }

    /// Daily usage base of one key in one plan (the store appends `:YYYYMMDD`).
    pub fn usage_base(&self, key_id: &str, plan_id: &str) -> String {
        format!("{}{{k:{key_id}}}:u:{plan_id}", self.prefix)
    }

    /// Stage method throttle.
    pub fn stage_bucket(&self, stage: &StageRef, method: &str) -> String {
        format!("{}{{s:{stage}}}:tb:{method}", self.prefix)
    }

    /// A catalog key (`version`, `apis`, ...) or the change channel (`changes`).
    pub fn catalog(&self, part: &str) -> String {
        format!("{}{{cat}}:{part}", self.prefix)
    }

    /// The digests of the catalog files applied, with when (the catalog
    /// file's bootstrap state, part one).
    pub fn catalog_file_digests(&self) -> String {
        self.catalog("file_digests")
    }

    /// The fingerprint of what a catalog file last applied to each record
    /// (the catalog file's bootstrap state, part two).
    pub fn catalog_file_records(&self) -> String {
        self.catalog("file_records")
    }

    /// Account throttle.
    pub fn account_bucket(&self) -> String {
        format!("{}{{acct}}:tb", self.prefix)
    }
}

/// Appends a date to a base key, as the stores do: `BASE:YYYYMMDD`.
pub fn dated(base: &str, date: Date) -> String {
    format!("{base}:{}", date.compact())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalog's keys are a contract with operators (docs/admin.md tells
    /// them to delete the file state by name): pinned here.
    #[test]
    fn catalog_keys_share_one_hash_tag() {
        let k = Keys::default();
        assert_eq!(k.catalog("version"), "tg:{cat}:version");
        assert_eq!(k.catalog_file_digests(), "tg:{cat}:file_digests");
        assert_eq!(k.catalog_file_records(), "tg:{cat}:file_records");
    }
}
