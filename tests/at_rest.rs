//! A stolen disk or backup: what `medgate serve` leaves in its state directory holds no patient
//! identifier, no document and no document metadata in the clear, only ids, pseudonyms, hashes
//! and ciphertext.

#![allow(clippy::unwrap_used, reason = "test")]

mod support;

use std::path::Path;

use base64::Engine as _;
use medgate_fhir::{sample_transaction, PatientId};
use support::{rt, Gw};

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn the_state_directory_holds_no_identifier_document_or_metadata_in_the_clear() {
    let mut gw = Gw::new("at-rest");
    let patient = PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: "MRN-QUOKKA-424242".into() };
    let letter = b"Discharge letter: the patient QUOKKA went home on foot".to_vec();
    let master = "urn:oid:1.2.3.999.7731";
    let mut his = gw.client();
    let r = rt().block_on(his.post_json("/", &sample_transaction(&patient, "text/plain", &letter, Some(("urn:ietf:rfc:3986", master))), &[])).unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.headers["location"].to_str().unwrap().trim_start_matches("DocumentReference/").to_owned();
    assert_eq!(gw.stop().code(), Some(0));

    let mut all = Vec::new();
    files(&gw.site.dir.join("state"), &mut all);
    let contents: Vec<(String, Vec<u8>)> = all.iter().map(|p| (p.display().to_string(), std::fs::read(p).unwrap())).collect();
    // The scan reads the files that hold the record: its id is there, in the clear.
    assert!(contents.iter().any(|(_, b)| b.windows(id.len()).any(|w| w == id.as_bytes())), "record {id} not found in {all:?}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&letter);
    let needles: [&[u8]; 6] = [b"MRN-QUOKKA-424242", b"QUOKKA", &letter, b64.as_bytes(), master.as_bytes(), b"Progress note"];
    for (file, bytes) in &contents {
        for needle in needles {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{file} holds {:?} in the clear", String::from_utf8_lossy(needle));
        }
    }
    let log = gw.log_text();
    assert!(!log.contains("QUOKKA") && !log.contains(master), "the log names the patient or the document:\n{log}");
}
