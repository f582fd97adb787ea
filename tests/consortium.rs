//! Three hospitals on one consortium ledger ordered by a real 3-member etcd cluster with mutual
//! TLS: every gateway cuts the same blocks from the ordered stream, whatever fails.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;
#[path = "support/etcd.rs"]
mod etcd;

use std::time::{Duration, Instant};

use etcd::EtcdCluster;
use medgate::fhir::{sample_transaction, PatientId};
use medgate::pki::TestCa;
use support::{receipt_of, rt, Gw};

const HOSPITALS: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

struct Consortium {
    etcd: EtcdCluster,
    gws: Vec<Gw>,
    _ca: TestCa,
}

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("C-{n:05}") }
}

/// A consortium CA, an etcd cluster it certifies, and three sites whose HSM TLS keys it certifies.
fn consortium(name: &str) -> Consortium {
    consortium_with(name, false)
}

/// With `sharing`: one pseudonym key imported into every HSM (the key ceremony), peer listeners,
/// members' sharing keys, and break-glass for the role `emergency-physician`.
fn consortium_with(name: &str, sharing: bool) -> Consortium {
    let ca = TestCa::new("Consortium CA").unwrap();
    let etcd = EtcdCluster::start(3, &ca);
    let pseudonym_key: Option<[u8; 32]> = sharing.then(|| {
        let mut k = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k).unwrap();
        k
    });
    let sites: Vec<_> = HOSPITALS.iter().map(|h| support::site_sharing(&format!("{name}-{h}"), h, pseudonym_key.as_ref().map(|k| &k[..]))).collect();
    let peers: Vec<std::net::SocketAddr> = sites.iter().map(|_| medgate::demo::free_port().unwrap()).collect();
    let members: String = sites
        .iter()
        .zip(&peers)
        .map(|((s, _), peer)| {
            let mut m = format!("[[consortium.members]]\nhospital_id = \"{}\"\nledger_public_key = \"{}\"\n", s.hospital, s.ledger_public_key.display());
            if sharing {
                m.push_str(&format!("sharing_public_key = \"{}\"\npeer_address = \"{peer}\"\n", s.dir.join("sharing-public-key.pem").display()));
            }
            m
        })
        .collect();
    let endpoints: Vec<String> = etcd.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let mut gws = Vec::new();
    for ((site, dir), peer) in sites.into_iter().zip(&peers) {
        let peer_settings = if sharing { format!("peer_listen = \"{peer}\"\nbreak_glass_roles = [\"emergency-physician\"]\n") } else { String::new() };
        let csr = std::fs::read_to_string(site.dir.join("tls/server.csr")).unwrap();
        let loopback = [std::net::IpAddr::from([127, 0, 0, 1])];
        std::fs::write(site.dir.join("tls/consortium.pem"), ca.sign_peer_csr(&csr, 30, &loopback).unwrap().pem()).unwrap();
        std::fs::write(site.dir.join("tls/consortium-ca.pem"), ca.cert.pem()).unwrap();
        let text = std::fs::read_to_string(&site.config).unwrap();
        let text = format!(
            "{text}\n[ledger]\nmode = \"consortium\"\n\n[consortium]\netcd_endpoints = [{}]\nca = \"{tls}/consortium-ca.pem\"\ncertificate = \"{tls}/consortium.pem\"\nprefix = \"/test/{name}\"\n{peer_settings}\n{members}",
            endpoints.join(", "),
            tls = site.dir.join("tls").display(),
        );
        std::fs::write(&site.config, text).unwrap();
        let mut gw = Gw::prepared(site, dir);
        gw.start();
        gws.push(gw);
    }
    Consortium { etcd, gws, _ca: ca }
}

/// Stores `n` documents at gateway `i`; returns the record ids (201 each).
fn ingest(c: &Consortium, i: usize, n: u32, tag: &str) -> Vec<String> {
    rt().block_on(async {
        let mut his = c.gws[i].client();
        let mut ids = Vec::new();
        for k in 0..n {
            let body = sample_transaction(&patient(k), "text/plain", format!("{tag} {k}").as_bytes(), None);
            let r = his.post_json("/", &body, &[]).await.unwrap();
            assert_eq!(r.status, 201, "{}\ngateway log:\n{}", String::from_utf8_lossy(&r.body), c.gws[i].log_text());
            let doc = r.json()["entry"][0]["resource"].clone();
            assert!(receipt_of(&doc).is_some());
            ids.push(doc["id"].as_str().unwrap().to_owned());
        }
        ids
    })
}

/// Waits until every gateway's ledger height equals `height`.
fn converge(c: &Consortium, height: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hs: Vec<Option<f64>> = c.gws.iter().map(|g| g.metric("medgate_ledger_height")).collect();
        if hs.iter().all(|h| *h == Some(height)) {
            return;
        }
        assert!(Instant::now() < deadline, "ledgers did not converge to height {height}: {hs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops every gateway and returns each one's `ledger verify` verdict (with all members' keys).
fn verify_all(c: &mut Consortium) -> Vec<String> {
    let keys: Vec<String> = c.gws.iter().map(|g| g.site.ledger_public_key.display().to_string()).collect();
    let mut heads = Vec::new();
    for g in c.gws.iter_mut() {
        if g.child.is_some() {
            assert_eq!(g.stop().code(), Some(0));
        }
        let mut args = vec!["ledger", "verify", "--config", g.site.config.to_str().unwrap()];
        for k in &keys {
            args.extend(["--public-key", k.as_str()]);
        }
        let (code, out, err) = g.medgate(&args);
        assert_eq!(code, 0, "{out}{err}");
        heads.push(out.lines().next().unwrap().to_owned());
    }
    heads
}

#[test]
fn three_hospitals_cut_the_same_chain_from_the_ordered_stream() {
    let mut c = consortium("same");
    let a = ingest(&c, 0, 5, "a");
    let b = ingest(&c, 1, 3, "b");
    let cc = ingest(&c, 2, 2, "c");
    assert_eq!(a.len() + b.len() + cc.len(), 10);
    // Ten batches (one create each, sequentially), heights 0..=9, at every gateway.
    converge(&c, 9.0);
    let heads = verify_all(&mut c);
    assert!(heads[0].contains("10 entries"), "{heads:?}");
    assert!(heads.iter().all(|h| h == &heads[0]), "chains differ: {heads:?}");
}

#[test]
fn an_etcd_member_killed_during_ingest_loses_and_duplicates_nothing() {
    let mut c = consortium("kill");
    ingest(&c, 0, 2, "before");
    let leader = c.etcd.wait_leader(Duration::from_secs(10));
    c.etcd.kill(leader);
    let during = ingest(&c, 0, 6, "during");
    let other = ingest(&c, 1, 2, "during-b");
    c.etcd.restart(leader);
    converge(&c, 9.0);
    let heads = verify_all(&mut c);
    assert!(heads[0].contains("10 entries") && heads[0].contains("0 flagged invalid"), "{heads:?}");
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    assert_eq!(during.len() + other.len(), 8);
}

#[test]
fn quorum_loss_stores_and_answers_202_then_anchors_when_quorum_returns() {
    let mut c = consortium("quorum");
    ingest(&c, 0, 1, "before");
    c.etcd.kill(0);
    c.etcd.kill(1);
    let id = rt().block_on(async {
        let mut his = c.gws[0].client();
        let t = Instant::now();
        let r = his.post_json("/", &sample_transaction(&patient(7), "text/plain", b"during the outage", None), &[]).await.unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert!(t.elapsed() < Duration::from_secs(30), "the HIS waited {:?}", t.elapsed());
        let doc = r.json()["entry"][0]["resource"].clone();
        assert!(receipt_of(&doc).is_none());
        // Stored and readable while the ledger waits.
        let id = doc["id"].as_str().unwrap().to_owned();
        let bin = his.get(&format!("/Binary/{id}")).await.unwrap();
        assert_eq!(bin.body.as_ref(), b"during the outage");
        id
    });
    assert!(c.gws[0].metric("medgate_outbox_entries").unwrap() >= 1.0);
    c.etcd.restart(0);
    c.etcd.restart(1);
    // The outbox drain anchors the record: its DocumentReference gets a receipt.
    let deadline = Instant::now() + Duration::from_secs(40);
    rt().block_on(async {
        let mut his = c.gws[0].client();
        loop {
            let d = his.get(&format!("/DocumentReference/{id}")).await.unwrap().json();
            if receipt_of(&d).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the record was never anchored after quorum returned");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.gws[0].metric("medgate_outbox_entries") != Some(0.0) {
        assert!(Instant::now() < deadline, "outbox not drained");
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = c.gws[0].metric("medgate_ledger_height").unwrap();
    converge(&c, h);
    let heads = verify_all(&mut c);
    assert!(heads.iter().all(|x| x == &heads[0]), "{heads:?}");
}

#[test]
fn a_restarted_gateway_catches_up_to_the_same_head() {
    let mut c = consortium("restart");
    ingest(&c, 0, 2, "a");
    c.gws[2].kill9();
    ingest(&c, 0, 3, "a-while-c-is-down");
    ingest(&c, 1, 2, "b-while-c-is-down");
    c.gws[2].start();
    converge(&c, 6.0);
    let heads = verify_all(&mut c);
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
}

#[test]
fn a_batch_from_a_non_member_is_kept_and_flagged_invalid_everywhere() {
    let mut c = consortium("forged");
    ingest(&c, 0, 1, "a");
    // A well-formed batch signed by a key no member has, put straight into the ordered stream.
    let forged = forged_batch("hospital-x");
    let key = "/test/forged/batches/hospital-x/forged";
    let (code, out, err) = c.etcd.etcdctl(&["put", key, std::str::from_utf8(&forged).unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    ingest(&c, 1, 1, "b");
    converge(&c, 2.0);
    let heads = verify_all(&mut c);
    assert!(heads[0].contains("1 flagged invalid"), "{heads:?}");
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
}

/// A batch in the right format, signed by a fresh key that no member holds.
fn forged_batch(gateway: &str) -> Vec<u8> {
    use medgate::ledger::{Entry, EntryBody, UnsignedBatch};
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let entry = Entry::new(
        gateway,
        "2026-11-28T10:00:00Z",
        [9; 16],
        EntryBody::RecordAnchored {
            record_id: "feedfeedfeedfeedfeedfeedfeedfeed".into(),
            patient: "ab".repeat(32),
            pseudonym_key_version: 1,
            content_hash: "cd".repeat(32),
            content_type: "text/plain".into(),
            size: 4,
            custodian: gateway.into(),
            user: "ef".repeat(32),
            role: "physician".into(),
            purpose: "TREAT".into(),
        },
    );
    let unsigned = UnsignedBatch::new(gateway, 1, vec![entry]);
    let sig = key.sign(&rng, &unsigned.signing_message()).unwrap();
    unsigned.sign(1, sig.as_ref()).to_bytes()
}

/// Signs a batch as `site`'s gateway with its own HSM ledger key (its gateway must be stopped).
fn sign_as(site: &medgate::demo::Site, seq: u64, entries: Vec<medgate::ledger::Entry>) -> Vec<u8> {
    support::with_softhsm(&site.softhsm_conf, || {
        let pin = medgate_hsm::Pin::from_file(&site.dir.join("hsm-pin")).unwrap();
        let cfg = medgate_hsm::HsmConfig { module: medgate::demo::SOFTHSM_MODULE.into(), token_label: medgate::demo::TOKEN.into(), pool_size: 1 };
        let hsm = medgate_hsm::Hsm::open(cfg, pin).unwrap();
        let unsigned = medgate::ledger::UnsignedBatch::new(&site.hospital, seq, entries);
        let sig = hsm.sign_digest(medgate_hsm::Role::Ledger, &unsigned.signing_digest()).unwrap();
        hsm.shutdown();
        unsigned.sign(sig.key_version, &sig.raw).to_bytes()
    })
}

#[test]
fn only_the_hospital_that_recorded_a_consent_may_withdraw_it() {
    use medgate::ledger::{Entry, EntryBody};
    use serde_json::{json, Value};
    let mut c = consortium("consent");
    let p = patient(42);
    // Hospital A holds a record of the patient and records the patient's consent for B.
    let (consent_id, pseudonym) = rt().block_on(async {
        let mut his = c.gws[0].client();
        let r = his.post_json("/", &sample_transaction(&p, "text/plain", b"record at A", None), &[]).await.unwrap();
        assert_eq!(r.status, 201);
        let consent = json!({
            "resourceType": "Consent", "status": "active",
            "patient": {"identifier": {"system": p.system, "value": p.value}},
            "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}]}
        });
        let r = his.post_json("/Consent", &consent, &[]).await.unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let receipt: Value = serde_json::from_slice(&receipt_of(&r.json()).unwrap()).unwrap();
        (r.json()["id"].as_str().unwrap().to_owned(), receipt["entry"]["body"]["patient"].as_str().unwrap().to_owned())
    });
    converge(&c, 1.0);
    // Hospital B, a member with a valid key, signs a withdrawal of A's consent and submits it.
    c.gws[1].stop();
    let b = &c.gws[1].site;
    let next_seq = {
        let db = medgate::vault::Vault::open_db(&b.dir.join("state")).unwrap();
        medgate::chain::ChainStore::open(&db).unwrap().state().unwrap().last_seq("hospital-b") + 1
    };
    let forged = Entry::new(
        "hospital-b",
        "2026-11-28T12:00:00Z",
        [7; 16],
        EntryBody::ConsentRevoked {
            consent_id: consent_id.clone(),
            patient: pseudonym.clone(),
            custodian: "hospital-b".into(),
            grantee: "hospital-b".into(),
            user: "aa".repeat(32),
            role: "clerk".into(),
        },
    );
    let batch = sign_as(b, next_seq, vec![forged]);
    let key = format!("/test/consent/batches/hospital-b/{}", "f".repeat(64));
    let (code, out, err) = c.etcd.etcdctl(&["put", &key, std::str::from_utf8(&batch).unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    c.gws[1].start();
    converge(&c, 2.0);
    // A still sees its consent active.
    rt().block_on(async {
        let mut his = c.gws[0].client();
        let list = his.get(&format!("/Consent?patient={}", medgate::client::query_escape(&p.canonical()))).await.unwrap().json();
        assert_eq!(list["entry"][0]["resource"]["status"], "active", "{list}");
    });
    let heads = verify_all(&mut c);
    assert!(heads[0].contains("1 flagged invalid"), "{heads:?}");
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    // Every gateway's derived state agrees: the consent is active everywhere.
    for g in &c.gws {
        let db = medgate::vault::Vault::open_db(&g.site.dir.join("state")).unwrap();
        let store = medgate::chain::ChainStore::open(&db).unwrap();
        let state = store.consent(&pseudonym, &consent_id).unwrap().unwrap_or_else(|| panic!("{} does not know the consent", g.site.hospital));
        assert!(state.active, "{}: {state:?}", g.site.hospital);
        assert_eq!(state.custodian, "hospital-a");
    }
}

#[test]
fn a_record_is_shared_only_under_consent_and_every_access_is_on_every_ledger() {
    use medgate::client::query_escape;
    use serde_json::{json, Value};
    let mut c = consortium_with("share", true);
    let p = patient(77);
    let q = query_escape(&p.canonical());
    let letter = b"%PDF-1.7 cardiology report held by hospital A".to_vec();
    let rt = rt();
    let record = rt.block_on(async {
        let mut a = c.gws[0].client();
        let r = a.post_json("/", &sample_transaction(&p, "application/pdf", &letter, None), &[]).await.unwrap();
        assert_eq!(r.status, 201);
        r.json()["entry"][0]["resource"]["id"].as_str().unwrap().to_owned()
    });
    converge(&c, 0.0);
    let read_at_b = |purpose: &'static str, role: &'static str| {
        let gw = &c.gws[1];
        let site = gw.site.clone();
        let record = record.clone();
        rt.block_on(async move {
            let mut b = medgate::client::HisClient::new(site.his_addr, "localhost", site.his_tls().unwrap()).unwrap().acting_as("dr.b", role, purpose);
            b.get(&format!("/Binary/{record}")).await.unwrap()
        })
    };
    // B finds A's record by the patient's identifier (one pseudonym across the consortium).
    rt.block_on(async {
        let mut b = c.gws[1].client();
        let found = b.get(&format!("/DocumentReference?patient={q}")).await.unwrap().json();
        assert_eq!(found["total"], 1, "{found}");
        assert_eq!(found["entry"][0]["resource"]["id"], record.as_str());
        assert_eq!(found["entry"][0]["resource"]["custodian"]["identifier"]["value"], "hospital-a");
    });
    // No consent yet: refused, and the refusal is a ledger entry.
    let r = read_at_b("TREAT", "physician");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("no-consent"), "{}", r.json());
    // The patient consents at A.
    let consent_id = rt.block_on(async {
        let mut a = c.gws[0].client();
        let consent = json!({
            "resourceType": "Consent", "status": "active",
            "patient": {"identifier": {"system": p.system, "value": p.value}},
            "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}]}
        });
        let r = a.post_json("/Consent", &consent, &[]).await.unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_owned()
    });
    let r = read_at_b("TREAT", "physician");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body.as_ref(), letter.as_slice(), "B must get the exact bytes");
    assert_eq!(r.headers["content-type"], "application/pdf");
    // Withdrawn: the very next read is refused.
    rt.block_on(async {
        let mut a = c.gws[0].client();
        let body: Value = json!({
            "resourceType": "Consent", "status": "inactive",
            "patient": {"identifier": {"system": p.system, "value": p.value}},
            "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}]}
        });
        let r = a.send("PUT", &format!("/Consent/{consent_id}"), &[("content-type", "application/fhir+json")], serde_json::to_vec(&body).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    });
    let r = read_at_b("TREAT", "physician");
    assert_eq!(r.status, 403, "a withdrawn consent must refuse the next read");
    // Break-glass at C: only the role the configuration names, and recorded as such.
    let read_at_c = |role: &'static str| {
        let site = c.gws[2].site.clone();
        let record = record.clone();
        rt.block_on(async move {
            let mut h = medgate::client::HisClient::new(site.his_addr, "localhost", site.his_tls().unwrap()).unwrap().acting_as("dr.c", role, "BTG");
            h.get(&format!("/Binary/{record}")).await.unwrap()
        })
    };
    assert_eq!(read_at_c("physician").status, 403);
    let r = read_at_c("emergency-physician");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), letter.as_slice());
    // The custodian erases the record: nobody can read it any more, anywhere.
    rt.block_on(async {
        let mut a = c.gws[0].client();
        let r = a.send("DELETE", &format!("/DocumentReference/{record}"), &[], Vec::new()).await.unwrap();
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    });
    let r = read_at_c("emergency-physician");
    assert_eq!(r.status, 410, "{}", String::from_utf8_lossy(&r.body));
    // Every gateway ends with the same chain, and every access is in its audit trail.
    let height = c.gws[0].metric("medgate_ledger_height").unwrap();
    converge(&c, height);
    for g in &c.gws {
        let trail = rt.block_on(async {
            let mut h = g.client();
            h.get(&format!("/AuditEvent?patient={q}")).await.unwrap().json()
        });
        let reads: Vec<(String, String)> = trail["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["subtype"][0]["code"] == "ITI-68")
            .map(|e| (e["resource"]["outcome"].as_str().unwrap().to_owned(), e["resource"]["outcomeDesc"].as_str().unwrap().to_owned()))
            .collect();
        let granted = reads.iter().filter(|(o, _)| o == "0").count();
        let denied = reads.iter().filter(|(o, _)| o == "4").count();
        assert_eq!((granted, denied), (2, 3), "{}: {reads:?}", g.site.hospital);
        assert!(reads.iter().any(|(_, d)| d.contains("break-glass")), "{reads:?}");
        assert!(!trail["entry"].to_string().contains("C-00077"), "identifier in audit events");
    }
    // The privacy officer's review at any gateway lists the one break-glass read.
    for g in &c.gws {
        let (code, out, err) = g.medgate(&["audit", "break-glass", "--config", g.site.config.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let list = v["break_glass_reads"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{out}");
        assert_eq!(list[0]["reader"], "hospital-c");
        assert_eq!(list[0]["role"], "emergency-physician");
    }
    let heads = verify_all(&mut c);
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    assert!(heads[0].contains("0 flagged invalid"), "{heads:?}");
    // With the gateway stopped, the command reads the store itself.
    let (code, out, _) = c.gws[1].medgate(&["audit", "break-glass", "--config", c.gws[1].site.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("1 break-glass read(s) to review"), "{out}");
}

#[test]
fn the_consortium_demo_runs_and_exits_0() {
    let out = std::process::Command::new(support::exe()).args(["demo", "--consortium"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("B reads it: 200"), "{stdout}");
    assert!(stdout.contains("B's very next read is refused"), "{stdout}");
    assert!(stdout.contains("consortium demo finished: OK"), "{stdout}");
}

#[test]
fn a_gateway_holding_another_block_at_the_same_height_is_a_detected_fork() {
    let mut c = consortium_with("fork", true);
    ingest(&c, 0, 3, "a");
    converge(&c, 2.0);
    // Hospital C holds another block 2 (its header differs: as if C had cut it from another
    // stream, or someone rewrote C's copy).
    c.gws[2].stop();
    {
        let db = medgate::vault::Vault::open_db(&c.gws[2].site.dir.join("state")).unwrap();
        let store = medgate::chain::ChainStore::open(&db).unwrap();
        let mut block = store.block(2).unwrap().unwrap();
        block.order_position += 1000;
        store.raw_blocks().insert(2u64.to_be_bytes(), block.to_bytes()).unwrap();
        db.flush().unwrap();
    }
    c.gws[2].start();
    // C signs a checkpoint of its head; A and B hold another block there: fork on both sides.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, a) = medgate::demo::admin_get(c.gws[0].site.admin_addr, "/readyz").unwrap();
        let (_, cc) = medgate::demo::admin_get(c.gws[2].site.admin_addr, "/readyz").unwrap();
        if a.contains("fork") && cc.contains("fork") {
            break;
        }
        assert!(Instant::now() < deadline, "fork not detected:\nA: {a}\nC: {cc}\nC log:\n{}\nA log:\n{}", c.gws[2].log_text(), c.gws[0].log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.gws[0].metric("medgate_ledger_forks"), Some(1.0));
    assert!(c.gws[0].log_text().contains("LEDGER FORK"));
    // Submissions are halted: a record is still stored, answered 202, and waits in the outbox.
    rt().block_on(async {
        let mut his = c.gws[0].client();
        let r = his.post_json("/", &sample_transaction(&patient(99), "text/plain", b"during the fork", None), &[]).await.unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    });
    // The evidence survives a restart, and so does the halt.
    c.gws[0].stop();
    {
        let db = medgate::vault::Vault::open_db(&c.gws[0].site.dir.join("state")).unwrap();
        let forks = medgate::chain::ChainStore::open(&db).unwrap().forks().unwrap();
        assert_eq!(forks.len(), 1, "{forks:?}");
        assert_eq!(forks[0]["height"], 2);
        assert_eq!(forks[0]["theirs"]["gateway"], "hospital-c");
    }
    c.gws[0].start_alive();
    let (status, body) = medgate::demo::admin_get(c.gws[0].site.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("fork"), "{body}");
}

#[test]
fn compaction_keeps_what_every_member_still_needs() {
    let mut c = consortium_with("compact", true);
    ingest(&c, 0, 3, "a");
    converge(&c, 2.0);
    // A has C's and B's checkpoints of block 2 (they are sent when the head moves).
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["hospital-b", "hospital-c"].iter().any(|p| c.gws[0].metric(&format!("medgate_checkpoint_lag_blocks{{peer=\"{p}\"}}")) != Some(0.0)) {
        assert!(Instant::now() < deadline, "checkpoints never arrived at A");
        std::thread::sleep(Duration::from_millis(200));
    }
    // C stops; A and B go on. C's last checkpoint holds compaction back for it.
    c.gws[2].stop();
    ingest(&c, 1, 3, "b");
    let cfg = c.gws[0].site.config.to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let compacted: u64 = loop {
        let (code, out, err) = c.gws[0].medgate(&["ledger", "compact", "--config", &cfg]);
        if code == 0 {
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            break v["compacted_below"].as_u64().unwrap();
        }
        assert!(err.contains("has sent no checkpoint yet"), "{err}");
        assert!(Instant::now() < deadline, "never compacted: {err}");
        std::thread::sleep(Duration::from_millis(300));
    };
    // C had checkpointed block 2; nothing after its position is gone, so it catches up.
    c.gws[2].start();
    converge(&c, 5.0);
    assert!(compacted > 0);
    let heads = verify_all(&mut c);
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    // Standalone gateways have nothing to compact.
    let (site, _dir) = support::site_for("compact-standalone", "hospital-z");
    let (code, _, err) = support::run_medgate(&["ledger", "compact", "--config", site.config.to_str().unwrap()], &site.softhsm_conf);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn a_gateway_whose_resume_point_was_compacted_catches_up_from_its_peers() {
    let mut c = consortium_with("catchup", true);
    ingest(&c, 0, 2, "a");
    converge(&c, 1.0);
    c.gws[2].stop();
    ingest(&c, 0, 3, "a-while-c-is-down");
    ingest(&c, 1, 2, "b-while-c-is-down");
    // An operator compacts etcd past what C has read (not through `medgate ledger compact`,
    // which would have waited for C).
    let (code, out, err) = c.etcd.etcdctl(&["put", "/test/catchup/probe", "x", "-w", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rev = v["header"]["revision"].as_u64().unwrap().to_string();
    let (code, out, err) = c.etcd.etcdctl(&["compact", &rev]);
    assert_eq!(code, 0, "{out}{err}");
    // C cannot resume from etcd; it fetches the missing blocks from A or B, verifies and stores
    // them, and follows the stream again.
    c.gws[2].start();
    converge(&c, 6.0);
    assert!(c.gws[2].log_text().contains("caught up from a peer gateway"), "{}", c.gws[2].log_text());
    ingest(&c, 2, 1, "c-after-catching-up");
    converge(&c, 7.0);
    let heads = verify_all(&mut c);
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
}
