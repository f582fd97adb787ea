//! No patient data at rest: a hospital's HIS stores documents (with and without
//! `Idempotency-Key`), reads, searches, replaces, marks one entered in error, records a consent,
//! erases, retries; the gateway stops; then every file it wrote (the state directory with the
//! vault, the ledger copy and the idempotency store, its log, and any temporary file: `TMPDIR`
//! points into the directory scanned) is searched for every identifier, name, title, type text
//! and content string the HIS sent. None may be there. Retries still get their first answer,
//! before and after a restart.

#![allow(clippy::unwrap_used, reason = "tests")]

#[path = "mhd/kit.rs"]
mod kit;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use medgate::client::query_escape;
use serde_json::{json, Value};
use support::{rt, Gw};

const SYSTEM: &str = "urn:oid:1.2.250.1.213.1.4.8";
const SD: &str = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/";

/// Strings that would give a patient or a document away, each unique to this run.
struct Secrets {
    mrn: String,
    given: String,
    family: String,
    author: String,
    title: String,
    description: String,
    type_display: String,
    list_title: String,
    master: String,
    contents: Vec<String>,
}

impl Secrets {
    fn new() -> Secrets {
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
        let tag = hex::encode(b);
        let s = |what: &str| format!("Zq{what}{tag}");
        let digits: String = b.iter().map(|x| (b'0' + x % 10) as char).collect();
        Secrets {
            mrn: s("Mrn"),
            given: s("Given"),
            family: s("Family"),
            author: s("Author"),
            title: s("Title"),
            description: s("Descr"),
            type_display: s("TypeText"),
            list_title: s("ListTitle"),
            master: format!("urn:oid:2.25.9{digits}"),
            contents: (0..4).map(|n| s(&format!("Content{n}"))).collect(),
        }
    }

    /// Every string to look for, with the base64 forms a content string takes in a request
    /// (each of the three alignments of its middle).
    fn needles(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = [&self.mrn, &self.given, &self.family, &self.author, &self.title, &self.description, &self.type_display, &self.list_title, &self.master]
            .into_iter()
            .chain(&self.contents)
            .map(|s| (s.clone(), s.as_bytes().to_vec()))
            .collect();
        for c in &self.contents {
            for skip in 0..3 {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&c.as_bytes()[skip..]);
                // The first and last characters depend on what surrounds it; the middle does not.
                out.push((format!("base64 of {c}"), b64.as_bytes()[2..b64.len() - 4].to_vec()));
            }
        }
        out
    }
}

/// A Comprehensive Provide Document Bundle that says everything a real one says about a patient.
fn bundle(s: &Secrets, content: &str, master: &str, replaces: Option<&str>) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(content);
    let sha1 = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, content.as_bytes()));
    let patient = json!({"system": SYSTEM, "value": s.mrn});
    let code = |c: &str| json!({"coding": [{"system": "http://loinc.org", "code": c, "display": s.type_display}], "text": s.type_display});
    let mut doc = json!({
        "resourceType": "DocumentReference",
        "contained": [{"resourceType": "Patient", "id": "sp", "identifier": [patient], "name": [{"family": s.family, "given": [s.given]}]},
                      {"resourceType": "Practitioner", "id": "au", "name": [{"text": s.author}]}],
        "masterIdentifier": {"use": "usual", "system": "urn:ietf:rfc:3986", "value": master},
        "status": "current", "type": code("11506-3"), "category": [code("11369-6")],
        "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000a4"},
        "author": [{"reference": "#au"}], "description": s.description,
        "securityLabel": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}],
        "content": [{"attachment": {"contentType": "text/plain", "language": "en", "url": "urn:uuid:00000000-0000-4000-8000-0000000000a3",
                                    "size": content.len(), "hash": sha1, "title": s.title, "creation": "2026-03-01T10:00:00Z"},
                     "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode", "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}}],
        "context": {"facilityType": code("22232009"), "practiceSetting": code("394802001"), "sourcePatientInfo": {"reference": "#sp"}}
    });
    if let Some(old) = replaces {
        doc["relatesTo"] = json!([{"code": "replaces", "target": {"reference": format!("DocumentReference/{old}")}}]);
    }
    let list = json!({
        "resourceType": "List",
        "extension": [{"url": format!("{SD}ihe-sourceId"), "valueIdentifier": {"value": "urn:oid:1.3.6.1.4.1.21367.13.80.110"}},
                      {"url": format!("{SD}ihe-designationType"), "valueCodeableConcept": code("34133-9")}],
        "status": "current", "mode": "working", "title": s.list_title,
        "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes", "code": "submissionset"}]},
        "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000a4"}, "date": "2026-03-01T10:00:00Z",
        "entry": [{"item": {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000a2"}}]
    });
    let mut entries = vec![
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000a1", "resource": list, "request": {"method": "POST", "url": "List"}}),
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000a2", "resource": doc, "request": {"method": "POST", "url": "DocumentReference"}}),
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000a3", "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": b64}, "request": {"method": "POST", "url": "Binary"}}),
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000a4", "request": {"method": "POST", "url": "Patient"},
               "resource": {"resourceType": "Patient", "identifier": [patient], "name": [{"family": s.family, "given": [s.given]}], "birthDate": "1961-07-14"}}),
    ];
    if let Some(old) = replaces {
        entries.insert(1, json!({"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "superseded"}]}]},
            "request": {"method": "PATCH", "url": format!("DocumentReference/{old}")}}));
    }
    json!({"resourceType": "Bundle", "meta": {"profile": [format!("{SD}IHE.MHD.Comprehensive.ProvideBundle")]}, "type": "transaction", "entry": entries})
}

fn consent(s: &Secrets) -> Value {
    json!({"resourceType": "Consent", "status": "active",
        "patient": {"identifier": {"system": SYSTEM, "value": s.mrn}},
        "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}]}})
}

/// Every regular file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// Each (file, what) where a secret lies in the clear, and the non-empty files scanned.
fn scan(dir: &Path, needles: &[(String, Vec<u8>)]) -> (Vec<String>, Vec<std::path::PathBuf>) {
    let mut all = Vec::new();
    files(dir, &mut all);
    let (mut found, mut scanned) = (Vec::new(), Vec::new());
    for f in all {
        let data = std::fs::read(&f).unwrap_or_default();
        for (what, n) in needles {
            if data.windows(n.len()).any(|w| w == n.as_slice()) {
                found.push(format!("{}: {what}", f.display()));
            }
        }
        if !data.is_empty() {
            scanned.push(f);
        }
    }
    (found, scanned)
}

/// One request as sent: (path, body, headers, answer).
type Answer = (String, Value, Vec<(&'static str, String)>, Value);

struct Run {
    answers: Vec<Answer>,
}

#[test]
fn nothing_a_patient_or_a_document_says_is_on_disk_in_the_clear() {
    // This test binary has this one test, so changing its environment races with nothing. The
    // site (state directory, log, token) is made under TMPDIR, and the gateway inherits it.
    let tmp = tempfile::Builder::new().prefix("medgate-at-rest-").tempdir().unwrap();
    let tmpdir_before = std::env::var_os("TMPDIR");
    std::env::set_var("TMPDIR", tmp.path());
    let s = Secrets::new();
    let mut gw = Gw::new("at-rest");
    assert!(gw.site.dir.starts_with(tmp.path()));
    let rt = rt();
    let mut run = Run { answers: Vec::new() };
    let post = |gw: &Gw, path: &str, body: &Value, headers: &[(&'static str, String)]| -> (u16, Value) {
        rt.block_on(async {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = gw.client().post_json(path, body, &h).await.unwrap();
            (r.status, r.json())
        })
    };
    let send = |gw: &Gw, method: &str, path: &str, body: Vec<u8>| -> (u16, Vec<u8>) {
        rt.block_on(async {
            let r = gw.client().send(method, path, &[], body).await.unwrap();
            (r.status, r.body.to_vec())
        })
    };

    // Stores: with a key, without one, a single DocumentReference with a key, a replacement.
    let key = |k: &str| vec![("idempotency-key", k.to_owned())];
    let first = bundle(&s, &s.contents[0], &s.master, None);
    let (status, a1) = post(&gw, "/", &first, &key("rest-1"));
    assert_eq!(status, 200, "{a1}");
    run.answers.push(("/".into(), first.clone(), key("rest-1"), a1.clone()));
    let old = support::created_id(&a1);
    let list = medgate_fhir::answer_ids(&a1, "List").pop().unwrap();
    let (status, a2) = post(&gw, "/", &bundle(&s, &s.contents[1], "urn:oid:1.2.3.4.2", None), &[]);
    assert_eq!(status, 200, "{a2}");
    let second = support::created_id(&a2);
    let single = json!({"resourceType": "DocumentReference", "status": "current", "description": s.description,
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": s.type_display}]},
        "subject": {"identifier": {"system": SYSTEM, "value": s.mrn}},
        "content": [{"attachment": {"contentType": "text/plain", "title": s.title, "data": base64::engine::general_purpose::STANDARD.encode(&s.contents[2])}}]});
    let (status, a3) = post(&gw, "/DocumentReference", &single, &key("rest-3"));
    assert_eq!(status, 201, "{a3}");
    run.answers.push(("/DocumentReference".into(), single.clone(), key("rest-3"), a3.clone()));
    let erased = a3["id"].as_str().unwrap().to_owned();
    let replacing = bundle(&s, &s.contents[3], "urn:oid:1.2.3.4.4", Some(&old));
    let (status, a4) = post(&gw, "/", &replacing, &key("rest-4"));
    assert_eq!(status, 200, "{a4}");
    run.answers.push(("/".into(), replacing, key("rest-4"), a4.clone()));
    let (status, c1) = post(&gw, "/Consent", &consent(&s), &key("rest-5"));
    assert_eq!(status, 201, "{c1}");
    run.answers.push(("/Consent".into(), consent(&s), key("rest-5"), c1.clone()));

    // Reads, a search, the audit trail, a status change, an erasure.
    let q = query_escape(&format!("{SYSTEM}|{}", s.mrn));
    let mut read = Vec::new();
    for path in [format!("/DocumentReference/{old}"), format!("/List/{list}"), format!("/Patient/{list}"), format!("/DocumentReference?patient={q}"), format!("/AuditEvent?patient={q}")] {
        let (status, body) = send(&gw, "GET", &path, Vec::new());
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        read.push(serde_json::from_slice::<Value>(&body).unwrap());
    }
    let (status, bytes) = send(&gw, "GET", &format!("/Binary/{old}"), Vec::new());
    assert_eq!((status, bytes), (200, s.contents[0].as_bytes().to_vec()));
    let patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "entered-in-error"}]}]});
    let (status, body) = send(&gw, "PATCH", &format!("/DocumentReference/{second}"), serde_json::to_vec(&patch).unwrap());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _) = send(&gw, "DELETE", &format!("/DocumentReference/{erased}"), Vec::new());
    assert_eq!(status, 204);

    // Retries: the first answer, every one.
    let retry = |gw: &Gw, run: &Run| {
        for (path, body, headers, first) in &run.answers {
            let (status, again) = post(gw, path, body, headers);
            if path == "/DocumentReference" {
                // The record was erased since: its content is gone, and the retry is told so.
                assert_eq!(status, 410, "{again}");
                assert!(again["issue"][0]["diagnostics"].as_str().unwrap().contains(&format!("DocumentReference/{} created by this request was erased", first["id"].as_str().unwrap())), "{again}");
            } else {
                assert_eq!(&again, first, "retry of {path} with {headers:?}");
            }
        }
    };
    retry(&gw, &run);
    assert_eq!(gw.stop().code(), Some(0));

    let needles = s.needles();
    let (found, scanned) = scan(tmp.path(), &needles);
    assert!(found.is_empty(), "patient data in the clear on disk:\n{}", found.join("\n"));
    // The scan read the log and the sled store's data file (not a size: sled's layout varies).
    assert!(scanned.contains(&gw.log), "the log was scanned: {scanned:?}");
    assert!(scanned.iter().any(|f| f.file_name().is_some_and(|n| n == "db") && f.starts_with(tmp.path())), "the store's data file was scanned: {scanned:?}");
    assert!(std::fs::read_to_string(&gw.log).unwrap().contains("route=\"POST /\""), "the log was written and scanned");

    // After a restart the retries still get their first answers, re-rendered from the vault.
    gw.start();
    retry(&gw, &run);
    assert_eq!(gw.stop().code(), Some(0));
    let (found, _) = scan(tmp.path(), &needles);
    assert!(found.is_empty(), "patient data in the clear on disk after the retries:\n{}", found.join("\n"));

    // What the gateway answered is valid R4 / MHD.
    let mut checks: Vec<kit::Check<'_>> = run.answers.iter().filter(|(p, ..)| p == "/").map(|(_, req, _, a)| kit::Check { profile: "mhd-provide-bundle-response", resource: a, request: Some(req) }).collect();
    checks.push(kit::Check { profile: "mhd-comprehensive-document-reference", resource: &read[0], request: None });
    checks.push(kit::Check { profile: "mhd-comprehensive-submissionset-list", resource: &read[1], request: None });
    checks.push(kit::Check { profile: "r4", resource: &read[2], request: None });
    checks.push(kit::Check { profile: "r4", resource: &c1, request: None });
    checks.push(kit::Check { profile: "r4", resource: &read[4], request: None });
    match tmpdir_before {
        Some(v) => std::env::set_var("TMPDIR", v),
        None => std::env::remove_var("TMPDIR"),
    }
    kit::validate(&checks).unwrap_or_else(|lines| panic!("medgate's answers are not valid R4/MHD:\n{lines}"));
}
