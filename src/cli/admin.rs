//! The admin commands (`keys`, `stages`, `plans`, `plan-keys`, `usage`, `audit`, `events`):
//! clients of the `tollgate.v1.Admin` service, one file per command group.
//!
//! What they share lives here: the options every admin command takes
//! ([`AdminOpts`]: `--server` (the Admin listener), `--admin-token`, `--json`,
//! and `--ca-cert`, `--client-cert`, `--client-key` for an `https://` server), the connection
//! with the `authorization: Bearer TOKEN` interceptor, the one way a failure
//! is reported (`error: CODE: message` on stderr, exit code 2), and the JSON
//! shapes of the things the service returns ([`key_json`], [`plan_json`],
//! [`stage_json`]), so that every command prints a key or a plan the same way.

pub mod audit;
pub mod csv_chunks;
pub mod events;
pub mod keys;
pub mod plan_keys;
pub mod plans;
pub mod stages;
pub mod table;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{json, Map, Value};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::api::pb;

/// Options shared by every admin command. They are global: they may be given
/// before or after the subcommand (`tollgate keys --json list` or
/// `tollgate keys list --json`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Common options")]
pub struct AdminOpts {
    /// The server's Admin address (its --admin-listen). Its own variable:
    /// TOLLGATE_SERVER names the data plane, a different port.
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_SERVER", default_value = super::DEFAULT_ADMIN_SERVER.as_str())]
    pub server: String,
    /// The admin token (the server's TOLLGATE_ADMIN_TOKEN), sent as
    /// `authorization: Bearer TOKEN`. Prefer the environment variable: a
    /// command line is visible to other users of the machine.
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub admin_token: Option<Secret>,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// TLS, for an https:// server.
    #[command(flatten)]
    pub tls: super::TlsOpts,
}

/// A secret string: its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Adds `authorization: Bearer TOKEN` to every call (nothing when no token
/// was given, so that the server's UNAUTHENTICATED answer, with its advice,
/// reaches the user).
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The Admin client every command uses.
pub type Client = pb::admin_client::AdminClient<InterceptedService<Channel, BearerToken>>;

/// Why a command failed; turned into `error: ...` and exit code 2 by [`finish`].
#[derive(Debug)]
pub enum Failure {
    /// The call reached the server and it said no.
    Status(Status),
    /// Anything else: bad input noticed before calling, no connection, a file
    /// that cannot be read.
    Message(String),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Message(s)
    }
}

/// What a command returns.
pub type Outcome = Result<(), Failure>;

/// Connects to the server of `opts` with its token.
pub async fn client(opts: &AdminOpts) -> Result<Client, Failure> {
    let token = match &opts.admin_token {
        None => None,
        Some(Secret(t)) if t.is_empty() => None,
        Some(Secret(t)) => Some(
            AsciiMetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| "the admin token must be printable ASCII without line breaks".to_string())?,
        ),
    };
    let channel = super::connect(&opts.server, &opts.tls).await?;
    Ok(pb::admin_client::AdminClient::with_interceptor(channel, BearerToken(token)))
}

/// Turns a command's outcome into the process exit code, printing the
/// failure as `error: CODE: message` (with a hint where one helps).
pub fn finish(opts: &AdminOpts, outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Message(m)) => {
            note(&format!("error: {m}"));
            ExitCode::from(2)
        }
        Err(Failure::Status(s)) => {
            let cause = super::status_cause(&s, &opts.server, &opts.tls);
            let mut line = format!("error: {}: {}{cause}", code_name(s.code()), s.message());
            match s.code() {
                Code::Unauthenticated if s.message().contains("not valid") => line.push_str(
                    "\nhint: the admin token is none of the server's (its TOLLGATE_ADMIN_TOKEN, --admin-token-file \
                     or --admin-tokens-file)",
                ),
                Code::PermissionDenied => line
                    .push_str("\nhint: this token's role does not allow the command; use a token with the role named"),
                Code::Unimplemented => line.push_str(&format!(
                    "\nhint: {} serves no tollgate.v1.Admin: give --server the server's --admin-listen address \
                     (default {}), not its data-plane --listen one",
                    opts.server,
                    *super::DEFAULT_ADMIN_SERVER
                )),
                _ => {}
            }
            note(&line);
            ExitCode::from(2)
        }
    }
}

/// The canonical name of a gRPC status code (`NOT_FOUND`): the same one
/// the HTTP API's error bodies carry.
pub use crate::api::http::error::code_name;

/// Writes a line to stderr, ignoring a closed stderr.
pub fn note(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Prints `v` as one line of JSON.
pub fn emit_json(v: &Value) {
    super::emit(&format!("{v}\n"));
}

// ----- time -----

/// `ms` since the epoch as RFC 3339 with milliseconds, UTC
/// (`2030-01-01T00:00:00.000Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `ms` since the epoch as RFC 3339 in whole seconds, for people.
pub fn rfc3339_s(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A timestamp for JSON: `null` for 0 (unset), else RFC 3339.
fn ts_json(ms: u64) -> Value {
    if ms == 0 {
        Value::Null
    } else {
        Value::String(rfc3339_ms(ms))
    }
}

/// Parses an instant given on the command line into ms since the epoch:
/// RFC 3339 (`2030-01-01T00:00:00Z`, `2030-01-01T02:00:00+02:00`, fractions
/// of a second allowed) or a date (`2030-01-01`, midnight UTC).
pub fn parse_instant(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a time: write it like 2030-01-01T00:00:00Z (RFC 3339) or 2030-01-01");
    if !s.is_ascii() {
        return Err(bad());
    }
    let t = if s.len() == 10 {
        humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).map_err(|_| bad())?
    } else if s.ends_with('Z') || s.ends_with('z') {
        let mut u = s.to_string();
        u.make_ascii_uppercase();
        humantime::parse_rfc3339(&u).map_err(|_| bad())?
    } else if s.len() > 6 && matches!(s.as_bytes()[s.len() - 6], b'+' | b'-') {
        // A numeric offset: read the local time as UTC, then shift.
        let (local, off) = s.split_at(s.len() - 6);
        let t = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| bad())?;
        let sign = off.as_bytes()[0];
        let (hh, mm) =
            (off.get(1..3).and_then(|h| h.parse::<u64>().ok()), off.get(4..6).and_then(|m| m.parse::<u64>().ok()));
        let (Some(hh), Some(mm)) = (hh, mm) else { return Err(bad()) };
        if off.as_bytes()[3] != b':' || hh > 23 || mm > 59 {
            return Err(bad());
        }
        let shift = Duration::from_secs(hh * 3600 + mm * 60);
        let shifted = if sign == b'+' { t.checked_sub(shift) } else { t.checked_add(shift) };
        shifted.ok_or_else(bad)?
    } else {
        return Err(bad());
    };
    let ms = t.duration_since(UNIX_EPOCH).map_err(|_| format!("{s:?} is before 1970"))?.as_millis();
    u64::try_from(ms).map_err(|_| bad())
}

/// Checks a `YYYY-MM-DD` date (a real one: no 2023-02-29) and returns the
/// instant of its midnight UTC.
pub fn parse_date(flag: &str, s: &str) -> Result<SystemTime, String> {
    let bad = || format!("{flag} {s:?}: write the date as YYYY-MM-DD (UTC), e.g. 2030-01-31");
    let b = s.as_bytes();
    if b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !s.bytes().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
    {
        return Err(bad());
    }
    humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).map_err(|_| bad())
}

/// The date (`YYYY-MM-DD`) `days` after `start`.
pub fn date_after(start: SystemTime, days: u64) -> String {
    let t = start + Duration::from_secs(days.saturating_mul(86_400));
    let mut s = humantime::format_rfc3339_seconds(t).to_string();
    s.truncate(10);
    s
}

// ----- shared argument parsers -----

/// Parses `STAGE:METHOD:RATE:BURST` (`petstore/prod:/pets/GET:10:20`). The
/// stage never contains ':'; RATE and BURST are the last two fields, so the
/// method is whatever lies between.
pub fn parse_method_throttle(s: &str) -> Result<pb::MethodThrottle, String> {
    let bad = |why: &str| {
        format!(
            "--method-throttle {s:?}: {why}; write it as STAGE:METHOD:RATE:BURST, e.g. petstore/prod:/pets/GET:10:20"
        )
    };
    let (stage, rest) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
    let (rest, burst) = rest.rsplit_once(':').ok_or_else(|| bad("missing fields"))?;
    let (method, rate) = rest.rsplit_once(':').ok_or_else(|| bad("missing fields"))?;
    if stage.is_empty() || method.is_empty() {
        return Err(bad("empty stage or method"));
    }
    let rate_limit = rate.parse::<f64>().map_err(|_| bad(&format!("rate {rate:?} is not a number")))?;
    let burst_limit = burst.parse::<u64>().map_err(|_| bad(&format!("burst {burst:?} is not a whole number")))?;
    Ok(pb::MethodThrottle {
        stage: stage.to_string(),
        method: method.to_string(),
        throttle: Some(pb::Throttle { rate_limit, burst_limit }),
    })
}

/// Parses `STAGE:METHOD` (`petstore/prod:/pets/GET`).
pub fn parse_stage_method(s: &str) -> Result<pb::MethodThrottle, String> {
    match s.split_once(':') {
        Some((stage, method)) if !stage.is_empty() && !method.is_empty() => {
            Ok(pb::MethodThrottle { stage: stage.to_string(), method: method.to_string(), throttle: None })
        }
        _ => Err(format!("--remove-method-throttle {s:?}: write it as STAGE:METHOD, e.g. petstore/prod:/pets/GET")),
    }
}

/// Parses `--tag KEY=VALUE` (checked as the server checks tags).
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    crate::model::parse_tag("--tag", s).map_err(|e| e.message)
}

/// `--tag` arguments as the wire's map.
pub fn tags_map(tags: Vec<(String, String)>) -> HashMap<String, String> {
    tags.into_iter().collect()
}

/// Tags as `k=v,k2=v2`, sorted by key; `-` for none.
pub fn tags_text(tags: &HashMap<String, String>) -> String {
    if tags.is_empty() {
        return "-".into();
    }
    let sorted: BTreeMap<_, _> = tags.iter().collect();
    sorted.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Tags as a JSON object, sorted by key.
pub fn tags_json(tags: &HashMap<String, String>) -> Value {
    let sorted: BTreeMap<_, _> = tags.iter().collect();
    json!(sorted)
}

/// A quota period, any case on the command line, upper case on the wire.
pub fn parse_period(s: &str) -> Result<String, String> {
    let p = s.to_ascii_uppercase();
    match p.as_str() {
        "DAY" | "WEEK" | "MONTH" => Ok(p),
        _ => Err(format!("{s:?} is not a quota period: DAY, WEEK or MONTH")),
    }
}

// ----- JSON shapes -----

/// An API key: every field of the service's answer, the times as `*_ms`
/// numbers and RFC 3339 strings; `expires_at*` are null when it never expires.
pub fn key_json(k: &pb::ApiKey) -> Map<String, Value> {
    let v = json!({
        "id": k.id,
        "name": k.name,
        "description": k.description,
        "enabled": k.enabled,
        "customer_id": k.customer_id,
        "value_hint": k.value_hint,
        "created_at_ms": k.created_at_ms,
        "created_at": ts_json(k.created_at_ms),
        "updated_at_ms": k.updated_at_ms,
        "updated_at": ts_json(k.updated_at_ms),
        "expires_at_ms": (k.expires_at_ms != 0).then_some(k.expires_at_ms),
        "expires_at": ts_json(k.expires_at_ms),
        "usage_plan_ids": k.usage_plan_ids,
        "tags": tags_json(&k.tags),
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A throttle, or null.
pub fn throttle_json(t: Option<&pb::Throttle>) -> Value {
    match t {
        Some(t) => json!({ "rate_limit": t.rate_limit, "burst_limit": t.burst_limit }),
        None => Value::Null,
    }
}

/// A plan's admission as the CLI and the catalog file write it.
pub fn admission_text(a: i32) -> &'static str {
    match pb::Admission::try_from(a) {
        Ok(pb::Admission::Leased) => "leased",
        _ => "exact",
    }
}

/// A usage plan.
pub fn plan_json(p: &pb::UsagePlan) -> Value {
    let stages: Vec<Value> = p
        .api_stages
        .iter()
        .map(|s| {
            let throttle: Map<String, Value> =
                s.throttle.iter().map(|(m, t)| (m.clone(), throttle_json(Some(t)))).collect();
            json!({ "stage": s.stage, "throttle": throttle })
        })
        .collect();
    json!({
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "throttle": throttle_json(p.throttle.as_ref()),
        "quota": p.quota.as_ref().map(quota_json),
        "api_stages": stages,
        "admission": admission_text(p.admission),
        "shadow": p.shadow,
        "alerts": p.alerts,
        "created_at_ms": p.created_at_ms,
        "created_at": ts_json(p.created_at_ms),
        "tags": tags_json(&p.tags),
    })
}

/// A quota in JSON; `time_zone` and `anchor_day` only when set (a UTC quota
/// from the 1st reads as it always did).
fn quota_json(q: &pb::Quota) -> Value {
    let mut v = json!({ "limit": q.limit, "period": q.period, "offset": q.offset });
    if !q.time_zone.is_empty() {
        v["time_zone"] = json!(q.time_zone);
    }
    if q.anchor_day > 0 {
        v["anchor_day"] = json!(q.anchor_day);
    }
    v
}

/// A stage with its method settings.
pub fn stage_json(s: &pb::Stage) -> Value {
    let methods: Vec<Value> = s
        .methods
        .iter()
        .map(|m| {
            json!({
                "method": m.method,
                "throttle": throttle_json(m.throttle.as_ref()),
                "api_key_required": m.api_key_required.unwrap_or(true),
            })
        })
        .collect();
    json!({
        "stage": s.stage,
        "api_name": s.api_name,
        "methods": methods,
        "usage_plan_ids": s.usage_plan_ids,
    })
}

/// A throttle for people: `10 req/s, burst 20`, or `-`.
pub fn throttle_text(t: Option<&pb::Throttle>) -> String {
    match t {
        Some(t) => format!("{} req/s, burst {}", t.rate_limit, t.burst_limit),
        None => "-".to_string(),
    }
}

/// Reads every page of a paginated list. `fetch(token)` returns one page and
/// the next token (empty on the last page). A server that hands back a token
/// it already gave is an error, not an endless loop.
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Failure>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut token = String::new();
    loop {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        if !seen.insert(next.clone()) {
            return Err(Failure::Message("the server repeated a page token; stopping".into()));
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants() {
        assert_eq!(parse_instant("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(parse_instant("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_instant("1970-01-01T02:00:01+02:00"), Ok(1000));
        assert_eq!(parse_instant("1970-01-01T00:00:01.5z"), Ok(1500));
        assert_eq!(parse_instant("1970-01-01T00:00:01-01:00"), Ok(3_601_000));
        for bad in [
            "",
            "x",
            "2030-02-30",
            "2030-01-01T00:00:00",
            "2030-01-01T00:00:00+2:00",
            "2030-01-01T00:00:00+99:00",
            "ééééééééééé",
            "1969-01-01",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates() {
        let t = parse_date("--start", "2024-02-28").unwrap();
        assert_eq!(date_after(t, 1), "2024-02-29");
        assert_eq!(date_after(t, 2), "2024-03-01");
        for bad in ["2023-02-29", "2024-1-01", "20240101", "2024-01-01T", "２０２４-01-01", "abcd-ef-gh"] {
            assert!(parse_date("--start", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn method_throttles() {
        let m = parse_method_throttle("petstore/prod:/pets/{petId}/GET:2.5:10").unwrap();
        assert_eq!((m.stage.as_str(), m.method.as_str()), ("petstore/prod", "/pets/{petId}/GET"));
        assert_eq!(m.throttle, Some(pb::Throttle { rate_limit: 2.5, burst_limit: 10 }));
        let m = parse_method_throttle("a/b:*/*:1:1").unwrap();
        assert_eq!(m.method, "*/*");
        for bad in
            ["", "a/b", "a/b:/x/GET", "a/b:/x/GET:1", ":/x/GET:1:1", "a/b::1:1", "a/b:/x/GET:one:1", "a/b:/x/GET:1:-1"]
        {
            assert!(parse_method_throttle(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_stage_method("a/b:/x/GET").unwrap().method, "/x/GET");
        assert!(parse_stage_method("a/b").is_err());
        assert!(parse_stage_method("a/b:").is_err());
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn secrets_stay_secret() {
        let s: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
