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
//! | `P{k:KEY}:s:PLAN` | hash (below) | the state of one key in one plan: its throttles, quota and usage |
//! | `P{s:API/STAGE}:tb:METHOD` | string `LEVEL:TIME` (`bucket.rs`) | stage method throttle, all callers |
//! | `P{acct}:tb` | string `LEVEL:TIME` (`bucket.rs`) | account throttle |
//! | `P{k:KEY}:r:NONCE` | string `1` | decision `NONCE` of key `KEY` was refunded (docs/semantics.md, "Refunds"); expires at the end of the refund window; in the slot of the key's state, so the marker and the give-back are one script call on a Redis Cluster |
//!
//! The fields of a state hash (`redis/scripts/state.lua` reads and writes
//! them, each hash once per script call):
//!
//! | field | value | what |
//! |---|---|---|
//! | `b` | `LEVEL:TIME` (`bucket.rs`) | the plan throttle |
//! | `m:API/STAGE:METHOD` | `LEVEL:TIME` | a plan per-method throttle |
//! | `q` | `DAY:USED` | quota used in the period starting on that day (days since 1970-01-01); a value of another period counts as 0 |
//! | `u` | `DAY:N` or `DAY:N:Q` | today's usage (`N` used, `Q` quota used after the day's last change); the first write of a later day moves it to `hYYYYMMDD` |
//! | `hYYYYMMDD` | `N` or `N:Q` | the usage of an earlier day, kept 92 days (days older are removed when a day moves) |
//! | `a` | `DAY:LO:HI` | the quota alerts fired in the period starting on that day: bit `t-1` of `LO` for a threshold `t` of 1–50, bit `t-51` of `HI` for 51–100 (`crate::alerts`) |
//! | `e` | day | the hash expires at the start of that day: set only when it must live longer (a key used daily: about every third day) |
//!
//! Why one hash: a decision of the usual plan (throttle, method throttle,
//! quota, usage) reads and writes one key (2 commands, or 2 for a whole
//! batch of decisions of that key) where it had 4 keys to read and write
//! (about 12 commands per decision); a small hash is stored compactly
//! (listpack); and a script's keys in one slot all exist or all do not,
//! which a Redis Cluster asks of a command with several keys while it
//! migrates their slot.
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
//! | `P{cat}:key_tags` | sorted set of `TAGKEY\0TAGVALUE\0ID`, one per tag of each key | listing keys by tag, in pages |
//! | `P{cat}:plan_keys:PLAN` | sorted set of key ids | a plan's keys, in pages (usage reports) |
//! | `P{cat}:audit` | stream, entry `MS-SEQ` with field `record` (JSON) | the audit trail: one record per Admin change (`crate::audit`), written in the change's transaction; about `--audit-max-records` kept (`MAXLEN ~`) |
//! | `P{cat}:decision_secret` | string (hex) | the secret that signs decision ids, shared by every replica: created once (`SET NX`) by the first replica to start |
//! | `P{cat}:events` | stream, entry `MS-SEQ` with fields `key_id`, `plan_id`, `threshold`, `limit`, `used`, `period_start_ms`, `period_end_ms` | quota alert events (`crate::alerts`): appended by the decision that crossed the threshold (on a cluster, by its replica right after); about `--events-max` kept (`MAXLEN ~`); the webhook's consumer group `tollgate-webhook` reads it |
//! | `P{cat}:file_digests` | hash digest → ms | the catalog files applied (SHA-256 of their bytes, hex) and when; the last 100 |
//! | `P{cat}:file_records` | hash record → fingerprint | for each record a catalog file applied (`api:ID`, `stage:API/STAGE`, `plan:ID`, `key:ID`, `sub:PLAN/KEY`), a hash of what the file last applied to it |
//!
//! `P` is the configurable prefix (default `tg:`). `METHOD` is the matched
//! pattern's canonical text (docs/semantics.md, "Canonical method form"), so
//! every spelling of a method counts in one bucket.

use super::UsageKeys;
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

    /// The state hash of one key in one plan (throttles, quota, today's usage).
    pub fn state(&self, key_id: &str, plan_id: &str) -> String {
        format!("{}{{k:{key_id}}}:s:{plan_id}", self.prefix)
    }

    /// Where one key's usage in one plan is counted.
    pub fn usage(&self, key_id: &str, plan_id: &str) -> UsageKeys {
        UsageKeys { state: self.state(key_id, plan_id), zone: None, alerts: None }
    }

    /// The quota alert events, a capped stream beside the catalog
    /// (`crate::alerts`): appended by the decisions that cross a threshold.
    pub fn events(&self) -> String {
        self.catalog("events")
    }

    /// The marker of one refunded decision (`nonce` in hex) of key `key_id`.
    pub fn refund_marker(&self, key_id: &str, nonce: &str) -> String {
        format!("{}{{k:{key_id}}}:r:{nonce}", self.prefix)
    }

    /// The secret that signs decision ids, beside the catalog.
    pub fn decision_secret(&self) -> String {
        self.catalog("decision_secret")
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

    /// The audit trail, a capped stream beside the catalog (one slot with
    /// it, so a change and its record are one transaction).
    pub fn catalog_audit(&self) -> String {
        self.catalog("audit")
    }

    /// Account throttle.
    pub fn account_bucket(&self) -> String {
        format!("{}{{acct}}:tb", self.prefix)
    }
}

/// The field of a state hash that holds the plan throttle.
pub const PLAN_BUCKET_FIELD: &str = "b";
/// The field of a state hash that holds the quota.
pub const QUOTA_FIELD: &str = "q";
/// The field of a state hash that holds today's usage.
pub const USAGE_FIELD: &str = "u";

/// The field of a state hash that holds a plan per-method throttle.
pub fn method_field(stage: &StageRef, method: &str) -> String {
    format!("m:{stage}:{method}")
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
        assert_eq!(k.catalog_audit(), "tg:{cat}:audit");
        assert_eq!(k.events(), "tg:{cat}:events");
    }

    /// A key's state carries its hash tag (one cluster slot).
    #[test]
    fn a_keys_state_carries_its_hash_tag() {
        let k = Keys::default();
        assert_eq!(k.state("K1", "p"), "tg:{k:K1}:s:p");
        assert_eq!(method_field(&StageRef::parse("a/s").unwrap(), "/x/GET"), "m:a/s:/x/GET");
    }

    /// A refund's marker shares the slot of the key's state (one script
    /// call on a cluster); the signing secret lives beside the catalog.
    #[test]
    fn refund_keys() {
        let k = Keys::default();
        assert_eq!(k.refund_marker("K1", "00ff"), "tg:{k:K1}:r:00ff");
        assert_eq!(k.decision_secret(), "tg:{cat}:decision_secret");
    }
}
