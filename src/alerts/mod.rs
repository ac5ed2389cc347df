//! Quota alerts (docs/semantics.md, "Quota alerts"): a plan lists
//! `alerts: [80, 100]`, percentages of its quota; when a key's quota use in
//! a period reaches one, ONE event is recorded for that key, threshold and
//! period, whatever the number of replicas and callers.
//!
//! Why it is exact: the decision that makes the quota cross a threshold is
//! the one that records it, in the same atomic step. The key's state hash
//! (`store/redis/scripts/state.lua`, field `a`) keeps which thresholds
//! already fired in the current period; `decide.lua` (function
//! `alerts_after`) sets the threshold's bit and appends the event to a
//! capped stream (`P{cat}:events`, about `--events-max` kept) in the same
//! script call as the quota write. The memory store does the same under its
//! one lock, into an [`EventRing`]. On a Redis Cluster the stream is in
//! another slot than the key: the script sets the bit and answers the
//! crossing, and the replica appends the event right after
//! (`store::redis::events`); an event is lost if that replica dies in
//! between (documented).
//!
//! What a decision passes for it ([`AlertSpec`]: thresholds, key id, plan
//! id) rides with its usage keys, and only for plans with alerts: a plan
//! without alerts costs nothing more.
//!
//! Events are read back oldest first (`ListEvents`, `GET /v1/events`,
//! `tollgate events list`), paged like the audit trail (`crate::ring`), and
//! delivered to `--webhook-url` by [`webhook`], off the decision's path.

pub mod webhook;

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::ring::{Ring, Stamped};

/// Default of `--events-max`: about how many events are kept.
pub const DEFAULT_MAX_EVENTS: usize = 100_000;

/// What a decision of a plan with alerts passes to the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertSpec {
    /// The plan's thresholds, percent of the quota, ascending (1–100).
    pub thresholds: Vec<u32>,
    /// The key's id.
    pub key_id: String,
    /// The plan's id.
    pub plan_id: String,
}

/// A threshold crossed by one decision, as the store found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// The threshold, percent of the quota.
    pub threshold: u32,
    /// The quota limit in force this period.
    pub limit: u64,
    /// Quota used in the period after the decision.
    pub used: u64,
    /// The period's start, ms since the epoch.
    pub period_start_ms: u64,
    /// The period's end, ms since the epoch.
    pub period_end_ms: u64,
}

/// Whether `used` of `limit` reaches `threshold` percent (in integers:
/// `used × 100 ≥ threshold × limit`, as `decide.lua` computes it).
pub fn reaches(used: u64, limit: u64, threshold: u32) -> bool {
    u128::from(used) * 100 >= u128::from(threshold) * u128::from(limit)
}

/// One quota alert event. Never a key value or hash: the key's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// The event's id (`MS-SEQ`: the stream's).
    pub id: String,
    /// When it was recorded, ms since the epoch (with Redis: Redis's clock,
    /// the stream id's time).
    pub time_ms: u64,
    /// The key's id.
    pub key_id: String,
    /// The plan's id.
    pub plan_id: String,
    /// The threshold crossed, percent of the quota.
    pub threshold: u32,
    /// The quota limit in force this period.
    pub limit: u64,
    /// Quota used in the period after the decision that crossed it.
    pub used: u64,
    /// The period's start, ms since the epoch.
    pub period_start_ms: u64,
    /// The period's end, ms since the epoch.
    pub period_end_ms: u64,
}

impl AlertEvent {
    /// The event of `crossing` by the key and plan of `spec`, recorded at
    /// `time_ms` (its id is set when it is appended).
    pub fn of(spec: &AlertSpec, crossing: &Crossing, time_ms: u64) -> Self {
        Self {
            id: String::new(),
            time_ms,
            key_id: spec.key_id.clone(),
            plan_id: spec.plan_id.clone(),
            threshold: crossing.threshold,
            limit: crossing.limit,
            used: crossing.used,
            period_start_ms: crossing.period_start_ms,
            period_end_ms: crossing.period_end_ms,
        }
    }

    /// The event as delivered to a webhook: a JSON object with every field
    /// (and `time`, RFC 3339), the body that is signed.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("type".into(), "quota.threshold_crossed".into());
        }
        v.to_string()
    }

    /// The stream entry's fields (what `decide.lua` writes, and
    /// [`AlertEvent::from_fields`] reads).
    pub fn fields(&self) -> [(&'static str, String); 7] {
        [
            ("key_id", self.key_id.clone()),
            ("plan_id", self.plan_id.clone()),
            ("threshold", self.threshold.to_string()),
            ("limit", self.limit.to_string()),
            ("used", self.used.to_string()),
            ("period_start_ms", self.period_start_ms.to_string()),
            ("period_end_ms", self.period_end_ms.to_string()),
        ]
    }

    /// An event from a stream entry: its id (`MS-SEQ`, whose time it takes)
    /// and fields. `None` when a field is missing or not a number.
    pub fn from_fields(id: &str, get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let num = |f: &str| get(f).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            id: id.to_string(),
            time_ms: crate::ring::parse_id(id)?.0,
            key_id: get("key_id")?,
            plan_id: get("plan_id")?,
            threshold: u32::try_from(num("threshold")?).ok()?,
            limit: num("limit")?,
            used: num("used")?,
            period_start_ms: num("period_start_ms")?,
            period_end_ms: num("period_end_ms")?,
        })
    }
}

impl Stamped for AlertEvent {
    fn id(&self) -> &str {
        &self.id
    }
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
    fn time_ms(&self) -> u64 {
        self.time_ms
    }
}

/// The memory store's events: a capped ring, and a wake-up for the webhook.
#[derive(Debug)]
pub struct EventRing {
    ring: Mutex<Ring<AlertEvent>>,
    max: std::sync::atomic::AtomicUsize,
    /// Notified at every append (the webhook task waits on it).
    pub appended: Notify,
}

impl Default for EventRing {
    fn default() -> Self {
        Self {
            ring: Mutex::default(),
            max: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_EVENTS),
            appended: Notify::new(),
        }
    }
}

impl EventRing {
    /// Keeps about `n` events (`--events-max`).
    pub fn set_max(&self, n: usize) {
        self.max.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring<AlertEvent>> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event; returns its id.
    pub fn push(&self, event: AlertEvent) -> String {
        let max = self.max.load(std::sync::atomic::Ordering::Relaxed);
        let id = self.lock().push(event, max);
        metrics::counter!("tollgate_alert_events_total").increment(1);
        self.appended.notify_waiters();
        id
    }

    /// Up to `limit` events after `after`, or else from `since_ms`.
    pub fn page(&self, since_ms: u64, after: Option<&str>, limit: usize) -> Vec<AlertEvent> {
        self.lock().page(since_ms, after, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_in_integers() {
        assert!(!reaches(79, 100, 80));
        assert!(reaches(80, 100, 80));
        assert!(reaches(3, 3, 100) && !reaches(2, 3, 100));
        // 1 of 3 is 33.3 %: reaches 33, not 34
        assert!(reaches(1, 3, 33) && !reaches(1, 3, 34));
        assert!(reaches(u64::MAX, u64::MAX, 100));
    }

    #[test]
    fn an_event_survives_its_stream_fields() {
        let spec = AlertSpec { thresholds: vec![80], key_id: "k1".into(), plan_id: "p".into() };
        let c = Crossing { threshold: 80, limit: 10, used: 8, period_start_ms: 0, period_end_ms: 86_400_000 };
        let e = AlertEvent { id: "5-1".into(), ..AlertEvent::of(&spec, &c, 5) };
        let fields: std::collections::HashMap<_, _> = e.fields().into_iter().collect();
        let back = AlertEvent::from_fields("5-1", |f| fields.get(f).cloned()).unwrap();
        assert_eq!(back, e);
        assert!(e.to_json().contains("\"threshold\":80"));
    }
}
