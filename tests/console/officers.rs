//! Officer quorum at the console, against a real token of the module each scenario is given
//! (SoftHSM2 in `tests/officers.rs`, kryoptic in `tests/console_kryoptic.rs`): M of N enrolled
//! officers approve, each with their own signing key, every operation that could make records
//! unreadable. A request approved by M-1 officers is refused, by M it runs; an expired, replayed,
//! forged or mismatched approval is refused and changes nothing; the approvals and the officers'
//! changes reach the ledger, where the ledger crate's audit re-checks them.

use medgate::officers::{Credential, RequestFile};
use medgate_ledger::officers::{format_time, Request};
use medgate_ledger::EntryBody;

use crate::support::officers::Officers;
use crate::support::{self, Module};

/// The KEK versions on the token: (version, active).
fn keks(o: &Officers) -> Vec<(u64, bool)> {
    let (code, json, err) = o.keys(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    list.as_array().unwrap().iter().filter(|k| k["role"] == "kek").map(|k| (k["version"].as_u64().unwrap(), k["active"].as_bool().unwrap())).collect()
}

/// A request signed outside the console (as an attacker or a stale file would have it).
fn signed(o: &Officers, request: Request, by: &[usize]) -> std::path::PathBuf {
    let approvals = by.iter().map(|i| Credential::from_file(&o.keys[*i]).unwrap().approve(&request).unwrap()).collect();
    let file = o.dir.join(format!("crafted-{}.json", request.nonce));
    RequestFile { request, approvals, officers: None, officer: None }.write(&file).unwrap();
    file
}

fn request(operation: &str, hospital: &str, version: u32, issued: i64, expires: i64) -> Request {
    let mut nonce = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).unwrap();
    Request {
        operation: operation.into(),
        hospital: hospital.into(),
        token: "medgate".into(),
        role: Some("kek".into()),
        version: Some(version),
        detail: None,
        nonce: hex::encode(nonce),
        issued: format_time(issued),
        expires: format_time(expires),
    }
}

pub fn destroy_needs_m_approvals_and_refuses_expired_replayed_forged_or_mismatched_ones(module: Module) {
    let (site, _dir) = support::site_on(module, "quorum");
    let o = Officers::new(&site);
    let p = |f: &std::path::Path| f.to_str().unwrap().to_owned();

    // The first enrolment needs every officer it lists.
    let mut init = vec!["officers-init", "--quorum", "2"];
    for c in &o.cards {
        init.extend(["--officer-card", c.to_str().unwrap()]);
    }
    let file = o.approved(&init, 2);
    let (code, _, err) = o.keys(&["officers", "init", "--approvals", &p(&file)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("carol must approve"), "{err}");
    o.approve(&file, 2);
    let (code, _, err) = o.keys(&["officers", "init", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    let (code, json, err) = o.keys(&["officers", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["quorum"], 2);
    assert_eq!(listed["officers"].as_array().unwrap().len(), 3, "{json}");
    // A quorum of one is refused outright: one officer alone never decides.
    let (code, _, err) = o.keys(&["request", "set-quorum", "--quorum", "1", "--out", &p(&o.dir.join("q1.json"))]);
    assert_eq!(code, 0, "{err}");
    for i in 0..2 {
        o.approve(&o.dir.join("q1.json"), i);
    }
    let (code, _, err) = o.keys(&["officers", "quorum", "--approvals", &p(&o.dir.join("q1.json"))]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("at least 2"), "{err}");

    // Rotate the KEK twice (a quorum each time): versions 1 and 2 are old, 3 is active.
    for _ in 0..2 {
        let file = o.approved(&["rotate-kek"], 2);
        let (code, _, err) = o.keys(&["rotate", "--role", "kek", "--approvals", &p(&file)]);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(keks(&o), vec![(1, false), (2, false), (3, true)]);

    // M-1 approvals: refused, nothing destroyed. M: destroyed.
    let file = o.approved(&["destroy", "--role", "kek", "--version", "1"], 1);
    let (code, _, err) = o.keys(&["destroy", "--role", "kek", "--version", "1", "--yes", "--approvals", &p(&file)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("1 of the required 2") && err.contains("alice"), "{err}");
    assert_eq!(keks(&o).len(), 3, "destroyed with one approval");
    o.approve(&file, 2);
    let (code, out, err) = o.keys(&["destroy", "--role", "kek", "--version", "1", "--yes", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved by alice+carol"), "{out}");
    assert_eq!(keks(&o), vec![(2, false), (3, true)]);

    // Approvals of one operation do not fit another: another version, another operation.
    let file = o.approved(&["destroy", "--role", "kek", "--version", "2"], 2);
    let (code, _, err) = o.keys(&["retire", "--role", "kek", "--version", "2", "--approvals", &p(&file)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("operation destroy, not retire"), "{err}");
    let (code, _, err) = o.keys(&["destroy", "--role", "kek", "--version", "3", "--yes", "--approvals", &p(&file)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("version 2, not 3"), "{err}");
    assert_eq!(keks(&o).len(), 2, "a mismatched approval changed the token");

    // Expired, for another hospital, or signed by someone who is not an officer: refused.
    let now = medgate::officers::now();
    let expired = signed(&o, request("destroy", "hospital-a", 2, now - 7200, now - 3600), &[0, 1]);
    let (code, _, err) = o.keys(&["destroy", "--role", "kek", "--version", "2", "--yes", "--approvals", &p(&expired)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("expired"), "{err}");
    let elsewhere = signed(&o, request("destroy", "hospital-b", 2, now, now + 600), &[0, 1]);
    let (code, _, err) = o.keys(&["destroy", "--role", "kek", "--version", "2", "--yes", "--approvals", &p(&elsewhere)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("hospital hospital-b, not hospital-a"), "{err}");
    let mallory = o.dir.join("mallory.key");
    let (code, _, err) = o.keys(&["officer-key", "--name", "mallory", "--out", &p(&mallory)]);
    assert_eq!(code, 0, "{err}");
    let req = request("destroy", "hospital-a", 2, now, now + 600);
    let forged = {
        let approvals = vec![Credential::from_file(&o.keys[0]).unwrap().approve(&req).unwrap(), Credential::from_file(&mallory).unwrap().approve(&req).unwrap()];
        let f = o.dir.join("forged.json");
        RequestFile { request: req, approvals, officers: None, officer: None }.write(&f).unwrap();
        f
    };
    let (code, _, err) = o.keys(&["destroy", "--role", "kek", "--version", "2", "--yes", "--approvals", &p(&forged)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("not an enrolled officer's"), "{err}");
    let (code, _, err) = o.keys(&["approve", &p(&file), "--officer-key", &p(&mallory)]);
    assert_eq!(code, 77, "mallory approved: {err}");
    assert_eq!(keks(&o).len(), 2, "a refused approval changed the token");

    // The right request runs once; used again, it is refused as a replay.
    let (code, _, err) = o.keys(&["destroy", "--role", "kek", "--version", "2", "--yes", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    let pin_file = site.dir.join("hsm-pin");
    let file = o.approved(&["change-pin"], 2);
    let new_pin = site.dir.join("new-pin");
    std::fs::write(&new_pin, b"c0ffee00c0ffee00").unwrap();
    std::fs::set_permissions(&new_pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (code, out, err) = o.keys(&["change-pin", "--new-pin-file", &p(&new_pin), "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("user PIN") && out.contains("changed"), "{out}");
    std::fs::copy(&new_pin, &pin_file).unwrap();
    let (code, _, err) = o.keys(&["change-pin", "--new-pin-file", &p(&new_pin), "--approvals", &p(&file)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("already used"), "{err}");
    assert_eq!(keks(&o), vec![(3, true)], "the new PIN logs in");

    // Everyday operations name the officer from their credential; without one they are refused.
    let (code, _, err) = o.keys(&["rotate", "--role", "ledger"]);
    assert_eq!(code, 77, "{err}");
    let (code, _, err) = o.keys(&["rotate", "--role", "ledger", "--officer-key", &p(&o.keys[1])]);
    assert_eq!(code, 0, "{err}");

    // The gateway puts the approvals, the officers and the key events on the ledger; the ledger
    // crate's audit finds every rule kept.
    let mut child = site.spawn(&support::exe(), Some(&site.dir.join("medgate.log"))).unwrap();
    assert!(medgate::demo::stop_child(&mut child).unwrap().success());
    let db = support::open_store(&site.dir.join("state"));
    let store = medgate_store::ChainStore::open(&db).unwrap();
    let entries: Vec<medgate_ledger::Entry> = store.blocks().flat_map(|b| b.unwrap().batches).flat_map(|b| b.entries).collect();
    let report = medgate_ledger::officers::audit(&entries);
    assert_eq!(report.problems, Vec::<(String, String)>::new());
    assert_eq!(report.officer_changes, 3);
    assert_eq!(report.officers.officers.len(), 3);
    let destroys: Vec<(u32, String)> = entries
        .iter()
        .filter_map(|e| match &e.body {
            EntryBody::KeyEvent { action, key_version, officer, request: Some(_), .. } if action == "destroy" => Some((*key_version, officer.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(destroys, vec![(1, "alice+carol".to_owned()), (2, "alice+bob".to_owned())]);
    let rotated_by = entries.iter().find_map(|e| match &e.body {
        EntryBody::KeyEvent { action, key_role, officer, .. } if action == "rotate" && key_role == "ledger" => Some(officer.clone()),
        _ => None,
    });
    assert_eq!(rotated_by.as_deref(), Some("bob"));
    drop(store);
    drop(db);
    // The auditor's view of the same: a table for people, JSON for scripts.
    let cfg = site.config.to_str().unwrap();
    let (code, table, err) = support::run_medgate(&["audit", "keys", "--config", cfg, "--role", "kek"], &site.softhsm_conf);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("officers alice, bob, carol (quorum 2)") && table.contains("officer rules: kept"), "{table}");
    assert!(table.lines().any(|l| l.contains("destroy") && l.contains("alice+carol")), "{table}");
    let (code, json, err) = support::run_medgate(&["audit", "keys", "--config", cfg, "--json"], &site.softhsm_conf);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let destroy = v["events"].as_array().unwrap().iter().find(|e| e["action"] == "destroy" && e["version"] == 2).unwrap();
    assert_eq!(destroy["approved_by"], serde_json::json!(["alice", "bob"]), "{json}");
    assert!(v["events"].as_array().unwrap().iter().any(|e| e["action"] == "officer-enrol"), "{json}");
}

pub fn officers_are_added_and_removed_under_quorum_and_the_new_officer_signs_their_enrolment(module: Module) {
    let (site, _dir) = support::site_on(module, "officer-changes");
    let o = Officers::enrol(&site);
    let p = |f: &std::path::Path| f.to_str().unwrap().to_owned();
    let dave_key = o.dir.join("dave.key");
    let dave_card = o.dir.join("dave.card");
    let (code, _, err) = o.keys(&["officer-key", "--name", "dave", "--out", &p(&dave_key), "--card-out", &p(&dave_card)]);
    assert_eq!(code, 0, "{err}");
    let file = o.approved(&["officer-add", "--officer-card", &p(&dave_card)], 2);
    let (code, _, err) = o.keys(&["officers", "add", "--approvals", &p(&file)]);
    assert_eq!(code, 77, "enrolled without signing: {err}");
    assert!(err.contains("dave must approve"), "{err}");
    let (code, _, err) = o.keys(&["approve", &p(&file), "--officer-key", &p(&dave_key)]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = o.keys(&["officers", "add", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dave enrolled") && out.contains("2 of 4"), "{out}");
    // Removing down to fewer officers than the quorum is refused; a removal within it runs.
    let file = o.approved(&["officer-remove", "--officer", "carol"], 2);
    let (code, out, err) = o.keys(&["officers", "remove", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("carol removed"), "{out}");
    let file = o.approved(&["set-quorum", "--quorum", "3"], 2);
    let (code, _, err) = o.keys(&["officers", "quorum", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    // Now two approvals are not enough, and carol can no longer approve.
    let file = o.approved(&["rotate-kek"], 2);
    let (code, _, err) = o.keys(&["approve", &p(&file), "--officer-key", &p(&o.keys[2])]);
    assert_eq!(code, 77, "a removed officer approved: {err}");
    let (code, _, err) = o.keys(&["rotate", "--role", "kek", "--approvals", &p(&file)]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("2 of the required 3"), "{err}");
    let (code, _, err) = o.keys(&["approve", &p(&file), "--officer-key", &p(&dave_key)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = o.keys(&["rotate", "--role", "kek", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    let (code, json, _) = o.keys(&["officers", "list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = listed["officers"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!((listed["quorum"].as_u64(), names), (Some(3), vec!["alice", "bob", "dave"]));
}

/// An officer's smart card for the tests: a second SoftHSM token holding a P-256 key pair that
/// signs and derives, made with the officer's own tools (a SoftHSM card beside a kryoptic site
/// too: the card is another device). Returns the `--card` spec.
fn smart_card(site: &medgate::demo::Site, label: &str) -> String {
    let pin = "5e1f5e1f5e1f";
    let pin_file = site.dir.join(format!("{label}.pin"));
    std::fs::write(&pin_file, pin).unwrap();
    std::fs::set_permissions(&pin_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let out = std::process::Command::new(cmd).args(args).env("SOFTHSM2_CONF", &site.softhsm_conf).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run("softhsm2-util", &["--init-token", "--free", "--label", label, "--so-pin", "0a0a0a0a0a0a", "--pin", pin]);
    run(
        "pkcs11-tool",
        &[
            "--module",
            medgate::demo::SOFTHSM_MODULE,
            "--token-label",
            label,
            "--login",
            "--pin",
            pin,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "01",
            "--label",
            "officer",
            "--usage-sign",
            "--usage-derive",
        ],
    );
    format!("module={},token={label},id=01,pin-file={}", medgate::demo::SOFTHSM_MODULE, pin_file.display())
}

/// On a module that cannot hold a backup key (kryoptic), the backup key is refused instead.
pub fn an_officer_on_a_smart_card_enrols_approves_and_opens_their_backup_share(module: Module) {
    let (site, _dir) = support::site_on(module, "card");
    let o = Officers::new(&site);
    let p = |f: &std::path::Path| f.to_str().unwrap().to_owned();
    let card = smart_card(&site, "dave-card");
    let dave = o.dir.join("dave.card");
    let (code, _, err) = o.keys(&["officer-card", "--name", "dave", "--card", &card, "--out", &p(&dave)]);
    assert_eq!(code, 0, "{err}");
    let file = o.request(&["officers-init", "--quorum", "2", "--officer-card", &p(&o.cards[0]), "--officer-card", &p(&dave)]);
    o.approve(&file, 0);
    let (code, out, err) = o.keys(&["approve", &p(&file), "--card", &card]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved by dave"), "{out}");
    let (code, _, err) = o.keys(&["officers", "init", "--approvals", &p(&file)]);
    assert_eq!(code, 0, "{err}");
    // The card names its officer in the journal.
    let (code, _, err) = o.keys(&["rotate", "--role", "tls", "--card", &card]);
    assert_eq!(code, 0, "{err}");
    let (_, history, _) = o.keys(&["history", "--role", "tls", "--json"]);
    let events: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(events.as_array().unwrap().last().unwrap()["officer"], "dave", "{history}");
    // The backup key's shares: dave's opens with the card's ECDH (into a second, fresh token).
    let file = o.approved(&["backup-init"], 1);
    let (code, _, err) = o.keys(&["approve", &p(&file), "--card", &card]);
    assert_eq!(code, 0, "{err}");
    let shares = site.dir.join("shares");
    let (code, _, err) = o.keys(&["backup", "init", "--approvals", &p(&file), "--so-pin-file", &p(&site.dir.join("hsm-so-pin")), "--shares-dir", &p(&shares)]);
    if module == Module::Kryoptic {
        // kryoptic never lets a secret key be trusted, so it cannot hold the backup key: the
        // console refuses before any share is written (docs/HSM.md, key backup).
        assert_eq!(code, 64, "{err}");
        assert!(err.contains("libkryoptic_pkcs11.so") && err.contains("cannot hold medgate's key backup") && err.contains("vendor"), "{err}");
        assert!(!shares.exists() || std::fs::read_dir(&shares).unwrap().next().is_none(), "shares were written for a refused backup key");
        return;
    }
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = o.keys(&["generate-all", "--card", &card]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ledger: present, left as is"), "{out}");
    for role in ["ledger", "sharing", "pseudonym"] {
        let (code, _, err) = o.keys(&["rotate", "--role", role, "--card", &card]);
        assert_eq!(code, 0, "{err}");
    }
    let kek = o.approved(&["rotate-kek"], 1);
    let (code, _, err) = o.keys(&["approve", &p(&kek), "--card", &card]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = o.keys(&["rotate", "--role", "kek", "--approvals", &p(&kek)]);
    assert_eq!(code, 0, "{err}");
    let (code, status, err) = o.keys(&["backup", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("NOT backed up") && status.contains("medgate-kek-v1"), "keys made before the backup key are named: {status}");
    // Old versions made before the backup key cannot be backed up: export says which.
    let backup = site.dir.join("backup.json");
    let (code, _, err) = o.keys(&["backup", "export", "--out", &p(&backup), "--card", &card]);
    assert_ne!(code, 0);
    assert!(err.contains("medgate-kek-v1") && err.contains("never extractable"), "{err}");
    for (role, version) in [("kek", "1"), ("ledger", "1"), ("sharing", "1"), ("pseudonym", "1")] {
        let file = o.approved(&["destroy", "--role", role, "--version", version], 1);
        let (code, _, err) = o.keys(&["approve", &p(&file), "--card", &card]);
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = o.keys(&["destroy", "--role", role, "--version", version, "--yes", "--approvals", &p(&file)]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = o.keys(&["backup", "export", "--out", &p(&backup), "--card", &card]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 keys backed up"), "{out}");
    let (code, pem, _) = o.keys(&["public-key", "--role", "ledger"]);
    assert_eq!(code, 0);
    let ledger_pem = site.dir.join("ledger-v2.pem");
    std::fs::write(&ledger_pem, pem).unwrap();

    // Restore into a second, fresh token of the same store with alice's file and dave's card.
    let text = std::fs::read_to_string(&site.config).unwrap().replace("token_label = \"medgate\"", "token_label = \"restored\"");
    let restored_cfg = site.dir.join("restored.toml");
    std::fs::write(&restored_cfg, text).unwrap();
    let restored = |args: &[&str]| {
        let mut all = vec!["keys", "--config", restored_cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        support::run_medgate(&all, &site.softhsm_conf)
    };
    let (code, _, err) = restored(&["init-token", "--so-pin-file", &p(&site.dir.join("hsm-so-pin"))]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = restored(&[
        "backup",
        "restore",
        "--backup",
        &p(&backup),
        "--ledger-public-key",
        &p(&ledger_pem),
        "--share",
        &p(&shares.join("alice.share")),
        "--share",
        &p(&shares.join("dave.share")),
        "--officer-key",
        &p(&o.keys[0]),
        "--card",
        &card,
        "--so-pin-file",
        &p(&site.dir.join("hsm-so-pin")),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, table, err) = restored(&["list"]);
    assert_eq!(code, 0, "{err}");
    for label in ["medgate-kek-v2", "medgate-ledger-v2", "medgate-sharing-v2", "medgate-pseudonym-v2", "backup key: medgate-backup-v1"] {
        assert!(table.contains(label), "{label}: {table}");
    }
}
