//! Strict FHIR JSON reading: bytes to a `serde_json::Value` with FHIR's JSON rules, and typed
//! accessors that name the element path when something is missing or of the wrong JSON type.
//!
//! Boundary: knows JSON and FHIR's JSON representation rules (no duplicate properties, no
//! `null`, no empty strings or arrays), nothing about particular resources. Error texts describe
//! the JSON kind found, never the value.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

use super::FhirError;

/// A JSON object.
pub(crate) type Object = Map<String, Value>;

/// Parses a request body as JSON, refusing duplicate property names and trailing data.
/// A leading UTF-8 byte order mark is tolerated. serde_json's nesting limit bounds recursion.
pub(crate) fn parse_strict(body: &[u8]) -> Result<Value, FhirError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = StrictValue
        .deserialize(&mut de)
        .map_err(|e| FhirError::MalformedJson(e.to_string()))?;
    de.end().map_err(|e| FhirError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// Builds a `Value` like serde_json does, but fails on a repeated property name: FHIR JSON
/// forbids them, and two readers picking different duplicates is how smuggling starts.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Object::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(A::Error::custom(format!(
                    "duplicate property {}",
                    shown_name(&key)
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            obj.insert(key, value);
        }
        Ok(Value::Object(obj))
    }
}

/// A property or type name as it may appear in an error text: quoted if it looks like a FHIR
/// element or resource name, otherwise withheld (it could be anything the sender put there).
pub(crate) fn shown_name(name: &str) -> String {
    let plausible = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plausible {
        format!("'{name}'")
    } else {
        "(name not shown)".to_owned()
    }
}

/// The JSON kind of a value, for "expected X, found Y" messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Path of `key` under `at`.
pub(crate) fn child(at: &str, key: &str) -> String {
    format!("{at}.{key}")
}

/// Path of item `i` of the array at `at`.
pub(crate) fn item(at: &str, i: usize) -> String {
    format!("{at}[{i}]")
}

fn wrong_kind(path: String, expected: &str, found: &Value) -> FhirError {
    FhirError::invalid(path, format!("must be {expected}, found {}", kind(found)))
}

/// `obj[key]` if present; `null` is refused (FHIR JSON leaves absent elements out).
fn present<'a>(obj: &'a Object, key: &str, at: &str) -> Result<Option<&'a Value>, FhirError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Null) => Err(FhirError::invalid(
            child(at, key),
            "must not be null (leave the element out instead)",
        )),
        Some(v) => Ok(Some(v)),
    }
}

/// The value at `path` as an object (FHIR forbids empty ones).
pub(crate) fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Object, FhirError> {
    object_at(v, || path.to_owned())
}

/// [`as_object`], the path made only for an error: a valid request's elements are read by
/// the dozen, and each path is a formatted string.
fn object_at(v: &Value, path: impl FnOnce() -> String) -> Result<&Object, FhirError> {
    match v {
        Value::Object(o) if o.is_empty() => Err(FhirError::invalid(path(), "must not be an empty object")),
        Value::Object(o) => Ok(o),
        other => Err(wrong_kind(path(), "an object", other)),
    }
}

/// The value at `path` as a string with some non-whitespace content; the path made only for
/// an error (see [`object_at`]).
fn str_at(v: &Value, path: impl FnOnce() -> String) -> Result<&str, FhirError> {
    match v {
        Value::String(s) if s.trim().is_empty() => Err(FhirError::invalid(path(), "must not be empty")),
        Value::String(s) => Ok(s),
        other => Err(wrong_kind(path(), "a string", other)),
    }
}

/// Optional string element `key` of `obj` (at path `at`).
pub(crate) fn opt_str<'a>(obj: &'a Object, key: &str, at: &str) -> Result<Option<&'a str>, FhirError> {
    present(obj, key, at)?.map(|v| str_at(v, || child(at, key))).transpose()
}

/// Required string element `key` of `obj` (at path `at`).
pub(crate) fn req_str<'a>(obj: &'a Object, key: &str, at: &str) -> Result<&'a str, FhirError> {
    opt_str(obj, key, at)?.ok_or_else(|| FhirError::required(child(at, key)))
}

/// Optional object element `key` of `obj` (at path `at`).
pub(crate) fn opt_obj<'a>(obj: &'a Object, key: &str, at: &str) -> Result<Option<&'a Object>, FhirError> {
    present(obj, key, at)?.map(|v| object_at(v, || child(at, key))).transpose()
}

/// Required object element `key` of `obj` (at path `at`).
pub(crate) fn req_obj<'a>(obj: &'a Object, key: &str, at: &str) -> Result<&'a Object, FhirError> {
    opt_obj(obj, key, at)?.ok_or_else(|| FhirError::required(child(at, key)))
}

/// Optional array element `key` of `obj` (at path `at`); FHIR forbids empty arrays.
pub(crate) fn opt_array<'a>(obj: &'a Object, key: &str, at: &str) -> Result<Option<&'a [Value]>, FhirError> {
    match present(obj, key, at)? {
        None => Ok(None),
        Some(Value::Array(a)) if a.is_empty() => Err(FhirError::invalid(
            child(at, key),
            "must not be an empty array (leave the element out instead)",
        )),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(other) => Err(wrong_kind(child(at, key), "an array", other)),
    }
}

/// Required array element `key` of `obj` (at path `at`), with at least one item.
pub(crate) fn req_array<'a>(obj: &'a Object, key: &str, at: &str) -> Result<&'a [Value], FhirError> {
    opt_array(obj, key, at)?.ok_or_else(|| FhirError::required(child(at, key)))
}

/// Optional unsignedInt element `key` of `obj` (at path `at`).
pub(crate) fn opt_unsigned_int(obj: &Object, key: &str, at: &str) -> Result<Option<u64>, FhirError> {
    match present(obj, key, at)? {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= u64::from(u32::MAX) => Ok(Some(v)),
            _ => Err(FhirError::invalid(
                child(at, key),
                "must be an unsignedInt (a whole number from 0 to 4294967295)",
            )),
        },
        Some(other) => Err(wrong_kind(child(at, key), "a number", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_plain_json() {
        let v = parse_strict(br#"{"a":[1,-2,3.5,true,null,"x"],"b":{"c":{}}}"#).expect("valid");
        assert_eq!(v, json!({"a":[1,-2,3.5,true,null,"x"],"b":{"c":{}}}));
    }

    #[test]
    fn tolerates_bom() {
        let v = parse_strict(b"\xEF\xBB\xBF{\"a\":1}").expect("valid with BOM");
        assert_eq!(v, json!({"a": 1}));
    }

    #[test]
    fn refuses_duplicate_properties_at_any_depth() {
        for body in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"x":[{"subject":{"v":"1"},"subject":{"v":"2"}}]}"#,
        ] {
            let err = parse_strict(body).expect_err("duplicate");
            assert!(matches!(err, FhirError::MalformedJson(_)));
            assert!(err.to_string().contains("duplicate property"), "{err}");
        }
    }

    #[test]
    fn duplicate_key_name_is_withheld_when_not_a_name() {
        let err = parse_strict(br#"{"12 34":1,"12 34":2}"#).expect_err("duplicate");
        assert!(!err.to_string().contains("12 34"), "{err}");
    }

    #[test]
    fn refuses_trailing_data_and_garbage() {
        for body in [&b"{} {}"[..], b"", b"{", b"nul", b"{\"a\":01}"] {
            let err = parse_strict(body).expect_err("malformed");
            assert_eq!(err.status(), 400);
            assert_eq!(err.issue_code(), "structure");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut body = "[".repeat(100_000);
        body.push_str(&"]".repeat(100_000));
        assert!(matches!(parse_strict(body.as_bytes()), Err(FhirError::MalformedJson(_))));
    }

    #[test]
    fn accessors_name_the_path_and_the_kind() {
        let v = json!({"s": 1, "e": "  ", "n": null, "a": [], "o": "x", "u": -1});
        let o = v.as_object().expect("object");
        let err = req_str(o, "s", "R").expect_err("wrong kind");
        assert_eq!(err.to_string(), "R.s: must be a string, found a number");
        let err = req_str(o, "missing", "R").expect_err("missing");
        assert!(matches!(err, FhirError::Required { ref path } if path == "R.missing"));
        assert_eq!(opt_str(o, "e", "R").expect_err("blank").to_string(), "R.e: must not be empty");
        assert!(opt_str(o, "n", "R").is_err());
        assert!(opt_array(o, "a", "R").is_err());
        assert_eq!(opt_obj(o, "o", "R").expect_err("wrong kind").to_string(), "R.o: must be an object, found a string");
        let empty = json!({"o": {}});
        assert_eq!(opt_obj(empty.as_object().expect("object"), "o", "R").expect_err("empty").to_string(), "R.o: must not be an empty object");
        assert!(opt_unsigned_int(o, "u", "R").is_err());
        assert_eq!(opt_str(o, "absent", "R").expect("absent is fine"), None);
    }
}
