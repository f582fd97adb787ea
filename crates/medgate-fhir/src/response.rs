//! The ITI-65 answer: a `transaction-response` Bundle with one entry per request entry, in the
//! request's order, each with its `response` (status, `Type/id/_history/n` location, etag,
//! lastModified) and, where a ledger entry anchors it, the receipt as an extension of the
//! response. Entries carry no `fullUrl` (as the IHE MHD example answer): the location says where
//! each resource is.
//!
//! Boundary: typed values in, FHIR R4 JSON out. No I/O.

use serde_json::{json, Value};

use super::list::receipt_extension;

/// One entry of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerEntry {
    /// `201 Created`, `200 OK`...
    pub status: &'static str,
    /// Resource type and id the location names.
    pub resource_type: &'static str,
    pub id: String,
    /// The version the entry made (`_history/n`, etag `W/"n"`).
    pub version: u32,
    /// When that version was made (FHIR instant).
    pub last_modified: String,
    /// The resource itself, when the answer shows it.
    pub resource: Option<Value>,
    /// The ledger receipt of the entry that anchors what this entry did.
    pub receipt: Option<Value>,
    /// Whether the response shows `receipt` as an extension (the DocumentReference's covers its
    /// Binary, the list's its Patient).
    pub show_receipt: bool,
}

/// The `transaction-response` Bundle.
pub fn provide_response(entries: &[AnswerEntry]) -> Value {
    let entry: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut response = json!({
                "status": e.status,
                "location": format!("{}/{}/_history/{}", e.resource_type, e.id, e.version),
                "etag": format!("W/\"{}\"", e.version),
                "lastModified": e.last_modified,
            });
            if let (Some(receipt), Some(obj), true) = (&e.receipt, response.as_object_mut(), e.show_receipt) {
                obj.insert("extension".into(), json!([receipt_extension(receipt)]));
            }
            match &e.resource {
                Some(r) => json!({"resource": r, "response": response}),
                None => json!({"response": response}),
            }
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entry})
}

/// The ids an answer's entries name for `resource_type`, in order (from each
/// `response.location`, relative or absolute, `_history` or not).
pub fn answer_ids(answer: &Value, resource_type: &str) -> Vec<String> {
    let entries = answer.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| e.pointer("/response/location")?.as_str())
        .filter_map(|loc| {
            let path = loc.split("/_history/").next().unwrap_or(loc);
            let (before, id) = path.rsplit_once('/')?;
            (before == resource_type || before.ends_with(&format!("/{resource_type}"))).then(|| id.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_answer_entry_with_versioned_locations() {
        let b = provide_response(&[
            AnswerEntry { status: "201 Created", resource_type: "List", id: "l1".into(), version: 1, last_modified: "2026-01-01T00:00:00Z".into(), resource: Some(json!({"resourceType": "List", "id": "l1"})), receipt: Some(json!({"height": 1})), show_receipt: true },
            AnswerEntry { status: "200 OK", resource_type: "DocumentReference", id: "r0".into(), version: 2, last_modified: "2026-01-01T00:00:01Z".into(), resource: None, receipt: Some(json!({"height": 2})), show_receipt: true },
        ]);
        assert_eq!(b["type"], "transaction-response");
        assert_eq!(b["entry"][0]["response"]["location"], "List/l1/_history/1");
        assert_eq!(b["entry"][0]["response"]["etag"], "W/\"1\"");
        assert!(b["entry"][0]["response"]["extension"][0]["valueAttachment"]["data"].is_string());
        assert!(b["entry"][1]["response"]["extension"][0]["valueAttachment"]["data"].is_string());
        assert_eq!(answer_ids(&b, "List"), ["l1"]);
        assert_eq!(answer_ids(&b, "DocumentReference"), ["r0"]);
        assert!(answer_ids(&b, "Binary").is_empty());
        assert_eq!(b["entry"][1]["response"]["location"], "DocumentReference/r0/_history/2");
        assert_eq!(b["entry"][1]["response"]["status"], "200 OK");
        assert!(b["entry"][1].get("resource").is_none() && b["entry"][1].get("fullUrl").is_none());
    }
}
