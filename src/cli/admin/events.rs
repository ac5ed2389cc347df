//! `tollgate events list`: quota alert events, oldest first (docs/semantics.md,
//! "Quota alerts"). Needs a token with role `read` or more. Paged and
//! selected by `--since` as `tollgate audit list` is.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::audit::{pages_since, parse_since};
use super::table::Table;
use super::{client, emit_json, finish, rfc3339_ms, AdminOpts, Outcome};
use crate::api::pb;

/// Arguments of `tollgate events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub opts: AdminOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// The `events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List quota alert events, oldest first (every page): one line per
    /// event, or with --json one JSON object per event (one per line).
    List {
        /// Only events from this time on: RFC 3339 (2030-01-01T00:00:00Z),
        /// a date (2030-01-01, UTC), or a duration before now (90m, 1h, 7d).
        #[arg(long, value_name = "TIME|DURATION")]
        since: Option<String>,
        /// At most this many events (the oldest ones from --since).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

/// Runs `tollgate events ...`.
pub async fn run(args: EventsArgs) -> std::process::ExitCode {
    let outcome = dispatch(&args.opts, args.command).await;
    finish(&args.opts, outcome)
}

async fn dispatch(opts: &AdminOpts, cmd: EventsCommand) -> Outcome {
    let EventsCommand::List { since, limit } = cmd;
    let since_ms = since.as_deref().map(|s| parse_since(s, crate::model::now_ms())).transpose()?.unwrap_or(0);
    let c = client(opts).await?;
    let events = pages_since(limit, |page_size, page_token| {
        let mut c = c.clone();
        async move {
            let req = pb::ListEventsRequest { since_ms, page_size, page_token };
            let r = c.list_events(req).await?.into_inner();
            Ok((r.events, r.next_page_token))
        }
    })
    .await?;
    if opts.json {
        for e in &events {
            emit_json(&event_json(e));
        }
        return Ok(());
    }
    if events.is_empty() {
        crate::cli::emit("no events\n");
        return Ok(());
    }
    let mut t = Table::new(&["TIME", "KEY", "PLAN", "THRESHOLD", "USED", "PERIOD"]);
    for e in &events {
        t.row(vec![
            rfc3339_ms(e.time_ms),
            e.key_id.clone(),
            e.usage_plan_id.clone(),
            format!("{}%", e.threshold),
            format!("{} of {}", e.used, e.limit),
            format!("{} to {}", rfc3339_ms(e.period_start_ms), rfc3339_ms(e.period_end_ms)),
        ]);
    }
    crate::cli::emit(&t.render());
    Ok(())
}

/// An event as JSON (the times also in RFC 3339).
pub fn event_json(e: &pb::Event) -> Value {
    json!({
        "id": e.id,
        "time_ms": e.time_ms,
        "time": rfc3339_ms(e.time_ms),
        "key_id": e.key_id,
        "usage_plan_id": e.usage_plan_id,
        "threshold": e.threshold,
        "limit": e.limit,
        "used": e.used,
        "period_start_ms": e.period_start_ms,
        "period_end_ms": e.period_end_ms,
        "period_start": rfc3339_ms(e.period_start_ms),
        "period_end": rfc3339_ms(e.period_end_ms),
    })
}
