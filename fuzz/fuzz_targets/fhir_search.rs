//! An ITI-67 / ITI-66 search as it arrives in the query string: percent-decoding, every MHD
//! parameter with its modifiers and prefixes (dates, tokens, strings, references), `_count`,
//! `_sort`, the paging cursor, `_summary` and `_elements`, each under lenient and strict
//! handling; then the parsed query run over stored resources and rendered as a searchset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_fhir::search::{decode_pairs, parse_query, run, searchset, Candidate, AUDIT_EVENT, CONSENT, DOCUMENT_REFERENCE, LIST};
use medgate_fhir::{sample_transaction, PatientId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let pairs = match decode_pairs(text) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.status(), 400, "a query string that does not decode is the client's error");
            return;
        }
    };
    let patient = PatientId { system: "urn:oid:1.2.3".into(), value: "42".into() };
    let bundle = sample_transaction(&patient, "text/plain", b"fuzz", Some(("urn:ietf:rfc:3986", "urn:oid:1.2.3.4")));
    let resources: Vec<serde_json::Value> = bundle["entry"].as_array().map(|a| a.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default();
    for search in [&DOCUMENT_REFERENCE, &LIST, &AUDIT_EVENT, &CONSENT] {
        for strict in [false, true] {
            match parse_query(search, &pairs, strict) {
                Ok(q) => {
                    let candidates = resources.iter().map(|r| Candidate { resource: r.clone(), stored_at: Some(1) }).collect();
                    let page = run(&q, candidates, 1_700_000_000_000_000);
                    let set = searchset(&q, page, &q.ignored_notes(), "urn:uuid:00000000-0000-4000-8000-000000000000");
                    assert_eq!(set["resourceType"], "Bundle");
                    assert_eq!(set["type"], "searchset");
                }
                Err(e) => assert_eq!(e.status(), 400, "a refused search is the client's error: {e}"),
            }
        }
    }
});
