//! ITI-65 Provide Document Bundle: a FHIR transaction Bundle as IHE MHD Document Sources send
//! it (Minimal, UnContained Comprehensive or Comprehensive metadata), read into a
//! [`Submission`] that keeps the entries' order.
//!
//! Accepted entries (the closed slicing of `IHE.MHD.*.ProvideBundle`): one SubmissionSet List,
//! DocumentReferences each with its Binary, UpdateDocumentRefs PATCHes, at most one Patient.
//! Folders and FHIR Document Bundles (MHD options this gateway does not implement) and any other
//! resource type refuse the whole bundle. The profile's required elements are checked per option
//! and every missing one is named; the bundle is refused as a whole on any problem.

use std::collections::HashMap;

use serde_json::Value;

use super::super::json::{as_object, child, item, parse_strict, req_array, req_obj, req_str, shown_name, Object};
use super::super::primitives::mime_essence;
use super::super::{
    FhirError, Issue, MhdOption, PatientId, StatusPatch, Submission, SubmissionEntry, SubmissionSet,
};
use super::mhd::{self, LIST_TYPES};
use super::{
    attach_resource, check_declared_hash, check_declared_size, decode_document, entry_resource, expect_resource_type,
    into_object, read_binary, read_document_reference, read_subject, PatientEntry, Source,
};

const HINT: &str = "post an ITI-65 Provide Document Bundle to the base URL, or a single DocumentReference to /DocumentReference";

/// What an entry of a Provide Document Bundle holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SubmissionSet,
    DocumentReference,
    Binary,
    Patch,
    Patient,
}

/// Parses and checks an ITI-65 Provide Document Bundle. Nothing in it is stored unless all of
/// it is accepted; refusals name the element (`Bundle.entry[i].resource...`), never a value.
///
/// A Binary may be referenced by one DocumentReference only, so a small body cannot expand into
/// many copies of a large document.
pub fn parse_transaction(body: &[u8]) -> Result<Submission, FhirError> {
    let mut bundle = into_object(parse_strict(body)?)?;
    expect_resource_type(&bundle, "Bundle", "resourceType", HINT)?;
    if req_str(&bundle, "type", "Bundle")? != "transaction" {
        return Err(FhirError::invalid("Bundle.type", "must be 'transaction'"));
    }
    let option = declared_option(&bundle)?;
    req_array(&bundle, "entry", "Bundle")?;
    let Some(Value::Array(mut entries)) = bundle.remove("entry") else {
        return Err(FhirError::required("Bundle.entry"));
    };
    let kinds = classify_entries(&entries)?;
    check_profiles(option, &entries, &kinds)?;
    let read = read_entries(&entries, &kinds)?;
    let mut sub = assemble(option, &kinds, read)?;
    // All accepted: move the resources out of their entries, without the document bytes.
    for (i, kind) in kinds.iter().enumerate() {
        let resource = entries[i].get_mut("resource").map(Value::take).unwrap_or(Value::Null);
        match (kind, sub.entries[i]) {
            (Kind::DocumentReference, SubmissionEntry::Document(k)) => {
                let patient = sub.documents[k].patient.clone();
                attach_resource(&mut sub.documents[k], with_logical_subject(resource, &patient));
            }
            (Kind::SubmissionSet, _) => {
                if let Some(ss) = sub.submission_set.as_mut() {
                    ss.list = with_logical_subject(resource, &ss.patient);
                }
            }
            (Kind::Patient, _) => sub.patient_resource = Some(resource),
            _ => {}
        }
    }
    Ok(sub)
}

/// The option `Bundle.meta.profile` declares (ITI-65 2:3.65.4.1.2.1: it shall name one).
fn declared_option(bundle: &Object) -> Result<MhdOption, FhirError> {
    let profiles = bundle.get("meta").and_then(|m| m.get("profile")).and_then(Value::as_array);
    let found = profiles.into_iter().flatten().filter_map(Value::as_str).filter_map(MhdOption::from_profile).max_by_key(|o| *o as u8);
    found.ok_or_else(|| {
        FhirError::invalid(
            "Bundle.meta.profile",
            format!(
                "must name the ITI-65 option of this Provide Document Bundle: {}, {} or {}",
                MhdOption::Minimal.profile(),
                MhdOption::UnContainedComprehensive.profile(),
                MhdOption::Comprehensive.profile()
            ),
        )
    })
}

/// Checks each entry's envelope (fullUrl, request, resource type) and says what it holds.
fn classify_entries(entries: &[Value]) -> Result<Vec<Kind>, FhirError> {
    let kinds = entries.iter().enumerate().map(|(i, e)| classify_entry(e, &item("Bundle.entry", i))).collect::<Result<Vec<_>, _>>()?;
    let n = |k: Kind| kinds.iter().filter(|x| **x == k).count();
    if n(Kind::SubmissionSet) != 1 {
        return Err(FhirError::invalid(
            "Bundle.entry",
            format!("must hold exactly one SubmissionSet List (code {LIST_TYPES}#submissionset), found {}", n(Kind::SubmissionSet)),
        ));
    }
    if n(Kind::Patient) > 1 {
        return Err(FhirError::invalid("Bundle.entry", "holds more than one Patient; a submission is about one patient"));
    }
    if n(Kind::DocumentReference) == 0 {
        return Err(FhirError::invalid("Bundle.entry", "holds no DocumentReference; a document submission needs at least one"));
    }
    Ok(kinds)
}

fn classify_entry(entry: &Value, at: &str) -> Result<Kind, FhirError> {
    let entry = as_object(entry, at)?;
    let request_at = child(at, "request");
    let request = req_obj(entry, "request", at)?;
    let method = req_str(request, "method", &request_at)?;
    let url = req_str(request, "url", &request_at)?;
    let resource_at = child(at, "resource");
    let resource = req_obj(entry, "resource", at)?;
    let resource_type = req_str(resource, "resourceType", &resource_at)?;
    let unsupported = |reason: String| FhirError::UnsupportedType { path: child(&resource_at, "resourceType"), reason };
    let kind = match resource_type {
        "List" => match list_code(resource) {
            Some("submissionset") => Kind::SubmissionSet,
            Some("folder") => return Err(unsupported("Folders are not supported by this gateway (PartialFolderContentNotProcessed); send the submission without Folder entries".into())),
            _ => return Err(FhirError::invalid(child(&resource_at, "code"), format!("a List in a Provide Document Bundle is a SubmissionSet: code {LIST_TYPES}#submissionset"))),
        },
        "DocumentReference" => Kind::DocumentReference,
        "Binary" => Kind::Binary,
        "Parameters" => Kind::Patch,
        "Patient" => Kind::Patient,
        "Bundle" => return Err(unsupported("FHIRDocumentNotSupported: this gateway does not implement the ITI-65 FHIR Document Publish option; send the document in a Binary".into())),
        other => return Err(unsupported(format!(
            "resource type {} is not accepted in a Provide Document Bundle (List SubmissionSet, DocumentReference, Binary, Parameters for PATCH, Patient)",
            shown_name(other)
        ))),
    };
    let (want_method, url_ok) = match kind {
        Kind::Patch => ("PATCH", document_reference_id(url).is_some()),
        _ => ("POST", url == resource_type),
    };
    if method != want_method {
        return Err(FhirError::invalid(child(&request_at, "method"), format!("must be {want_method} for a {resource_type} in a Provide Document Bundle")));
    }
    if !url_ok {
        let want = if kind == Kind::Patch { "DocumentReference/<id> of the document to update".to_owned() } else { format!("'{resource_type}'") };
        return Err(FhirError::invalid(child(&request_at, "url"), format!("must be {want}")));
    }
    if kind != Kind::Patch {
        req_str(entry, "fullUrl", at)?;
    }
    Ok(kind)
}

/// The MHD list type code of a List (`code.coding` of system MHDlistTypes).
fn list_code(list: &Object) -> Option<&str> {
    let codings = list.get("code")?.get("coding")?.as_array()?;
    codings.iter().find(|c| c.get("system").and_then(Value::as_str) == Some(LIST_TYPES)).and_then(|c| c.get("code")?.as_str())
}

/// `DocumentReference/<id>` (relative, or at the end of an absolute URL; a `_history` suffix
/// allowed): the id, when it is a FHIR id.
pub(super) fn document_reference_id(reference: &str) -> Option<&str> {
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let path = match path.split_once("/_history/") {
        Some((p, _)) => p,
        None => path,
    };
    let (before, id) = path.rsplit_once('/')?;
    let type_ok = before == "DocumentReference" || before.ends_with("/DocumentReference");
    let id_ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (type_ok && id_ok && !reference.starts_with("urn:")).then_some(id)
}

/// Every profile rule of the declared option, over every entry; all problems at once.
fn check_profiles(option: MhdOption, entries: &[Value], kinds: &[Kind]) -> Result<(), FhirError> {
    let mut issues: Vec<Issue> = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let at = child(&item("Bundle.entry", i), "resource");
        let resource = entries[i].get("resource").unwrap_or(&Value::Null);
        match kind {
            Kind::SubmissionSet => mhd::submission_set(resource, &at, option, &mut issues),
            Kind::DocumentReference => mhd::document_reference(resource, &at, option, &mut issues),
            Kind::Patch => mhd::patch_parameters(resource, &at, &mut issues),
            Kind::Binary | Kind::Patient => {}
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(FhirError::Unprocessable(issues))
    }
}

/// What the entries say, read and checked one by one.
struct Read {
    /// Per DocumentReference entry: (its entry index, the Binary's entry index, the submission).
    documents: Vec<(usize, usize, super::super::DocumentSubmission)>,
    /// Per PATCH entry: (its entry index, the patch).
    patches: Vec<(usize, StatusPatch)>,
    submission_set: SubmissionSet,
}

fn read_entries(entries: &[Value], kinds: &[Kind]) -> Result<Read, FhirError> {
    let full_urls = index_full_urls(entries)?;
    let patient_entry = patient_entry(entries, kinds);
    let ctx = patient_entry.as_ref();
    let mut referenced_by: Vec<Option<usize>> = vec![None; entries.len()];
    let mut documents = Vec::new();
    let mut patches = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let at = child(&item("Bundle.entry", i), "resource");
        match kind {
            Kind::DocumentReference => {
                let draft = read_document_reference(entry_resource(&entries[i], &at)?, &at, ctx)?;
                let attachment_at = format!("{at}.content[0].attachment");
                let Source::Url(url) = draft.source else {
                    return Err(FhirError::invalid(child(&attachment_at, "data"), "is not allowed in a Provide Document Bundle; put the document in a Binary entry"));
                };
                let j = referenced_binary(url, kinds, &full_urls, &attachment_at)?;
                if let Some(first) = referenced_by[j].replace(i) {
                    return Err(FhirError::invalid(
                        child(&attachment_at, "url"),
                        format!("references the same Binary as Bundle.entry[{first}]; each DocumentReference needs its own Binary"),
                    ));
                }
                let data = binary_document(&entries[j], j, draft.content_type, &attachment_at)?;
                check_declared_size(draft.declared_size, data.len(), &attachment_at)?;
                check_declared_hash(draft.declared_hash, &data, &attachment_at)?;
                documents.push((i, j, draft.into_submission(data)));
            }
            Kind::Patch => {
                let url = entries[i].get("request").and_then(|r| r.get("url")).and_then(Value::as_str).unwrap_or_default();
                let target = document_reference_id(url).unwrap_or_default().to_owned();
                patches.push((i, StatusPatch { target, status: "superseded".into() }));
            }
            _ => {}
        }
    }
    // A masterIdentifier names one document: two in the same Bundle cannot both be created
    // (and the second would wait forever on the first one's claim).
    for (n, (i, _, d)) in documents.iter().enumerate() {
        if let Some(first) = d.master_identifier.as_ref().and_then(|m| documents[..n].iter().find(|(_, _, e)| e.master_identifier.as_ref() == Some(m))) {
            return Err(FhirError::invalid(
                child(&item("Bundle.entry", *i), "resource.masterIdentifier"),
                format!("is the masterIdentifier of Bundle.entry[{}] too; each document has its own", first.0),
            ));
        }
    }
    if let Some(j) = (0..kinds.len()).find(|&j| kinds[j] == Kind::Binary && referenced_by[j].is_none()) {
        return Err(FhirError::invalid(
            child(&item("Bundle.entry", j), "resource"),
            "Binary is not referenced by any DocumentReference's content[0].attachment.url",
        ));
    }
    let submission_set = read_submission_set(entries, kinds, &documents, ctx)?;
    Ok(Read { documents, patches, submission_set })
}

/// The SubmissionSet's patient and the document each of its entries names.
fn read_submission_set(
    entries: &[Value],
    kinds: &[Kind],
    documents: &[(usize, usize, super::super::DocumentSubmission)],
    ctx: Option<&PatientEntry>,
) -> Result<SubmissionSet, FhirError> {
    let i = kinds.iter().position(|k| *k == Kind::SubmissionSet).unwrap_or_default();
    let at = child(&item("Bundle.entry", i), "resource");
    let list = entry_resource(&entries[i], &at)?;
    let patient = read_subject(req_obj(list, "subject", &at)?, &child(&at, "subject"), ctx)?;
    let by_url: HashMap<&str, usize> =
        documents.iter().enumerate().filter_map(|(k, (i, _, _))| Some((entries[*i].get("fullUrl")?.as_str()?, k))).collect();
    let mut listed = vec![false; documents.len()];
    let mut items = Vec::new();
    for (n, e) in req_array(list, "entry", &at)?.iter().enumerate() {
        let item_at = format!("{at}.entry[{n}].item.reference");
        let reference = e.get("item").and_then(|x| x.get("reference")).and_then(Value::as_str);
        let k = *reference.and_then(|r| by_url.get(r)).ok_or_else(|| {
            FhirError::invalid(&item_at, "must name a DocumentReference entry of this Bundle by its fullUrl (this gateway does not add existing documents or Folders to a submission)")
        })?;
        if std::mem::replace(&mut listed[k], true) {
            return Err(FhirError::invalid(item_at, "names a document the SubmissionSet already lists"));
        }
        items.push(k);
    }
    if let Some(k) = listed.iter().position(|l| !l) {
        return Err(FhirError::invalid(format!("{at}.entry"), format!("does not list the DocumentReference of Bundle.entry[{}]; a SubmissionSet lists every document it submits", documents[k].0)));
    }
    Ok(SubmissionSet { patient, list: Value::Null, items })
}

/// The submission, entries in order, once every cross-entry rule holds.
fn assemble(option: MhdOption, kinds: &[Kind], read: Read) -> Result<Submission, FhirError> {
    let Read { documents, patches, submission_set } = read;
    for (i, _, d) in &documents {
        if d.patient != submission_set.patient {
            return Err(FhirError::invalid(
                format!("Bundle.entry[{i}].resource.subject"),
                "names another patient than the SubmissionSet's subject (XDSPatientIdDoesNotMatch); a submission is about one patient",
            ));
        }
    }
    let mut replaced: HashMap<&str, usize> = HashMap::new();
    for (i, _, d) in &documents {
        for r in d.relates_to.iter().filter(|r| r.code == "replaces") {
            if replaced.insert(r.target.as_str(), *i).is_some() {
                return Err(FhirError::invalid(format!("Bundle.entry[{i}].resource.relatesTo"), "replaces a document another DocumentReference of this Bundle replaces"));
            }
        }
    }
    let mut patched: HashMap<&str, usize> = HashMap::new();
    for (i, p) in &patches {
        if !replaced.contains_key(p.target.as_str()) {
            return Err(FhirError::invalid(
                format!("Bundle.entry[{i}].request.url"),
                "names a document no DocumentReference of this Bundle replaces; a document becomes superseded when a new one replaces it (relatesTo 'replaces')",
            ));
        }
        if patched.insert(p.target.as_str(), *i).is_some() {
            return Err(FhirError::invalid(format!("Bundle.entry[{i}].request.url"), "updates a document an earlier PATCH of this Bundle updates"));
        }
    }
    let mut at_entry: Vec<Option<SubmissionEntry>> = vec![None; kinds.len()];
    for (k, (d, b, _)) in documents.iter().enumerate() {
        at_entry[*d] = Some(SubmissionEntry::Document(k));
        at_entry[*b] = Some(SubmissionEntry::Binary(k));
    }
    for (k, (p, _)) in patches.iter().enumerate() {
        at_entry[*p] = Some(SubmissionEntry::Patch(k));
    }
    let entries: Vec<SubmissionEntry> = kinds
        .iter()
        .zip(at_entry)
        .map(|(kind, at)| match (kind, at) {
            (_, Some(e)) => e,
            (Kind::Patient, None) => SubmissionEntry::Patient,
            (_, None) => SubmissionEntry::SubmissionSet,
        })
        .collect();
    Ok(Submission {
        option: Some(option),
        entries,
        documents: documents.into_iter().map(|(_, _, d)| d).collect(),
        submission_set: Some(submission_set),
        patches: patches.into_iter().map(|(_, p)| p).collect(),
        patient_resource: None,
    })
}

/// The bundle's Patient entry: its fullUrl and the identifier medgate can use (the first with
/// both a system and a value), if it has one.
fn patient_entry(entries: &[Value], kinds: &[Kind]) -> Option<PatientEntry> {
    let i = kinds.iter().position(|k| *k == Kind::Patient)?;
    let full_url = entries[i].get("fullUrl")?.as_str()?.to_owned();
    let identifiers = entries[i].get("resource")?.get("identifier").and_then(Value::as_array);
    let patient = identifiers.into_iter().flatten().find_map(|ident| {
        let (system, value) = (ident.get("system")?.as_str()?, ident.get("value")?.as_str()?);
        super::super::primitives::check_identifier_parts(system, value).ok()?;
        Some(PatientId { system: system.to_owned(), value: value.to_owned() })
    });
    Some(PatientEntry { full_url, patient })
}

/// A resource whose `subject` pointed at the bundle's Patient entry (a `urn:` reference that
/// means nothing once the transaction is over) names the patient by identifier instead.
fn with_logical_subject(mut resource: Value, patient: &PatientId) -> Value {
    let points_in_bundle = resource.get("subject").and_then(|s| s.get("reference")).and_then(Value::as_str).is_some_and(|r| r.starts_with("urn:"));
    if points_in_bundle {
        if let Some(obj) = resource.as_object_mut() {
            obj.insert("subject".into(), serde_json::json!({"type": "Patient", "identifier": {"system": patient.system, "value": patient.value}}));
        }
    }
    resource
}

/// Each entry's `fullUrl`, which must be unique, to its index.
fn index_full_urls(entries: &[Value]) -> Result<HashMap<&str, usize>, FhirError> {
    let mut full_urls: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        if let Some(url) = entry.get("fullUrl").and_then(Value::as_str) {
            if full_urls.insert(url, i).is_some() {
                return Err(FhirError::invalid(child(&item("Bundle.entry", i), "fullUrl"), "repeats the fullUrl of an earlier entry; each entry needs its own"));
            }
        }
    }
    Ok(full_urls)
}

/// The index of the Binary entry an attachment's `url` names.
fn referenced_binary(url: &str, kinds: &[Kind], full_urls: &HashMap<&str, usize>, attachment_at: &str) -> Result<usize, FhirError> {
    let url_at = child(attachment_at, "url");
    match full_urls.get(url) {
        Some(&j) if kinds[j] == Kind::Binary => Ok(j),
        Some(_) => Err(FhirError::invalid(url_at, "references an entry that is not a Binary; it must equal the fullUrl of the Binary entry holding the document")),
        None => Err(FhirError::invalid(
            url_at,
            "references no entry of this Bundle; it must equal the fullUrl of the Binary entry holding the document (e.g. urn:uuid:...)",
        )),
    }
}

/// The document bytes of Binary entry `j`, whose content type must match the attachment's.
fn binary_document(entry: &Value, j: usize, content_type: &str, attachment_at: &str) -> Result<Vec<u8>, FhirError> {
    let binary_at = child(&item("Bundle.entry", j), "resource");
    let binary = read_binary(entry_resource(entry, &binary_at)?, &binary_at)?;
    if mime_essence(binary.content_type) != mime_essence(content_type) {
        return Err(FhirError::invalid(child(attachment_at, "contentType"), format!("does not match {binary_at}.contentType of the Binary it references")));
    }
    decode_document(binary.data, &child(&binary_at, "data"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{b64, bundle, bytes, full_bundle, push, refused, remove, MRN, SYSTEM};
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mhd/fixtures").join(name);
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("json")
    }

    /// `full_bundle` replacing the stored DocumentReference `old`, with the PATCH entry MHD
    /// Sources send (after the SubmissionSet, as the IG's example has it).
    fn replacing(old: &str) -> Value {
        let mut b = full_bundle();
        b["entry"][2]["resource"]["relatesTo"] = json!([{"code": "replaces", "target": {"reference": format!("DocumentReference/{old}")}}]);
        let patch = json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000aa",
            "resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "superseded"}]}]},
            "request": {"method": "PATCH", "url": format!("DocumentReference/{old}")}});
        b["entry"].as_array_mut().expect("entries").insert(1, patch);
        b
    }

    #[test]
    fn two_documents_with_one_master_identifier_are_refused_naming_the_second() {
        let mut b = full_bundle();
        let mut doc = b["entry"][2].clone();
        let mut bin = b["entry"][3].clone();
        doc["fullUrl"] = json!("urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e2e");
        doc["resource"]["content"][0]["attachment"]["url"] = json!("urn:uuid:a6f1c36e-5a0b-4d1c-9a5f-2b0e7c0d8e66");
        bin["fullUrl"] = json!("urn:uuid:a6f1c36e-5a0b-4d1c-9a5f-2b0e7c0d8e66");
        push(&mut b["entry"], doc);
        push(&mut b["entry"], bin);
        push(&mut b["entry"][0]["resource"]["entry"], json!({"item": {"reference": "urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e2e"}}));
        let e = parse_transaction(&bytes(&b)).expect_err("refused");
        assert_eq!(e.status(), 422, "{e}");
        assert!(e.to_string().contains("Bundle.entry[4].resource.masterIdentifier") && e.to_string().contains("Bundle.entry[2]"), "{e}");
        // With its own masterIdentifier the second document is accepted.
        b["entry"][4]["resource"]["masterIdentifier"]["value"] = json!("urn:oid:1.2.3.4.5.8");
        assert_eq!(parse_transaction(&bytes(&b)).expect("valid").documents.len(), 2);
    }

    #[test]
    fn a_replacement_carries_its_relation_and_its_patch_in_order() {
        let sub = parse_transaction(&bytes(&replacing("0a1b2c"))).expect("valid");
        assert_eq!(
            sub.entries,
            [SubmissionEntry::SubmissionSet, SubmissionEntry::Patch(0), SubmissionEntry::Patient, SubmissionEntry::Document(0), SubmissionEntry::Binary(0)]
        );
        assert_eq!(sub.patches, [StatusPatch { target: "0a1b2c".into(), status: "superseded".into() }]);
        assert_eq!(sub.documents[0].relates_to, [super::super::super::Relation { code: "replaces".into(), target: "0a1b2c".into() }]);
        // The relation alone (a Source that lets the Recipient supersede) is enough.
        let mut b = replacing("0a1b2c");
        b["entry"].as_array_mut().expect("entries").remove(1);
        assert!(parse_transaction(&bytes(&b)).expect("valid").patches.is_empty());
        // Other relations are kept as relations.
        let mut b = full_bundle();
        b["entry"][2]["resource"]["relatesTo"] = json!([{"code": "appends", "target": {"reference": "https://his.example/fhir/DocumentReference/77/_history/2"}}]);
        assert_eq!(parse_transaction(&bytes(&b)).expect("valid").documents[0].relates_to[0].target, "77");
    }

    #[test]
    fn replacement_refusals() {
        const P: &str = "Bundle.entry[1]";
        refused(&replacing("a"), |v| remove(&mut v["entry"][3]["resource"], "relatesTo"), bundle, 422, "invalid", &format!("{P}.request.url"));
        refused(&replacing("a"), |v| v["entry"][1]["request"]["url"] = json!("DocumentReference/b"), bundle, 422, "invalid", &format!("{P}.request.url"));
        refused(&replacing("a"), |v| v["entry"][1]["request"]["url"] = json!("List/a"), bundle, 422, "invalid", &format!("{P}.request.url"));
        refused(&replacing("a"), |v| v["entry"][1]["request"]["method"] = json!("POST"), bundle, 422, "invalid", &format!("{P}.request.method"));
        refused(&replacing("a"), |v| v["entry"][1]["resource"]["parameter"][0]["part"][2]["valueCode"] = json!("entered-in-error"), bundle, 422, "invalid", &format!("{P}.resource.parameter[0].part:value"));
        refused(&replacing("a"), |v| v["entry"][3]["resource"]["relatesTo"][0]["code"] = json!("deprecates"), bundle, 422, "invalid", "Bundle.entry[3].resource.relatesTo[0].code");
        refused(&replacing("a"), |v| v["entry"][3]["resource"]["relatesTo"][0]["target"] = json!({"reference": "urn:uuid:1"}), bundle, 422, "invalid", "Bundle.entry[3].resource.relatesTo[0].target.reference");
        refused(&replacing("a"), |v| v["entry"][3]["resource"]["relatesTo"][0]["target"] = json!({"reference": "Observation/a"}), bundle, 422, "invalid", "Bundle.entry[3].resource.relatesTo[0].target.reference");
        refused(
            &replacing("a"),
            |v| {
                let twin = v["entry"][1].clone();
                v["entry"].as_array_mut().expect("entries").insert(2, twin);
                v["entry"][2]["fullUrl"] = json!("urn:uuid:00000000-0000-4000-8000-0000000000ab");
            },
            bundle,
            422,
            "invalid",
            "Bundle.entry[2].request.url",
        );
    }

    #[test]
    fn what_the_profile_misses_is_named_in_full_and_per_option() {
        let mut b = full_bundle();
        b["meta"]["profile"] = json!([MhdOption::Comprehensive.profile()]);
        let err = parse_transaction(&bytes(&b)).expect_err("minimal metadata under the comprehensive option");
        let FhirError::Unprocessable(issues) = &err else { panic!("{err:?}") };
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "Bundle.entry[0].resource.extension:designationType",
            "Bundle.entry[2].resource.category",
            "Bundle.entry[2].resource.securityLabel",
            "Bundle.entry[2].resource.content[0].attachment.language",
            "Bundle.entry[2].resource.context",
        ] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        assert!(!err.to_outcome().to_string().contains(MRN));
        refused(&full_bundle(), |v| remove(v, "meta"), bundle, 422, "invalid", "Bundle.meta.profile");
        refused(&full_bundle(), |v| v["meta"]["profile"] = json!(["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.DocumentReference"]), bundle, 422, "invalid", "Bundle.meta.profile");
    }

    #[test]
    fn other_resources_folders_and_fhir_documents_refuse_the_whole_bundle() {
        let with = |resource: Value| move |v: &mut Value| push(&mut v["entry"], json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000cc", "resource": resource, "request": {"method": "POST", "url": "X"}}));
        let e = refused(&full_bundle(), with(json!({"resourceType": "Observation", "status": "final"})), bundle, 422, "not-supported", "Bundle.entry[4].resource.resourceType");
        assert!(matches!(e, FhirError::UnsupportedType { .. }));
        let folder = json!({"resourceType": "List", "status": "current", "mode": "working", "code": {"coding": [{"system": LIST_TYPES, "code": "folder"}]}});
        let e = refused(&full_bundle(), with(folder), bundle, 422, "not-supported", "Bundle.entry[4].resource.resourceType");
        assert!(e.to_string().contains("Folders are not supported"), "{e}");
        let e = refused(&full_bundle(), with(json!({"resourceType": "Bundle", "type": "document"})), bundle, 422, "not-supported", "Bundle.entry[4].resource.resourceType");
        assert!(e.to_string().contains("FHIRDocumentNotSupported"), "{e}");
        refused(&full_bundle(), |v| v["entry"][0]["resource"]["code"]["coding"][0]["code"] = json!("other"), bundle, 422, "invalid", "Bundle.entry[0].resource.code");
        refused(&full_bundle(), |v| { v["entry"].as_array_mut().expect("entries").remove(0); }, bundle, 422, "invalid", "Bundle.entry");
    }

    #[test]
    fn the_submission_set_lists_each_document_of_the_same_patient() {
        refused(&full_bundle(), |v| v["entry"][0]["resource"]["entry"][0]["item"]["reference"] = json!("urn:uuid:other"), bundle, 422, "invalid", "Bundle.entry[0].resource.entry[0].item.reference");
        refused(&full_bundle(), |v| push(&mut v["entry"][0]["resource"]["entry"], json!({"item": {"reference": "urn:uuid:3fdc72f4-a11d-4a9d-9260-a9f745779e1d"}})), bundle, 422, "invalid", "Bundle.entry[0].resource.entry[1].item.reference");
        let e = refused(
            &full_bundle(),
            |v| v["entry"][2]["resource"]["subject"] = json!({"identifier": {"system": SYSTEM, "value": "another-patient"}}),
            bundle,
            422,
            "invalid",
            "Bundle.entry[2].resource.subject",
        );
        assert!(e.to_string().contains("XDSPatientIdDoesNotMatch"), "{e}");
        refused(&full_bundle(), |v| v["entry"][2]["resource"]["content"][0]["attachment"]["hash"] = json!(b64(&[0u8; 20])), bundle, 422, "invalid", "Bundle.entry[2].resource.content[0].attachment.hash");
    }

    #[test]
    fn the_ig_examples_are_read_or_refused_with_reasons() {
        // The IG's minimal example: its Patient has a name and no identifier medgate could
        // pseudonymise.
        let err = parse_transaction(&bytes(&fixture("good/ig-minimal-provide-bundle.json"))).expect_err("no identifier");
        assert!(err.to_string().contains("Bundle.entry[1].resource.subject.reference: points at the Bundle's Patient"), "{err}");
        // Given one, it is accepted as it stands.
        let mut b = fixture("good/ig-minimal-provide-bundle.json");
        b["entry"][3]["resource"]["identifier"] = json!([{"system": SYSTEM, "value": MRN}]);
        let sub = parse_transaction(&bytes(&b)).expect("valid");
        assert_eq!(sub.entries.len(), 4);
        assert_eq!(sub.documents[0].data, b"Hello World");
        // The comprehensive replacement: a literal Patient/ex-patient subject names the patient
        // only with an identifier beside it.
        let mut b = fixture("good/ig-comprehensive-provide-bundle-replace.json");
        let err = parse_transaction(&bytes(&b)).expect_err("local Patient id");
        assert!(err.to_string().contains("is a local Patient id"), "{err}");
        for i in [0, 2] {
            b["entry"][i]["resource"]["subject"]["identifier"] = json!({"system": SYSTEM, "value": MRN});
        }
        let sub = parse_transaction(&bytes(&b)).expect("valid");
        assert_eq!(sub.option, Some(MhdOption::Comprehensive));
        assert_eq!(sub.patches[0].target, "ex-documentreference");
        assert_eq!(sub.entries[1], SubmissionEntry::Patch(0));
    }
}
