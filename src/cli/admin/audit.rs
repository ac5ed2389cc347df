//! `tollgate audit list`: the audit trail of Admin changes, oldest first
//! (docs/admin.md, "Audit trail"). Needs a token with role `read` or more.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::table::Table;
use super::{client, emit_json, finish, parse_instant, rfc3339_ms, AdminOpts, Failure, Outcome};
use crate::api::pb;

/// Arguments of `tollgate audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub opts: AdminOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first (every page): one line per record,
    /// or with --json one JSON object per record (one per line).
    List {
        /// Only records from this time on: RFC 3339 (2030-01-01T00:00:00Z),
        /// a date (2030-01-01, UTC), or a duration before now (90m, 1h, 7d).
        #[arg(long, value_name = "TIME|DURATION")]
        since: Option<String>,
        /// At most this many records (the oldest ones from --since).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

/// Runs `tollgate audit ...`.
pub async fn run(args: AuditArgs) -> std::process::ExitCode {
    let outcome = dispatch(&args.opts, args.command).await;
    finish(&args.opts, outcome)
}

/// `--since`: an instant, or a duration before `now_ms`.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    }
    parse_instant(s).map_err(|e| format!("--since: {e}, or a duration such as 90m, 1h or 7d"))
}

/// The items of a list read oldest first, a page at a time (the audit
/// trail, quota alert events): at most `limit` (all without one), each page
/// no larger than what is still wanted (1–1000).
pub async fn pages_since<T, F, Fut>(limit: Option<usize>, mut fetch: F) -> Result<Vec<T>, Failure>
where
    F: FnMut(u32, String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let limit = limit.unwrap_or(usize::MAX);
    let mut items: Vec<T> = Vec::new();
    let mut page_token = String::new();
    while items.len() < limit {
        let page_size = (limit - items.len()).clamp(1, 1000) as u32;
        let (page, next) = fetch(page_size, page_token.clone()).await?;
        items.extend(page);
        if next.is_empty() {
            break;
        }
        if next == page_token {
            return Err(Failure::Message("the server repeated a page token; stopping".into()));
        }
        page_token = next;
    }
    items.truncate(limit);
    Ok(items)
}

async fn dispatch(opts: &AdminOpts, cmd: AuditCommand) -> Outcome {
    let AuditCommand::List { since, limit } = cmd;
    let since_ms = since.as_deref().map(|s| parse_since(s, crate::model::now_ms())).transpose()?.unwrap_or(0);
    let c = client(opts).await?;
    let records = pages_since(limit, |page_size, page_token| {
        let mut c = c.clone();
        async move {
            let req = pb::ListAuditRecordsRequest { since_ms, page_size, page_token };
            let r = c.list_audit_records(req).await?.into_inner();
            Ok((r.records, r.next_page_token))
        }
    })
    .await?;
    if opts.json {
        for r in &records {
            emit_json(&record_json(r));
        }
        return Ok(());
    }
    if records.is_empty() {
        crate::cli::emit("no audit records\n");
        return Ok(());
    }
    let mut t = Table::new(&["TIME", "TOKEN", "PEER", "OPERATION", "RECORDS", "CHANGES"]);
    for r in &records {
        let changes: Vec<String> = r.changes.iter().map(change_text).collect();
        t.row(vec![
            rfc3339_ms(r.time_ms),
            r.token_name.clone(),
            r.peer.clone(),
            r.operation.clone(),
            r.record_ids.join(","),
            changes.join("; "),
        ]);
    }
    crate::cli::emit(&t.render());
    Ok(())
}

/// `field: before -> after` (`+` for a record created, `-` deleted).
fn change_text(c: &pb::AuditChange) -> String {
    let side = |v: &str| if v.is_empty() { "-".to_string() } else { v.to_string() };
    format!("{} {}: {} -> {}", c.record, c.field, side(&c.before), side(&c.after))
}

/// A record as JSON: the before and after values as JSON (null when absent).
pub fn record_json(r: &pb::AuditRecord) -> Value {
    let value = |v: &str| if v.is_empty() { Value::Null } else { serde_json::from_str(v).unwrap_or(Value::Null) };
    let changes: Vec<Value> = r
        .changes
        .iter()
        .map(|c| json!({ "record": c.record, "field": c.field, "before": value(&c.before), "after": value(&c.after) }))
        .collect();
    json!({
        "id": r.id,
        "time_ms": r.time_ms,
        "time": rfc3339_ms(r.time_ms),
        "token": r.token_name,
        "peer": r.peer,
        "operation": r.operation,
        "record_ids": r.record_ids,
        "changes": changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_instants_and_durations() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_since("1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_since("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_since("1970-01-02", now), Ok(86_400_000));
        assert!(parse_since("yesterday", now).unwrap_err().contains("--since"));
    }
}
