//! `bench-catalog list`: the time of `ListApiKeys` pages, read in order from
//! the first.

use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::{summary, AdminTarget};
use crate::api::pb;
use crate::cli::admin::{client, Outcome};

/// Arguments of `bench-catalog list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub admin: AdminTarget,
    /// Keys per page (1 to 500).
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
    /// How many pages to read, at most.
    #[arg(long, default_value_t = 10)]
    pub pages: u32,
}

/// Reads the pages and prints `{pages, keys, p50_ms, p99_ms, max_ms, ...}`.
pub async fn run(a: &ListArgs) -> Outcome {
    let mut c = client(&a.admin.opts()).await?;
    let (mut token, mut keys, mut times) = (String::new(), 0usize, Vec::new());
    for _ in 0..a.pages {
        let req = pb::ListApiKeysRequest { page_size: a.page_size, page_token: token, ..Default::default() };
        let t = Instant::now();
        let r = c.list_api_keys(req).await?.into_inner();
        times.push(t.elapsed().as_micros() as u64);
        keys += r.keys.len();
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let first_ms = times.first().map(|us| *us as f64 / 1000.0);
    let mut report = summary(&mut times);
    report["page_size"] = json!(a.page_size);
    report["keys"] = json!(keys);
    report["first_ms"] = json!(first_ms);
    crate::cli::emit(&format!("{report}\n"));
    Ok(())
}
