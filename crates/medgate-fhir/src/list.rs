//! The SubmissionSet List and the submitted Patient as medgate answers them (`GET /List/{id}`,
//! `GET /Patient/{id}`, ITI-66, the ITI-65 answer): what the HIS sent, with the server's id,
//! version and time, and the ledger receipt that anchors the list.
//!
//! Boundary: stored JSON and typed values in, FHIR R4 JSON out. No I/O.

use serde_json::{json, Value};

use super::primitives::BASE64_OUT as B64;
use super::LEDGER_RECEIPT_EXTENSION;
use base64::Engine;

/// A stored list as the gateway describes it.
#[derive(Debug, Clone, Copy)]
pub struct StoredListView<'a> {
    pub id: &'a str,
    /// The List as kept (entry items already `DocumentReference/<id>`).
    pub list: &'a Value,
    /// When the gateway stored it (FHIR instant).
    pub created: &'a str,
    /// The ledger receipt of its anchoring entry, once in a block.
    pub receipt: Option<&'a Value>,
}

/// The receipt extension (the receipt JSON as a base64 attachment).
pub(crate) fn receipt_extension(receipt: &Value) -> Value {
    let bytes = serde_json::to_vec(receipt).unwrap_or_default();
    json!({"url": LEDGER_RECEIPT_EXTENSION, "valueAttachment": {"contentType": "application/json", "data": B64.encode(bytes)}})
}

/// `meta` of a resource the gateway keeps at version 1: the submitter's `profile` and
/// `security` labels kept, `versionId` and `lastUpdated` the gateway's.
fn server_meta(submitted: Option<&Value>, version: u32, last_updated: &str) -> Value {
    let mut meta = json!({"versionId": version.to_string(), "lastUpdated": last_updated});
    for key in ["profile", "security"] {
        if let (Some(v), Some(obj)) = (submitted.and_then(|m| m.get(key)), meta.as_object_mut()) {
            obj.insert(key.into(), v.clone());
        }
    }
    meta
}

/// The List resource: as kept, with its id, version 1, and the receipt as one more extension.
pub fn list_resource(v: &StoredListView<'_>) -> Value {
    let mut res = v.list.clone();
    let Some(obj) = res.as_object_mut() else { return res };
    obj.insert("resourceType".into(), json!("List"));
    obj.insert("id".into(), json!(v.id));
    let meta = server_meta(obj.get("meta"), 1, v.created);
    obj.insert("meta".into(), meta);
    if let Some(receipt) = v.receipt {
        let ext = obj.entry("extension").or_insert_with(|| json!([]));
        if let Some(a) = ext.as_array_mut() {
            a.push(receipt_extension(receipt));
        }
    }
    res
}

/// The Patient a submission carried, kept with its SubmissionSet: under that list's `id`.
pub fn patient_resource(id: &str, patient: &Value, created: &str) -> Value {
    let mut res = patient.clone();
    if let Some(obj) = res.as_object_mut() {
        obj.insert("resourceType".into(), json!("Patient"));
        obj.insert("id".into(), json!(id));
        let meta = server_meta(obj.get("meta"), 1, created);
        obj.insert("meta".into(), meta);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_gets_the_server_fields_and_keeps_the_rest() {
        let kept = json!({"resourceType": "List", "id": "urn-id", "meta": {"profile": ["p"], "versionId": "7"},
            "extension": [{"url": "x", "valueString": "y"}], "status": "current", "entry": [{"item": {"reference": "DocumentReference/r1"}}]});
        let receipt = json!({"height": 4});
        let r = list_resource(&StoredListView { id: "l1", list: &kept, created: "2026-01-01T00:00:00Z", receipt: Some(&receipt) });
        assert_eq!(r["id"], "l1");
        assert_eq!(r["meta"], json!({"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z", "profile": ["p"]}));
        assert_eq!(r["extension"][0]["url"], "x");
        assert_eq!(r["extension"][1]["url"], LEDGER_RECEIPT_EXTENSION);
        assert_eq!(r["entry"][0]["item"]["reference"], "DocumentReference/r1");
        let p = patient_resource("l1", &json!({"resourceType": "Patient", "id": "x"}), "2026-01-01T00:00:00Z");
        assert_eq!((p["id"].as_str(), p["meta"]["versionId"].as_str()), (Some("l1"), Some("1")));
    }
}
