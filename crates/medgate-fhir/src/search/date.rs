//! FHIR date search (R4 search.html "date"): every value is a range at its precision, and the
//! prefixes compare ranges.
//!
//! Boundary: strings in, ranges and verdicts out. Times are microseconds since the Unix epoch,
//! UTC. A value without a time zone is read as UTC (the gateway's local time zone), as R4 asks
//! of a server for values that carry none.

use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

/// `[lo, hi)` in microseconds since the epoch; `i64::MIN` / `i64::MAX` for an open end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub lo: i64,
    pub hi: i64,
}

impl Range {
    fn contains(&self, other: &Range) -> bool {
        other.lo >= self.lo && other.hi <= self.hi
    }

    fn overlaps(&self, other: &Range) -> bool {
        other.lo < self.hi && self.lo < other.hi
    }
}

/// The comparison prefixes of number, date and quantity parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A parsed date criterion: the prefix and the range of the searched value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateValue {
    pub prefix: Prefix,
    pub range: Range,
}

/// Splits an optional two-letter prefix off a date parameter value and parses the rest.
pub(crate) fn parse_criterion(s: &str) -> Result<DateValue, String> {
    let (prefix, rest) = match s.get(..2) {
        Some("eq") => (Prefix::Eq, &s[2..]),
        Some("ne") => (Prefix::Ne, &s[2..]),
        Some("gt") => (Prefix::Gt, &s[2..]),
        Some("lt") => (Prefix::Lt, &s[2..]),
        Some("ge") => (Prefix::Ge, &s[2..]),
        Some("le") => (Prefix::Le, &s[2..]),
        Some("sa") => (Prefix::Sa, &s[2..]),
        Some("eb") => (Prefix::Eb, &s[2..]),
        Some("ap") => (Prefix::Ap, &s[2..]),
        Some(p) if p.bytes().all(|b| b.is_ascii_alphabetic()) => {
            return Err("unknown prefix; use eq, ne, gt, lt, ge, le, sa, eb or ap".into())
        }
        _ => (Prefix::Eq, s),
    };
    // A `+` of a time zone that arrived unencoded in a query string reads as a space.
    let fixed;
    let rest = if rest.contains(' ') {
        fixed = rest.replace(' ', "+");
        fixed.as_str()
    } else {
        rest
    };
    let range = parse_range(rest).ok_or_else(|| {
        "not a FHIR date: YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm|-hh:mm]".to_owned()
    })?;
    Ok(DateValue { prefix, range })
}

/// Does a resource value with range `target` satisfy the criterion? `now` serves `ap`
/// (approximately: within 10 % of the distance between now and the searched value).
pub(crate) fn satisfies(c: &DateValue, target: &Range, now: i64) -> bool {
    let p = &c.range;
    match c.prefix {
        Prefix::Eq => p.contains(target),
        Prefix::Ne => !p.contains(target),
        // The range above the searched value overlaps the target.
        Prefix::Gt => target.hi > p.hi,
        Prefix::Lt => target.lo < p.lo,
        Prefix::Ge => target.hi > p.hi || p.contains(target),
        Prefix::Le => target.lo < p.lo || p.contains(target),
        Prefix::Sa => target.lo >= p.hi,
        Prefix::Eb => target.hi <= p.lo,
        Prefix::Ap => {
            let gap = (now.saturating_sub(p.lo)).unsigned_abs() / 10;
            let gap = i64::try_from(gap).unwrap_or(i64::MAX);
            Range { lo: p.lo.saturating_sub(gap), hi: p.hi.saturating_add(gap) }.overlaps(target)
        }
    }
}

/// The range of a FHIR `date`, `dateTime` or `instant` value at its precision.
pub(crate) fn parse_range(s: &str) -> Option<Range> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = s.get(from..from + len)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let year = i32::try_from(num(0, 4)?).ok()?;
    if b.len() == 4 {
        return years(year, 1);
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = Month::try_from(u8::try_from(num(5, 2)?).ok()?).ok()?;
    if b.len() == 7 {
        return months(year, month);
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let date = Date::from_calendar_date(year, month, u8::try_from(num(8, 2)?).ok()?).ok()?;
    if b.len() == 10 {
        let lo = micros(PrimitiveDateTime::new(date, Time::MIDNIGHT), UtcOffset::UTC);
        return Some(Range { lo, hi: lo + 86_400_000_000 });
    }
    if b.get(10) != Some(&b'T') {
        return None;
    }
    time_of_day(s, date)
}

/// `hh:mm[:ss[.f+]][zone]` after `YYYY-MM-DDT`.
fn time_of_day(s: &str, date: Date) -> Option<Range> {
    let rest = s.get(11..)?;
    let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let offset = match zone {
        "" => UtcOffset::UTC,
        "Z" => UtcOffset::UTC,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (h, m) = z.get(1..)?.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
            UtcOffset::from_hms(sign * h, sign * m, 0).ok()?
        }
    };
    let mut parts = clock.split(':');
    let hour: u8 = two_digits(parts.next()?)?;
    let minute: u8 = two_digits(parts.next()?)?;
    let (second, nanos, unit) = match parts.next() {
        None => (0, 0, 60_000_000),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let second = two_digits(whole)?;
            if frac.is_empty() {
                if sec.contains('.') {
                    return None;
                }
                (second, 0, 1_000_000)
            } else {
                if frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                let digits = frac.len().min(6) as u32;
                let nanos: u32 = format!("{frac:0<9}").parse().ok()?;
                (second, nanos, 10_i64.pow(6 - digits))
            }
        }
    };
    if parts.next().is_some() {
        return None;
    }
    let t = Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    let lo = micros(PrimitiveDateTime::new(date, t), offset);
    Some(Range { lo, hi: lo.saturating_add(unit) })
}

fn two_digits(s: &str) -> Option<u8> {
    (s.len() == 2 && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
}

fn micros(at: PrimitiveDateTime, offset: UtcOffset) -> i64 {
    let nanos = at.assume_offset(offset).unix_timestamp_nanos();
    i64::try_from(nanos / 1000).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX })
}

fn years(year: i32, n: i32) -> Option<Range> {
    let lo = Date::from_calendar_date(year, Month::January, 1).ok()?;
    let hi = Date::from_calendar_date(year + n, Month::January, 1).ok()?;
    Some(Range { lo: day_start(lo), hi: day_start(hi) })
}

fn months(year: i32, month: Month) -> Option<Range> {
    let lo = Date::from_calendar_date(year, month, 1).ok()?;
    let (ny, nm) = if month == Month::December { (year + 1, Month::January) } else { (year, month.next()) };
    let hi = Date::from_calendar_date(ny, nm, 1).ok()?;
    Some(Range { lo: day_start(lo), hi: day_start(hi) })
}

fn day_start(d: Date) -> i64 {
    micros(PrimitiveDateTime::new(d, Time::MIDNIGHT), UtcOffset::UTC)
}

/// The range of a `Period` (`start`/`end`, either may be absent: open on that side). The end
/// is inclusive at its precision, so its range's upper bound closes the period.
pub(crate) fn period_range(start: Option<&str>, end: Option<&str>) -> Option<Range> {
    let lo = match start {
        Some(s) => parse_range(s)?.lo,
        None => i64::MIN,
    };
    let hi = match end {
        Some(e) => parse_range(e)?.hi,
        None => i64::MAX,
    };
    (start.is_some() || end.is_some()).then_some(Range { lo, hi })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        parse_range(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    fn sat(criterion: &str, target: &str) -> bool {
        satisfies(&parse_criterion(criterion).expect("criterion"), &r(target), 0)
    }

    #[test]
    fn ranges_follow_the_precision() {
        assert_eq!(r("2024").hi - r("2024").lo, 366 * 86_400_000_000, "2024 is a leap year");
        assert_eq!(r("2024-02").hi - r("2024-02").lo, 29 * 86_400_000_000);
        assert_eq!(r("2024-12").hi, r("2025").lo);
        assert_eq!(r("2024-05-01").hi - r("2024-05-01").lo, 86_400_000_000);
        assert_eq!(r("2024-05-01T10:00").hi - r("2024-05-01T10:00").lo, 60_000_000);
        assert_eq!(r("2024-05-01T10:00:00Z").hi - r("2024-05-01T10:00:00Z").lo, 1_000_000);
        assert_eq!(r("2024-05-01T10:00:00.5Z").hi - r("2024-05-01T10:00:00.5Z").lo, 100_000);
        assert_eq!(r("2024-05-01T10:00:00.123456789Z").hi - r("2024-05-01T10:00:00.123456789Z").lo, 1);
        assert_eq!(r("2024-05-01T12:00:00+02:00").lo, r("2024-05-01T10:00:00Z").lo);
        assert_eq!(r("2024-05-01T08:00:00-02:00").lo, r("2024-05-01T10:00:00Z").lo);
        assert_eq!(r("2024-05-01T10:00:00").lo, r("2024-05-01T10:00:00Z").lo, "no zone reads as UTC");
        for bad in ["", "24", "2024-13", "2024-02-30", "2024-05-01T25:00", "2024-05-01 10:00", "2024-05-01T10:00:00+2:00", "2024-05-01T10:00:00.Z", "abcd"] {
            assert!(parse_range(bad).is_none(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn prefixes_compare_ranges_as_r4_says() {
        // eq: the target lies within the searched range.
        assert!(sat("2024-05", "2024-05-17T10:00:00Z"));
        assert!(sat("eq2024-05-17", "2024-05-17T23:59:59Z"));
        assert!(!sat("2024-05-17", "2024-05-18T00:00:00Z"));
        assert!(sat("ne2024-05-17", "2024-05-18T00:00:00Z"));
        assert!(!sat("ne2024-05", "2024-05-17"));
        // gt/ge/lt/le compare against the ends of the searched range.
        assert!(sat("gt2024-05-17", "2024-05-18T00:00:00Z"));
        assert!(!sat("gt2024-05-17", "2024-05-17T23:00:00Z"));
        assert!(sat("ge2024-05-17", "2024-05-17T00:00:00Z"));
        assert!(!sat("ge2024-05-17", "2024-05-16T23:59:59Z"));
        assert!(sat("lt2024-05-17", "2024-05-16T23:59:59Z"));
        assert!(!sat("lt2024-05-17", "2024-05-17T00:00:00Z"));
        assert!(sat("le2024-05-17", "2024-05-17T12:00:00Z"));
        assert!(!sat("le2024-05-17", "2024-05-18T00:00:00Z"));
        // sa/eb: wholly after / before.
        assert!(sat("sa2024-05-17", "2024-05-18"));
        assert!(!sat("sa2024-05-17", "2024-05-17T12:00:00Z"));
        assert!(sat("eb2024-05-17", "2024-05-16"));
        assert!(!sat("eb2024-05-17", "2024-05-17"));
        // A year-precision target is not "greater than" a day inside it, but overlaps it.
        assert!(sat("gt2024-05-17", "2024"));
        assert!(!sat("eq2024-05-17", "2024"));
    }

    #[test]
    fn approximately_widens_by_a_tenth_of_the_distance_to_now() {
        let now = r("2024-01-11").lo;
        let c = parse_criterion("ap2024-01-01").expect("ap");
        assert!(satisfies(&c, &r("2024-01-01T12:00:00Z"), now));
        assert!(satisfies(&c, &r("2024-01-02T12:00:00Z"), now), "one day of slack for a ten-day distance");
        assert!(!satisfies(&c, &r("2024-01-03T12:00:00Z"), now));
    }

    #[test]
    fn periods_are_open_where_an_end_is_missing() {
        let p = period_range(Some("2024-05-01"), None).expect("period");
        assert_eq!(p.hi, i64::MAX);
        let c = parse_criterion("ge2030-01-01").expect("ge");
        assert!(satisfies(&c, &p, 0), "an open period reaches every later date");
        let closed = period_range(Some("2024-05-01"), Some("2024-05-03")).expect("period");
        assert_eq!(closed.hi, r("2024-05-04").lo, "the end day is inside the period");
        assert!(period_range(None, None).is_none());
    }

    #[test]
    fn refusals_name_the_form() {
        assert!(parse_criterion("xx2024").expect_err("prefix").contains("prefix"));
        assert!(parse_criterion("ge20240501").expect_err("form").contains("YYYY-MM-DD"));
        // A time zone's '+' decoded as a space by a form decoder still parses.
        assert_eq!(parse_criterion("ge2024-05-01T10:00:00 02:00").expect("zone").range.lo, r("2024-05-01T08:00:00Z").lo);
    }
}
