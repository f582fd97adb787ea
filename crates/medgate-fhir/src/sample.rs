//! Sample ITI-65 style submissions, as an HIS would send them: used by `medgate demo`, the load
//! generator and the tests, so all three speak exactly what the parser accepts.

use super::primitives::BASE64_OUT as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::PatientId;

/// A transaction Bundle with one DocumentReference and the Binary it points at (plus the
/// SubmissionSet List), for `patient`. `master_identifier` (system, value) makes the create
/// conditional: the same identifier sent again returns the first result.
pub fn sample_transaction(patient: &PatientId, content_type: &str, data: &[u8], master_identifier: Option<(&str, &str)>) -> Value {
    let doc_url = "urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e1d";
    let bin_url = "urn:uuid:a6f1c36e-5a0b-4d1c-9a5f-2b0e7c0d8e55";
    let mut doc = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
        "subject": {"identifier": {"system": patient.system, "value": patient.value}},
        "date": "2026-11-28T09:30:00Z",
        "description": "Progress note",
        "content": [{"attachment": {"contentType": content_type, "url": bin_url, "size": data.len()}}]
    });
    if let (Some((system, value)), Some(obj)) = (master_identifier, doc.as_object_mut()) {
        obj.insert("masterIdentifier".into(), json!({"system": system, "value": value}));
    }
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0c287d32-01e3-4d87-9953-9fcc9404eb21",
                "resource": {
                    "resourceType": "List",
                    "status": "current",
                    "mode": "working",
                    "entry": [{"item": {"reference": doc_url}}]
                },
                "request": {"method": "POST", "url": "List"}
            },
            {"fullUrl": doc_url, "resource": doc, "request": {"method": "POST", "url": "DocumentReference"}},
            {
                "fullUrl": bin_url,
                "resource": {"resourceType": "Binary", "contentType": content_type, "data": B64.encode(data)},
                "request": {"method": "POST", "url": "Binary"}
            }
        ]
    })
}
