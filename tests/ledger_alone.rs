//! The auditor's view: the ledger crate alone (no HSM, sled, tokio, hyper, tonic or etcd among
//! its dependencies) verifies the ledger a running gateway wrote, and a receipt its HIS got.
//!
//! The example is built here in a target directory of its own, from the ledger crate's manifest,
//! so nothing else of the workspace can be compiled into it.

#![allow(clippy::unwrap_used, reason = "test")]

mod support;

use std::path::Path;
use std::process::Command;

use medgate_fhir::{sample_transaction, PatientId};
use support::{receipt_of, rt, Gw};

const FORBIDDEN: [&str; 9] = ["cryptoki", "sled", "tokio", "hyper", "tonic", "etcd-client", "medgate-hsm", "rustls", "medgate"];

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn manifest() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/medgate-ledger/Cargo.toml")
}

#[test]
fn the_ledger_crate_depends_on_nothing_that_runs_a_gateway() {
    let out = cargo()
        .args(["tree", "--locked", "--offline", "--prefix", "none", "-e", "normal,build,dev", "-p", "medgate-ledger", "--manifest-path"])
        .arg(manifest())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"medgate-ledger") && names.contains(&"ring"), "{tree}");
    for bad in FORBIDDEN {
        assert!(!names.contains(&bad), "medgate-ledger depends on {bad}:\n{tree}");
    }
}

#[test]
fn the_ledger_crate_alone_verifies_a_gateways_ledger_and_a_receipt() {
    let mut gw = Gw::new("ledger-alone");
    let receipt = rt().block_on(async {
        let mut his = gw.client();
        let p = PatientId { system: "urn:oid:1.2.3".into(), value: "auditor-1".into() };
        let mut first = None;
        for i in 0..3 {
            let r = his.post_json("/", &sample_transaction(&p, "text/plain", format!("note {i}").as_bytes(), None), &[]).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            first.get_or_insert(receipt_of(&r.json()["entry"][0]["response"]).unwrap());
        }
        first.unwrap()
    });
    assert!(gw.stop().success());
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks.jsonl");
    let (code, stdout, stderr) = gw.medgate(&["ledger", "export", "--config", gw.site.config.to_str().unwrap(), "--out", blocks.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let receipt_file = dir.path().join("receipt.json");
    std::fs::write(&receipt_file, &receipt).unwrap();

    // Built from the ledger crate's own manifest into a target directory of its own.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ledger-alone");
    let build = cargo()
        .args(["build", "--locked", "--offline", "--quiet", "--example", "verify-ledger", "--manifest-path"])
        .arg(manifest())
        .arg("--target-dir")
        .arg(&target)
        .status()
        .unwrap();
    assert!(build.success());
    let example = target.join("debug/examples/verify-ledger");
    let verify = |key: &Path, blocks: &Path| {
        let out = Command::new(&example).arg(blocks).arg("--public-key").arg(key).arg("--receipt").arg(&receipt_file).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = verify(&gw.site.ledger_public_key, &blocks);
    assert!(ok, "{text}");
    assert!(text.contains("ledger OK") && text.contains("receipt OK"), "{text}");
    // The three records, one anchoring entry each, at least.
    let entries: u64 = text.split(", ").find_map(|p| p.strip_suffix(" entries")?.parse().ok()).unwrap();
    assert!(entries >= 3, "{text}");

    // A key the auditor does not hold proves nothing.
    let other = dir.path().join("other.pem");
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&other, stranger.public_key_pem()).unwrap();
    let (ok, text) = verify(&other, &blocks);
    assert!(!ok && text.contains("FAILED at block 0"), "{text}");

    // One altered byte in a block is found.
    let text = std::fs::read_to_string(&blocks).unwrap();
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("\"size\":", "\"size\":1", 1)).unwrap();
    let (ok, out) = verify(&gw.site.ledger_public_key, &tampered);
    assert!(!ok && out.contains("FAILED"), "{out}");
}
