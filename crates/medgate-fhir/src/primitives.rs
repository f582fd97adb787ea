//! FHIR primitive formats medgate checks: identifier tokens, instants, MIME types, base64 and
//! percent-encoded conditional references.
//!
//! Boundary: pure functions over strings. Refusal reasons are fixed texts (plus offsets) and
//! never contain the input, which may be a patient identifier or document content.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{DecodeError, Engine as _};

use super::PatientId;

/// Standard alphabet; padding optional on input; non-zero trailing bits refused.
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Standard alphabet with padding, for everything medgate emits.
pub(crate) const BASE64_OUT: GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Parses a FHIR token `system|value` naming one patient. Honours the FHIR search escapes
/// `\|`, `\,`, `\$`, `\\`. Both parts must be non-empty; an unescaped `,` (a list of
/// identifiers) or a second unescaped `|` is refused, as are control characters, whitespace in
/// the system and whitespace around the value (they would silently yield another pseudonym).
pub(crate) fn parse_identifier_token(s: &str) -> Result<PatientId, &'static str> {
    let mut system = String::new();
    let mut value = String::new();
    let mut in_value = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let target = if in_value { &mut value } else { &mut system };
        match c {
            '\\' => match chars.next() {
                Some(e @ ('|' | ',' | '$' | '\\')) => target.push(e),
                _ => return Err("invalid escape; only \\|, \\,, \\$ and \\\\ are defined"),
            },
            '|' if !in_value => in_value = true,
            '|' => return Err("a second '|' must be escaped as \\|"),
            ',' => return Err("one patient identifier only (an unescaped ',' lists several)"),
            c if c.is_control() => return Err("contains a control character"),
            c => target.push(c),
        }
    }
    if !in_value {
        return Err("expected system|value (the identifier system is required)");
    }
    if system.is_empty() {
        return Err("the identifier system before '|' is empty");
    }
    if system.chars().any(char::is_whitespace) {
        return Err("the identifier system must be a URI without whitespace");
    }
    if value.is_empty() {
        return Err("the identifier value after '|' is empty");
    }
    if value.trim() != value {
        return Err("the identifier value must not start or end with whitespace");
    }
    Ok(PatientId { system, value })
}

/// Checks an Identifier's system and value as found in a resource (no token escapes there).
pub(crate) fn check_identifier_parts(system: &str, value: &str) -> Result<(), (&'static str, &'static str)> {
    if system.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(("system", "must be a URI without whitespace"));
    }
    if value.chars().any(char::is_control) {
        return Err(("value", "must not contain control characters"));
    }
    if value.trim() != value {
        return Err(("value", "must not start or end with whitespace"));
    }
    Ok(())
}

/// Decodes `%XX` escapes (URI semantics: `+` stays `+`). Refuses malformed escapes and
/// results that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Result<String, &'static str> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    // Two hex digits: at most 0xFF, so the narrowing is exact.
                    out.push(((hi << 4) | lo) as u8);
                    i += 3;
                }
                _ => return Err("malformed percent-encoding (expected %XX)"),
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding does not decode to UTF-8")
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// A syntactically plausible MIME type: `type/subtype` made of RFC 9110 tokens, optionally
/// followed by `; name=value` parameters (value a token or a quoted string).
pub(crate) fn is_mime_type(s: &str) -> bool {
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or_default().trim_end();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    if !is_token(ty) || !is_token(sub) {
        return false;
    }
    parts.all(|param| {
        let param = param.trim_matches(|c| c == ' ' || c == '\t');
        let Some((name, value)) = param.split_once('=') else {
            return false;
        };
        let quoted = value.len() >= 2
            && value.starts_with('"')
            && value.ends_with('"')
            && value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        is_token(name) && (is_token(value) || quoted)
    })
}

/// `type/subtype` of a MIME type, lower-cased, without parameters.
pub(crate) fn mime_essence(s: &str) -> String {
    s.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// Decodes FHIR base64Binary: standard alphabet, padding optional, line breaks and spaces
/// between groups tolerated (FHIR's regex allows them). Refuses anything else.
pub(crate) fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let decoded = if s.as_bytes().iter().any(is_ws) {
        let compact: Vec<u8> = s.bytes().filter(|b| !is_ws(b)).collect();
        BASE64_IN.decode(compact)
    } else {
        BASE64_IN.decode(s)
    };
    decoded.map_err(|e| {
        let what = match e {
            DecodeError::InvalidByte(offset, _) => format!("invalid character at offset {offset}"),
            DecodeError::InvalidLength(_) => "invalid length".to_owned(),
            DecodeError::InvalidLastSymbol(offset, _) => format!("invalid last symbol at offset {offset}"),
            DecodeError::InvalidPadding => "invalid padding".to_owned(),
        };
        format!("is not valid base64 (standard alphabet with + and /): {what}")
    })
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// A FHIR `instant`: `YYYY-MM-DDThh:mm:ss[.f{1,9}](Z|±hh:mm)`, a real calendar date, seconds
/// and time zone required (RFC 3339 profile used by FHIR R4).
pub(crate) fn is_instant(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return false;
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(&b[0..4]),
        digits(&b[5..7]),
        digits(&b[8..10]),
        digits(&b[11..13]),
        digits(&b[14..16]),
        digits(&b[17..19]),
    ) else {
        return false;
    };
    let date_ok = year >= 1
        && u8::try_from(month)
            .ok()
            .and_then(|m| time::Month::try_from(m).ok())
            .zip(u8::try_from(day).ok())
            .is_some_and(|(m, d)| {
                i32::try_from(year).is_ok_and(|y| time::Date::from_calendar_date(y, m, d).is_ok())
            });
    if !date_ok || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        b"Z" => true,
        [sign, h1, h2, b':', m1, m2] if *sign == b'+' || *sign == b'-' => {
            match (digits(&[*h1, *h2]), digits(&[*m1, *m2])) {
                (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants() {
        for ok in [
            "2024-02-29T12:00:00Z",
            "2024-01-01T00:00:00.123+02:00",
            "0001-01-01T00:00:00.123456789-14:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(is_instant(ok), "{ok}");
        }
        for bad in [
            "2024-02-30T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2024-01-01",
            "2024-01-01T12:00Z",
            "2024-01-01T12:00:00",
            "2024-01-01t12:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T12:00:00.Z",
            "2024-01-01T12:00:00.1234567890Z",
            "2024-01-01T12:00:00+15:00",
            "2024-01-01T12:00:00+0200",
            "0000-01-01T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-1a-01T00:00:00Z",
        ] {
            assert!(!is_instant(bad), "{bad}");
        }
    }

    #[test]
    fn mime_types() {
        for ok in ["application/pdf", "text/plain; charset=utf-8", "application/fhir+json", "text/x-foo;a=\"b c\""] {
            assert!(is_mime_type(ok), "{ok}");
        }
        for bad in ["pdf", "application/", "/pdf", "text /plain", "text/plain;", "text/plain; charset", "a/b/c", ""] {
            assert!(!is_mime_type(bad), "{bad}");
        }
        assert_eq!(mime_essence("Text/Plain; charset=UTF-8"), "text/plain");
    }

    #[test]
    fn base64_rules() {
        assert_eq!(decode_base64("aGVsbG8=").expect("padded"), b"hello");
        assert_eq!(decode_base64("aGVsbG8").expect("unpadded"), b"hello");
        assert_eq!(decode_base64("aGVs\r\nbG8=").expect("wrapped"), b"hello");
        assert_eq!(decode_base64("+/8=").expect("standard alphabet"), [0xfb, 0xff]);
        assert!(decode_base64("-_8=").is_err(), "url-safe alphabet");
        assert!(decode_base64("aGVsbG8*").is_err());
        assert!(decode_base64("aGVsbG9=").is_err(), "non-zero trailing bits");
        assert!(decode_base64("a").is_err());
        let reason = decode_base64("aGV*bG8=").expect_err("invalid");
        assert!(reason.contains("offset 3"), "{reason}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%7Cb%20c+d").expect("valid"), "a|b c+d");
        assert_eq!(percent_decode("plain").expect("valid"), "plain");
        assert!(percent_decode("a%7").is_err());
        assert!(percent_decode("a%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }

    #[test]
    fn identifier_tokens() {
        assert!(parse_identifier_token("s|v").is_ok());
        assert!(parse_identifier_token("s|a|b").is_err());
        assert!(parse_identifier_token("s x|v").is_err());
        assert!(parse_identifier_token("s| v").is_err());
        assert!(parse_identifier_token("s|v\\x").is_err());
        assert_eq!(parse_identifier_token("s\\|x|v").expect("escaped bar in system").system, "s|x");
    }
}
