//! RFC 5424 syslog messages for IHE ITI-20, and RFC 5425 octet-counting frames.
//!
//! Boundary: an audit message (XML) and a few header values in, bytes out. The header follows
//! IHE ITI TF-2 3.20.4.1.2 and DICOM PS3.15 A.6: PRI with facility 10 (security/authorization) and
//! severity 5 (notice) or 4 (warning, for failures), VERSION 1, the event time as TIMESTAMP,
//! MSGID `IHE+RFC-3881`, and the MSG as a UTF-8 XML document preceded by a BOM.
//! Structured data: `[meta sequenceId="N"]` (RFC 5424 7.3.1) carries the queue's sequence number so
//! a receiver sees gaps and repeats, and `[origin software="medgate" swVersion="..."]` (7.2).

use thiserror::Error;

/// APP-NAME.
pub const APP_NAME: &str = "medgate";
/// MSGID for DICOM audit messages (IHE ITI TF-2 3.20.4.1.2).
pub const MSGID: &str = "IHE+RFC-3881";
/// Facility 10: security/authorization messages (IHE ITI-20, DICOM PS3.15 A.6).
const FACILITY: u8 = 10;
/// RFC 5424 7.3.1: sequenceId runs from 1 to 2147483647, then wraps to 1.
const SEQUENCE_ID_MAX: u64 = 2_147_483_647;
/// The UTF-8 byte order mark that starts MSG-UTF8 (RFC 5424 6.4).
const BOM: &str = "\u{feff}";

/// Syslog severities used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 4: a failure (a refused access).
    Warning = 4,
    /// 5: normal but significant.
    Notice = 5,
}

/// A header value that RFC 5424 does not allow.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SyslogError {
    #[error("syslog {field} {value:?}: {problem}")]
    Field { field: &'static str, value: String, problem: &'static str },
}

/// The fixed parts of every message this gateway sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    hostname: String,
    procid: String,
}

impl Header {
    /// `hostname`: 1 to 255 printable US-ASCII characters (the gateway's FQDN); `procid`: 1 to 128.
    pub fn new(hostname: &str, procid: &str) -> Result<Header, SyslogError> {
        check("HOSTNAME", hostname, 255)?;
        check("PROCID", procid, 128)?;
        Ok(Header { hostname: hostname.to_owned(), procid: procid.to_owned() })
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The whole SYSLOG-MSG for one audit message. `time` is the event time, RFC 3339 UTC (its
    /// fraction is cut to the 6 digits RFC 5424 allows); `seq` is the message's queue sequence
    /// number (from 1).
    pub fn message(&self, severity: Severity, time: &str, seq: u64, xml: &str) -> Vec<u8> {
        let pri = FACILITY * 8 + severity as u8;
        let sequence_id = (seq.max(1) - 1) % SEQUENCE_ID_MAX + 1;
        let ts = timestamp(time);
        format!(
            "<{pri}>1 {ts} {host} {APP_NAME} {procid} {MSGID} [meta sequenceId=\"{sequence_id}\"][origin software=\"{APP_NAME}\" swVersion=\"{ver}\"] {BOM}<?xml version=\"1.0\" encoding=\"UTF-8\"?>{xml}",
            host = self.hostname,
            procid = self.procid,
            ver = env!("CARGO_PKG_VERSION"),
        )
        .into_bytes()
    }
}

/// RFC 5425 4.3: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

fn check(field: &'static str, value: &str, max: usize) -> Result<(), SyslogError> {
    let problem = if value.is_empty() || value.len() > max {
        Some("wrong length")
    } else if !value.bytes().all(|b| (33..=126).contains(&b)) {
        Some("only printable US-ASCII without spaces is allowed")
    } else if value == "-" {
        Some("must not be the NILVALUE")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SyslogError::Field { field, value: value.chars().take(64).collect(), problem }),
        None => Ok(()),
    }
}

/// The event time as an RFC 5424 TIMESTAMP: at most 6 fraction digits, seconds at most 59.
/// `time` has passed the event's RFC 3339 UTC check.
fn timestamp(time: &str) -> String {
    let (main, frac) = match time.split_once('.') {
        Some((main, rest)) => (main, rest.trim_end_matches('Z')),
        None => (time.trim_end_matches('Z'), ""),
    };
    let mut out = main.to_owned();
    if out.ends_with(":60") {
        // A leap second has no RFC 5424 spelling.
        out.truncate(out.len() - 2);
        out.push_str("59");
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac[..frac.len().min(6)]);
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_ihe_shaped() {
        let h = Header::new("gw1.example", "42").unwrap_or_else(|e| panic!("{e}"));
        let m = String::from_utf8(h.message(Severity::Notice, "2026-11-28T10:00:00.123456789Z", 7, "<AuditMessage/>")).unwrap_or_default();
        assert_eq!(
            m,
            "<85>1 2026-11-28T10:00:00.123456Z gw1.example medgate 42 IHE+RFC-3881 [meta sequenceId=\"7\"][origin software=\"medgate\" swVersion=\"0.1.0\"] \u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?><AuditMessage/>"
        );
        let w = String::from_utf8(h.message(Severity::Warning, "2026-11-28T10:00:00Z", 1, "x")).unwrap_or_default();
        assert!(w.starts_with("<84>1 2026-11-28T10:00:00Z "), "{w}");
    }

    #[test]
    fn sequence_ids_wrap_as_rfc_5424_says() {
        let h = Header::new("h", "1").unwrap_or_else(|e| panic!("{e}"));
        let m = String::from_utf8(h.message(Severity::Notice, "2026-01-01T00:00:00Z", SEQUENCE_ID_MAX + 1, "x")).unwrap_or_default();
        assert!(m.contains("sequenceId=\"1\""), "{m}");
        let m = String::from_utf8(h.message(Severity::Notice, "2026-01-01T00:00:00Z", SEQUENCE_ID_MAX, "x")).unwrap_or_default();
        assert!(m.contains("sequenceId=\"2147483647\""), "{m}");
    }

    #[test]
    fn frames_count_octets() {
        let mut out = Vec::new();
        frame("é1".as_bytes(), &mut out);
        assert_eq!(out, b"3 \xc3\xa91");
    }

    #[test]
    fn bad_host_names_are_refused() {
        assert!(Header::new("gw 1", "1").is_err());
        assert!(Header::new("", "1").is_err());
        assert!(Header::new("-", "1").is_err());
        assert!(Header::new(&"a".repeat(256), "1").is_err());
    }

    #[test]
    fn leap_seconds_and_short_fractions() {
        assert_eq!(timestamp("2026-12-31T23:59:60Z"), "2026-12-31T23:59:59Z");
        assert_eq!(timestamp("2026-12-31T23:59:58.5Z"), "2026-12-31T23:59:58.5Z");
    }
}
