//! The read side of IHE MHD against `medgate serve` (real SoftHSM2 token, mutual TLS, sled):
//! ITI-67 Find Document References with every parameter the profile lists, stable paging,
//! `Prefer: handling=strict`, `_summary`, `_elements`, `_format`, `_pretty`; ITI-68 Retrieve
//! Document in both forms with ETag and 304; the CapabilityStatement. An independent MHD
//! Document Consumer (`tests/mhd/actor.py`) drives the acceptance case, and every resource
//! medgate returns goes through the independent FHIR R4 / MHD validation kit (`tests/mhd`).

#![allow(clippy::unwrap_used, reason = "tests")]

#[path = "mhd/kit.rs"]
mod kit;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use base64::Engine as _;
use medgate::client::{query_escape, HisClient};
use medgate_fhir::PatientId;
use serde_json::{json, Value};
use support::{rt, Gw};

const SD: &str = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const CONF: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const FORMAT: &str = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode";

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("MRN-{n:06}") }
}

/// What varies between the test documents; the rest is Comprehensive metadata every one has.
#[derive(Clone)]
struct Spec {
    n: u32,
    date: String,
    creation: &'static str,
    type_code: &'static str,
    category: &'static str,
    security: &'static str,
    facility: &'static str,
    setting: &'static str,
    event: &'static str,
    period: (Option<&'static str>, Option<&'static str>),
    author: (&'static str, &'static str),
    format: &'static str,
    related: Option<&'static str>,
}

impl Spec {
    fn new(n: u32) -> Spec {
        Spec {
            n,
            date: format!("2024-03-{:02}T09:00:00Z", n % 28 + 1),
            creation: "2024-03-01T08:00:00Z",
            type_code: "34133-9",
            category: "11369-6",
            security: "N",
            facility: "22232009",
            setting: "394802001",
            event: "E-ROUTINE",
            period: (Some("2024-02-01"), Some("2024-02-10")),
            author: ("Ada", "Lovelace"),
            format: "urn:ihe:iti:xds:2017:mimeTypeSufficient",
            related: None,
        }
    }
}

fn uuid(tag: u32, n: u32) -> String {
    format!("urn:uuid:{tag:08x}-0000-4000-8000-{n:012x}")
}

/// A Comprehensive DocumentReference (contained source patient and author) for `spec`, whose
/// content is the Binary at `binary_url`.
fn docref(p: &PatientId, s: &Spec, content: &[u8], binary_url: &str, run: u32) -> Value {
    let mut context = json!({
        "event": [{"coding": [{"system": "urn:oid:1.3.6.1.4.1.19376.1.2.3", "code": s.event}]}],
        "facilityType": {"coding": [{"system": SNOMED, "code": s.facility}]},
        "practiceSetting": {"coding": [{"system": SNOMED, "code": s.setting}]},
        "sourcePatientInfo": {"reference": "#sp"}
    });
    let mut period = serde_json::Map::new();
    if let Some(start) = s.period.0 {
        period.insert("start".into(), json!(start));
    }
    if let Some(end) = s.period.1 {
        period.insert("end".into(), json!(end));
    }
    if !period.is_empty() {
        context["period"] = Value::Object(period);
    }
    if let Some(r) = s.related {
        context["related"] = json!([{"identifier": {"system": "urn:ietf:rfc:3986", "value": r}}]);
    }
    json!({
        "resourceType": "DocumentReference",
        "meta": {"profile": [format!("{SD}IHE.MHD.Comprehensive.DocumentReference")]},
        "contained": [
            {"resourceType": "Patient", "id": "sp", "identifier": [{"system": p.system, "value": p.value}]},
            {"resourceType": "Practitioner", "id": "author", "name": [{"family": s.author.1, "given": [s.author.0]}]}
        ],
        "masterIdentifier": {"use": "usual", "system": "urn:ietf:rfc:3986", "value": format!("urn:oid:2.25.{run}{:06}", s.n)},
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": uuid(run, s.n)}],
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": s.type_code}]},
        "category": [{"coding": [{"system": LOINC, "code": s.category}]}],
        "subject": {"identifier": {"system": p.system, "value": p.value}},
        "date": s.date,
        "author": [{"reference": "#author"}],
        "description": format!("test document {}", s.n),
        "securityLabel": [{"coding": [{"system": CONF, "code": s.security}]}],
        "content": [{
            "attachment": {"contentType": "text/plain", "language": "en", "url": binary_url, "size": content.len(), "creation": s.creation, "title": format!("document {}", s.n)},
            "format": {"system": FORMAT, "code": s.format}
        }],
        "context": context
    })
}

/// What varies between the test SubmissionSets.
#[derive(Clone)]
struct SetSpec {
    source_id: &'static str,
    designation: &'static str,
    date: &'static str,
    author: (&'static str, &'static str),
}

const SET: SetSpec = SetSpec { source_id: "urn:oid:1.3.6.1.4.1.21367.13.80.110", designation: "34133-9", date: "2024-03-01T10:00:00Z", author: ("Ada", "Lovelace") };

/// An ITI-65 Comprehensive provide bundle: one SubmissionSet (`set`) and a DocumentReference +
/// Binary per spec.
fn provide_bundle_with(p: &PatientId, specs: &[Spec], run: u32, set: &SetSpec) -> Value {
    let ss_url = uuid(run + 0x1000_0000, specs.first().map_or(0, |s| s.n));
    let mut entries = vec![];
    let mut items = vec![];
    let mut docs = vec![];
    for s in specs {
        let content = format!("MHD read-side test document {} of run {run}", s.n).into_bytes();
        let bin_url = uuid(run + 0x2000_0000, s.n);
        let dr_url = uuid(run, s.n);
        items.push(json!({"item": {"reference": dr_url}}));
        docs.push(json!({"fullUrl": dr_url, "resource": docref(p, s, &content, &bin_url, run), "request": {"method": "POST", "url": "DocumentReference"}}));
        docs.push(json!({"fullUrl": bin_url, "resource": {"resourceType": "Binary", "contentType": "text/plain",
            "data": base64::engine::general_purpose::STANDARD.encode(&content)}, "request": {"method": "POST", "url": "Binary"}}));
    }
    entries.push(json!({"fullUrl": ss_url, "resource": {
        "resourceType": "List",
        "meta": {"profile": [format!("{SD}IHE.MHD.Comprehensive.SubmissionSet")]},
        "contained": [{"resourceType": "Practitioner", "id": "src", "name": [{"family": set.author.1, "given": [set.author.0]}]}],
        "extension": [
            {"url": format!("{SD}ihe-sourceId"), "valueIdentifier": {"value": set.source_id}},
            {"url": format!("{SD}ihe-designationType"), "valueCodeableConcept": {"coding": [{"system": LOINC, "code": set.designation}]}}
        ],
        "source": {"reference": "#src"},
        "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": format!("urn:oid:2.25.9{run}{:06}", specs.first().map_or(0, |s| s.n))},
                       {"use": "official", "system": "urn:ietf:rfc:3986", "value": ss_url}],
        "status": "current", "mode": "working",
        "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes", "code": "submissionset"}]},
        "subject": {"identifier": {"system": p.system, "value": p.value}},
        "date": set.date,
        "entry": items
    }, "request": {"method": "POST", "url": "List"}}));
    entries.extend(docs);
    json!({"resourceType": "Bundle", "meta": {"profile": [format!("{SD}IHE.MHD.Comprehensive.ProvideBundle")]}, "type": "transaction", "entry": entries})
}

/// Stores `specs` for `p` in bundles of at most 50 documents; returns the ids by spec number.
async fn store(his: &mut HisClient, p: &PatientId, specs: &[Spec], run: u32) -> Vec<(u32, String)> {
    store_with(his, p, specs, run, &SET).await
}

async fn store_with(his: &mut HisClient, p: &PatientId, specs: &[Spec], run: u32, set: &SetSpec) -> Vec<(u32, String)> {
    let mut ids = Vec::new();
    for chunk in specs.chunks(50) {
        let bundle = provide_bundle_with(p, chunk, run, set);
        let r = his.post_json("/", &bundle, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let created: Vec<String> = r.json()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "DocumentReference" || e["response"]["location"].as_str().is_some_and(|l| l.starts_with("DocumentReference/")))
            .map(|e| e["resource"]["id"].as_str().map(str::to_owned).unwrap_or_else(|| e["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned()))
            .collect();
        assert_eq!(created.len(), chunk.len(), "one DocumentReference per document: {}", r.json());
        ids.extend(chunk.iter().map(|s| s.n).zip(created));
    }
    ids
}

fn base(gw: &Gw) -> String {
    format!("https://localhost:{}", gw.site.his_addr.port())
}

/// The path and query of an absolute link of this gateway.
fn local(gw: &Gw, url: &str) -> String {
    url.strip_prefix(&base(gw)).unwrap_or_else(|| panic!("{url} is not under {}", base(gw))).to_owned()
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation).and_then(|l| l["url"].as_str()).map(str::to_owned)
}

fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["search"]["mode"] == "match").map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Runs `tests/mhd/actor.py` against the gateway as the site's HIS; its JSON report.
fn actor(gw: &Gw, args: &[&str]) -> Value {
    actor_at(gw, &base(gw), args)
}

/// As [`actor`], with the FHIR base URL `base`.
fn actor_at(gw: &Gw, base: &str, args: &[&str]) -> Value {
    let tls = gw.site.dir.join("tls");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mhd/actor.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--base", base])
        .args(["--cert", tls.join("his.pem").to_str().unwrap(), "--key", tls.join("his-key.pem").to_str().unwrap()])
        .args(["--ca", tls.join("hospital-ca.pem").to_str().unwrap()])
        .args(["--header", "X-Medgate-User: dr.house", "--header", "X-Medgate-Role: physician", "--header", "X-Medgate-Purpose: TREAT"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("actor.py {args:?}: no report ({e}), exit {:?}\n{stdout}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr))
    });
    assert!(matches!(out.status.code(), Some(0 | 1)), "actor.py broke: {report}\n{}", String::from_utf8_lossy(&out.stderr));
    report
}

/// Validates every resource with the kit, in one process.
fn validate(checks: &[(&str, &Value)]) {
    let checks: Vec<kit::Check<'_>> = checks.iter().map(|(profile, resource)| kit::Check { profile, resource, request: None }).collect();
    kit::validate(&checks).unwrap_or_else(|lines| panic!("medgate's output is not valid R4/MHD:\n{lines}"));
}

/// The number of ITI-67 (search) entries the ledger holds for `p`.
async fn searches_on_ledger(his: &mut HisClient, p: &PatientId) -> usize {
    let r = his.get(&format!("/AuditEvent?patient.identifier={}&_count=1000", query_escape(&p.canonical()))).await.unwrap();
    assert_eq!(r.status, 200);
    r.json()["entry"].as_array().map_or(0, |a| a.iter().filter(|e| e["resource"]["subtype"][0]["code"] == "ITI-67").count())
}

#[test]
fn a_consumer_pages_through_25_current_documents_two_at_a_time() {
    let gw = Gw::new("mhd-paging");
    let rt = rt();
    let p = patient(1);
    let specs: Vec<Spec> = (0..25).map(Spec::new).collect();
    let stored = rt.block_on(async {
        let mut his = gw.client();
        store(&mut his, &p, &specs, 1).await
    });
    let mut want: Vec<String> = stored.iter().map(|(_, id)| id.clone()).collect();
    want.sort();

    // The independent Consumer: status=current, _count=2, every next link followed, every page
    // checked as an ITI-67 response (Comprehensive metadata), total stable, no repeats.
    let pid = p.canonical();
    for extra in [&[][..], &["--post"][..]] {
        let mut args = vec!["find", "--patient-identifier", &pid, "--status", "current", "--count", "2", "--comprehensive"];
        args.extend_from_slice(extra);
        let report = actor(&gw, &args);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["pages"], 13, "{report}");
        assert_eq!(report["total"], json!([25]), "{report}");
        let mut got: Vec<String> = report["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        got.sort();
        assert_eq!(got, want, "every document once");
        for u in report["fullUrls"].as_array().unwrap() {
            assert!(u.as_str().unwrap().starts_with(&format!("{}/DocumentReference/", base(&gw))), "{u}");
        }
    }

    rt.block_on(async {
        let mut his = gw.client();
        let before = searches_on_ledger(&mut his, &p).await;
        // A document stored between two page requests neither shifts nor repeats anything, and
        // does not join the pages of the search that was under way.
        let first = his.get(&format!("/DocumentReference?patient.identifier={}&status=current&_count=2", query_escape(&pid))).await.unwrap();
        assert_eq!(first.status, 200);
        let mut page = first.json();
        let mut pages = vec![page.clone()];
        let mut seen = match_ids(&page);
        let late = store(&mut his, &p, &[Spec { date: "2024-03-15T09:30:00Z".into(), ..Spec::new(100) }], 1).await;
        while let Some(next) = link(&page, "next") {
            let r = his.get(&local(&gw, &next)).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            page = r.json();
            assert_eq!(page["total"], 25, "the total of the search under way");
            seen.extend(match_ids(&page));
            pages.push(page.clone());
        }
        assert_eq!(pages.len(), 13);
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, want, "the late document stays out, nothing repeats or goes missing");
        assert!(!seen.contains(&late[0].1));
        // Back from the last page, by the previous links, to the first.
        let mut back = vec![];
        let mut p2 = pages.last().unwrap().clone();
        while let Some(prev) = link(&p2, "previous") {
            p2 = his.get(&local(&gw, &prev)).await.unwrap().json();
            back.push(match_ids(&p2));
        }
        back.reverse();
        let forward: Vec<Vec<String>> = pages[..pages.len() - 1].iter().map(match_ids).collect();
        assert_eq!(back, forward, "previous links walk the same pages back");
        // Newest first (the default sort is -date).
        let dates: Vec<String> = pages.iter().flat_map(|p| p["entry"].as_array().unwrap().iter().map(|e| e["resource"]["date"].as_str().unwrap().to_owned())).collect();
        assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{dates:?}");
        // A new search sees the late document.
        let fresh = his.get(&format!("/DocumentReference?patient.identifier={}&status=current&_count=2&_sort=-date", query_escape(&pid))).await.unwrap().json();
        assert_eq!(fresh["total"], 26);
        // One ledger entry per page request: 13 + 12 previous + 1 fresh.
        let after = searches_on_ledger(&mut his, &p).await;
        assert_eq!(after - before, 13 + 12 + 1, "one ledger entry per search request");
        let checks: Vec<(&str, &Value)> = pages.iter().map(|p| ("mhd-find-documentreferences-comprehensive-response", p)).collect();
        validate(&checks);
    });
}

/// Three documents of one patient that differ in every searchable element.
fn three_specs() -> Vec<Spec> {
    vec![
        Spec {
            date: "2024-05-17T10:00:00+02:00".into(),
            creation: "2024-05-16T12:00:00Z",
            related: Some("urn:oid:1.2.3.99"),
            ..Spec::new(1)
        },
        Spec {
            date: "2024-06-01T08:00:00Z".into(),
            creation: "2024-05-31",
            type_code: "11488-4",
            category: "47039-3",
            security: "R",
            facility: "225732001",
            setting: "394814009",
            event: "E-URGENT",
            period: (Some("2024-05-20"), None),
            author: ("Émile", "Zola"),
            format: "urn:ihe:pcc:xds-ms:2007",
            ..Spec::new(2)
        },
        Spec { date: "2023-12-31T23:00:00Z".into(), creation: "2023-12-30T00:00:00Z", period: (None, Some("2023-12-01")), author: ("Grace", "Hopper"), ..Spec::new(3) },
    ]
}

#[test]
fn every_search_parameter_has_a_match_and_a_miss() {
    let gw = Gw::new("mhd-params");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let p = patient(2);
        let ids = store(&mut his, &p, &three_specs(), 2).await;
        let id = |n: u32| ids.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        let q = query_escape(&p.canonical());
        let (d1, d2, d3) = (id(1), id(2), id(3));
        let read = his.get(&format!("/DocumentReference/{d1}")).await.unwrap().json();
        let entry_uuid = read["identifier"][0]["value"].as_str().unwrap().to_owned();
        let unique_id = read["masterIdentifier"]["value"].as_str().unwrap().to_owned();
        let last_updated = read["meta"]["lastUpdated"].as_str().unwrap()[..10].to_owned();
        let cases: Vec<(String, Vec<&String>)> = vec![
            ("status=current".into(), vec![&d1, &d2, &d3]),
            ("status=superseded".into(), vec![]),
            ("status=entered-in-error,current".into(), vec![&d1, &d2, &d3]),
            (format!("_id={d2}"), vec![&d2]),
            ("_id=0123456789abcdef0123456789abcdef".into(), vec![]),
            (format!("_lastUpdated=ge{last_updated}"), vec![&d1, &d2, &d3]),
            ("_lastUpdated=lt2000-01-01".into(), vec![]),
            (format!("identifier=urn:ietf:rfc:3986%7C{}", query_escape(&unique_id)), vec![&d1]),
            (format!("identifier={}", query_escape(&entry_uuid)), vec![&d1]),
            ("identifier=urn:ietf:rfc:3986%7Curn:oid:9.9.9".into(), vec![]),
            (format!("type={}", query_escape(&format!("{LOINC}|11488-4"))), vec![&d2]),
            ("type=00000-0".into(), vec![]),
            (format!("category={}", query_escape(&format!("{LOINC}|11369-6"))), vec![&d1, &d3]),
            ("category=99999-9".into(), vec![]),
            (format!("setting={}", query_escape(&format!("{SNOMED}|394814009"))), vec![&d2]),
            ("setting=1".into(), vec![]),
            ("facility=22232009".into(), vec![&d1, &d3]),
            ("facility=1".into(), vec![]),
            ("event=E-URGENT".into(), vec![&d2]),
            ("event=E-NONE".into(), vec![]),
            (format!("security-label={}", query_escape(&format!("{CONF}|R"))), vec![&d2]),
            ("security-label=V".into(), vec![]),
            ("security-label:not=R".into(), vec![&d1, &d3]),
            ("format=urn:ihe:pcc:xds-ms:2007".into(), vec![&d2]),
            ("format=urn:x".into(), vec![]),
            ("related:identifier=urn:ietf:rfc:3986%7Curn:oid:1.2.3.99".into(), vec![&d1]),
            ("related:identifier=urn:ietf:rfc:3986%7Curn:oid:1.2.3.98".into(), vec![]),
            ("related=DocumentReference/nothing".into(), vec![]),
            ("author.given=emil".into(), vec![&d2]),
            ("author.given=bob".into(), vec![]),
            ("author.family=HOP".into(), vec![&d3]),
            ("author.family:exact=Hop".into(), vec![]),
            ("author.family:contains=ov".into(), vec![&d1]),
            ("date=2024-05-17".into(), vec![&d1]),
            ("date=2024-05-18".into(), vec![]),
            ("creation=2024-05-31".into(), vec![&d2]),
            ("creation=2020".into(), vec![]),
            ("period=ge2030-01-01".into(), vec![&d2]),
            ("period=2025".into(), vec![]),
            ("type:missing=false".into(), vec![&d1, &d2, &d3]),
            ("related:missing=true".into(), vec![&d2, &d3]),
            // Several values OR, several parameters AND.
            ("facility=22232009&author.family=Lov,Hop".into(), vec![&d1, &d3]),
            ("facility=22232009&author.family=Zola".into(), vec![]),
        ];
        let mut bundles = vec![];
        for (params, want) in &cases {
            let r = his.get(&format!("/DocumentReference?patient.identifier={q}&{params}")).await.unwrap();
            assert_eq!(r.status, 200, "{params}: {}", String::from_utf8_lossy(&r.body));
            let b = r.json();
            let mut got = match_ids(&b);
            got.sort();
            let mut want: Vec<String> = want.iter().map(|s| (*s).clone()).collect();
            want.sort();
            assert_eq!(got, want, "{params}");
            assert_eq!(b["total"], want.len(), "{params}");
            assert!(b["entry"].as_array().is_none_or(|e| !e.iter().any(|e| e["search"]["mode"] == "outcome")), "{params}: nothing ignored: {b}");
            bundles.push(b);
        }
        // `patient` in its other spellings, and another patient's records never show.
        for form in [format!("patient:identifier={q}"), format!("patient={q}")] {
            let b = his.get(&format!("/DocumentReference?{form}")).await.unwrap().json();
            assert_eq!(b["total"], 3, "{form}");
        }
        let none = his.get(&format!("/DocumentReference?patient.identifier={}", query_escape(&patient(999).canonical()))).await.unwrap().json();
        assert_eq!(none["total"], 0);
        assert!(none.get("entry").is_none());
        bundles.push(none);
        let literal = his.get("/DocumentReference?patient=Patient/42").await.unwrap();
        assert_eq!(literal.status, 400, "{}", String::from_utf8_lossy(&literal.body));
        let checks: Vec<(&str, &Value)> = bundles.iter().map(|b| ("mhd-find-documentreferences-comprehensive-response", b)).collect();
        validate(&checks);
    });
}

#[test]
fn date_prefixes_compare_ranges() {
    let gw = Gw::new("mhd-dates");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let p = patient(3);
        // d1: 2024-05-17T08:00Z, d2: 2024-06-01T08:00Z, d3: 2023-12-31T23:00Z.
        let ids = store(&mut his, &p, &three_specs(), 3).await;
        let id = |n: u32| ids.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        let (d1, d2, d3) = (id(1), id(2), id(3));
        let q = query_escape(&p.canonical());
        let cases: Vec<(&str, Vec<&String>)> = vec![
            ("date=eq2024-05", vec![&d1]),
            ("date=ne2024-05", vec![&d2, &d3]),
            ("date=gt2024-05-17", vec![&d2]),
            ("date=ge2024-05-17", vec![&d1, &d2]),
            ("date=lt2024-05-17", vec![&d3]),
            ("date=le2024-05-17", vec![&d1, &d3]),
            ("date=ge2024-05-17T08:00:00Z", vec![&d1, &d2]),
            ("date=gt2024-05-17T08:00:00Z", vec![&d2]),
            ("date=lt2024-05-17T10:00:00%2B02:00", vec![&d3]),
            ("date=sa2024-01-01", vec![&d1, &d2]),
            ("date=eb2024-01-01", vec![&d3]),
            ("date=ge2024-01-01&date=lt2024-06-01", vec![&d1]),
            ("creation=ge2024-01-01&creation=lt2025-01-01", vec![&d1, &d2]),
            ("period=le2023-12-01", vec![&d3]),
            ("period=gt2024-02-10", vec![&d2]),
        ];
        let mut bundles = vec![];
        for (params, want) in &cases {
            let b = his.get(&format!("/DocumentReference?patient.identifier={q}&{params}")).await.unwrap().json();
            let mut got = match_ids(&b);
            got.sort();
            let mut want: Vec<String> = want.iter().map(|s| (*s).clone()).collect();
            want.sort();
            assert_eq!(got, want, "{params}");
            bundles.push(b);
        }
        for bad in ["date=xx2024", "date=2024-13", "date=ge2024-05-17T25:00", "creation=yesterday"] {
            let r = his.get(&format!("/DocumentReference?patient.identifier={q}&{bad}")).await.unwrap();
            assert_eq!(r.status, 400, "{bad}");
            assert_eq!(r.json()["issue"][0]["code"], "invalid", "{bad}");
            bundles.push(r.json());
        }
        let checks: Vec<(&str, &Value)> = bundles.iter().map(|b| ("r4", b)).collect();
        validate(&checks);
    });
}

#[test]
fn unsupported_parameters_are_reported_or_refused_under_strict_handling() {
    let gw = Gw::new("mhd-strict");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let p = patient(4);
        store(&mut his, &p, &three_specs()[..1], 4).await;
        let q = query_escape(&p.canonical());
        let lenient = his.get(&format!("/DocumentReference?patient.identifier={q}&status=current&bogus=1&_sort=title")).await.unwrap();
        assert_eq!(lenient.status, 200);
        let b = lenient.json();
        assert_eq!(b["total"], 1);
        let outcome = b["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").expect("an outcome entry");
        let text = outcome["resource"].to_string();
        assert!(text.contains("bogus") && text.contains("_sort"), "{text}");
        assert!(outcome["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
        let self_link = link(&b, "self").unwrap();
        assert!(!self_link.contains("bogus") && self_link.contains("status=current"), "the self link lists what was used: {self_link}");

        let strict = his.send("GET", &format!("/DocumentReference?patient.identifier={q}&status=current&bogus=1"), &[("prefer", "handling=strict")], vec![]).await.unwrap();
        assert_eq!(strict.status, 400);
        let oo = strict.json();
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(oo.to_string().contains("bogus"), "{oo}");
        let ok = his.send("GET", &format!("/DocumentReference?patient.identifier={q}&status=current"), &[("prefer", "handling=strict")], vec![]).await.unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(ok.headers["preference-applied"], "handling=strict");
        // The independent Consumer under strict handling.
        let report = actor(&gw, &["find", "--patient-identifier", &p.canonical(), "--prefer", "handling=strict", "--comprehensive"]);
        assert_eq!(report["ok"], true, "{report}");
        let report = actor(&gw, &["find", "--patient-identifier", &p.canonical(), "--prefer", "handling=strict", "--param", "bogus=1"]);
        assert_eq!(report["status"], 400, "{report}");
        validate(&[("mhd-find-documentreferences-comprehensive-response", &b), ("r4", &oo), ("mhd-find-documentreferences-comprehensive-response", &ok.json())]);
    });
}

#[test]
fn summary_elements_format_and_pretty() {
    let gw = Gw::new("mhd-summary");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let p = patient(5);
        let ids = store(&mut his, &p, &three_specs(), 5).await;
        let q = query_escape(&p.canonical());
        let count = his.get(&format!("/DocumentReference?patient.identifier={q}&status=current&_summary=count")).await.unwrap().json();
        assert_eq!(count["total"], 3);
        assert!(count.get("entry").is_none(), "{count}");
        let zero = his.get(&format!("/DocumentReference?patient.identifier={q}&_count=0")).await.unwrap().json();
        assert_eq!(zero["total"], 3);
        assert!(zero.get("entry").is_none());

        let elements = his.get(&format!("/DocumentReference?patient.identifier={q}&_elements=type,date")).await.unwrap().json();
        for e in elements["entry"].as_array().unwrap() {
            let r = &e["resource"];
            assert!(r.get("type").is_some() && r.get("date").is_some(), "{r}");
            assert!(r.get("description").is_none() && r.get("author").is_none() && r.get("contained").is_none(), "{r}");
            assert!(r.get("status").is_some() && r.get("content").is_some() && r.get("masterIdentifier").is_some(), "mandatory elements stay: {r}");
            assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
        }
        assert!(link(&elements, "self").unwrap().contains("_elements=type,date"));
        let summary = his.get(&format!("/DocumentReference?patient.identifier={q}&_summary=true")).await.unwrap().json();
        for e in summary["entry"].as_array().unwrap() {
            let r = &e["resource"];
            assert!(r.get("description").is_some() && r.get("custodian").is_none() && r.get("extension").is_none(), "{r}");
            assert!(r["context"].get("facilityType").is_none(), "{r}");
        }
        let data = his.get(&format!("/DocumentReference?patient.identifier={q}&_summary=data")).await.unwrap().json();
        assert_eq!(data["total"], 3);

        let pretty = his.get(&format!("/DocumentReference?patient.identifier={q}&_pretty=true&_format=json")).await.unwrap();
        assert!(String::from_utf8_lossy(&pretty.body).contains("\n  \"resourceType\""), "indented");
        assert_eq!(pretty.headers["content-type"], "application/fhir+json; charset=utf-8");
        let compact = his.get(&format!("/DocumentReference?patient.identifier={q}")).await.unwrap();
        assert!(!String::from_utf8_lossy(&compact.body).contains('\n'));
        for (path, accept) in [
            (format!("/DocumentReference?patient.identifier={q}&_format=xml"), None),
            (format!("/DocumentReference?patient.identifier={q}"), Some("application/fhir+xml")),
            ("/metadata?_format=application/fhir%2Bxml".to_owned(), None),
        ] {
            let headers: Vec<(&str, &str)> = accept.map(|a| vec![("accept", a)]).unwrap_or_default();
            let r = his.send("GET", &path, &headers, vec![]).await.unwrap();
            assert_eq!(r.status, 406, "{path} {accept:?}");
            assert_eq!(r.json()["issue"][0]["code"], "not-supported");
        }
        let ok = his.send("GET", &format!("/DocumentReference?patient.identifier={q}"), &[("accept", "application/fhir+json; fhirVersion=4.0")], vec![]).await.unwrap();
        assert_eq!(ok.status, 200);

        // Reads take _summary and _elements too.
        let read = his.get(&format!("/DocumentReference/{}?_elements=description", ids[0].1)).await.unwrap().json();
        assert!(read.get("description").is_some() && read.get("type").is_none() && read.get("status").is_some(), "{read}");
        validate(&[
            ("mhd-find-documentreferences-response", &count),
            ("mhd-find-documentreferences-response", &zero),
            // A subset keeps what MHD Minimal requires, not all that Comprehensive does.
            ("mhd-find-documentreferences-response", &elements),
            ("mhd-find-documentreferences-response", &summary),
            ("mhd-find-documentreferences-comprehensive-response", &data),
            ("mhd-find-documentreferences-comprehensive-response", &pretty.json()),
            ("mhd-minimal-document-reference", &read),
        ]);
    });
}

#[test]
fn retrieve_document_in_both_forms_with_etag_and_304() {
    let gw = Gw::new("mhd-retrieve");
    let rt = rt();
    let p = patient(6);
    let (id, content) = rt.block_on(async {
        let mut his = gw.client();
        let ids = store(&mut his, &p, &three_specs()[..1], 6).await;
        (ids[0].1.clone(), b"MHD read-side test document 1 of run 6".to_vec())
    });
    let url = format!("{}/Binary/{id}", base(&gw));
    let raw = actor(&gw, &["retrieve", &url]);
    assert_eq!(raw["ok"], true, "{raw}");
    assert_eq!(raw["status"], 200);
    assert_eq!(raw["content_type"], "text/plain");
    assert_eq!(raw["size"], content.len());
    assert_eq!(raw["etag"], "W/\"1\"");
    assert!(raw["last_modified"].as_str().unwrap().ends_with(" GMT"), "{raw}");
    for form in ["--fhir-json", "--format-json"] {
        let r = actor(&gw, &["retrieve", &url, form]);
        assert_eq!(r["ok"], true, "{form}: {r}");
        assert_eq!(r["binary_content_type"], "text/plain", "{r}");
        assert_eq!(r["size"], content.len());
        assert_eq!(r["sha1"], raw["sha1"], "the same bytes in both forms");
    }
    let cached = actor(&gw, &["retrieve", &url, "--if-none-match", "W/\"1\""]);
    assert_eq!(cached["ok"], true, "{cached}");
    assert_eq!(cached["status"], 304);
    let stale = actor(&gw, &["retrieve", &url, "--if-none-match", "W/\"0\""]);
    assert_eq!(stale["status"], 200);
    let refused = actor(&gw, &["retrieve", &url, "--accept", "image/png"]);
    assert_eq!(refused["status"], 406);

    rt.block_on(async {
        let mut his = gw.client();
        let fhir = his.send("GET", &format!("/Binary/{id}"), &[("accept", "application/fhir+json")], vec![]).await.unwrap();
        let binary = fhir.json();
        assert_eq!(binary["resourceType"], "Binary");
        assert_eq!(binary["id"], id.as_str());
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(binary["data"].as_str().unwrap()).unwrap(), content);
        assert_eq!(fhir.headers["etag"], "W/\"1\"");
        let pretty = his.send("GET", &format!("/Binary/{id}?_format=json&_pretty=true"), &[], vec![]).await.unwrap();
        assert!(String::from_utf8_lossy(&pretty.body).contains('\n'));
        assert_eq!(pretty.json(), binary);
        // A summary leaves the document out (and the gateway wipes the copy it set aside).
        let summary = his.send("GET", &format!("/Binary/{id}?_format=json&_summary=true"), &[], vec![]).await.unwrap().json();
        assert_eq!((summary["resourceType"].as_str(), summary["contentType"].as_str()), (Some("Binary"), binary["contentType"].as_str()));
        assert!(summary.get("data").is_none(), "{summary}");
        let unknown = his.get("/Binary/0123456789abcdef0123456789abcdef").await.unwrap();
        assert_eq!(unknown.status, 404);
        // Every access is on the ledger: 2 raw + 2 FHIR (actor) + 1 stale + 1 + 1 + 1 (here)
        // reads, and the 304 as a not-modified read; the 406 recorded nothing.
        let audit = his.get(&format!("/AuditEvent?patient.identifier={}&_count=1000", query_escape(&p.canonical()))).await.unwrap().json();
        let reads: Vec<String> = audit["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["subtype"][0]["code"] == "ITI-68")
            .map(|e| e["resource"]["outcomeDesc"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(reads.iter().filter(|d| d.as_str() == "granted").count(), 7, "{reads:?}");
        assert_eq!(reads.iter().filter(|d| d.contains("not-modified")).count(), 1, "{reads:?}");
        validate(&[("r4", &binary), ("r4", &pretty.json()), ("r4", &summary), ("r4", &unknown.json()), ("r4", &audit)]);
    });
}

#[test]
fn the_capability_statement_lists_what_is_served() {
    // A public base URL with a path: the gateway serves under it (and at the root).
    let gw = Gw::with_config("mhd-metadata", |t| {
        t.lines().map(|l| if l.starts_with("public_base_url") { format!("{}/fhir\"", l.trim_end_matches('"')) } else { l.to_owned() }).collect::<Vec<_>>().join("\n")
    });
    let fhir_base = format!("{}/fhir", base(&gw));
    let report = actor_at(&gw, &fhir_base, &["metadata"]);
    let cs = &report["resource"];
    assert_eq!(cs["kind"], "instance", "{report}");
    assert_eq!(cs["implementation"]["url"], fhir_base.as_str());
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let dr = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "DocumentReference").unwrap();
    let names: Vec<&str> = dr["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in ["patient", "patient.identifier", "status", "creation", "date", "author.given", "author.family", "category", "type", "setting", "period", "facility", "event", "security-label", "format", "related", "identifier", "_id", "_lastUpdated"] {
        assert!(names.contains(&want), "{want} listed: {names:?}");
    }
    let binary = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Binary").unwrap();
    assert_eq!(binary["interaction"][0]["code"], "read");
    assert_eq!(report["ok"], true, "the statement passes as R4, MHD Document Recipient and Responder: {report}");
    let list = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "List").unwrap();
    let names: Vec<&str> = list["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in ["patient", "patient.identifier", "code", "status", "date", "identifier", "designationType", "sourceId", "source.given", "source.family", "_id", "_lastUpdated"] {
        assert!(names.contains(&want), "{want} listed: {names:?}");
    }
    validate(&[("capability-statement", cs), ("mhd-document-recipient-capability", cs), ("mhd-document-responder-capability", cs)]);
    rt().block_on(async {
        let mut his = gw.client();
        let at_root = his.get("/metadata?_pretty=true").await.unwrap();
        assert_eq!(at_root.status, 200);
        assert_eq!(at_root.json()["implementation"]["url"], fhir_base.as_str());
        let summary = his.get("/fhir/metadata?_summary=true").await.unwrap();
        assert_eq!(summary.status, 200);
        validate(&[("capability-statement", &summary.json())]);
    });
}

#[test]
fn find_lists_by_every_parameter() {
    let gw = Gw::new("mhd-lists");
    let rt = rt();
    let p = patient(9);
    let (l1, l2, lists) = rt.block_on(async {
        let mut his = gw.client();
        store_with(&mut his, &p, &three_specs()[..1], 9, &SET).await;
        let other = SetSpec { source_id: "urn:oid:1.2.3.4.5", designation: "18842-5", date: "2024-06-02T12:00:00Z", author: ("Grace", "Hopper") };
        store_with(&mut his, &p, &three_specs()[1..2], 10, &other).await;
        store(&mut his, &patient(10), &three_specs()[2..], 11).await;
        let q = query_escape(&p.canonical());
        let all = his.get(&format!("/List?patient.identifier={q}&code=submissionset&status=current")).await.unwrap().json();
        assert_eq!(all["total"], 2, "{all}");
        let by_date = |d: &str| {
            all["entry"].as_array().unwrap().iter().find(|e| e["resource"]["date"] == d).unwrap()["resource"].clone()
        };
        (by_date(SET.date), by_date("2024-06-02T12:00:00Z"), all)
    });
    let (id1, id2) = (l1["id"].as_str().unwrap().to_owned(), l2["id"].as_str().unwrap().to_owned());
    assert_eq!(match_ids(&lists), [id2.clone(), id1.clone()], "newest first");
    let unique1 = l1["identifier"].as_array().unwrap().iter().find(|i| i["use"] == "usual").unwrap()["value"].as_str().unwrap().to_owned();

    // The independent Consumer: ITI-66 as MHD writes it, GET and POST, paged one by one.
    let pid = p.canonical();
    for extra in [&[][..], &["--post"][..], &["--count", "1"][..]] {
        let mut args = vec!["find-lists", "--patient-identifier", &pid, "--code", "submissionset"];
        args.extend_from_slice(extra);
        let report = actor(&gw, &args);
        assert_eq!(report["ok"], true, "{extra:?}: {report}");
        assert_eq!(report["total"], json!([2]), "{report}");
        let mut got: Vec<String> = report["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        got.sort();
        let mut want = vec![id1.clone(), id2.clone()];
        want.sort();
        assert_eq!(got, want);
    }

    rt.block_on(async {
        let mut his = gw.client();
        let q = query_escape(&pid);
        let cases: Vec<(String, Vec<&String>)> = vec![
            ("code=submissionset".into(), vec![&id1, &id2]),
            ("code=folder".into(), vec![]),
            ("code=https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes%7Csubmissionset".into(), vec![&id1, &id2]),
            ("status=current".into(), vec![&id1, &id2]),
            ("status=retired".into(), vec![]),
            ("date=ge2024-06-01".into(), vec![&id2]),
            ("date=lt2024-03-01".into(), vec![]),
            ("date=2024-03-01".into(), vec![&id1]),
            (format!("identifier=urn:ietf:rfc:3986%7C{}", query_escape(&unique1)), vec![&id1]),
            ("identifier=urn:ietf:rfc:3986%7Curn:oid:9.9".into(), vec![]),
            (format!("designationType={}", query_escape(&format!("{LOINC}|18842-5"))), vec![&id2]),
            ("designationType=00000-0".into(), vec![]),
            ("sourceId=urn:oid:1.2.3.4.5".into(), vec![&id2]),
            ("sourceId=urn:oid:7.7".into(), vec![]),
            ("source-identifier=urn:oid:1.3.6.1.4.1.21367.13.80.110".into(), vec![&id1]),
            ("source.given=gra".into(), vec![&id2]),
            ("source.given=bob".into(), vec![]),
            ("source.family=lovelace".into(), vec![&id1]),
            ("source.family=Turing".into(), vec![]),
            (format!("_id={id1}"), vec![&id1]),
            ("_id=ffff".into(), vec![]),
            ("_lastUpdated=ge2000-01-01".into(), vec![&id1, &id2]),
            ("_lastUpdated=lt2000-01-01".into(), vec![]),
        ];
        let mut bundles = vec![];
        for (params, want) in &cases {
            let r = his.get(&format!("/List?patient.identifier={q}&{params}")).await.unwrap();
            assert_eq!(r.status, 200, "{params}: {}", String::from_utf8_lossy(&r.body));
            let b = r.json();
            let mut got = match_ids(&b);
            got.sort();
            let mut want: Vec<String> = want.iter().map(|s| (*s).clone()).collect();
            want.sort();
            assert_eq!(got, want, "{params}");
            bundles.push(b);
        }
        let other = his.get(&format!("/List?patient.identifier={}&code=submissionset", query_escape(&patient(10).canonical()))).await.unwrap().json();
        assert_eq!(other["total"], 1, "another patient's list is not this one's");
        assert!(!match_ids(&other).contains(&id1) && !match_ids(&other).contains(&id2));
        let strict = his.send("GET", &format!("/List?patient.identifier={q}&code=submissionset&title=x"), &[("prefer", "handling=strict")], vec![]).await.unwrap();
        assert_eq!(strict.status, 400);
        let read = his.get(&format!("/List/{id1}")).await.unwrap().json();
        bundles.push(other);
        let mut checks: Vec<(&str, &Value)> = bundles.iter().map(|b| ("mhd-find-lists-response", b)).collect();
        checks.push(("mhd-comprehensive-submissionset-list", &read));
        checks.push(("mhd-find-lists-response", &lists));
        validate(&checks);
    });
}

#[test]
fn superseded_and_entered_in_error_documents_in_searches() {
    let gw = Gw::new("mhd-status");
    let rt = rt();
    let p = patient(11);
    let ids = rt.block_on(async {
        let mut his = gw.client();
        store(&mut his, &p, &three_specs(), 12).await
    });
    let id = |n: u32| ids.iter().find(|(k, _)| *k == n).unwrap().1.clone();
    let (d1, d2, d3) = (id(1), id(2), id(3));
    // d1 is replaced by a new document (an MHD Source's replacement, with its PATCH entry);
    // d2 is marked entered in error by the custodian.
    let replaced = actor(&gw, &["provide", "--patient", &p.canonical(), "--replaces", &d1]);
    assert_eq!(replaced["ok"], true, "{replaced}");
    // The answer's locations: the List, the PATCHed old DocumentReference, the new one, its Binary.
    let new = replaced["locations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str()?.strip_prefix("DocumentReference/")?.split('/').next())
        .find(|id| *id != d1)
        .unwrap()
        .to_owned();
    rt.block_on(async {
        let mut his = gw.client();
        let patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "entered-in-error"}]}]});
        let r = his.send("PATCH", &format!("/DocumentReference/{d2}"), &[], serde_json::to_vec(&patch).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let q = query_escape(&p.canonical());
        let cases: Vec<(&str, Vec<&String>)> = vec![
            ("status=current", vec![&d3, &new]),
            ("status=superseded", vec![&d1]),
            ("status=current,superseded", vec![&d1, &d3, &new]),
            ("", vec![&d1, &d3, &new]),
            ("status=entered-in-error", vec![&d2]),
            ("status:not=current", vec![&d1]),
        ];
        let mut bundles = vec![];
        for (params, want) in &cases {
            let b = his.get(&format!("/DocumentReference?patient.identifier={q}&{params}")).await.unwrap().json();
            let mut got = match_ids(&b);
            got.sort();
            let mut want: Vec<String> = want.iter().map(|s| (*s).clone()).collect();
            want.sort();
            assert_eq!(got, want, "{params}");
            if !params.contains("entered-in-error") {
                bundles.push(b);
            }
        }
        // The replacement names what it replaces.
        let b = his.get(&format!("/DocumentReference?patient.identifier={q}&_id={new}")).await.unwrap().json();
        assert_eq!(b["entry"][0]["resource"]["relatesTo"][0]["code"], "replaces", "{b}");
        let checks: Vec<(&str, &Value)> = bundles.iter().map(|b| ("mhd-find-documentreferences-response", b)).collect();
        validate(&checks);
    });
}

/// Search latency, printed (not asserted): one patient with 25 documents, one with 1000.
#[test]
fn search_latency_for_25_and_1000_documents_is_printed() {
    let gw = Gw::new("mhd-latency");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        for (n, docs) in [(7u32, 25u32), (8, 1000)] {
            let p = patient(n);
            let specs: Vec<Spec> = (0..docs).map(Spec::new).collect();
            store(&mut his, &p, &specs, n).await;
            let q = query_escape(&p.canonical());
            for (what, params) in [
                ("status=current, first page of 2", "status=current&_count=2"),
                ("status=current&type=..., first page of 100", "status=current&type=34133-9"),
                ("_summary=count", "_summary=count"),
            ] {
                let mut times = vec![];
                for _ in 0..5 {
                    let started = Instant::now();
                    let r = his.get(&format!("/DocumentReference?patient.identifier={q}&{params}")).await.unwrap();
                    times.push(started.elapsed());
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["total"], docs);
                }
                times.sort();
                println!("search latency, {docs} documents, {what}: median {:?}, min {:?}, max {:?}", times[2], times[0], times[4]);
            }
        }
    });
}
