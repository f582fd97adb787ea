//! Does a resource match a criterion? Values are found by the parameter's path and compared by
//! its type, as R4 search.html describes token, date, string and reference parameters.
//!
//! Boundary: a resource (FHIR JSON, decrypted in memory by the caller) and a criterion in, a
//! verdict out. Nothing is kept.

use serde_json::Value;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::date::{self, Range};
use super::params::{ParamType, Path};
use super::query::{Criterion, Modifier, Operand};

/// Every criterion holds for `resource` (AND); within one, any operand (OR).
pub(crate) fn matches_all(resource: &Value, criteria: &[Criterion], now: i64) -> bool {
    criteria.iter().all(|c| matches(resource, c, now))
}

pub(crate) fn matches(resource: &Value, c: &Criterion, now: i64) -> bool {
    let values = values(resource, &c.def.path);
    if let Modifier::Missing(missing) = c.modifier {
        return values.is_empty() == missing;
    }
    let any = |f: &dyn Fn(&Value, &Operand) -> bool| values.iter().any(|v| c.operands.iter().any(|o| f(v, o)));
    match (c.def.ty, c.modifier) {
        (ParamType::Token, Modifier::Not) => !any(&|v, o| token_matches(v, o, c.def.code_system)),
        (ParamType::Token, Modifier::Text) => any(&|v, o| matches!(o, Operand::Text(t) if token_text(v).iter().any(|s| starts_with(s, t)))),
        (ParamType::Token, Modifier::OfType) => any(&of_type_matches),
        (ParamType::Token, _) => any(&|v, o| token_matches(v, o, c.def.code_system)),
        (ParamType::Date, _) => any(&|v, o| match (o, value_range(v)) {
            (Operand::Date(d), Some(r)) => date::satisfies(d, &r, now),
            _ => false,
        }),
        (ParamType::String, m) => any(&|v, o| match (o, v.as_str()) {
            (Operand::Text(t), Some(s)) => match m {
                Modifier::Exact => s == t,
                Modifier::Contains => normalise(s).contains(&normalise(t)),
                _ => starts_with(s, t),
            },
            _ => false,
        }),
        (ParamType::Reference, Modifier::Identifier) => any(&|v, o| v.get("identifier").is_some_and(|i| token_matches(i, o, None))),
        (ParamType::Reference, _) => any(&|v, o| matches!(o, Operand::Reference(r) if reference_matches(v, r))),
    }
}

/// The values at a parameter's path.
pub(crate) fn values<'a>(resource: &'a Value, path: &Path) -> Vec<&'a Value> {
    match path {
        Path::Elements(paths) => paths.iter().flat_map(|p| select(resource, p)).collect(),
        Path::Chained { reference, target } => select(resource, reference)
            .into_iter()
            .filter_map(|r| contained(resource, r))
            .flat_map(|c| select(c, target))
            .collect(),
        Path::Extension { url, value } => select(resource, "extension")
            .into_iter()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(url))
            .filter_map(|e| e.get(*value))
            .collect(),
        Path::Patient => Vec::new(),
    }
}

/// The values at a dotted element path, arrays flattened at every step.
pub(crate) fn select<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![root];
    for seg in path.split('.') {
        let mut next = Vec::new();
        for v in current {
            match v.get(seg) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(Value::Null) | None => {}
                Some(x) => next.push(x),
            }
        }
        current = next;
    }
    current
}

/// The contained resource a `#id` reference points at.
fn contained<'a>(resource: &'a Value, reference: &Value) -> Option<&'a Value> {
    let id = reference.get("reference")?.as_str()?.strip_prefix('#')?;
    resource.get("contained")?.as_array()?.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(id))
}

/// A token operand against a code, Coding, CodeableConcept or Identifier.
fn token_matches(v: &Value, o: &Operand, code_system: Option<&str>) -> bool {
    let Operand::Token { system, code } = o else { return false };
    let pair_matches = |s: Option<&str>, c: Option<&str>| -> bool {
        let system_ok = match system.as_deref() {
            None => true,
            Some("") => s.is_none(),
            Some(want) => s == Some(want),
        };
        let code_ok = match code.as_deref() {
            None => true,
            Some(want) => c == Some(want),
        };
        system_ok && code_ok
    };
    match v {
        Value::String(s) => pair_matches(code_system, Some(s)),
        Value::Object(o) if o.contains_key("coding") || o.contains_key("text") && !o.contains_key("value") => o
            .get("coding")
            .and_then(Value::as_array)
            .is_some_and(|codings| codings.iter().any(|c| pair_matches(str_at(c, "system"), str_at(c, "code")))),
        Value::Object(o) if o.contains_key("value") => pair_matches(str_at(v, "system"), str_at(v, "value")),
        Value::Object(_) => pair_matches(str_at(v, "system"), str_at(v, "code")),
        _ => false,
    }
}

/// `:of-type` on an Identifier: its type's coding and its value.
fn of_type_matches(v: &Value, o: &Operand) -> bool {
    let Operand::OfType { system, code, value } = o else { return false };
    str_at(v, "value") == Some(value.as_str())
        && select(v, "type.coding").iter().any(|c| str_at(c, "system") == Some(system.as_str()) && str_at(c, "code") == Some(code.as_str()))
}

/// The text of a token value, for `:text`: CodeableConcept.text, Coding.display,
/// Identifier.type.text.
fn token_text(v: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = ["text", "display", "type.text"].iter().flat_map(|p| select(v, p)).filter_map(Value::as_str).collect();
    out.extend(select(v, "coding.display").into_iter().filter_map(Value::as_str));
    out
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The range of a date, dateTime, instant or Period value.
fn value_range(v: &Value) -> Option<Range> {
    match v {
        Value::String(s) => date::parse_range(s),
        Value::Object(_) => date::period_range(str_at(v, "start"), str_at(v, "end")),
        _ => None,
    }
}

/// A Reference against `Type/id`, `id` or an absolute URL.
fn reference_matches(v: &Value, wanted: &str) -> bool {
    let Some(have) = str_at(v, "reference") else { return false };
    if have == wanted {
        return true;
    }
    let tail = |s: &str| -> Option<(String, String)> {
        let mut parts = s.trim_end_matches('/').rsplit('/');
        let id = parts.next()?.to_owned();
        let ty = parts.next()?.to_owned();
        (ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())).then_some((ty, id))
    };
    match (tail(have), tail(wanted)) {
        (Some(h), Some(w)) => h == w,
        (Some((_, id)), None) => id == wanted,
        _ => false,
    }
}

/// R4 string search: starts with, ignoring case and accents.
fn starts_with(value: &str, wanted: &str) -> bool {
    normalise(value).starts_with(&normalise(wanted))
}

/// Lower case without combining marks (NFD, marks dropped): `Émile` → `emile`.
pub(crate) fn normalise(s: &str) -> String {
    s.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::super::params::DOCUMENT_REFERENCE;
    use super::super::query::parse_query;
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "resourceType": "DocumentReference", "id": "d1",
            "meta": {"lastUpdated": "2025-03-01T10:00:00Z"},
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"},
            "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": "urn:uuid:0f0e", "type": {"text": "entry UUID", "coding": [{"system": "urn:t", "code": "entryUUID"}]}}],
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9", "display": "Summary of episode note"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "11369-6"}]}],
            "date": "2024-05-17T10:00:00+02:00",
            "securityLabel": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}],
            "contained": [{"resourceType": "Practitioner", "id": "a1", "name": [{"family": "Lovelace", "given": ["Ada", "Émilie"]}]}],
            "author": [{"reference": "#a1"}],
            "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/d1", "creation": "2024-05-16"},
                         "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode", "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}}],
            "context": {"event": [{"coding": [{"system": "urn:ev", "code": "E1"}]}],
                        "period": {"start": "2024-05-01"},
                        "facilityType": {"coding": [{"system": "http://snomed.info/sct", "code": "22232009"}]},
                        "practiceSetting": {"coding": [{"system": "http://snomed.info/sct", "code": "394802001"}]},
                        "related": [{"reference": "DocumentReference/other", "identifier": {"system": "urn:ids", "value": "R-7"}}]}
        })
    }

    fn m(name: &str, value: &str) -> bool {
        let pairs = vec![(name.to_owned(), value.to_owned())];
        let q = parse_query(&DOCUMENT_REFERENCE, &pairs, true).unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        let now = date::parse_range("2024-06-01").expect("now").lo;
        matches_all(&doc(), &q.criteria, now)
    }

    #[test]
    fn every_documentreference_parameter_has_a_match_and_a_miss() {
        let cases = [
            ("status", "current", "superseded"),
            ("status", "superseded,current", "entered-in-error"),
            ("status", "http://hl7.org/fhir/document-reference-status|current", "urn:other|current"),
            ("_id", "d1", "d2"),
            ("_lastUpdated", "ge2025-03-01", "lt2025-03-01"),
            ("identifier", "urn:ietf:rfc:3986|urn:oid:1.2.3", "urn:ietf:rfc:3986|urn:oid:9"),
            ("identifier", "urn:uuid:0f0e", "urn:uuid:ffff"),
            ("type", "http://loinc.org|34133-9", "http://loinc.org|11369-6"),
            ("type", "34133-9", "|34133-9"),
            ("category", "http://loinc.org|", "http://snomed.info/sct|"),
            ("date", "2024-05-17", "2024-05-18"),
            ("date", "ge2024-05-17T08:00:00Z", "gt2024-05-17T08:00:00Z"),
            ("creation", "le2024-05-16", "gt2024-05-16"),
            ("period", "ge2030-01-01", "lt2024-05-01"),
            ("author.given", "ada", "bob"),
            ("author.given", "emil", "emilz"),
            ("author.family", "LOVE", "Lace"),
            ("setting", "http://snomed.info/sct|394802001", "http://snomed.info/sct|1"),
            ("facility", "22232009", "1"),
            ("event", "urn:ev|E1", "urn:ev|E2"),
            ("security-label", "N", "R"),
            ("format", "urn:ihe:iti:xds:2017:mimeTypeSufficient", "urn:x"),
            ("related", "DocumentReference/other", "DocumentReference/d1"),
            ("related", "other", "nope"),
            ("related", "https://gw.example/fhir/DocumentReference/other", "https://gw.example/fhir/DocumentReference/x"),
        ];
        for (name, yes, no) in cases {
            assert!(m(name, yes), "{name}={yes} must match");
            assert!(!m(name, no), "{name}={no} must not match");
        }
    }

    #[test]
    fn modifiers() {
        assert!(m("security-label:not", "R"));
        assert!(!m("security-label:not", "N"));
        assert!(m("type:text", "summary of"));
        assert!(!m("type:text", "discharge"));
        assert!(m("identifier:of-type", "urn:t|entryUUID|urn:uuid:0f0e"));
        assert!(!m("identifier:of-type", "urn:t|uniqueId|urn:uuid:0f0e"));
        assert!(m("author.family:exact", "Lovelace"));
        assert!(!m("author.family:exact", "lovelace"));
        assert!(m("author.family:contains", "vel"));
        assert!(m("related:identifier", "urn:ids|R-7"));
        assert!(!m("related:identifier", "urn:ids|R-8"));
        assert!(m("event:missing", "false"));
        assert!(!m("event:missing", "true"));
    }

    #[test]
    fn an_author_outside_the_resource_matches_no_name() {
        let mut d = doc();
        d["author"] = json!([{"reference": "https://elsewhere.example/Practitioner/1"}]);
        let pairs = vec![("author.given".to_owned(), "ada".to_owned())];
        let q = parse_query(&DOCUMENT_REFERENCE, &pairs, true).expect("q");
        assert!(!matches_all(&d, &q.criteria, 0));
    }

    #[test]
    fn accents_and_case_fold() {
        assert_eq!(normalise("Émilie Ünal"), "emilie unal");
    }
}
