//! ITI-65 as IHE MHD Document Sources send it, against `medgate serve`: the independent MHD actor
//! (`tests/mhd/actor.py`) provides Minimal and Comprehensive bundles and replaces a document, and
//! every resource medgate returns goes through the independent FHIR R4 / MHD validator
//! (`tests/mhd/validate.py`, through `kit.rs`).

#![allow(clippy::unwrap_used, reason = "tests")]

#[path = "mhd/kit.rs"]
mod kit;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use medgate::client::query_escape;
use medgate_fhir::PatientId;
use serde_json::{json, Value};
use support::{rt, Gw};

const SYSTEM: &str = "urn:oid:1.2.250.1.213.1.4.8";

fn patient(n: u32) -> PatientId {
    PatientId { system: SYSTEM.into(), value: format!("MHD-{n:06}") }
}

/// The HIS's certificate, key and the hospital CA as files, for the actor.
struct Pem {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn pem_files(gw: &Gw) -> Pem {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key, ca) = (write("his.pem", &gw.site.his_cert_pem), write("his.key", &gw.site.his_key_pem), write("ca.pem", &gw.site.ca_pem));
    Pem { _dir: dir, cert, key, ca }
}

/// Runs the MHD actor against the gateway; its JSON report.
fn actor(gw: &Gw, pem: &Pem, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mhd/actor.py");
    let base = format!("https://localhost:{}", gw.site.his_addr.port());
    let out = Command::new("python3")
        .arg(&script)
        .args(["--base", &base, "--cert"])
        .arg(&pem.cert)
        .arg("--key")
        .arg(&pem.key)
        .arg("--ca")
        .arg(&pem.ca)
        .args(["--header", "X-Medgate-User: dr.mhd", "--header", "X-Medgate-Role: physician", "--header", "X-Medgate-Purpose: TREAT"])
        .args(args)
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "the actor broke: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("actor output: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn ok(report: &Value) -> &Value {
    assert_eq!(report["ok"], true, "the MHD actor found problems: {}", serde_json::to_string_pretty(&report["problems"]).unwrap());
    report
}

/// The id in the answer's location for `Type`.
fn located(report: &Value, ty: &str) -> Vec<String> {
    let prefix = format!("{ty}/");
    report["locations"].as_array().unwrap().iter().filter_map(|l| l.as_str()?.strip_prefix(&prefix)?.split('/').next().map(str::to_owned)).collect()
}

fn valid(checks: &[kit::Check<'_>]) {
    kit::validate(checks).unwrap_or_else(|lines| panic!("medgate's answer is not valid R4/MHD:\n{lines}"));
}

#[test]
fn mhd_sources_provide_minimal_and_comprehensive_bundles_and_replace_a_document() {
    let mut gw = Gw::new("mhd-provide");
    let pem = pem_files(&gw);
    let p = patient(1);
    let who = p.canonical();

    // ITI-65, Minimal metadata: the actor validates the answer (one entry per request entry, 201
    // with versioned locations) as its own request's transaction-response.
    let minimal = ok(&actor(&gw, &pem, &["provide", "--patient", &who, "--content", "first version"])).clone();
    let old = located(&minimal, "DocumentReference").pop().unwrap();
    assert_eq!(located(&minimal, "Binary"), std::slice::from_ref(&old), "the Binary is the document's bytes, under the same id");
    let list = located(&minimal, "List").pop().unwrap();
    let comprehensive = ok(&actor(&gw, &pem, &["provide", "--patient", &who, "--metadata", "comprehensive", "--type-code", "http://loinc.org|11506-3"])).clone();
    let comp_list = located(&comprehensive, "List").pop().unwrap();

    // The SubmissionSets are kept and read back as MHD lists.
    ok(&actor(&gw, &pem, &["read", &format!("List/{list}"), "--profile", "mhd-submissionset-list"]));
    let comp = ok(&actor(&gw, &pem, &["read", &format!("List/{comp_list}"), "--profile", "mhd-comprehensive-submissionset-list"])).clone();
    assert_eq!(comp["resource"]["entry"][0]["item"]["reference"], format!("DocumentReference/{}", located(&comprehensive, "DocumentReference")[0]));

    // A replacement, as MHD Sources send it: relatesTo replaces + the PATCH setting it superseded.
    let replaced = ok(&actor(&gw, &pem, &["provide", "--patient", &who, "--replaces", &old, "--content", "second version"])).clone();
    let locations: Vec<&str> = replaced["locations"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(locations[1], format!("DocumentReference/{old}/_history/2"), "the PATCH entry answers the new version: {locations:?}");
    assert_eq!(replaced["response"]["entry"][1]["response"]["status"], "200 OK");
    let new = located(&replaced, "DocumentReference").into_iter().find(|id| *id != old).unwrap();

    // The replaced document is superseded, still readable with its content.
    let read = ok(&actor(&gw, &pem, &["read", &format!("DocumentReference/{old}"), "--profile", "mhd-minimal-document-reference"])).clone();
    assert_eq!(read["resource"]["status"], "superseded");
    assert_eq!(read["resource"]["meta"]["versionId"], "2");
    let bytes = ok(&actor(&gw, &pem, &["retrieve", &format!("Binary/{old}")])).clone();
    assert_eq!(bytes["size"], "first version".len());

    // Replacing it again, or with only the relation (no PATCH), is refused: it is superseded.
    let again = actor(&gw, &pem, &["provide", "--patient", &who, "--replaces", &old, "--replace-style", "relates-only"]);
    assert_eq!(again["status"], 409, "{again}");
    assert!(again["response"]["issue"][0]["diagnostics"].as_str().unwrap().contains(&format!("is superseded by DocumentReference/{new}")), "{again}");
    // A Source that lets the Recipient supersede (the relation alone) replaces the new one.
    let third = ok(&actor(&gw, &pem, &["provide", "--patient", &who, "--replaces", &new, "--replace-style", "relates-only"])).clone();
    assert_eq!(third["response"]["entry"].as_array().unwrap().len(), 3);
    let now = ok(&actor(&gw, &pem, &["read", &format!("DocumentReference/{new}"), "--profile", "mhd-minimal-document-reference"])).clone();
    assert_eq!(now["resource"]["status"], "superseded");

    // Every status change is a signed ledger entry about the patient (pseudonyms only).
    let rt = rt();
    let audit = rt.block_on(async { gw.client().get(&format!("/AuditEvent?patient={}", query_escape(&who))).await.unwrap().json() });
    let changes = audit["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["subtype"][0]["code"] == "status-changed").count();
    assert_eq!(changes, 2, "{audit}");
    assert!(!audit["entry"].to_string().contains(&p.value), "the audit events carry pseudonyms only");
    assert_eq!(gw.stop().code(), Some(0));
    let (code, out, err) = gw.medgate(&["ledger", "verify", "--config", gw.site.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

fn post(gw: &Gw, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    rt().block_on(async {
        let r = gw.client().post_json("/", body, headers).await.unwrap();
        (r.status, r.json())
    })
}

fn get(gw: &Gw, path: &str) -> (u16, Value) {
    rt().block_on(async {
        let r = gw.client().get(path).await.unwrap();
        (r.status, r.json())
    })
}

fn fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mhd/fixtures").join(name)).unwrap()).unwrap()
}

#[test]
fn the_igs_example_is_stored_answered_and_read_back_valid() {
    let gw = Gw::new("mhd-ig");
    // The IG's Minimal example, its Patient given an identifier medgate can pseudonymise.
    let mut request = fixture("good/ig-minimal-provide-bundle.json");
    request["entry"][3]["resource"]["identifier"] = json!([{"system": SYSTEM, "value": "MHD-IG-0001"}]);
    let (status, answer) = post(&gw, &request, &[("idempotency-key", "ig-1")]);
    assert_eq!(status, 200, "{answer}");
    valid(&[kit::Check { profile: "mhd-provide-bundle-response", resource: &answer, request: Some(&request) }]);
    let locations: Vec<&str> = answer["entry"].as_array().unwrap().iter().map(|e| e["response"]["location"].as_str().unwrap()).collect();
    assert!(locations[0].starts_with("List/") && locations[1].starts_with("DocumentReference/"), "{locations:?}");
    assert!(locations[2].starts_with("Binary/") && locations[3].starts_with("Patient/"), "{locations:?}");
    let id_of = |loc: &str| loc.split('/').nth(1).unwrap().to_owned();
    let (list, doc) = (id_of(locations[0]), id_of(locations[1]));
    assert_eq!(id_of(locations[3]), list, "the Patient is kept with its SubmissionSet");

    let (s, list_res) = get(&gw, &format!("/List/{list}"));
    assert_eq!(s, 200, "{list_res}");
    let (s, patient_res) = get(&gw, &format!("/Patient/{list}"));
    assert_eq!(s, 200, "{patient_res}");
    assert_eq!(patient_res["name"][0]["family"], "Schmidt");
    let (s, doc_res) = get(&gw, &format!("/DocumentReference/{doc}"));
    assert_eq!(s, 200, "{doc_res}");
    // The List names the stored document; the in-bundle Patient reference became the identifier.
    assert_eq!(list_res["entry"][0]["item"]["reference"], format!("DocumentReference/{doc}"));
    assert_eq!(list_res["subject"]["identifier"]["value"], "MHD-IG-0001");
    valid(&[
        kit::Check { profile: "mhd-submissionset-list", resource: &list_res, request: None },
        kit::Check { profile: "r4", resource: &patient_res, request: None },
        kit::Check { profile: "mhd-minimal-document-reference", resource: &doc_res, request: None },
    ]);
    // A retry with the key gets the first answer, byte for byte.
    let (status, again) = post(&gw, &request, &[("idempotency-key", "ig-1")]);
    assert_eq!((status, &again), (200, &answer));
    // Sent again without it, the masterIdentifier recognises the same submission: 200 OK entries.
    let (status, repeat) = post(&gw, &request, &[]);
    assert_eq!(status, 200, "{repeat}");
    assert!(repeat["entry"].as_array().unwrap().iter().all(|e| e["response"]["status"] == "200 OK"), "{repeat}");
    assert_eq!(repeat["entry"][1]["response"]["location"], answer["entry"][1]["response"]["location"]);
    assert_eq!(gw.metric("medgate_vault_records"), Some(1.0));
}

/// An MHD Minimal bundle with two documents for `p`, built here (not by medgate's sample);
/// `tag` makes their masterIdentifiers; document 1 replaces `replaces` when given.
fn two_documents(p: &PatientId, tag: u32, replaces: Option<&str>) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = |n: u32| {
        let mut d = json!({"resourceType": "DocumentReference", "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:oid:1.2.3.{tag}.{n}")},
            "status": "current", "subject": {"identifier": {"system": p.system, "value": p.value}},
            "content": [{"attachment": {"contentType": "text/plain", "url": format!("urn:uuid:00000000-0000-4000-8000-00000000010{n}")}}]});
        if let (Some(old), 1) = (replaces, n) {
            d["relatesTo"] = json!([{"code": "replaces", "target": {"reference": format!("DocumentReference/{old}")}}]);
        }
        d
    };
    json!({"resourceType": "Bundle", "meta": {"profile": ["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.ProvideBundle"]}, "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "request": {"method": "POST", "url": "List"}, "resource": {"resourceType": "List",
            "extension": [{"url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId", "valueIdentifier": {"value": "urn:oid:1.2.3"}}],
            "status": "current", "mode": "working", "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes", "code": "submissionset"}]},
            "subject": {"identifier": {"system": p.system, "value": p.value}}, "date": "2026-01-01T00:00:00Z",
            "entry": [{"item": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000011"}}, {"item": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000012"}}]}},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000011", "request": {"method": "POST", "url": "DocumentReference"}, "resource": doc(0)},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000100", "request": {"method": "POST", "url": "Binary"}, "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": b64("doc zero")}},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000012", "request": {"method": "POST", "url": "DocumentReference"}, "resource": doc(1)},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000101", "request": {"method": "POST", "url": "Binary"}, "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": b64("doc one")}}
    ]})
}

fn issue_paths(outcome: &Value) -> Vec<String> {
    outcome["issue"].as_array().unwrap().iter().flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default()).map(|e| e.as_str().unwrap().to_owned()).collect()
}

#[test]
fn refusals_name_every_missing_element_and_a_refused_transaction_stores_nothing() {
    let gw = Gw::new("mhd-refuse");
    let p = patient(7);
    let empty = || (gw.metric("medgate_vault_records"), gw.metric("medgate_ledger_height"));
    let before = empty();

    // Minimal metadata under the Comprehensive option: every missing element is an issue.
    let mut bundle = two_documents(&p, 1, None);
    bundle["meta"]["profile"] = json!(["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Comprehensive.ProvideBundle"]);
    let (status, outcome) = post(&gw, &bundle, &[]);
    assert_eq!(status, 422, "{outcome}");
    valid(&[kit::Check { profile: "r4", resource: &outcome, request: None }]);
    let paths = issue_paths(&outcome);
    for want in ["Bundle.entry[0].resource.extension:designationType", "Bundle.entry[1].resource.category", "Bundle.entry[3].resource.category", "Bundle.entry[3].resource.context.sourcePatientInfo"] {
        assert!(paths.iter().any(|p| p == want), "{want} not named: {paths:?}");
    }
    // An unknown resource type refuses the whole bundle.
    let mut bundle = two_documents(&p, 1, None);
    bundle["entry"].as_array_mut().unwrap().push(json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000200", "request": {"method": "POST", "url": "Observation"}, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}}));
    let (status, outcome) = post(&gw, &bundle, &[]);
    assert_eq!((status, issue_paths(&outcome)), (422, vec!["Bundle.entry[5].resource.resourceType".to_owned()]), "{outcome}");
    // FHIR XML: 415, and the OperationOutcome says so.
    let xml = rt().block_on(async {
        let mut c = gw.client();
        c.send("POST", "/", &[("content-type", "application/fhir+xml")], b"<Bundle xmlns=\"http://hl7.org/fhir\"/>".to_vec()).await.unwrap()
    });
    assert_eq!(xml.status, 415);
    assert!(xml.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("FHIR XML is not supported"), "{}", xml.json());
    assert_eq!(empty(), before, "nothing stored, nothing on the ledger");

    // Replacing a document that does not exist: refused, nothing stored.
    let (status, outcome) = post(&gw, &two_documents(&p, 2, Some("0123456789abcdef0123456789abcdef")), &[]);
    assert_eq!((status, issue_paths(&outcome)), (422, vec!["Bundle.entry[3].resource.relatesTo[0].target".to_owned()]), "{outcome}");
    assert_eq!(empty(), before);

    // Two documents stored; a second submission replacing one of them twice over is atomic:
    // the first replacement wins, the other submission stores nothing at all.
    let (status, first) = post(&gw, &two_documents(&p, 1, None), &[]);
    assert_eq!(status, 200, "{first}");
    let old = medgate_fhir::answer_ids(&first, "DocumentReference")[0].clone();
    let (status, answer) = post(&gw, &two_documents(&p, 3, Some(&old)), &[]);
    assert_eq!(status, 200, "{answer}");
    let records = gw.metric("medgate_vault_records");
    let (status, outcome) = post(&gw, &two_documents(&p, 4, Some(&old)), &[]);
    assert_eq!(status, 409, "{outcome}");
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("is superseded"), "{outcome}");
    assert_eq!(gw.metric("medgate_vault_records"), records, "a refused transaction stores none of its documents");
    // Another patient's submission replacing this patient's current document: refused, named.
    let second_doc = medgate_fhir::answer_ids(&first, "DocumentReference")[1].clone();
    let (status, outcome) = post(&gw, &two_documents(&patient(8), 5, Some(&second_doc)), &[]);
    assert_eq!((status, issue_paths(&outcome)), (422, vec!["Bundle.entry[3].resource.relatesTo[0].target".to_owned()]), "{outcome}");
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("XDSPatientIdDoesNotMatch"), "{outcome}");
    assert_eq!(gw.metric("medgate_vault_records"), records);

    // Entered in error, by the custodian: out of searches, still readable by id.
    let patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "entered-in-error"}]}]});
    let changed = rt().block_on(async { gw.client().send("PATCH", &format!("/DocumentReference/{second_doc}"), &[], serde_json::to_vec(&patch).unwrap()).await.unwrap() });
    assert_eq!(changed.status, 200, "{}", String::from_utf8_lossy(&changed.body));
    let changed = changed.json();
    assert_eq!((changed["status"].as_str(), changed["meta"]["versionId"].as_str()), (Some("entered-in-error"), Some("2")));
    valid(&[kit::Check { profile: "r4", resource: &changed, request: None }]);
    let (_, found) = get(&gw, &format!("/DocumentReference?patient={}", query_escape(&p.canonical())));
    let ids: Vec<&str> = found["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&second_doc.as_str()) && ids.contains(&old.as_str()), "{ids:?}");
    let superseded = found["entry"].as_array().unwrap().iter().find(|e| e["resource"]["id"] == old.as_str()).unwrap();
    assert_eq!(superseded["resource"]["status"], "superseded");
    let (s, read) = get(&gw, &format!("/DocumentReference/{second_doc}"));
    assert_eq!((s, read["status"].as_str()), (200, Some("entered-in-error")));
}
