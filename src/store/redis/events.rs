//! Quota alert events in Redis (`crate::alerts`): the crossings
//! `decide.lua` answers, appending them on a cluster, and reading the
//! stream back.
//!
//! With one node (single, Sentinel) the script appends each event to the
//! stream itself, in the call that set its bit: nothing is left to do here
//! but count it. On a Redis Cluster the stream (`P{cat}:events`) is in
//! another slot than the key's state hash, which one script cannot touch:
//! the script sets the bit and answers the crossing, and [`append_after`]
//! appends the event right after the call, on a task of its own (the
//! decision does not wait for it). **An event is lost if this replica dies
//! between the two** (docs/semantics.md, "Quota alerts"); it is never
//! recorded twice, since the bit was set with the decision.

use redis::cluster_async::ClusterConnection;

use super::link::{Conn, Link};
use super::{classify, EventsAt};
use crate::alerts::{AlertEvent, AlertSpec, Crossing};
use crate::store::{Check, StoreError};

/// A quota alert crossed by one request of a script call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossed {
    /// The request (index in the call; on a cluster, after `cluster::step`,
    /// the index of its check).
    pub request: usize,
    /// What was crossed.
    pub crossing: Crossing,
    /// The id of the event the script appended, if it did.
    pub id: Option<String>,
}

/// Splits the crossings off the script's reply (`values` after its first
/// `n` values: seven per crossing, `decide.lua`'s header).
pub(crate) fn crossed(values: &mut Vec<redis::Value>, n: usize) -> redis::RedisResult<Vec<Crossed>> {
    if values.len() <= n {
        return Ok(Vec::new());
    }
    let tail = values.split_off(n);
    let bad =
        |what: String| redis::RedisError::from((redis::ErrorKind::Parse, "decide.lua: a bad alert crossing", what));
    if !tail.len().is_multiple_of(7) {
        return Err(bad(format!("{} values after the answers", tail.len())));
    }
    let int = |v: &redis::Value| match v {
        redis::Value::Int(i) if *i >= 0 => Some(*i as u64),
        _ => None,
    };
    tail.chunks_exact(7)
        .map(|c| {
            let nums: Option<Vec<u64>> = c[..6].iter().map(int).collect();
            let nums = nums.ok_or_else(|| bad(format!("{c:?}")))?;
            let id = match &c[6] {
                redis::Value::BulkString(b) if !b.is_empty() => Some(String::from_utf8_lossy(b).into_owned()),
                redis::Value::SimpleString(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            };
            Ok(Crossed {
                request: (nums[0] as usize).saturating_sub(1),
                crossing: Crossing {
                    threshold: u32::try_from(nums[1]).map_err(|_| bad(format!("{c:?}")))?,
                    limit: nums[2],
                    used: nums[3],
                    period_start_ms: nums[4],
                    period_end_ms: nums[5],
                },
                id,
            })
        })
        .collect()
}

/// Counts the events a script appended (one node).
pub(crate) fn appended(crossings: &[Crossed]) {
    for c in crossings {
        if c.id.is_some() {
            metrics::counter!("tollgate_alert_events_total").increment(1);
        } else {
            metrics::counter!("tollgate_alert_events_lost_total").increment(1);
            tracing::error!(
                threshold = c.crossing.threshold,
                "a quota alert was crossed but its event could not be appended to the stream (is the key a stream?)"
            );
        }
    }
}

/// Appends the events of `crossings` (by check) to the stream, on a task of
/// its own: a cluster's script could not (module docs).
pub(crate) fn append_after(conn: ClusterConnection, events: &EventsAt, checks: &[&Check], crossings: Vec<Crossed>) {
    if crossings.is_empty() {
        return;
    }
    let specs: Vec<(AlertSpec, Crossing)> = crossings
        .into_iter()
        .filter_map(|c| {
            let spec = checks.get(c.request)?.usage.as_ref()?.alerts.as_deref()?;
            Some((spec.clone(), c.crossing))
        })
        .collect();
    let events = events.clone();
    tokio::spawn(async move {
        let mut conn = conn;
        for (spec, crossing) in specs {
            let e = AlertEvent::of(&spec, &crossing, 0);
            match xadd(&events, &e).query_async::<String>(&mut conn).await {
                Ok(_) => metrics::counter!("tollgate_alert_events_total").increment(1),
                Err(err) => {
                    metrics::counter!("tollgate_alert_events_lost_total").increment(1);
                    tracing::error!(error = %err, key_id = %e.key_id, plan_id = %e.plan_id, threshold = e.threshold,
                        "a quota alert event could not be appended to the stream; it is lost");
                }
            }
        }
    });
}

/// The `XADD` of an event (the fields `decide.lua` writes).
fn xadd(events: &EventsAt, e: &AlertEvent) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&events.stream).arg("MAXLEN").arg("~").arg(events.max).arg("*");
    for (f, v) in e.fields() {
        cmd.arg(f).arg(v);
    }
    cmd
}

/// Runs one command on the link's connection.
pub async fn query<T: redis::FromRedisValue>(link: &Link, cmd: &redis::Cmd) -> Result<T, StoreError> {
    match link.conn().await? {
        Conn::Node { mut conn, .. } => cmd.query_async(&mut conn).await.map_err(classify),
        Conn::Cluster(mut conn) => cmd.query_async(&mut conn).await.map_err(classify),
    }
}

/// Events of a stream entry list (`XRANGE`, `XREADGROUP`, `XAUTOCLAIM`).
pub fn events_of(ids: Vec<redis::streams::StreamId>) -> Vec<AlertEvent> {
    ids.into_iter()
        .filter_map(|entry| {
            let e = AlertEvent::from_fields(&entry.id, |f| entry.get::<String>(f));
            if e.is_none() {
                tracing::warn!(id = %entry.id, "an entry of the events stream is not an event; skipped");
            }
            e
        })
        .collect()
}

/// Up to `limit` events after `after`, or else from `since_ms`, oldest first.
pub async fn page(
    link: &Link,
    stream: &str,
    since_ms: u64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<AlertEvent>, StoreError> {
    let reply = match link.conn().await? {
        Conn::Node { mut conn, .. } => crate::ring::xrange(&mut conn, stream, since_ms, after, limit).await,
        Conn::Cluster(mut conn) => crate::ring::xrange(&mut conn, stream, since_ms, after, limit).await,
    }
    .map_err(classify)?;
    Ok(events_of(reply.ids))
}
