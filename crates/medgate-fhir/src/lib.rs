//! medgate-fhir: FHIR R4 JSON as IHE MHD actors send it. Parsing and validation of what the HIS sends, and the resources medgate answers with.
//!
//! Boundary: bytes from the HIS come in (`parse_transaction`, `parse_document_reference`,
//! `PatientId::parse_token`), typed and validated values go out; typed values from the gateway
//! come in and FHIR JSON goes out (`document_reference_resource`, `searchset`,
//! `transaction_response`, `audit_event`, `capability_statement`, `operation_outcome`).
//! Nothing here does I/O, holds keys or knows about storage or the ledger, and no error text
//! produced here repeats a patient identifier value or document content.

mod audit;
mod binary;
mod capability;
mod consent;
mod error;
mod ingest;
mod json;
mod list;
mod primitives;
mod resources;
mod response;
mod sample;
pub mod search;
mod status;
mod submission;
pub mod subset;

pub use audit::{audit_event, AuditAction, AuditRecord};
pub use binary::binary_resource;
pub use consent::{consent_resource, parse_consent, ConsentSubmission};
pub use error::{operation_outcome, FhirError, Issue};
pub use ingest::{parse_document_reference, parse_transaction};
pub use capability::capability_statement;
pub use resources::{
    attach_receipt, document_reference_resource, transaction_response, StoredDocument, LEDGER_RECEIPT_EXTENSION,
    SHA256_EXTENSION,
};
pub use list::{list_resource, patient_resource, StoredListView};
pub use response::{answer_ids, provide_response, AnswerEntry};
pub use sample::{sample_transaction, SampleDocument};
pub use status::{at_version, parse_status_patch};
pub use submission::{MhdOption, Relation, StatusPatch, Submission, SubmissionEntry, SubmissionSet, RELATION_CODES};

/// A patient identifier as the HIS sends it: system (URI/OID) and value.
///
/// The value identifies a person: do not log it; the ledger only ever sees a pseudonym derived
/// from [`PatientId::canonical`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PatientId {
    /// The identifier's namespace, e.g. `urn:oid:1.2.250.1.213.1.4.8`.
    pub system: String,
    /// The identifier within `system`.
    pub value: String,
}

impl PatientId {
    /// Parses the `patient` search parameter: `system|value` (both non-empty). Also accepts the
    /// `patient.identifier=` form's value, which is the same syntax.
    ///
    /// The input is the already URL-decoded parameter value. FHIR token escapes are honoured
    /// (`\|`, `\,`, `\$`, `\\`); an unescaped `,` (several patients at once) is refused.
    pub fn parse_token(s: &str) -> Result<PatientId, FhirError> {
        primitives::parse_identifier_token(s)
            .map_err(|reason| FhirError::BadParameter(format!("patient: {reason}")))
    }

    /// Parses the raw (still percent-encoded) value of a `patient` query parameter.
    pub fn from_query(raw: &str) -> Result<PatientId, FhirError> {
        let decoded = primitives::percent_decode(raw).map_err(|reason| FhirError::BadParameter(format!("patient: {reason}")))?;
        PatientId::parse_token(&decoded)
    }

    /// Canonical bytes to pseudonymise: `system|value`.
    pub fn canonical(&self) -> String {
        format!("{}|{}", self.system, self.value)
    }
}

/// One document to store, extracted and validated from what the HIS posted.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentSubmission {
    /// The patient the document is about (from `DocumentReference.subject`).
    pub patient: PatientId,
    /// DocumentReference.masterIdentifier (system, value) if present: used for conditional create / idempotency.
    pub master_identifier: Option<(String, String)>,
    /// `DocumentReference.type.coding[0]` (system, code, display) if present.
    pub doc_type: Option<Coding>,
    /// DocumentReference.status: `current`, `superseded` or `entered-in-error`.
    pub status: String,
    /// DocumentReference.description.
    pub description: Option<String>,
    /// DocumentReference.date, a validated FHIR instant.
    pub date: Option<String>,
    /// `content[0].attachment.contentType` as sent (a `type/subtype` MIME type, parameters kept).
    pub content_type: String,
    /// `content[0].attachment.title`.
    pub title: Option<String>,
    /// The document bytes (decoded base64), never empty.
    pub data: Vec<u8>,
    /// The DocumentReference as submitted, with attachment.data removed and attachment.url left out;
    /// medgate stores it (encrypted) and returns it with server-assigned id/url filled in.
    pub document_reference: serde_json::Value,
    /// `relatesTo`: the stored documents this one replaces, transforms, signs or appends.
    pub relates_to: Vec<Relation>,
}

/// The decoded document is wiped (`zeroize`) when the submission is dropped, however the
/// request that carried it ends: sealed, refused or cancelled.
impl Drop for DocumentSubmission {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// A FHIR Coding, reduced to the three elements medgate uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Coding {
    /// Code system URI.
    pub system: Option<String>,
    /// Code within the system.
    pub code: Option<String>,
    /// Human-readable text for the code.
    pub display: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parses_system_and_value() {
        let id = PatientId::parse_token("urn:oid:1.2.3|12345").expect("valid token");
        assert_eq!(id.system, "urn:oid:1.2.3");
        assert_eq!(id.value, "12345");
        assert_eq!(id.canonical(), "urn:oid:1.2.3|12345");
    }

    #[test]
    fn token_splits_on_first_bar_and_unescapes() {
        let id = PatientId::parse_token(r"http://h.example/mrn|a\|b\,c\\d").expect("valid token");
        assert_eq!(id.system, "http://h.example/mrn");
        assert_eq!(id.value, r"a|b,c\d");
    }

    #[test]
    fn token_refusals_are_bad_parameter_and_do_not_echo_value() {
        for bad in [
            "",
            "12345",
            "|12345",
            "urn:oid:1.2.3|",
            "urn:oid:1.2.3|12345,urn:oid:1.2.3|999",
            "urn:oid:1.2.3|123\n45",
            "urn:oid:1.2.3|12345\\",
        ] {
            let err = PatientId::parse_token(bad).expect_err(bad);
            assert!(matches!(err, FhirError::BadParameter(_)), "{bad:?}: {err:?}");
            assert_eq!(err.status(), 400);
            assert_eq!(err.issue_code(), "invalid");
            let text = err.to_string();
            assert!(text.starts_with("patient: "), "{text}");
            assert!(!text.contains("12345"), "{text}");
        }
    }

    #[test]
    fn patient_id_serde_round_trip() {
        let id = PatientId { system: "urn:oid:1.2".into(), value: "7".into() };
        let json = serde_json::to_value(&id).expect("serialise");
        assert_eq!(json, serde_json::json!({"system": "urn:oid:1.2", "value": "7"}));
        let back: PatientId = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, id);
    }
}
