//! One hospital on a second PKCS#11 implementation, kryoptic (built by `scripts/install-deps.sh`):
//! `medgate keys probe` on it, then `medgate serve` on a kryoptic token storing records, reading
//! them back byte for byte, every key role rotated (the KEK under the officers' quorum), the old
//! records still readable, and the ledger verified offline. kryoptic cannot hold a backup key,
//! and the console says so. Fails, never skips, when kryoptic is missing.
//!
//! Its own test binary: kryoptic reads `KRYOPTIC_CONF` when it initialises, in this process and
//! in the gateway it starts, so the whole story runs as one test.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use medgate_fhir::{sample_transaction, PatientId};
use support::officers::Officers;
use support::{kryoptic_module, rt, Gw};

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("KRYOPTIC-{n:06}") }
}

async fn store(his: &mut medgate::client::HisClient, p: &PatientId, doc: &[u8]) -> String {
    let r = his.post_json("/", &sample_transaction(p, "text/plain", doc, None), &[]).await.unwrap();
    assert_eq!(r.status, 200, "a transaction answers 200: {}", String::from_utf8_lossy(&r.body));
    support::created_id(&r.json())
}

async fn read(his: &mut medgate::client::HisClient, id: &str) -> Vec<u8> {
    let r = his.get(&format!("/Binary/{id}")).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.body.to_vec()
}

#[test]
fn a_gateway_on_kryoptic_stores_reads_rotates_every_role_and_verifies_its_ledger() {
    let module = kryoptic_module();
    let store_dir = tempfile::Builder::new().prefix("medgate-test-kryoptic-").tempdir().unwrap();
    let conf = store_dir.path().join("kryoptic.conf");
    std::fs::write(&conf, format!("[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n", store_dir.path().join("token.sqlite").display())).unwrap();
    std::env::set_var("KRYOPTIC_CONF", &conf);
    std::env::set_var("MEDGATE_DEMO_HSM_MODULE", &module);
    let mut gw = Gw::new("kryoptic");
    let cfg = gw.site.config.to_str().unwrap().to_owned();
    let rt = rt();

    // The probe, for people and for scripts.
    let (code, out, err) = gw.medgate(&["keys", "--config", &cfg, "probe"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("libkryoptic_pkcs11.so") && out.contains("token \"medgate\""), "{out}");
    // Kryoptic offers CKM_AES_GCM: a new KEK wraps data keys with C_Encrypt (two calls per key).
    assert!(out.contains("kek") && out.contains("v1 ready (CKM_AES_GCM (0x1087))"), "{out}");
    let (code, json, err) = gw.medgate(&["keys", "--config", &cfg, "probe", "--json"]);
    assert_eq!(code, 0, "{err}");
    let probe: serde_json::Value = serde_json::from_str(&json).unwrap();
    let roles = probe["roles"].as_array().unwrap();
    assert_eq!(roles.len(), 5);
    assert!(roles.iter().all(|r| r["supported"] == true && r["key"]["state"] == "ready"), "{json}");

    // Store and read back, byte for byte.
    let docs: Vec<(String, Vec<u8>)> = rt.block_on(async {
        let mut his = gw.client();
        let mut out = Vec::new();
        for n in 0..3u32 {
            let doc = format!("kryoptic record {n}: {}", "x".repeat(n as usize * 100)).into_bytes();
            out.push((store(&mut his, &patient(n), &doc).await, doc));
        }
        for (id, doc) in &out {
            assert_eq!(&read(&mut his, id).await, doc);
        }
        out
    });
    assert_eq!(gw.stop().code(), Some(0));

    // Every role rotated: the KEK under a quorum of officers, the others by one named officer;
    // the TLS key gets a certificate for its new version.
    let officers = Officers::enrol(&gw.site);
    let file = officers.approved(&["rotate-kek"], 2);
    let (code, out, err) = officers.keys(&["rotate", "--role", "kek", "--approvals", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("medgate-kek-v2"), "{out}");
    for role in ["ledger", "sharing", "pseudonym", "tls"] {
        let mut args = vec!["rotate", "--role", role];
        args.extend(officers.key_arg(0));
        let (code, _, err) = officers.keys(&args);
        assert_eq!(code, 0, "{role}: {err}");
    }
    let csr = gw.site.dir.join("tls/server-v2.csr");
    let (code, _, err) = officers.keys(&["csr", "--subject", "CN=localhost,O=hospital-a", "--dns", "localhost", "--out", csr.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let cert = gw.site.ca.sign_server_csr(&std::fs::read_to_string(&csr).unwrap(), 365).unwrap();
    std::fs::write(gw.site.dir.join("tls/server.pem"), cert.pem()).unwrap();
    let pem = gw.site.dir.join("tls/server.pem");
    let mut args = vec!["import-cert", pem.to_str().unwrap()];
    args.extend(officers.key_arg(0));
    let (code, _, err) = officers.keys(&args);
    assert_eq!(code, 0, "{err}");
    let (code, table, _) = officers.keys(&["list"]);
    assert_eq!(code, 0);
    for role in ["ledger", "tls", "kek", "sharing", "pseudonym"] {
        assert!(table.contains(&format!("medgate-{role}-v2")), "{table}");
    }

    // The gateway on the rotated keys: old records read, new ones stored and read.
    gw.start();
    rt.block_on(async {
        let mut his = gw.client();
        for (id, doc) in &docs {
            assert_eq!(&read(&mut his, id).await, doc, "a record stored before the rotation");
        }
        let doc = b"stored under the second version of every key".to_vec();
        let id = store(&mut his, &patient(9), &doc).await;
        assert_eq!(read(&mut his, &id).await, doc);
    });
    assert_eq!(gw.stop().code(), Some(0));

    // The ledger, signed by both ledger key versions, verifies offline.
    let mut keys_args = Vec::new();
    for v in ["1", "2"] {
        let (code, pem, err) = officers.keys(&["public-key", "--role", "ledger", "--version", v]);
        assert_eq!(code, 0, "{err}");
        let path = gw.site.dir.join(format!("ledger-v{v}.pem"));
        std::fs::write(&path, pem).unwrap();
        keys_args.push(path);
    }
    let (code, out, err) = gw.medgate(&[
        "ledger",
        "verify",
        "--config",
        &cfg,
        "--public-key",
        keys_args[0].to_str().unwrap(),
        "--public-key",
        keys_args[1].to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // No key backup on kryoptic: it never lets a secret key be trusted.
    let file = officers.approved(&["backup-init"], 2);
    let shares = gw.site.dir.join("shares");
    let (code, _, err) = officers.keys(&[
        "backup",
        "init",
        "--approvals",
        file.to_str().unwrap(),
        "--so-pin-file",
        gw.site.dir.join("hsm-so-pin").to_str().unwrap(),
        "--shares-dir",
        shares.to_str().unwrap(),
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("libkryoptic_pkcs11.so") && err.contains("cannot hold medgate's key backup") && err.contains("vendor"), "{err}");
    assert!(!shares.exists() || std::fs::read_dir(&shares).unwrap().next().is_none(), "shares were written for a refused backup key");
}
