//! Usage metering for the control plane: GetUsage and UpdateUsage
//! (docs/semantics.md, "Usage").
//!
//! Decisions count usage in the same atomic step that consumes the limits
//! (`decide.lua`): per key, per plan, per UTC day (per local date for a plan
//! whose quota has a time zone: docs/semantics.md, "Local-time quotas"), a
//! record of the units
//! used that day and of the quota used in the period after the day's last
//! call. GetUsage reads those records; for a day with no record, the quota
//! used carries over from the previous day of the same period (or is 0 at a
//! period's start), so `remaining` is always "the quota left at the end of
//! that day within its period".

use crate::api::pb;
use crate::calendar::Date;
use crate::catalog::admin::AdminError;
use crate::catalog::store::CatalogService;
use crate::localtime::day_start_ms;
use crate::model::{Invalid, UsagePlan};
use crate::store::keys::Keys;
use crate::store::{LimitStore, Store, StoreError};

/// Most days one GetUsage call may cover.
pub const MAX_DAYS: i64 = 90;

/// The largest `remaining` UpdateUsage accepts: 2^53 - 1, the largest
/// integer Redis's Lua (whose numbers are doubles) counts exactly. Above it,
/// the Redis store would round the grant and write a usage record that
/// GetUsage cannot read back.
pub const MAX_REMAINING: i64 = (1 << 53) - 1;

/// Reads and changes usage in the limit store.
#[derive(Clone)]
pub struct UsageService {
    store: Store,
    keys: Keys,
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => AdminError::Unavailable(format!("the limit store cannot be reached: {m}")),
            StoreError::Internal(m) => AdminError::Internal(m),
        }
    }
}

fn parse_date(field: &str, s: &str) -> Result<Date, Invalid> {
    Date::parse(s).ok_or_else(|| Invalid::new(field, format!("{s:?} is not a date written YYYY-MM-DD")))
}

fn plan(catalog: &CatalogService, id: &str) -> Result<UsagePlan, AdminError> {
    if id.is_empty() {
        return Err(Invalid::new("usage_plan_id", "is required").into());
    }
    let snap = catalog.snapshot();
    snap.small()
        .plan_records
        .get(id)
        .cloned()
        .ok_or_else(|| AdminError::NotFound(format!("usage plan {id:?} does not exist")))
}

/// The position after which a page starts (the hex of the last id shown).
fn decode_position(token: &str) -> Result<Option<String>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Invalid::new("position", "is not a position from a previous answer");
    let raw = hex::decode(token).map_err(|_| bad())?;
    String::from_utf8(raw).map(Some).map_err(|_| bad())
}

impl UsageService {
    /// Usage kept in `store`, under `keys`.
    pub fn new(store: Store, keys: Keys) -> Self {
        Self { store, keys }
    }

    /// Up to `limit` quota alert events after `after`, or else from
    /// `since_ms`, oldest first; and the id to continue after, when there
    /// may be more (`crate::alerts`).
    pub async fn events(
        &self,
        since_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<crate::alerts::AlertEvent>, Option<String>), AdminError> {
        Ok(self.store.events(since_ms, after, limit).await?)
    }

    /// GetUsage: per key of the plan, `[used, remaining]` per day.
    pub async fn get_usage(&self, catalog: &CatalogService, r: pb::GetUsageRequest) -> Result<pb::Usage, AdminError> {
        let plan = plan(catalog, &r.usage_plan_id)?;
        let start = parse_date("start_date", &r.start_date)?;
        let end = parse_date("end_date", &r.end_date)?;
        let (s, e) = (start.days(), end.days());
        if e < s {
            return Err(Invalid::new("end_date", format!("{end} is before start_date {start}")).into());
        }
        if e - s + 1 > MAX_DAYS {
            return Err(Invalid::new(
                "end_date",
                format!("the range {start} to {end} is {} days; at most {MAX_DAYS} per call", e - s + 1),
            )
            .into());
        }
        let limit = match r.limit {
            0 => 25,
            1..=500 => r.limit,
            n => return Err(Invalid::new("limit", format!("must be 1 to 500, got {n}")).into()),
        };
        let (key_ids, next) = match &r.key_id {
            Some(k) => {
                if catalog.key(k).await?.is_none() {
                    return Err(AdminError::NotFound(format!("API key {k:?} does not exist")));
                }
                let after = decode_position(&r.position)?;
                (if after.is_some_and(|a| a >= *k) { Vec::new() } else { vec![k.clone()] }, String::new())
            }
            None => {
                // A page of the plan's keys from its index: O(log n + page).
                let after = decode_position(&r.position)?;
                let mut ids = catalog.plan_key_ids(&plan.id, after.as_deref(), limit as usize + 1).await?;
                let more = ids.len() > limit as usize;
                ids.truncate(limit as usize);
                let next = if more {
                    ids.last().map(|l| hex::encode(l.as_bytes())).unwrap_or_default()
                } else {
                    String::new()
                };
                (ids, next)
            }
        };

        // Read from the start of the period containing `start`, to carry the
        // quota used into the first days of the range.
        // (Days are local dates of the quota's time zone when it has one:
        // its usage records are kept per local date.)
        let from = plan.quota.map(|q| q.calendar().period_days(s).0).unwrap_or(s);
        let days: Vec<i64> = (from..=e).collect();
        let keys = key_ids.iter().map(|k| self.keys.usage(k, &plan.id)).collect();
        let records = self.store.read_usage(keys, days.clone()).await?;
        let mut items = std::collections::HashMap::new();
        for (i, k) in key_ids.iter().enumerate() {
            let recs = &records[i * days.len()..(i + 1) * days.len()];
            let mut out = Vec::with_capacity((e - s + 1) as usize);
            let mut used_in_period: i64 = 0;
            let mut period_start = None;
            for (j, &day) in days.iter().enumerate() {
                let rec = recs[j];
                let remaining = plan.quota.map(|q| {
                    let (ps, pe) = q.calendar().period_days(day);
                    if period_start != Some(ps) {
                        period_start = Some(ps);
                        used_in_period = 0;
                    }
                    if let Some(qu) = rec.and_then(|r| r.q) {
                        used_in_period = qu;
                    }
                    // The offset belongs to the one period containing the
                    // plan's creation: not to the periods before it (the plan
                    // did not exist), nor after.
                    let (ps_ms, pe_ms) = (day_start_ms(q.time_zone, ps), day_start_ms(q.time_zone, pe));
                    let created_in_period = (ps_ms..pe_ms).contains(&(plan.created_at_ms as i64));
                    let eff = (if created_in_period { q.limit - q.offset } else { q.limit }) as i64;
                    (eff - used_in_period).max(0) as u64
                });
                if day >= s {
                    out.push(pb::DailyUsage { used: rec.map(|r| r.n.max(0) as u64).unwrap_or(0), remaining });
                }
            }
            items.insert(k.clone(), pb::KeyUsage { days: out });
        }
        Ok(pb::Usage {
            usage_plan_id: plan.id.clone(),
            start_date: start.to_string(),
            end_date: end.to_string(),
            items,
            position: next,
            time_zone: plan.quota.and_then(|q| q.time_zone).map_or("UTC", |z| z.name()).to_string(),
        })
    }

    /// UpdateUsage: sets the key's remaining quota in the current period,
    /// then tells every replica (`CatalogService::usage_changed`), so that no
    /// deny cache keeps denying on what the quota was.
    pub async fn update_usage(
        &self,
        catalog: &CatalogService,
        r: pb::UpdateUsageRequest,
    ) -> Result<pb::UsageUpdated, AdminError> {
        let plan = plan(catalog, &r.usage_plan_id)?;
        if r.key_id.is_empty() {
            return Err(Invalid::new("key_id", "is required").into());
        }
        if !(0..=MAX_REMAINING).contains(&r.remaining) {
            return Err(Invalid::new("remaining", format!("must be 0 to {MAX_REMAINING}, got {}", r.remaining)).into());
        }
        let Some(key) = catalog.key(&r.key_id).await? else {
            return Err(AdminError::NotFound(format!("API key {:?} does not exist", r.key_id)));
        };
        if !key.plans.contains(&plan.id) {
            return Err(AdminError::NotFound(format!("API key {:?} is not in usage plan {:?}", r.key_id, plan.id)));
        }
        let Some(quota) = plan.quota else {
            return Err(AdminError::Conflict(format!("usage plan {:?} has no quota to update", plan.id)));
        };
        let (remaining, period_end_ms) = self
            .store
            .set_remaining(&self.keys.usage(&r.key_id, &plan.id), &quota, plan.created_at_ms, r.remaining as u64)
            .await?;
        // Every replica's deny cache forgets the key's quota denials (the
        // limit store is already changed: a decision made after this sees
        // the new remaining).
        catalog.usage_changed(&r.key_id).await.map_err(|e| {
            AdminError::Unavailable(format!(
                "the remaining quota is set, but the other replicas could not be told to forget their cached denials ({e}); retry"
            ))
        })?;
        tracing::info!(plan_id = %plan.id, key_id = %r.key_id, remaining, "usage updated");
        Ok(pb::UsageUpdated { usage_plan_id: plan.id.clone(), key_id: r.key_id, remaining, period_end_ms })
    }
}
