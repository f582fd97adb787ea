//! Sample ITI-65 Provide Document Bundles, as an HIS would send them: used by `medgate demo`,
//! the load generator and the tests, so all three speak exactly what the parser accepts.

use super::primitives::BASE64_OUT as B64;
use base64::Engine;
use ring::rand::SecureRandom;
use serde_json::{json, Value};

use super::{MhdOption, PatientId};

/// A fresh OID under `2.25` (a UUID as an integer, ITU-T X.667), as `urn:oid:`.
fn fresh_oid() -> String {
    let mut b = [0u8; 16];
    // The system CSPRNG does not fail on Linux; zeros would still make a valid OID.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    format!("urn:oid:2.25.{}", u128::from_be_bytes(b))
}

/// An IHE MHD Minimal Provide Document Bundle with one DocumentReference, the Binary it points
/// at and the SubmissionSet List, in that order (so the answer's first entry is the
/// DocumentReference), for `patient`. `master_identifier` (system, value) makes the create
/// conditional: the same identifier sent again returns the first result; without one, a fresh
/// `urn:oid:2.25.*` is made, so every call submits a new document.
pub fn sample_transaction(patient: &PatientId, content_type: &str, data: &[u8], master_identifier: Option<(&str, &str)>) -> Value {
    SampleDocument::new(content_type, data).transaction(patient, master_identifier)
}

/// A document made ready once for any number of sample bundles: what a bundle says of it (type,
/// size, SHA-1) and its base64, so that a client sending the same bytes again and again (the
/// load generator) does not hash and encode them for every request.
#[derive(Debug, Clone)]
pub struct SampleDocument {
    content_type: String,
    size: usize,
    sha1: String,
    data: String,
}

impl SampleDocument {
    /// `data` of MIME type `content_type`.
    pub fn new(content_type: &str, data: &[u8]) -> SampleDocument {
        use sha1::Digest;
        SampleDocument { content_type: content_type.to_owned(), size: data.len(), sha1: B64.encode(sha1::Sha1::digest(data)), data: B64.encode(data) }
    }

    /// The bundle of [`sample_transaction`] for this document.
    pub fn transaction(&self, patient: &PatientId, master_identifier: Option<(&str, &str)>) -> Value {
        let SampleDocument { content_type, size, sha1, data } = self;
        let doc_url = "urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e1d";
        let bin_url = "urn:uuid:a6f1c36e-5a0b-4d1c-9a5f-2b0e7c0d8e55";
        let ss_url = "urn:uuid:0c287d32-01e3-4d87-9953-9fcc9404eb21";
        let subject = json!({"identifier": {"system": patient.system, "value": patient.value}});
        let fresh = fresh_oid();
        let (system, value) = master_identifier.unwrap_or(("urn:ietf:rfc:3986", fresh.as_str()));
        let doc = json!({
            "resourceType": "DocumentReference",
            "masterIdentifier": {"use": "usual", "system": system, "value": value},
            "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": doc_url}],
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
            "subject": subject,
            "date": "2026-11-28T09:30:00Z",
            "description": "Progress note",
            "content": [{"attachment": {"contentType": content_type, "url": bin_url, "size": size, "hash": sha1}}]
        });
        let submission_set = json!({
            "resourceType": "List",
            "extension": [{"url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId", "valueIdentifier": {"value": "urn:oid:1.3.6.1.4.1.21367.13.80.110"}}],
            "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": fresh_oid()}, {"use": "official", "system": "urn:ietf:rfc:3986", "value": ss_url}],
            "status": "current",
            "mode": "working",
            "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes", "code": "submissionset"}]},
            "subject": subject,
            "date": "2026-11-28T09:31:00Z",
            "entry": [{"item": {"reference": doc_url}}]
        });
        json!({
            "resourceType": "Bundle",
            "meta": {"profile": [MhdOption::Minimal.profile()]},
            "type": "transaction",
            "entry": [
                {"fullUrl": doc_url, "resource": doc, "request": {"method": "POST", "url": "DocumentReference"}},
                {
                    "fullUrl": bin_url,
                    "resource": {"resourceType": "Binary", "contentType": content_type, "data": data},
                    "request": {"method": "POST", "url": "Binary"}
                },
                {"fullUrl": ss_url, "resource": submission_set, "request": {"method": "POST", "url": "List"}}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_document_makes_a_new_submission_each_time_with_the_fips_180_sha1() {
        let patient = PatientId { system: "urn:oid:1.2.3".into(), value: "42".into() };
        let doc = SampleDocument::new("text/plain", b"abc");
        let (a, b) = (doc.transaction(&patient, None), doc.transaction(&patient, None));
        let attachment = &a["entry"][0]["resource"]["content"][0]["attachment"];
        // FIPS 180-2, appendix A.1: SHA-1("abc") = a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d.
        assert_eq!(attachment["hash"], "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
        assert_eq!(attachment["size"], 3);
        assert_eq!(a["entry"][1]["resource"]["data"], "YWJj");
        let master = |v: &Value| v["entry"][0]["resource"]["masterIdentifier"]["value"].clone();
        assert_ne!(master(&a), master(&b), "each bundle is a new document");
        let set_id = |v: &Value| v["entry"][2]["resource"]["identifier"][0]["value"].clone();
        assert_ne!(set_id(&a), set_id(&b), "and a new SubmissionSet");
        assert_eq!(a["entry"][1], b["entry"][1], "the same bytes");
        assert_eq!(sample_transaction(&patient, "text/plain", b"abc", Some(("urn:x", "urn:oid:1.2")))["entry"][1], a["entry"][1]);
    }
}
