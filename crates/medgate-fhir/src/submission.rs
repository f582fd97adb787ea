//! What a document submission holds once read: an IHE MHD ITI-65 Provide Document Bundle (or a
//! single DocumentReference), entry by entry, in the order the HIS sent them, so the answer can
//! have one entry per request entry.
//!
//! Boundary: plain values produced by `ingest`, consumed by the gateway. No I/O.

use serde_json::{json, Value};

use super::{DocumentSubmission, PatientId};

/// The ITI-65 option a Provide Document Bundle declares in `Bundle.meta.profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MhdOption {
    /// `IHE.MHD.Minimal.ProvideBundle`.
    Minimal,
    /// `IHE.MHD.UnContained.Comprehensive.ProvideBundle`.
    UnContainedComprehensive,
    /// `IHE.MHD.Comprehensive.ProvideBundle`.
    Comprehensive,
}

impl MhdOption {
    /// The profile's canonical URL.
    pub fn profile(self) -> &'static str {
        match self {
            MhdOption::Minimal => "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.ProvideBundle",
            MhdOption::UnContainedComprehensive => "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.UnContained.Comprehensive.ProvideBundle",
            MhdOption::Comprehensive => "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Comprehensive.ProvideBundle",
        }
    }

    /// The option named by a profile URL (a `|version` suffix is allowed).
    pub fn from_profile(url: &str) -> Option<MhdOption> {
        let url = url.split('|').next().unwrap_or(url);
        [MhdOption::Comprehensive, MhdOption::UnContainedComprehensive, MhdOption::Minimal].into_iter().find(|o| o.profile() == url)
    }
}

/// What one request entry was, in the order received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmissionEntry {
    /// The SubmissionSet List.
    SubmissionSet,
    /// `documents[k]`'s DocumentReference.
    Document(usize),
    /// The Binary holding `documents[k]`'s bytes.
    Binary(usize),
    /// `patches[k]`: the UpdateDocumentRefs PATCH that sets an earlier DocumentReference superseded.
    Patch(usize),
    /// The Patient resource the bundle carried.
    Patient,
}

/// The SubmissionSet of a Provide Document Bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmissionSet {
    /// The patient (`List.subject`), the same as every document's.
    pub patient: PatientId,
    /// The List as the HIS sent it, except `subject` when it pointed at the bundle's Patient
    /// entry (then a logical reference by the patient's identifier).
    pub list: Value,
    /// For each `List.entry[i]`, the index of the document its `item` names.
    pub items: Vec<usize>,
}

impl SubmissionSet {
    /// The List to keep, once the documents have ids: each `entry.item` names
    /// `DocumentReference/<id>` (`record_ids[k]` is the id of document `k`).
    pub fn into_stored_list(self, record_ids: &[String]) -> Value {
        let mut list = self.list;
        if let Some(entries) = list.get_mut("entry").and_then(Value::as_array_mut) {
            for (entry, k) in entries.iter_mut().zip(&self.items) {
                if let (Some(obj), Some(id)) = (entry.as_object_mut(), record_ids.get(*k)) {
                    obj.insert("item".into(), json!({"reference": format!("DocumentReference/{id}")}));
                }
            }
        }
        list
    }
}

/// An UpdateDocumentRefs PATCH: the DocumentReference `target` (an id on this gateway) becomes
/// `status` (`superseded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPatch {
    pub target: String,
    pub status: String,
}

/// `DocumentReference.relatesTo`: this document `replaces`, `transforms`, `signs` or `appends`
/// the DocumentReference `target` (its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub code: String,
    pub target: String,
}

/// The relation codes of R4's `document-relationship-type` value set (required binding).
pub const RELATION_CODES: [&str; 4] = ["replaces", "transforms", "signs", "appends"];

/// A document submission, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The option a Provide Document Bundle declared; `None` for `POST /DocumentReference`.
    pub option: Option<MhdOption>,
    /// One per request entry, in order.
    pub entries: Vec<SubmissionEntry>,
    pub documents: Vec<DocumentSubmission>,
    pub submission_set: Option<SubmissionSet>,
    pub patches: Vec<StatusPatch>,
    /// The bundle's Patient entry, as sent.
    pub patient_resource: Option<Value>,
}

impl Submission {
    /// A single DocumentReference (`POST /DocumentReference`).
    pub fn single(doc: DocumentSubmission) -> Submission {
        Submission {
            option: None,
            entries: vec![SubmissionEntry::Document(0)],
            documents: vec![doc],
            submission_set: None,
            patches: Vec::new(),
            patient_resource: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_profiles() {
        for o in [MhdOption::Minimal, MhdOption::UnContainedComprehensive, MhdOption::Comprehensive] {
            assert_eq!(MhdOption::from_profile(o.profile()), Some(o));
            assert_eq!(MhdOption::from_profile(&format!("{}|4.2.3", o.profile())), Some(o));
        }
        assert_eq!(MhdOption::from_profile("https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.DocumentReference"), None);
    }

    #[test]
    fn the_stored_list_names_the_stored_documents() {
        let ss = SubmissionSet {
            patient: PatientId { system: "urn:oid:1".into(), value: "2".into() },
            list: json!({"resourceType": "List", "entry": [{"item": {"reference": "urn:uuid:b"}}, {"item": {"reference": "urn:uuid:a"}}]}),
            items: vec![1, 0],
        };
        let list = ss.into_stored_list(&["r0".into(), "r1".into()]);
        assert_eq!(list["entry"][0]["item"]["reference"], "DocumentReference/r1");
        assert_eq!(list["entry"][1]["item"]["reference"], "DocumentReference/r0");
    }
}
