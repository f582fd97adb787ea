//! Writes the seed corpora under `fuzz/corpus/<target>/` from the same fixtures the test suites
//! use: medgate's sample ITI-65 Bundle and the MHD validation kit's fixtures, signed ledger
//! items of every entry kind (made with the fixed seed key), member cards and a genesis, the
//! reference configuration, peer messages, and rcgen client certificates.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (no fuzzing instrumentation
//! needed). The output is deterministic except for signatures and certificates.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a generator run by hand")]

use std::path::{Path, PathBuf};

use medgate_fuzz::{sign, GATEWAY};
use medgate_ledger::{Block, ChainState, Entry, EntryBody, Receipt, UnsignedBatch, UnsignedCheckpoint};
use serde_json::json;

/// The fixed seed key (`medgate_fuzz::spki`), base64.
const P256_B64: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEs0W2w2YA63UZHlij3lufYDTNX2O2xQMYEDWKa78IRA2uurjyvO1dRroBhQJjVpt8cIU31RKT3QSYoHfRUIEkzg==";
const RSA_B64: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsecIXOHxmwkzRhJtAnENsfBnzCbesa9oMvdoZYKXobc+4n28P039KRRH+z6+A2NoA0UE7BIkFkoyfKBCpSDMHMT03mY7A/7SGClCOHCzwRhCDwONfKnCXE7Uk3v7oxyHRqXj7RYaiw2bCb8FmjiJy7j+fN8/RH70KIM9MWT3QT6crSwhoh2chzst+GYWfdyC782P8YBDRRyuyFV0HPdaqKqXvt9CcYLNcOmQbqRJZ/6RJgR9mUQlMkwZHiEWdS6WSi2EMdEKBamBwm4K+DcD6Xs8xgzILXRuqSym1f644rdyyy9V93ExRYq6l+sdRuiTVBuL3MHAlHwzPLDz5O/jBwIDAQAB";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn hash(label: &str) -> String {
    use ring::digest::{digest, SHA256};
    hex::encode(digest(&SHA256, label.as_bytes()))
}

fn nonce(n: u8) -> [u8; 16] {
    [n; 16]
}

fn entries() -> Vec<Entry> {
    let t = "2026-01-02T03:04:05.123Z";
    let e = |n: u8, body| Entry::new(GATEWAY, t, nonce(n), body);
    vec![
        e(1, EntryBody::RecordAnchored {
            record_id: "rec-1".into(),
            patient: hash("patient 1"),
            pseudonym_key_version: 1,
            content_hash: hash("content 1"),
            content_type: "application/pdf".into(),
            size: 1234,
            custodian: GATEWAY.into(),
            user: hash("dr who"),
            role: "physician".into(),
            purpose: "TREAT".into(),
        }),
        e(2, EntryBody::RecordRead {
            record_id: "rec-1".into(),
            patient: hash("patient 1"),
            custodian: GATEWAY.into(),
            reader: "hospital-b".into(),
            user: hash("nurse"),
            role: "nurse".into(),
            purpose: "BTG".into(),
            granted: false,
            reason: Some("no-consent".into()),
        }),
        e(3, EntryBody::PatientSearched {
            patient: hash("patient 1"),
            reader: GATEWAY.into(),
            user: hash("nurse"),
            role: "nurse".into(),
            purpose: "TREAT".into(),
            results: 2,
        }),
        e(4, EntryBody::KeyEvent { action: "rotate".into(), key_role: "ledger-signing".into(), key_version: 2, key_id: "0a1b2c".into(), officer: "so-1".into() }),
        e(5, EntryBody::ConsentRecorded {
            consent_id: "c-1".into(),
            patient: hash("patient 1"),
            custodian: GATEWAY.into(),
            grantee: "hospital-b".into(),
            record_ids: vec!["rec-1".into(), "rec-2".into()],
            start: Some(t.into()),
            end: None,
            user: hash("nurse"),
            role: "nurse".into(),
        }),
        e(6, EntryBody::ConsentRevoked {
            consent_id: "c-1".into(),
            patient: hash("patient 1"),
            custodian: GATEWAY.into(),
            grantee: "hospital-b".into(),
            user: hash("nurse"),
            role: "nurse".into(),
        }),
        e(7, EntryBody::RecordErased { record_id: "rec-1".into(), patient: hash("patient 1"), custodian: GATEWAY.into(), user: hash("nurse"), role: "nurse".into() }),
        e(8, EntryBody::MembershipProposed {
            proposal_id: "0f".repeat(16),
            action: "add".into(),
            hospital_id: "hospital-d".into(),
            ledger_public_key: Some(P256_B64.into()),
            ledger_key_version: Some(1),
            sharing_public_key: Some(RSA_B64.into()),
            peer_address: Some("10.20.0.24:9443".into()),
            proposer: GATEWAY.into(),
        }),
        e(9, EntryBody::MembershipApproved { proposal_id: "0f".repeat(16), approver: GATEWAY.into() }),
    ]
}

fn ledger() {
    let entries = entries();
    write("membership", "proposal-entry.json", &serde_json::to_vec(&entries[7]).unwrap());
    for (i, e) in entries.iter().enumerate() {
        e.validate().unwrap();
        write("ledger_entry", &format!("entry-{i}.json"), &serde_json::to_vec(e).unwrap());
    }
    let unsigned = UnsignedBatch::new(GATEWAY, 1, entries.clone());
    unsigned.check().unwrap();
    let batch = unsigned.clone().sign(1, &sign(&unsigned.signing_message()));
    batch.verify(&medgate_fuzz::lookup).unwrap();
    write("ledger_batch", "batch-all-kinds.json", &batch.to_bytes());
    let small = UnsignedBatch::new(GATEWAY, 1, entries[..1].to_vec());
    let small = small.clone().sign(1, &sign(&small.signing_message()));
    write("ledger_batch", "batch-one.json", &small.to_bytes());
    let mut state = ChainState::new();
    let block = state.cut(7, vec![batch], &medgate_fuzz::lookup, &mut |_| true).unwrap();
    assert_eq!(block.valid, vec![true]);
    write("ledger_block", "block-0.json", &block.to_bytes());
    let next = UnsignedBatch::new(GATEWAY, 2, entries[1..3].to_vec());
    let next = next.clone().sign(1, &sign(&next.signing_message()));
    let block1 = state.cut(9, vec![next, small], &medgate_fuzz::lookup, &mut |_| true).unwrap();
    write("ledger_block", "block-1-with-invalid.json", &block1.to_bytes());
    write("ledger_checkpoint", "chain-state.json", &state.to_bytes());
    write("ledger_checkpoint", "chain-state-empty.json", &ChainState::new().to_bytes());
    for i in [0, 4, 8] {
        let r = Receipt::for_entry(&block, 0, i).unwrap();
        r.verify(&medgate_fuzz::spki()).unwrap();
        write("ledger_receipt", &format!("receipt-{i}.json"), &serde_json::to_vec(&r.to_json()).unwrap());
    }
    let u = UnsignedCheckpoint::new(GATEWAY, 0, block.hash(), 7);
    let msg = format!("medgate-checkpoint-v1\n{GATEWAY}\n0\n{}\n7", hex::encode(block.hash()));
    let cp = u.sign(1, &sign(msg.as_bytes()));
    cp.verify(&medgate_fuzz::lookup).unwrap();
    let cp_bytes = serde_json::to_vec(&cp).unwrap();
    write("ledger_checkpoint", "checkpoint.json", &cp_bytes);
    peer(&cp_bytes, &[block, block1]);
}

/// Peer seeds: the first byte picks the path (0 read, 1 checkpoint, 2 blocks).
fn peer(checkpoint: &[u8], blocks: &[Block]) {
    let with = |sel: u8, body: &[u8]| [&[sel][..], body].concat();
    let read = json!({"record_id": "rec-1", "user": hash("nurse"), "role": "nurse", "purpose": "TREAT"});
    write("peer_messages", "read.json", &with(0, &serde_json::to_vec(&read).unwrap()));
    write("peer_messages", "checkpoint.json", &with(1, checkpoint));
    write("peer_messages", "blocks-request.json", &with(2, br#"{"from":3}"#));
    let grant = json!({"record_id": "rec-1", "content_type": "application/pdf", "content_hash": hash("c"), "doc_nonce": "AAAAAAAAAAAAAAAA", "doc_ct": "3q2+7w==", "shared_key": "AQID"});
    write("peer_messages", "grant.json", &with(0, &serde_json::to_vec(&grant).unwrap()));
    let mut sealed = grant.clone();
    sealed["transport_key"] = json!("BAUGBw==");
    write("peer_messages", "grant-transport.json", &with(0, &serde_json::to_vec(&sealed).unwrap()));
    let answer: Vec<serde_json::Value> = blocks.iter().map(|b| serde_json::from_slice(&b.to_bytes()).unwrap()).collect();
    write("peer_messages", "blocks-answer.json", &with(2, &serde_json::to_vec(&answer).unwrap()));
}

fn membership() {
    let card = |id: &str, addr: &str| {
        json!({"hospital_id": id, "ledger_public_key": P256_B64, "ledger_key_version": 1, "sharing_public_key": RSA_B64, "peer_address": addr})
    };
    write("membership", "card.json", &serde_json::to_vec_pretty(&card("hospital-a", "127.0.0.1:9443")).unwrap());
    let minimal = json!({"hospital_id": "hospital-c", "ledger_public_key": P256_B64, "ledger_key_version": 3});
    write("membership", "card-minimal.json", &serde_json::to_vec(&minimal).unwrap());
    let genesis = json!({"consortium": "regional-emr", "created": "2026-01-01T00:00:00Z", "members": [card("hospital-a", "127.0.0.1:9443"), card("hospital-b", "[::1]:9444")]});
    let parsed = medgate_ledger::membership::Genesis::parse(&serde_json::to_vec(&genesis).unwrap()).unwrap().0;
    write("membership", "genesis.json", &parsed.to_bytes().unwrap());
}

fn fhir() {
    let patient = medgate_fhir::PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: "1234567".into() };
    let tx = medgate_fhir::sample_transaction(&patient, "text/plain", b"Discharge letter", Some(("urn:ietf:rfc:3986", "urn:oid:1.2.3.4.5")));
    write("fhir_ingest", "sample-transaction.json", &serde_json::to_vec_pretty(&tx).unwrap());
    let tx_pdf = medgate_fhir::sample_transaction(&patient, "application/pdf", b"%PDF-1.4 not much", None);
    write("fhir_ingest", "sample-transaction-pdf.json", &serde_json::to_vec(&tx_pdf).unwrap());
    let docs = medgate_fhir::parse_transaction(&serde_json::to_vec(&tx).unwrap()).unwrap();
    let mut docref = docs[0].document_reference.clone();
    docref["content"][0]["attachment"]["data"] = json!("RGlzY2hhcmdlIGxldHRlcg==");
    write("fhir_ingest", "document-reference.json", &serde_json::to_vec_pretty(&docref).unwrap());
    let consent = json!({
        "resourceType": "Consent",
        "status": "active",
        "patient": {"identifier": {"system": "urn:oid:1.2", "value": "P-7"}},
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
            "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}],
            "data": [{"meaning": "instance", "reference": {"reference": "DocumentReference/00ff"}}]
        }
    });
    let parsed = medgate_fhir::parse_consent(&serde_json::to_vec(&consent).unwrap()).unwrap();
    write("fhir_ingest", "consent.json", &serde_json::to_vec_pretty(&consent).unwrap());
    let answer = medgate_fhir::consent_resource("c-1", &parsed, GATEWAY, None);
    write("fhir_ingest", "consent-answer.json", &serde_json::to_vec(&answer).unwrap());
    let patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"}, {"name": "value", "valueCode": "entered-in-error"}]}]});
    assert!(medgate_fhir::parse_status_patch(&serde_json::to_vec(&patch).unwrap()).is_ok());
    write("fhir_ingest", "status-patch.json", &serde_json::to_vec(&patch).unwrap());
    let kit = root().join("../tests/mhd/fixtures");
    for dir in ["good", "bad"] {
        let mut names: Vec<_> = std::fs::read_dir(kit.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let name = format!("mhd-{dir}-{}", p.file_name().unwrap().to_string_lossy());
            write("fhir_ingest", &name, &std::fs::read(&p).unwrap());
        }
    }
    for (i, q) in ["urn:oid:1.2.250.1.213.1.4.8|1234567", "urn%3Aoid%3A1.2%7C12%2C3", r"http://h.example/mrn|a\|b\,c\\d", "sys|v%00"].iter().enumerate() {
        write("fhir_query", &format!("token-{i}"), q.as_bytes());
    }
    // ITI-67 and ITI-66 as MHD Consumers send them.
    let searches = [
        "patient.identifier=urn:oid:1.2.3%7C42&status=current",
        "patient.identifier=urn:oid:1.2.3%7C42&status=current,superseded&_count=2&_sort=-date",
        "patient=DocumentReference/abc&creation=ge2024-01-01&creation=lt2025-01-01T10:00:00Z&author.given=ada&author.family=Love",
        "patient.identifier=urn:oid:1.2.3%7C42&category=http://loinc.org%7C11369-6&type=34133-9&setting=408467006&period=le2024-06&facility=225732001&event=129265001&security-label=N&format=urn:ihe:iti:xds:2017:mimeTypeSufficient&related=urn:oid:1.2&identifier=urn:ietf:rfc:3986%7Curn:oid:1.2.3.4",
        "patient.identifier=urn:oid:1.2.3%7C42&_summary=true&_elements=type,status&_format=json&_pretty=true&_lastUpdated=gt2020",
        "patient.identifier=urn:oid:1.2.3%7C42&code=submissionset&designationType=http://loinc.org%7C34133-9&sourceId=urn:oid:1.3.6&source.family=hopper&date=eq2024-03-01",
        "patient.identifier=urn:oid:1.2.3%7C42&status:not=entered-in-error&_id=ffff&title=x&_count=0",
    ];
    for (i, q) in searches.iter().enumerate() {
        write("fhir_search", &format!("search-{i}"), q.as_bytes());
    }
}

fn config() {
    let reference = std::fs::read(root().join("../packaging/medgate.toml")).unwrap();
    write("config", "reference.toml", &reference);
    let consortium = r#"
[gateway]
hospital_id = "hospital-a"
state_directory = "/var/lib/medgate"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "medgate"
pin_file = "/etc/medgate/pin"
pool_size = 4
[his]
listen = "[::1]:8443"
certificate = "/etc/medgate/tls/gateway-chain.pem"
client_ca = "/etc/medgate/tls/his-client-ca.pem"
crl = ["/etc/medgate/tls/his-client-ca.crl.pem"]
max_body_bytes = 4096
request_timeout_seconds = 30
[admin]
listen = "127.0.0.1:9090"
[ledger]
mode = "consortium"
batch_max_entries = 64
batch_max_delay_ms = 5
[dangerous]
allow_no_crl = true
admin_on_all_interfaces = false
[consortium]
etcd_endpoints = ["127.0.0.1:2379", "10.0.0.2:2379"]
ca = "/etc/medgate/consortium/ca.pem"
certificate = "/etc/medgate/consortium/gateway.pem"
prefix = "/medgate/ledger"
genesis = "/etc/medgate/consortium/genesis.json"
peer_listen = "0.0.0.0:9443"
break_glass_roles = ["emergency-physician"]
"#;
    write("config", "consortium.toml", consortium.as_bytes());
}

fn certificates() {
    let ca = medgate_gateway::pki::TestCa::new("Hospital A HIS CA").unwrap();
    let from = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let to = from + time::Duration::days(30);
    for role in ["his", "his-read"] {
        let (cert, _key) = ca.issue_client("his-main", role, from, to).unwrap();
        write("client_cert", &format!("client-{role}.der"), cert.der());
    }
    let (server, _key) = ca.issue_server("gateway.hospital-a.example").unwrap();
    write("client_cert", "server.der", server.der());
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "hospital-b");
    params.distinguished_name.push(rcgen::DnType::CommonName, "hospital-b");
    let key = rcgen::KeyPair::generate().unwrap();
    let peer = params.self_signed(&key).unwrap();
    write("client_cert", "peer-gateway.der", peer.der());
}

fn main() {
    ledger();
    membership();
    fhir();
    config();
    certificates();
    println!("seeds written under {}", root().join("corpus").display());
}
