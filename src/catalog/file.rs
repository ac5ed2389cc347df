//! The declarative catalog file (`--config FILE`, YAML).
//!
//! ```yaml
//! apis:
//!   - id: petstore                # [A-Za-z0-9_.-]{1,64}
//!     name: Pet Store             # optional
//!     stages:
//!       - name: prod
//!         methods:                # method settings, by pattern
//!           /pets/GET: {}
//!           /pets/{petId}/GET: { throttle: { rate_limit: 100, burst_limit: 200 } }
//!           /health/GET: { api_key_required: false }
//! usage_plans:
//!   - id: basic                   # optional; defaults to the name, lower-cased, with '-' for other characters
//!     name: Basic
//!     throttle: { rate_limit: 1, burst_limit: 5 }
//!     quota: { limit: 8, period: DAY, offset: 0 }
//!     api_stages:
//!       - stage: petstore/prod
//!         throttle:           # block style: in a flow map, `{` would start a map
//!           /pets/{petId}/GET: { rate_limit: 1, burst_limit: 1 }
//! api_keys:
//!   - name: demo
//!     value: tgdemo0123456789abcdefghijklmnopqrstuvw   # or value_sha256: <64 hex digits>
//!     usage_plans: [basic]
//! ```
//!
//! Every error names the file, the line and the field. Values are hashed as
//! soon as they are read and never kept.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::{CatalogData, CatalogError, PlanKey};
use crate::model::method::UniquePatterns;
use crate::model::{
    validate_id, validate_key_value, validate_tags, Api, ApiKey, KeyHash, MethodSetting, PlanStage, Quota, Stage,
    StageRef, Tags, Throttle, UsagePlan,
};

/// An error in a catalog file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file as given.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for FileError {}

/// A string checked as an identifier while the file is read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate_id("id", &s).map_err(|e| serde::de::Error::custom(e.message))?;
        Ok(Id(s))
    }
}

/// Values by method pattern, checked while the file is read: each pattern
/// put in canonical form, and a second spelling of one pattern an error
/// raised at that entry, naming both ([`UniquePatterns`]).
struct Methods<V>(BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Methods<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = Methods<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from method patterns (like /pets/GET) to their settings")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut unique = UniquePatterns::default();
                let mut out = BTreeMap::new();
                while let Some(raw) = map.next_key::<String>()? {
                    let p = unique.add(&raw).map_err(|e| serde::de::Error::custom(e.message))?;
                    out.insert(p.as_str().to_string(), map.next_value()?);
                }
                Ok(Methods(out))
            }
        }

        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

impl<V> Default for Methods<V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

/// A throttle checked while the file is read.
#[derive(Debug, Clone, Copy)]
struct VThrottle(Throttle);

impl<'de> Deserialize<'de> for VThrottle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = Throttle::deserialize(d)?;
        t.validate().map_err(|e| serde::de::Error::custom(format!("throttle {}", e)))?;
        Ok(VThrottle(t))
    }
}

/// A quota checked while the file is read.
#[derive(Debug, Clone, Copy)]
struct VQuota(Quota);

impl<'de> Deserialize<'de> for VQuota {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let q = Quota::deserialize(d)?;
        q.validate().map_err(|e| serde::de::Error::custom(format!("quota {}", e)))?;
        Ok(VQuota(q))
    }
}

/// A stage reference checked while the file is read.
#[derive(Debug, Clone)]
struct VStage(StageRef);

impl<'de> Deserialize<'de> for VStage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(VStage(StageRef::parse(&s).map_err(|e| serde::de::Error::custom(e.message))?))
    }
}

/// A key value, hashed while the file is read.
#[derive(Debug, Clone, Copy)]
struct VHash(KeyHash);

impl<'de> Deserialize<'de> for VHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate_key_value("value", &s).map_err(|e| serde::de::Error::custom(e.to_string()))?;
        Ok(VHash(KeyHash::of(&s)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoot {
    #[serde(default)]
    apis: Vec<FileApi>,
    #[serde(default)]
    usage_plans: Vec<FilePlan>,
    #[serde(default)]
    api_keys: Vec<FileKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    id: Id,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    stages: Vec<FileStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStage {
    name: Id,
    #[serde(default)]
    methods: Methods<FileMethod>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMethod {
    #[serde(default)]
    throttle: Option<VThrottle>,
    #[serde(default = "yes")]
    api_key_required: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlan {
    #[serde(default)]
    id: Option<Id>,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    throttle: Option<VThrottle>,
    #[serde(default)]
    quota: Option<VQuota>,
    #[serde(default)]
    api_stages: Vec<FilePlanStage>,
    #[serde(default)]
    admission: crate::model::Admission,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    alerts: Vec<u32>,
    #[serde(default)]
    tags: Tags,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlanStage {
    stage: VStage,
    #[serde(default)]
    throttle: Methods<VThrottle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    #[serde(default)]
    id: Option<Id>,
    name: String,
    #[serde(default)]
    value: Option<VHash>,
    #[serde(default)]
    value_sha256: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    usage_plans: Vec<String>,
    #[serde(default)]
    tags: Tags,
}

/// The id a plan gets from its name when the file gives none.
pub fn id_from_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .take(64)
        .collect();
    if s.is_empty() {
        "plan".into()
    } else {
        s
    }
}

/// The id a key gets when the file gives none: derived from the value's hash
/// (so it is stable across restarts) without revealing it.
pub fn key_id_from_hash(hash: &KeyHash) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::new().chain_update(b"tollgate key id\0").chain_update(hash.0).finalize();
    hex::encode(&d[..5])
}

/// A catalog file as read: its records, and the digest that tells this
/// version of the file from every other (docs/admin.md, "The catalog file at
/// start").
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogFile {
    /// The file as given, for logs.
    pub name: String,
    /// The SHA-256 of its bytes, in hex.
    pub digest: String,
    /// Its records.
    pub records: CatalogData,
}

/// Reads and checks a catalog file. `now_ms` stamps creation times.
pub fn read(path: &Path, now_ms: u64) -> Result<CatalogFile, FileError> {
    let name = path.display().to_string();
    let cannot_read = |e: &dyn fmt::Display| FileError {
        file: name.clone(),
        line: None,
        column: None,
        message: format!("cannot read: {e}"),
    };
    let bytes = std::fs::read(path).map_err(|e| cannot_read(&e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| cannot_read(&e))?;
    let records = parse(&name, text, now_ms)?;
    Ok(CatalogFile { digest: super::bootstrap::digest(&bytes), name, records })
}

/// Reads and checks a catalog file's records. `now_ms` stamps creation times.
pub fn load(path: &Path, now_ms: u64) -> Result<CatalogData, FileError> {
    read(path, now_ms).map(|f| f.records)
}

/// Parses and checks catalog text; `file` names it in errors.
pub fn parse(file: &str, text: &str, now_ms: u64) -> Result<CatalogData, FileError> {
    // A file in JSON (which is YAML too) is read by a JSON parser: the same
    // records, ten times faster, for catalogs of millions of keys.
    if text.trim_start().starts_with('{') {
        let root: FileRoot = serde_json::from_str(text).map_err(|e| {
            let mut msg = e.to_string();
            if let Some(i) = msg.find(" at line ") {
                msg.truncate(i);
            }
            let line = refine_line(text, e.line().max(1), &msg).min(last_line(text));
            let column = (line == e.line()).then_some(e.column());
            FileError { file: file.to_string(), line: Some(line), column, message: msg }
        })?;
        return records(file, text, root, now_ms);
    }
    let root: FileRoot = serde_yaml::from_str(text).map_err(|e| {
        let loc = e.location();
        let mut msg = e.to_string();
        // serde_yaml appends " at line L column C"; the place is shown in front.
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        // At the end of the text serde_yaml may name the line after the last.
        let line = refine_line(text, loc.as_ref().map_or(1, |l| l.line()), &msg).min(last_line(text));
        let column = loc.as_ref().filter(|l| l.line() == line).map(|l| l.column());
        FileError { file: file.to_string(), line: Some(line), column, message: msg }
    })?;
    records(file, text, root, now_ms)
}

/// Checks the records of a parsed file and puts them in a catalog.
fn records(file: &str, text: &str, root: FileRoot, now_ms: u64) -> Result<CatalogData, FileError> {
    let err = |needle: &str, message: String| FileError {
        file: file.to_string(),
        line: Some(place(text, needle, section_of(&message))),
        column: None,
        message,
    };

    let mut data = CatalogData::default();
    let mut stage_names = HashSet::new();
    for a in root.apis {
        if data.apis.contains_key(&a.id.0) {
            return Err(err(&a.id.0, format!("apis: API id {:?} is used twice", a.id.0)));
        }
        for s in a.stages {
            let stage = StageRef { api_id: a.id.0.clone(), stage: s.name.0 };
            if !stage_names.insert(stage.clone()) {
                return Err(err(&stage.stage, format!("apis: stage {stage} is listed twice")));
            }
            let methods = s
                .methods
                .0
                .into_iter()
                .map(|(m, fm)| {
                    (m, MethodSetting { throttle: fm.throttle.map(|t| t.0), api_key_required: fm.api_key_required })
                })
                .collect();
            data.stages.insert(stage.to_string(), Stage { stage, methods });
        }
        data.apis.insert(a.id.0.clone(), Api { name: a.name.unwrap_or_else(|| a.id.0.clone()), id: a.id.0 });
    }

    for p in root.usage_plans {
        let id = p.id.map(|i| i.0).unwrap_or_else(|| id_from_name(&p.name));
        let plan = UsagePlan {
            id: id.clone(),
            name: p.name.clone(),
            description: p.description,
            throttle: p.throttle.map(|t| t.0),
            quota: p.quota.map(|q| q.0),
            api_stages: p
                .api_stages
                .into_iter()
                .map(|s| PlanStage {
                    stage: s.stage.0,
                    throttle: s.throttle.0.into_iter().map(|(m, t)| (m, t.0)).collect(),
                })
                .collect(),
            created_at_ms: now_ms,
            admission: p.admission,
            shadow: p.shadow,
            alerts: {
                let mut a = p.alerts;
                a.sort_unstable();
                a
            },
            tags: p.tags,
        };
        plan.validate().map_err(|e| err(&p.name, format!("usage_plans: plan {:?}: {e}", p.name)))?;
        for s in &plan.api_stages {
            if !stage_names.contains(&s.stage) {
                return Err(err(
                    &s.stage.to_string(),
                    format!("usage_plans: plan {:?}: stage {} is not defined under apis", plan.name, s.stage),
                ));
            }
        }
        if data.plans.contains_key(&plan.id) {
            return Err(err(&p.name, format!("usage_plans: plan id {:?} is used twice", plan.id)));
        }
        data.plans.insert(plan.id.clone(), plan);
    }

    // Values seen so far: a set, so that a file of a million keys is checked
    // in linear time.
    let mut hashes = HashSet::with_capacity(root.api_keys.len());
    for k in root.api_keys {
        if k.name.is_empty() || k.name.len() > 1024 {
            return Err(err("api_keys", "api_keys: name must be 1 to 1024 characters".into()));
        }
        let hash = match (k.value, k.value_sha256.as_deref()) {
            (Some(v), None) => v.0,
            (None, Some(h)) => KeyHash::from_hex(h)
                .ok_or_else(|| err(h, format!("api_keys: key {:?}: value_sha256 must be 64 hex digits", k.name)))?,
            _ => {
                return Err(err(
                    &k.name,
                    format!("api_keys: key {:?}: give exactly one of value and value_sha256", k.name),
                ))
            }
        };
        let expires_at_ms = match &k.expires_at {
            None => None,
            Some(s) => Some(
                humantime::parse_rfc3339(s)
                    .map_err(|e| {
                        err(
                            s,
                            format!(
                                "api_keys: key {:?}: expires_at {s:?}: {e}; write e.g. 2027-01-31T00:00:00Z",
                                k.name
                            ),
                        )
                    })?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            ),
        };
        validate_tags(&k.tags).map_err(|e| err(&k.name, format!("api_keys: key {:?}: {e}", k.name)))?;
        let id = k.id.map(|i| i.0).unwrap_or_else(|| key_id_from_hash(&hash));
        if !hashes.insert(hash) {
            return Err(err(&k.name, format!("api_keys: key {:?} has the same value as another key", k.name)));
        }
        if data.keys.contains_key(&id) {
            return Err(err(&k.name, format!("api_keys: key id {id:?} is used twice")));
        }
        for plan in &k.usage_plans {
            let Some(p) = data.plans.values().find(|p| &p.id == plan || &p.name == plan) else {
                return Err(err(
                    plan,
                    format!("api_keys: key {:?}: usage plan {plan:?} is not defined under usage_plans", k.name),
                ));
            };
            data.plan_keys.insert(PlanKey { plan_id: p.id.clone(), key_id: id.clone() });
        }
        data.keys.insert(
            id.clone(),
            ApiKey {
                id,
                name: k.name,
                description: k.description,
                enabled: k.enabled,
                customer_id: k.customer_id,
                value_hash: hash,
                value_hint: String::new(),
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                expires_at_ms,
                tags: k.tags,
            },
        );
    }
    // The one-plan-per-stage rule and the other cross-checks.
    super::records::check_partial(&data).map_err(|e| {
        let msg = match &e {
            CatalogError::Invalid(i) => i.message.clone(),
            CatalogError::Conflict(m) => m.clone(),
        };
        let needle = msg.split('"').nth(1).unwrap_or("api_keys").to_string();
        err(&needle, e.to_string())
    })?;
    Ok(data)
}

/// serde_yaml places an error raised while checking a value (a negative
/// rate, a bad method pattern) at the start of the enclosing entry. This moves
/// it to the line, at or after that one, that holds the offending value (the
/// first quoted string of the message) or field (the last word before the
/// message's first `:` after the path).
fn refine_line(text: &str, line: usize, msg: &str) -> usize {
    let detail = msg.split_once(": ").map(|(_, d)| d).unwrap_or(msg);
    let needle = match detail.split('"').nth(1) {
        Some(q) if !q.is_empty() => q.to_string(),
        _ => detail.split(':').next().unwrap_or("").split([' ', '.']).next_back().unwrap_or("").to_string(),
    };
    if needle.is_empty() {
        return line;
    }
    text.lines()
        .enumerate()
        .skip(line.saturating_sub(1))
        .take(200)
        .find(|(_, l)| l.contains(needle.as_str()))
        .map(|(i, _)| i + 1)
        .unwrap_or(line)
}

/// The first line (1-based) containing `needle`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// The line of an error about `needle`: the first line holding it, else the
/// line of its top-level `section`, else 1. A value is not always written as
/// it reads (quoted, escaped, folded over lines), so it may not be found.
fn place(text: &str, needle: &str, section: &str) -> usize {
    line_of(text, needle).or_else(|| line_of(text, section)).unwrap_or(1)
}

/// The top-level section an error message is about: `apis`, `usage_plans`
/// or `api_keys` (the messages of the file's own checks start with it; those
/// of the catalog's cross-checks name a stage, a usage plan or a key).
fn section_of(message: &str) -> &'static str {
    if message.starts_with("apis") || message.starts_with("stage") {
        "apis"
    } else if message.starts_with("usage_plans") || message.starts_with("usage plan") {
        "usage_plans"
    } else {
        "api_keys"
    }
}

/// The last line (1-based) as an editor shows it: a final newline opens an
/// empty one.
fn last_line(text: &str) -> usize {
    text.matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GOOD: &str = r#"
apis:
  - id: petstore
    stages:
      - name: prod
        methods:
          /pets/GET: {}
          /pets/{petId}/GET: {}
usage_plans:
  - name: Basic
    throttle: { rate_limit: 1, burst_limit: 5 }
    quota: { limit: 8, period: DAY }
    api_stages:
      - stage: petstore/prod
api_keys:
  - name: demo
    value: tgdemo0123456789abcdefghijklmnopqrstuvw
    usage_plans: [Basic]
"#;

    #[test]
    fn parses_the_rich_sample() {
        let d = parse("q.yaml", RICH, 1).unwrap();
        assert_eq!((d.stages.len(), d.plans.len(), d.keys.len(), d.plan_keys.len()), (2, 2, 2, 2));
    }

    /// A file in JSON is read by a JSON parser: the same records as its
    /// YAML twin, and errors still name their line.
    #[test]
    fn json_files_give_the_same_records() {
        let json = r#"{
  "apis": [{"id": "petstore", "stages": [{"name": "prod", "methods": {"/pets/GET": {}, "/pets/{petId}/GET": {}}}]}],
  "usage_plans": [{"name": "Basic", "throttle": {"rate_limit": 1, "burst_limit": 5},
                   "quota": {"limit": 8, "period": "DAY"}, "api_stages": [{"stage": "petstore/prod"}]}],
  "api_keys": [{"name": "demo", "value": "tgdemo0123456789abcdefghijklmnopqrstuvw", "usage_plans": ["Basic"]}]
}"#;
        assert_eq!(parse("q.json", json, 1).unwrap(), parse("q.yaml", GOOD, 1).unwrap());
        let bad = json.replace("\"limit\": 8", "\"limit\": -8");
        let e = parse("q.json", &bad, 1).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn parses_the_quickstart_shape() {
        let d = parse("q.yaml", GOOD, 1).unwrap();
        assert!(d.plans.contains_key("basic"));
        let key = d.keys.values().next().unwrap();
        let subs: Vec<PlanKey> = d.plan_keys.iter().cloned().collect();
        assert_eq!(subs, vec![PlanKey { plan_id: "basic".into(), key_id: key.id.clone() }]);
        assert_eq!(key.value_hash, KeyHash::of("tgdemo0123456789abcdefghijklmnopqrstuvw"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = GOOD.replace("rate_limit: 1,", "rate_limit: -1,");
        let e = parse("q.yaml", &bad, 1).unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.to_string().starts_with("q.yaml:11:"), "{e}");
        assert!(e.message.contains("rate_limit"), "{e}");

        let bad = GOOD.replace("usage_plans: [Basic]", "usage_plans: [Gold]");
        let e = parse("q.yaml", &bad, 1).unwrap_err();
        assert_eq!(e.line, Some(18), "{e}");
        assert!(e.message.contains("\"Gold\""), "{e}");

        let bad = GOOD.replace("/pets/GET: {}", "pets/GET: {}");
        let e = parse("q.yaml", &bad, 1).unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");

        let e = parse("q.yaml", "apis: [\n  - id: x\n  bad", 1).unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    /// Found by the property tests: an error about a value written otherwise
    /// than it reads (here folded over two lines) had no line, and an error
    /// at the end of a file without a final newline was placed on the line
    /// after the last.
    #[test]
    fn every_error_names_a_line_of_the_file() {
        let folded = GOOD.replace("usage_plans: [Basic]", "usage_plans: [Ba\n      sic]");
        let e = parse("q.yaml", &folded, 1).unwrap_err();
        assert!(e.message.contains("\"Ba sic\""), "{e}");
        assert_eq!(e.line, Some(15), "the api_keys section: {e}");
        let e = parse("q.yaml", "apis: [", 1).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn two_spellings_of_one_method_are_an_error_at_the_second() {
        let bad = GOOD
            .replace("          /pets/{petId}/GET: {}", "          /pets/{petId}/GET: {}\n          /pets//get: {}");
        let e = parse("q.yaml", &bad, 1).unwrap_err();
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.message.contains("\"/pets//get\" and \"/pets/GET\""), "{e}");
        let bad = GOOD.replace(
            "      - stage: petstore/prod\n",
            "      - stage: petstore/prod\n        throttle:\n          /pets/GET: { rate_limit: 1, burst_limit: 1 }\n          //pets/GET: { rate_limit: 2, burst_limit: 2 }\n",
        );
        let e = parse("q.yaml", &bad, 1).unwrap_err();
        assert_eq!(e.line, Some(17), "{e}");
        assert!(e.message.contains("\"//pets/GET\" and \"/pets/GET\""), "{e}");
    }

    #[test]
    fn one_plan_per_stage_per_key() {
        let two = GOOD
            .replace("api_keys:", "  - name: Gold\n    api_stages:\n      - stage: petstore/prod\napi_keys:")
            .replace("usage_plans: [Basic]", "usage_plans: [Basic, Gold]");
        let e = parse("q.yaml", &two, 1).unwrap_err();
        assert!(e.message.contains("one plan per stage"), "{e}");
    }

    /// A file with every kind of entry, to mutate.
    const RICH: &str = r#"apis:
  - id: petstore
    name: Pet Store
    stages:
      - name: prod
        methods:
          /pets/GET: {}
          /pets/{petId}/GET: { throttle: { rate_limit: 100, burst_limit: 200 } }
          /health/GET: { api_key_required: false }
          "*/*": { api_key_required: true }
      - name: beta
usage_plans:
  - id: basic
    name: Basic
    description: the basic plan
    throttle: { rate_limit: 1, burst_limit: 5 }
    quota: { limit: 8, period: DAY, offset: 1 }
    api_stages:
      - stage: petstore/prod
        throttle: { "/pets/{petId}/GET": { rate_limit: 1, burst_limit: 1 } }
  - name: Gold Plan
    api_stages: [{ stage: petstore/beta }]
api_keys:
  - name: demo
    value: tgdemo0123456789abcdefghijklmnopqrstuvw
    description: a key
    customer_id: c1
    expires_at: 2030-01-01T00:00:00Z
    usage_plans: [basic]
  - id: other
    name: hashed
    value_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    enabled: false
    usage_plans: [gold-plan]
"#;

    fn check(text: &str) -> Result<(), TestCaseError> {
        if let Err(e) = parse("f.yaml", text, 1) {
            let l = e.line.ok_or_else(|| TestCaseError::fail(format!("no line: {e}\n{text}")))?;
            prop_assert!((1..=last_line(text)).contains(&l), "line {l} of {}: {e}\n{text}", last_line(text));
        }
        Ok(())
    }

    /// Characters that matter to YAML, to the catalog's fields and to
    /// method patterns.
    fn yaml_char() -> impl Strategy<Value = char> {
        prop::sample::select(":- \n\t{}[],\"'#&*!|>%@`/?.0129aAzZ_\u{e9}\u{0}".chars().collect::<Vec<_>>())
    }

    /// Edits of a valid file: characters replaced, inserted or removed;
    /// lines removed, duplicated or swapped.
    fn mutated(base: &'static str) -> impl Strategy<Value = String> {
        let edit = (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..6, yaml_char());
        prop::collection::vec(edit, 1..6).prop_map(move |edits| {
            let mut chars: Vec<char> = base.chars().collect();
            for (at, other, op, c) in edits {
                let i = at.index(chars.len() + 1);
                match op {
                    0 if i < chars.len() => chars[i] = c,
                    1 => chars.insert(i, c),
                    2 if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ => {
                        let text: String = chars.iter().collect();
                        let mut lines: Vec<&str> = text.split('\n').collect();
                        let (a, b) = (at.index(lines.len()), other.index(lines.len()));
                        match op {
                            3 => {
                                lines.remove(a);
                            }
                            4 => lines.insert(a, lines[b]),
                            _ => lines.swap(a, b),
                        }
                        chars = lines.join("\n").chars().collect();
                    }
                }
            }
            chars.into_iter().collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// Any text: no panic, and an error names a line of the file.
        #[test]
        fn any_text(text in prop_oneof![any::<String>(), prop::collection::vec(yaml_char(), 0..200).prop_map(|v| v.into_iter().collect())]) {
            check(&text)?;
        }

        #[test]
        fn mutations_of_a_valid_file(text in mutated(RICH)) {
            check(&text)?;
        }
    }
}
