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
