//! The exporter against a real syslog server: rsyslog with its GnuTLS driver as the audit record
//! repository, mutual TLS with rcgen certificates, on a free loopback port. What rsyslog wrote is
//! parsed with an independent RFC 5424 parser and an independent XML parser.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medgate_atna::{Config, Exporter, FileQueue, LedgerSource, TlsClient};
use support::{event, shared_ledger, until, MemLedger, Pki, Rsyslog, PATIENT_IDENTIFIER, PATIENT_NAME, SERVER_NAME};

fn config(repository: &str) -> Config {
    let mut c = Config::new(repository, "gw1.hospital-a.test", "hospital-a");
    // Short delays keep the tests quick; the tests wait on what they observe, not on these.
    c.retry_min = Duration::from_millis(50);
    c.retry_max = Duration::from_millis(200);
    c.linger = Duration::from_millis(50);
    c
}

fn tls(pki: &Pki, server_name: &str, identity: &support::Issued) -> TlsClient {
    TlsClient::new(pki.ca_pem.as_bytes(), server_name, Pki::identity(identity)).unwrap()
}

async fn exporter(pki: &Pki, rsyslog: &Rsyslog, queue_dir: &Path, capacity: u64, ledger: &Arc<MemLedger>) -> Exporter {
    let queue = FileQueue::open(queue_dir, capacity).unwrap();
    let source: Arc<dyn LedgerSource> = ledger.clone();
    Exporter::start(config(&rsyslog.address()), tls(pki, SERVER_NAME, &pki.client), Box::new(queue), source).await.unwrap()
}

/// Commits `range` as blocks of `per_block` events and offers each block, as the gateway does.
fn commit_and_offer(ledger: &MemLedger, exporter: Option<&Exporter>, range: std::ops::Range<u64>, per_block: usize) {
    let all: Vec<u64> = range.collect();
    for chunk in all.chunks(per_block) {
        let (height, offered) = ledger.commit(chunk.iter().map(|n| event(*n)).collect());
        if let Some(x) = exporter {
            x.offer(height, offered);
        }
    }
}

/// One received line, parsed.
struct Received {
    line: String,
    sequence_id: u64,
    entry_id: String,
    xml: String,
}

fn parse(line: &str) -> Received {
    let m = syslog_rfc5424::parse_message(line).unwrap_or_else(|e| panic!("not RFC 5424 ({e}): {line}"));
    assert_eq!(m.facility, syslog_rfc5424::SyslogFacility::LOG_AUTHPRIV, "{line}");
    assert_eq!(m.version, 1);
    assert_eq!(m.hostname.as_deref(), Some("gw1.hospital-a.test"));
    assert_eq!(m.appname.as_deref(), Some("medgate"));
    assert_eq!(m.msgid.as_deref(), Some("IHE+RFC-3881"));
    assert_eq!(m.sd.find_tuple("origin", "software").map(String::as_str), Some("medgate"));
    let sequence_id: u64 = m.sd.find_tuple("meta", "sequenceId").unwrap().parse().unwrap();
    assert!(line.contains(" \u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?><AuditMessage>"), "MSG is a UTF-8 XML document after a BOM: {line}");
    let xml = m.msg.trim_start_matches('\u{feff}').to_owned();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("not XML ({e}): {xml}"));
    let entry_id = doc
        .descendants()
        .find(|n| n.has_tag_name("ParticipantObjectIdentification") && n.children().any(|c| c.has_tag_name("ParticipantObjectIDTypeCode") && c.attribute("csd-code") == Some("ledger-entry")))
        .and_then(|n| n.attribute("ParticipantObjectID"))
        .unwrap_or_else(|| panic!("no ledger entry object: {xml}"))
        .to_owned();
    let severity = m.severity as i32;
    let failure = doc.descendants().find(|n| n.has_tag_name("EventIdentification")).and_then(|n| n.attribute("EventOutcomeIndicator")) != Some("0");
    assert_eq!(severity, if failure { 4 } else { 5 }, "severity 5 for success, 4 for failure: {line}");
    Received { line: line.to_owned(), sequence_id, entry_id, xml }
}

/// Checks that the received lines hold exactly the events `expected`, in order, and that every
/// repeat is byte for byte a copy of the first (same sequence number, same entry id), so the
/// repository can drop it. Returns the number of repeats.
fn check_in_order(lines: &[String], expected: &[u64]) -> usize {
    let mut first: HashMap<String, String> = HashMap::new();
    let mut order = Vec::new();
    let mut repeats = 0;
    let mut last_seq = 0;
    for line in lines {
        let r = parse(line);
        match first.get(&r.entry_id) {
            Some(prev) => {
                assert_eq!(prev, &r.line, "a repeat must be identical to the first copy");
                repeats += 1;
            }
            None => {
                assert!(r.sequence_id > last_seq, "new messages arrive in sequence order: {} after {last_seq}", r.sequence_id);
                last_seq = r.sequence_id;
                first.insert(r.entry_id.clone(), r.line.clone());
                order.push(r.entry_id);
            }
        }
    }
    let want: Vec<String> = expected.iter().map(|n| format!("{n:064x}")).collect();
    assert_eq!(order.len(), want.len(), "distinct messages received");
    assert!(order == want, "the events arrived in ledger order");
    repeats
}

fn attr<'a>(doc: &'a roxmltree::Document<'a>, tag: &str, attr: &str) -> Vec<&'a str> {
    doc.descendants().filter(|n| n.has_tag_name(tag)).filter_map(|n| n.attribute(attr)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_messages_arrive_as_rfc_5424_with_the_dicom_content_and_no_patient_identifier() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    let ledger = shared_ledger();
    let x = exporter(&pki, &rsyslog, &tmp.path().join("queue"), 1000, &ledger).await;
    commit_and_offer(&ledger, Some(&x), 0..9, 9);
    let lines = rsyslog.wait_for(9);
    check_in_order(&lines, &(0..9).collect::<Vec<_>>());

    // (EventID, action, outcome, event type codes) per kind, as in src/dicom.rs's table.
    let want: [(&str, &str, &str, &[&str]); 9] = [
        ("110107", "C", "0", &["ITI-65"]),
        ("110112", "E", "0", &["ITI-67"]),
        ("110106", "R", "0", &["ITI-68"]),
        ("110106", "R", "4", &["ITI-68"]),
        ("110106", "R", "0", &["ITI-68", "110127"]),
        ("110110", "D", "0", &["delete"]),
        ("110110", "C", "0", &["create"]),
        ("110110", "U", "0", &["update"]),
        ("110113", "E", "0", &["110129", "key-rotate"]),
    ];
    for (line, (id, action, outcome, types)) in lines.iter().zip(want) {
        let r = parse(line);
        let doc = roxmltree::Document::parse(&r.xml).unwrap();
        assert_eq!(attr(&doc, "EventID", "csd-code"), vec![id], "{}", r.xml);
        assert_eq!(attr(&doc, "EventIdentification", "EventActionCode"), vec![action], "{}", r.xml);
        assert_eq!(attr(&doc, "EventIdentification", "EventOutcomeIndicator"), vec![outcome], "{}", r.xml);
        assert_eq!(attr(&doc, "EventTypeCode", "csd-code"), types, "{}", r.xml);
        assert_eq!(attr(&doc, "AuditSourceIdentification", "AuditEnterpriseSiteID"), vec!["hospital-a"]);
        // The patient, where there is one, is the pseudonym, typed as an anonymous identifier.
        for p in doc.descendants().filter(|n| n.attribute("ParticipantObjectTypeCodeRole") == Some("1")) {
            let id = p.attribute("ParticipantObjectID").unwrap();
            assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "patient object is a pseudonym: {id}");
            assert_eq!(p.children().find(|c| c.has_tag_name("ParticipantObjectIDTypeCode")).and_then(|c| c.attribute("csd-code")), Some("ANON"));
            assert!(!p.children().any(|c| c.has_tag_name("ParticipantObjectName")), "no patient name");
        }
        // Users appear as pseudonyms (or, for key events, the officer's id).
        for u in doc.descendants().filter(|n| n.has_tag_name("ActiveParticipant") && n.attribute("UserIsRequestor") == Some("true")) {
            let id = u.attribute("UserID").unwrap();
            assert!(id == "officer-1" || id.bytes().all(|b| b.is_ascii_hexdigit()), "user is a pseudonym: {id}");
        }
    }
    println!("a refused read as received:\n{}", lines[3]);
    let denied = parse(&lines[3]);
    assert!(denied.xml.contains("<EventOutcomeDescription>no-consent</EventOutcomeDescription>"), "{}", denied.xml);
    let glass = parse(&lines[4]);
    assert!(glass.xml.contains("<PurposeOfUse csd-code=\"BTG\""), "{}", glass.xml);

    // Nothing the HIS knew about the patient reached the repository or the queue files.
    let received = lines.join("\n");
    for secret in [PATIENT_IDENTIFIER, "PAT-7734-1962", PATIENT_NAME, "Jane"] {
        assert!(!received.contains(secret), "{secret} reached the repository");
    }
    for f in std::fs::read_dir(tmp.path().join("queue")).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(PATIENT_IDENTIFIER.len()).any(|w| w == PATIENT_IDENTIFIER.as_bytes()));
    }
    until("the queue drains", || x.stats().queue_depth == 0).await;
    let s = x.stats();
    assert_eq!((s.sent_total, s.rejected_total, s.catching_up), (9, 0, false), "{s:?}");
    x.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_while_the_repository_is_down_all_arrive_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    let ledger = shared_ledger();
    let x = exporter(&pki, &rsyslog, &tmp.path().join("queue"), 10_000, &ledger).await;
    commit_and_offer(&ledger, Some(&x), 0..5, 5);
    rsyslog.wait_for(5);
    until("the first session is confirmed", || x.stats().sent_total == 5).await;

    rsyslog.stop();
    let failed_before = x.stats().failed_total;
    commit_and_offer(&ledger, Some(&x), 5..1005, 10);
    until("1000 messages wait in the queue", || x.stats().queue_depth == 1000).await;
    until("the exporter has found the repository down", || x.stats().failed_total > failed_before).await;
    let s = x.stats();
    assert!(s.oldest_age.is_some() && s.last_error.is_some() && !s.connected, "{s:?}");
    assert_eq!(rsyslog.received().len(), 5, "nothing arrives while the repository is down");

    rsyslog.restart();
    until("the queue drains", || x.stats().queue_depth == 0).await;
    let lines = rsyslog.wait_for(1005);
    let repeats = check_in_order(&lines, &(0..1005).collect::<Vec<_>>());
    let s = x.stats();
    println!("1000 events across an outage: {} lines received, {repeats} repeats (identical, detectable), {} failed attempts, {s:?}", lines.len(), s.failed_total);
    assert_eq!(s.sent_total as usize, lines.len(), "every message written in a confirmed session was received");
    x.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_by_the_repository_is_sent_again_and_the_repeats_are_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    let ledger = shared_ledger();
    let queue = FileQueue::open(&tmp.path().join("queue"), 1000).unwrap();
    let source: Arc<dyn LedgerSource> = ledger.clone();
    let mut c = config(&rsyslog.address());
    // The session stays open after its messages, so the repository's stop cuts it before the
    // close handshake that would have confirmed them.
    c.linger = Duration::from_secs(600);
    let x = Exporter::start(c, tls(&pki, SERVER_NAME, &pki.client), Box::new(queue), source).await.unwrap();
    commit_and_offer(&ledger, Some(&x), 0..5, 5);
    rsyslog.wait_for(5);
    assert_eq!(x.stats().sent_total, 0, "received but not yet confirmed");
    rsyslog.stop();
    until("the cut session is counted", || x.stats().failed_total >= 1).await;
    commit_and_offer(&ledger, Some(&x), 5..20, 5);
    rsyslog.restart();
    // The new session lingers too; what it wrote shows in the file.
    let lines = rsyslog.wait_for(25);
    let repeats = check_in_order(&lines, &(0..20).collect::<Vec<_>>());
    assert_eq!(repeats, 5, "the unconfirmed messages came again, identical");
    assert_eq!(x.stats().resent_total, 5);
    x.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_and_the_ledger_carry_events_across_a_gateway_restart_while_the_repository_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    let ledger = shared_ledger();
    let queue_dir = tmp.path().join("queue");
    let x = exporter(&pki, &rsyslog, &queue_dir, 10_000, &ledger).await;
    commit_and_offer(&ledger, Some(&x), 0..10, 10);
    rsyslog.wait_for(10);
    until("the first session is confirmed", || x.stats().sent_total == 10).await;
    rsyslog.stop();
    commit_and_offer(&ledger, Some(&x), 10..510, 25);
    until("500 messages wait in the queue", || x.stats().queue_depth == 500).await;
    x.shutdown().await;
    drop(x);

    // While the gateway is down, more entries reach the ledger; nobody offers them.
    commit_and_offer(&ledger, None, 510..1010, 50);

    let x = exporter(&pki, &rsyslog, &queue_dir, 10_000, &ledger).await;
    until("the restarted exporter queues the ledger's new entries after the old ones", || x.stats().queue_depth == 1000 && !x.stats().catching_up).await;
    rsyslog.restart();
    until("the queue drains", || x.stats().queue_depth == 0).await;
    let lines = rsyslog.wait_for(1010);
    let repeats = check_in_order(&lines, &(0..1010).collect::<Vec<_>>());
    println!("restart while down: {} lines, {repeats} repeats", lines.len());
    x.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_leaves_events_on_the_ledger_and_loses_none() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    rsyslog.stop();
    let ledger = shared_ledger();
    let x = exporter(&pki, &rsyslog, &tmp.path().join("queue"), 50, &ledger).await;
    commit_and_offer(&ledger, Some(&x), 0..300, 7);
    until("the queue is full and the rest waits on the ledger", || {
        let s = x.stats();
        s.queue_depth == 50 && s.catching_up
    })
    .await;
    assert!(x.is_full());
    rsyslog.restart();
    let lines = rsyslog.wait_for(300);
    check_in_order(&lines, &(0..300).collect::<Vec<_>>());
    until("caught up", || {
        let s = x.stats();
        s.queue_depth == 0 && !s.catching_up
    })
    .await;
    x.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_with_another_name_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    let ledger = shared_ledger();
    let queue = FileQueue::open(&tmp.path().join("queue"), 100).unwrap();
    let source: Arc<dyn LedgerSource> = ledger.clone();
    let x = Exporter::start(config(&rsyslog.address()), tls(&pki, "not-the-arr.test", &pki.client), Box::new(queue), source).await.unwrap();
    commit_and_offer(&ledger, Some(&x), 0..3, 3);
    until("the handshake is refused", || x.stats().failed_total >= 2).await;
    let s = x.stats();
    assert!(s.last_error.as_deref().unwrap_or("").contains("certificate"), "{s:?}");
    assert_eq!((s.queue_depth, s.sent_total), (3, 0));
    assert!(rsyslog.received().is_empty());
    x.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_refuses_a_client_certificate_from_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    let ledger = shared_ledger();
    let queue = FileQueue::open(&tmp.path().join("queue"), 100).unwrap();
    let source: Arc<dyn LedgerSource> = ledger.clone();
    // The stranger's certificate carries the permitted name; only its CA differs.
    let x = Exporter::start(config(&rsyslog.address()), tls(&pki, SERVER_NAME, &pki.stranger), Box::new(queue), source).await.unwrap();
    commit_and_offer(&ledger, Some(&x), 0..3, 3);
    until("the repository refuses the session", || x.stats().failed_total >= 2).await;
    let s = x.stats();
    assert_eq!((s.queue_depth, s.sent_total), (3, 0), "{s:?}");
    assert!(rsyslog.received().is_empty(), "a client the repository does not trust delivered nothing");
    x.shutdown().await;
}

/// Prints the send rate through a real rsyslog; not asserted (speed is measured, not tested).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_rate() {
    const N: u64 = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut rsyslog = Rsyslog::start_for(&tmp.path().join("arr"), &pki);
    let ledger = shared_ledger();
    let x = exporter(&pki, &rsyslog, &tmp.path().join("queue"), 100_000, &ledger).await;

    // Live: blocks of 16 entries offered as fast as they are committed.
    let t = Instant::now();
    commit_and_offer(&ledger, Some(&x), 0..N, 16);
    until("all confirmed", || x.stats().sent_total == N).await;
    let live = t.elapsed();
    rsyslog.wait_for(N as usize);

    // Backlog: N messages queued while the repository is down, then delivered.
    rsyslog.stop();
    commit_and_offer(&ledger, Some(&x), N..2 * N, 16);
    until("backlog queued", || x.stats().queue_depth == N).await;
    rsyslog.restart();
    let t = Instant::now();
    until("backlog confirmed", || x.stats().sent_total == 2 * N).await;
    let backlog = t.elapsed();
    let lines = rsyslog.wait_for(2 * N as usize);
    let bytes: usize = lines.iter().map(String::len).sum();
    println!(
        "ATNA send rate through rsyslog/gtls on loopback: live {:.0} msg/s ({N} messages, blocks of 16, queue fsync per block), backlog {:.0} msg/s; mean message {} bytes",
        N as f64 / live.as_secs_f64(),
        N as f64 / backlog.as_secs_f64(),
        bytes / lines.len()
    );
    x.shutdown().await;
}
