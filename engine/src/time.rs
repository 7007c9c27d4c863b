//! Event-time helpers: parsing, and the minute/day buckets the aggregates key on.
//! All times are epoch milliseconds UTC.

/// 9999-12-31T23:59:59.999Z, the latest accepted event time.
pub const MAX_MILLIS: i64 = 253_402_300_799_999;
pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// Parses an RFC 3339 timestamp (any offset, optional fraction) to epoch millis; `None` if it is
/// not RFC 3339 or lies before 1970.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    let ms = t.timestamp_millis();
    (0..=MAX_MILLIS).contains(&ms).then_some(ms)
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
    fn buckets_and_formatting() {
        assert_eq!(minute(119_999), 1);
        assert_eq!(day(DAY_MS + 5), 1);
        assert_eq!(format_day(1), "1970-01-02");
        assert_eq!(format_millis(1500), "1970-01-01T00:00:01.500Z");
    }
}
