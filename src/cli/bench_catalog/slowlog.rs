//! `bench-catalog slowlog`: the slowest command in Redis's `SLOWLOG` whose
//! arguments name a catalog key (the hash tag `{cat}`, `src/store/keys.rs`),
//! and the slowest of all for comparison. Set the log up first (`SLOWLOG
//! RESET`, `CONFIG SET slowlog-log-slower-than 1000`, a large
//! `slowlog-max-len`): Redis keeps only what is slower than that.

use std::process::ExitCode;

use clap::Args;
use redis::Value;
use serde_json::json;

/// What names a catalog key.
const CATALOG_TAG: &str = "{cat}";

/// Arguments of `bench-catalog slowlog`.
#[derive(Debug, Args)]
pub struct SlowlogArgs {
    /// The Redis server.
    #[arg(long, env = "TOLLGATE_REDIS_URL")]
    pub redis_url: String,
}

/// One slow log entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    micros: u64,
    at: u64,
    args: Vec<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(i) => (*i).max(0) as u64,
        other => text(other).parse().unwrap_or(0),
    }
}

/// Reads `SLOWLOG GET`'s answer: `[id, time, micros, [args...], client, name]` each.
fn entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else { return Vec::new() };
    items
        .iter()
        .filter_map(|e| match e {
            Value::Array(f) if f.len() >= 4 => Some(Entry {
                at: int(&f[1]),
                micros: int(&f[2]),
                args: match &f[3] {
                    Value::Array(a) => a.iter().map(text).collect(),
                    _ => Vec::new(),
                },
            }),
            _ => None,
        })
        .collect()
}

fn entry_json(e: Option<&Entry>) -> serde_json::Value {
    match e {
        Some(e) => {
            json!({ "micros": e.micros, "ms": e.micros as f64 / 1000.0, "at": e.at, "command": e.args.join(" ") })
        }
        None => serde_json::Value::Null,
    }
}

/// Prints `{entries, catalog_entries, longest_catalog, longest}`.
pub async fn run(a: SlowlogArgs) -> ExitCode {
    let answer = async {
        let c = redis::Client::open(a.redis_url.as_str())?;
        let mut conn = c.get_multiplexed_async_connection().await?;
        redis::cmd("SLOWLOG").arg("GET").arg(-1).query_async::<Value>(&mut conn).await
    }
    .await;
    let v = match answer {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: SLOWLOG GET on {}: {e}", crate::store::redis::redact_url(&a.redis_url));
            return ExitCode::from(2);
        }
    };
    let all = entries(&v);
    let catalog: Vec<&Entry> = all.iter().filter(|e| e.args.iter().any(|x| x.contains(CATALOG_TAG))).collect();
    let report = json!({
        "entries": all.len(),
        "catalog_entries": catalog.len(),
        "longest_catalog": entry_json(catalog.iter().copied().max_by_key(|e| e.micros)),
        "longest": entry_json(all.iter().max_by_key(|e| e.micros)),
    });
    crate::cli::emit(&format!("{report}\n"));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slowlog_entries() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![Value::Array(vec![
            Value::Int(7),
            Value::Int(1_700_000_000),
            Value::Int(12_345),
            Value::Array(vec![bulk("HGETALL"), bulk("tg:{cat}:keys")]),
            bulk("127.0.0.1:5000"),
            bulk(""),
        ])]);
        let e = entries(&v);
        assert_eq!(
            e,
            vec![Entry { micros: 12_345, at: 1_700_000_000, args: vec!["HGETALL".into(), "tg:{cat}:keys".into()] }]
        );
        assert_eq!(entry_json(e.first())["command"], "HGETALL tg:{cat}:keys");
    }
}
