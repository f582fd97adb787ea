//! The wall clock, read in one place: RFC 3339 UTC timestamps for ledger entries, key events,
//! capability statements and health checks. Entry times are informational: block hashes never
//! depend on them.

/// Now, as RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SS.fffffffffZ`).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A unix time as RFC 3339 UTC, for messages (certificate and CRL dates).
pub fn rfc3339(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {unix_seconds}"))
}

/// Now, in microseconds since the Unix epoch (the unit of search snapshots).
pub fn now_micros() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// An RFC 3339 timestamp (as this clock writes them) in microseconds since the Unix epoch.
pub fn micros_of(rfc3339: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}
