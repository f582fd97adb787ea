//! A search request, parsed: the patient, the criteria (AND of ORs), the result parameters
//! (`_count`, `_sort`, `_summary`, `_elements`, the page cursor) and what was ignored.
//!
//! Boundary: decoded (name, value) pairs in, a [`Query`] or a 400 out. Refusals name the
//! parameter, never its value (a value may be a patient identifier).

use super::date::{self, DateValue};
use super::paging::Cursor;
use super::params::{ParamDef, ParamType, Path, ResourceSearch, SortDef};
use crate::subset::Summary;
use crate::{FhirError, PatientId};

/// Page size when the client sends no `_count`, and the largest page served.
pub const DEFAULT_COUNT: usize = 100;
pub const MAX_COUNT: usize = 1000;

/// One value of a criterion (the values of one parameter are OR-ed).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    /// `code`, `system|code`, `|code` (system `Some("")`), `system|` (code `None`).
    Token { system: Option<String>, code: Option<String> },
    /// `:of-type`: identifier type `system|code` and the identifier value.
    OfType { system: String, code: String, value: String },
    Date(DateValue),
    /// A string, as sent (normalised when compared).
    Text(String),
    /// A reference: `Type/id`, `id` or an absolute URL.
    Reference(String),
}

/// Modifiers medgate supports (R4 search.html "Modifiers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Modifier {
    None,
    Missing(bool),
    Not,
    Text,
    OfType,
    Exact,
    Contains,
    Identifier,
}

/// One parameter of the query: every operand is an alternative.
#[derive(Debug, Clone)]
pub(crate) struct Criterion {
    pub def: &'static ParamDef,
    pub modifier: Modifier,
    pub operands: Vec<Operand>,
}

/// A parameter the search did not use, and why (for the Bundle's OperationOutcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub name: String,
    pub reason: String,
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct Query {
    pub search: &'static ResourceSearch,
    /// The patient named by `patient`, `patient.identifier` or `patient:identifier`.
    pub patient: Option<PatientId>,
    pub(crate) criteria: Vec<Criterion>,
    /// Matches per page; 0 asks for the count only.
    pub count: usize,
    pub(crate) sort: (SortDef, bool),
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    pub(crate) cursor: Option<Cursor>,
    pub ignored: Vec<Ignored>,
    /// The parameters used, as (name, value), for the links of the answer.
    pub(crate) applied: Vec<(String, String)>,
}

impl Query {
    /// Does the query filter on more than the patient? (Used to say which records the
    /// ledger cannot answer for.)
    pub fn filters(&self) -> bool {
        !self.criteria.is_empty()
    }

    /// Names of the parameters that filter, with their modifiers, as sent.
    pub fn filter_names(&self) -> Vec<&'static str> {
        self.criteria.iter().map(|c| c.def.name).collect()
    }
}

/// Parameters every interaction accepts that shape the representation, not the result; the
/// HTTP layer applies them, the search keeps them in its links.
pub const REPRESENTATION_PARAMS: [&str; 2] = ["_format", "_pretty"];

/// Parses a search on `search` from decoded (name, value) pairs. `strict` (the client sent
/// `Prefer: handling=strict`) turns an unknown or unsupported parameter into a 400.
pub fn parse_query(search: &'static ResourceSearch, pairs: &[(String, String)], strict: bool) -> Result<Query, FhirError> {
    let mut q = Query {
        search,
        patient: None,
        criteria: Vec::new(),
        count: DEFAULT_COUNT,
        sort: search.default_sort,
        summary: Summary::False,
        elements: None,
        cursor: None,
        ignored: Vec::new(),
        applied: Vec::new(),
    };
    let mut seen_result_params: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        if base.starts_with('_') && search.param(base).is_none() {
            if let Some(known) = result_param(base) {
                if modifier.is_some() {
                    return Err(bad(name, "takes no modifier"));
                }
                if seen_result_params.contains(&known) {
                    return Err(bad(name, "may be given once"));
                }
                seen_result_params.push(known);
                result_parameter(&mut q, known, value, strict)?;
                continue;
            }
        }
        if base == "patient" || base == "patient.identifier" {
            patient_parameter(&mut q, base, modifier, value)?;
            q.applied.push((name.clone(), value.clone()));
            continue;
        }
        match search.param(base) {
            Some(def) => {
                let c = criterion(def, modifier, value)?;
                q.criteria.push(c);
                q.applied.push((name.clone(), value.clone()));
            }
            None => {
                let reason = format!("{} searches do not support this parameter", search.resource_type);
                if strict {
                    return Err(FhirError::BadParameter(format!("{}: {reason} (Prefer: handling=strict)", shown(name))));
                }
                q.ignored.push(Ignored { name: shown(name), reason });
            }
        }
    }
    if q.summary != Summary::False && q.elements.is_some() {
        return Err(FhirError::BadParameter("_summary and _elements: give one of them".into()));
    }
    Ok(q)
}

/// The result parameters, by name.
fn result_param(name: &str) -> Option<&'static str> {
    ["_count", "_sort", "_summary", "_elements", "_cursor", "_format", "_pretty"].into_iter().find(|n| *n == name)
}

fn result_parameter(q: &mut Query, name: &'static str, value: &str, strict: bool) -> Result<(), FhirError> {
    match name {
        "_count" => {
            let n: usize = value.parse().map_err(|_| bad(name, "must be a whole number, 0 or more"))?;
            q.count = n.min(MAX_COUNT);
            q.applied.push((name.into(), q.count.to_string()));
        }
        "_sort" => {
            let (descending, key) = match value.strip_prefix('-') {
                Some(k) => (true, k),
                None => (false, value),
            };
            match q.search.sort(key) {
                Some(s) => {
                    q.sort = (s, descending);
                    q.applied.push((name.into(), value.into()));
                }
                None => {
                    let names: Vec<&str> = q.search.sorts.iter().map(|s| s.name).collect();
                    let reason = format!("sorts by one of {} (with - to descend)", names.join(", "));
                    if strict {
                        return Err(bad(name, &format!("{reason} (Prefer: handling=strict)")));
                    }
                    q.ignored.push(Ignored { name: name.into(), reason });
                }
            }
        }
        "_summary" => {
            q.summary = Summary::parse(value).ok_or_else(|| bad(name, "must be true, false, text, data or count"))?;
            q.applied.push((name.into(), value.into()));
        }
        "_elements" => {
            let names: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
            if names.is_empty() || !names.iter().all(|n| is_element_name(n)) {
                return Err(bad(name, "must list top-level element names, separated by commas"));
            }
            q.applied.push((name.into(), names.join(",")));
            q.elements = Some(names);
        }
        "_cursor" => {
            q.cursor = Some(Cursor::parse(value).ok_or_else(|| bad(name, "is not a page link of this gateway; follow the links of the Bundle"))?);
        }
        _ => q.applied.push((name.into(), value.into())),
    }
    Ok(())
}

fn is_element_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// `patient.identifier=system|value`, `patient:identifier=system|value`, or the older
/// `patient=system|value`. A literal Patient reference names a resource this gateway does not
/// hold: the patient is known here by identifier only.
fn patient_parameter(q: &mut Query, base: &str, modifier: Option<&str>, value: &str) -> Result<(), FhirError> {
    let by_identifier = match (base, modifier) {
        ("patient.identifier", None) | ("patient", Some("identifier")) => true,
        // A reference never holds a '|': this is the older identifier form.
        ("patient", None) => value.contains('|'),
        _ => return Err(FhirError::BadParameter(format!("{}: modifier not supported; send patient.identifier=system|value", shown(&format!("{base}:{}", modifier.unwrap_or("")))))),
    };
    if !by_identifier {
        return Err(FhirError::BadParameter(
            "patient: this gateway knows patients by identifier only; send patient.identifier=system|value".into(),
        ));
    }
    let patient = PatientId::parse_token(value)?;
    if q.patient.as_ref().is_some_and(|p| *p != patient) {
        return Err(FhirError::BadParameter("patient: one patient per search".into()));
    }
    q.patient = Some(patient);
    Ok(())
}

fn criterion(def: &'static ParamDef, modifier: Option<&str>, value: &str) -> Result<Criterion, FhirError> {
    let name = def.name;
    let m = match (modifier, def.ty) {
        (None, _) => Modifier::None,
        (Some("missing"), _) => {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => return Err(bad(name, ":missing takes true or false")),
            };
            return Ok(Criterion { def, modifier: Modifier::Missing(missing), operands: Vec::new() });
        }
        (Some("not"), ParamType::Token) => Modifier::Not,
        (Some("text"), ParamType::Token) => Modifier::Text,
        (Some("of-type"), ParamType::Token) => Modifier::OfType,
        (Some("exact"), ParamType::String) => Modifier::Exact,
        (Some("contains"), ParamType::String) => Modifier::Contains,
        (Some("identifier"), ParamType::Reference) => Modifier::Identifier,
        (Some(other), _) => {
            return Err(FhirError::BadParameter(format!(
                "{}: the modifier {} is not supported on this {} parameter",
                name,
                shown(other),
                def.ty.code()
            )))
        }
    };
    if matches!(def.path, Path::Patient) {
        return Err(bad(name, "is the patient"));
    }
    let mut operands = Vec::new();
    for part in split_unescaped(value, ',') {
        if part.is_empty() {
            return Err(bad(name, "has an empty value"));
        }
        operands.push(operand(def, m, &part)?);
    }
    if operands.is_empty() {
        return Err(bad(name, "has no value"));
    }
    Ok(Criterion { def, modifier: m, operands })
}

fn operand(def: &ParamDef, m: Modifier, part: &str) -> Result<Operand, FhirError> {
    let name = def.name;
    Ok(match (def.ty, m) {
        (ParamType::Token, Modifier::Text) => Operand::Text(unescape(part)),
        (ParamType::Token, Modifier::OfType) => {
            let pieces = split_unescaped(part, '|');
            let [system, code, value] = pieces.as_slice() else {
                return Err(bad(name, ":of-type takes type-system|type-code|value"));
            };
            Operand::OfType { system: unescape(system), code: unescape(code), value: unescape(value) }
        }
        (ParamType::Token, _) | (ParamType::Reference, Modifier::Identifier) => token(name, part)?,
        (ParamType::Date, _) => Operand::Date(date::parse_criterion(part).map_err(|reason| bad(name, &reason))?),
        (ParamType::String, _) => Operand::Text(unescape(part)),
        (ParamType::Reference, _) => Operand::Reference(unescape(part)),
    })
}

fn token(name: &str, part: &str) -> Result<Operand, FhirError> {
    let pieces = split_unescaped(part, '|');
    match pieces.as_slice() {
        [code] => Ok(Operand::Token { system: None, code: Some(unescape(code)) }),
        [system, code] => Ok(Operand::Token {
            system: Some(unescape(system)),
            code: (!code.is_empty()).then(|| unescape(code)),
        }),
        _ => Err(bad(name, "a token is code, system|code, |code or system|; escape a | in a value as \\|")),
    }
}

/// Splits on `sep` where it is not escaped with a backslash; escapes are kept for [`unescape`].
pub(crate) fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        let cur = out.last_mut().expect("never empty");
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            cur.push(c);
        }
    }
    if escaped {
        out.last_mut().expect("never empty").push('\\');
    }
    out
}

/// Removes the search escapes `\,` `\|` `\$` `\\`.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn bad(name: &str, why: &str) -> FhirError {
    FhirError::BadParameter(format!("{}: {why}", shown(name)))
}

/// A parameter name fit for a message: at most 64 characters, no control characters.
fn shown(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::super::params::{DOCUMENT_REFERENCE, LIST};
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    fn parse(q: &[(&str, &str)]) -> Result<Query, FhirError> {
        parse_query(&DOCUMENT_REFERENCE, &pairs(q), false)
    }

    #[test]
    fn the_patient_comes_by_identifier_in_three_spellings() {
        for name in ["patient.identifier", "patient:identifier", "patient"] {
            let q = parse(&[(name, "urn:oid:1.2.3|42"), ("status", "current")]).expect(name);
            assert_eq!(q.patient, Some(PatientId { system: "urn:oid:1.2.3".into(), value: "42".into() }));
            assert_eq!(q.criteria.len(), 1);
        }
        let e = parse(&[("patient", "Patient/42")]).expect_err("literal");
        assert!(e.to_string().contains("patient.identifier=system|value"), "{e}");
        let e = parse(&[("patient.identifier", "urn:oid:1|42"), ("patient.identifier", "urn:oid:1|43")]).expect_err("two");
        assert!(!e.to_string().contains("43"), "{e}");
    }

    #[test]
    fn tokens_dates_and_modifiers_parse() {
        let q = parse(&[
            ("status", "current,superseded"),
            ("type", "http://loinc.org|34133-9"),
            ("category", "|x"),
            ("format", "urn:sys|"),
            ("date", "ge2024-01-01"),
            ("date", "lt2025-01-01"),
            ("author.family", "Lov"),
            ("security-label:not", "R"),
            ("related:identifier", "urn:ietf:rfc:3986|urn:oid:1.2"),
            ("identifier:missing", "false"),
        ])
        .expect("valid");
        assert_eq!(q.criteria.len(), 10);
        assert_eq!(q.criteria[0].operands.len(), 2);
        assert_eq!(q.criteria[2].operands[0], Operand::Token { system: Some(String::new()), code: Some("x".into()) });
        assert_eq!(q.criteria[3].operands[0], Operand::Token { system: Some("urn:sys".into()), code: None });
        assert_eq!(q.criteria[7].modifier, Modifier::Not);
        assert_eq!(q.criteria[9].modifier, Modifier::Missing(false));
        assert!(q.ignored.is_empty());
    }

    #[test]
    fn escapes_keep_commas_and_bars_in_values() {
        let q = parse(&[("identifier", r"urn:x|a\,b\|c")]).expect("escaped");
        assert_eq!(q.criteria[0].operands, vec![Operand::Token { system: Some("urn:x".into()), code: Some("a,b|c".into()) }]);
    }

    #[test]
    fn unknown_parameters_are_ignored_or_refused_when_strict() {
        let q = parse(&[("status", "current"), ("_foo", "1"), ("bogus", "x")]).expect("lenient");
        assert_eq!(q.ignored.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["_foo", "bogus"]);
        assert!(!q.applied.iter().any(|(n, _)| n == "bogus"), "the self link lists only what was used");
        let e = parse_query(&DOCUMENT_REFERENCE, &pairs(&[("bogus", "x")]), true).expect_err("strict");
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("bogus") && e.to_string().contains("strict"), "{e}");
    }

    #[test]
    fn bad_values_are_400_whatever_the_handling() {
        for q in [
            vec![("date", "ge2024-13-01")],
            vec![("date", "xx2024")],
            vec![("_count", "-1")],
            vec![("_summary", "maybe")],
            vec![("_elements", "a.b")],
            vec![("status:above", "current")],
            vec![("author.family:not", "x")],
            vec![("identifier:missing", "yes")],
            vec![("type", "a|b|c")],
            vec![("_count", "2"), ("_count", "3")],
            vec![("_summary", "true"), ("_elements", "status")],
            vec![("_cursor", "garbage")],
            vec![("status", "")],
        ] {
            let e = parse(&q).expect_err(&format!("{q:?}"));
            assert_eq!(e.status(), 400, "{q:?}");
        }
    }

    #[test]
    fn result_parameters_are_read() {
        let q = parse(&[("_count", "2"), ("_sort", "-date"), ("_summary", "count"), ("_format", "json")]).expect("valid");
        assert_eq!(q.count, 2);
        assert!(q.sort.1);
        assert_eq!(q.summary, Summary::Count);
        let q = parse(&[("_count", "5000"), ("_sort", "title")]).expect("lenient");
        assert_eq!(q.count, MAX_COUNT);
        assert_eq!(q.ignored[0].name, "_sort");
        let q = parse_query(&LIST, &pairs(&[("code", "submissionset"), ("sourceId", "urn:oid:1.2"), ("_lastupdated", "ge2020")]), true).expect("list");
        assert_eq!(q.criteria.len(), 3);
    }
}
