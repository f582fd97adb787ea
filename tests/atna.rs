//! IHE ATNA audit export through a running gateway (standalone) to a real rsyslog with its TLS
//! driver as the hospital's audit record repository, mutual TLS with the gateway's HSM `tls` key.
//! What rsyslog wrote is read with independent parsers (syslog_rfc5424, roxmltree).

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use medgate::client::query_escape;
use medgate_fhir::{sample_transaction, PatientId};
use support::rsyslog::Rsyslog;
use support::{created_id, rt, Gw};

const HOSTNAME: &str = "gw1.hospital-a.test";
const ARR_NAME: &str = "arr.test";

/// The patient as the HIS knows them: never to reach the repository.
fn patient() -> PatientId {
    PatientId { system: "urn:oid:2.16.756.5.30.1.123.100.1.1.1".into(), value: "PAT-7734-1962".into() }
}

/// A gateway whose audit repository is a fresh rsyslog, both on loopback. The hospital CA issues
/// the repository's certificate; the gateway's own certificate (its HSM tls key, DNS name
/// "localhost") is the one client rsyslog permits.
fn site_with_repository(name: &str) -> (Gw, Rsyslog, tempfile::TempDir) {
    let arr_dir = tempfile::Builder::new().prefix(&format!("medgate-test-{name}-arr-")).tempdir().unwrap();
    let (site, dir) = support::site(name);
    let (cert, key) = site.ca.issue_server(ARR_NAME).unwrap();
    let arr = Rsyslog::start(arr_dir.path(), &site.ca_pem, &cert.pem(), &key.serialize_pem(), "localhost");
    let text = std::fs::read_to_string(&site.config).unwrap();
    let atna = format!(
        // The outage test sends 1000 searches from one certificate as fast as the machine
        // allows: the per-client rate limit is not what it tests.
        "\n[atna]\nenabled = true\nrepository = \"{}\"\nserver_name = \"{ARR_NAME}\"\nca = \"{}\"\nhostname = \"{HOSTNAME}\"\nlinger_ms = 50\nretry_max_secs = 1\n\n[limits]\nrequests_per_second_per_client = 1000000\nburst_per_client = 1000000\n",
        arr.address(),
        site.dir.join("tls/hospital-ca.pem").display()
    );
    std::fs::write(&site.config, text + &atna).unwrap();
    let mut gw = Gw::prepared(site, dir);
    gw.start();
    (gw, arr, arr_dir)
}

/// One received line, parsed with the independent parsers.
struct Received {
    sequence_id: u64,
    entry_id: String,
    position: (u64, u32),
    event_id: String,
    action: String,
    outcome: String,
}

fn parse(line: &str) -> Received {
    let m = syslog_rfc5424::parse_message(line).unwrap_or_else(|e| panic!("not RFC 5424 ({e}): {line}"));
    assert_eq!(m.facility, syslog_rfc5424::SyslogFacility::LOG_AUTHPRIV, "{line}");
    assert_eq!(m.version, 1);
    assert_eq!(m.hostname.as_deref(), Some(HOSTNAME));
    assert_eq!(m.appname.as_deref(), Some("medgate"));
    assert_eq!(m.msgid.as_deref(), Some("IHE+RFC-3881"));
    let sequence_id: u64 = m.sd.find_tuple("meta", "sequenceId").unwrap().parse().unwrap();
    let xml = m.msg.trim_start_matches('\u{feff}').to_owned();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("not XML ({e}): {xml}"));
    assert_eq!(doc.root_element().tag_name().name(), "AuditMessage");
    let ledger = doc
        .descendants()
        .find(|n| n.has_tag_name("ParticipantObjectIdentification") && n.children().any(|c| c.has_tag_name("ParticipantObjectIDTypeCode") && c.attribute("csd-code") == Some("ledger-entry")))
        .unwrap_or_else(|| panic!("no ledger entry object: {xml}"));
    let entry_id = ledger.attribute("ParticipantObjectID").unwrap().to_owned();
    let raw = ledger.children().find(|c| c.attribute("type") == Some("ledger-position")).and_then(|c| c.attribute("value")).unwrap();
    let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).unwrap()).unwrap();
    let (h, i) = text.split_once(':').unwrap();
    let ident = doc.descendants().find(|n| n.has_tag_name("EventIdentification")).unwrap();
    let event_id = ident.children().find(|c| c.has_tag_name("EventID")).and_then(|c| c.attribute("csd-code")).unwrap().to_owned();
    Received {
        sequence_id,
        entry_id,
        position: (h.parse().unwrap(), i.parse().unwrap()),
        event_id,
        action: ident.attribute("EventActionCode").unwrap().to_owned(),
        outcome: ident.attribute("EventOutcomeIndicator").unwrap().to_owned(),
    }
}

/// The distinct messages in the order they first arrived; every repeat must be byte for byte the
/// first copy (same sequence number, same entry id), so the repository can drop it.
fn distinct(lines: &[String]) -> Vec<Received> {
    let mut first: HashMap<u64, &String> = HashMap::new();
    let mut out = Vec::new();
    for l in lines {
        let r = parse(l);
        match first.get(&r.sequence_id) {
            Some(prev) => assert_eq!(*prev, l, "a repeat is identical to the first copy"),
            None => {
                first.insert(r.sequence_id, l);
                out.push(r);
            }
        }
    }
    out
}

/// Waits until the repository has `n` distinct messages.
fn wait_distinct(arr: &Rsyslog, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = distinct(&arr.received());
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{} of {n} audit messages arrived:\n{}", got.len(), arr.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn in_ledger_order(got: &[Received]) {
    for w in got.windows(2) {
        assert!(w[1].sequence_id == w[0].sequence_id + 1, "sequence numbers follow each other: {} then {}", w[0].sequence_id, w[1].sequence_id);
        assert!(w[1].position > w[0].position, "ledger order: {:?} then {:?}", w[0].position, w[1].position);
    }
}

async fn store(gw: &Gw) -> String {
    let mut his = gw.client();
    let r = his.post_json("/", &sample_transaction(&patient(), "text/plain", b"Discharge letter: Roe^Jane", None), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    created_id(&r.json())
}

#[test]
fn every_audited_access_and_key_event_reaches_the_repository_without_a_patient_identifier() {
    let (gw, arr, _arr_dir) = site_with_repository("atna-events");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let id = store(&gw).await;
        let q = format!("/DocumentReference?patient={}", query_escape(&patient().canonical()));
        assert_eq!(his.get(&q).await.unwrap().status, 200);
        assert_eq!(his.get(&format!("/Binary/{id}")).await.unwrap().status, 200);
        let del = his.send("DELETE", &format!("/DocumentReference/{id}"), &[], Vec::new()).await.unwrap();
        assert_eq!(del.status, 204);
    });
    // Store (the document and its SubmissionSet, both ITI-65 imports), search, read, erase, then
    // the shred pass's key events (KEK rotated, old version destroyed), all in ledger order.
    let got = wait_distinct(&arr, 7);
    in_ledger_order(&got);
    let kinds: Vec<(&str, &str)> = got.iter().map(|r| (r.event_id.as_str(), r.action.as_str())).collect();
    assert_eq!(&kinds[..5], &[("110107", "C"), ("110107", "C"), ("110112", "E"), ("110106", "R"), ("110110", "D")], "{kinds:?}");
    let raw = arr.received().join("\n");
    assert!(raw.contains("ParticipantObjectTypeCodeRole=\"20\""), "the SubmissionSet is reported as a Job");
    assert!(kinds[5..].iter().all(|k| *k == ("110113", "E")), "key events follow: {kinds:?}");
    assert!(got.iter().all(|r| r.outcome == "0" && r.entry_id.len() == 64));
    for secret in ["PAT-7734-1962", "2.16.756.5.30.1.123.100.1.1.1", "Roe^Jane", "Discharge letter", "dr.house"] {
        assert!(!raw.contains(secret), "{secret} reached the audit repository");
    }
    assert_eq!(gw.metric("medgate_atna_up"), Some(1.0));
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.metric("medgate_atna_queue_depth") != Some(0.0) {
        assert!(Instant::now() < deadline, "the queue drains once the repository confirmed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gw.metric("medgate_atna_sent_total").unwrap() >= 7.0);
}

#[test]
fn a_repository_down_for_1000_events_gets_them_all_in_order_when_it_returns() {
    let (gw, mut arr, _arr_dir) = site_with_repository("atna-outage");
    let rt = rt();
    rt.block_on(store(&gw));
    let before = wait_distinct(&arr, 1).len();
    arr.stop();
    // 1000 searches while the repository is down, from 8 HIS connections.
    rt.block_on(async {
        let q = format!("/DocumentReference?patient={}", query_escape(&patient().canonical()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut his = gw.client();
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..125 {
                    assert_eq!(his.get(&q).await.unwrap().status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    // All 1000 wait in the queue (none confirmed: the repository is down), with their age shown.
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.metric("medgate_atna_queue_depth").unwrap_or(0.0) < 1000.0 {
        assert!(Instant::now() < deadline, "1000 events queued; depth {:?}", gw.metric("medgate_atna_queue_depth"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gw.metric("medgate_atna_oldest_message_age_seconds").is_some());
    assert!(gw.metric("medgate_atna_failures_total").unwrap_or(0.0) >= 1.0);
    arr.restart();
    let got = wait_distinct(&arr, before + 1000);
    assert_eq!(got.len(), before + 1000, "no event twice under two sequence numbers");
    in_ledger_order(&got);
    assert!(got[before..].iter().all(|r| r.event_id == "110112"), "the 1000 searches");
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.entry_id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "each ledger entry once");
}
