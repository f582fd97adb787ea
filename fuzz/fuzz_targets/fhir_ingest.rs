//! What the HIS posts: an ITI-65 transaction Bundle, a DocumentReference with an inline
//! attachment, a Consent, a status PATCH. The same bytes go through each parser; what is
//! accepted must hold the promises the gateway relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sub) = medgate_fhir::parse_transaction(data) {
        assert!(!sub.entries.is_empty());
        for d in &sub.documents {
            check_document(d);
        }
        if let Some(set) = sub.submission_set.clone() {
            // Every List entry names one of the submission's documents.
            assert!(set.items.iter().all(|k| *k < sub.documents.len()), "a List entry names no document");
            let ids: Vec<String> = (0..sub.documents.len()).map(|k| format!("r{k}")).collect();
            let _ = set.into_stored_list(&ids);
        }
    }
    if let Ok(status) = medgate_fhir::parse_status_patch(data) {
        assert_eq!(status, "entered-in-error", "the only status a PATCH may set");
    }
    if let Ok(d) = medgate_fhir::parse_document_reference(data) {
        check_document(&d);
    }
    if let Ok(c) = medgate_fhir::parse_consent(data) {
        // The resource medgate answers with reads back as the same consent.
        let answer = medgate_fhir::consent_resource("c-1", &c, "hospital-a", None);
        let bytes = serde_json::to_vec(&answer).expect("a Value serialises");
        let again = medgate_fhir::parse_consent(&bytes).expect("medgate's own Consent parses");
        assert_eq!(again, c);
    }
    if let Err(e) = medgate_fhir::parse_transaction(data) {
        // Every refusal becomes an OperationOutcome with a 4xx status.
        assert!((400..500).contains(&e.status()));
        let _ = e.to_outcome();
    }
});

fn check_document(d: &medgate_fhir::DocumentSubmission) {
    assert!(!d.data.is_empty(), "a stored document is never empty");
    // The attachment bytes are taken out of the DocumentReference medgate keeps.
    let attachment = &d.document_reference["content"][0]["attachment"];
    assert!(attachment.get("data").is_none(), "attachment.data left in the stored DocumentReference");
}
