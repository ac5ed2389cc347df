//! `tollgate keys`: create, list, get, update, delete, rotate and import API
//! keys (API Gateway's `create-api-key`, `get-api-keys`, `import-api-keys`...).
//!
//! A key's value is secret: the server returns it only from `create`,
//! `rotate` and (for nothing but the ids) `import`, so those are the only
//! commands that print one.

use std::io::Read;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::csv_chunks;
use super::table::{kv, Table};
use super::{
    client, emit_json, finish, key_json, parse_instant, parse_tag, tags_map, tags_text, AdminOpts, Failure, Outcome,
};
use crate::api::pb;

/// The largest CSV one import call sends (the server refuses bigger ones): a
/// bigger file is sent in chunks of whole rows (`super::csv_chunks`).
pub const MAX_IMPORT_BYTES: u64 = 5 * 1024 * 1024;

/// The largest CSV file `keys import` reads (it is held in memory).
pub const MAX_IMPORT_FILE_BYTES: u64 = 1024 * 1024 * 1024;

/// Arguments of `tollgate keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub opts: AdminOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its value is printed once and never again.
    Create(CreateArgs),
    /// List keys, a page at a time (or --all).
    List(ListArgs),
    /// Show one key (never its value).
    Get {
        /// The key's id.
        id: String,
    },
    /// Change a key's name, description, enabled flag, customer, expiry or tags.
    Update(UpdateArgs),
    /// Delete a key: its value stops working at once.
    Delete {
        /// The key's id.
        id: String,
    },
    /// Give a key a new value; the old one keeps working for --grace seconds.
    Rotate(RotateArgs),
    /// Import keys from a CSV file in API Gateway's format
    /// (Name,Key,Description,Enabled,UsagePlanIds); `-` reads stdin.
    Import(ImportArgs),
}

/// Arguments of `keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The key's name.
    #[arg(long)]
    pub name: String,
    /// The value (30 to 128 of A-Z a-z 0-9); generated when omitted.
    #[arg(long)]
    pub value: Option<String>,
    /// A description.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub description: String,
    /// Create the key disabled.
    #[arg(long)]
    pub disabled: bool,
    /// The customer the key belongs to (AWS Marketplace's customer id).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub customer_id: String,
    /// When the key stops working: RFC 3339 (2030-01-01T00:00:00Z) or a date.
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,
    /// A tag, KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tag: Vec<(String, String)>,
}

/// Arguments of `keys list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys whose name starts with this.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name_prefix: String,
    /// Only keys of this customer.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub customer_id: String,
    /// Only keys with this tag, KEY=VALUE (repeatable: all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tag: Vec<(String, String)>,
    /// Keys per page, 1 to 500 (server default 25).
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
    /// The page to read (the next_page_token of the previous one).
    #[arg(long, value_name = "T", default_value = "", hide_default_value = true, conflicts_with = "all")]
    pub page_token: String,
    /// Read every page.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `keys update`: only the given fields change.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The key's id.
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// A new description.
    #[arg(long)]
    pub description: Option<String>,
    /// Enable or disable the key.
    #[arg(long, value_name = "true|false")]
    pub enabled: Option<bool>,
    /// A new customer id.
    #[arg(long)]
    pub customer_id: Option<String>,
    /// A new expiry (RFC 3339 or a date), or `never`.
    #[arg(long, value_name = "RFC3339|never")]
    pub expires_at: Option<String>,
    /// The key's tags, KEY=VALUE (repeatable): they replace all its tags.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag, conflicts_with = "clear_tags")]
    pub tag: Vec<(String, String)>,
    /// Remove all the key's tags.
    #[arg(long)]
    pub clear_tags: bool,
}

/// Arguments of `keys rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The key's id.
    pub id: String,
    /// The new value; generated when omitted.
    #[arg(long)]
    pub value: Option<String>,
    /// Seconds the old value keeps working (default 0: it stops at once).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub grace: u64,
}

/// Arguments of `keys import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file, or `-` for stdin. A file over 5 MiB (the most one call
    /// takes) is sent in chunks of whole rows, one import call each, the
    /// header repeated; warnings name the file's own lines.
    pub file: String,
    /// Import nothing when any row is bad (default: import the good rows and
    /// report the bad ones as warnings). With several chunks, the rows are
    /// checked here first; what only the server checks (plans) stops the
    /// import at the first chunk with a bad row, the chunks before it staying
    /// imported.
    #[arg(long)]
    pub fail_on_warnings: bool,
    /// At most this many rows per import call (default: as many as fit in
    /// 5 MiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_rows: Option<u64>,
}

/// Runs `tollgate keys ...`.
pub async fn run(args: KeysArgs) -> std::process::ExitCode {
    let outcome = dispatch(&args.opts, args.command).await;
    finish(&args.opts, outcome)
}

async fn dispatch(opts: &AdminOpts, cmd: KeysCommand) -> Outcome {
    match cmd {
        KeysCommand::Create(a) => create(opts, a).await,
        KeysCommand::List(a) => list(opts, a).await,
        KeysCommand::Get { id } => {
            let k = client(opts).await?.get_api_key(pb::GetApiKeyRequest { id }).await?.into_inner();
            print_key(opts, &k);
            Ok(())
        }
        KeysCommand::Update(a) => update(opts, a).await,
        KeysCommand::Delete { id } => {
            client(opts).await?.delete_api_key(pb::DeleteApiKeyRequest { id: id.clone() }).await?;
            if opts.json {
                emit_json(&json!({ "id": id, "deleted": true }));
            } else {
                crate::cli::emit(&format!("deleted key {id}\n"));
            }
            Ok(())
        }
        KeysCommand::Rotate(a) => {
            let req = pb::RotateApiKeyRequest { id: a.id, value: a.value, grace_seconds: a.grace };
            let r = client(opts).await?.rotate_api_key(req).await?.into_inner();
            let note = if a.grace == 0 {
                "The old value no longer works.".to_string()
            } else {
                format!(
                    "The old value keeps working for {} more.",
                    humantime::format_duration(std::time::Duration::from_secs(a.grace))
                )
            };
            print_with_value(opts, r, &note);
            Ok(())
        }
        KeysCommand::Import(a) => import(opts, a).await,
    }
}

async fn create(opts: &AdminOpts, a: CreateArgs) -> Outcome {
    let expires_at_ms = match &a.expires_at {
        Some(s) => parse_instant(s).map_err(|e| format!("--expires-at: {e}"))?,
        None => 0,
    };
    let req = pb::CreateApiKeyRequest {
        name: a.name,
        value: a.value,
        description: a.description,
        enabled: Some(!a.disabled),
        customer_id: a.customer_id,
        expires_at_ms,
        tags: tags_map(a.tag),
    };
    let r = client(opts).await?.create_api_key(req).await?.into_inner();
    print_with_value(opts, r, "");
    Ok(())
}

/// Prints a key with its value (create, rotate): JSON has the key's fields
/// plus `value`; people see the value once with a warning.
fn print_with_value(opts: &AdminOpts, r: pb::CreateApiKeyResponse, extra: &str) {
    let key = r.key.unwrap_or_default();
    if opts.json {
        let mut m = key_json(&key);
        m.insert("value".into(), Value::String(r.value));
        emit_json(&Value::Object(m));
    } else {
        let mut pairs = key_pairs(&key);
        pairs.insert(2, ("value", r.value));
        let mut s = kv(&pairs);
        s.push_str("\nThis is the only time the value is shown: it cannot be shown again. Store it now.\n");
        if !extra.is_empty() {
            s.push_str(extra);
            s.push('\n');
        }
        crate::cli::emit(&s);
    }
}

async fn list(opts: &AdminOpts, a: ListArgs) -> Outcome {
    let mut c = client(opts).await?;
    let base = pb::ListApiKeysRequest {
        page_size: a.page_size.unwrap_or(0),
        page_token: a.page_token,
        name_prefix: a.name_prefix,
        customer_id: a.customer_id,
        tags: tags_map(a.tag),
    };
    let (keys, next) = if a.all {
        let keys = super::all_pages(|token| {
            let req = pb::ListApiKeysRequest { page_token: token, ..base.clone() };
            let mut c = c.clone();
            async move {
                let r = c.list_api_keys(req).await?.into_inner();
                Ok((r.keys, r.next_page_token))
            }
        })
        .await?;
        (keys, String::new())
    } else {
        let r = c.list_api_keys(base).await?.into_inner();
        (r.keys, r.next_page_token)
    };
    if opts.json {
        let keys: Vec<Value> = keys.iter().map(|k| Value::Object(key_json(k))).collect();
        emit_json(&json!({ "keys": keys, "next_page_token": (!next.is_empty()).then_some(&next) }));
    } else {
        crate::cli::emit(&keys_table(&keys));
        if !next.is_empty() {
            super::note(&format!("more keys: --page-token {next} (or --all)"));
        }
    }
    Ok(())
}

/// The table of `keys list` and `plan-keys list`.
pub fn keys_table(keys: &[pb::ApiKey]) -> String {
    if keys.is_empty() {
        return "no keys\n".into();
    }
    let mut t = Table::new(&["ID", "NAME", "ENABLED", "VALUE", "CUSTOMER", "CREATED", "EXPIRES", "PLANS", "TAGS"]);
    for k in keys {
        t.row(vec![
            k.id.clone(),
            k.name.clone(),
            k.enabled.to_string(),
            hint(&k.value_hint),
            k.customer_id.clone(),
            super::rfc3339_s(k.created_at_ms),
            expiry(k.expires_at_ms),
            k.usage_plan_ids.join(","),
            tags_text(&k.tags),
        ]);
    }
    t.render()
}

fn hint(h: &str) -> String {
    if h.is_empty() {
        "-".into()
    } else {
        format!("{h}…")
    }
}

fn expiry(ms: u64) -> String {
    if ms == 0 {
        "never".into()
    } else {
        super::rfc3339_s(ms)
    }
}

fn key_pairs(k: &pb::ApiKey) -> Vec<(&'static str, String)> {
    vec![
        ("id", k.id.clone()),
        ("name", k.name.clone()),
        ("enabled", k.enabled.to_string()),
        ("value hint", hint(&k.value_hint)),
        ("description", k.description.clone()),
        ("customer id", k.customer_id.clone()),
        ("created at", super::rfc3339_s(k.created_at_ms)),
        ("updated at", if k.updated_at_ms == 0 { "-".into() } else { super::rfc3339_s(k.updated_at_ms) }),
        ("expires at", expiry(k.expires_at_ms)),
        ("usage plans", if k.usage_plan_ids.is_empty() { "-".into() } else { k.usage_plan_ids.join(", ") }),
        ("tags", tags_text(&k.tags)),
    ]
}

/// Prints one key (get, update).
pub fn print_key(opts: &AdminOpts, k: &pb::ApiKey) {
    if opts.json {
        emit_json(&Value::Object(key_json(k)));
    } else {
        crate::cli::emit(&kv(&key_pairs(k)));
    }
}

async fn update(opts: &AdminOpts, a: UpdateArgs) -> Outcome {
    let expires_at_ms = match a.expires_at.as_deref() {
        None => None,
        Some("never") => Some(0),
        Some(s) => Some(parse_instant(s).map_err(|e| format!("--expires-at: {e}, or never"))?),
    };
    let req = pb::UpdateApiKeyRequest {
        id: a.id,
        name: a.name,
        description: a.description,
        enabled: a.enabled,
        customer_id: a.customer_id,
        expires_at_ms,
        tags: tags_map(a.tag),
        clear_tags: a.clear_tags,
    };
    let k = client(opts).await?.update_api_key(req).await?.into_inner();
    print_key(opts, &k);
    Ok(())
}

/// Reads the CSV file (or stdin for `-`), refusing anything over
/// [`MAX_IMPORT_FILE_BYTES`] or not UTF-8 before anything is sent.
fn read_csv(path: &str) -> Result<Vec<u8>, String> {
    let too_big =
        || format!("{path}: larger than {} MiB, the most keys import reads", MAX_IMPORT_FILE_BYTES / (1024 * 1024));
    let mut buf = Vec::new();
    let limit = MAX_IMPORT_FILE_BYTES + 1;
    if path == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf).map_err(|e| format!("cannot read stdin: {e}"))?;
    } else {
        let f = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
        f.take(limit).read_to_end(&mut buf).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    if buf.len() as u64 > MAX_IMPORT_FILE_BYTES {
        return Err(too_big());
    }
    if let Err(e) = std::str::from_utf8(&buf) {
        let line = buf[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
        return Err(format!("{path}:{line}: the file is not UTF-8 text; save it as UTF-8"));
    }
    Ok(buf)
}

/// What the chunks of one import returned, with the file's line numbers.
#[derive(Default)]
struct Imported {
    ids: Vec<String>,
    warnings: Vec<pb::ImportWarning>,
}

async fn import(opts: &AdminOpts, a: ImportArgs) -> Outcome {
    let csv = read_csv(&a.file)?;
    let max_rows = a.chunk_rows.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let chunks =
        csv_chunks::split(&csv, MAX_IMPORT_BYTES as usize, max_rows).map_err(|e| format!("{}: {e}", a.file))?;
    if a.fail_on_warnings && chunks.chunks.len() > 1 {
        precheck(&a.file, &csv, &chunks)?;
    }
    let mut c = client(opts).await?;
    let mut done = Imported::default();
    let n = chunks.chunks.len();
    for i in 0..n {
        let req = pb::ImportApiKeysRequest { csv: chunks.body(&csv, i), fail_on_warnings: a.fail_on_warnings };
        let r = match c.import_api_keys(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if n == 1 => return Err(s.into()),
            Err(s) => return Err(chunk_failed(&a.file, &chunks, i, s).into()),
        };
        let warnings = r.warnings.len();
        done.ids.extend(r.ids);
        done.warnings.extend(r.warnings.into_iter().map(|mut w| {
            w.line = u32::try_from(chunks.file_line(i, w.line.into())).unwrap_or(u32::MAX);
            w
        }));
        if n > 1 {
            let ch = &chunks.chunks[i];
            super::note(&format!(
                "chunk {}/{n}: {} row(s) from line {}: {} warning(s)",
                i + 1,
                ch.row_count,
                ch.first_line,
                warnings
            ));
        }
    }
    print_imported(opts, &done);
    if a.fail_on_warnings && !done.warnings.is_empty() {
        return Err(Failure::Message(format!(
            "nothing imported: {} bad row(s) and --fail-on-warnings",
            done.warnings.len()
        )));
    }
    Ok(())
}

/// With `--fail-on-warnings` and several chunks: checks every row as the
/// server will (the same parser), so that a bad row anywhere stops the import
/// before the first chunk is sent.
fn precheck(file: &str, csv: &[u8], chunks: &csv_chunks::Chunks) -> Outcome {
    let mut bad = Vec::new();
    for i in 0..chunks.chunks.len() {
        let (_, warnings) =
            crate::catalog::csv_import::parse(&chunks.body(csv, i)).map_err(|e| format!("{file}: {e}"))?;
        bad.extend(warnings.into_iter().map(|w| format!("line {}: {}", chunks.file_line(i, w.line.into()), w.message)));
    }
    if bad.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = bad.iter().take(20).map(String::as_str).collect();
    Err(Failure::Message(format!(
        "{file}: nothing imported: {} bad row(s) and --fail-on-warnings: {}",
        bad.len(),
        shown.join("; ")
    )))
}

/// The error of chunk `i` (not the first of several), saying what was
/// imported before it and that a re-run is safe.
fn chunk_failed(file: &str, chunks: &csv_chunks::Chunks, i: usize, s: tonic::Status) -> tonic::Status {
    let ch = &chunks.chunks[i];
    let before = if i == 0 {
        "nothing was imported".to_string()
    } else {
        format!("chunks 1 to {i}, the rows before line {}, were imported", ch.first_line)
    };
    let lines = if s.code() == tonic::Code::InvalidArgument {
        format!(
            " Line numbers above count within the chunk: line L is line L+{} of {file}.",
            ch.first_line - chunks.rows_line
        )
    } else {
        String::new()
    };
    tonic::Status::new(
        s.code(),
        format!(
            "{} (chunk {}/{} of {file}, rows from line {}; {before}; importing the file again is safe: a value that exists updates its key).{lines}",
            s.message(),
            i + 1,
            chunks.chunks.len(),
            ch.first_line
        ),
    )
}

fn print_imported(opts: &AdminOpts, r: &Imported) {
    if opts.json {
        let warnings: Vec<Value> = r.warnings.iter().map(|w| json!({ "line": w.line, "message": w.message })).collect();
        emit_json(&json!({ "ids": r.ids, "warnings": warnings }));
    } else {
        let mut s = format!("imported {} key(s)\n", r.ids.len());
        for id in &r.ids {
            s.push_str(&format!("  {id}\n"));
        }
        if !r.warnings.is_empty() {
            let mut t = Table::new(&["LINE", "WARNING"]);
            for w in &r.warnings {
                t.row(vec![w.line.to_string(), w.message.clone()]);
            }
            s.push_str(&format!("{} row(s) not imported:\n", r.warnings.len()));
            s.push_str(&t.render());
        }
        crate::cli::emit(&s);
    }
}
