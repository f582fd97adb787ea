//! A DocumentReference's status after its custodian changed it (`superseded` by a replacement,
//! `entered-in-error`), and the one FHIRPath Patch medgate applies to a DocumentReference.
//!
//! Boundary: JSON in, JSON or a refusal out. No I/O.

use serde_json::{json, Value};

use super::json::{as_object, child, item, parse_strict, req_array, req_str, Object};
use super::FhirError;

/// The DocumentReference `resource` (as rendered at version 1) at `version`: its `status` and
/// `meta.versionId` / `meta.lastUpdated` set. The rest, content included, is as submitted.
pub fn at_version(mut resource: Value, status: &str, version: u32, last_updated: &str) -> Value {
    if let Some(obj) = resource.as_object_mut() {
        obj.insert("status".into(), json!(status));
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("versionId".into(), json!(version.to_string()));
            meta.insert("lastUpdated".into(), json!(last_updated));
        }
    }
    resource
}

/// `PATCH /DocumentReference/{id}`: a FHIRPath Patch `Parameters` with one operation replacing
/// `DocumentReference.status`. Returns the new status, which must be `entered-in-error` (a
/// document becomes superseded by the ITI-65 submission that replaces it).
pub fn parse_status_patch(body: &[u8]) -> Result<String, FhirError> {
    let v = parse_strict(body)?;
    let res = as_object(&v, "Parameters")?;
    if res.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::UnsupportedType {
            path: "resourceType".into(),
            reason: "a PATCH carries a FHIRPath Patch Parameters resource (JSON Patch is not supported)".into(),
        });
    }
    let params = req_array(res, "parameter", "Parameters")?;
    let [op] = params else {
        return Err(FhirError::invalid("Parameters.parameter", "must hold exactly one 'operation'"));
    };
    let at = item("Parameters.parameter", 0);
    let op = as_object(op, &at)?;
    if req_str(op, "name", &at)? != "operation" {
        return Err(FhirError::invalid(child(&at, "name"), "must be 'operation'"));
    }
    let parts = req_array(op, "part", &at)?;
    let part = |name: &str, key: &str| -> Result<&str, FhirError> {
        let found = parts.iter().filter_map(Value::as_object).find(|p| p.get("name").and_then(Value::as_str) == Some(name));
        let p: &Object = found.ok_or_else(|| FhirError::required(format!("{at}.part:{name}")))?;
        req_str(p, key, &format!("{at}.part:{name}"))
    };
    if part("type", "valueCode")? != "replace" {
        return Err(FhirError::invalid(format!("{at}.part:type"), "only 'replace' is applied"));
    }
    if part("path", "valueString")? != "DocumentReference.status" {
        return Err(FhirError::invalid(format!("{at}.part:path"), "only DocumentReference.status is changed; a document's metadata is replaced by submitting a new document that replaces it"));
    }
    let status = part("value", "valueCode")?;
    if status != "entered-in-error" {
        return Err(FhirError::invalid(
            format!("{at}.part:value"),
            "must be 'entered-in-error'; a document becomes superseded when an ITI-65 submission replaces it (relatesTo 'replaces')",
        ));
    }
    Ok(status.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(path: &str, value: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path}, {"name": "value", "valueCode": value}]}]}))
        .unwrap_or_default()
    }

    #[test]
    fn only_entered_in_error_on_the_status() {
        assert_eq!(parse_status_patch(&patch("DocumentReference.status", "entered-in-error")).ok().as_deref(), Some("entered-in-error"));
        for (body, path) in [
            (patch("DocumentReference.status", "superseded"), "Parameters.parameter[0].part:value"),
            (patch("DocumentReference.description", "entered-in-error"), "Parameters.parameter[0].part:path"),
            (br#"[{"op":"replace","path":"/status","value":"entered-in-error"}]"#.to_vec(), ""),
            (br#"{"resourceType":"DocumentReference","status":"entered-in-error"}"#.to_vec(), "resourceType"),
        ] {
            let err = parse_status_patch(&body).expect_err("refused");
            assert!(err.to_string().contains(path), "{path}: {err}");
        }
    }

    #[test]
    fn a_version_sets_status_and_meta() {
        let r = at_version(json!({"resourceType": "DocumentReference", "status": "current", "meta": {"lastUpdated": "a"}}), "superseded", 2, "b");
        assert_eq!(r["status"], "superseded");
        assert_eq!(r["meta"], json!({"lastUpdated": "b", "versionId": "2"}));
    }
}
