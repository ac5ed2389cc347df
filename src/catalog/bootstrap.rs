//! The catalog file as a safe bootstrap of a catalog kept in Redis: what a
//! replica does with its `--config` file at start (docs/admin.md, "The
//! catalog file at start").
//!
//! A file is applied only if its digest (the SHA-256 of its bytes) was never
//! applied before. Applying it goes record by record (APIs, stages, plans,
//! keys, subscriptions), comparing three things: the file's record, the
//! stored record, and the *fingerprint* of what a file last applied to that
//! record. A record nobody changed since the file last applied it follows the
//! file; a record changed or made at runtime is kept (a conflict); a record a
//! file created and someone deleted at runtime is not created again; and the
//! file never deletes. A record whose application would break a rule that
//! spans records is skipped as a conflict, and the rest is applied.
//!
//! Everything here is pure and knows nothing of how records are stored:
//! [`apply`] changes a copy of the stored records and returns the new
//! [`FileState`] with a report of what happened to each record; the catalog
//! store (`store.rs`) reads and writes both in one transaction, and
//! [`Applied::log`] tells the operator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::admin::check_one_plan_per_stage;
use super::{CatalogData, PlanKey};
use crate::model::{Api, ApiKey, KeyHash, Stage, UsagePlan};

/// How many digests of applied files are remembered; older ones are
/// forgotten, so a file last applied more than this many files ago would be
/// applied again.
pub const KEPT_DIGESTS: usize = 100;

/// The Prometheus counter of conflicts between a catalog file and the stored
/// catalog.
pub const CONFLICTS_METRIC: &str = "tollgate_catalog_file_conflicts_total";

/// The SHA-256 of a catalog file's bytes, in lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What the store remembers about the catalog files applied to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileState {
    /// The digests of the files applied, with when (ms since the epoch); at
    /// most [`KEPT_DIGESTS`].
    pub applied: BTreeMap<String, u64>,
    /// For every record a file has ever applied, by [`Record::name`]: the
    /// fingerprint of the fields the file controls, as a file last applied
    /// them.
    pub fingerprints: BTreeMap<String, String>,
}

impl FileState {
    /// When the file with this digest was applied, if it was.
    pub fn applied_at(&self, digest: &str) -> Option<u64> {
        self.applied.get(digest).copied()
    }

    /// Remembers `digest` as applied at `now`, forgetting the oldest others
    /// beyond [`KEPT_DIGESTS`].
    pub fn remember(&mut self, digest: &str, now: u64) {
        self.applied.insert(digest.to_string(), now);
        while self.applied.len() > KEPT_DIGESTS {
            let oldest = self
                .applied
                .iter()
                .filter(|(d, _)| d.as_str() != digest)
                .min_by_key(|(d, at)| (**at, d.as_str()))
                .map(|(d, _)| d.clone());
            match oldest {
                Some(d) => self.applied.remove(&d),
                None => break,
            };
        }
    }
}

/// One record of the catalog, by identity. A key's identity is its id (the
/// file's `id`, or the one derived from its value's hash).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Record {
    /// An API, by id.
    Api(String),
    /// A stage, by `API/STAGE`.
    Stage(String),
    /// A usage plan, by id.
    Plan(String),
    /// An API key, by id.
    Key(String),
    /// A subscription of a key to a plan.
    Subscription(PlanKey),
}

impl Record {
    /// The name its fingerprint is kept under: `api:ID`, `stage:API/STAGE`,
    /// `plan:ID`, `key:ID` or `sub:PLAN/KEY` (ids contain no `:` or `/`).
    pub fn name(&self) -> String {
        match self {
            Record::Api(id) => format!("api:{id}"),
            Record::Stage(s) => format!("stage:{s}"),
            Record::Plan(id) => format!("plan:{id}"),
            Record::Key(id) => format!("key:{id}"),
            Record::Subscription(pk) => format!("sub:{}/{}", pk.plan_id, pk.key_id),
        }
    }

    /// The record a [`name`](Self::name) stands for.
    pub fn parse(name: &str) -> Option<Self> {
        let (kind, id) = name.split_once(':')?;
        let id = id.to_string();
        Some(match kind {
            "api" => Record::Api(id),
            "stage" => Record::Stage(id),
            "plan" => Record::Plan(id),
            "key" => Record::Key(id),
            "sub" => {
                let (plan_id, key_id) = id.split_once('/')?;
                Record::Subscription(PlanKey { plan_id: plan_id.to_string(), key_id: key_id.to_string() })
            }
            _ => return None,
        })
    }

    fn exists_in(&self, d: &CatalogData) -> bool {
        match self {
            Record::Api(id) => d.apis.contains_key(id),
            Record::Stage(s) => d.stages.contains_key(s),
            Record::Plan(id) => d.plans.contains_key(id),
            Record::Key(id) => d.keys.contains_key(id),
            Record::Subscription(pk) => d.plan_keys.contains(pk),
        }
    }

    /// The command that deletes it at runtime.
    fn delete_command(&self) -> String {
        match self {
            Record::Api(id) => format!("tollgate stages delete-api {id}"),
            Record::Stage(s) => format!("tollgate stages delete {s}"),
            Record::Plan(id) => format!("tollgate plans delete {id}"),
            Record::Key(id) => format!("tollgate keys delete {id}"),
            Record::Subscription(pk) => format!("tollgate plan-keys remove {} {}", pk.plan_id, pk.key_id),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Api(id) => write!(f, "API {id:?}"),
            Record::Stage(s) => write!(f, "stage {s}"),
            Record::Plan(id) => write!(f, "usage plan {id:?}"),
            Record::Key(id) => write!(f, "API key {id:?}"),
            Record::Subscription(pk) => {
                write!(f, "subscription of API key {:?} to usage plan {:?}", pk.key_id, pk.plan_id)
            }
        }
    }
}

/// What applying a file did to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not in the store, never applied before: created.
    Created,
    /// Unchanged since a file last applied it: now as this file says.
    Updated,
    /// Already as the file says (its fingerprint is now remembered).
    Unchanged,
    /// A file applied it and it was deleted at runtime since: not created
    /// again.
    DeletedAtRuntime,
    /// A file applied it, this one does not list it, and it is still stored:
    /// left as it is (the file never deletes).
    NoLongerInFile,
    /// Not applied, the stored record is kept; why, in words for the log.
    Conflict(String),
}

/// The result of [`apply`].
#[derive(Debug, Clone)]
pub struct Applied {
    /// The state to store along with the changed records.
    pub state: FileState,
    /// What happened to each record of the file (and to the records a
    /// previous file applied that this one no longer lists).
    pub report: Vec<(Record, Outcome)>,
}

impl Applied {
    /// How many records had an outcome for which `pred` holds.
    pub fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.report.iter().filter(|(_, o)| pred(o)).count()
    }

    /// The number of conflicts.
    pub fn conflicts(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Conflict(_)))
    }

    /// Logs what happened (one warning per conflict, naming the record and
    /// why; never a key value) and counts the conflicts in
    /// [`CONFLICTS_METRIC`].
    pub fn log(&self, file: &str, digest: &str) {
        for (rec, outcome) in &self.report {
            match outcome {
                Outcome::Conflict(why) => tracing::warn!("catalog file conflict: {rec}: {why}"),
                Outcome::DeletedAtRuntime => tracing::info!(
                    "catalog file: {rec} was deleted at runtime after a catalog file created it; not created again"
                ),
                Outcome::NoLongerInFile => tracing::info!(
                    "catalog file: {rec} is no longer in the file; left as it is (the file never deletes; delete it with `{}`)",
                    rec.delete_command()
                ),
                Outcome::Created | Outcome::Updated => tracing::debug!(%rec, ?outcome, "catalog file"),
                Outcome::Unchanged => {}
            }
        }
        let conflicts = self.conflicts();
        metrics::counter!(CONFLICTS_METRIC).increment(conflicts as u64);
        tracing::info!(
            file,
            sha256 = &digest[..digest.len().min(12)],
            created = self.count(|o| *o == Outcome::Created),
            updated = self.count(|o| *o == Outcome::Updated),
            unchanged = self.count(|o| *o == Outcome::Unchanged),
            deleted_at_runtime = self.count(|o| *o == Outcome::DeletedAtRuntime),
            conflicts,
            "catalog file applied"
        );
    }
}

/// Applies the file's records to the stored records `data` by the rules of
/// docs/admin.md, given the stored `state`, and remembers `digest` as applied
/// at `now`. Records that would break a rule spanning records are skipped
/// (conflicts), so `data` stays a valid catalog when it was one.
pub fn apply(data: &mut CatalogData, file: &CatalogData, state: &FileState, digest: &str, now: u64) -> Applied {
    let by_hash = data.keys.values().map(|k| (k.value_hash, k.id.clone())).collect();
    let mut a = Applier { data, last: state, state: state.clone(), now, by_hash, report: Vec::new() };
    file.apis.values().for_each(|x| a.api(x));
    file.stages.values().for_each(|x| a.stage(x));
    file.plans.values().for_each(|x| a.plan(x));
    file.keys.values().for_each(|x| a.key(x));
    file.plan_keys.iter().for_each(|x| a.subscription(x));
    a.no_longer_in_file(file);
    let mut state = a.state;
    state.remember(digest, now);
    Applied { state, report: a.report }
}

/// What the rules say about one record.
enum Rule {
    Create,
    Update,
    Same,
    DeletedAtRuntime,
    ChangedAtRuntime { applied_before: bool },
}

/// The rule for a record, from the fingerprints of its stored version (if
/// stored), of the file's version, and of what a file last applied (if any).
fn rule(stored: Option<&str>, file: &str, last: Option<&str>) -> Rule {
    match (stored, last) {
        (None, None) => Rule::Create,
        (None, Some(_)) => Rule::DeletedAtRuntime,
        (Some(s), _) if s == file => Rule::Same,
        (Some(s), Some(l)) if s == l => Rule::Update,
        (Some(_), last) => Rule::ChangedAtRuntime { applied_before: last.is_some() },
    }
}

/// A hash of the fields a file controls. Record types serialize
/// deterministically (structs in field order, maps sorted).
fn fingerprint(fields: &impl Serialize) -> String {
    let json = serde_json::to_vec(fields).expect("catalog records are plain data and always serialize");
    hex::encode(&Sha256::digest(&json)[..16])
}

fn api_fp(a: &Api) -> String {
    fingerprint(a)
}

fn stage_fp(s: &Stage) -> String {
    fingerprint(s)
}

/// Everything but the creation time.
fn plan_fp(p: &UsagePlan) -> String {
    fingerprint(&(&p.id, &p.name, &p.description, &p.throttle, &p.quota, &p.api_stages))
}

/// Everything but the value hint and the times of creation and change.
fn key_fp(k: &ApiKey) -> String {
    fingerprint(&(&k.id, &k.name, &k.description, k.enabled, &k.customer_id, k.value_hash.to_hex(), k.expires_at_ms))
}

/// A subscription has no fields: it exists or not.
const SUBSCRIBED: &str = "subscribed";

/// Why a record present in the store with other content is kept.
fn changed_at_runtime(applied_before: bool) -> String {
    if applied_before {
        "changed at runtime since a catalog file last applied it; the stored record is kept".into()
    } else {
        "exists with other content than the file's and no catalog file applied it (made at runtime); the stored record is kept".into()
    }
}

fn missing(what: impl fmt::Display) -> String {
    format!("{what} is not in the catalog (deleted at runtime, or not applied); skipped")
}

struct Applier<'a> {
    data: &'a mut CatalogData,
    /// The state as stored: what files applied before this one.
    last: &'a FileState,
    /// The state being built.
    state: FileState,
    now: u64,
    /// Key id by value hash, kept in step with `data.keys`.
    by_hash: HashMap<KeyHash, String>,
    report: Vec<(Record, Outcome)>,
}

impl Applier<'_> {
    /// Applies the rules to one record: `write` makes the change when they
    /// say create or update, or answers why a rule spanning records forbids
    /// it (a conflict).
    fn record(
        &mut self,
        rec: Record,
        stored: Option<String>,
        file: String,
        write: impl FnOnce(&mut Self) -> Result<(), String>,
    ) {
        let name = rec.name();
        let outcome = match rule(stored.as_deref(), &file, self.last.fingerprints.get(&name).map(String::as_str)) {
            Rule::Same => Outcome::Unchanged,
            Rule::DeletedAtRuntime => Outcome::DeletedAtRuntime,
            Rule::ChangedAtRuntime { applied_before } => Outcome::Conflict(changed_at_runtime(applied_before)),
            Rule::Create => write(self).map_or_else(Outcome::Conflict, |()| Outcome::Created),
            Rule::Update => write(self).map_or_else(Outcome::Conflict, |()| Outcome::Updated),
        };
        if matches!(outcome, Outcome::Created | Outcome::Updated | Outcome::Unchanged) {
            self.state.fingerprints.insert(name, file);
        }
        self.report.push((rec, outcome));
    }

    fn api(&mut self, f: &Api) {
        let stored = self.data.apis.get(&f.id).map(api_fp);
        self.record(Record::Api(f.id.clone()), stored, api_fp(f), |a| {
            a.data.apis.insert(f.id.clone(), f.clone());
            Ok(())
        });
    }

    fn stage(&mut self, f: &Stage) {
        let id = f.stage.to_string();
        let stored = self.data.stages.get(&id).map(stage_fp);
        self.record(Record::Stage(id.clone()), stored, stage_fp(f), |a| {
            if !a.data.apis.contains_key(&f.stage.api_id) {
                return Err(missing(format_args!("its API {:?}", f.stage.api_id)));
            }
            a.data.stages.insert(id, f.clone());
            Ok(())
        });
    }

    fn plan(&mut self, f: &UsagePlan) {
        let stored = self.data.plans.get(&f.id);
        let created_at_ms = stored.map_or(f.created_at_ms, |p| p.created_at_ms);
        let stored = stored.map(plan_fp);
        self.record(Record::Plan(f.id.clone()), stored, plan_fp(f), |a| {
            a.write_plan(UsagePlan { created_at_ms, ..f.clone() })
        });
    }

    /// Writes a plan whose stages all exist, unless a key subscribed to it
    /// would then have two plans on one stage.
    fn write_plan(&mut self, plan: UsagePlan) -> Result<(), String> {
        if let Some(s) = plan.api_stages.iter().find(|s| !self.data.stages.contains_key(&s.stage.to_string())) {
            return Err(missing(format_args!("its stage {}", s.stage)));
        }
        let id = plan.id.clone();
        let before = self.data.plans.insert(id.clone(), plan);
        let keys: Vec<String> =
            self.data.plan_keys.iter().filter(|pk| pk.plan_id == id).map(|pk| pk.key_id.clone()).collect();
        if let Some(e) = keys.iter().find_map(|k| check_one_plan_per_stage(self.data, &id, k).err()) {
            match before {
                Some(b) => self.data.plans.insert(id, b),
                None => self.data.plans.remove(&id),
            };
            return Err(format!("{e}; the stored plan is kept"));
        }
        Ok(())
    }

    fn key(&mut self, f: &ApiKey) {
        let stored = self.data.keys.get(&f.id).map(key_fp);
        self.record(Record::Key(f.id.clone()), stored, key_fp(f), |a| a.write_key(f));
    }

    /// Writes a key (keeping its creation time), unless its value is taken.
    fn write_key(&mut self, f: &ApiKey) -> Result<(), String> {
        if let Some(other) = self.by_hash.get(&f.value_hash).filter(|id| **id != f.id) {
            return Err(format!("its value belongs to API key {other:?}; values are unique; skipped"));
        }
        if let Some(old) = self.data.old_values.get(&f.value_hash.to_hex()) {
            return Err(format!(
                "its value is an old value of API key {:?}, rotated and still in its grace period; skipped",
                old.key_id
            ));
        }
        let key = match self.data.keys.get(&f.id) {
            None => f.clone(),
            Some(k) => {
                self.by_hash.remove(&k.value_hash);
                let hint = if k.value_hash == f.value_hash { k.value_hint.clone() } else { String::new() };
                ApiKey { created_at_ms: k.created_at_ms, updated_at_ms: self.now, value_hint: hint, ..f.clone() }
            }
        };
        self.by_hash.insert(key.value_hash, key.id.clone());
        self.data.keys.insert(key.id.clone(), key);
        Ok(())
    }

    fn subscription(&mut self, pk: &PlanKey) {
        let stored = self.data.plan_keys.contains(pk).then(|| SUBSCRIBED.to_string());
        self.record(Record::Subscription(pk.clone()), stored, SUBSCRIBED.into(), |a| {
            if !a.data.plans.contains_key(&pk.plan_id) {
                return Err(missing(format_args!("usage plan {:?}", pk.plan_id)));
            }
            if !a.data.keys.contains_key(&pk.key_id) {
                return Err(missing(format_args!("API key {:?}", pk.key_id)));
            }
            // A key or plan that only shares its id with the file's (made at
            // runtime, never applied by a file) gets nothing from the file.
            for rec in [Record::Key(pk.key_id.clone()), Record::Plan(pk.plan_id.clone())] {
                if !a.state.fingerprints.contains_key(&rec.name()) {
                    return Err(format!("{rec} in the catalog was made at runtime, not by a catalog file; skipped"));
                }
            }
            check_one_plan_per_stage(a.data, &pk.plan_id, &pk.key_id).map_err(|e| format!("{e}; skipped"))?;
            a.data.plan_keys.insert(pk.clone());
            Ok(())
        });
    }

    /// Reports the records a previous file applied that this one does not
    /// list and that are still stored. Their fingerprints are kept: a runtime
    /// deletion stays final, and a file listing them again follows the rules.
    fn no_longer_in_file(&mut self, file: &CatalogData) {
        let listed: BTreeSet<String> = file
            .apis
            .keys()
            .map(|id| Record::Api(id.clone()))
            .chain(file.stages.keys().map(|s| Record::Stage(s.clone())))
            .chain(file.plans.keys().map(|id| Record::Plan(id.clone())))
            .chain(file.keys.keys().map(|id| Record::Key(id.clone())))
            .chain(file.plan_keys.iter().map(|pk| Record::Subscription(pk.clone())))
            .map(|r| r.name())
            .collect();
        for name in self.last.fingerprints.keys().filter(|n| !listed.contains(*n)) {
            if let Some(rec) = Record::parse(name).filter(|r| r.exists_in(self.data)) {
                self.report.push((rec, Outcome::NoLongerInFile));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::admin::{self, KeyPatch, PlanPatch};
    use crate::catalog::{file, Catalog};
    use crate::model::{PlanStage, StageRef, Throttle};

    const VALUE: &str = "demovalue0123456789abcdefghijklmnop";

    /// Two stages, a plan on one of them, a key subscribed to it.
    const V1: &str = r#"
apis:
  - id: shop
    stages:
      - name: prod
      - name: beta
usage_plans:
  - id: basic
    name: Basic
    throttle: { rate_limit: 1, burst_limit: 5 }
    api_stages: [{ stage: shop/prod }]
api_keys:
  - id: demo
    name: demo
    value: demovalue0123456789abcdefghijklmnop
    usage_plans: [basic]
"#;

    fn parse(text: &str, now: u64) -> CatalogData {
        file::parse("test.yaml", text, now).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Applies `text` as a file with a digest of its own, checks the result
    /// is a valid catalog, and returns the report.
    fn run(data: &mut CatalogData, state: &mut FileState, text: &str, now: u64) -> Vec<(Record, Outcome)> {
        let applied = apply(data, &parse(text, now), state, &digest(text.as_bytes()), now);
        Catalog::compile(data.clone()).unwrap_or_else(|e| panic!("the result is not a valid catalog: {e}"));
        *state = applied.state;
        applied.report
    }

    /// Applies V1 to an empty store.
    fn bootstrapped() -> (CatalogData, FileState) {
        let (mut data, mut state) = (CatalogData::default(), FileState::default());
        run(&mut data, &mut state, V1, 1_000);
        (data, state)
    }

    fn outcome(report: &[(Record, Outcome)], name: &str) -> Outcome {
        let rec = Record::parse(name).unwrap();
        report.iter().find(|(r, _)| *r == rec).map(|(_, o)| o.clone()).unwrap_or_else(|| panic!("{name}: {report:?}"))
    }

    fn is_conflict(o: &Outcome, needle: &str) -> bool {
        matches!(o, Outcome::Conflict(why) if why.contains(needle))
    }

    fn sub(plan: &str, key: &str) -> PlanKey {
        PlanKey { plan_id: plan.into(), key_id: key.into() }
    }

    /// V1 with the plan's burst raised: a new file that changes one record.
    fn v2() -> String {
        V1.replace("burst_limit: 5", "burst_limit: 7")
    }

    #[test]
    fn a_new_file_creates_its_records_and_remembers_them() {
        let (data, state) = bootstrapped();
        assert_eq!(data.keys["demo"].value_hash, KeyHash::of(VALUE));
        assert!(data.plan_keys.contains(&sub("basic", "demo")));
        let names: Vec<&str> = state.fingerprints.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["api:shop", "key:demo", "plan:basic", "stage:shop/beta", "stage:shop/prod", "sub:basic/demo"]
        );
        assert_eq!(state.applied_at(&digest(V1.as_bytes())), Some(1_000));
    }

    #[test]
    fn a_file_applied_again_changes_nothing() {
        let (mut data, mut state) = bootstrapped();
        let before = data.clone();
        let text = format!("{V1}# the same records, other bytes\n");
        let report = run(&mut data, &mut state, &text, 2_000);
        assert!(report.iter().all(|(_, o)| *o == Outcome::Unchanged), "{report:?}");
        assert_eq!(data, before);
    }

    #[test]
    fn a_record_unchanged_since_the_file_applied_it_follows_the_file() {
        let (mut data, mut state) = bootstrapped();
        let report = run(&mut data, &mut state, &v2(), 2_000);
        assert_eq!(outcome(&report, "plan:basic"), Outcome::Updated);
        assert_eq!(outcome(&report, "key:demo"), Outcome::Unchanged);
        let plan = &data.plans["basic"];
        assert_eq!(plan.throttle.unwrap().burst_limit, 7);
        assert_eq!(plan.created_at_ms, 1_000, "the plan keeps its creation time (its quota offset)");
        assert_eq!(state.fingerprints["plan:basic"], plan_fp(plan));
    }

    #[test]
    fn a_key_following_the_file_keeps_its_creation_time() {
        let (mut data, mut state) = bootstrapped();
        let report = run(&mut data, &mut state, &V1.replace("name: demo", "name: demo2"), 2_000);
        assert_eq!(outcome(&report, "key:demo"), Outcome::Updated);
        let k = &data.keys["demo"];
        assert_eq!((k.name.as_str(), k.created_at_ms, k.updated_at_ms), ("demo2", 1_000, 2_000));
    }

    #[test]
    fn a_record_changed_at_runtime_is_kept_and_is_a_conflict() {
        let (mut data, mut state) = bootstrapped();
        let disable = KeyPatch { enabled: Some(false), ..Default::default() };
        admin::update_key(&mut data, "demo", disable, 1_500).unwrap();
        let fp_before = state.fingerprints["key:demo"].clone();
        let report = run(&mut data, &mut state, &v2(), 2_000);
        assert!(is_conflict(&outcome(&report, "key:demo"), "changed at runtime"), "{report:?}");
        assert!(!data.keys["demo"].enabled, "the runtime revocation holds");
        assert_eq!(state.fingerprints["key:demo"], fp_before, "still what the file last applied");
        assert_eq!(outcome(&report, "plan:basic"), Outcome::Updated, "the rest is applied");

        // Put back as the file last applied it: it follows the file again.
        let enable = KeyPatch { enabled: Some(true), ..Default::default() };
        admin::update_key(&mut data, "demo", enable, 2_500).unwrap();
        let report = run(&mut data, &mut state, &v2().replace("name: demo", "name: demo3"), 3_000);
        assert_eq!(outcome(&report, "key:demo"), Outcome::Updated);
    }

    #[test]
    fn a_record_made_at_runtime_is_adopted_only_when_equal_to_the_file() {
        let mut data = CatalogData::default();
        admin::put_stage(&mut data, "shop/prod", None, vec![], vec![]).unwrap();
        admin::put_stage(&mut data, "shop/beta", None, vec![], vec![]).unwrap();
        data.apis.get_mut("shop").unwrap().name = "Shop at runtime".into();
        let mut state = FileState::default();
        let report = run(&mut data, &mut state, V1, 1_000);
        assert_eq!(outcome(&report, "stage:shop/prod"), Outcome::Unchanged, "equal: adopted");
        assert!(state.fingerprints.contains_key("stage:shop/prod"));
        assert!(is_conflict(&outcome(&report, "api:shop"), "made at runtime"), "{report:?}");
        assert_eq!(data.apis["shop"].name, "Shop at runtime");
        assert!(!state.fingerprints.contains_key("api:shop"));
        assert_eq!(outcome(&report, "key:demo"), Outcome::Created);
    }

    #[test]
    fn records_deleted_at_runtime_are_not_created_again() {
        for (name, delete) in [
            ("key:demo", (|d: &mut CatalogData| admin::delete_key(d, "demo")) as fn(&mut CatalogData) -> _),
            ("sub:basic/demo", |d| admin::remove_plan_key(d, "basic", "demo")),
            ("plan:basic", |d| admin::delete_plan(d, "basic")),
            ("stage:shop/beta", |d| admin::delete_stage(d, "shop/beta")),
        ] {
            let (mut data, mut state) = bootstrapped();
            delete(&mut data).unwrap();
            let report = run(&mut data, &mut state, &v2(), 2_000);
            assert_eq!(outcome(&report, name), Outcome::DeletedAtRuntime, "{name}: {report:?}");
            assert!(!Record::parse(name).unwrap().exists_in(&data), "{name} stays deleted");
            assert!(state.fingerprints.contains_key(name), "{name}: a later file does not recreate it either");
        }
    }

    #[test]
    fn an_api_deleted_at_runtime_takes_its_stages_and_plans_with_it() {
        let (mut data, mut state) = bootstrapped();
        admin::delete_plan(&mut data, "basic").unwrap();
        admin::delete_api(&mut data, "shop").unwrap();
        let report = run(&mut data, &mut state, &v2(), 2_000);
        for name in ["api:shop", "stage:shop/prod", "plan:basic", "sub:basic/demo"] {
            assert_eq!(outcome(&report, name), Outcome::DeletedAtRuntime, "{name}");
        }
        assert_eq!(outcome(&report, "key:demo"), Outcome::Unchanged);
    }

    #[test]
    fn a_rotated_key_keeps_its_new_value() {
        for grace_ms in [0, 60_000] {
            let (mut data, mut state) = bootstrapped();
            let (_, new) = admin::rotate_key(&mut data, "demo", None, grace_ms, 1_500).unwrap();
            let report = run(&mut data, &mut state, &v2(), 2_000);
            assert!(matches!(outcome(&report, "key:demo"), Outcome::Conflict(_)), "{report:?}");
            assert_eq!(data.keys["demo"].value_hash, KeyHash::of(&new), "grace {grace_ms}");
            assert_eq!(outcome(&report, "sub:basic/demo"), Outcome::Unchanged);
        }
    }

    #[test]
    fn a_value_taken_by_another_key_is_a_conflict() {
        // A key made at runtime with the value the file gives its key.
        let mut data = CatalogData::default();
        let new = admin::NewKey { name: "runtime".into(), value: Some(VALUE.into()), ..Default::default() };
        let (runtime, _) = admin::create_key(&mut data, new, 500).unwrap();
        let mut state = FileState::default();
        let report = run(&mut data, &mut state, V1, 1_000);
        let o = outcome(&report, "key:demo");
        assert!(is_conflict(&o, &format!("belongs to API key {:?}", runtime.id)), "{o:?}");
        assert!(!is_conflict(&o, VALUE), "never a key value in a message");
        assert!(is_conflict(&outcome(&report, "sub:basic/demo"), "API key \"demo\" is not in the catalog"));
        assert_eq!(outcome(&report, "plan:basic"), Outcome::Created, "the rest is applied");
        assert_eq!(data.keys.len(), 1);

        // The old value of a key rotated at runtime, in its grace period.
        let (mut data, mut state) = bootstrapped();
        let new = admin::NewKey { name: "other".into(), value: Some(VALUE.replace('d', "e")), ..Default::default() };
        let (other, _) = admin::create_key(&mut data, new, 1_200).unwrap();
        admin::rotate_key(&mut data, &other.id, None, 60_000, 1_500).unwrap();
        let moved = v2().replace(VALUE, &VALUE.replace('d', "e"));
        let report = run(&mut data, &mut state, &moved, 2_000);
        assert!(is_conflict(&outcome(&report, "key:demo"), "grace period"), "{report:?}");
        assert_eq!(data.keys["demo"].value_hash, KeyHash::of(VALUE));
    }

    #[test]
    fn a_subscription_to_a_key_made_at_runtime_is_skipped() {
        // A key made at runtime has the id the file gives its key.
        let mut data = CatalogData::default();
        let new = admin::NewKey { name: "runtime".into(), ..Default::default() };
        let (runtime, _) = admin::create_key(&mut data, new, 500).unwrap();
        let text = V1.replace("id: demo", &format!("id: {}", runtime.id));
        let mut state = FileState::default();
        let report = run(&mut data, &mut state, &text, 1_000);
        assert!(is_conflict(&outcome(&report, &format!("key:{}", runtime.id)), "made at runtime"), "{report:?}");
        let o = outcome(&report, &format!("sub:basic/{}", runtime.id));
        assert!(is_conflict(&o, "made at runtime, not by a catalog file"), "{o:?}");
        assert!(data.plan_keys.is_empty(), "the runtime key gets no plan from the file");

        // A key the file applied and that was changed at runtime since is
        // still the file's key: a new subscription in the file applies.
        let (mut data, mut state) = bootstrapped();
        admin::update_key(&mut data, "demo", KeyPatch { enabled: Some(false), ..Default::default() }, 1_500).unwrap();
        admin::remove_plan_key(&mut data, "basic", "demo").unwrap();
        state.fingerprints.remove("sub:basic/demo");
        let report = run(&mut data, &mut state, &v2(), 2_000);
        assert_eq!(outcome(&report, "sub:basic/demo"), Outcome::Created);
    }

    #[test]
    fn a_subscription_breaking_one_plan_per_stage_is_skipped() {
        // The key joined a plan on shop/beta at runtime; the file puts it in
        // another plan on shop/beta.
        let (mut data, mut state) = bootstrapped();
        let beta = vec![PlanStage { stage: StageRef::parse("shop/beta").unwrap(), throttle: BTreeMap::new() }];
        let np =
            admin::NewPlan { id: Some("runtime".into()), name: "R".into(), api_stages: beta, ..Default::default() };
        admin::create_plan(&mut data, np, 1_500).unwrap();
        admin::add_plan_key(&mut data, "runtime", "demo").unwrap();
        let gold = "  - id: gold\n    name: Gold\n    api_stages: [{ stage: shop/beta }]\napi_keys:";
        let v2 = V1.replace("api_keys:", gold).replace("usage_plans: [basic]", "usage_plans: [basic, gold]");
        let report = run(&mut data, &mut state, &v2, 2_000);
        assert_eq!(outcome(&report, "plan:gold"), Outcome::Created);
        assert!(is_conflict(&outcome(&report, "sub:gold/demo"), "one plan per stage"), "{report:?}");
        assert!(!data.plan_keys.contains(&sub("gold", "demo")));
    }

    #[test]
    fn a_plan_change_breaking_a_rule_is_skipped() {
        // The file adds shop/beta to its plan, but a subscriber is in a
        // plan on shop/beta made at runtime.
        let (mut data, mut state) = bootstrapped();
        let beta = vec![PlanStage { stage: StageRef::parse("shop/beta").unwrap(), throttle: BTreeMap::new() }];
        let np =
            admin::NewPlan { id: Some("runtime".into()), name: "R".into(), api_stages: beta, ..Default::default() };
        admin::create_plan(&mut data, np, 1_500).unwrap();
        admin::add_plan_key(&mut data, "runtime", "demo").unwrap();
        let both = V1.replace("[{ stage: shop/prod }]", "[{ stage: shop/prod }, { stage: shop/beta }]");
        let report = run(&mut data, &mut state, &both, 2_000);
        assert!(is_conflict(&outcome(&report, "plan:basic"), "one plan per stage"), "{report:?}");
        assert_eq!(data.plans["basic"].api_stages.len(), 1, "the stored plan is kept");

        // A stage deleted at runtime: a plan that needs it is skipped.
        let (mut data, mut state) = bootstrapped();
        admin::delete_stage(&mut data, "shop/beta").unwrap();
        let report = run(&mut data, &mut state, &both, 2_000);
        assert_eq!(outcome(&report, "stage:shop/beta"), Outcome::DeletedAtRuntime);
        assert!(is_conflict(&outcome(&report, "plan:basic"), "stage shop/beta is not in the catalog"), "{report:?}");
    }

    #[test]
    fn a_stage_of_an_api_deleted_at_runtime_is_skipped() {
        let (mut data, mut state) = bootstrapped();
        admin::delete_plan(&mut data, "basic").unwrap();
        admin::delete_api(&mut data, "shop").unwrap();
        let text = v2().replace("      - name: beta", "      - name: beta\n      - name: gamma");
        let report = run(&mut data, &mut state, &text, 2_000);
        assert!(is_conflict(&outcome(&report, "stage:shop/gamma"), "API \"shop\""), "{report:?}");
    }

    #[test]
    fn records_no_longer_in_the_file_are_left_as_they_are() {
        let (mut data, mut state) = bootstrapped();
        let without_key = V1.split("api_keys:").next().unwrap().to_string();
        let report = run(&mut data, &mut state, &without_key, 2_000);
        assert_eq!(outcome(&report, "key:demo"), Outcome::NoLongerInFile);
        assert_eq!(outcome(&report, "sub:basic/demo"), Outcome::NoLongerInFile);
        assert!(data.keys.contains_key("demo") && data.plan_keys.contains(&sub("basic", "demo")));
        assert!(state.fingerprints.contains_key("key:demo"), "a runtime deletion stays final");

        // Deleted at runtime and no longer in the file: nothing to say.
        admin::delete_key(&mut data, "demo").unwrap();
        let report = run(&mut data, &mut state, &format!("{without_key}# again\n"), 3_000);
        assert!(report.iter().all(|(_, o)| *o == Outcome::Unchanged), "{report:?}");
    }

    #[test]
    fn a_plan_created_by_the_file_gets_the_file_load_time() {
        let (data, _) = bootstrapped();
        assert_eq!(data.plans["basic"].created_at_ms, 1_000);
        assert_eq!(data.keys["demo"].created_at_ms, 1_000);
    }

    #[test]
    fn digests_are_remembered_up_to_a_limit() {
        let mut state = FileState::default();
        for i in 0..KEPT_DIGESTS as u64 + 5 {
            state.remember(&format!("d{i}"), 1_000 + i);
        }
        assert_eq!(state.applied.len(), KEPT_DIGESTS);
        assert_eq!(state.applied_at("d4"), None, "the oldest are forgotten");
        assert_eq!(state.applied_at("d5"), Some(1_005));
        // Applying an old digest again refreshes its time rather than dropping it.
        state.remember("d5", 9_999);
        assert_eq!(state.applied_at("d5"), Some(9_999));
        assert_eq!(state.applied.len(), KEPT_DIGESTS);
    }

    #[test]
    fn record_names_round_trip() {
        for name in ["api:shop", "stage:shop/prod", "plan:basic", "key:demo", "sub:basic/demo"] {
            assert_eq!(Record::parse(name).unwrap().name(), name);
        }
        assert_eq!(Record::parse("nonsense"), None);
        assert_eq!(Record::parse("sub:noslash"), None);
    }

    /// Fingerprints are compared across a trip through the stored JSON: a
    /// rate that came back one bit off would look like a runtime change.
    #[test]
    fn fingerprints_survive_the_stored_json() {
        let mut plan = parse(V1, 1).plans["basic"].clone();
        for i in 0..5_000 {
            let rate = (i as f64 * 0.7919).fract() * 10f64.powi(i % 10 - 4);
            plan.throttle = Some(Throttle { rate_limit: rate, burst_limit: 5 });
            let back: UsagePlan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
            assert_eq!(plan_fp(&back), plan_fp(&plan), "rate {rate:e}");
        }
        let p = admin::update_plan(&mut parse(V1, 1), "basic", PlanPatch::default()).unwrap();
        assert_eq!(plan_fp(&p), plan_fp(&parse(V1, 1).plans["basic"]));
    }
}
