//! The control plane's operations on catalog records: pure functions on
//! [`CatalogData`], run inside a catalog transaction
//! (`CatalogService::update`), which then checks the whole catalog (every
//! reference, the one-plan-per-stage rule) before storing it.

use std::collections::{BTreeMap, HashMap};

use super::{CatalogData, CatalogError, OldValue, PlanKey};
use crate::model::method::parse_patterns;
use crate::model::{
    generate_id, generate_key_value, validate_id, validate_key_value, validate_tags, value_hint, Api, ApiKey, Invalid,
    KeyHash, MethodPattern, MethodSetting, PlanStage, Quota, Stage, StageRef, Tags, Throttle, UsagePlan,
};

/// Why an admin operation failed; each maps to one gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Bad input: INVALID_ARGUMENT.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such thing: NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// The change would break a rule of the catalog: FAILED_PRECONDITION.
    #[error("{0}")]
    Conflict(String),
    /// It exists already: ALREADY_EXISTS.
    #[error("{0}")]
    AlreadyExists(String),
    /// The catalog store cannot be reached: UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
    /// Something unexpected: INTERNAL.
    #[error("{0}")]
    Internal(String),
}

impl From<CatalogError> for AdminError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid(i) => AdminError::Invalid(i),
            CatalogError::Conflict(m) => AdminError::Conflict(m),
        }
    }
}

fn not_found(what: &str, id: &str) -> AdminError {
    AdminError::NotFound(format!("{what} {id:?} does not exist"))
}

/// Longest name of a key, plan or API, in characters.
pub const NAME_MAX_CHARS: usize = 1024;
/// Longest description of a key or plan, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 4096;

/// Checks a name: 1 to [`NAME_MAX_CHARS`] characters, not all blank.
pub(crate) fn validate_name(name: &str) -> Result<(), Invalid> {
    if name.trim().is_empty() || name.chars().count() > NAME_MAX_CHARS {
        return Err(Invalid::new("name", format!("must be 1 to {NAME_MAX_CHARS} characters")));
    }
    Ok(())
}

/// Checks a free text field: at most `max` characters.
pub(crate) fn validate_text(field: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.chars().count() > max {
        return Err(Invalid::new(field, format!("must be at most {max} characters")));
    }
    Ok(())
}

/// A key to create.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// 1–1024 characters.
    pub name: String,
    /// The value; generated when `None`.
    pub value: Option<String>,
    /// Free text.
    pub description: String,
    /// Default true.
    pub enabled: bool,
    /// Customer reference.
    pub customer_id: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// Tags.
    pub tags: Tags,
}

fn unique_id(taken: impl Fn(&str) -> bool) -> String {
    loop {
        let id = generate_id();
        if !taken(&id) {
            return id;
        }
    }
}

/// Creates a key; returns it and its value (shown once).
pub fn create_key(d: &mut CatalogData, new: NewKey, now: u64) -> Result<(ApiKey, String), AdminError> {
    validate_name(&new.name)?;
    validate_text("description", &new.description, DESCRIPTION_MAX_CHARS)?;
    validate_text("customer_id", &new.customer_id, 1024)?;
    validate_tags(&new.tags)?;
    let value = match new.value {
        Some(v) => {
            validate_key_value("value", &v)?;
            v
        }
        None => generate_key_value(),
    };
    let hash = KeyHash::of(&value);
    if let Some(k) = d.key_by_hash(&hash) {
        return Err(AdminError::AlreadyExists(format!(
            "an API key with this value already exists (id {:?}); values are unique (keys import updates keys by value)",
            k.id
        )));
    }
    if d.old_values.contains_key(&hash.to_hex()) {
        return Err(AdminError::AlreadyExists(
            "this value belongs to a rotated key still in its grace period; choose another".into(),
        ));
    }
    let key = ApiKey {
        id: unique_id(|id| d.keys.contains_key(id)),
        name: new.name,
        description: new.description,
        enabled: new.enabled,
        customer_id: new.customer_id,
        value_hash: hash,
        value_hint: value_hint(&value),
        created_at_ms: now,
        updated_at_ms: now,
        expires_at_ms: new.expires_at_ms,
        tags: new.tags,
    };
    d.keys.insert(key.id.clone(), key.clone());
    Ok((key, value))
}

/// Fields of a key to change (`None`: keep).
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New customer reference.
    pub customer_id: Option<String>,
    /// New expiry; `Some(None)` clears it.
    pub expires_at_ms: Option<Option<u64>>,
    /// New tags, replacing all of them (`Some` of an empty map clears them).
    pub tags: Option<Tags>,
}

/// Changes a key.
pub fn update_key(d: &mut CatalogData, id: &str, p: KeyPatch, now: u64) -> Result<ApiKey, AdminError> {
    let key = d.keys.get_mut(id).ok_or_else(|| not_found("API key", id))?;
    if let Some(n) = p.name {
        validate_name(&n)?;
        key.name = n;
    }
    if let Some(s) = p.description {
        validate_text("description", &s, DESCRIPTION_MAX_CHARS)?;
        key.description = s;
    }
    if let Some(e) = p.enabled {
        key.enabled = e;
    }
    if let Some(c) = p.customer_id {
        validate_text("customer_id", &c, 1024)?;
        key.customer_id = c;
    }
    if let Some(x) = p.expires_at_ms {
        key.expires_at_ms = x;
    }
    if let Some(t) = p.tags {
        validate_tags(&t)?;
        key.tags = t;
    }
    key.updated_at_ms = now;
    Ok(key.clone())
}

/// Deletes a key with its subscriptions and old values.
pub fn delete_key(d: &mut CatalogData, id: &str) -> Result<(), AdminError> {
    d.keys.remove(id).ok_or_else(|| not_found("API key", id))?;
    d.plan_keys.retain(|pk| pk.key_id != id);
    d.old_values.retain(|_, o| o.key_id != id);
    Ok(())
}

/// Gives a key a new value; the old one keeps working for `grace_ms`.
pub fn rotate_key(
    d: &mut CatalogData,
    id: &str,
    value: Option<String>,
    grace_ms: u64,
    now: u64,
) -> Result<(ApiKey, String), AdminError> {
    let value = match value {
        Some(v) => {
            validate_key_value("value", &v)?;
            v
        }
        None => generate_key_value(),
    };
    let hash = KeyHash::of(&value);
    if d.key_by_hash(&hash).is_some() || d.old_values.contains_key(&hash.to_hex()) {
        return Err(AdminError::AlreadyExists("that value is already in use; choose another".into()));
    }
    let key = d.keys.get_mut(id).ok_or_else(|| not_found("API key", id))?;
    let old = key.value_hash;
    key.value_hash = hash;
    key.value_hint = value_hint(&value);
    key.updated_at_ms = now;
    let key = key.clone();
    if grace_ms > 0 {
        d.old_values.insert(old.to_hex(), OldValue { key_id: id.to_string(), valid_until_ms: now + grace_ms });
    }
    Ok((key, value))
}

/// Drops old values whose grace period is over.
pub fn prune_old_values(d: &mut CatalogData, now: u64) {
    d.old_values.retain(|_, o| o.valid_until_ms > now);
}

/// Creates or changes an API and one of its stages.
pub fn put_stage(
    d: &mut CatalogData,
    stage: &str,
    api_name: Option<String>,
    methods: Vec<(String, MethodSetting)>,
    remove: Vec<String>,
) -> Result<Stage, AdminError> {
    let sr = StageRef::parse(stage)?;
    if let Some(n) = &api_name {
        validate_name(n).map_err(|e| Invalid::new("api_name", e.message))?;
    }
    let api = d.apis.entry(sr.api_id.clone()).or_insert_with(|| Api { id: sr.api_id.clone(), name: sr.api_id.clone() });
    if let Some(n) = api_name {
        api.name = n;
    }
    let st = d.stages.entry(sr.to_string()).or_insert_with(|| Stage { stage: sr.clone(), methods: BTreeMap::new() });
    for m in remove {
        let p = MethodPattern::parse(&m).map_err(|e| Invalid::new("remove_methods", e.message))?;
        if !remove_method(&mut st.methods, &p) {
            return Err(AdminError::NotFound(format!("stage {sr} has no settings for method {:?}", p.as_str())));
        }
    }
    let methods = parse_patterns(methods).map_err(|e| Invalid::new("methods.method", e.message))?;
    for (p, setting) in methods {
        if let Some(t) = &setting.throttle {
            t.validate().map_err(|e| e.within("methods.throttle"))?;
        }
        set_method(&mut st.methods, &p, setting);
    }
    Ok(st.clone())
}

/// Sets `value` for pattern `p` in `map` (keyed by canonical pattern text),
/// in place of any other spelling of it stored before (a record written
/// before patterns were canonical may hold one).
fn set_method<V>(map: &mut BTreeMap<String, V>, p: &MethodPattern, value: V) {
    remove_method(map, p);
    map.insert(p.as_str().to_string(), value);
}

/// Removes every spelling of pattern `p` from `map`; whether there was one.
fn remove_method<V>(map: &mut BTreeMap<String, V>, p: &MethodPattern) -> bool {
    let before = map.len();
    map.retain(|k, _| MethodPattern::parse(k).map_or(true, |q| q.as_str() != p.as_str()));
    map.len() != before
}

fn plans_with_stage(d: &CatalogData, stage: &str) -> Vec<String> {
    d.plans
        .values()
        .filter(|p| p.api_stages.iter().any(|s| s.stage.to_string() == stage))
        .map(|p| p.id.clone())
        .collect()
}

/// Deletes a stage no plan contains.
pub fn delete_stage(d: &mut CatalogData, stage: &str) -> Result<(), AdminError> {
    let sr = StageRef::parse(stage)?;
    let key = sr.to_string();
    if !d.stages.contains_key(&key) {
        return Err(not_found("stage", &key));
    }
    let plans = plans_with_stage(d, &key);
    if !plans.is_empty() {
        return Err(AdminError::Conflict(format!(
            "stage {key} is in usage plans {plans:?}; remove it from them first"
        )));
    }
    d.stages.remove(&key);
    Ok(())
}

/// Deletes an API and its stages, when no plan contains any of them.
pub fn delete_api(d: &mut CatalogData, api_id: &str) -> Result<(), AdminError> {
    if !d.apis.contains_key(api_id) {
        return Err(not_found("API", api_id));
    }
    let stages: Vec<String> =
        d.stages.values().filter(|s| s.stage.api_id == api_id).map(|s| s.stage.to_string()).collect();
    for s in &stages {
        let plans = plans_with_stage(d, s);
        if !plans.is_empty() {
            return Err(AdminError::Conflict(format!(
                "stage {s} of API {api_id:?} is in usage plans {plans:?}; remove it from them first"
            )));
        }
    }
    for s in stages {
        d.stages.remove(&s);
    }
    d.apis.remove(api_id);
    Ok(())
}

/// A plan to create.
#[derive(Debug, Clone, Default)]
pub struct NewPlan {
    /// Chosen id, or generated.
    pub id: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Throttle.
    pub throttle: Option<Throttle>,
    /// Quota.
    pub quota: Option<Quota>,
    /// Stages with per-method throttles.
    pub api_stages: Vec<PlanStage>,
    /// How its limits are decided.
    pub admission: crate::model::Admission,
    /// A shadow plan.
    pub shadow: bool,
    /// Quota alerts (percent of the quota).
    pub alerts: Vec<u32>,
    /// Tags.
    pub tags: Tags,
}

/// Alert thresholds in ascending order (as kept; duplicates are left for
/// validation to name).
fn sorted(mut alerts: Vec<u32>) -> Vec<u32> {
    alerts.sort_unstable();
    alerts
}

/// Creates a usage plan.
pub fn create_plan(d: &mut CatalogData, new: NewPlan, now: u64) -> Result<UsagePlan, AdminError> {
    let id = match new.id {
        Some(id) => {
            validate_id("id", &id)?;
            if d.plans.contains_key(&id) {
                return Err(AdminError::AlreadyExists(format!("usage plan {id:?} already exists")));
            }
            id
        }
        None => unique_id(|id| d.plans.contains_key(id)),
    };
    validate_text("description", &new.description, DESCRIPTION_MAX_CHARS)?;
    let plan = UsagePlan {
        id: id.clone(),
        name: new.name,
        description: new.description,
        throttle: new.throttle,
        quota: new.quota,
        api_stages: new.api_stages,
        created_at_ms: now,
        admission: new.admission,
        shadow: new.shadow,
        alerts: sorted(new.alerts),
        tags: new.tags,
    };
    plan.validate()?;
    check_stages_exist(d, &plan)?;
    d.plans.insert(id, plan.clone());
    Ok(plan)
}

fn check_stages_exist(d: &CatalogData, plan: &UsagePlan) -> Result<(), AdminError> {
    for s in &plan.api_stages {
        if !d.stages.contains_key(&s.stage.to_string()) {
            return Err(AdminError::NotFound(format!(
                "stage {} does not exist; create it with `tollgate stages put {}`",
                s.stage, s.stage
            )));
        }
    }
    Ok(())
}

/// Changes to a usage plan.
#[derive(Debug, Clone, Default)]
pub struct PlanPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// `Some(None)` removes the throttle.
    pub throttle: Option<Option<Throttle>>,
    /// `Some(None)` removes the quota.
    pub quota: Option<Option<Quota>>,
    /// Stages to add.
    pub add_stages: Vec<PlanStage>,
    /// Stages to remove (`API/STAGE`).
    pub remove_stages: Vec<String>,
    /// (stage, method, throttle) to set.
    pub set_method_throttles: Vec<(String, String, Throttle)>,
    /// (stage, method) to remove.
    pub remove_method_throttles: Vec<(String, String)>,
    /// New admission.
    pub admission: Option<crate::model::Admission>,
    /// Shadow or not.
    pub shadow: Option<bool>,
    /// New quota alerts, replacing all of them (`Some` of an empty list
    /// clears them).
    pub alerts: Option<Vec<u32>>,
    /// New tags, replacing all of them (`Some` of an empty map clears them).
    pub tags: Option<Tags>,
}

/// Changes a usage plan.
pub fn update_plan(d: &mut CatalogData, id: &str, p: PlanPatch) -> Result<UsagePlan, AdminError> {
    let mut plan = d.plans.get(id).cloned().ok_or_else(|| not_found("usage plan", id))?;
    if let Some(n) = p.name {
        plan.name = n;
    }
    if let Some(s) = p.description {
        validate_text("description", &s, DESCRIPTION_MAX_CHARS)?;
        plan.description = s;
    }
    if let Some(t) = p.throttle {
        plan.throttle = t;
    }
    if let Some(q) = p.quota {
        plan.quota = q;
    }
    if let Some(a) = p.admission {
        plan.admission = a;
    }
    if let Some(s) = p.shadow {
        plan.shadow = s;
    }
    if let Some(a) = p.alerts {
        plan.alerts = sorted(a);
    }
    if let Some(t) = p.tags {
        plan.tags = t;
    }
    for s in p.remove_stages {
        let sr = StageRef::parse(&s).map_err(|e| Invalid::new("remove_stages", e.message))?;
        let before = plan.api_stages.len();
        plan.api_stages.retain(|x| x.stage != sr);
        if plan.api_stages.len() == before {
            return Err(AdminError::NotFound(format!("usage plan {id:?} does not contain stage {sr}")));
        }
    }
    for s in p.add_stages {
        if plan.api_stages.iter().any(|x| x.stage == s.stage) {
            return Err(AdminError::AlreadyExists(format!("usage plan {id:?} already contains stage {}", s.stage)));
        }
        plan.api_stages.push(s);
    }
    let mut set_by_stage: BTreeMap<StageRef, Vec<(String, Throttle)>> = BTreeMap::new();
    for (stage, method, t) in p.set_method_throttles {
        let sr = StageRef::parse(&stage).map_err(|e| Invalid::new("set_method_throttles.stage", e.message))?;
        set_by_stage.entry(sr).or_default().push((method, t));
    }
    for (sr, throttles) in set_by_stage {
        let throttles =
            parse_patterns(throttles).map_err(|e| Invalid::new("set_method_throttles.method", e.message))?;
        let ps = plan
            .api_stages
            .iter_mut()
            .find(|x| x.stage == sr)
            .ok_or_else(|| AdminError::NotFound(format!("usage plan {id:?} does not contain stage {sr}")))?;
        for (m, t) in throttles {
            set_method(&mut ps.throttle, &m, t);
        }
    }
    for (stage, method) in p.remove_method_throttles {
        let sr = StageRef::parse(&stage).map_err(|e| Invalid::new("remove_method_throttles.stage", e.message))?;
        let m = MethodPattern::parse(&method).map_err(|e| Invalid::new("remove_method_throttles.method", e.message))?;
        let ps = plan
            .api_stages
            .iter_mut()
            .find(|x| x.stage == sr)
            .ok_or_else(|| AdminError::NotFound(format!("usage plan {id:?} does not contain stage {sr}")))?;
        if !remove_method(&mut ps.throttle, &m) {
            return Err(AdminError::NotFound(format!("usage plan {id:?} has no throttle for {sr} {}", m.as_str())));
        }
    }
    plan.validate()?;
    check_stages_exist(d, &plan)?;
    d.plans.insert(id.to_string(), plan.clone());
    Ok(plan)
}

/// Deletes a usage plan and its subscriptions.
pub fn delete_plan(d: &mut CatalogData, id: &str) -> Result<(), AdminError> {
    d.plans.remove(id).ok_or_else(|| not_found("usage plan", id))?;
    d.plan_keys.retain(|pk| pk.plan_id != id);
    Ok(())
}

/// Checks that adding `key_id` to `plan_id` keeps one plan per stage per key.
pub fn check_one_plan_per_stage(d: &CatalogData, plan_id: &str, key_id: &str) -> Result<(), AdminError> {
    let plan = d.plans.get(plan_id).ok_or_else(|| not_found("usage plan", plan_id))?;
    for other_id in d.plans_of_key(key_id) {
        if other_id == plan_id {
            continue;
        }
        let Some(other) = d.plans.get(other_id) else { continue };
        if let Some(s) = plan.api_stages.iter().find(|s| other.api_stages.iter().any(|o| o.stage == s.stage)) {
            return Err(AdminError::Conflict(format!(
                "API key {key_id:?} cannot be in usage plan {plan_id:?}: it is already in usage plan {other_id:?}, which also contains stage {}; a key may have only one plan per stage",
                s.stage
            )));
        }
    }
    Ok(())
}

/// Subscribes a key to a plan.
pub fn add_plan_key(d: &mut CatalogData, plan_id: &str, key_id: &str) -> Result<ApiKey, AdminError> {
    if !d.plans.contains_key(plan_id) {
        return Err(not_found("usage plan", plan_id));
    }
    let key = d.keys.get(key_id).cloned().ok_or_else(|| not_found("API key", key_id))?;
    let pk = PlanKey { plan_id: plan_id.to_string(), key_id: key_id.to_string() };
    if d.plan_keys.contains(&pk) {
        return Err(AdminError::AlreadyExists(format!("API key {key_id:?} is already in usage plan {plan_id:?}")));
    }
    check_one_plan_per_stage(d, plan_id, key_id)?;
    d.plan_keys.insert(pk);
    Ok(key)
}

/// Unsubscribes a key from a plan.
pub fn remove_plan_key(d: &mut CatalogData, plan_id: &str, key_id: &str) -> Result<(), AdminError> {
    let pk = PlanKey { plan_id: plan_id.to_string(), key_id: key_id.to_string() };
    if !d.plan_keys.remove(&pk) {
        if !d.plans.contains_key(plan_id) {
            return Err(not_found("usage plan", plan_id));
        }
        return Err(AdminError::NotFound(format!("API key {key_id:?} is not in usage plan {plan_id:?}")));
    }
    Ok(())
}

/// One row of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line in the file.
    pub line: u32,
    /// Name.
    pub name: String,
    /// The value.
    pub value: String,
    /// Description.
    pub description: String,
    /// Enabled.
    pub enabled: bool,
    /// Plans to subscribe the key to.
    pub plan_ids: Vec<String>,
}

/// A row that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportWarning {
    /// 1-based line.
    pub line: u32,
    /// Why.
    pub message: String,
}

/// Imports rows: a value that exists updates that key, others create keys.
/// Rows that cannot be applied become warnings; with `fail_on_warnings`,
/// any warning and nothing is imported.
pub fn import_keys(
    d: &mut CatalogData,
    rows: Vec<ImportRow>,
    mut warnings: Vec<ImportWarning>,
    fail_on_warnings: bool,
    now: u64,
) -> Result<(Vec<String>, Vec<ImportWarning>), AdminError> {
    let mut by_hash: HashMap<KeyHash, String> = d.keys.values().map(|k| (k.value_hash, k.id.clone())).collect();
    let mut ids = Vec::new();
    for row in rows {
        let hash = KeyHash::of(&row.value);
        if let Some(p) = row.plan_ids.iter().find(|p| !d.plans.contains_key(*p)) {
            warnings.push(ImportWarning { line: row.line, message: format!("usage plan {p:?} does not exist") });
            continue;
        }
        let id = match by_hash.get(&hash) {
            Some(id) => {
                let k = d.keys.get_mut(id).expect("index matches the keys");
                k.name = row.name;
                k.description = row.description;
                k.enabled = row.enabled;
                k.updated_at_ms = now;
                id.clone()
            }
            None => {
                if d.old_values.contains_key(&hash.to_hex()) {
                    warnings.push(ImportWarning {
                        line: row.line,
                        message: "the value belongs to a rotated key still in its grace period".into(),
                    });
                    continue;
                }
                let id = unique_id(|id| d.keys.contains_key(id));
                d.keys.insert(
                    id.clone(),
                    ApiKey {
                        id: id.clone(),
                        name: row.name,
                        description: row.description,
                        enabled: row.enabled,
                        customer_id: String::new(),
                        value_hash: hash,
                        value_hint: value_hint(&row.value),
                        created_at_ms: now,
                        updated_at_ms: now,
                        expires_at_ms: None,
                        tags: Default::default(),
                    },
                );
                by_hash.insert(hash, id.clone());
                id
            }
        };
        let mut row_ok = true;
        for p in &row.plan_ids {
            if let Err(e) = check_one_plan_per_stage(d, p, &id) {
                warnings.push(ImportWarning { line: row.line, message: e.to_string() });
                row_ok = false;
                break;
            }
            d.plan_keys.insert(PlanKey { plan_id: p.clone(), key_id: id.clone() });
        }
        if row_ok {
            ids.push(id);
        }
    }
    if fail_on_warnings && !warnings.is_empty() {
        let shown: Vec<String> = warnings.iter().take(20).map(|w| format!("line {}: {}", w.line, w.message)).collect();
        return Err(AdminError::Invalid(Invalid::new(
            "csv",
            format!(
                "{} row(s) have problems and fail_on_warnings is set, so nothing was imported: {}",
                warnings.len(),
                shown.join("; ")
            ),
        )));
    }
    Ok((ids, warnings))
}

/// Items of a list page: those after `token` (an opaque encoding of the last
/// id of the previous page), at most `size`; and the next token.
pub fn page<T: Clone>(
    items: impl Iterator<Item = (String, T)>,
    size: u32,
    token: &str,
) -> Result<(Vec<T>, String), Invalid> {
    let size = match size {
        0 => 25,
        1..=500 => size as usize,
        _ => return Err(Invalid::new("page_size", format!("must be 1 to 500, got {size}"))),
    };
    let after = if token.is_empty() {
        None
    } else {
        let raw =
            hex::decode(token).map_err(|_| Invalid::new("page_token", "is not a token from a previous answer"))?;
        Some(String::from_utf8(raw).map_err(|_| Invalid::new("page_token", "is not a token from a previous answer"))?)
    };
    let mut out = Vec::new();
    let mut last = None;
    let mut more = false;
    for (id, item) in items {
        if after.as_ref().is_some_and(|a| &id <= a) {
            continue;
        }
        if out.len() == size {
            more = true;
            break;
        }
        last = Some(id);
        out.push(item);
    }
    let next = if more { last.map(|l| hex::encode(l.as_bytes())).unwrap_or_default() } else { String::new() };
    Ok((out, next))
}

#[cfg(test)]
mod method_spelling_tests {
    //! Method patterns through the control plane: two spellings of one
    //! pattern in one change are an error naming both; a change replaces
    //! an older spelling stored before patterns were canonical.

    use super::*;
    use crate::catalog::Catalog;

    fn setting(api_key_required: bool) -> MethodSetting {
        MethodSetting { throttle: None, api_key_required }
    }

    fn with_stage(methods: &[(&str, bool)]) -> CatalogData {
        let mut d = CatalogData::default();
        let m = methods.iter().map(|(m, k)| (m.to_string(), setting(*k))).collect();
        put_stage(&mut d, "shop/prod", None, Vec::new(), Vec::new()).unwrap();
        d.stages.get_mut("shop/prod").unwrap().methods = m;
        d
    }

    fn invalid(e: AdminError) -> Invalid {
        match e {
            AdminError::Invalid(i) => i,
            other => panic!("not INVALID_ARGUMENT: {other}"),
        }
    }

    #[test]
    fn two_spellings_in_one_put_stage_are_an_error_naming_both() {
        let mut d = with_stage(&[]);
        let methods = vec![("/a/GET".to_string(), setting(true)), ("/a//get".to_string(), setting(false))];
        let e = invalid(put_stage(&mut d, "shop/prod", None, methods, Vec::new()).unwrap_err());
        assert_eq!(e.field, "methods.method");
        assert!(e.message.contains("\"/a//get\" and \"/a/GET\""), "{e}");
    }

    #[test]
    fn put_stage_stores_the_canonical_form_in_place_of_an_older_spelling() {
        let mut d = with_stage(&[("/pets//GET", true), ("/other/GET", true)]);
        let st = put_stage(&mut d, "shop/prod", None, vec![("/pets/get".into(), setting(false))], Vec::new()).unwrap();
        let keys: Vec<&str> = st.methods.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/other/GET", "/pets/GET"]);
        assert!(!st.methods["/pets/GET"].api_key_required);
        Catalog::compile(d.clone()).unwrap();

        let mut d = with_stage(&[("/pets//GET", true)]);
        let st = put_stage(&mut d, "shop/prod", None, Vec::new(), vec!["/pets/GET".into()]).unwrap();
        assert!(st.methods.is_empty(), "{:?}", st.methods);
    }

    #[test]
    fn a_stored_stage_with_two_spellings_of_one_pattern_does_not_compile() {
        let d = with_stage(&[("/pets//GET", true), ("/pets/GET", false)]);
        let e = Catalog::compile(d).unwrap_err();
        assert!(e.to_string().contains("\"/pets/GET\" and \"/pets//GET\""), "{e}");
    }

    #[test]
    fn plan_method_throttles_two_spellings_are_an_error_and_one_replaces_the_older() {
        let mut d = with_stage(&[]);
        let t = |b| Throttle { rate_limit: 1.0, burst_limit: b };
        let mut stage = PlanStage { stage: StageRef::parse("shop/prod").unwrap(), throttle: BTreeMap::new() };
        stage.throttle.insert("/pets//GET".into(), t(1));
        let new = NewPlan { id: Some("p".into()), name: "P".into(), api_stages: vec![stage], ..Default::default() };
        d.plans.insert("p".into(), create_plan(&mut d.clone(), new, 1).unwrap());

        let patch = |ms: &[&str]| PlanPatch {
            set_method_throttles: ms.iter().map(|m| ("shop/prod".to_string(), m.to_string(), t(2))).collect(),
            ..Default::default()
        };
        let e = invalid(update_plan(&mut d.clone(), "p", patch(&["/a/GET", "//a/GET"])).unwrap_err());
        assert!(e.message.contains("\"//a/GET\" and \"/a/GET\""), "{e}");

        let plan = update_plan(&mut d, "p", patch(&["/pets/GET"])).unwrap();
        let keys: Vec<&str> = plan.api_stages[0].throttle.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/pets/GET"]);
        let remove = PlanPatch {
            remove_method_throttles: vec![("shop/prod".into(), "//pets/get".into())],
            ..Default::default()
        };
        assert!(update_plan(&mut d, "p", remove).unwrap().api_stages[0].throttle.is_empty());
    }
}
