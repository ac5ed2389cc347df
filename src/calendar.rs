//! UTC calendar arithmetic for quota periods and daily usage, with no time
//! zone database: days are counted since 1970-01-01 (H. Hinnant's
//! `days_from_civil` / `civil_from_days`). `store/redis/scripts/decide.lua`
//! does the same arithmetic in Lua on the Redis server's clock; the tests
//! below and the conformance suite keep the two in step.

use crate::model::Period;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// A calendar date (proleptic Gregorian, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
}

/// Days since 1970-01-01 of a date.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y as i64 - 1 } else { y as i64 };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m as i64 - 3 } else { m as i64 + 9 };
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number.
pub fn civil_from_days(z: i64) -> Date {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    Date { year: (if m <= 2 { y + 1 } else { y }) as i32, month: m, day: d }
}

impl Date {
    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
    }

    /// The date of a day number.
    pub fn from_days(days: i64) -> Self {
        civil_from_days(days)
    }

    /// The UTC date of an instant in ms since the epoch.
    pub fn of_ms(ms: u64) -> Self {
        civil_from_days((ms / DAY_MS) as i64)
    }

    /// Parses `YYYY-MM-DD`, checking that the day exists.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
            return None;
        }
        let year: i32 = s[0..4].parse().ok()?;
        let month: u32 = s[5..7].parse().ok()?;
        let day: u32 = s[8..10].parse().ok()?;
        let d = Date { year, month, day };
        (Date::from_days(d.days()) == d).then_some(d)
    }

    /// `YYYYMMDD`, as used in Redis keys.
    pub fn compact(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The quota period containing `day` (days since the epoch), as
/// `[start, end)` day numbers.
pub fn period_days(period: Period, day: i64) -> (i64, i64) {
    match period {
        Period::Day => (day, day + 1),
        Period::Week => {
            // 1970-01-01 was a Thursday; Monday is 3 days earlier.
            let s = day - (day + 3).rem_euclid(7);
            (s, s + 7)
        }
        Period::Month => {
            let d = civil_from_days(day);
            let s = days_from_civil(d.year, d.month, 1);
            let e =
                if d.month == 12 { days_from_civil(d.year + 1, 1, 1) } else { days_from_civil(d.year, d.month + 1, 1) };
            (s, e)
        }
    }
}

/// The quota period containing the instant `ms`, as `[start, end)` in ms.
pub fn period_bounds_ms(period: Period, ms: u64) -> (u64, u64) {
    let (s, e) = period_days(period, (ms / DAY_MS) as i64);
    (s as u64 * DAY_MS, e as u64 * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for z in -800_000..800_000i64 {
            assert_eq!(civil_from_days(z).days(), z);
        }
        assert_eq!(Date::parse("1970-01-01").unwrap().days(), 0);
        assert_eq!(Date::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        assert!(Date::parse("2023-02-29").is_none());
        assert!(Date::parse("2023-13-01").is_none());
        assert!(Date::parse("2023-1-01").is_none());
        // Digits only: `str::parse` alone would take a sign.
        assert!(Date::parse("2023-+1-01").is_none());
        assert!(Date::parse("+023-01-01").is_none());
        assert!(Date::parse("2023-01-+1").is_none());
    }

    #[test]
    fn periods() {
        let d = |s| Date::parse(s).unwrap().days();
        // 2026-11-26 is a Thursday; its week starts Monday 2026-11-23.
        assert_eq!(period_days(Period::Week, d("2026-11-26")), (d("2026-11-23"), d("2026-11-30")));
        assert_eq!(period_days(Period::Week, d("2026-11-23")), (d("2026-11-23"), d("2026-11-30")));
        assert_eq!(period_days(Period::Week, d("2026-11-22")), (d("2026-11-16"), d("2026-11-23")));
        assert_eq!(period_days(Period::Month, d("2024-02-29")), (d("2024-02-01"), d("2024-03-01")));
        assert_eq!(period_days(Period::Month, d("2023-02-28")), (d("2023-02-01"), d("2023-03-01")));
        assert_eq!(period_days(Period::Month, d("2026-12-31")), (d("2026-12-01"), d("2027-01-01")));
        assert_eq!(period_days(Period::Day, d("2026-12-31")), (d("2026-12-31"), d("2027-01-01")));
    }
}
