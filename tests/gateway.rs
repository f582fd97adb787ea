//! One hospital end to end, against `medgate serve` with a real SoftHSM2 token, real mutual TLS
//! and a real sled store: the HIS's round trip, refusals, idempotency, crash safety, tamper
//! detection and offline receipts.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use medgate::client::{query_escape, HisClient};
use medgate_fhir::{sample_transaction, PatientId};
use serde_json::{json, Value};
use support::{receipt_of, rt, Gw};
use time::OffsetDateTime;

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("MRN-{n:06}") }
}

fn outcome_code(body: &Value) -> &str {
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    body["issue"][0]["code"].as_str().unwrap_or("")
}

#[test]
fn store_search_read_and_audit_round_trip() {
    let gw = Gw::new("roundtrip");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let p = patient(1);
        let letter = b"%PDF-1.7 discharge letter".to_vec();
        let r = his.post_json("/", &sample_transaction(&p, "application/pdf", &letter, None), &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let bundle = r.json();
        assert_eq!(bundle["type"], "transaction-response");
        let doc = &bundle["entry"][0]["response"];
        let id = support::created_id(&bundle);
        assert_eq!(bundle["entry"][0]["response"]["status"], "201 Created");
        let base = format!("https://localhost:{}", gw.site.his_addr.port());
        assert_eq!(r.headers["location"], format!("{base}/DocumentReference/{id}").as_str());
        let key = medgate_ledger::keys::read_public_key(&gw.site.ledger_public_key).unwrap();
        let receipt = medgate_ledger::check_receipt(&receipt_of(doc).unwrap(), &key).unwrap();
        assert_eq!(receipt.entry.record_id(), Some(id.as_str()));
        assert!(!String::from_utf8_lossy(&receipt_of(doc).unwrap()).contains("MRN-000001"), "identifier on the ledger");

        // The single-resource form.
        use base64::Engine as _;
        let single = json!({
            "resourceType": "DocumentReference", "status": "current",
            "subject": {"identifier": {"system": p.system, "value": p.value}},
            "content": [{"attachment": {"contentType": "text/plain", "data": base64::engine::general_purpose::STANDARD.encode(b"lab result")}}]
        });
        let r2 = his.post_json("/DocumentReference", &single, &[]).await.unwrap();
        assert_eq!(r2.status, 201, "{}", String::from_utf8_lossy(&r2.body));
        assert_eq!(r2.json()["resourceType"], "DocumentReference");
        let id2 = r2.json()["id"].as_str().unwrap().to_owned();

        // Another patient's record must not show up.
        let other = his.post_json("/", &sample_transaction(&patient(2), "text/plain", b"x", None), &[]).await.unwrap();
        assert_eq!(other.status, 200);

        let q = query_escape(&p.canonical());
        let found = his.get(&format!("/DocumentReference?patient={q}")).await.unwrap();
        assert_eq!(found.status, 200);
        let found = found.json();
        assert_eq!(found["type"], "searchset");
        assert_eq!(found["total"], 2);
        let mut ids: Vec<String> = found["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        let mut want = vec![id.clone(), id2.clone()];
        want.sort();
        assert_eq!(ids, want);

        let bin = his.get(&format!("/Binary/{id}")).await.unwrap();
        assert_eq!(bin.status, 200);
        assert_eq!(bin.body.as_ref(), letter.as_slice());
        assert_eq!(bin.headers["content-type"], "application/pdf");
        let meta = his.get(&format!("/DocumentReference/{id2}")).await.unwrap();
        assert_eq!(meta.status, 200);
        assert_eq!(meta.json()["content"][0]["attachment"]["url"], format!("{base}/Binary/{id2}"));
        assert_eq!(meta.json()["subject"]["identifier"]["value"], "MRN-000001");

        // An access is in a signed block before its answer is sent: nothing is on its way.
        assert_eq!(gw.metric("medgate_outbox_entries"), Some(0.0));
        let audit = his.get(&format!("/AuditEvent?patient={q}")).await.unwrap().json();
        let events: Vec<(String, String)> = audit["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["resource"]["subtype"][0]["code"].as_str().unwrap().to_owned(), e["resource"]["action"].as_str().unwrap().to_owned()))
            .collect();
        let count = |code: &str| events.iter().filter(|(c, _)| c == code).count();
        assert_eq!(count("ITI-65"), 3, "two records and the transaction's SubmissionSet: {events:?}");
        assert_eq!(count("ITI-67"), 1, "{events:?}");
        assert_eq!(count("ITI-68"), 2, "binary and metadata reads: {events:?}");
        assert!(!audit["entry"].to_string().contains("MRN-000001"), "the audit events carry pseudonyms only");
    });
}

#[test]
fn clients_without_a_valid_certificate_are_refused_in_the_handshake() {
    let mut gw = Gw::new("certs");
    let rt = rt();
    let ca_pem = gw.site.ca_pem.clone();
    let now = OffsetDateTime::now_utc();
    let try_with = |cert: Option<(String, String)>| {
        let tls = medgate_gateway::tls::client_config(ca_pem.as_bytes(), cert.as_ref().map(|(c, k)| (c.as_bytes(), k.as_bytes()))).unwrap();
        let mut c = HisClient::new(gw.site.his_addr, "localhost", tls).unwrap().acting_as("u", "physician", "TREAT");
        rt.block_on(c.get("/metadata"))
    };
    // No certificate.
    assert!(try_with(None).is_err());
    // A certificate from another CA.
    let stranger = medgate_gateway::pki::TestCa::new("Stranger CA").unwrap();
    let (c, k) = stranger.issue_client("his-main", "his", now - time::Duration::days(1), now + time::Duration::days(1)).unwrap();
    assert!(try_with(Some((c.pem(), k.serialize_pem()))).is_err());
    // Expired.
    let (c, k) = gw.site.ca.issue_client("his-old", "his", now - time::Duration::days(10), now - time::Duration::days(1)).unwrap();
    assert!(try_with(Some((c.pem(), k.serialize_pem()))).is_err());
    // Valid: accepted. Then revoked through the CRL and SIGHUP: refused.
    let (c, k) = gw.site.ca.issue_client("his-lab", "his", now - time::Duration::days(1), now + time::Duration::days(1)).unwrap();
    let good = (c.pem(), k.serialize_pem());
    assert_eq!(try_with(Some(good.clone())).unwrap().status, 200);
    std::fs::write(gw.site.dir.join("tls/hospital-ca.crl"), gw.site.ca.crl(&[&c], 30).unwrap()).unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    gw.wait_log("certificates and CRLs reloaded");
    assert!(try_with(Some(good)).is_err(), "revoked certificate accepted");
    assert_eq!(try_with(Some((gw.site.his_cert_pem.clone(), gw.site.his_key_pem.clone()))).unwrap().status, 200);
    // A read-only HIS may not store.
    let (c, k) = gw.site.ca.issue_client("his-viewer", "his-read", now - time::Duration::days(1), now + time::Duration::days(1)).unwrap();
    let tls = medgate_gateway::tls::client_config(ca_pem.as_bytes(), Some((c.pem().as_bytes(), k.serialize_pem().as_bytes()))).unwrap();
    let mut viewer = HisClient::new(gw.site.his_addr, "localhost", tls).unwrap().acting_as("u", "physician", "TREAT");
    let r = rt.block_on(viewer.post_json("/", &sample_transaction(&patient(3), "text/plain", b"x", None), &[])).unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(outcome_code(&r.json()), "forbidden");
    // The gateway logs a refused handshake after the client has seen the refusal.
    gw.wait_log("TLS handshake refused");
    assert_eq!(gw.stop().code(), Some(0));
}

#[test]
fn malformed_requests_get_an_operation_outcome_and_store_nothing() {
    let gw = Gw::with_config("malformed", |t| t.replace("[his]\n", "[his]\nmax_body_bytes = 65536\n"));
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let good = sample_transaction(&patient(4), "text/plain", b"hello", None);
        // (what, path, headers, body, status, issue code)
        type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
        let cases: Vec<Case> = vec![
            ("not JSON", "/", vec![], b"{not json".to_vec(), 400, "structure"),
            ("duplicate property", "/", vec![], br#"{"resourceType":"Bundle","resourceType":"Bundle"}"#.to_vec(), 400, "structure"),
            ("not a Bundle", "/", vec![], serde_json::to_vec(&json!({"resourceType": "Patient"})).unwrap(), 422, "not-supported"),
            ("batch, not transaction", "/", vec![], serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "batch", "entry": []})).unwrap(), 422, "invalid"),
            (
                "DocumentReference without subject",
                "/DocumentReference",
                vec![],
                serde_json::to_vec(&json!({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}]})).unwrap(),
                422,
                "required",
            ),
            ("too large", "/", vec![], vec![b' '; 70_000], 413, "too-long"),
            ("wrong media type", "/", vec![("content-type", "text/plain")], serde_json::to_vec(&good).unwrap(), 415, "not-supported"),
            ("no end user", "/", vec![("x-medgate-user", "")], serde_json::to_vec(&good).unwrap(), 400, "invalid"),
            ("unknown purpose", "/", vec![("x-medgate-purpose", "CURIOSITY")], serde_json::to_vec(&good).unwrap(), 400, "invalid"),
        ];
        for (what, path, headers, body, status, code) in cases {
            let mut c = gw.client();
            // Headers given here replace the client's defaults.
            c.default_headers.retain(|(k, _)| !headers.iter().any(|(h, _)| h == k));
            let mut req_headers = headers.clone();
            if !headers.iter().any(|(h, _)| *h == "content-type") {
                req_headers.push(("content-type", "application/fhir+json"));
            }
            let r = c.send("POST", path, &req_headers, body).await.unwrap();
            assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(outcome_code(&r.json()), code, "{what}");
        }
        for (path, status, code) in [
            ("/Binary/0123456789abcdef0123456789abcdef", 404, "not-found"),
            ("/DocumentReference/not-an-id", 404, "not-found"),
            ("/DocumentReference?patient=nobar", 400, "invalid"),
            ("/DocumentReference?name=Smith", 400, "invalid"),
            ("/Observation", 404, "not-found"),
        ] {
            let r = his.get(path).await.unwrap();
            assert_eq!(r.status, status, "{path}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(outcome_code(&r.json()), code, "{path}");
        }
        let r = his.send("DELETE", "/Binary/abc", &[], Vec::new()).await.unwrap();
        assert_eq!(r.status, 405);
        // Nothing stored, nothing on the ledger.
        assert_eq!(gw.metric("medgate_vault_records"), Some(0.0));
        assert_eq!(gw.metric("medgate_ledger_height"), None);
        let ok = his.post_json("/", &good, &[]).await.unwrap();
        assert_eq!(ok.status, 200, "the gateway still works after the refusals");
    });
    let log = gw.log_text();
    assert!(!log.contains("MRN-000004"), "patient identifier in the log");
}

#[test]
fn retried_creates_are_never_duplicated() {
    let gw = Gw::new("idempotent");
    let rt = rt();
    rt.block_on(async {
        let p = patient(5);
        let bundle = sample_transaction(&p, "text/plain", b"note 1", None);
        // Eight clients send the same request with the same key at once.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut c = gw.client();
            let b = bundle.clone();
            tasks.push(tokio::spawn(async move { c.post_json("/", &b, &[("idempotency-key", "req-42")]).await.unwrap() }));
        }
        let mut ids = std::collections::BTreeSet::new();
        for t in tasks {
            let r = t.await.unwrap();
            match r.status {
                // 202: the first request stored the record and is still anchoring it.
                200 | 202 => {
                    ids.insert(support::created_id(&r.json()));
                }
                // Still in flight: the client is told when to retry.
                409 => {
                    assert_eq!(outcome_code(&r.json()), "conflict");
                    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{:?}", r.headers);
                }
                s => panic!("unexpected {s}: {}", String::from_utf8_lossy(&r.body)),
            }
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
        let mut c = gw.client();
        let again = c.post_json("/", &bundle, &[("idempotency-key", "req-42")]).await.unwrap();
        assert_eq!(again.status, 200);
        assert_eq!(&support::created_id(&again.json()), ids.iter().next().unwrap());
        // The same key from another request body is still the same request: the first answer.
        assert_eq!(gw.metric("medgate_vault_records"), Some(1.0));

        // Conditional create by masterIdentifier, without any key.
        let m = sample_transaction(&p, "text/plain", b"note 2", Some(("urn:ietf:rfc:3986", "urn:oid:1.2.3.99")));
        let first = c.post_json("/", &m, &[]).await.unwrap();
        assert_eq!((first.status, &first.json()["entry"][0]["response"]["status"]), (200, &json!("201 Created")));
        let second = c.post_json("/", &m, &[]).await.unwrap();
        assert_eq!(second.status, 200, "{}", String::from_utf8_lossy(&second.body));
        assert_eq!(second.json()["entry"][0]["response"]["status"], "200 OK", "a repeat creates nothing");
        assert_eq!(support::created_id(&second.json()), support::created_id(&first.json()));
        let clash = sample_transaction(&p, "text/plain", b"other content", Some(("urn:ietf:rfc:3986", "urn:oid:1.2.3.99")));
        let r = c.post_json("/", &clash, &[]).await.unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(outcome_code(&r.json()), "conflict");
        assert_eq!(gw.metric("medgate_vault_records"), Some(2.0));
    });
}

/// One create sent during the crash test: its key, its document, its writer.
#[derive(Clone)]
struct Sent {
    key: String,
    data: Vec<u8>,
    writer: u32,
}

#[test]
fn kill_9_during_a_stream_of_creates_loses_no_acknowledged_record_and_retries_create_no_duplicate() {
    const WRITERS: u32 = 16;
    const ACKED_BEFORE_KILL: usize = 40;
    let mut gw = Gw::new("crash");
    let rt = rt();
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    // Idempotency-Key -> record id, for every create answered 201 before the kill.
    let acked: Arc<Mutex<std::collections::BTreeMap<String, String>>> = Arc::default();
    let unanswered = rt.block_on(async {
        let (progress, mut seen) = tokio::sync::watch::channel(0usize);
        let progress = Arc::new(progress);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = gw.client();
            let (sent, acked, progress) = (sent.clone(), acked.clone(), progress.clone());
            tasks.push(tokio::spawn(async move {
                for n in 1.. {
                    let one = Sent { key: format!("w{w}-n{n}"), data: format!("writer {w} record {n}").into_bytes(), writer: w };
                    sent.lock().unwrap().push(one.clone());
                    let body = sample_transaction(&patient(100 + w), "text/plain", &one.data, None);
                    match c.post_json("/", &body, &[("idempotency-key", &one.key)]).await {
                        Ok(r) if r.status == 200 => {
                            acked.lock().unwrap().insert(one.key, support::created_id(&r.json()));
                            progress.send_modify(|n| *n += 1);
                        }
                        Ok(r) => panic!("unexpected {}: {}", r.status, String::from_utf8_lossy(&r.body)),
                        // The gateway died under this request: stored or not, nobody knows.
                        Err(_) => return 1usize,
                    }
                }
                unreachable!("a writer runs until the gateway dies")
            }));
        }
        // Kill once the stream is well under way: every writer has a request in flight.
        seen.wait_for(|n| *n >= ACKED_BEFORE_KILL).await.unwrap();
        gw.kill9();
        let mut unanswered = 0;
        for t in tasks {
            unanswered += t.await.unwrap();
        }
        unanswered
    });
    let sent = sent.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    gw.start();
    // Every request is retried with its key, by its writer, as an HIS would after a crash.
    let (answers, latencies) = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = gw.client();
            let mine: Vec<Sent> = sent.iter().filter(|s| s.writer == w).cloned().collect();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for one in mine {
                    let body = sample_transaction(&patient(100 + w), "text/plain", &one.data, None);
                    let t = Instant::now();
                    let r = c.post_json("/", &body, &[("idempotency-key", &one.key)]).await.unwrap();
                    out.push((one, r, t.elapsed()));
                }
                out
            }));
        }
        let mut answers = Vec::new();
        let mut latencies = Vec::new();
        for t in tasks {
            for (one, r, took) in t.await.unwrap() {
                latencies.push(took);
                answers.push((one, r));
            }
        }
        (answers, latencies)
    });
    // Every retry is answered for good at once: the first result if it was committed, a fresh
    // create if not; never "still being processed" (the crashed request's claim died with it).
    let mut ids = std::collections::BTreeMap::new();
    for (one, r) in &answers {
        assert!(r.status == 200 || r.status == 202, "retry of {}: {} {}", one.key, r.status, String::from_utf8_lossy(&r.body));
        let id = support::created_id(&r.json());
        if let Some(first) = acked.get(&one.key) {
            assert_eq!(&id, first, "retry of {} acknowledged before the crash answered another record", one.key);
        }
        assert!(ids.insert(id, one.clone()).is_none(), "two keys answered with one record");
    }
    let mut latencies = latencies;
    latencies.sort();
    eprintln!(
        "kill -9 with {unanswered} creates in flight, {} sent, {} acknowledged; {} retries: p50 {:?}, max {:?}; replays {:?}",
        sent.len(),
        acked.len(),
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap(),
        gw.metric("medgate_events_total{kind=\"idempotent_replays\"}"),
    );
    rt.block_on(async {
        let mut c = gw.client();
        // No acknowledged record lost, every record holds what its key sent, with its receipt.
        for (id, one) in &ids {
            let r = c.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!(r.status, 200, "record {id} of {} lost", one.key);
            assert_eq!(r.body.as_ref(), one.data.as_slice());
            let d = c.get(&format!("/DocumentReference/{id}")).await.unwrap().json();
            assert!(receipt_of(&d).is_some(), "record {id} has no ledger receipt after restart");
        }
        // No duplicate: each patient's search finds exactly one record per key sent.
        for w in 0..WRITERS {
            let q = query_escape(&patient(100 + w).canonical());
            let found = c.get(&format!("/DocumentReference?patient={q}")).await.unwrap().json();
            assert_eq!(found["total"], sent.iter().filter(|s| s.writer == w).count(), "writer {w}");
        }
    });
    assert_eq!(gw.metric("medgate_vault_records"), Some(sent.len() as f64), "one record per key in the vault");
    assert_eq!(gw.stop().code(), Some(0));
    let (code, out, err) = gw.medgate(&["ledger", "verify", "--config", gw.site.config.to_str().unwrap(), "--public-key", gw.site.ledger_public_key.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ledger OK"), "{out}");
}

#[test]
fn altered_ciphertext_and_altered_blocks_are_detected() {
    let mut gw = Gw::new("tamper");
    let rt = rt();
    let (id, entry) = rt.block_on(async {
        let mut c = gw.client();
        let mut id = String::new();
        let mut entry = String::new();
        for n in 0..3 {
            let r = c.post_json("/", &sample_transaction(&patient(6), "text/plain", format!("doc {n}").as_bytes(), None), &[]).await.unwrap();
            assert_eq!(r.status, 200);
            let doc = r.json()["entry"][0]["response"].clone();
            id = support::created_id(&r.json());
            let receipt: Value = serde_json::from_slice(&receipt_of(&doc).unwrap()).unwrap();
            entry = receipt["entry"]["id"].as_str().unwrap().to_owned();
        }
        (id, entry)
    });
    assert_eq!(gw.stop().code(), Some(0));
    let cfg = gw.site.config.to_str().unwrap().to_owned();

    // A receipt, printed by the gateway's owner, checked by a third party with the public key only.
    let (code, receipt, err) = gw.medgate(&["ledger", "proof", "--config", &cfg, &entry]);
    assert_eq!(code, 0, "{err}");
    let receipt_file = gw.site.dir.join("receipt.json");
    std::fs::write(&receipt_file, &receipt).unwrap();
    let key = gw.site.ledger_public_key.to_str().unwrap().to_owned();
    let (code, out, err) = gw.medgate(&["ledger", "check-receipt", receipt_file.to_str().unwrap(), "--public-key", &key]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("receipt OK"), "{out}");
    std::fs::write(&receipt_file, receipt.replacen("\"leaf_index\": 0", "\"leaf_index\": 1", 1).replacen("\"seq\": 3", "\"seq\": 4", 1)).unwrap();
    let (code, _, err) = gw.medgate(&["ledger", "check-receipt", receipt_file.to_str().unwrap(), "--public-key", &key]);
    assert_ne!(code, 0);
    assert!(err.contains("does not verify"), "{err}");

    // Flip one byte of one stored ciphertext.
    {
        let db = support::open_store(&gw.site.dir.join("state"));
        let vault = medgate_store::vault::Vault::open(&db).unwrap();
        let mut rec = vault.get(&id).unwrap().unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ct = b64.decode(&rec.doc_ct).unwrap();
        ct[2] ^= 0x01;
        rec.doc_ct = b64.encode(ct);
        vault.put_raw(&id, &serde_json::to_vec(&rec).unwrap()).unwrap();

        // And alter block 1: change one entry's time, keeping the rest as it was.
        let store = medgate_store::ChainStore::open(&db).unwrap();
        let mut block = store.block(1).unwrap().unwrap();
        let entry = &mut block.batches[0].entries[0];
        let mut time = entry.time.clone().into_bytes();
        time[3] = if time[3] == b'7' { b'8' } else { b'7' };
        entry.time = String::from_utf8(time).unwrap();
        store.overwrite_block(&block).unwrap();
    }
    let (code, out, err) = gw.medgate(&["ledger", "verify", "--config", &cfg]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("FAILED at block 1"), "{err}");

    gw.start();
    rt.block_on(async {
        let mut c = gw.client();
        let r = c.get(&format!("/Binary/{id}")).await.unwrap();
        assert_eq!(r.status, 500);
        let body = r.json();
        assert_eq!(outcome_code(&body), "exception");
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("failed its integrity check"), "{body}");
        assert!(!body.to_string().contains("doc 2"));
    });
    gw.wait_log("failed its integrity check");
}

#[test]
fn the_his_listener_speaks_http2_too() {
    use http_body_util::{BodyExt, Full};
    let gw = Gw::new("h2");
    let rt = rt();
    rt.block_on(async {
        let mut tls = (*gw.site.his_tls().unwrap()).clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(gw.site.his_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let req = hyper::Request::get("https://localhost/metadata").body(Full::new(bytes::Bytes::new())).unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), hyper::Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["resourceType"], "CapabilityStatement");
        }
    });
}

#[test]
fn consents_are_recorded_listed_withdrawn_and_audited() {
    let gw = Gw::new("consent");
    let rt = rt();
    rt.block_on(async {
        let mut his = gw.client();
        let p = patient(8);
        let mut ids = Vec::new();
        for n in 0..2 {
            let r = his.post_json("/", &sample_transaction(&p, "text/plain", format!("doc {n}").as_bytes(), None), &[]).await.unwrap();
            assert_eq!(r.status, 200);
            ids.push(support::created_id(&r.json()));
        }
        // `data: []` means "all records": FHIR JSON forbids empty arrays, so it is left out.
        let consent = |status: &str, grantee: &str, data: Value| {
            let mut c = json!({
                "resourceType": "Consent", "status": status,
                "patient": {"identifier": {"system": p.system, "value": p.value}},
                "provision": {
                    "type": "permit",
                    "period": {"start": "2026-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"},
                    "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": grantee}}}]
                }
            });
            if data.as_array().is_some_and(|a| !a.is_empty()) {
                c["provision"]["data"] = data;
            }
            c
        };
        let one = json!([{"meaning": "instance", "reference": {"reference": format!("DocumentReference/{}", ids[0])}}]);
        let r = his.post_json("/Consent", &consent("active", "hospital-b", one.clone()), &[]).await.unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let created = r.json();
        let cid = created["id"].as_str().unwrap().to_owned();
        assert_eq!(r.headers["location"], format!("https://localhost:{}/Consent/{cid}", gw.site.his_addr.port()).as_str());
        let key = medgate_ledger::keys::read_public_key(&gw.site.ledger_public_key).unwrap();
        let receipt = medgate_ledger::check_receipt(&receipt_of(&created).unwrap(), &key).unwrap();
        assert!(!serde_json::to_string(&receipt).unwrap().contains("MRN-000008"), "identifier on the ledger");
        // A retry without a key finds the same active consent: 200, same id, nothing new.
        let height = gw.metric("medgate_ledger_height");
        let again = his.post_json("/Consent", &consent("active", "hospital-b", one.clone()), &[]).await.unwrap();
        assert_eq!(again.status, 200, "{}", String::from_utf8_lossy(&again.body));
        assert_eq!(again.json()["id"], cid.as_str());
        assert_eq!(gw.metric("medgate_ledger_height"), height, "a retried consent must not add an entry");
        // With an Idempotency-Key, a retry gets the first answer.
        let wide = consent("active", "hospital-c", json!([]));
        let first = his.post_json("/Consent", &wide, &[("idempotency-key", "consent-retry-1")]).await.unwrap();
        assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
        let height = gw.metric("medgate_ledger_height");
        let retry = his.post_json("/Consent", &wide, &[("idempotency-key", "consent-retry-1")]).await.unwrap();
        assert_eq!((retry.status, retry.json()["id"].clone()), (201, first.json()["id"].clone()));
        assert_eq!(gw.metric("medgate_ledger_height"), height);
        let list = his.get(&format!("/Consent?patient={}", query_escape(&p.canonical()))).await.unwrap().json();
        assert_eq!(list["total"], 2, "{list}");
        let wide_id = first.json()["id"].as_str().unwrap().to_owned();
        let r = his
            .send("PUT", &format!("/Consent/{wide_id}"), &[("content-type", "application/fhir+json")], serde_json::to_vec(&consent("inactive", "hospital-c", json!([]))).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, 200);

        // Refusals: a grant to this hospital itself, a record that is not the patient's, a
        // patient with no record here, a withdrawal by POST.
        for (body, path) in [
            (consent("active", "hospital-a", one.clone()), "Consent.provision.actor[0]"),
            (consent("active", "hospital-b", json!([{"reference": {"reference": "DocumentReference/00ff"}}])), "Consent.provision.data[0]"),
            (consent("inactive", "hospital-b", one.clone()), "Consent.status"),
        ] {
            let r = his.post_json("/Consent", &body, &[]).await.unwrap();
            assert_eq!(r.status, 422, "{path}: {}", String::from_utf8_lossy(&r.body));
            assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains(path), "{}", r.json());
        }
        let mut stranger = consent("active", "hospital-b", json!([]));
        stranger["patient"]["identifier"]["value"] = json!("MRN-999999");
        let r = his.post_json("/Consent", &stranger, &[]).await.unwrap();
        assert_eq!(r.status, 422);
        assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("holds no record of the patient"), "{}", r.json());

        let q = query_escape(&p.canonical());
        let list = his.get(&format!("/Consent?patient={q}")).await.unwrap().json();
        assert_eq!(list["total"], 2);
        let active: Vec<&Value> = list["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["status"] == "active").collect();
        assert_eq!(active.len(), 1, "{list}");
        assert_eq!(active[0]["resource"]["id"], cid.as_str());
        assert_eq!(active[0]["resource"]["provision"]["data"][0]["reference"]["reference"], format!("DocumentReference/{}", ids[0]));

        // Withdrawal: PUT with status inactive; a retry answers the same and adds nothing.
        let put = |body: Value, id: String| {
            let mut c = gw.client();
            async move { c.send("PUT", &format!("/Consent/{id}"), &[("content-type", "application/fhir+json")], serde_json::to_vec(&body).unwrap()).await.unwrap() }
        };
        let r = put(consent("inactive", "hospital-b", json!([])), cid.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["status"], "inactive");
        let height = gw.metric("medgate_ledger_height");
        let again = put(consent("inactive", "hospital-b", json!([])), cid.clone()).await;
        assert_eq!(again.status, 200);
        assert_eq!(gw.metric("medgate_ledger_height"), height, "a retried withdrawal must not add an entry");
        let unknown = put(consent("inactive", "hospital-b", json!([])), "0123456789abcdef".into()).await;
        assert_eq!(unknown.status, 404);
        let list = his.get(&format!("/Consent?patient={q}")).await.unwrap().json();
        assert!(list["entry"].as_array().unwrap().iter().all(|e| e["resource"]["status"] == "inactive"), "{list}");
        // Withdrawn, the same terms may be granted again: a new consent.
        let renewed = his.post_json("/Consent", &consent("active", "hospital-b", one.clone()), &[]).await.unwrap();
        assert_eq!(renewed.status, 201);
        assert_ne!(renewed.json()["id"], cid.as_str());
        // Withdrawals of one consent sent at once (a HIS retrying before its first attempt was
        // answered): one withdrawal on the ledger, in a valid batch; every request hears it.
        let renewed_id = renewed.json()["id"].as_str().unwrap().to_owned();
        let sent: Vec<_> = (0..4).map(|_| tokio::spawn(put(consent("inactive", "hospital-b", json!([])), renewed_id.clone()))).collect();
        let mut statuses = Vec::new();
        for s in sent {
            statuses.push(s.await.unwrap().status);
        }
        assert_eq!(statuses, [200; 4]);
        let list = his.get(&format!("/Consent?patient={q}")).await.unwrap().json();
        assert!(list["entry"].as_array().unwrap().iter().all(|e| e["resource"]["status"] == "inactive"), "{list}");

        // An access is in a signed block before its answer is sent: nothing is on its way.
        assert_eq!(gw.metric("medgate_outbox_entries"), Some(0.0));
        let audit = his.get(&format!("/AuditEvent?patient={q}")).await.unwrap().json();
        let codes: Vec<&str> = audit["entry"].as_array().unwrap().iter().map(|e| e["resource"]["subtype"][0]["code"].as_str().unwrap()).collect();
        assert!(codes.contains(&"consent-granted") && codes.contains(&"consent-revoked"), "{codes:?}");
        let count = |code: &str| codes.iter().filter(|c| **c == code).count();
        assert_eq!((count("consent-granted"), count("consent-revoked")), (3, 3), "one withdrawal per consent: {codes:?}");
    });
}

#[test]
fn erasure_shreds_the_key_material_and_keeps_the_hash_on_the_ledger() {
    let mut gw = Gw::new("erase");
    let rt = rt();
    let p = patient(9);
    let (id, kept) = rt.block_on(async {
        let mut his = gw.client();
        let r = his.post_json("/", &sample_transaction(&p, "text/plain", b"to be erased", None), &[]).await.unwrap();
        let id = support::created_id(&r.json());
        let r = his.post_json("/", &sample_transaction(&p, "text/plain", b"kept", None), &[]).await.unwrap();
        let kept = support::created_id(&r.json());
        let del = his.send("DELETE", &format!("/DocumentReference/{id}"), &[], Vec::new()).await.unwrap();
        assert_eq!(del.status, 204, "{}", String::from_utf8_lossy(&del.body));
        for path in [format!("/Binary/{id}"), format!("/DocumentReference/{id}")] {
            let r = his.get(&path).await.unwrap();
            assert_eq!(r.status, 410, "{path}");
            assert_eq!(r.json()["issue"][0]["code"], "deleted");
        }
        let again = his.send("DELETE", &format!("/DocumentReference/{id}"), &[], Vec::new()).await.unwrap();
        assert_eq!(again.status, 204, "erasing again answers the same");
        let q = query_escape(&p.canonical());
        let found = his.get(&format!("/DocumentReference?patient={q}")).await.unwrap().json();
        assert_eq!(found["total"], 1);
        assert_eq!(found["entry"][0]["resource"]["id"], kept.as_str());
        // The erasure entry was in a signed block before the 204 (the shred pass's key events,
        // still on their way, are no patient's).
        let audit = his.get(&format!("/AuditEvent?patient={q}")).await.unwrap().json();
        assert!(audit["entry"].as_array().unwrap().iter().any(|e| e["resource"]["subtype"][0]["code"] == "erasure"), "{audit}");
        (id, kept)
    });
    assert_eq!(gw.stop().code(), Some(0));
    let db = support::open_store(&gw.site.dir.join("state"));
    let vault = medgate_store::vault::Vault::open(&db).unwrap();
    let rec = vault.get(&id).unwrap().unwrap();
    assert!(rec.erased.is_some());
    assert!(rec.wrapped_key.is_empty() && rec.doc_ct.is_empty() && rec.meta_ct.is_empty(), "key material or ciphertext left: {rec:?}");
    assert!(!rec.content_hash.is_empty(), "the hash stays");
    assert!(!vault.get(&kept).unwrap().unwrap().wrapped_key.is_empty());
    let store = medgate_store::ChainStore::open(&db).unwrap();
    let anchored = store.anchored(&id).unwrap().unwrap();
    assert_eq!(anchored.record_id(), Some(id.as_str()));
    drop((store, vault, db));
    let (code, out, err) = gw.medgate(&["ledger", "verify", "--config", gw.site.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}
