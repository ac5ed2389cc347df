//! Local-time quota periods (docs/semantics.md, "Local-time quotas"): a
//! quota with a `time_zone` starts its DAY, WEEK (Monday) and MONTH at local
//! midnight of that zone, daylight-saving changes included (a day of 23 or 25
//! hours), and a MONTH quota with an `anchor_day` starts on that day of each
//! month (anchor 15: Jan 15 → Feb 15).
//!
//! Why the boundaries are computed here and not in Redis: Redis's Lua has no
//! time zone database, and a hand-written one in Lua would drift from the one
//! this binary validates names with. So the replica computes, with jiff and
//! ONLY its bundled database (Cargo.toml: `tzdb-bundle-always`, so every
//! replica of one build agrees, whatever the host's `/usr/share/zoneinfo`
//! says), the previous, current and next period around its own clock, and
//! hands the four boundaries to the script ([`PeriodTable::code`]); the
//! script still decides by Redis's clock, picking the period that contains
//! it. A replica clock a whole period off makes the script refuse the
//! request with a clear error rather than count in a wrong period.
//!
//! A period is named by the day number (days since 1970-01-01) of its LOCAL
//! start date, as the quota value's `STARTDAY` is for UTC periods; usage
//! records of a zoned plan are kept per local date ([`DayTable`]).
//!
//! Quotas in UTC with no anchor never come here: they keep the calendar
//! arithmetic of `crate::calendar` and the scripts' own (no cost for them).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::calendar::{civil_from_days, days_from_civil, period_days, DAY_MS};
use crate::model::{Invalid, Period};

/// The longest time zone name accepted (IANA names are far shorter).
const MAX_NAME: usize = 64;

struct ZoneEntry {
    name: String,
    tz: TimeZone,
}

/// Every zone named so far, by canonical name: at most the few hundred names
/// of the bundled database, each kept once for the life of the process.
static ZONES: LazyLock<Mutex<HashMap<String, &'static ZoneEntry>>> = LazyLock::new(Default::default);

/// A validated IANA time zone of the bundled database, cheap to copy and
/// compare (quotas are `Copy`): a handle on one interned entry.
#[derive(Clone, Copy)]
pub struct Zone(&'static ZoneEntry);

impl Zone {
    /// Looks `name` up in the bundled database (IANA names, any case), or
    /// says what is wrong in words for `quota.time_zone`.
    pub fn parse(name: &str) -> Result<Zone, Invalid> {
        let unknown = || {
            let shown: String = name.chars().take(MAX_NAME).collect();
            Invalid::new("time_zone", format!("unknown time zone '{shown}' (an IANA name such as Asia/Tokyo)"))
        };
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(unknown());
        }
        let tz = TimeZone::get(name).map_err(|_| unknown())?;
        let canonical = tz.iana_name().unwrap_or(name).to_string();
        let mut zones = ZONES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = zones.get(&canonical) {
            return Ok(Zone(e));
        }
        let entry: &'static ZoneEntry = Box::leak(Box::new(ZoneEntry { name: canonical.clone(), tz }));
        zones.insert(canonical, entry);
        Ok(Zone(entry))
    }

    /// Its canonical IANA name (`Asia/Tokyo`).
    pub fn name(&self) -> &'static str {
        &self.0.name
    }

    /// The jiff time zone.
    pub fn tz(&self) -> &'static TimeZone {
        &self.0.tz
    }

    /// An id for caches: entries are interned, one address per zone.
    fn id(&self) -> usize {
        self.0 as *const ZoneEntry as usize
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}
impl Eq for Zone {}

impl std::hash::Hash for Zone {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.name.hash(h)
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name())
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Zone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Zone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Zone::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// The day number of the local date at instant `ms` (UTC without a zone).
fn wall_day(zone: Option<Zone>, ms: i64) -> i64 {
    match zone {
        None => ms.div_euclid(DAY_MS as i64),
        Some(z) => {
            let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
            let d = z.tz().to_datetime(ts).date();
            days_from_civil(i32::from(d.year()), d.month() as u32, d.day() as u32)
        }
    }
}

/// The first instant (ms) of local date `day`: local midnight, or when
/// midnight does not exist that day (a clock change at midnight), the first
/// instant after the gap.
pub fn day_start_ms(zone: Option<Zone>, day: i64) -> i64 {
    match zone {
        None => day * DAY_MS as i64,
        Some(z) => {
            let d = civil_from_days(day);
            let start = jiff::civil::Date::new(d.year as i16, d.month as i8, d.day as i8)
                .and_then(|d| z.tz().to_timestamp(d.at(0, 0, 0, 0)));
            match start {
                Ok(ts) => ts.as_millisecond(),
                // (outside jiff's range, years -9999..=9999: never for a
                // clock of this era)
                Err(_) => day * DAY_MS as i64,
            }
        }
    }
}

/// The period of `period` (with `anchor`, MONTH only; 0 or 1: the 1st)
/// containing the local date `day`, as `[start, end)` local day numbers.
/// Pure calendar arithmetic: the zone only matters for instants.
pub fn local_period_days(period: Period, anchor: u8, day: i64) -> (i64, i64) {
    if period != Period::Month || anchor <= 1 {
        return period_days(period, day);
    }
    let a = u32::from(anchor);
    let d = civil_from_days(day);
    let (y, m) = if d.day >= a {
        (d.year, d.month)
    } else if d.month == 1 {
        (d.year - 1, 12)
    } else {
        (d.year, d.month - 1)
    };
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(y, m, a), days_from_civil(ny, nm, a))
}

/// What a quota's calendar is: its zone (None: UTC), period and anchor day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Calendar {
    /// The zone, None for UTC.
    pub zone: Option<Zone>,
    /// The period.
    pub period: Period,
    /// The anchor day (MONTH), 0 or 1 for the 1st.
    pub anchor: u8,
}

impl Calendar {
    /// The period containing the local date `day`, `[start, end)` days.
    pub fn period_days(&self, day: i64) -> (i64, i64) {
        local_period_days(self.period, self.anchor, day)
    }

    /// The period containing instant `ms`: `[start, end)` local days and
    /// their first instants in ms. Found by the instants, not only the wall
    /// date (a zone whose clock goes back across midnight has instants of a
    /// date after the next date began).
    pub fn period_at(&self, ms: i64) -> ((i64, i64), (i64, i64)) {
        let mut days = self.period_days(wall_day(self.zone, ms));
        for _ in 0..4 {
            let (s, e) = (day_start_ms(self.zone, days.0), day_start_ms(self.zone, days.1));
            if ms < s {
                days = self.period_days(days.0 - 1);
            } else if ms >= e {
                days = self.period_days(days.1);
            } else {
                return (days, (s, e));
            }
        }
        (days, (day_start_ms(self.zone, days.0), day_start_ms(self.zone, days.1)))
    }

    /// The previous, current and next period around instant `ms`.
    pub fn table(&self, ms: i64) -> PeriodTable {
        let (cur, _) = self.period_at(ms);
        let prev = self.period_days(cur.0 - 1);
        let next = self.period_days(cur.1);
        let starts = [prev.0, cur.0, next.0];
        let bounds = [
            day_start_ms(self.zone, prev.0),
            day_start_ms(self.zone, cur.0),
            day_start_ms(self.zone, next.0),
            day_start_ms(self.zone, next.1),
        ];
        let code = format!(
            "Z:{}:{}:{}:{}:{}:{}:{}",
            bounds[0], bounds[1], bounds[2], bounds[3], starts[0], starts[1], starts[2]
        );
        PeriodTable { bounds, starts, code }
    }
}

/// Three consecutive periods of a quota's calendar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeriodTable {
    /// Their boundaries, ms: period i is `[bounds[i], bounds[i + 1])`.
    pub bounds: [i64; 4],
    /// Each one's local start date (days since 1970-01-01).
    pub starts: [i64; 3],
    /// How `decide.lua` / `set_remaining.lua` read it (a rule kind):
    /// `Z:B0:B1:B2:B3:S0:S1:S2`.
    pub code: String,
}

impl PeriodTable {
    /// The period containing `ms`: (start day, start ms, end ms).
    pub fn at(&self, ms: i64) -> Option<(i64, i64, i64)> {
        (0..3)
            .find(|&i| self.bounds[i] <= ms && ms < self.bounds[i + 1])
            .map(|i| (self.starts[i], self.bounds[i], self.bounds[i + 1]))
    }
}

thread_local! {
    /// The tables last computed on this thread, per calendar: a table is
    /// reused while the instant asked about is in its current period, so a
    /// decision of a zoned quota costs a hash lookup, not a zone lookup.
    static TABLES: RefCell<HashMap<(usize, Period, u8), Arc<PeriodTable>>> = RefCell::new(HashMap::new());
}

impl Calendar {
    /// [`Calendar::table`], cached per thread while `ms` stays in the
    /// table's current period.
    pub fn cached_table(&self, ms: i64) -> Arc<PeriodTable> {
        let id = (self.zone.map_or(0, |z| z.id()), self.period, self.anchor);
        TABLES.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(tab) = t.get(&id) {
                if tab.bounds[1] <= ms && ms < tab.bounds[2] {
                    return tab.clone();
                }
            }
            let tab = Arc::new(self.table(ms));
            if t.len() > 1024 {
                t.clear();
            }
            t.insert(id, tab.clone());
            tab
        })
    }
}

/// The local day tables usage records are counted by: a [`PeriodTable`]
/// of a DAY calendar in the plan's zone.
pub type DayTable = PeriodTable;

/// The period of quota `q` containing instant `now_ms`: its local start
/// date (days), start and end (ms). UTC quotas starting on the 1st: the
/// calendar arithmetic of `crate::calendar`.
pub fn quota_period(q: &crate::model::Quota, now_ms: u64) -> (i64, u64, u64) {
    if q.is_utc_plain() {
        let (s, e) = crate::calendar::period_bounds_ms(q.period, now_ms);
        return ((s / DAY_MS) as i64, s, e);
    }
    let ms = now_ms.min(i64::MAX as u64) as i64;
    let t = q.calendar().cached_table(ms);
    let (d, s, e) = t.at(ms).unwrap_or((t.starts[1], t.bounds[1], t.bounds[2]));
    (d, s.max(0) as u64, e.max(0) as u64)
}

/// The local date (days since 1970-01-01) whose usage record an instant
/// counts in: in `zone`, or the UTC date.
pub fn usage_day(zone: Option<Zone>, now_ms: u64) -> i64 {
    match zone {
        None => (now_ms / DAY_MS) as i64,
        Some(_) => {
            let ms = now_ms.min(i64::MAX as u64) as i64;
            let t = Calendar { zone, period: Period::Day, anchor: 0 }.cached_table(ms);
            t.at(ms).map_or(t.starts[1], |p| p.0)
        }
    }
}

/// The day table (a DAY [`PeriodTable`]) of usage records in `zone` around
/// `now_ms`.
pub fn day_table(zone: Zone, now_ms: u64) -> Arc<DayTable> {
    let ms = now_ms.min(i64::MAX as u64) as i64;
    Calendar { zone: Some(zone), period: Period::Day, anchor: 0 }.cached_table(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Date;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }
    fn day(s: &str) -> i64 {
        Date::parse(s).unwrap().days()
    }

    #[test]
    fn names() {
        assert_eq!(Zone::parse("asia/tokyo").unwrap().name(), "Asia/Tokyo");
        assert_eq!(Zone::parse("Asia/Tokyo").unwrap(), Zone::parse("ASIA/TOKYO").unwrap());
        let e = Zone::parse("Mars/Olympus").unwrap_err();
        assert_eq!(e.to_string(), "time_zone: unknown time zone 'Mars/Olympus' (an IANA name such as Asia/Tokyo)");
        assert!(Zone::parse("").is_err());
        assert!(Zone::parse(&"x".repeat(10_000)).is_err());
    }

    #[test]
    fn dst_days() {
        let ny = Calendar { zone: Some(Zone::parse("America/New_York").unwrap()), period: Period::Day, anchor: 0 };
        // 2026-03-08: 23 hours, 05:00Z to 04:00Z next day.
        let (d, (s, e)) = ny.period_at(ms("2026-03-08T12:00:00Z"));
        assert_eq!((d.0, s, e), (day("2026-03-08"), ms("2026-03-08T05:00:00Z"), ms("2026-03-09T04:00:00Z")));
        // 2026-11-01: 25 hours.
        let (_, (s, e)) = ny.period_at(ms("2026-11-01T12:00:00Z"));
        assert_eq!((s, e), (ms("2026-11-01T04:00:00Z"), ms("2026-11-02T05:00:00Z")));
        let berlin = Calendar { zone: Some(Zone::parse("Europe/Berlin").unwrap()), period: Period::Month, anchor: 0 };
        let t = berlin.table(ms("2026-03-30T00:00:00Z"));
        assert_eq!(t.bounds[1], ms("2026-02-28T23:00:00Z"));
        assert_eq!(t.bounds[2], ms("2026-03-31T22:00:00Z"));
        assert_eq!(t.starts, [day("2026-02-01"), day("2026-03-01"), day("2026-04-01")]);
        assert_eq!(t.at(ms("2026-03-31T21:59:59.999Z")).unwrap().0, day("2026-03-01"));
        assert_eq!(t.at(ms("2026-03-31T22:00:00Z")).unwrap().0, day("2026-04-01"));
    }

    #[test]
    fn anchors() {
        let p = |a, s| local_period_days(Period::Month, a, day(s));
        assert_eq!(p(15, "2026-01-20"), (day("2026-01-15"), day("2026-02-15")));
        assert_eq!(p(15, "2026-01-14"), (day("2025-12-15"), day("2026-01-15")));
        assert_eq!(p(28, "2024-02-29"), (day("2024-02-28"), day("2024-03-28")));
        assert_eq!(p(28, "2024-02-27"), (day("2024-01-28"), day("2024-02-28")));
        assert_eq!(p(1, "2024-02-27"), (day("2024-02-01"), day("2024-03-01")));
    }
}
