//! Document submissions from the HIS: an ITI-65 Provide Document Bundle ([`bundle`]), or a
//! single DocumentReference with the document inline, validated into a [`Submission`].
//!
//! Boundary: request body bytes in, validated submissions out. Checks FHIR R4 structure for the
//! elements medgate uses, and the IHE MHD profiles' required elements per option ([`mhd`]; not a
//! full profile validator). Body size is limited by the caller. Every refusal names the element
//! path; none repeats a patient identifier or document bytes.

use serde_json::Value;
use sha1::Digest;

mod bundle;
mod mhd;

pub use bundle::parse_transaction;

use super::json::{
    as_object, child, item, opt_array, opt_obj, opt_str, opt_unsigned_int, parse_strict, req_array,
    req_obj, req_str, shown_name, Object,
};
use super::primitives::{
    check_identifier_parts, decode_base64, is_instant, is_mime_type, parse_identifier_token,
    percent_decode,
};
use super::{Coding, DocumentSubmission, FhirError, PatientId, Relation, RELATION_CODES};

/// DocumentReference.status value set (http://hl7.org/fhir/ValueSet/document-reference-status).
const STATUS_CODES: [&str; 3] = ["current", "superseded", "entered-in-error"];

/// A Provide Document Bundle's Patient entry, which a `subject` may reference by its fullUrl.
#[derive(Debug)]
struct PatientEntry {
    full_url: String,
    /// The Patient's identifier, when it has one medgate can pseudonymise.
    patient: Option<PatientId>,
}

/// What to send instead of an unusable `subject`.
const SUBJECT_HINT: &str =
    "send subject.identifier {system, value} or subject.reference \"Patient?identifier=system|value\"";

/// Parses `POST /DocumentReference` with inline `content[0].attachment.data`.
pub fn parse_document_reference(body: &[u8]) -> Result<DocumentSubmission, FhirError> {
    let resource = into_object(parse_strict(body)?)?;
    expect_resource_type(
        &resource,
        "DocumentReference",
        "resourceType",
        "post a DocumentReference here, or a transaction Bundle to the base URL",
    )?;
    let at = "DocumentReference";
    let draft = read_document_reference(&resource, at, None)?;
    let attachment_at = format!("{at}.content[0].attachment");
    let data = match draft.source {
        Source::Inline(data) => decode_document(data, &child(&attachment_at, "data"))?,
        Source::Url(_) => {
            return Err(FhirError::invalid(
                child(&attachment_at, "url"),
                "is not accepted on POST /DocumentReference; send the document in attachment.data, or post a transaction Bundle with a Binary",
            ))
        }
    };
    check_declared_size(draft.declared_size, data.len(), &attachment_at)?;
    check_declared_hash(draft.declared_hash, &data, &attachment_at)?;
    let mut submission = draft.into_submission(data);
    attach_resource(&mut submission, Value::Object(resource));
    Ok(submission)
}

fn entry_resource<'a>(entry: &'a Value, at: &str) -> Result<&'a Object, FhirError> {
    match entry.get("resource") {
        Some(resource) => as_object(resource, at),
        None => Err(FhirError::required(at)),
    }
}

fn into_object(v: Value) -> Result<Object, FhirError> {
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(FhirError::MalformedJson(
            "the body must be a JSON object holding a FHIR resource".to_owned(),
        )),
    }
}

fn expect_resource_type(obj: &Object, expected: &str, path: &str, hint: &str) -> Result<(), FhirError> {
    let found = match obj.get("resourceType") {
        None => return Err(FhirError::required(path)),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(FhirError::invalid(path, "must be a string naming the resource type")),
    };
    if found == expected {
        return Ok(());
    }
    Err(FhirError::UnsupportedType {
        path: path.to_owned(),
        reason: format!("expected '{expected}', found {}; {hint}", shown_name(found)),
    })
}

/// Where a DocumentReference's bytes are.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// Base64 in `attachment.data`.
    Inline(&'a str),
    /// `attachment.url`: the fullUrl of a Binary entry.
    Url(&'a str),
}

/// A validated DocumentReference, before its bytes are attached.
#[derive(Debug)]
struct Draft<'a> {
    patient: PatientId,
    master_identifier: Option<(String, String)>,
    doc_type: Option<Coding>,
    status: &'a str,
    description: Option<&'a str>,
    date: Option<&'a str>,
    content_type: &'a str,
    title: Option<&'a str>,
    declared_size: Option<u64>,
    /// `attachment.hash`: base64 SHA-1 of the document.
    declared_hash: Option<&'a str>,
    source: Source<'a>,
    relates_to: Vec<Relation>,
}

impl Draft<'_> {
    /// The submission with its bytes; `document_reference` stays `Null` until
    /// [`attach_resource`] moves the resource in once every entry has passed its checks.
    fn into_submission(self, data: Vec<u8>) -> DocumentSubmission {
        DocumentSubmission {
            patient: self.patient,
            master_identifier: self.master_identifier,
            doc_type: self.doc_type,
            status: self.status.to_owned(),
            description: self.description.map(str::to_owned),
            date: self.date.map(str::to_owned),
            content_type: self.content_type.to_owned(),
            title: self.title.map(str::to_owned),
            data,
            document_reference: Value::Null,
            relates_to: self.relates_to,
        }
    }
}

/// Stores the submitted DocumentReference in `submission`, without `attachment.data` (the
/// bytes are in `submission.data`) and without `attachment.url` (medgate assigns its own).
fn attach_resource(submission: &mut DocumentSubmission, mut resource: Value) {
    if let Some(attachment) = resource
        .get_mut("content")
        .and_then(|c| c.get_mut(0))
        .and_then(|c| c.get_mut("attachment"))
        .and_then(Value::as_object_mut)
    {
        attachment.remove("data");
        attachment.remove("url");
    }
    submission.document_reference = resource;
}

/// Validates the DocumentReference elements medgate uses; `at` is the resource's path.
fn read_document_reference<'a>(res: &'a Object, at: &str, ctx: Option<&PatientEntry>) -> Result<Draft<'a>, FhirError> {
    let status = req_str(res, "status", at)?;
    if !STATUS_CODES.contains(&status) {
        return Err(FhirError::invalid(
            child(at, "status"),
            "must be one of current, superseded, entered-in-error",
        ));
    }
    if status != "current" {
        return Err(FhirError::invalid(
            child(at, "status"),
            "a document submitted is 'current'; an earlier one becomes superseded when a new one replaces it (relatesTo 'replaces'), or entered-in-error by PATCH",
        ));
    }

    let master_identifier = match opt_obj(res, "masterIdentifier", at)? {
        None => None,
        Some(ident) => {
            let ident_at = child(at, "masterIdentifier");
            let system = req_str(ident, "system", &ident_at)?;
            let value = req_str(ident, "value", &ident_at)?;
            check_identifier_parts(system, value)
                .map_err(|(part, reason)| FhirError::invalid(child(&ident_at, part), reason))?;
            Some((system.to_owned(), value.to_owned()))
        }
    };

    let doc_type = match opt_obj(res, "type", at)? {
        None => None,
        Some(concept) => read_codeable_concept(concept, &child(at, "type"))?,
    };

    let description = opt_str(res, "description", at)?;
    let date = opt_str(res, "date", at)?;
    if date.is_some_and(|d| !is_instant(d)) {
        return Err(FhirError::invalid(
            child(at, "date"),
            "must be a FHIR instant YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm), with seconds and time zone",
        ));
    }

    let subject = req_obj(res, "subject", at)?;
    let patient = read_subject(subject, &child(at, "subject"), ctx)?;

    let Attachment { content_type, title, declared_size, declared_hash, source } = read_attachment(res, at)?;
    let relates_to = read_relations(res, at)?;

    Ok(Draft {
        patient,
        master_identifier,
        doc_type,
        status,
        description,
        date,
        content_type,
        title,
        declared_size,
        declared_hash,
        source,
        relates_to,
    })
}

/// `relatesTo`: each relation's code (R4 document-relationship-type) and the id of the
/// DocumentReference it targets, which must already be stored (not in this Bundle).
fn read_relations(res: &Object, at: &str) -> Result<Vec<Relation>, FhirError> {
    let Some(relations) = opt_array(res, "relatesTo", at)? else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(relations.len());
    for (i, r) in relations.iter().enumerate() {
        let r_at = item(&child(at, "relatesTo"), i);
        let r = as_object(r, &r_at)?;
        let code = req_str(r, "code", &r_at)?;
        if !RELATION_CODES.contains(&code) {
            return Err(FhirError::invalid(child(&r_at, "code"), "must be one of replaces, transforms, signs, appends"));
        }
        let target_at = child(&r_at, "target");
        let reference = req_str(req_obj(r, "target", &r_at)?, "reference", &target_at)?;
        let Some(target) = bundle::document_reference_id(reference) else {
            return Err(FhirError::invalid(
                child(&target_at, "reference"),
                "must name a stored DocumentReference as DocumentReference/<id> (a document of the same Bundle cannot be a relation's target)",
            ));
        };
        if out.iter().any(|o: &Relation| o.target == target) {
            return Err(FhirError::invalid(target_at, "names a document an earlier relation of this DocumentReference names"));
        }
        out.push(Relation { code: code.to_owned(), target: target.to_owned() });
    }
    Ok(out)
}

/// What `content[0].attachment` of a DocumentReference says.
struct Attachment<'a> {
    content_type: &'a str,
    title: Option<&'a str>,
    declared_size: Option<u64>,
    declared_hash: Option<&'a str>,
    source: Source<'a>,
}

/// Validates the one `content` item and its attachment; `at` is the resource's path.
fn read_attachment<'a>(res: &'a Object, at: &str) -> Result<Attachment<'a>, FhirError> {
    let content_at = child(at, "content");
    let content = req_array(res, "content", at)?;
    if content.len() != 1 {
        return Err(FhirError::invalid(
            content_at,
            "must hold exactly one item (IHE MHD: one document per DocumentReference); send each document as its own DocumentReference",
        ));
    }
    let content0_at = item(&content_at, 0);
    let content0 = as_object(&content[0], &content0_at)?;
    let attachment_at = child(&content0_at, "attachment");
    let attachment = req_obj(content0, "attachment", &content0_at)?;

    let content_type = req_str(attachment, "contentType", &attachment_at)?;
    if !is_mime_type(content_type) {
        return Err(FhirError::invalid(
            child(&attachment_at, "contentType"),
            "must be a MIME type of the form type/subtype, e.g. application/pdf",
        ));
    }
    let title = opt_str(attachment, "title", &attachment_at)?;
    let declared_size = opt_unsigned_int(attachment, "size", &attachment_at)?;
    let declared_hash = opt_str(attachment, "hash", &attachment_at)?;
    if let Some(hash) = declared_hash {
        let sha1_len = decode_base64(hash).map(|h| h.len()).unwrap_or(0);
        if sha1_len != 20 {
            return Err(FhirError::invalid(
                child(&attachment_at, "hash"),
                "must be the base64 of a 20-byte SHA-1 digest",
            ));
        }
    }
    let source = match (
        opt_str(attachment, "data", &attachment_at)?,
        opt_str(attachment, "url", &attachment_at)?,
    ) {
        (Some(data), None) => Source::Inline(data),
        (None, Some(url)) => Source::Url(url),
        (Some(_), Some(_)) => {
            return Err(FhirError::invalid(
                attachment_at,
                "has both data and url; send the document once, in data or in a Binary referenced by url",
            ))
        }
        (None, None) => {
            return Err(FhirError::invalid(
                attachment_at,
                "has neither data nor url; send the document base64 in data, or reference a Binary entry by url",
            ))
        }
    };

    Ok(Attachment { content_type, title, declared_size, declared_hash, source })
}

/// Checks a CodeableConcept's structure and returns its first coding.
fn read_codeable_concept(concept: &Object, at: &str) -> Result<Option<Coding>, FhirError> {
    opt_str(concept, "text", at)?;
    let Some(codings) = opt_array(concept, "coding", at)? else {
        return Ok(None);
    };
    let mut first = None;
    for (k, coding) in codings.iter().enumerate() {
        let coding_at = item(&child(at, "coding"), k);
        let coding = as_object(coding, &coding_at)?;
        let parsed = Coding {
            system: opt_str(coding, "system", &coding_at)?.map(str::to_owned),
            code: opt_str(coding, "code", &coding_at)?.map(str::to_owned),
            display: opt_str(coding, "display", &coding_at)?.map(str::to_owned),
        };
        if first.is_none() {
            first = Some(parsed);
        }
    }
    Ok(first)
}

/// The patient named by `DocumentReference.subject`.
fn read_subject(subject: &Object, at: &str, ctx: Option<&PatientEntry>) -> Result<PatientId, FhirError> {
    if let Some(ty) = opt_str(subject, "type", at)? {
        if ty != "Patient" {
            return Err(FhirError::invalid(child(at, "type"), "must be 'Patient'"));
        }
    }
    let from_identifier = match opt_obj(subject, "identifier", at)? {
        None => None,
        Some(ident) => {
            let ident_at = child(at, "identifier");
            let system = req_str(ident, "system", &ident_at)?;
            let value = req_str(ident, "value", &ident_at)?;
            check_identifier_parts(system, value)
                .map_err(|(part, reason)| FhirError::invalid(child(&ident_at, part), reason))?;
            Some(PatientId { system: system.to_owned(), value: value.to_owned() })
        }
    };
    let from_reference = match opt_str(subject, "reference", at)? {
        None => None,
        Some(reference) => match ctx.filter(|p| p.full_url == reference) {
            Some(PatientEntry { patient: Some(p), .. }) => Some(p.clone()),
            Some(PatientEntry { patient: None, .. }) => {
                return Err(FhirError::invalid(
                    child(at, "reference"),
                    format!("points at the Bundle's Patient, which carries no identifier {{system, value}}; medgate needs the patient's identifier: give the Patient one, or {SUBJECT_HINT}"),
                ))
            }
            // A literal reference medgate cannot resolve (`Patient/123`, an absolute URL on the
            // HIS's server) is kept as sent when the identifier says who the patient is.
            None if from_identifier.is_some() && !reference.starts_with("Patient?") && !reference.starts_with("urn:") => None,
            None => Some(conditional_patient_reference(reference, &child(at, "reference"))?),
        },
    };
    match (from_identifier, from_reference) {
        (Some(a), Some(b)) if a != b => Err(FhirError::invalid(
            at,
            "identifier and reference name different patients; send one of them",
        )),
        (Some(patient), _) | (None, Some(patient)) => Ok(patient),
        (None, None) => Err(FhirError::invalid(
            at,
            format!("does not identify the patient; {SUBJECT_HINT}"),
        )),
    }
}

/// Parses `Patient?identifier=system|value` (percent-encoding allowed, as in a search URL).
fn conditional_patient_reference(reference: &str, at: &str) -> Result<PatientId, FhirError> {
    let Some(query) = reference.strip_prefix("Patient?") else {
        let what = if reference.starts_with("Patient/") {
            "is a local Patient id, which medgate cannot resolve across hospitals"
        } else if reference.starts_with("urn:") {
            "points at a Bundle entry; medgate needs the patient's identifier"
        } else {
            "is not a conditional Patient reference"
        };
        return Err(FhirError::invalid(at, format!("{what}; {SUBJECT_HINT}")));
    };
    let Some(token) = query.strip_prefix("identifier=").filter(|t| !t.contains('&')) else {
        return Err(FhirError::invalid(
            at,
            format!("must hold exactly one search parameter, identifier; {SUBJECT_HINT}"),
        ));
    };
    let token = percent_decode(token)
        .map_err(|reason| FhirError::invalid(at, format!("identifier: {reason}; {SUBJECT_HINT}")))?;
    parse_identifier_token(&token)
        .map_err(|reason| FhirError::invalid(at, format!("identifier: {reason}; {SUBJECT_HINT}")))
}

/// The Binary elements medgate needs.
#[derive(Debug)]
struct BinaryParts<'a> {
    content_type: &'a str,
    data: &'a str,
}

fn read_binary<'a>(res: &'a Object, at: &str) -> Result<BinaryParts<'a>, FhirError> {
    let content_type = req_str(res, "contentType", at)?;
    if !is_mime_type(content_type) {
        return Err(FhirError::invalid(
            child(at, "contentType"),
            "must be a MIME type of the form type/subtype, e.g. application/pdf",
        ));
    }
    let data = req_str(res, "data", at)?;
    Ok(BinaryParts { content_type, data })
}

/// Decodes the document's base64 and refuses an empty document.
fn decode_document(data: &str, at: &str) -> Result<Vec<u8>, FhirError> {
    let bytes = decode_base64(data).map_err(|reason| FhirError::invalid(at, reason))?;
    if bytes.is_empty() {
        return Err(FhirError::invalid(at, "the document is empty (0 bytes)"));
    }
    Ok(bytes)
}

/// `attachment.hash`, when given, must be the base64 SHA-1 of the document (ITI-65: the hash
/// and size of a Binary shall be accurate).
fn check_declared_hash(declared: Option<&str>, data: &[u8], attachment_at: &str) -> Result<(), FhirError> {
    let Some(declared) = declared else { return Ok(()) };
    let digest = sha1::Sha1::digest(data);
    if decode_base64(declared).ok().as_deref() == Some(digest.as_slice()) {
        Ok(())
    } else {
        Err(FhirError::invalid(child(attachment_at, "hash"), "is not the SHA-1 of the document (base64 of the 20-byte digest of the bytes)"))
    }
}

fn check_declared_size(declared: Option<u64>, actual: usize, attachment_at: &str) -> Result<(), FhirError> {
    match declared {
        Some(size) if u64::try_from(actual) != Ok(size) => Err(FhirError::invalid(
            child(attachment_at, "size"),
            format!("declares {size} bytes but the document has {actual}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample_transaction;
    use serde_json::json;

    /// A distinctive identifier value: no refusal may ever contain it.
    pub(super) const MRN: &str = "MRN-7734-SECRET";
    pub(super) const SYSTEM: &str = "urn:oid:1.2.250.1.213.1.4.8";

    pub(super) fn patient() -> PatientId {
        PatientId { system: SYSTEM.into(), value: MRN.into() }
    }

    /// The attachment hash check agrees with another SHA-1 implementation (ring's) at every
    /// length around the 64-byte block and its 55/56-byte padding boundary, and at 4 KiB and
    /// 1 MiB; a document one bit off is refused.
    #[test]
    fn the_declared_hash_check_agrees_with_an_independent_sha1() {
        let mut x: u32 = 0x2545_f491;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect()
        };
        for n in (1..=200).chain([4096, 1 << 20]) {
            let mut data = bytes(n);
            let declared = b64(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &data).as_ref());
            assert!(check_declared_hash(Some(&declared), &data, "a").is_ok(), "{n} bytes");
            data[n / 2] ^= 1;
            assert!(check_declared_hash(Some(&declared), &data, "a").is_err(), "{n} bytes, one bit off");
        }
        assert!(check_declared_hash(None, b"anything", "a").is_ok(), "no hash declared: nothing to check");
    }

    pub(super) fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A full ITI-65 Minimal Provide Document Bundle: SubmissionSet List, Patient,
    /// DocumentReference, Binary.
    pub(super) fn full_bundle() -> Value {
        json!({
            "resourceType": "Bundle",
            "meta": {"profile": ["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.ProvideBundle"]},
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:0c287d32-01e3-4d87-9953-9fcc9404eb21",
                    "resource": {
                        "resourceType": "List",
                        "extension": [{"url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId", "valueIdentifier": {"value": "urn:oid:1.3.6.1.4.1.21367.13.80.110"}}],
                        "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.5.7"}],
                        "status": "current",
                        "mode": "working",
                        "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes", "code": "submissionset"}]},
                        "subject": {"reference": "urn:uuid:5c4c8b6a-8f2b-4a3e-9d2e-1c0a5e0e9f11"},
                        "date": "2024-05-01T10:16:00+02:00",
                        "entry": [{"item": {"reference": "urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e1d"}}]
                    },
                    "request": {"method": "POST", "url": "List"}
                },
                {
                    "fullUrl": "urn:uuid:5c4c8b6a-8f2b-4a3e-9d2e-1c0a5e0e9f11",
                    "resource": {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": MRN}]},
                    "request": {"method": "POST", "url": "Patient"}
                },
                {
                    "fullUrl": "urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e1d",
                    "resource": {
                        "resourceType": "DocumentReference",
                        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.5.6"},
                        "status": "current",
                        "type": {"coding": [
                            {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"},
                            {"system": "http://example.org/local", "code": "PN"}
                        ]},
                        "subject": {"identifier": {"system": SYSTEM, "value": MRN}},
                        "date": "2024-05-01T10:15:00+02:00",
                        "description": "Discharge letter",
                        "content": [{"attachment": {
                            "contentType": "application/pdf",
                            "url": "urn:uuid:a6f1c36e-5a0b-4d1c-9a5f-2b0e7c0d8e55",
                            "title": "letter.pdf",
                            "size": 9
                        }}]
                    },
                    "request": {"method": "POST", "url": "DocumentReference"}
                },
                {
                    "fullUrl": "urn:uuid:a6f1c36e-5a0b-4d1c-9a5f-2b0e7c0d8e55",
                    "resource": {"resourceType": "Binary", "contentType": "application/pdf", "data": b64(b"%PDF-1.7\n")},
                    "request": {"method": "POST", "url": "Binary"}
                }
            ]
        })
    }

    fn inline_doc() -> Value {
        json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": {"reference": format!("Patient?identifier={SYSTEM}|{MRN}")},
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": b64(b"hello")}}]
        })
    }

    pub(super) fn remove(v: &mut Value, key: &str) {
        if let Some(o) = v.as_object_mut() {
            o.remove(key);
        }
    }

    pub(super) fn remove_item(v: &mut Value, index: usize) {
        if let Some(a) = v.as_array_mut() {
            a.remove(index);
        }
    }

    pub(super) fn push(v: &mut Value, item: Value) {
        if let Some(a) = v.as_array_mut() {
            a.push(item);
        }
    }

    pub(super) fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).expect("serialise")
    }

    #[test]
    fn full_bundle_parses_with_all_fields() {
        let sub = parse_transaction(&bytes(&full_bundle())).expect("valid bundle");
        assert_eq!(sub.option, Some(crate::MhdOption::Minimal));
        assert_eq!(
            sub.entries,
            [crate::SubmissionEntry::SubmissionSet, crate::SubmissionEntry::Patient, crate::SubmissionEntry::Document(0), crate::SubmissionEntry::Binary(0)]
        );
        let ss = sub.submission_set.as_ref().expect("submission set");
        assert_eq!((&ss.patient, ss.items.as_slice()), (&patient(), &[0][..]));
        assert_eq!(ss.list["subject"]["identifier"]["value"], MRN, "the in-bundle Patient reference becomes the identifier");
        assert_eq!(sub.patient_resource.as_ref().map(|p| &p["resourceType"]), Some(&json!("Patient")));
        let docs = sub.documents;
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d.patient, patient());
        assert_eq!(d.master_identifier, Some(("urn:ietf:rfc:3986".into(), "urn:oid:1.2.3.4.5.6".into())));
        assert_eq!(
            d.doc_type,
            Some(Coding {
                system: Some("http://loinc.org".into()),
                code: Some("11506-3".into()),
                display: Some("Progress note".into()),
            })
        );
        assert_eq!(d.status, "current");
        assert_eq!(d.description.as_deref(), Some("Discharge letter"));
        assert_eq!(d.date.as_deref(), Some("2024-05-01T10:15:00+02:00"));
        assert_eq!(d.content_type, "application/pdf");
        assert_eq!(d.title.as_deref(), Some("letter.pdf"));
        assert_eq!(d.data, b"%PDF-1.7\n");
        let attachment = &d.document_reference["content"][0]["attachment"];
        assert!(attachment.get("url").is_none());
        assert!(attachment.get("data").is_none());
        assert_eq!(attachment["title"], "letter.pdf");
        assert_eq!(d.document_reference["resourceType"], "DocumentReference");
        assert_eq!(d.document_reference["masterIdentifier"]["value"], "urn:oid:1.2.3.4.5.6");
    }

    #[test]
    fn bundle_with_several_documents_and_subject_forms() {
        let mut b = full_bundle();
        let mut second = b["entry"][2].clone();
        second["fullUrl"] = json!("urn:uuid:00000000-0000-4000-8000-000000000002");
        second["resource"]["masterIdentifier"]["value"] = json!("urn:oid:1.2.3.4.5.8");
        second["resource"]["content"][0]["attachment"] = json!({"contentType": "text/plain", "url": "urn:uuid:00000000-0000-4000-8000-000000000003"});
        second["resource"]["subject"] = json!({"reference": format!("Patient?identifier={}%7C{MRN}", SYSTEM.replace(':', "%3A"))});
        push(&mut b["entry"], second);
        push(&mut b["entry"], json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000003",
            "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": b64(b"second")}, "request": {"method": "POST", "url": "Binary"}}));
        push(&mut b["entry"][0]["resource"]["entry"], json!({"item": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"}}));
        b["entry"][2]["resource"]["subject"] = json!({"reference": "urn:uuid:5c4c8b6a-8f2b-4a3e-9d2e-1c0a5e0e9f11"});
        let sub = parse_transaction(&bytes(&b)).expect("valid bundle");
        let docs = &sub.documents;
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].data, b"second");
        assert_eq!((&docs[0].patient, &docs[1].patient), (&patient(), &patient()));
        assert_eq!(docs[0].document_reference["subject"]["identifier"]["system"], SYSTEM, "the in-bundle reference is made logical");
        assert!(docs[1].document_reference["content"][0]["attachment"].get("url").is_none());
        assert_eq!(sub.submission_set.as_ref().map(|s| s.items.clone()), Some(vec![0, 1]));
        assert_eq!(&sub.entries[4..], [crate::SubmissionEntry::Document(1), crate::SubmissionEntry::Binary(1)]);
    }

    #[test]
    fn inline_document_reference_parses() {
        let d = parse_document_reference(&bytes(&inline_doc())).expect("valid");
        assert_eq!(d.patient, patient());
        assert_eq!(d.data, b"hello");
        assert_eq!(d.content_type, "text/plain; charset=utf-8");
        assert_eq!(d.master_identifier, None);
        assert_eq!(d.doc_type, None);
        assert_eq!(d.date, None);
        assert!(d.document_reference["content"][0]["attachment"].get("data").is_none());
        assert_eq!(d.document_reference["content"][0]["attachment"]["contentType"], "text/plain; charset=utf-8");
    }

    #[test]
    fn sample_round_trip_keeps_the_bytes() {
        let data: Vec<u8> = (0..=255u8).cycle().take(4099).collect();
        let sample = sample_transaction(&patient(), "application/octet-stream", &data, Some(("urn:ietf:rfc:3986", "urn:oid:9.9")));
        let docs = parse_transaction(&bytes(&sample)).expect("sample is valid").documents;
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].data, data);
        assert_eq!(docs[0].patient, patient());
        assert_eq!(docs[0].content_type, "application/octet-stream");
        assert_eq!(docs[0].master_identifier, Some(("urn:ietf:rfc:3986".into(), "urn:oid:9.9".into())));
    }

    /// Applies `edit` to a copy of `base`, parses it with `parse`, and checks the refusal.
    pub(super) fn refused(
        base: &Value,
        edit: impl FnOnce(&mut Value),
        parse: fn(&[u8]) -> Result<(), FhirError>,
        status: u16,
        code: &str,
        path: &str,
    ) -> FhirError {
        let mut v = base.clone();
        edit(&mut v);
        let err = parse(&bytes(&v)).expect_err("must be refused");
        assert_eq!(err.status(), status, "{err}");
        assert_eq!(err.issue_code(), code, "{err}");
        let text = err.to_string();
        assert!(text.contains(path), "expected path {path} in: {text}");
        let outcome = err.to_outcome().to_string();
        assert!(!text.contains(MRN) && !outcome.contains(MRN), "identifier echoed: {text}");
        assert!(!text.contains("JVBERi") && !outcome.contains("JVBERi"), "content echoed: {text}");
        err
    }

    pub(super) fn bundle(b: &[u8]) -> Result<(), FhirError> {
        parse_transaction(b).map(|_| ())
    }

    fn single(b: &[u8]) -> Result<(), FhirError> {
        parse_document_reference(b).map(|_| ())
    }

    const DOC: &str = "Bundle.entry[2].resource";
    const ATT: &str = "Bundle.entry[2].resource.content[0].attachment";

    #[test]
    fn bundle_envelope_refusals() {
        let b = full_bundle();
        let e = refused(&b, |v| v["resourceType"] = json!("Observation"), bundle, 422, "not-supported", "resourceType");
        assert!(matches!(e, FhirError::UnsupportedType { .. }));
        let e = refused(&b, |v| v["type"] = json!("batch"), bundle, 422, "invalid", "Bundle.type");
        assert!(matches!(e, FhirError::Invalid { .. }));
        let e = refused(&b, |v| remove(v, "type"), bundle, 422, "required", "Bundle.type");
        assert!(matches!(e, FhirError::Required { .. }));
        refused(&b, |v| v["entry"] = json!({}), bundle, 422, "invalid", "Bundle.entry");
        refused(&b, |v| v["entry"] = json!([]), bundle, 422, "invalid", "Bundle.entry");
        refused(&b, |v| v["entry"][3]["request"]["method"] = json!("PUT"), bundle, 422, "invalid", "Bundle.entry[3].request.method");
        refused(&b, |v| v["entry"][3]["request"]["url"] = json!("Patient"), bundle, 422, "invalid", "Bundle.entry[3].request.url");
        refused(&b, |v| remove(&mut v["entry"][1], "fullUrl"), bundle, 422, "required", "Bundle.entry[1].fullUrl");
        refused(&b, |v| remove(&mut v["entry"][1], "request"), bundle, 422, "required", "Bundle.entry[1].request");
        refused(&b, |v| v["entry"][1]["fullUrl"] = v["entry"][0]["fullUrl"].clone(), bundle, 422, "invalid", "Bundle.entry[1].fullUrl");
        let e = refused(
            &b,
            |v| v["entry"][1]["resource"] = json!({"resourceType": "Observation", "status": "final"}),
            bundle,
            422,
            "not-supported",
            "Bundle.entry[1].resource.resourceType",
        );
        assert!(matches!(e, FhirError::UnsupportedType { .. }));
    }

    #[test]
    fn bundle_binary_refusals() {
        let b = full_bundle();
        // Binary missing: the reference dangles.
        refused(&b, |v| remove_item(&mut v["entry"], 3), bundle, 422, "invalid", &format!("{ATT}.url"));
        // Reference to a non-Binary entry.
        refused(&b, |v| v["entry"][2]["resource"]["content"][0]["attachment"]["url"] = v["entry"][0]["fullUrl"].clone(), bundle, 422, "invalid", &format!("{ATT}.url"));
        // Unreferenced Binary.
        refused(
            &b,
            |v| {
                let mut extra = v["entry"][3].clone();
                extra["fullUrl"] = json!("urn:uuid:ffffffff-0000-4000-8000-000000000000");
                push(&mut v["entry"], extra);
            },
            bundle,
            422,
            "invalid",
            "Bundle.entry[4].resource",
        );
        // One Binary shared by two DocumentReferences.
        refused(
            &b,
            |v| {
                let mut twin = v["entry"][2].clone();
                twin["fullUrl"] = json!("urn:uuid:eeeeeeee-0000-4000-8000-000000000000");
                push(&mut v["entry"], twin);
            },
            bundle,
            422,
            "invalid",
            "Bundle.entry[4].resource.content[0].attachment.url",
        );
        refused(&b, |v| remove(&mut v["entry"][3]["resource"], "contentType"), bundle, 422, "required", "Bundle.entry[3].resource.contentType");
        refused(&b, |v| v["entry"][3]["resource"]["contentType"] = json!("text/plain"), bundle, 422, "invalid", &format!("{ATT}.contentType"));
        refused(&b, |v| v["entry"][3]["resource"]["data"] = json!("JVBERi0x*"), bundle, 422, "invalid", "Bundle.entry[3].resource.data");
        refused(&b, |v| remove(&mut v["entry"][3]["resource"], "data"), bundle, 422, "required", "Bundle.entry[3].resource.data");
        // A bundle without any DocumentReference.
        refused(
            &b,
            |v| {
                remove_item(&mut v["entry"], 3);
                remove_item(&mut v["entry"], 2);
            },
            bundle,
            422,
            "invalid",
            "Bundle.entry",
        );
    }

    #[test]
    fn document_reference_refusals_in_a_bundle() {
        let b = full_bundle();
        refused(&b, |v| remove(&mut v["entry"][2]["resource"], "status"), bundle, 422, "required", &format!("{DOC}.status"));
        refused(&b, |v| v["entry"][2]["resource"]["status"] = json!("final"), bundle, 422, "invalid", &format!("{DOC}.status"));
        refused(&b, |v| v["entry"][2]["resource"]["status"] = json!(["current"]), bundle, 422, "invalid", &format!("{DOC}.status"));
        refused(&b, |v| remove(&mut v["entry"][2]["resource"], "content"), bundle, 422, "required", &format!("{DOC}.content"));
        refused(&b, |v| v["entry"][2]["resource"]["content"] = json!({"attachment": {}}), bundle, 422, "required", &format!("{DOC}.content[0].attachment"));
        refused(&b, |v| remove(&mut v["entry"][2]["resource"]["content"][0], "attachment"), bundle, 422, "required", &format!("{DOC}.content[0].attachment"));
        refused(&b, |v| v["entry"][2]["resource"]["content"][0] = json!({"format": {"code": "urn:x"}}), bundle, 422, "required", &format!("{DOC}.content[0].attachment"));
        refused(&b, |v| remove(&mut v["entry"][2]["resource"]["content"][0]["attachment"], "contentType"), bundle, 422, "required", &format!("{ATT}.contentType"));
        refused(&b, |v| v["entry"][2]["resource"]["content"][0]["attachment"]["contentType"] = json!("pdf"), bundle, 422, "invalid", &format!("{ATT}.contentType"));
        refused(&b, |v| v["entry"][2]["resource"]["content"][0]["attachment"]["size"] = json!(10), bundle, 422, "invalid", &format!("{ATT}.size"));
        refused(&b, |v| v["entry"][2]["resource"]["content"][0]["attachment"]["hash"] = json!("AAAA"), bundle, 422, "invalid", &format!("{ATT}.hash"));
        refused(&b, |v| v["entry"][2]["resource"]["date"] = json!("2024-05-01"), bundle, 422, "invalid", &format!("{DOC}.date"));
        refused(&b, |v| v["entry"][2]["resource"]["date"] = json!("2024-05-01T10:15:00"), bundle, 422, "invalid", &format!("{DOC}.date"));
        refused(&b, |v| v["entry"][2]["resource"]["type"] = json!([{"text": "x"}]), bundle, 422, "invalid", &format!("{DOC}.type"));
        refused(&b, |v| v["entry"][2]["resource"]["type"]["coding"][0]["code"] = json!(7), bundle, 422, "invalid", &format!("{DOC}.type.coding[0].code"));
        refused(&b, |v| v["entry"][2]["resource"]["masterIdentifier"] = json!({"system": "urn:ietf:rfc:3986"}), bundle, 422, "required", &format!("{DOC}.masterIdentifier.value"));
        refused(&b, |v| v["entry"][2]["resource"]["description"] = json!(null), bundle, 422, "invalid", &format!("{DOC}.description"));
    }

    #[test]
    fn subject_refusals_say_what_to_send_and_never_echo_the_identifier() {
        let b = full_bundle();
        let subject_at = format!("{DOC}.subject");
        refused(&b, |v| remove(&mut v["entry"][2]["resource"], "subject"), bundle, 422, "required", &subject_at);
        for (subject, path) in [
            (json!({"reference": format!("Patient/{MRN}")}), format!("{subject_at}.reference")),
            (json!({"reference": "urn:uuid:11111111-8f2b-4a3e-9d2e-1c0a5e0e9f11"}), format!("{subject_at}.reference")),
            (json!({"reference": format!("Patient?identifier={MRN}")}), format!("{subject_at}.reference")),
            (json!({"reference": format!("Patient?identifier={SYSTEM}|{MRN}&active=true")}), format!("{subject_at}.reference")),
            (json!({"reference": format!("Patient?identifier=%ZZ{MRN}")}), format!("{subject_at}.reference")),
            (json!({"identifier": {"value": MRN}}), format!("{subject_at}.identifier.system")),
            (json!({"identifier": {"system": SYSTEM, "value": format!(" {MRN}")}}), format!("{subject_at}.identifier.value")),
            (json!({"identifier": {"system": SYSTEM, "value": MRN}, "type": "Group"}), format!("{subject_at}.type")),
            (json!({"display": MRN}), subject_at.clone()),
            (
                json!({"identifier": {"system": SYSTEM, "value": MRN}, "reference": format!("Patient?identifier={SYSTEM}|other")}),
                subject_at.clone(),
            ),
            (json!(MRN), subject_at.clone()),
        ] {
            let code = if path.ends_with(".system") { "required" } else { "invalid" };
            let err = refused(&b, |v| v["entry"][2]["resource"]["subject"] = subject, bundle, 422, code, &path);
            if path.ends_with(".reference") {
                assert!(err.to_string().contains("Patient?identifier=system|value"), "{err}");
            }
        }
        // The Bundle's Patient, referenced, gives the identifier only when it carries one.
        let err = refused(
            &b,
            |v| {
                v["entry"][1]["resource"] = json!({"resourceType": "Patient", "name": [{"family": MRN}]});
                v["entry"][2]["resource"]["subject"] = json!({"reference": "urn:uuid:5c4c8b6a-8f2b-4a3e-9d2e-1c0a5e0e9f11"});
            },
            bundle,
            422,
            "invalid",
            &format!("{subject_at}.reference"),
        );
        assert!(err.to_string().contains("carries no identifier"), "{err}");
    }

    #[test]
    fn inline_refusals() {
        let d = inline_doc();
        const A: &str = "DocumentReference.content[0].attachment";
        let e = refused(&d, |v| v["resourceType"] = json!("Bundle"), single, 422, "not-supported", "resourceType");
        assert!(matches!(e, FhirError::UnsupportedType { .. }));
        refused(&d, |v| v["resourceType"] = json!("Foo Bar"), single, 422, "not-supported", "resourceType");
        refused(&d, |v| remove(v, "resourceType"), single, 422, "required", "resourceType");
        refused(&d, |v| v["content"][0]["attachment"]["data"] = json!("aGVsbG8*"), single, 422, "invalid", &format!("{A}.data"));
        refused(&d, |v| v["content"][0]["attachment"]["data"] = json!("aGVsbG8_"), single, 422, "invalid", &format!("{A}.data"));
        refused(&d, |v| v["content"][0]["attachment"]["data"] = json!("===="), single, 422, "invalid", &format!("{A}.data"));
        refused(&d, |v| remove(&mut v["content"][0]["attachment"], "data"), single, 422, "invalid", A);
        refused(&d, |v| v["content"][0]["attachment"]["url"] = json!("Binary/1"), single, 422, "invalid", A);
        refused(
            &d,
            |v| {
                remove(&mut v["content"][0]["attachment"], "data");
                v["content"][0]["attachment"]["url"] = json!("urn:uuid:1");
            },
            single,
            422,
            "invalid",
            &format!("{A}.url"),
        );
        refused(&d, |v| v["content"][0]["attachment"]["contentType"] = json!(12), single, 422, "invalid", &format!("{A}.contentType"));
        refused(&d, |v| v["content"] = json!([v["content"][0].clone(), v["content"][0].clone()]), single, 422, "invalid", "DocumentReference.content");
        refused(&d, |v| v["subject"] = json!({"reference": "Patient/123"}), single, 422, "invalid", "DocumentReference.subject.reference");
    }

    #[test]
    fn empty_document_is_refused() {
        let d = inline_doc();
        let e = refused(&d, |v| v["content"][0]["attachment"]["data"] = json!(""), single, 422, "invalid", "DocumentReference.content[0].attachment.data");
        assert!(matches!(e, FhirError::Invalid { .. }));
        // Whitespace-only base64 decodes to nothing as well.
        let mut b = full_bundle();
        b["entry"][3]["resource"]["data"] = json!("\n");
        assert!(parse_transaction(&bytes(&b)).is_err());
        b["entry"][3]["resource"]["data"] = json!("\n\n==");
        let err = parse_transaction(&bytes(&b)).expect_err("empty");
        assert!(err.to_string().contains("Bundle.entry[3].resource.data"), "{err}");
    }

    #[test]
    fn malformed_json_is_400_structure() {
        for body in [&b"{\"resourceType\": \"Bundle\""[..], b"[]", b"\"Bundle\"", b"{\"a\":1,\"a\":1}"] {
            let err = parse_transaction(body).expect_err("malformed");
            assert!(matches!(err, FhirError::MalformedJson(_)), "{err:?}");
            assert_eq!(err.status(), 400);
            assert_eq!(err.issue_code(), "structure");
            let err = parse_document_reference(body).expect_err("malformed");
            assert!(matches!(err, FhirError::MalformedJson(_)), "{err:?}");
        }
    }

    #[test]
    fn duplicate_subject_property_is_refused() {
        let body = format!(
            r#"{{"resourceType":"DocumentReference","status":"current",
               "subject":{{"identifier":{{"system":"{SYSTEM}","value":"{MRN}"}}}},
               "subject":{{"identifier":{{"system":"{SYSTEM}","value":"other"}}}},
               "content":[{{"attachment":{{"contentType":"text/plain","data":"aGk="}}}}]}}"#
        );
        let err = parse_document_reference(body.as_bytes()).expect_err("duplicate");
        assert!(matches!(err, FhirError::MalformedJson(_)), "{err:?}");
        assert!(!err.to_string().contains(MRN));
    }

    #[test]
    fn many_entries_parse_in_linear_time() {
        let (doc, bin) = (full_bundle()["entry"][2].clone(), full_bundle()["entry"][3].clone());
        let mut b = full_bundle();
        for k in 0..3_000 {
            let (mut d, mut e) = (doc.clone(), bin.clone());
            d["fullUrl"] = json!(format!("urn:uuid:doc-{k}"));
            d["resource"]["masterIdentifier"]["value"] = json!(format!("urn:oid:1.2.3.{k}"));
            d["resource"]["content"][0]["attachment"]["url"] = json!(format!("urn:uuid:bin-{k}"));
            e["fullUrl"] = json!(format!("urn:uuid:bin-{k}"));
            push(&mut b["entry"], d);
            push(&mut b["entry"], e);
            push(&mut b["entry"][0]["resource"]["entry"], json!({"item": {"reference": format!("urn:uuid:doc-{k}")}}));
        }
        let started = std::time::Instant::now();
        let docs = parse_transaction(&bytes(&b)).expect("valid").documents;
        assert_eq!(docs.len(), 3_001);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
