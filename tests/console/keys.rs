//! The security officer's console, `medgate keys`, against a real token of the module each
//! scenario is given, checked with the tools officers already trust (OpenSSL, OpenSC). Run on
//! SoftHSM2 by `tests/keys.rs`, on kryoptic by `tests/console_kryoptic.rs`.

#![allow(dead_code, reason = "a test binary may leave out a scenario its module cannot run")]


use std::process::{Command, Stdio};

use crate::support::{self, run_medgate, Module};

pub fn csr_signed_in_the_hsm_passes_openssl_verification(module: Module) {
    let (site, _dir) = support::site_on(module, "csr");
    let cfg = site.config.to_str().unwrap();
    let out = site.dir.join("gw.csr");
    let (code, _, err) = run_medgate(
        &["keys", "--config", cfg, "csr", "--subject", "CN=gw.hospital-a.example,O=Hospital A", "--dns", "gw.hospital-a.example", "--out", out.to_str().unwrap()],
        &site.softhsm_conf,
    );
    assert_eq!(code, 0, "{err}");
    let v = Command::new("openssl").args(["req", "-verify", "-noout", "-text", "-in", out.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&v.stdout).into_owned() + &String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success(), "{text}");
    assert!(text.contains("verify OK") || text.contains("Certificate request self-signature verify OK"), "{text}");
    assert!(text.contains("gw.hospital-a.example"), "{text}");
    // The CSR's public key is the HSM's active TLS key.
    let (code, pem, _) = run_medgate(&["keys", "--config", cfg, "public-key", "--role", "tls"], &site.softhsm_conf);
    assert_eq!(code, 0);
    let csr_key = Command::new("openssl").args(["req", "-pubkey", "-noout", "-in", out.to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&csr_key.stdout).trim(), pem.trim());
}

pub fn list_rotate_retire_destroy_and_the_key_event_journal(module: Module) {
    let (site, _dir) = support::site_on(module, "lifecycle");
    let cfg = site.config.to_str().unwrap();
    let keys = |args: &[&str]| {
        let mut all = vec!["keys", "--config", cfg];
        all.extend_from_slice(args);
        run_medgate(&all, &site.softhsm_conf)
    };
    let (code, json, err) = keys(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 5, "{json}");
    // The KEK is rotated, retired and destroyed only with the approval of a quorum.
    let (code, _, err) = keys(&["rotate", "--role", "kek"]);
    assert_eq!(code, 77, "a lone officer rotated the KEK: {err}");
    let officers = support::officers::Officers::enrol(&site);
    let approvals = officers.approved(&["rotate-kek"], 2);
    let (code, out, err) = keys(&["rotate", "--role", "kek", "--approvals", approvals.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("medgate-kek-v2"), "{out}");
    let (_, table, _) = keys(&["list"]);
    assert!(table.contains("medgate-kek-v1") && table.contains("medgate-kek-v2"), "{table}");
    // The active version cannot be retired; the old one can.
    let approvals = officers.approved(&["retire", "--role", "kek", "--version", "2"], 2);
    let (code, _, err) = keys(&["retire", "--role", "kek", "--version", "2", "--approvals", approvals.to_str().unwrap()]);
    assert_ne!(code, 0, "retiring the active key must fail");
    assert!(err.contains("active key"), "{err}");
    let approvals = officers.approved(&["retire", "--role", "kek", "--version", "1"], 2);
    let (code, _, err) = keys(&["retire", "--role", "kek", "--version", "1", "--approvals", approvals.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // destroy refuses without --yes when stdin is not a terminal, and changes nothing.
    let approvals = officers.approved(&["destroy", "--role", "kek", "--version", "1"], 2);
    let out = Command::new(support::exe())
        .args(["keys", "--config", cfg, "destroy", "--role", "kek", "--version", "1", "--approvals", approvals.to_str().unwrap()])
        .env("SOFTHSM2_CONF", &site.softhsm_conf)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, table, _) = keys(&["list"]);
    assert!(table.contains("medgate-kek-v1"), "destroy without confirmation removed the key: {table}");
    let (code, out, err) = keys(&["destroy", "--role", "kek", "--version", "1", "--yes", "--approvals", approvals.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("destroyed") && out.contains("alice+bob"), "{out}");
    let (_, table, _) = keys(&["list"]);
    assert!(!table.contains("medgate-kek-v1"), "{table}");
    // Every event is journalled with who, what and when: the officers by their names.
    let journal = std::fs::read_to_string(site.dir.join("state/key-events.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = journal.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v.get("kind").is_none()).collect();
    let actions: Vec<&str> = events.iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["rotate", "retire", "destroy"], "{journal}");
    assert!(events.iter().all(|v| v["officer"] == "alice+bob" && v["request"].as_str().is_some_and(|r| r.len() == 64)), "{journal}");
    let (code, history, err) = keys(&["history", "--role", "kek"]);
    assert_eq!(code, 0, "{err}");
    assert!(history.lines().filter(|l| l.contains("alice+bob")).count() == 3, "{history}");

    // The gateway puts them on the ledger at start, once, however often it starts.
    let count_key_events = || {
        let db = support::open_store(&site.dir.join("state"));
        let store = medgate_store::ChainStore::open(&db).unwrap();
        let key_events = |b: medgate_ledger::Block| {
            b.batches.iter().flat_map(|x| &x.entries).filter(|e| matches!(e.body, medgate_ledger::EntryBody::KeyEvent { request: Some(_), .. })).count()
        };
        store.blocks().map(|b| key_events(b.unwrap())).sum::<usize>()
    };
    for _ in 0..2 {
        let mut child = site.spawn(&support::exe(), Some(&site.dir.join("medgate.log"))).unwrap();
        assert!(medgate::demo::stop_child(&mut child).unwrap().success());
        assert_eq!(count_key_events(), 3);
    }
}

pub fn a_wrong_pin_exits_77_and_does_not_burn_retries(module: Module) {
    let (site, _dir) = support::site_on(module, "wrongpin");
    let good = std::fs::read_to_string(site.dir.join("hsm-pin")).unwrap();
    std::fs::write(site.dir.join("hsm-pin"), "000000000000").unwrap();
    let cfg = site.config.to_str().unwrap();
    let (code, out, err) = run_medgate(&["keys", "--config", cfg, "list"], &site.softhsm_conf);
    assert_eq!(code, 77, "{out}{err}");
    assert!(err.contains("PIN"), "{err}");
    assert!(!err.contains("000000000000"), "the PIN was printed");
    // One wrong attempt per run: the token is not locked, the right PIN still works.
    std::fs::write(site.dir.join("hsm-pin"), good).unwrap();
    let (code, _, err) = run_medgate(&["keys", "--config", cfg, "list"], &site.softhsm_conf);
    assert_eq!(code, 0, "{err}");
    // The gateway refuses to start with it too, with the same exit status.
    std::fs::write(site.dir.join("hsm-pin"), "000000000000").unwrap();
    let (code, _, err) = run_medgate(&["serve", "--config", cfg], &site.softhsm_conf);
    assert_eq!(code, 77, "{err}");
}

pub fn an_unreadable_token_configuration_is_named(module: Module) {
    let (site, _dir) = support::site_on(module, "tokendir");
    let cfg = site.config.to_str().unwrap();
    let missing = site.dir.join("no-such-softhsm2.conf");
    let (code, _, err) = run_medgate(&["keys", "--config", cfg, "list"], &missing);
    assert_ne!(code, 0);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

pub fn the_shared_pseudonym_key_is_imported_at_the_ceremony_only_once(module: Module) {
    let (site, _dir) = support::site_on(module, "ceremony");
    // A second, empty token in the same SoftHSM store, initialised by the officer's console.
    let text = std::fs::read_to_string(&site.config).unwrap().replace("token_label = \"medgate\"", "token_label = \"ceremony\"");
    let cfg_path = site.dir.join("ceremony.toml");
    std::fs::write(&cfg_path, text).unwrap();
    let cfg = cfg_path.to_str().unwrap();
    let keys = |args: &[&str]| {
        let mut all = vec!["keys", "--config", cfg];
        all.extend_from_slice(args);
        run_medgate(&all, &site.softhsm_conf)
    };
    let (code, _, err) = keys(&["init-token", "--so-pin-file", site.dir.join("hsm-so-pin").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let value = site.dir.join("pseudonym.hex");
    std::fs::write(&value, "11".repeat(32)).unwrap();
    let (code, out, err) = keys(&["import-pseudonym-key", "--value-file", value.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("medgate-pseudonym-v1"), "{out}");
    let (_, json, _) = keys(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let k = list.as_array().unwrap().iter().find(|k| k["role"] == "pseudonym").unwrap().clone();
    assert_eq!(k["sensitive"], true, "{k}");
    assert_eq!(k["extractable"], false, "{k}");
    // Once a pseudonym key exists, another import is refused and changes nothing.
    let (code, _, err) = keys(&["import-pseudonym-key", "--value-file", value.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("already has pseudonym keys"), "{err}");
    let (code, _, err) = keys(&["import-pseudonym-key", "--value-file", site.dir.join("nope").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
}

pub fn a_pilot_consortium_ca_certifies_a_gateway_and_an_etcd_member_that_openssl_accepts(module: Module) {
    let (site, dir) = support::site_on(module, "consortium-ca");
    let ca_dir = dir.path().join("consortium-ca");
    let ca = ca_dir.to_str().unwrap();
    let (code, _, err) = run_medgate(&["consortium", "init-ca", "--dir", ca, "--name", "Test Consortium"], &site.softhsm_conf);
    assert_eq!(code, 0, "{err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(ca_dir.join("ca-key.pem")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let (code, _, _) = run_medgate(&["consortium", "init-ca", "--dir", ca], &site.softhsm_conf);
    assert_eq!(code, 64, "an existing CA must not be overwritten");
    // The gateway's officer makes a CSR for the HSM tls key; the consortium signs it.
    let csr = site.dir.join("consortium.csr");
    let (code, _, err) = run_medgate(
        &["keys", "--config", site.config.to_str().unwrap(), "csr", "--subject", "CN=gw-a,O=hospital-a", "--out", csr.to_str().unwrap()],
        &site.softhsm_conf,
    );
    assert_eq!(code, 0, "{err}");
    let cert = site.dir.join("consortium.pem");
    let (code, out, err) =
        run_medgate(&["consortium", "sign", "--dir", ca, "--csr", csr.to_str().unwrap(), "--ip", "10.20.0.21", "--out", cert.to_str().unwrap()], &site.softhsm_conf);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("O=hospital-a"), "{out}");
    let member = dir.path().join("m0");
    let (code, _, err) = run_medgate(&["consortium", "etcd-member", "--dir", ca, "--name", "m0", "--ip", "10.20.0.11", "--out", member.to_str().unwrap()], &site.softhsm_conf);
    assert_eq!(code, 0, "{err}");
    for (file, ip) in [(cert.clone(), "10.20.0.21"), (member.with_extension("crt"), "10.20.0.11")] {
        let v = std::process::Command::new("openssl")
            .args(["verify", "-CAfile", ca_dir.join("ca.pem").to_str().unwrap(), file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
        let text = std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in", file.to_str().unwrap()]).output().unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("IP Address:{ip}")), "{}", file.display());
    }
}
