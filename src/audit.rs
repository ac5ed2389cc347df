//! The audit trail: one [`AuditRecord`] per Admin change — when, which
//! token (by name), from which peer, which operation, the ids of the records
//! it changed, and the before and after of each changed field. Never a key
//! value, a value's hash, or an admin token.
//!
//! How a record is made: the Admin entry points (the gRPC gate and the HTTP
//! middleware, `api::access`) run each call inside [`scope`] with its
//! [`Caller`]; every catalog transaction committed inside that scope
//! (`catalog::store::CatalogService::update`) turns its before/after records
//! into a record ([`record`]) and writes it **in the same transaction** as
//! the change: with Redis, an `XADD` to the capped stream `{cat}:audit` in
//! the change's `MULTI`/`EXEC` (one slot with the catalog, also on a
//! cluster); in memory, a capped ring beside the records. An operation done
//! in several transactions (a large import, a plan's deletion) leaves one
//! record per transaction. `UpdateUsage` changes the limit store, not the
//! catalog: its record is appended after the store answered. Each record is
//! also logged at info with target `audit`.
//!
//! Records are read back oldest first (`ListAuditRecords`, `GET /v1/audit`,
//! `tollgate audit list`), by id: the stream's id (`MS-SEQ`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::records::{ChangeSet, KeyRecord};
use crate::catalog::CatalogData;

/// Default of `--audit-max-records`: about how many records are kept.
pub const DEFAULT_MAX_RECORDS: usize = 100_000;

/// Who is calling: set by the Admin entry points for the length of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (never the token).
    pub token: String,
    /// The peer's address (`IP`), or `in-process`.
    pub peer: String,
    /// The operation (`DeleteApiKey`: the gRPC method's name).
    pub operation: &'static str,
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `f` as a call of `caller`: the catalog changes it commits are
/// audited under that caller.
pub async fn scope<F: std::future::Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// The caller of the call running now, if it is an Admin call.
pub fn current() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

/// One changed field of one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The record: `key:ID`, `plan:ID`, `stage:API/STAGE`, `api:ID`,
    /// `usage:PLAN/KEY`.
    pub record: String,
    /// The field (a top-level field of the record as stored).
    pub field: String,
    /// Its value before; absent for a record created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// Its value after; absent for a record deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// One Admin change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The record's id (`MS-SEQ`, the stream's); set when read back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// When the change was committed (ms since the epoch): read back from
    /// Redis, the stream entry's time (Redis's clock, which `since` selects
    /// by); in memory and in the log, the replica's clock.
    pub time_ms: u64,
    /// The name of the token that made it.
    pub token: String,
    /// The caller's address.
    pub peer: String,
    /// The Admin operation (`CreateApiKey`, ...).
    pub operation: String,
    /// The records changed (`key:ID`, ...), in order.
    pub ids: Vec<String>,
    /// What changed in them, field by field.
    pub changes: Vec<FieldChange>,
}

impl crate::ring::Stamped for AuditRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
    fn time_ms(&self) -> u64 {
        self.time_ms
    }
}

impl AuditRecord {
    /// An empty record of `caller` at `now_ms`.
    pub fn of(caller: &Caller, now_ms: u64) -> Self {
        Self {
            id: String::new(),
            time_ms: now_ms,
            token: caller.token.clone(),
            peer: caller.peer.clone(),
            operation: caller.operation.to_string(),
            ids: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// The record as stored (JSON, without its id).
    pub fn to_json(&self) -> String {
        let mut r = self.clone();
        r.id.clear();
        serde_json::to_string(&r).unwrap_or_default()
    }

    /// Logs the record (target `audit`, info).
    pub fn log(&self) {
        let changes = serde_json::to_string(&self.changes).unwrap_or_default();
        tracing::info!(
            target: "audit",
            token = %self.token,
            peer = %self.peer,
            operation = %self.operation,
            ids = %self.ids.join(","),
            %changes,
            "admin change"
        );
    }

    /// Adds the field changes of record `id` between `before` and `after`.
    pub fn add(&mut self, id: String, before: Option<Value>, after: Option<Value>) {
        // A null field reads as an absent one (as it does once stored).
        let obj = |v: Option<Value>| -> serde_json::Map<String, Value> {
            let m = match v {
                Some(Value::Object(m)) => m,
                Some(other) => [("value".to_string(), other)].into_iter().collect(),
                None => serde_json::Map::new(),
            };
            m.into_iter().filter(|(_, v)| !v.is_null()).collect()
        };
        let (b, a) = (obj(before), obj(after));
        let mut fields: Vec<&String> = b.keys().chain(a.keys()).collect();
        fields.sort();
        fields.dedup();
        for f in fields {
            let (bv, av) = (b.get(f), a.get(f));
            if bv != av {
                self.changes.push(FieldChange {
                    record: id.clone(),
                    field: f.clone(),
                    before: bv.cloned(),
                    after: av.cloned(),
                });
            }
        }
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }
}

/// A key record as the audit trail shows it: its value hash left out, its
/// rotated-out values as the instants they stop working.
fn key_json(r: &KeyRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("value_hash");
        if let Some(Value::Array(rotated)) = m.remove("rotated") {
            let until: Vec<Value> = rotated.iter().filter_map(|o| o.get("valid_until_ms").cloned()).collect();
            m.insert("rotated_valid_until_ms".into(), Value::Array(until));
        }
    }
    v
}

fn json<T: Serialize>(v: Option<&T>) -> Option<Value> {
    v.and_then(|v| serde_json::to_value(v).ok())
}

/// The record of a catalog change made by `caller`: `set` is what turns
/// `before` into `after` (the transaction's partial catalogs).
pub fn record(caller: &Caller, before: &CatalogData, set: &ChangeSet, now_ms: u64) -> AuditRecord {
    let mut r = AuditRecord::of(caller, now_ms);
    fn table<T: Serialize>(
        r: &mut AuditRecord,
        kind: &str,
        before: &BTreeMap<String, T>,
        after: &BTreeMap<String, Option<T>>,
    ) {
        for (id, a) in after {
            r.add(format!("{kind}:{id}"), json(before.get(id)), json(a.as_ref()));
        }
    }
    table(&mut r, "api", &before.apis, &set.apis);
    table(&mut r, "stage", &before.stages, &set.stages);
    table(&mut r, "plan", &before.plans, &set.plans);
    for k in &set.keys {
        r.add(format!("key:{}", k.id), k.before.as_ref().map(key_json), k.after.as_ref().map(key_json));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::records::KeyChange;
    use crate::model::{ApiKey, KeyHash};

    fn key(enabled: bool) -> KeyRecord {
        KeyRecord {
            key: ApiKey {
                id: "k1".into(),
                name: "one".into(),
                description: String::new(),
                enabled,
                customer_id: String::new(),
                value_hash: KeyHash::of("tgvalue0123456789012345678901234"),
                value_hint: "tgva".into(),
                created_at_ms: 1,
                updated_at_ms: 2,
                expires_at_ms: None,
                tags: Default::default(),
            },
            plans: vec!["basic".into()],
            rotated: vec![crate::catalog::records::Rotated {
                hash: KeyHash::of("tgold00123456789012345678901234"),
                valid_until_ms: 99,
            }],
        }
    }

    #[test]
    fn fields_that_changed_and_no_hashes() {
        let caller = Caller { token: "ci".into(), peer: "10.0.0.1".into(), operation: "UpdateApiKey" };
        let set = ChangeSet {
            keys: vec![KeyChange { id: "k1".into(), before: Some(key(true)), after: Some(key(false)) }],
            ..ChangeSet::default()
        };
        let r = record(&caller, &CatalogData::default(), &set, 5);
        assert_eq!(r.ids, vec!["key:k1"]);
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        assert_eq!(r.changes[0].field, "enabled");
        assert_eq!((r.changes[0].before.clone(), r.changes[0].after.clone()), (Some(true.into()), Some(false.into())));
        let created = ChangeSet {
            keys: vec![KeyChange { id: "k1".into(), before: None, after: Some(key(true)) }],
            ..ChangeSet::default()
        };
        let text = record(&caller, &CatalogData::default(), &created, 5).to_json();
        assert!(!text.contains(&KeyHash::of("tgvalue0123456789012345678901234").to_hex()), "{text}");
        assert!(!text.contains(&KeyHash::of("tgold00123456789012345678901234").to_hex()), "{text}");
        assert!(text.contains("rotated_valid_until_ms") && text.contains("\"token\":\"ci\""), "{text}");
    }
}
