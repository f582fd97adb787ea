//! The independent FHIR R4 / IHE MHD validation kit (`tests/mhd`) is installed and works: its
//! self-test accepts the IHE MHD IG's examples and refuses known-bad resources, and the Rust
//! entry point other tests use gives the same verdicts. `cargo test` fails when the kit is missing.

#![allow(clippy::unwrap_used, reason = "tests")]

#[path = "mhd/kit.rs"]
mod kit;

use std::path::PathBuf;
use std::process::Command;

use kit::{validate, Check};

fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mhd/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn the_kit_passes_its_self_test() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mhd/selftest.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tests/mhd/selftest.sh failed (is the kit installed? scripts/install-deps.sh)\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn the_rust_entry_point_accepts_the_ig_examples_and_names_each_bad_element() {
    let request = fixture("good/ig-minimal-provide-bundle.json");
    let response = fixture("good/ig-minimal-provide-bundle-response.json");
    let search = fixture("good/searchset-paged-with-outcome.json");
    let cap = fixture("good/capability-statement-mhd-server.json");
    validate(&[
        Check { profile: "mhd-minimal-provide-bundle", resource: &request, request: None },
        Check { profile: "mhd-provide-bundle-response", resource: &response, request: Some(&request) },
        Check { profile: "mhd-find-documentreferences-response", resource: &search, request: None },
        Check { profile: "mhd-document-responder-capability", resource: &cap, request: None },
    ])
    .unwrap();

    let relative = fixture("bad/searchset-relative-fullurl.json");
    let short = fixture("bad/transaction-response-one-entry.json");
    let err = validate(&[
        Check { profile: "mhd-find-documentreferences-response", resource: &search, request: None },
        Check { profile: "mhd-find-documentreferences-response", resource: &relative, request: None },
        Check { profile: "mhd-provide-bundle-response", resource: &short, request: Some(&request) },
    ])
    .unwrap_err();
    assert!(!err.contains("stdin:1:"), "the valid searchset was reported:\n{err}");
    assert!(err.contains("stdin:2: error: Bundle.entry[0].fullUrl: "), "{err}");
    assert!(err.contains("stdin:3: error: Bundle.entry: 1 response entries for 4 request entries"), "{err}");
}
