//! Three hospitals on one consortium ledger ordered by a real 3-member etcd cluster with mutual
//! TLS: every gateway cuts the same blocks from the ordered stream, whatever fails.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;
#[path = "support/etcd.rs"]
mod etcd;

use std::time::{Duration, Instant};

use etcd::EtcdCluster;
use medgate_fhir::{sample_transaction, PatientId};
use medgate_ledger::membership::{Genesis, MemberCard};
use medgate_gateway::pki::TestCa;
use support::{receipt_of, rt, Gw};

const HOSPITALS: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

struct Consortium {
    etcd: EtcdCluster,
    gws: Vec<Gw>,
    ca: TestCa,
    name: String,
    /// The genesis document's bytes, as every member holds them.
    genesis: Vec<u8>,
    pseudonym_key: Option<[u8; 32]>,
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
    let cards: Vec<MemberCard> = sites
        .iter()
        .zip(&peers)
        .map(|((s, _), peer)| {
            let sharing_key = s.dir.join("sharing-public-key.pem");
            MemberCard::from_files(&s.hospital, &s.ledger_public_key, 1, sharing.then_some(sharing_key.as_path()), sharing.then_some(*peer)).unwrap()
        })
        .collect();
    let genesis = Genesis::new(&format!("test consortium {name}"), &medgate_gateway::clock::now_rfc3339(), cards).unwrap().to_bytes().unwrap();
    let mut c = Consortium { etcd, gws: Vec::new(), ca, name: name.to_owned(), genesis, pseudonym_key };
    for ((site, dir), peer) in sites.into_iter().zip(&peers) {
        configure(&c, &site, sharing.then_some(*peer));
        c.gws.push(Gw::prepared(site, dir));
    }
    // Per-hospital RBAC on etcd, as an operator sets it up: each gateway writes only its own prefix.
    let genesis_file = c.gws[0].site.dir.join("genesis.json");
    etcd_rbac(&c, &["--genesis", genesis_file.to_str().unwrap(), "--enable-auth"]);
    for gw in &mut c.gws {
        gw.start();
    }
    c
}

/// Runs `medgate consortium etcd-rbac --prefix <the consortium's> ARGS` and applies what it prints.
fn etcd_rbac(c: &Consortium, args: &[&str]) {
    let prefix = format!("/test/{}", c.name);
    let mut all = vec!["consortium", "etcd-rbac", "--prefix", prefix.as_str()];
    all.extend_from_slice(args);
    let (code, out, err) = support::run_medgate(&all, &c.gws[0].site.softhsm_conf);
    assert_eq!(code, 0, "{out}{err}");
    c.etcd.apply_script(&out);
}

/// Makes `site` a gateway of consortium `c`: a consortium certificate for its HSM TLS key, its
/// own copy of the genesis document, and the settings; with `peer`, a peer listener and
/// break-glass for the role `emergency-physician`.
fn configure(c: &Consortium, site: &medgate::demo::Site, peer: Option<std::net::SocketAddr>) {
    let peer_settings = match peer {
        Some(peer) => format!("peer_listen = \"{peer}\"\nbreak_glass_roles = [\"emergency-physician\"]\n"),
        None => String::new(),
    };
    let csr = std::fs::read_to_string(site.dir.join("tls/server.csr")).unwrap();
    let loopback = [std::net::IpAddr::from([127, 0, 0, 1])];
    std::fs::write(site.dir.join("tls/consortium.pem"), c.ca.sign_peer_csr(&csr, 30, &loopback).unwrap().pem()).unwrap();
    std::fs::write(site.dir.join("tls/consortium-ca.pem"), c.ca.cert.pem()).unwrap();
    let genesis_file = site.dir.join("genesis.json");
    std::fs::write(&genesis_file, &c.genesis).unwrap();
    let endpoints: Vec<String> = c.etcd.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let text = std::fs::read_to_string(&site.config).unwrap();
    let text = format!(
        "{text}\n[ledger]\nmode = \"consortium\"\n\n[consortium]\netcd_endpoints = [{}]\nca = \"{tls}/consortium-ca.pem\"\ncertificate = \"{tls}/consortium.pem\"\nprefix = \"/test/{name}\"\ngenesis = \"{genesis}\"\n{peer_settings}",
        endpoints.join(", "),
        tls = site.dir.join("tls").display(),
        genesis = genesis_file.display(),
        name = c.name,
    );
    std::fs::write(&site.config, text).unwrap();
}

/// Stores `n` documents at gateway `i`; returns the record ids (each answered 200, all anchored).
fn ingest(c: &Consortium, i: usize, n: u32, tag: &str) -> Vec<String> {
    rt().block_on(async {
        let mut his = c.gws[i].client();
        let mut ids = Vec::new();
        for k in 0..n {
            let body = sample_transaction(&patient(k), "text/plain", format!("{tag} {k}").as_bytes(), None);
            let r = his.post_json("/", &body, &[]).await.unwrap();
            assert_eq!(r.status, 200, "{}\ngateway log:\n{}", String::from_utf8_lossy(&r.body), c.gws[i].log_text());
            let doc = r.json()["entry"][0]["response"].clone();
            assert!(receipt_of(&doc).is_some());
            ids.push(support::created_id(&r.json()));
        }
        ids
    })
}

/// Waits (`secs` at most) until every entry `g` stored is in a block.
fn wait_outbox_drained(g: &Gw, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while g.metric("medgate_outbox_entries") != Some(0.0) {
        assert!(Instant::now() < deadline, "{}'s outbox never drained:\n{}", g.site.hospital, g.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// Waits until nothing more is on its way to the ledger and every gateway holds the same height.
/// Each gateway is read in the order that makes one look enough: first its shred marker (a
/// pass puts its key events in the outbox before it clears the marker), then its outbox (an
/// entry leaves it in the block that holds it), then the heights (the same height is the same
/// chain). Every other entry is in the outbox or a block before the request that made it is
/// answered.
fn settle(c: &Consortium) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let quiet = c.gws.iter().all(|g| g.metric("medgate_shred_pending") == Some(0.0) && g.metric("medgate_outbox_entries") == Some(0.0));
        let hs: Vec<Option<f64>> = c.gws.iter().map(|g| g.metric("medgate_ledger_height")).collect();
        if quiet && hs.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(Instant::now() < deadline, "ledgers did not settle: heights {hs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops every gateway and returns each one's `ledger verify` verdict (with all members' keys).
fn verify_all(c: &mut Consortium) -> Vec<String> {
    verify_all_with(c, &[])
}

/// [`verify_all`], trusting also the keys of hospitals no longer in `c.gws` (removed members).
fn verify_all_with(c: &mut Consortium, former: &[&std::path::Path]) -> Vec<String> {
    let mut keys: Vec<String> = c.gws.iter().map(|g| g.site.ledger_public_key.display().to_string()).collect();
    keys.extend(former.iter().map(|p| p.display().to_string()));
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
    // Ten batches (one create each, sequentially: a record and its SubmissionSet), heights 0..=9,
    // at every gateway.
    converge(&c, 9.0);
    let heads = verify_all(&mut c);
    assert!(heads[0].contains("20 entries"), "{heads:?}");
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
    // Ten creates, each a record and its SubmissionSet.
    assert!(heads[0].contains("20 entries") && heads[0].contains("0 flagged invalid"), "{heads:?}");
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    assert_eq!(during.len() + other.len(), 8);
}

#[test]
fn quorum_loss_stores_and_answers_202_then_anchors_when_quorum_returns() {
    let mut c = consortium("quorum");
    ingest(&c, 0, 1, "before");
    c.etcd.kill(0);
    c.etcd.kill(1);
    let (id, consent_id) = rt().block_on(async {
        let mut his = c.gws[0].client();
        let t = Instant::now();
        let r = his.post_json("/", &sample_transaction(&patient(7), "text/plain", b"during the outage", None), &[]).await.unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert!(t.elapsed() < Duration::from_secs(30), "the HIS waited {:?}", t.elapsed());
        let doc = r.json()["entry"][0]["response"].clone();
        assert!(receipt_of(&doc).is_none());
        // Stored and readable while the ledger waits.
        let id = support::created_id(&r.json());
        let bin = his.get(&format!("/Binary/{id}")).await.unwrap();
        assert_eq!(bin.body.as_ref(), b"during the outage");
        // A consent recorded meanwhile waits in the outbox too; its retry is that same consent.
        let consent = serde_json::json!({
            "resourceType": "Consent", "status": "active",
            "patient": {"identifier": {"system": patient(7).system, "value": patient(7).value}},
            "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}]}
        });
        let first = his.post_json("/Consent", &consent, &[]).await.unwrap();
        assert_eq!(first.status, 202, "{}", String::from_utf8_lossy(&first.body));
        let retry = his.post_json("/Consent", &consent, &[]).await.unwrap();
        assert_eq!((retry.status, retry.json()["id"].clone()), (202, first.json()["id"].clone()));
        (id, first.json()["id"].as_str().unwrap().to_owned())
    });
    assert!(c.gws[0].metric("medgate_outbox_entries").unwrap() >= 1.0);

    // kill -9 while a create and a consent, each sent with an Idempotency-Key, are stored and wait
    // for the ordering service. A claim dies with its process: each retry is answered at once,
    // from what the first attempt committed, and nothing is recorded twice.
    let create = sample_transaction(&patient(8), "text/plain", b"stored as the gateway died", None);
    let consent = serde_json::json!({
        "resourceType": "Consent", "status": "active",
        "patient": {"identifier": {"system": patient(7).system, "value": patient(7).value}},
        "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-c"}}}]}
    });
    let crash = rt();
    let queued = c.gws[0].metric("medgate_outbox_entries").unwrap();
    let in_flight = [("/", &create, "crash-create"), ("/Consent", &consent, "crash-consent")].map(|(path, body, key)| {
        let (mut his, body) = (c.gws[0].client(), body.clone());
        crash.spawn(async move { his.post_json(path, &body, &[("idempotency-key", key)]).await })
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    // The create's two entries (its record and its SubmissionSet) and the consent's.
    while c.gws[0].metric("medgate_outbox_entries").unwrap() < queued + 3.0 {
        assert!(Instant::now() < deadline, "the create and the consent were never stored:\n{}", c.gws[0].log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    c.gws[0].kill9();
    for t in in_flight {
        let answer = crash.block_on(t).unwrap();
        assert!(answer.is_err(), "answered before the crash, so the crash tested nothing: {:?}", answer.map(|r| r.status));
    }
    c.gws[0].start();
    let (retried_record, retried_consent) = crash.block_on(async {
        let mut his = c.gws[0].client();
        let t = Instant::now();
        let r = his.post_json("/", &create, &[("idempotency-key", "crash-create")]).await.unwrap();
        let took_create = t.elapsed();
        // Stored before the crash: that record, still waiting for the ledger.
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let record = support::created_id(&r.json());
        let t = Instant::now();
        let r = his.post_json("/Consent", &consent, &[("idempotency-key", "crash-consent")]).await.unwrap();
        let took_consent = t.elapsed();
        // Queued before the crash: that consent, found in the outbox.
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        eprintln!("retries after kill -9: create {took_create:?}, consent {took_consent:?}");
        (record, r.json()["id"].as_str().unwrap().to_owned())
    });
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
    wait_outbox_drained(&c.gws[0], 20);
    let h = c.gws[0].metric("medgate_ledger_height").unwrap();
    converge(&c, h);
    // (At A: this consortium has no shared pseudonym key, so only A knows the patient's.)
    let consents = rt().block_on(async {
        let mut his = c.gws[0].client();
        his.get(&format!("/Consent?patient={}", medgate::client::query_escape(&patient(7).canonical()))).await.unwrap().json()
    });
    let mut ids: Vec<&str> = consents["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![consent_id.as_str(), retried_consent.as_str()];
    want.sort();
    assert_eq!(ids, want, "one consent per request on the ledger: {consents}");
    let found = rt().block_on(async {
        let mut his = c.gws[0].client();
        his.get(&format!("/DocumentReference?patient={}", medgate::client::query_escape(&patient(8).canonical()))).await.unwrap().json()
    });
    assert_eq!(found["total"], 1, "the record stored as the gateway died, once: {found}");
    assert_eq!(found["entry"][0]["resource"]["id"], retried_record.as_str());
    let heads = verify_all(&mut c);
    assert!(heads.iter().all(|x| x == &heads[0]), "{heads:?}");
}

/// A create whose client hangs up runs on to its end (see `Writes::to_the_end`); until it ends
/// it still counts among its client's requests in flight. Held here by the ordering service
/// having lost its quorum: the create is stored and waits for etcd (five seconds at most)
/// before it answers 202.
#[test]
fn a_write_whose_client_hung_up_still_counts_against_the_clients_requests_in_flight() {
    let mut c = consortium("held");
    assert_eq!(c.gws[0].stop().code(), Some(0));
    let mut text = std::fs::read_to_string(&c.gws[0].site.config).unwrap();
    text.push_str("\n[limits]\nmax_requests_in_flight_per_client = 1\n");
    std::fs::write(&c.gws[0].site.config, text).unwrap();
    c.gws[0].start();
    ingest(&c, 0, 1, "before");
    c.etcd.kill(0);
    c.etcd.kill(1);
    let gauge = "medgate_his_requests_in_flight ";
    let queued = c.gws[0].metric("medgate_outbox_entries").unwrap();
    let leaving = rt();
    let sent = {
        let mut his = c.gws[0].client();
        let body = sample_transaction(&patient(3), "text/plain", b"sent by a client that hangs up", None);
        leaving.spawn(async move { his.post_json("/", &body, &[]).await })
    };
    // Stored (its record's and its SubmissionSet's entries in the outbox), now waiting for etcd.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.gws[0].metric("medgate_outbox_entries").unwrap() < queued + 2.0 {
        assert!(Instant::now() < deadline, "the create was never stored:\n{}", c.gws[0].log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client goes away: its runtime and with it its connection.
    sent.abort();
    drop(leaving);
    let answer = rt().block_on(async { c.gws[0].client().get("/metadata").await.unwrap() });
    let said = String::from_utf8_lossy(&answer.body).chars().take(300).collect::<String>();
    assert_eq!(answer.status, 429, "the write its client left is not counted: {said}");
    assert!(said.contains("requests in progress"), "{said}");
    assert_eq!(c.gws[0].metric(gauge), Some(1.0));
    // Once the create has given up on etcd (stored, its entries in the outbox), the place is free.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.gws[0].metric(gauge) != Some(0.0) {
        assert!(Instant::now() < deadline, "the create never ended:\n{}", c.gws[0].log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = rt().block_on(async { c.gws[0].client().get("/metadata").await.unwrap() });
    assert_eq!(answer.status, 200);
    c.etcd.restart(0);
    c.etcd.restart(1);
    wait_outbox_drained(&c.gws[0], 60);
}

#[test]
fn a_restarted_gateway_catches_up_to_the_same_head() {
    let mut c = consortium("restart");
    ingest(&c, 0, 2, "a");
    // C has taken both blocks (heights 0 and 1). Holding no batch of its own, it flushes them
    // within a tenth of a second (`FOREIGN_FLUSH_DELAY`): killed now, it loses them or not, and
    // either way must come back to the same chain.
    converge(&c, 1.0);
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
    for g in &c.gws {
        g.wait_log("no key known for gateway hospital-x");
    }
    let heads = verify_all(&mut c);
    assert!(heads[0].contains("1 flagged invalid"), "{heads:?}");
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
}

/// A batch in the right format, signed by a fresh key that no member holds.
fn forged_batch(gateway: &str) -> Vec<u8> {
    use medgate_ledger::{Entry, EntryBody, UnsignedBatch};
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
fn sign_as(site: &medgate::demo::Site, seq: u64, entries: Vec<medgate_ledger::Entry>) -> Vec<u8> {
    support::with_site_hsm(site, |hsm| {
        let unsigned = medgate_ledger::UnsignedBatch::new(&site.hospital, seq, entries);
        let sig = hsm.sign_digest(medgate_hsm::Role::Ledger, &unsigned.signing_digest()).unwrap();
        unsigned.sign(sig.key_version, &sig.raw).to_bytes()
    })
}

#[test]
fn only_the_hospital_that_recorded_a_consent_may_withdraw_it() {
    use medgate_ledger::{Entry, EntryBody};
    use serde_json::{json, Value};
    let mut c = consortium("consent");
    let p = patient(42);
    // Hospital A holds a record of the patient and records the patient's consent for B.
    let (consent_id, pseudonym) = rt().block_on(async {
        let mut his = c.gws[0].client();
        let r = his.post_json("/", &sample_transaction(&p, "text/plain", b"record at A", None), &[]).await.unwrap();
        assert_eq!(r.status, 200);
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
        let db = support::open_store(&b.dir.join("state"));
        medgate_store::ChainStore::open(&db).unwrap().state().unwrap().last_seq("hospital-b") + 1
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
        let db = support::open_store(&g.site.dir.join("state"));
        let store = medgate_store::ChainStore::open(&db).unwrap();
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
        assert_eq!(r.status, 200);
        support::created_id(&r.json())
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
        // Only the custodian replaces a document or changes its status: B may not, and nothing
        // of B's attempt is stored.
        let mut replacing = sample_transaction(&p, "text/plain", b"B's version", None);
        replacing["entry"][0]["resource"]["relatesTo"] = json!([{"code": "replaces", "target": {"reference": format!("DocumentReference/{record}")}}]);
        let r = b.post_json("/", &replacing, &[]).await.unwrap();
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("only its custodian may replace it"), "{}", r.json());
        let patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "entered-in-error"}]}]});
        let r = b.send("PATCH", &format!("/DocumentReference/{record}"), &[], serde_json::to_vec(&patch).unwrap()).await.unwrap();
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(c.gws[1].metric("medgate_vault_records"), Some(0.0));
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
    let writer_steps = |step: &str| c.gws[0].metric(&format!("medgate_ledger_step_seconds_count{{step=\"{step}\"}}")).unwrap_or(0.0);
    let before: Vec<f64> = ["sign", "submit", "flush"].map(writer_steps).to_vec();
    let r = read_at_b("TREAT", "physician");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body.as_ref(), letter.as_slice(), "B must get the exact bytes");
    // A's access entry: its batch signed, submitted to etcd and its outbox row flushed, each
    // step timed by A's ledger writer.
    let after: Vec<f64> = ["sign", "submit", "flush"].map(writer_steps).to_vec();
    assert!(before.iter().zip(&after).all(|(b, a)| a > b), "sign, submit, flush at A: {before:?} then {after:?}");
    assert_eq!(r.headers["content-type"], "application/pdf");
    // The one granted read is timed step by step on both sides; the refused ones are not.
    for (g, step) in [(&c.gws[1], "custodian"), (&c.gws[1], "unwrap"), (&c.gws[0], "access_entry"), (&c.gws[0], "rewrap")] {
        let count = format!("medgate_peer_read_step_seconds_count{{step=\"{step}\"}}");
        assert_eq!(g.metric(&count), Some(1.0), "{} {step}", g.site.hospital);
    }
    // A second read: A seals the data key under the transport key it made for B at the first,
    // and B's HSM, which unwrapped that key once with its sharing key, opens it with AES-GCM.
    let r = read_at_b("TREAT", "physician");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body.as_ref(), letter.as_slice());
    let (made, received) = ("medgate_hsm_transport_keys_total{event=\"made\"}", "medgate_hsm_transport_keys_total{event=\"received\"}");
    assert_eq!(c.gws[0].metric(made), Some(1.0), "one transport key at A for B's two reads");
    assert_eq!(c.gws[1].metric(received), Some(1.0), "B unwraps A's transport key once");
    // A requester that does not offer transport keys (a gateway from before them) gets the data
    // key wrapped for its sharing key, as before; its read is on the ledger all the same.
    assert_eq!(read_without_transport_offer(&c.gws[1].site, &c.gws[0].site, &record), letter);
    assert_eq!(c.gws[0].metric(made), Some(1.0), "no transport key for a requester that did not offer one");
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
    assert_eq!(c.gws[0].metric(made), Some(2.0), "a transport key of its own for C");
    assert_eq!(c.gws[2].metric(received), Some(1.0));
    // The custodian erases the record: nobody can read it any more, anywhere.
    rt.block_on(async {
        let mut a = c.gws[0].client();
        let r = a.send("DELETE", &format!("/DocumentReference/{record}"), &[], Vec::new()).await.unwrap();
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    });
    let r = read_at_c("emergency-physician");
    assert_eq!(r.status, 410, "{}", String::from_utf8_lossy(&r.body));
    // Every gateway ends with the same chain, and every access is in its audit trail.
    settle(&c);
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
        assert_eq!((granted, denied), (4, 3), "{}: {reads:?}", g.site.hospital);
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

/// Reads `record` from `custodian`'s peer listener as `requester`'s gateway did before transport
/// keys: mutual TLS with the requester's consortium certificate (its key in the requester's
/// HSM), the read request without the `medgate-transport-key` offer. Checks that the grant
/// carries no transport key and opens the document with the data key the requester's HSM
/// unwraps with its sharing key; returns the document.
fn read_without_transport_offer(requester: &medgate::demo::Site, custodian: &medgate::demo::Site, record: &str) -> Vec<u8> {
    use medgate_gateway::config::Config;
    let peer = Config::load(&custodian.config).unwrap().consortium.unwrap().peer_listen.expect("the custodian's peer listener");
    let consortium = Config::load(&requester.config).unwrap().consortium.unwrap();
    support::with_site_hsm(requester, |hsm| {
        let tls = medgate_gateway::tls::consortium_client(&consortium, hsm).unwrap();
        let grant = rt().block_on(async {
            let mut client = medgate::client::HisClient::new(peer, &peer.ip().to_string(), tls).unwrap();
            let body = serde_json::json!({"record_id": record, "user": "ab".repeat(32), "role": "physician", "purpose": "TREAT"});
            let r = client.post_json("/peer/v1/read", &body, &[("content-type", "application/json")]).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()
        });
        assert!(grant.get("transport_key").is_none(), "a grant without the offer carries no transport key: {grant}");
        let field = |name: &str| grant[name].as_str().unwrap_or_else(|| panic!("{name} in {grant}")).to_owned();
        let wrapped = medgate_ledger::keys::b64_decode(&field("shared_key")).unwrap();
        assert_eq!(wrapped.len(), 384, "the data key under the RSA-3072 sharing key");
        let dk = hsm.unwrap_shared(&wrapped).expect("the sharing key unwraps the data key");
        let doc = medgate_store::vault::open_shared_document(record, &field("content_type"), &field("content_hash"), &dk, &field("doc_nonce"), &field("doc_ct")).unwrap();
        doc.to_vec()
    })
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
        let db = support::open_store(&c.gws[2].site.dir.join("state"));
        let store = medgate_store::ChainStore::open(&db).unwrap();
        let mut block = store.block(2).unwrap().unwrap();
        block.order_position += 1000;
        store.overwrite_block(&block).unwrap();
    }
    c.gws[2].start();
    // C signs a checkpoint of its head; A and B hold another block there: fork on both sides.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, a) = medgate::admin_client::get(c.gws[0].site.admin_addr, "/readyz").unwrap();
        let (_, cc) = medgate::admin_client::get(c.gws[2].site.admin_addr, "/readyz").unwrap();
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
        let db = support::open_store(&c.gws[0].site.dir.join("state"));
        let forks = medgate_store::ChainStore::open(&db).unwrap().forks().unwrap();
        assert_eq!(forks.len(), 1, "{forks:?}");
        assert_eq!(forks[0]["height"], 2);
        assert_eq!(forks[0]["theirs"]["gateway"], "hospital-c");
    }
    c.gws[0].start_alive();
    let (status, body) = medgate::admin_client::get(c.gws[0].site.admin_addr, "/readyz").unwrap();
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
    let rev = v["header"]["revision"].as_u64().unwrap();
    let (code, out, err) = c.etcd.etcdctl(&["compact", &rev.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    // etcdctl returns once the member it asked has compacted; the others apply the compaction
    // when raft brings it to them. C may watch from any member: wait until each one refuses
    // the revisions C still needs, or C could read its missing batches from a member that has
    // not compacted yet and never need its peers.
    let below = (rev - 1).to_string();
    for m in 0..c.etcd.len() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, out, err) = c.etcd.etcdctl_on(&[m], &["get", "/test/catchup/probe", "--rev", &below, "--consistency=s"]);
            if code != 0 && err.contains("required revision has been compacted") {
                break;
            }
            assert!(Instant::now() < deadline, "etcd member {m} never compacted: exit {code}\n{out}{err}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // C cannot resume from etcd; it fetches the missing blocks from A or B, verifies and stores
    // them, and follows the stream again. It logs that once it has stored them and found no
    // more at that peer (one more request): wait for the line, the heights converge earlier.
    c.gws[2].start();
    converge(&c, 6.0);
    c.gws[2].wait_log("caught up from a peer gateway");
    ingest(&c, 2, 1, "c-after-catching-up");
    converge(&c, 7.0);
    let heads = verify_all(&mut c);
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
}

/// Runs `medgate consortium ARGS --config <g's config>` and returns (status, stdout, stderr).
fn consortium_cli(g: &Gw, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["consortium"];
    all.extend_from_slice(args);
    all.extend(["--config", g.site.config.to_str().unwrap()]);
    g.medgate(&all)
}

/// The member ids `g`'s ledger copy lists, sorted.
fn members_of(g: &Gw) -> Vec<String> {
    let (code, out, err) = consortium_cli(g, &["members", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["members"].as_array().unwrap().iter().map(|m| m["hospital_id"].as_str().unwrap().to_owned()).collect()
}

/// Stores one document at `g`; returns the HTTP status and the record id.
fn ingest_one(g: &Gw, k: u32, tag: &str) -> (u16, String) {
    rt().block_on(async {
        let mut his = g.client();
        let body = sample_transaction(&patient(k), "text/plain", format!("{tag} {k}").as_bytes(), None);
        let r = his.post_json("/", &body, &[]).await.unwrap();
        (r.status, medgate_fhir::answer_ids(&r.json(), "DocumentReference").pop().unwrap_or_default())
    })
}

/// `medgate consortium approve ID` at `g`, once `g`'s ledger copy has the proposal (it is made
/// at another gateway and reaches this one through the ordered stream).
fn approve(g: &Gw, proposal: &str) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = consortium_cli(g, &["approve", proposal]);
        if r.0 == 0 || !r.2.contains("no membership proposal") || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A raw POST to a monitoring listener, as a local web page could send it; the raw answer.
fn raw_admin_post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Waits until every running gateway lists exactly `want` as members.
fn wait_members(gws: &[&Gw], want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<Vec<String>> = gws.iter().map(|g| members_of(g)).collect();
        if seen.iter().all(|m| m == want) {
            return;
        }
        assert!(Instant::now() < deadline, "rosters did not become {want:?}: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const INVALID: &str = "medgate_events_total{kind=\"ledger_invalid_batches\"}";

#[test]
fn membership_changes_take_a_majority_then_admit_a_hospital_and_remove_one() {
    let mut c = consortium_with("members", true);
    wait_members(&c.gws.iter().collect::<Vec<_>>(), &HOSPITALS);
    // Hospital D: its own HSM (with the consortium pseudonym key), the same genesis, a member card.
    let (site_d, dir_d) = support::site_sharing("members-hospital-d", "hospital-d", c.pseudonym_key.as_ref().map(|k| &k[..]));
    let peer_d = medgate::demo::free_port().unwrap();
    configure(&c, &site_d, Some(peer_d));
    let card = site_d.dir.join("member-card.json");
    let sharing_pem = site_d.dir.join("sharing-public-key.pem");
    let (code, out, err) = support::run_medgate(
        &[
            "consortium", "member-card", "--hospital-id", "hospital-d",
            "--ledger-public-key", site_d.ledger_public_key.to_str().unwrap(),
            "--sharing-public-key", sharing_pem.to_str().unwrap(),
            "--peer-address", &peer_d.to_string(),
            "--out", card.to_str().unwrap(),
        ],
        &site_d.softhsm_conf,
    );
    assert_eq!(code, 0, "{out}{err}");
    etcd_rbac(&c, &["--grant", "hospital-d"]);
    let mut d = Gw::prepared(site_d, dir_d);
    d.start();
    d.wait_log("is not a current member");
    // Not admitted yet: D follows the ledger, keeps what its HIS sends (202), submits nothing.
    let (status, early_record) = ingest_one(&d, 1, "before admission");
    assert_eq!(status, 202, "{}", d.log_text());
    assert_eq!(members_of(&d), HOSPITALS);
    assert_eq!(d.metric("medgate_consortium_member "), Some(0.0));

    // A change the CLI did not send (no admin header, as a web page's request would be) is refused.
    // Admin actions are on the admin socket only: the monitoring listener does not take them.
    let raw = raw_admin_post(c.gws[0].site.admin_addr, "/consortium/proposals", r#"{"action":"remove","hospital_id":"hospital-b"}"#);
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    // A proposes D. One approval of three is no majority.
    let (code, out, err) = consortium_cli(&c.gws[0], &["propose", "--add", card.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is open"), "{out}");
    let proposal = out.split_whitespace().nth(1).unwrap().to_owned();
    let (code, _, err) = consortium_cli(&d, &["approve", &proposal]);
    assert_ne!(code, 0);
    assert!(err.contains("not a current member"), "{err}");
    let (code, _, err) = consortium_cli(&c.gws[0], &["approve", &proposal]);
    assert_ne!(code, 0);
    assert!(err.contains("already approved"), "{err}");
    assert_eq!(members_of(&c.gws[2]), HOSPITALS);
    assert_eq!(c.gws[0].metric("medgate_consortium_open_proposals"), Some(1.0));
    // B approves: two of three, carried.
    let (code, out, err) = approve(&c.gws[1], &proposal);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("carried in block"), "{out}");
    let four = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];
    wait_members(&[&c.gws[0], &c.gws[1], &c.gws[2], &d], &four);
    let (code, _, err) = approve(&c.gws[2], &proposal);
    assert_ne!(code, 0, "a carried proposal takes no more approvals");
    assert!(err.contains("already carried"), "{err}");
    assert_eq!(d.metric("medgate_consortium_member "), Some(1.0));
    assert_eq!(c.gws[0].metric("medgate_consortium_open_proposals"), Some(0.0));
    // Admitted: D's waiting record reaches the ledger, and A finds it by the patient.
    wait_outbox_drained(&d, 20);
    let (status, _) = ingest_one(&d, 2, "after admission");
    assert_eq!(status, 200, "{}", d.log_text());
    let found = rt().block_on(async {
        let mut a = c.gws[0].client();
        let q = medgate::client::query_escape(&patient(1).canonical());
        a.get(&format!("/DocumentReference?patient={q}")).await.unwrap().json()
    });
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["entry"][0]["resource"]["id"], early_record.as_str());
    assert_eq!(found["entry"][0]["resource"]["custodian"]["identifier"]["value"], "hospital-d");

    // C's last valid batch number before it is removed (a receipt names its batch).
    let c_seq = rt().block_on(async {
        let mut his = c.gws[2].client();
        let r = his.post_json("/", &sample_transaction(&patient(4), "text/plain", b"C before removal", None), &[]).await.unwrap();
        assert_eq!(r.status, 200);
        let receipt = receipt_of(&r.json()["entry"][0]["response"]).unwrap();
        serde_json::from_slice::<serde_json::Value>(&receipt).unwrap()["seq"].as_u64().unwrap()
    });
    // Remove C: now three of four must agree.
    let (code, out, err) = consortium_cli(&c.gws[0], &["propose", "--remove", "hospital-c"]);
    assert_eq!(code, 0, "{out}{err}");
    let removal = out.split_whitespace().nth(1).unwrap().to_owned();
    let (code, out, _) = approve(&c.gws[1], &removal);
    assert_eq!(code, 0);
    assert!(out.contains("is open"), "two of four is no majority: {out}");
    let (code, out, err) = approve(&d, &removal);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("carried in block"), "{out}");
    let three = ["hospital-a", "hospital-b", "hospital-d"];
    wait_members(&[&c.gws[0], &c.gws[1], &c.gws[2], &d], &three);
    assert_eq!(c.gws[2].metric("medgate_consortium_member "), Some(0.0));
    etcd_rbac(&c, &["--revoke", "hospital-c"]);
    // C keeps what its HIS sends but submits nothing, and its peers refuse it.
    let (status, _) = ingest_one(&c.gws[2], 3, "after removal");
    assert_eq!(status, 202, "{}", c.gws[2].log_text());
    let refused = rt().block_on(async {
        let site = c.gws[2].site.clone();
        let mut h = medgate::client::HisClient::new(site.his_addr, "localhost", site.his_tls().unwrap()).unwrap().acting_as("dr.c", "emergency-physician", "BTG");
        h.get(&format!("/Binary/{early_record}")).await.unwrap()
    });
    assert_eq!(refused.status, 403, "{}", String::from_utf8_lossy(&refused.body));
    // Its checkpoints, sent every 2 s, reach the peer listeners, which answer 403 to a non-member.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.gws[0].metric("medgate_events_total{kind=\"peer_requests_from_non_members\"}").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "hospital-a's peer listener never refused hospital-c");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(String::from_utf8_lossy(&refused.body).contains("not a current"), "{}", String::from_utf8_lossy(&refused.body));
    // A batch C signs with its own HSM key, put straight into the ordered stream: invalid everywhere.
    let invalid_before: Vec<Option<f64>> = [&c.gws[0], &c.gws[1], &d].iter().map(|g| g.metric(INVALID)).collect();
    c.gws[2].stop();
    let e = medgate_ledger::Entry::new(
        "hospital-c",
        "2026-11-28T10:00:00Z",
        [7; 16],
        medgate_ledger::EntryBody::PatientSearched { patient: "ab".repeat(32), reader: "hospital-c".into(), user: "ef".repeat(32), role: "physician".into(), purpose: "TREAT".into(), results: 0 },
    );
    // Next in C's sequence and signed with its admitted key: only its membership is missing.
    let batch = sign_as(&c.gws[2].site, c_seq + 1, vec![e]);
    let key = format!("/test/{}/batches/hospital-c/after-removal", c.name);
    let (code, out, err) = c.etcd.etcdctl(&["put", &key, std::str::from_utf8(&batch).unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    for (g, before) in [&c.gws[0], &c.gws[1], &d].iter().zip(invalid_before) {
        while g.metric(INVALID).unwrap_or(0.0) <= before.unwrap_or(0.0) {
            assert!(Instant::now() < deadline, "{} did not flag the removed member's batch", g.site.hospital);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Flagged for its membership, not its sequence: its key is no member's any more.
    for g in [&c.gws[0], &c.gws[1], &d] {
        g.wait_log("no key known for gateway hospital-c version 1");
    }
    // The members' copies verify, from the genesis hash, to one head (D's key admitted on the
    // ledger). C's etcd user is gone, so its copy stops where it was removed, and still verifies.
    let removed = c.gws.remove(2);
    let height = c.gws[0].metric("medgate_ledger_height").unwrap();
    c.gws.push(d);
    converge(&c, height);
    let heads = verify_all_with(&mut c, &[removed.site.ledger_public_key.as_path()]);
    assert_eq!(heads.len(), 3);
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    let (code, out, err) = removed.medgate(&["ledger", "verify", "--config", removed.site.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ledger OK"), "{out}");
}

#[test]
fn etcd_rbac_lets_each_hospital_write_only_under_its_own_prefix() {
    let c = consortium("rbac");
    ingest(&c, 0, 1, "a");
    ingest(&c, 1, 1, "b");
    converge(&c, 1.0);
    // A client certificate for hospital-a from the consortium CA, with its key in a file (the
    // gateways' keys stay in their HSMs): etcd knows it as the user hospital-a.
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = c.ca.issue_client("hospital-a", "gateway", now - time::Duration::minutes(5), now + time::Duration::days(1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let as_a = |args: &[&str]| c.etcd.etcdctl_as(&cert_file, &key_file, args);
    let (code, out, err) = as_a(&["get", "--prefix", "--keys-only", "/test/rbac/batches/"]);
    assert_eq!(code, 0, "every member reads the whole stream: {out}{err}");
    assert!(out.contains("/test/rbac/batches/hospital-b/"), "{out}");
    let (code, out, err) = as_a(&["put", "/test/rbac/batches/hospital-b/not-mine", "x"]);
    assert_ne!(code, 0, "hospital-a wrote under hospital-b's prefix: {out}");
    assert!(err.contains("permission denied"), "{err}");
    let (code, _, err) = as_a(&["put", "/elsewhere", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("permission denied"), "{err}");
    let (code, _, err) = as_a(&["del", "--prefix", "/test/rbac/batches/"]);
    assert_ne!(code, 0, "nobody but root deletes the ordered stream");
    assert!(err.contains("permission denied"), "{err}");
    // Its own prefix takes writes (a value that is not a batch is skipped by every gateway alike).
    let (code, out, err) = as_a(&["put", "/test/rbac/batches/hospital-a/probe", "not a batch"]);
    assert_eq!(code, 0, "{out}{err}");
    // The gateways still order, under authentication, to one head.
    ingest(&c, 2, 1, "c");
    converge(&c, 2.0);
}

#[test]
fn the_chain_hangs_from_the_genesis_and_a_gateway_cannot_change_consortium() {
    use sha2::Digest as _;
    let mut c = consortium("genesis");
    ingest(&c, 0, 1, "a");
    converge(&c, 0.0);
    c.gws[0].stop();
    let site = c.gws[0].site.clone();
    // Block 0 links to the SHA-256 of the genesis document every member holds.
    {
        let cfg = medgate_gateway::config::Config::load(&site.config).unwrap();
        let db = support::open_store(&cfg.gateway.state_directory);
        let store = medgate_store::ChainStore::open(&db).unwrap();
        let block0 = store.block(0).unwrap().unwrap();
        assert_eq!(block0.prev_hash, hex::encode(sha2::Sha256::digest(&c.genesis)));
        assert_eq!(store.genesis().unwrap().as_deref(), Some(c.genesis.as_slice()));
    }
    // Another genesis (same members, another consortium) on the same ledger copy: refused at
    // start, naming the setting and both hashes.
    let (other, _) = Genesis::parse(&c.genesis).unwrap();
    let other = Genesis::new("another consortium", &medgate_gateway::clock::now_rfc3339(), other.members).unwrap();
    let other_hash = other.write(&site.dir.join("genesis.json")).unwrap();
    let log = site.dir.join("refused.log");
    let err = site.spawn(&support::exe(), Some(&log)).expect_err("a gateway must not start on another genesis");
    assert!(err.message.contains("exited during start-up"), "{}", err.message);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("consortium.genesis") && text.contains(&hex::encode(other_hash)), "{text}");
    // Put back, it starts and follows again.
    std::fs::write(site.dir.join("genesis.json"), &c.genesis).unwrap();
    c.gws[0].start();
    ingest(&c, 1, 1, "b");
    converge(&c, 1.0);
}

#[test]
fn a_member_with_a_rotated_ledger_key_submits_nothing_until_the_others_admit_the_key() {
    let mut c = consortium("rekey");
    ingest(&c, 2, 1, "c before rotation");
    converge(&c, 0.0);
    // hospital-c's officer rotates its ledger key (gateway stopped) and exports the new one.
    c.gws[2].stop();
    let cfg_c = c.gws[2].site.config.to_str().unwrap().to_owned();
    let (code, out, err) = c.gws[2].medgate(&["keys", "--config", &cfg_c, "rotate", "--role", "ledger"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, pem, err) = c.gws[2].medgate(&["keys", "--config", &cfg_c, "public-key", "--role", "ledger"]);
    assert_eq!(code, 0, "{err}");
    let new_key = c.gws[2].site.dir.join("ledger-v2.pem");
    std::fs::write(&new_key, pem).unwrap();
    c.gws[2].start();
    // Its batches would be flagged invalid everywhere: it submits none, and says why.
    let (status, _) = ingest_one(&c.gws[2], 5, "c after rotation");
    assert_eq!(status, 202);
    c.gws[2].wait_log("is not the one the consortium admitted");
    // Another member proposes the new key; an update is decided by the other members (A and B).
    let card = c.gws[0].site.dir.join("hospital-c-v2.json");
    let (code, out, err) = c.gws[0].medgate(&[
        "consortium", "member-card", "--hospital-id", "hospital-c",
        "--ledger-public-key", new_key.to_str().unwrap(), "--ledger-key-version", "2",
        "--out", card.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = consortium_cli(&c.gws[0], &["propose", "--update", card.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is open"), "{out}");
    let proposal = out.split_whitespace().nth(1).unwrap().to_owned();
    let (code, out, err) = approve(&c.gws[1], &proposal);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("carried in block"), "{out}");
    // Admitted: C's waiting entries reach the ledger, and the chains agree.
    wait_outbox_drained(&c.gws[2], 30);
    assert_eq!(ingest_one(&c.gws[2], 6, "c with its new key").0, 200);
    let height = c.gws[2].metric("medgate_ledger_height").unwrap();
    converge(&c, height);
    let heads = verify_all_with(&mut c, &[new_key.as_path()]);
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    assert!(heads[0].contains("0 flagged invalid"), "{heads:?}");
}
