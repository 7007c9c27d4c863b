//! Event-time helpers: parsing, and the minute/day buckets the aggregates key on.
//! All times are epoch milliseconds UTC.

/// 9999-12-31T23:59:59.999Z, the latest accepted event time.
pub const MAX_MILLIS: i64 = 253_402_300_799_999;
pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// Parses an RFC 3339 timestamp (any offset, optional fraction) to epoch millis; `None` if it is
/// not RFC 3339 or lies before 1970.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let ms = match fast_utc(s.as_bytes()) {
        Some(ms) => ms,
        None => chrono::DateTime::parse_from_rfc3339(s)
            .ok()?
            .timestamp_millis(),
    };
    (0..=MAX_MILLIS).contains(&ms).then_some(ms)
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, parsed without allocation; anything else
/// (offsets, lower-case separators, leap seconds) goes to chrono.
fn fast_utc(b: &[u8]) -> Option<i64> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as i64)
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                ms = ms * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        for _ in digits..3 {
            ms *= 10;
        }
    }
    if i + 1 != b.len() || b[i] != b'Z' {
        return None;
    }
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * DAY_MS + ((h * 60 + mi) * 60 + sec) * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Minute bucket (minutes since epoch).
#[inline]
pub fn minute(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS)
}

/// Day bucket (days since epoch, UTC).
#[inline]
pub fn day(ms: i64) -> i32 {
    ms.div_euclid(DAY_MS) as i32
}

/// RFC 3339 text of epoch millis (for JSON output).
pub fn format_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `YYYY-MM-DD` of a day bucket.
pub fn format_day(day: i32) -> String {
    format_millis(day as i64 * DAY_MS)[..10].to_string()
}

/// Day bucket of a `YYYY-MM-DD` text, if it is one.
pub fn parse_day(s: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((d - epoch).num_days()).ok()
}

/// The UTC calendar month holding day bucket `day`: its first day and the first day of the next
/// month (day buckets).
pub fn month_bounds(day: i32) -> (i32, i32) {
    use chrono::Datelike;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    let Some(d) = epoch.checked_add_signed(chrono::TimeDelta::days(day as i64)) else {
        return (day, day + 1);
    };
    let first = d.with_day(1).expect("every month has a first day");
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first);
    let days = |x: chrono::NaiveDate| (x - epoch).num_days() as i32;
    (days(first), days(next).max(day + 1))
}

/// `YYYY-MM` of the month holding day bucket `day`.
pub fn format_month(day: i32) -> String {
    format_day(day)[..7].to_string()
}

/// Wall-clock now, epoch millis.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_calendar_months() {
        let d = |s| parse_day(s).unwrap();
        assert_eq!(
            month_bounds(d("2024-02-29")),
            (d("2024-02-01"), d("2024-03-01"))
        );
        assert_eq!(
            month_bounds(d("2026-12-01")),
            (d("2026-12-01"), d("2027-01-01"))
        );
        assert_eq!(month_bounds(0), (0, 31));
        assert_eq!(format_month(d("2026-12-31")), "2026-12");
        assert_eq!(
            month_bounds(d("9999-12-31")),
            (d("9999-12-01"), d("9999-12-31") + 1)
        );
    }

    #[test]
    fn rfc3339_with_offset_and_fraction() {
        assert_eq!(parse_rfc3339_millis("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_rfc3339_millis("1970-01-01T01:00:01.5+01:00"),
            Some(1500)
        );
        assert_eq!(parse_rfc3339_millis("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339_millis("yesterday"), None);
    }

    #[test]
    fn fast_path_agrees_with_chrono() {
        for s in [
            "2026-11-24T10:15:00Z",
            "2026-11-24T10:15:00.2Z",
            "2026-11-24T10:15:00.250Z",
            "2024-02-29T23:59:59.999999999Z",
            "2000-03-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let want = chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis();
            assert_eq!(fast_utc(s.as_bytes()), Some(want), "{s}");
        }
        for s in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:15:00.Z",
            "2026-11-24T10:15:00+01:00",
        ] {
            assert_eq!(fast_utc(s.as_bytes()), None, "{s}");
        }
        assert_eq!(parse_rfc3339_millis("2026-02-29T00:00:00Z"), None);
    }

    #[test]
    fn buckets_and_formatting() {
        assert_eq!(minute(119_999), 1);
        assert_eq!(day(DAY_MS + 5), 1);
        assert_eq!(format_day(1), "1970-01-02");
        assert_eq!(format_millis(1500), "1970-01-01T00:00:01.500Z");
    }
}
