//! Crypto-shredding everywhere, against `medgate serve` with a real SoftHSM2 token and real sled
//! files: after an erasure the shred pass rotates the KEK, re-wraps the live records and destroys
//! the old KEK version, so a copy of the store taken before the erasure (a backup) can no longer
//! be decrypted, while the gateway still serves every live record.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use medgate_fhir::{sample_transaction, PatientId};
use medgate_ledger::{Entry, EntryBody};
use medgate_store::vault::{StoredRecord, Vault};
use medgate_store::StoreError;
use medgate_hsm::{Hsm, HsmError, Role};
use support::{rt, Gw};

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("SHRED-{n:06}") }
}

/// Copies a directory tree (the gateway is stopped: sled's files are consistent on disk).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Runs `f` with the site's HSM opened in this process (the gateway must be stopped).
fn with_hsm<T>(gw: &Gw, f: impl FnOnce(&Hsm) -> T) -> T {
    support::with_site_hsm(&gw.site, |hsm| f(hsm))
}

/// A record as a store holds it (the gateway must be stopped).
fn stored(state: &Path, id: &str) -> StoredRecord {
    let db = support::open_store(state);
    Vault::open(&db).unwrap().get(id).unwrap().unwrap()
}

/// Waits until no shred pass is pending and at least `passes` have finished.
fn wait_for_shred(gw: &Gw, passes: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = gw.metric("medgate_events_total{kind=\"shred_passes\"}").unwrap_or(0.0);
        if done >= passes && gw.metric("medgate_shred_pending") == Some(0.0) {
            return;
        }
        assert!(Instant::now() < deadline, "no shred pass finished within 60 s:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The KEK versions on the token, as the officer's console lists them (gateway stopped).
fn kek_versions(gw: &Gw) -> Vec<(u64, bool)> {
    let cfg = gw.site.config.to_str().unwrap().to_owned();
    let (code, out, err) = gw.medgate(&["keys", "--config", &cfg, "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|k| k["role"] == "kek")
        .map(|k| (k["version"].as_u64().unwrap(), k["active"].as_bool().unwrap()))
        .collect()
}

/// Key events on the ledger: (action, role, version, officer).
fn key_events_in(db: &medgate_store::Db) -> Vec<(String, String, u32, String)> {
    let store = medgate_store::ChainStore::open(db).unwrap();
    let mut out = Vec::new();
    for b in store.blocks() {
        for batch in b.unwrap().batches {
            for e in batch.entries {
                if let EntryBody::KeyEvent { action, key_role, key_version, officer, .. } = e.body {
                    out.push((action, key_role, key_version, officer));
                }
            }
        }
    }
    out
}

/// Stores one document and returns its record id.
async fn store(his: &mut medgate::client::HisClient, p: &PatientId, doc: &[u8]) -> String {
    store_listed(his, p, doc).await.0
}

/// Stores one document and returns its record id and its SubmissionSet's (sealed under a data
/// key of its own, which a shred pass re-wraps like a record's).
async fn store_listed(his: &mut medgate::client::HisClient, p: &PatientId, doc: &[u8]) -> (String, String) {
    let r = his.post_json("/", &sample_transaction(p, "text/plain", doc, None), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    (support::created_id(&r.json()), medgate_fhir::answer_ids(&r.json(), "List").pop().unwrap())
}

/// The checks common to both tests, once the pass is done and the gateway stopped: the erased
/// record's wrapped key in the backup no longer unwraps (its KEK version is destroyed), the
/// backup's live records neither (the documented trade-off), the live store's do, and the key
/// events are on the ledger.
fn backup_is_unreadable_and_the_live_store_is_not(gw: &Gw, backup: &Path, erased: &str, kept: &[(&str, &[u8])]) {
    let state = gw.site.dir.join("state");
    assert_eq!(kek_versions(gw), vec![(2, true)], "KEK version 1 is destroyed, version 2 active");
    // Each store opened once (see support::open_store).
    let (backup_db, state_db) = (support::open_store(backup), support::open_store(&state));
    let (backup_vault, vault) = (Vault::open(&backup_db).unwrap(), Vault::open(&state_db).unwrap());
    let old = backup_vault.get(erased).unwrap().unwrap();
    assert_eq!(old.kek_version, 1);
    assert!(!old.wrapped_key.is_empty(), "the backup still holds the erased record's wrapped key");
    let now = vault.get(erased).unwrap().unwrap();
    assert!(now.erased.is_some() && now.wrapped_key.is_empty());
    with_hsm(gw, |hsm| {
        use base64::Engine as _;
        let wrapped = medgate_hsm::WrappedKey {
            kek_version: old.kek_version,
            bytes: base64::engine::general_purpose::STANDARD.decode(&old.wrapped_key).unwrap(),
        };
        match hsm.unwrap_data_key(&wrapped) {
            Err(HsmError::KeyMissing { role: Role::Kek, detail }) => assert!(detail.contains("version 1"), "{detail}"),
            other => panic!("the erased record's key still unwraps from the backup: {:?}", other.map(|_| "a data key")),
        }
        for (id, bytes) in kept {
            let in_backup = backup_vault.get(id).unwrap().unwrap();
            match medgate_store::vault::open_record(hsm, in_backup.clone(), true) {
                Err(StoreError::Hsm(HsmError::KeyMissing { role: Role::Kek, .. })) => {}
                other => panic!("a backup taken before the pass still opens: {:?}", other.map(|o| o.record.id)),
            }
            let live = vault.get(id).unwrap().unwrap();
            assert_eq!(live.kek_version, 2, "re-wrapped under the new KEK");
            assert_eq!(medgate_store::vault::open_record(hsm, live.clone(), true).unwrap().document.as_slice(), *bytes);
            // A read that fetched the record just before the pass follows the re-wrap.
            assert_eq!(medgate_store::vault::open_latest(hsm, &vault, in_backup.clone(), true).unwrap().document.as_slice(), *bytes);
        }
    });
    let events = key_events_in(&state_db);
    drop((backup_vault, vault, backup_db, state_db));
    let shred = |action: &str, version: u32| events.iter().any(|(a, r, v, o)| a == action && r == "kek" && *v == version && o == "medgate-shred-pass");
    assert!(shred("rotate", 2) && shred("destroy", 1), "key events on the ledger: {events:?}");
    let journal = std::fs::read_to_string(state.join("key-events.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 2, "{journal}");
    let cfg = gw.site.config.to_str().unwrap().to_owned();
    let (code, out, err) = gw.medgate(&["ledger", "verify", "--config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_shred_pass_makes_a_backup_taken_before_an_erasure_unreadable() {
    let mut gw = Gw::new("shred");
    let rt = rt();
    let (erased_doc, kept_doc, other_doc) = (b"letter to be erased".as_slice(), b"letter that stays".as_slice(), b"another patient's letter".as_slice());
    let ((erased, erased_list), kept, other) = rt.block_on(async {
        let mut his = gw.client();
        (store_listed(&mut his, &patient(1), erased_doc).await, store(&mut his, &patient(1), kept_doc).await, store(&mut his, &patient(2), other_doc).await)
    });

    // The backup: the gateway stopped, its state directory copied, the gateway started again.
    assert_eq!(gw.stop().code(), Some(0));
    let state = gw.site.dir.join("state");
    let backup = gw.site.dir.join("backup");
    copy_dir(&state, &backup);
    // Before any erasure the backup is a working copy: with the HSM it decrypts.
    with_hsm(&gw, |hsm| {
        let rec = stored(&backup, &erased);
        assert_eq!(medgate_store::vault::open_record(hsm, rec.clone(), true).unwrap().document.as_slice(), erased_doc);
    });
    gw.start();
    assert_eq!(gw.metric("medgate_shred_pending"), Some(0.0));

    rt.block_on(async {
        let mut his = gw.client();
        let del = his.send("DELETE", &format!("/DocumentReference/{erased}"), &[], Vec::new()).await.unwrap();
        assert_eq!(del.status, 204, "{}", String::from_utf8_lossy(&del.body));
    });
    wait_for_shred(&gw, 1.0);
    assert_eq!(gw.metric("medgate_events_total{kind=\"shred_rewrapped_records\"}"), Some(5.0), "the two live records and the three SubmissionSets");
    assert_eq!(gw.metric("medgate_events_total{kind=\"shred_kek_versions_destroyed\"}"), Some(1.0));
    assert!(gw.metric("medgate_shred_last_pass_seconds").unwrap() > 0.0);
    let (status, ready) = medgate::admin_client::get(gw.site.admin_addr, "/readyz").unwrap();
    assert_eq!((status, ready.as_str()), (200, "hsm: ok\nstore: ok\nledger: ok\nshred: none pending\n"));
    gw.wait_log("shred pass finished");

    rt.block_on(async {
        let mut his = gw.client();
        for path in [format!("/Binary/{erased}"), format!("/DocumentReference/{erased}")] {
            assert_eq!(his.get(&path).await.unwrap().status, 410, "{path}");
        }
        for (id, doc) in [(&kept, kept_doc), (&other, other_doc)] {
            let r = his.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!((r.status, r.body.as_ref()), (200, doc), "a live record reads back exactly after the pass");
            assert_eq!(his.get(&format!("/DocumentReference/{id}")).await.unwrap().status, 200);
        }
        // The erased document's SubmissionSet is re-wrapped too, and still names it.
        let list = his.get(&format!("/List/{erased_list}")).await.unwrap();
        assert_eq!(list.status, 200, "{}", String::from_utf8_lossy(&list.body));
        assert_eq!(list.json()["entry"][0]["item"]["reference"], format!("DocumentReference/{erased}"));
        // New records are wrapped by the new KEK and read back too.
        let new = store(&mut his, &patient(3), b"after the pass").await;
        assert_eq!(his.get(&format!("/Binary/{new}")).await.unwrap().body.as_ref(), b"after the pass");
    });
    assert!(!gw.log_text().contains(&std::fs::read_to_string(gw.site.dir.join("hsm-pin")).unwrap()), "PIN in the log");
    assert_eq!(gw.stop().code(), Some(0));
    backup_is_unreadable_and_the_live_store_is_not(&gw, &backup, &erased, &[(&kept, kept_doc), (&other, other_doc)]);
}

#[test]
fn a_shred_pass_cut_short_by_a_crash_finishes_at_the_next_start() {
    let mut gw = Gw::new("shred-restart");
    let rt = rt();
    let docs: [&[u8]; 3] = [b"erased while the gateway went down", b"kept, re-wrapped before the crash", b"kept, not re-wrapped yet"];
    let ids = rt.block_on(async {
        let mut his = gw.client();
        let mut ids = Vec::new();
        for (n, d) in docs.iter().enumerate() {
            ids.push(store(&mut his, &patient(n as u32), d).await);
        }
        ids
    });
    let (erased, done, todo) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    assert_eq!(gw.stop().code(), Some(0));
    let state = gw.site.dir.join("state");
    let backup = gw.site.dir.join("backup");
    copy_dir(&state, &backup);

    // The store as a gateway killed in the middle of a pass leaves it: the erasure committed with
    // its marker (its entry still in the outbox), the KEK rotated and that rotation journalled,
    // one of the two live records re-wrapped, KEK version 1 not destroyed yet.
    let entry_id = rt.block_on(async {
        let db = support::open_store(&state);
        let vault = Vault::open(&db).unwrap();
        let rec = vault.get(&erased).unwrap().unwrap();
        let entry = Entry::new(
            &gw.site.hospital,
            &medgate_gateway::clock::now_rfc3339(),
            [9; 16],
            EntryBody::RecordErased {
                record_id: rec.id.clone(),
                patient: rec.patient_pseudonym.clone(),
                custodian: gw.site.hospital.clone(),
                user: "ab".repeat(32),
                role: "physician".into(),
            },
        );
        entry.validate().unwrap();
        vault.erase(&rec, &entry).await.unwrap();
        let seen = vault.shred_pending().unwrap().unwrap();
        with_hsm(&gw, |hsm| {
            let info = hsm.rotate(Role::Kek).unwrap();
            medgate_gateway::journal::record_event_by(Some(&state), medgate_gateway::shred::OFFICER, "rotate", &info).unwrap();
            vault.set_shred_rotation(seen, info.version).unwrap();
            assert_eq!(vault.rewrap_record(hsm, &done, info.version).unwrap(), medgate_store::vault::Rewrap::Done { from: 1 });
        });
        vault.flush_blocking().unwrap();
        entry.id
    });
    assert_eq!(kek_versions(&gw), vec![(1, false), (2, true)]);

    gw.start();
    wait_for_shred(&gw, 1.0);
    assert_eq!(gw.metric("medgate_events_total{kind=\"shred_rewrapped_records\"}"), Some(4.0), "the record not re-wrapped yet and the three SubmissionSets");
    gw.wait_log("rotated=false");
    rt.block_on(async {
        let mut his = gw.client();
        assert_eq!(his.get(&format!("/Binary/{erased}")).await.unwrap().status, 410);
        for (id, doc) in [(&done, docs[1]), (&todo, docs[2])] {
            let r = his.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!((r.status, r.body.as_ref()), (200, doc));
        }
    });
    assert_eq!(gw.stop().code(), Some(0));
    {
        let db = support::open_store(&state);
        assert_eq!(Vault::open(&db).unwrap().shred_pending().unwrap(), None, "the marker is cleared");
        let store = medgate_store::ChainStore::open(&db).unwrap();
        assert!(store.location(&entry_id).unwrap().is_some(), "the erasure entry left the outbox for the ledger");
    }
    // Not rotated a second time: version 2 is still the active one, and version 1 is gone.
    backup_is_unreadable_and_the_live_store_is_not(&gw, &backup, &erased, &[(&done, docs[1]), (&todo, docs[2])]);
}

#[test]
fn records_stored_while_shred_passes_run_all_stay_readable() {
    let mut gw = Gw::new("shred-load");
    let rt = rt();
    let acked = rt.block_on(async {
        // Records to erase, then four clients storing from before the erasures until after the
        // passes they cause have finished: every step of every pass runs while records are stored.
        let mut his = gw.client();
        let mut doomed = Vec::new();
        for n in 0..6 {
            doomed.push(store(&mut his, &patient(100 + n), format!("doomed {n}").as_bytes()).await);
        }
        let (progress, mut stored) = tokio::sync::watch::channel(0usize);
        let progress = std::sync::Arc::new(progress);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u32 {
            let (mut c, progress, stop) = (gw.client(), progress.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let doc = format!("writer {w} document {i}").into_bytes();
                    let id = store(&mut c, &patient(w), &doc).await;
                    acked.push((id, doc));
                    progress.send_modify(|n| *n += 1);
                }
                acked
            }));
        }
        stored.wait_for(|n| *n >= 8).await.unwrap();
        for id in &doomed {
            let del = his.send("DELETE", &format!("/DocumentReference/{id}"), &[], Vec::new()).await.unwrap();
            assert_eq!(del.status, 204);
        }
        tokio::task::block_in_place(|| wait_for_shred(&gw, 1.0));
        let after = *stored.borrow();
        stored.wait_for(|n| *n >= after + 8).await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        acked
    });
    rt.block_on(async {
        let mut his = gw.client();
        for (id, doc) in &acked {
            let r = his.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!((r.status, r.body.as_ref()), (200, doc.as_slice()), "record {id}");
        }
    });
    assert_eq!(gw.stop().code(), Some(0));
    // Only the newest KEK version is left, and every live record is under it.
    let versions = kek_versions(&gw);
    assert_eq!(versions.len(), 1, "{versions:?}");
    let db = support::open_store(&gw.site.dir.join("state"));
    let vault = Vault::open(&db).unwrap();
    let live = vault.live_kek_versions().unwrap();
    assert_eq!(live.keys().copied().collect::<Vec<_>>(), vec![versions[0].0 as u32], "{live:?}");
    // Every live record, and every SubmissionSet (the erased records' too).
    assert_eq!(live.values().sum::<usize>(), acked.len() + vault.list_count());
}

#[test]
fn kill_9_during_a_shred_pass_loses_no_record_and_the_pass_finishes_after_restart() {
    let mut gw = Gw::new("shred-kill");
    let rt = rt();
    let (doomed, acked) = rt.block_on(async {
        let mut writers = Vec::new();
        for w in 0..8u32 {
            let mut c = gw.client();
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..40u32 {
                    let doc = format!("writer {w} document {i}").into_bytes();
                    acked.push((store(&mut c, &patient(w), &doc).await, doc));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        let doomed = acked.pop().unwrap().0;
        let mut his = gw.client();
        let del = his.send("DELETE", &format!("/DocumentReference/{doomed}"), &[], Vec::new()).await.unwrap();
        assert_eq!(del.status, 204);
        (doomed, acked)
    });
    // SIGKILL as soon as the pass has rotated (wherever the pass is by then, the outcome below
    // must hold).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.log_text().contains("action=rotate") {
        assert!(Instant::now() < deadline, "no rotation logged:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(1));
    }
    gw.kill9();
    gw.start();
    wait_for_shred(&gw, 1.0);
    rt.block_on(async {
        let mut his = gw.client();
        assert_eq!(his.get(&format!("/Binary/{doomed}")).await.unwrap().status, 410);
        for (id, doc) in &acked {
            let r = his.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!((r.status, r.body.as_ref()), (200, doc.as_slice()), "record {id}");
        }
    });
    assert_eq!(gw.stop().code(), Some(0));
    let versions = kek_versions(&gw);
    assert_eq!(versions.len(), 1, "only the active KEK version is left: {versions:?}");
    let db = support::open_store(&gw.site.dir.join("state"));
    let vault = Vault::open(&db).unwrap();
    assert_eq!(vault.shred_pending().unwrap(), None);
    assert_eq!(vault.live_kek_versions().unwrap(), std::collections::BTreeMap::from([(versions[0].0 as u32, acked.len() + vault.list_count())]));
}

#[test]
fn a_retired_kek_version_that_still_wraps_records_blocks_the_pass_until_the_officer_decides() {
    let mut gw = Gw::new("shred-retired");
    let rt = rt();
    let cfg = gw.site.config.to_str().unwrap().to_owned();
    let stranded = rt.block_on(async { store(&mut gw.client(), &patient(1), b"under kek v1").await });
    assert_eq!(gw.stop().code(), Some(0));
    let officers = support::officers::Officers::enrol(&gw.site);
    let approved = |args: &[&str]| officers.approved(args, 2).to_str().unwrap().to_owned();
    let (code, _, err) = gw.medgate(&["keys", "--config", &cfg, "rotate", "--role", "kek", "--approvals", &approved(&["rotate-kek"])]);
    assert_eq!(code, 0, "{err}");
    gw.start();
    let (kept, erased) = rt.block_on(async {
        let mut his = gw.client();
        (store(&mut his, &patient(2), b"under kek v2").await, store(&mut his, &patient(2), b"to be erased").await)
    });
    assert_eq!(gw.stop().code(), Some(0));
    // The officer retires version 1 although a record still uses it.
    let (code, _, err) = gw.medgate(&["keys", "--config", &cfg, "retire", "--role", "kek", "--version", "1", "--approvals", &approved(&["retire", "--role", "kek", "--version", "1"])]);
    assert_eq!(code, 0, "{err}");
    gw.start();
    rt.block_on(async {
        let del = gw.client().send("DELETE", &format!("/DocumentReference/{erased}"), &[], Vec::new()).await.unwrap();
        assert_eq!(del.status, 204);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.metric("medgate_events_total{kind=\"shred_pass_failures\"}").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "the pass did not report its failure:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gw.metric("medgate_shred_pending"), Some(1.0), "the erasure is not shredded everywhere yet");
    let (status, ready) = medgate::admin_client::get(gw.site.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 200, "a blocked pass does not make the gateway unready: {ready}");
    // The stranded record and its SubmissionSet, both under version 1.
    assert!(ready.contains("shred: pending") && ready.contains("last pass failed") && ready.contains("version 1 (2 live records)"), "{ready}");
    assert!(gw.log_text().contains(&format!("record not re-wrapped; its KEK version cannot be destroyed record={stranded}")), "{}", gw.log_text());
    rt.block_on(async {
        let r = gw.client().get(&format!("/Binary/{kept}")).await.unwrap();
        assert_eq!((r.status, r.body.as_ref()), (200, b"under kek v2".as_slice()));
    });
    assert_eq!(gw.stop().code(), Some(0));
    // Version 2 (re-wrapped away) is gone already; version 1 stays until the officer decides.
    let (code, json, _) = gw.medgate(&["keys", "--config", &cfg, "list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keks: Vec<(u64, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["role"] == "kek")
        .map(|k| (k["version"].as_u64().unwrap(), k["retired"].as_bool().unwrap()))
        .collect();
    assert_eq!(keks, vec![(1, true), (3, false)]);

    // The officer destroys version 1 (its record becomes unreadable): the pass finishes, without
    // rotating again.
    let approvals = approved(&["destroy", "--role", "kek", "--version", "1"]);
    let (code, _, err) = gw.medgate(&["keys", "--config", &cfg, "destroy", "--role", "kek", "--version", "1", "--yes", "--approvals", &approvals]);
    assert_eq!(code, 0, "{err}");
    gw.start();
    wait_for_shred(&gw, 1.0);
    assert_eq!(gw.stop().code(), Some(0));
    assert_eq!(kek_versions(&gw), vec![(3, true)]);
}
