//! The things tollgate knows about (docs/semantics.md, "Things and their
//! names"): APIs, stages and their method settings, usage plans, API keys, and
//! the limits they carry, with the validation rules each must pass.
//!
//! These types are plain data. The catalog (`crate::catalog`) holds them and
//! compiles them for fast lookup; the limiter (`crate::limiter`) turns them
//! into the limits of one decision.

pub mod method;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use method::{MethodPattern, MethodTable};

/// A validation failure: the field it concerns and what is wrong, in words a
/// person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, e.g. `throttle.rate_limit` or `api_key`.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl Invalid {
    /// Builds a validation failure for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// Prefixes the field with its parent, e.g. `throttle` + `rate_limit`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() { parent.to_string() } else { format!("{parent}.{}", self.field) };
        self
    }
}

/// A token bucket: capacity `burst_limit`, refilled at `rate_limit` tokens per
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// Steady rate, requests per second (may be fractional).
    pub rate_limit: f64,
    /// Bucket capacity: how many requests may arrive at once.
    pub burst_limit: u32,
}

/// The largest accepted `rate_limit`, requests per second.
pub const MAX_RATE: f64 = 1e9;
/// The smallest positive `rate_limit`: rates are kept in thousandths of a
/// request per second ([`Throttle::rate_milli`]).
pub const MIN_RATE: f64 = 0.001;
/// The largest accepted `burst_limit`. Buckets count in billionths of a token
/// (`store::NANO`), and a full bucket plus one request's cost must stay below
/// 2^53, the largest integer Redis's Lua keeps exactly.
pub const MAX_BURST: u32 = 1_000_000;

impl Throttle {
    /// Checks the bounds (docs/semantics.md, "Token bucket"): `rate_limit` is
    /// 0 or a multiple of 0.001 from 0.001 to 1e9; `burst_limit` at most
    /// 1,000,000; a zero rate only with a zero burst (a bucket that never
    /// refills is a quota).
    pub fn validate(&self) -> Result<(), Invalid> {
        let r = self.rate_limit;
        if !r.is_finite() || r < 0.0 {
            return Err(Invalid::new("rate_limit", format!("must be a finite number >= 0, got {r}")));
        }
        if r > MAX_RATE {
            return Err(Invalid::new(
                "rate_limit",
                format!("must be at most {MAX_RATE:e} requests per second, got {r}"),
            ));
        }
        if r != 0.0 && r < MIN_RATE {
            return Err(Invalid::new(
                "rate_limit",
                format!("must be 0 or at least {MIN_RATE} (one request per 1,000 seconds), got {r}"),
            ));
        }
        let milli = r * 1000.0;
        if (milli - milli.round()).abs() > 1e-6 * milli.max(1.0) {
            return Err(Invalid::new(
                "rate_limit",
                format!(
                    "must be a multiple of {MIN_RATE} (rates are kept in thousandths of a request per second), got {r}"
                ),
            ));
        }
        if self.burst_limit > MAX_BURST {
            return Err(Invalid::new("burst_limit", format!("must be at most {MAX_BURST}, got {}", self.burst_limit)));
        }
        if r == 0.0 && self.burst_limit != 0 {
            return Err(Invalid::new(
                "rate_limit",
                "is 0 with a burst_limit above 0: such a bucket never refills; use a quota, or set both to 0 to block all requests",
            ));
        }
        Ok(())
    }

    /// The rate in thousandths of a request per second, the unit both stores
    /// count in: a bucket gains `rate_milli` billionths of a token per
    /// microsecond, exactly.
    pub fn rate_milli(&self) -> u64 {
        // Validated rates are multiples of 0.001 up to 1e9: exact after rounding.
        (self.rate_limit * 1000.0).round().clamp(0.0, MAX_RATE * 1000.0) as u64
    }

    /// Length of the policy window in seconds (burst / rate, rounded up, at
    /// least 1).
    pub fn window_secs(&self) -> u64 {
        let milli = self.rate_milli();
        if milli == 0 {
            return 1;
        }
        (u64::from(self.burst_limit) * 1000).div_ceil(milli).max(1)
    }
}

/// The period of a quota, aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Period {
    /// 00:00 UTC to 00:00 UTC.
    Day,
    /// Monday 00:00 UTC to the next Monday.
    Week,
    /// The 1st, 00:00 UTC, to the 1st of the next month.
    Month,
}

impl Period {
    /// The one-letter code used in Redis keys and scripts.
    pub fn code(self) -> &'static str {
        match self {
            Period::Day => "D",
            Period::Week => "W",
            Period::Month => "M",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Day => "DAY",
            Period::Week => "WEEK",
            Period::Month => "MONTH",
        })
    }
}

impl std::str::FromStr for Period {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s.to_ascii_uppercase().as_str() {
            "DAY" => Ok(Period::Day),
            "WEEK" => Ok(Period::Week),
            "MONTH" => Ok(Period::Month),
            _ => Err(Invalid::new("period", format!("must be DAY, WEEK or MONTH, got {s:?}"))),
        }
    }
}

/// The largest quota limit: counters are exact in Redis's Lua up to 2^53.
pub const MAX_QUOTA_LIMIT: u64 = (1 << 53) - 1;

/// A quota: at most `limit` requests per period per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests allowed per period.
    pub limit: u64,
    /// The period.
    pub period: Period,
    /// Requests subtracted from the limit in the period in which the plan was
    /// created (API Gateway's `offset`).
    #[serde(default)]
    pub offset: u64,
    /// The IANA time zone whose local midnight starts its periods
    /// (docs/semantics.md, "Local-time quotas"); `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<crate::localtime::Zone>,
    /// MONTH only: the day of the month its periods start on, 1–28; 0: the
    /// 1st.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub anchor_day: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Quota {
    /// Checks the limit is positive and the offset below it.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.limit == 0 {
            return Err(Invalid::new("limit", "must be at least 1"));
        }
        // Redis's Lua counts in doubles: exact up to 2^53.
        if self.limit > MAX_QUOTA_LIMIT {
            return Err(Invalid::new("limit", format!("must be at most {MAX_QUOTA_LIMIT}, got {}", self.limit)));
        }
        if self.offset >= self.limit {
            return Err(Invalid::new(
                "offset",
                format!("must be below the limit ({}), got {}", self.limit, self.offset),
            ));
        }
        match (self.period, self.anchor_day) {
            (_, 0) => {}
            (Period::Month, 1..=28) => {}
            (Period::Month, a) => {
                return Err(Invalid::new(
                    "anchor_day",
                    format!("must be 1 to 28 (a day every month has), got {a}; 0 or 1 starts months on the 1st"),
                ))
            }
            (p, a) => {
                return Err(Invalid::new(
                    "anchor_day",
                    format!("applies to MONTH quotas only, got {a} on a {p} quota; leave it 0"),
                ))
            }
        }
        Ok(())
    }

    /// A quota in UTC starting on the 1st: decided by the scripts' own
    /// calendar arithmetic, with no period table.
    pub fn is_utc_plain(&self) -> bool {
        self.time_zone.is_none() && self.anchor_day <= 1
    }

    /// Its calendar (zone, period, anchor).
    pub fn calendar(&self) -> crate::localtime::Calendar {
        crate::localtime::Calendar { zone: self.time_zone, period: self.period, anchor: self.anchor_day.min(28) as u8 }
    }
}

/// Validates an identifier (API id, stage name, plan id, key id).
pub fn validate_id(field: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > 64 {
        return Err(Invalid::new(field, format!("must be 1 to 64 characters, got {}", s.len())));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
        return Err(Invalid::new(field, format!("{s:?} may contain only letters, digits, '_', '-' and '.'")));
    }
    Ok(())
}

/// A stage of an API, written `API/STAGE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StageRef {
    /// The API's id.
    pub api_id: String,
    /// The stage's name.
    pub stage: String,
}

impl StageRef {
    /// Parses `API/STAGE`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let Some((api, stage)) = s.split_once('/') else {
            return Err(Invalid::new("stage", format!("{s:?} must be written API/STAGE, like \"petstore/prod\"")));
        };
        validate_id("stage", api).map_err(|e| Invalid::new("stage", format!("API id {}", e.message)))?;
        validate_id("stage", stage).map_err(|e| Invalid::new("stage", format!("stage name {}", e.message)))?;
        Ok(Self { api_id: api.to_string(), stage: stage.to_string() })
    }
}

impl fmt::Display for StageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.api_id, self.stage)
    }
}

/// An API: the unit that a usage plan's stages belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Api {
    /// Chosen by the operator, e.g. `petstore`.
    pub id: String,
    /// A readable name.
    pub name: String,
}

/// What a stage says about one method (or `*/*`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MethodSetting {
    /// Throttle for all callers of this method together.
    pub throttle: Option<Throttle>,
    /// Whether callers must present an API key (usage plans apply only then).
    pub api_key_required: bool,
}

impl Default for MethodSetting {
    fn default() -> Self {
        Self { throttle: None, api_key_required: true }
    }
}

/// A deployed stage of an API, with its method settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Which stage.
    pub stage: StageRef,
    /// Settings by method pattern (`/pets/GET`, `/pets/{petId}/GET`, `*/*`).
    pub methods: BTreeMap<String, MethodSetting>,
}

/// One stage of a usage plan, with optional per-method throttles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStage {
    /// The stage.
    pub stage: StageRef,
    /// Per-key throttles of single methods, by method pattern.
    pub throttle: BTreeMap<String, Throttle>,
}

/// How a plan's limits are decided (docs/semantics.md, "Leased admission").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// Every request decided by the store (the default).
    #[default]
    Exact,
    /// On Redis, a replica leases small blocks of tokens and admits from
    /// them locally (`crate::limiter::lease`); never more than the limits.
    Leased,
}

impl Admission {
    /// Whether this is the default (`Exact`).
    pub fn is_exact(&self) -> bool {
        *self == Admission::Exact
    }
}

/// A usage plan: who may call which stages, how fast and how much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsagePlan {
    /// Identifier.
    pub id: String,
    /// Readable name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Per-key throttle over all stages of the plan; `None` = unlimited.
    pub throttle: Option<Throttle>,
    /// Per-key quota over all stages of the plan; `None` = unlimited.
    pub quota: Option<Quota>,
    /// The stages the plan grants.
    pub api_stages: Vec<PlanStage>,
    /// Creation time, ms since the Unix epoch (the quota offset applies in
    /// the period containing it).
    pub created_at_ms: u64,
    /// How its limits are decided.
    #[serde(default, skip_serializing_if = "Admission::is_exact")]
    pub admission: Admission,
    /// A shadow plan decides and counts as usual but never denies for its
    /// own limits: the answer says it would have (docs/semantics.md,
    /// "Shadow plans").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Quota alerts: percentages of the quota whose crossing records an
    /// event, once per key, threshold and period ([`validate_alerts`];
    /// docs/semantics.md, "Quota alerts"). Kept sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<u32>,
    /// Tags ([`validate_tags`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

impl UsagePlan {
    /// Validates the plan's own fields (not references to other things).
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_id("id", &self.id)?;
        if self.name.is_empty() || self.name.len() > 1024 {
            return Err(Invalid::new("name", "must be 1 to 1024 characters"));
        }
        if let Some(t) = &self.throttle {
            t.validate().map_err(|e| e.within("throttle"))?;
        }
        if let Some(q) = &self.quota {
            q.validate().map_err(|e| e.within("quota"))?;
        }
        validate_tags(&self.tags)?;
        validate_alerts(&self.alerts, self.quota.is_some())?;
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.api_stages.iter().enumerate() {
            if !seen.insert(&s.stage) {
                return Err(Invalid::new(format!("api_stages[{i}]"), format!("stage {} is listed twice", s.stage)));
            }
            method::canonical_patterns(s.throttle.iter())
                .map_err(|e| Invalid::new(format!("api_stages[{i}].throttle"), e.message))?;
            for (m, t) in &s.throttle {
                t.validate().map_err(|e| e.within(&format!("api_stages[{i}].throttle[{m}]")))?;
            }
        }
        Ok(())
    }
}

/// The most alert thresholds a plan may list.
pub const ALERTS_MAX: usize = 10;

/// Checks a plan's quota alerts: each 1–100 (percent of the quota), at most
/// [`ALERTS_MAX`], no threshold twice, and only on a plan with a quota.
pub fn validate_alerts(alerts: &[u32], has_quota: bool) -> Result<(), Invalid> {
    if alerts.is_empty() {
        return Ok(());
    }
    if !has_quota {
        return Err(Invalid::new("alerts", "need a quota: an alert is a percentage of the plan's quota"));
    }
    if alerts.len() > ALERTS_MAX {
        return Err(Invalid::new("alerts", format!("at most {ALERTS_MAX} thresholds, got {}", alerts.len())));
    }
    let mut seen = std::collections::BTreeSet::new();
    for &a in alerts {
        if !(1..=100).contains(&a) {
            return Err(Invalid::new("alerts", format!("{a} is not a percentage of the quota from 1 to 100")));
        }
        if !seen.insert(a) {
            return Err(Invalid::new("alerts", format!("{a} is listed twice")));
        }
    }
    Ok(())
}

/// The SHA-256 of an API key value: the only form in which values are kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a key value.
    pub fn of(value: &str) -> Self {
        Self(Sha256::digest(value.as_bytes()).into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lower- or upper-case hex.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = KeyHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KeyHash, E> {
                KeyHash::from_hex(s).ok_or_else(|| E::custom("a value hash must be 64 hex digits"))
            }
        }
        d.deserialize_str(Hex)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

/// Tags of a key or plan (`key=value`, as API Gateway has): operator
/// metadata, filterable in list calls, never used by decisions.
pub type Tags = BTreeMap<String, String>;

/// Most tags on one key or plan (API Gateway's limit).
pub const TAGS_MAX: usize = 50;
/// Longest tag key, in characters (API Gateway's limit).
pub const TAG_KEY_MAX_CHARS: usize = 128;
/// Longest tag value, in characters (API Gateway's limit).
pub const TAG_VALUE_MAX_CHARS: usize = 256;

/// Checks one tag: a key of 1–128 characters with no `=` (so `k=v` is
/// unambiguous) and a value of 0–256 characters, neither with a control
/// character. The error names the tag: `tags["env"]`.
pub fn validate_tag(k: &str, v: &str) -> Result<(), Invalid> {
    let field = || format!("tags[{k:?}]");
    let n = k.chars().count();
    if n == 0 || n > TAG_KEY_MAX_CHARS || k.trim().is_empty() {
        return Err(Invalid::new(field(), format!("the tag key must be 1 to {TAG_KEY_MAX_CHARS} characters, got {n}")));
    }
    if k.contains('=') {
        return Err(Invalid::new(field(), "the tag key may not contain `=`"));
    }
    if k.chars().chain(v.chars()).any(char::is_control) {
        return Err(Invalid::new(field(), "tags may not contain control characters"));
    }
    let n = v.chars().count();
    if n > TAG_VALUE_MAX_CHARS {
        return Err(Invalid::new(
            field(),
            format!("the tag value must be at most {TAG_VALUE_MAX_CHARS} characters, got {n}"),
        ));
    }
    Ok(())
}

/// Checks a set of tags: at most [`TAGS_MAX`], each by [`validate_tag`].
pub fn validate_tags(tags: &Tags) -> Result<(), Invalid> {
    if tags.len() > TAGS_MAX {
        return Err(Invalid::new("tags", format!("at most {TAGS_MAX} tags, got {}", tags.len())));
    }
    tags.iter().try_for_each(|(k, v)| validate_tag(k, v))
}

/// Parses `KEY=VALUE` (the CLI's `--tag` and the HTTP API's `?tag=`): split
/// at the first `=`; the value may be empty.
pub fn parse_tag(field: &str, s: &str) -> Result<(String, String), Invalid> {
    let (k, v) = s.split_once('=').ok_or_else(|| Invalid::new(field, format!("{s:?} is not KEY=VALUE")))?;
    validate_tag(k, v).map_err(|e| Invalid::new(field, e.message))?;
    Ok((k.to_string(), v.to_string()))
}

/// Minimum length of an API key value at creation (the seed's rule).
pub const KEY_VALUE_MIN: usize = 30;
/// Maximum length of an API key value.
pub const KEY_VALUE_MAX: usize = 128;

/// Validates a key value for creation or import: 30–128 of `[A-Za-z0-9]`.
/// The message never repeats the value.
pub fn validate_key_value(field: &str, v: &str) -> Result<(), Invalid> {
    if v.len() < KEY_VALUE_MIN || v.len() > KEY_VALUE_MAX {
        return Err(Invalid::new(
            field,
            format!("must be {KEY_VALUE_MIN} to {KEY_VALUE_MAX} characters, got {}", v.chars().count()),
        ));
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Invalid::new(field, "may contain only letters A-Z, a-z and digits 0-9"));
    }
    Ok(())
}

/// Generates a 40-character key value from a CSPRNG.
pub fn generate_key_value() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    // ThreadRng is a CSPRNG (ChaCha12) seeded from the operating system.
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}

/// Generates a random 10-character identifier (lower-case letters and digits).
pub fn generate_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

/// An API key. The value itself is never kept: only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Identifier (not secret).
    pub id: String,
    /// Readable name, 1–1024 characters.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Disabled keys are refused like unknown ones.
    pub enabled: bool,
    /// The operator's customer reference (AWS Marketplace's customerId).
    pub customer_id: String,
    /// SHA-256 of the value (hex in JSON).
    pub value_hash: KeyHash,
    /// The first 4 characters of the value, to help a person tell keys apart.
    pub value_hint: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// After this instant (ms since the Unix epoch) the key is refused.
    pub expires_at_ms: Option<u64>,
    /// Tags ([`validate_tags`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

impl ApiKey {
    /// Whether the key may be used at `now_ms`.
    pub fn usable_at(&self, now_ms: u64) -> bool {
        self.enabled && self.expires_at_ms.is_none_or(|t| now_ms < t)
    }
}

/// The non-secret hint shown for a key value.
pub fn value_hint(value: &str) -> String {
    value.chars().take(4).collect()
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_rules() {
        assert!(validate_tag("env", "").is_ok());
        assert!(validate_tag(&"k".repeat(128), &"v".repeat(256)).is_ok());
        assert!(validate_tag("caf\u{e9}", "\u{e9}t\u{e9} / a:b @c").is_ok(), "letters, spaces, punctuation");
        for (k, v, why) in [
            ("", "v", "1 to 128"),
            (" ", "v", "1 to 128"),
            (&"k".repeat(129) as &str, "v", "1 to 128"),
            ("a=b", "v", "`=`"),
            ("k", &"v".repeat(257) as &str, "at most 256"),
            ("k\0", "v", "control"),
            ("k", "a\tb", "control"),
        ] {
            let e = validate_tag(k, v).unwrap_err();
            assert_eq!(e.field, format!("tags[{k:?}]"));
            assert!(e.message.contains(why), "{k:?}={v:?}: {e}");
        }
        let many: Tags = (0..51).map(|i| (format!("t{i}"), String::new())).collect();
        assert_eq!(validate_tags(&many).unwrap_err().field, "tags");
        assert_eq!(parse_tag("tag", "env=prod=x").unwrap(), ("env".into(), "prod=x".into()), "split at the first =");
        assert_eq!(parse_tag("tag", "env=").unwrap(), ("env".into(), String::new()));
        assert_eq!(parse_tag("tag", "env").unwrap_err().field, "tag");
        assert_eq!(parse_tag("tag", "=v").unwrap_err().field, "tag");
    }

    #[test]
    fn throttle_validation() {
        assert!(Throttle { rate_limit: -1.0, burst_limit: 1 }.validate().is_err());
        assert!(Throttle { rate_limit: f64::NAN, burst_limit: 1 }.validate().is_err());
        assert!(Throttle { rate_limit: 0.0, burst_limit: 3 }.validate().is_err());
        assert!(Throttle { rate_limit: 0.0, burst_limit: 0 }.validate().is_ok());
        assert!(Throttle { rate_limit: 0.5, burst_limit: 3 }.validate().is_ok());
        // Bounds: rates in thousandths from 0.001 to 1e9, bursts up to 1e6.
        assert!(Throttle { rate_limit: 1e-16, burst_limit: 1 }.validate().is_err());
        assert!(Throttle { rate_limit: 0.0005, burst_limit: 1 }.validate().is_err());
        assert!(Throttle { rate_limit: 0.3333, burst_limit: 1 }.validate().is_err());
        assert!(Throttle { rate_limit: 1e9 + 1.0, burst_limit: 1 }.validate().is_err());
        assert!(Throttle { rate_limit: 1.0, burst_limit: MAX_BURST + 1 }.validate().is_err());
        for r in [0.001, 0.1, 0.3, 33.333, 2_000_001.0, 1e9] {
            let t = Throttle { rate_limit: r, burst_limit: MAX_BURST };
            assert!(t.validate().is_ok(), "{r}");
            assert_eq!(t.rate_milli() as f64, (r * 1000.0).round(), "{r}");
        }
        assert_eq!(Throttle { rate_limit: 0.3, burst_limit: 1 }.rate_milli(), 300);
        assert_eq!(Throttle { rate_limit: 2.0, burst_limit: 5 }.window_secs(), 3);
        assert_eq!(Throttle { rate_limit: 0.0, burst_limit: 0 }.window_secs(), 1);
    }

    #[test]
    fn quota_validation() {
        assert!(Quota { limit: 0, period: Period::Day, offset: 0, time_zone: None, anchor_day: 0 }.validate().is_err());
        assert!(Quota { limit: 10, period: Period::Day, offset: 10, time_zone: None, anchor_day: 0 }
            .validate()
            .is_err());
        assert!(Quota { limit: 10, period: Period::Day, offset: 9, time_zone: None, anchor_day: 0 }.validate().is_ok());
        assert!(Quota { limit: MAX_QUOTA_LIMIT, period: Period::Day, offset: 0, time_zone: None, anchor_day: 0 }
            .validate()
            .is_ok());
        assert!(Quota { limit: MAX_QUOTA_LIMIT + 1, period: Period::Day, offset: 0, time_zone: None, anchor_day: 0 }
            .validate()
            .is_err());
    }

    #[test]
    fn key_values() {
        assert!(validate_key_value("value", "short").is_err());
        assert!(validate_key_value("value", &"a".repeat(129)).is_err());
        assert!(validate_key_value("value", &format!("{}!", "a".repeat(30))).is_err());
        let v = generate_key_value();
        assert_eq!(v.len(), 40);
        assert!(validate_key_value("value", &v).is_ok());
        assert_ne!(generate_key_value(), v);
    }

    #[test]
    fn stage_refs() {
        assert_eq!(StageRef::parse("petstore/prod").unwrap().to_string(), "petstore/prod");
        assert!(StageRef::parse("prod").is_err());
        assert!(StageRef::parse("a/b/c").is_err());
        assert!(StageRef::parse("/prod").is_err());
    }
}
