//! Disaster recovery, end to end on real SoftHSM2 tokens, as README "Disaster recovery" tells an
//! officer to do it: the officers set up the backup key (shares encrypted to each of them), the
//! keys are made after it, a hundred records are stored, a key backup is taken, the token is
//! destroyed; a fresh token is initialised, one officer's share is not enough, two officers
//! restore the backup, the gateway gets a new TLS key and certificate, reads every record byte for
//! byte, and the ledger verifies with the public key kept apart. And crypto-shredding holds: a
//! key backup taken before a shred pass cannot bring back what the pass destroyed.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use medgate_fhir::{sample_transaction, PatientId};
use support::officers::Officers;
use support::{rt, Gw};

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("DR-{n:06}") }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Removes a key object from the site's token with OpenSC's tool, as an officer would on a token
/// whose keys were made before the backup key.
fn pkcs11_delete(gw: &Gw, kind: &str, label: &str) {
    let pin = std::fs::read_to_string(gw.site.dir.join("hsm-pin")).unwrap();
    let out = Command::new("pkcs11-tool")
        .args(["--module", medgate::demo::SOFTHSM_MODULE, "--token-label", "medgate", "--login", "--pin", pin.trim(), "--delete-object", "--type", kind, "--label", label])
        .env("SOFTHSM2_CONF", &gw.site.softhsm_conf)
        .output()
        .expect("pkcs11-tool (install opensc)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A site whose ceremony follows README "Key ceremony": officers enrolled, the backup key set up,
/// then the backed-up keys made (the demo site made them first: they are removed and made again
/// before any record exists). Returns the officers and the shares.
fn site_with_backup(name: &str) -> (Gw, Officers, Vec<PathBuf>) {
    let (site, dir) = support::site(name);
    let gw = Gw::prepared(site, dir);
    for (kind, label) in [("secrkey", "medgate-kek-v1"), ("secrkey", "medgate-pseudonym-v1"), ("privkey", "medgate-ledger-v1"), ("pubkey", "medgate-ledger-v1"), ("privkey", "medgate-sharing-v1"), ("pubkey", "medgate-sharing-v1")] {
        pkcs11_delete(&gw, kind, label);
    }
    let o = Officers::enrol(&gw.site);
    let file = o.approved(&["backup-init"], 2);
    let shares_dir = gw.site.dir.join("shares");
    let (code, out, err) = o.keys(&["backup", "init", "--approvals", s(&file), "--so-pin-file", s(&gw.site.dir.join("hsm-so-pin")), "--shares-dir", s(&shares_dir)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 of the 3 shares"), "{out}");
    let shares: Vec<PathBuf> = support::officers::NAMES.iter().map(|n| shares_dir.join(format!("{n}.share"))).collect();
    for role in ["ledger", "kek", "sharing", "pseudonym"] {
        let mut args = vec!["generate", "--role", role];
        args.extend(o.key_arg(0));
        let (code, out, err) = o.keys(&args);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("only wrapped under the trusted backup key"), "{out}");
    }
    let (code, pem, err) = o.keys(&["public-key", "--role", "ledger"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&gw.site.ledger_public_key, pem).unwrap();
    let (code, status, err) = o.keys(&["backup", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("medgate-kek-v1") && !status.contains("NOT backed up") && status.contains("last backup     never"), "{status}");
    (gw, o, shares)
}

/// The token is lost: its files are gone, and a fresh token is initialised in its place.
fn replace_the_token(gw: &Gw, o: &Officers) {
    let tokens = gw.site.dir.join("softhsm/tokens");
    for e in std::fs::read_dir(&tokens).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let (code, _, err) = o.keys(&["init-token", "--so-pin-file", s(&gw.site.dir.join("hsm-so-pin"))]);
    assert_eq!(code, 0, "{err}");
}

fn restore(gw: &Gw, o: &Officers, backup: &Path, who: &[(usize, usize)]) -> (i32, String, String) {
    let mut args = vec!["backup".to_owned(), "restore".into(), "--backup".into(), s(backup).into(), "--ledger-public-key".into(), s(&gw.site.ledger_public_key).into()];
    args.extend(["--so-pin-file".into(), s(&gw.site.dir.join("hsm-so-pin")).into()]);
    for (share, key) in who {
        args.extend(["--share".into(), s(&gw.site.dir.join("shares").join(format!("{}.share", support::officers::NAMES[*share]))).into()]);
        args.extend(["--officer-key".into(), s(&o.keys[*key]).into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    o.keys(&args)
}

/// A new TLS key and certificate on the restored token (the TLS key is never in a backup).
fn new_tls(gw: &Gw, o: &Officers) {
    let mut args = vec!["generate", "--role", "tls"];
    args.extend(o.key_arg(1));
    let (code, _, err) = o.keys(&args);
    assert_eq!(code, 0, "{err}");
    let csr = gw.site.dir.join("tls/restored.csr");
    let (code, _, err) = o.keys(&["csr", "--subject", "CN=localhost,O=hospital-a", "--dns", "localhost", "--out", s(&csr)]);
    assert_eq!(code, 0, "{err}");
    let cert = gw.site.ca.sign_server_csr(&std::fs::read_to_string(&csr).unwrap(), 365).unwrap();
    let pem = gw.site.dir.join("tls/server.pem");
    std::fs::write(&pem, cert.pem()).unwrap();
    let mut args = vec!["import-cert", s(&pem)];
    args.extend(o.key_arg(1));
    let (code, _, err) = o.keys(&args);
    assert_eq!(code, 0, "{err}");
}

fn keys_on_token(o: &Officers) -> usize {
    let (code, json, err) = o.keys(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&json).unwrap().as_array().unwrap().len()
}

#[test]
fn the_full_drill_a_hundred_records_survive_the_loss_of_the_token() {
    let (mut gw, o, _) = site_with_backup("dr-drill");
    let rt = rt();
    gw.start();
    let records: Vec<(String, Vec<u8>)> = rt.block_on(async {
        let mut his = gw.client();
        let mut out = Vec::new();
        for n in 0..100u32 {
            let doc = format!("record {n} of the drill {}", "•".repeat((n % 17) as usize)).into_bytes();
            let r = his.post_json("/", &sample_transaction(&patient(n % 10), "text/plain", &doc, None), &[]).await.unwrap();
            assert_eq!(r.status, 200, "a transaction answers 200: {}", String::from_utf8_lossy(&r.body));
            out.push((support::created_id(&r.json()), doc));
        }
        out
    });
    assert_eq!(gw.stop().code(), Some(0));
    let backup = gw.site.dir.join("key-backup.json");
    let mut args = vec!["backup", "export", "--out", s(&backup)];
    args.extend(o.key_arg(2));
    let (code, out, err) = o.keys(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 keys backed up"), "{out}");
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(!text.contains("\"tls\""), "the TLS key is never backed up");

    replace_the_token(&gw, &o);
    assert_eq!(keys_on_token(&o), 0);
    // One officer alone cannot restore; a share opens only with its own officer's credential.
    let (code, _, err) = restore(&gw, &o, &backup, &[(0, 0)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("1 of the 2 shares") && err.contains("one officer alone"), "{err}");
    let (code, _, err) = restore(&gw, &o, &backup, &[(0, 1)]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no credential of officer alice"), "{err}");
    // A backup altered on its way is refused by its signature.
    let altered = gw.site.dir.join("altered-backup.json");
    std::fs::write(&altered, text.replacen("\"unwrap\": true", "\"unwrap\": false", 1)).unwrap();
    let (code, _, err) = restore(&gw, &o, &altered, &[(0, 0), (2, 2)]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("signature does not verify"), "{err}");
    assert_eq!(keys_on_token(&o), 0, "a refused restore left keys behind");

    let (code, out, err) = restore(&gw, &o, &backup, &[(0, 0), (2, 2)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 keys restored") && out.contains("alice, carol"), "{out}");
    new_tls(&gw, &o);
    let (code, table, _) = o.keys(&["list"]);
    assert_eq!(code, 0);
    assert!(table.contains("wrap-with-trusted-only") && table.contains("backup key: medgate-backup-v1"), "{table}");

    gw.start();
    rt.block_on(async {
        let mut his = gw.client();
        for (id, doc) in &records {
            let r = his.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!((r.status, r.body.as_ref()), (200, doc.as_slice()), "record {id} after the restore");
        }
    });
    assert_eq!(gw.stop().code(), Some(0));
    let (code, out, err) = gw.medgate(&["ledger", "verify", "--config", s(&gw.site.config), "--public-key", s(&gw.site.ledger_public_key)]);
    assert_eq!(code, 0, "{out}{err}");
    // The restored token takes backups again, and the journal names who restored.
    let again = gw.site.dir.join("after.json");
    let mut args = vec!["backup", "export", "--out", s(&again)];
    args.extend(o.key_arg(0));
    let (code, _, err) = o.keys(&args);
    assert_eq!(code, 0, "{err}");
    let (_, history, _) = o.keys(&["history"]);
    assert!(history.lines().any(|l| l.contains("restore") && l.contains("alice+carol")), "{history}");
}

fn wait_for_shred(gw: &Gw) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.metric("medgate_events_total{kind=\"shred_passes\"}").unwrap_or(0.0) < 1.0 || gw.metric("medgate_shred_pending") != Some(0.0) {
        assert!(Instant::now() < deadline, "no shred pass within 60 s:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_key_backup_taken_before_a_shred_pass_cannot_bring_back_what_the_pass_destroyed() {
    let (mut gw, o, _) = site_with_backup("dr-shred");
    let rt = rt();
    gw.start();
    let (kept, erased) = rt.block_on(async {
        let mut his = gw.client();
        let mut ids = Vec::new();
        for n in 0..4u32 {
            let doc = format!("record {n}").into_bytes();
            let r = his.post_json("/", &sample_transaction(&patient(n), "text/plain", &doc, None), &[]).await.unwrap();
            assert_eq!(r.status, 200, "a transaction answers 200: {}", String::from_utf8_lossy(&r.body));
            ids.push((support::created_id(&r.json()), doc));
        }
        let erased = ids.pop().unwrap().0;
        (ids, erased)
    });
    assert_eq!(gw.stop().code(), Some(0));
    let before = gw.site.dir.join("before-the-pass.json");
    let (code, _, err) = o.keys(&["backup", "export", "--out", s(&before), "--officer-key", s(&o.keys[0])]);
    assert_eq!(code, 0, "{err}");
    gw.start();
    rt.block_on(async {
        let del = gw.client().send("DELETE", &format!("/DocumentReference/{erased}"), &[], Vec::new()).await.unwrap();
        assert_eq!(del.status, 204);
    });
    wait_for_shred(&gw);
    assert_eq!(gw.stop().code(), Some(0));
    let (_, status, _) = o.keys(&["backup", "status"]);
    assert!(status.contains("take a new backup"), "the pass made the backup stale: {status}");
    let after = gw.site.dir.join("after-the-pass.json");
    let (code, _, err) = o.keys(&["backup", "export", "--out", s(&after), "--officer-key", s(&o.keys[0])]);
    assert_eq!(code, 0, "{err}");

    replace_the_token(&gw, &o);
    // The backup from before the pass holds only the KEK version the pass destroyed.
    let (code, _, err) = restore(&gw, &o, &before, &[(0, 0), (1, 1)]);
    assert_eq!(code, 64, "{err}");
    // Three documents and the four SubmissionSets of their transactions (an erasure leaves a
    // SubmissionSet sealed under its key).
    assert!(err.contains("lacks kek v2 (7 sealed records and SubmissionSets)") && err.contains("shred pass"), "{err}");
    assert_eq!(keys_on_token(&o), 0);
    let (code, out, err) = restore(&gw, &o, &after, &[(0, 0), (1, 1)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 keys restored"), "{out}");
    let (_, json, _) = o.keys(&["list", "--json"]);
    let keks: Vec<u64> = serde_json::from_str::<serde_json::Value>(&json).unwrap().as_array().unwrap().iter().filter(|k| k["role"] == "kek").map(|k| k["version"].as_u64().unwrap()).collect();
    assert_eq!(keks, vec![2], "the destroyed KEK version is not in the new backup");
    new_tls(&gw, &o);
    gw.start();
    rt.block_on(async {
        let mut his = gw.client();
        for (id, doc) in &kept {
            let r = his.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!((r.status, r.body.as_ref()), (200, doc.as_slice()));
        }
        let r = his.get(&format!("/Binary/{erased}")).await.unwrap();
        assert_eq!(r.status, 410, "the erased record stays erased");
    });
    assert_eq!(gw.stop().code(), Some(0));
}
