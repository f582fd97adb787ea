//! The FHIR resources medgate answers with: stored DocumentReferences and transaction responses.
//!
//! Boundary: typed values in, FHIR R4 JSON out. No I/O.

use super::primitives::BASE64_OUT as B64;
use base64::Engine;
use serde_json::{json, Value};

/// Extension on a DocumentReference's attachment: hex SHA-256 of the document (FHIR's own
/// `Attachment.hash` is SHA-1).
pub const SHA256_EXTENSION: &str = "urn:medgate:fhir:StructureDefinition:content-sha256";
/// Extension on a DocumentReference: the ledger receipt anchoring it (JSON, as a base64
/// attachment), checkable offline with the gateway's ledger public key.
pub const LEDGER_RECEIPT_EXTENSION: &str = "urn:medgate:fhir:StructureDefinition:ledger-receipt";
/// Identifier system of hospital ids in the consortium.
pub const HOSPITAL_SYSTEM: &str = "urn:medgate:hospital";

/// A stored record as the gateway describes it.
#[derive(Debug, Clone)]
pub struct StoredDocument<'a> {
    pub id: &'a str,
    /// The DocumentReference as the HIS submitted it (without the document bytes).
    pub document_reference: &'a Value,
    /// When the gateway stored it (FHIR instant).
    pub created: &'a str,
    pub size: u64,
    /// Hex SHA-256 of the document.
    pub content_hash: &'a str,
    /// Hospital id of the custodian.
    pub custodian: &'a str,
    /// The ledger receipt, once the entry is in a block.
    pub receipt: Option<&'a Value>,
}

/// The DocumentReference to return: what the HIS sent, with the server-assigned id,
/// `meta.lastUpdated`, the custodian, and the attachment pointing at `Binary/{id}`.
pub fn document_reference_resource(d: &StoredDocument<'_>) -> Value {
    let mut res = d.document_reference.clone();
    let Some(obj) = res.as_object_mut() else { return res };
    obj.insert("resourceType".into(), json!("DocumentReference"));
    obj.insert("id".into(), json!(d.id));
    obj.insert("meta".into(), json!({"lastUpdated": d.created}));
    obj.insert("custodian".into(), json!({"identifier": {"system": HOSPITAL_SYSTEM, "value": d.custodian}}));
    if let Some(att) = obj
        .get_mut("content")
        .and_then(|c| c.get_mut(0))
        .and_then(|c| c.get_mut("attachment"))
        .and_then(Value::as_object_mut)
    {
        att.insert("url".into(), json!(format!("Binary/{}", d.id)));
        att.insert("size".into(), json!(d.size));
        att.remove("data");
        att.insert("extension".into(), json!([{"url": SHA256_EXTENSION, "valueString": d.content_hash}]));
    }
    if let Some(receipt) = d.receipt {
        attach_receipt(&mut res, receipt);
    }
    res
}

/// Puts the ledger receipt on a DocumentReference (the [`LEDGER_RECEIPT_EXTENSION`]).
pub fn attach_receipt(resource: &mut Value, receipt: &Value) {
    let Some(obj) = resource.as_object_mut() else { return };
    let bytes = serde_json::to_vec(receipt).unwrap_or_default();
    obj.insert(
        "extension".into(),
        json!([{
            "url": LEDGER_RECEIPT_EXTENSION,
            "valueAttachment": {"contentType": "application/json", "data": B64.encode(bytes)}
        }]),
    );
}

/// A `transaction-response` Bundle: one entry per created DocumentReference, with its HTTP
/// status (`201 Created`, or `202 Accepted` while its ledger entry waits in the outbox), location
/// and the resource (carrying the receipt when there is one).
pub fn transaction_response(created: Vec<(Value, &str)>) -> Value {
    let entry: Vec<Value> = created
        .into_iter()
        .map(|(resource, status)| {
            let id = resource["id"].as_str().unwrap_or_default().to_owned();
            json!({
                "fullUrl": format!("DocumentReference/{id}"),
                "resource": resource,
                "response": {"status": status, "location": format!("DocumentReference/{id}")}
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entry})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_document_gets_server_fields_and_keeps_the_rest() {
        let submitted = json!({"resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "text/plain", "title": "t"}}]});
        let receipt = json!({"height": 3});
        let d = StoredDocument {
            id: "r1",
            document_reference: &submitted,
            created: "2026-01-01T00:00:00Z",
            size: 5,
            content_hash: "ab",
            custodian: "hospital-a",
            receipt: Some(&receipt),
        };
        let r = document_reference_resource(&d);
        assert_eq!(r["id"], "r1");
        assert_eq!(r["status"], "current");
        assert_eq!(r["content"][0]["attachment"]["url"], "Binary/r1");
        assert_eq!(r["content"][0]["attachment"]["title"], "t");
        assert_eq!(r["content"][0]["attachment"]["extension"][0]["valueString"], "ab");
        assert_eq!(r["custodian"]["identifier"]["value"], "hospital-a");
        let data = r["extension"][0]["valueAttachment"]["data"].as_str().expect("receipt");
        assert_eq!(serde_json::from_slice::<Value>(&B64.decode(data).expect("b64")).expect("json"), receipt);
    }
}
