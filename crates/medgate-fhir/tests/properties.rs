//! Round trips of the FHIR resources medgate writes (proptest): the Consent it answers with
//! reads back as the consent that was submitted, and the ITI-65 transaction Bundle that the demo
//! and the load generator send parses to the document they put in. Encoding what was parsed
//! gives the same bytes again (one canonical form).

#![allow(clippy::unwrap_used, reason = "test")]

use medgate_fhir::{consent_resource, parse_consent, parse_transaction, sample_transaction, ConsentSubmission, PatientId};
use proptest::prelude::*;

fn patient() -> impl Strategy<Value = PatientId> {
    ("urn:oid:1\\.2\\.[0-9]{1,6}(\\.[0-9]{1,4}){0,3}", "[A-Za-z0-9][A-Za-z0-9 ./-]{0,20}[A-Za-z0-9]")
        .prop_map(|(system, value)| PatientId { system, value })
}

fn instant() -> impl Strategy<Value = String> {
    (2000u32..2100, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..60).prop_map(|(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
}

fn consent() -> impl Strategy<Value = ConsentSubmission> {
    (
        any::<bool>(),
        patient(),
        "[a-z][a-z0-9._-]{0,20}",
        proptest::collection::vec("[0-9a-f]{32}", 0..6),
        proptest::option::of(instant()),
        proptest::option::of(instant()),
    )
        .prop_map(|(active, patient, grantee, record_ids, a, b)| {
            // The end is never before the start.
            let (start, end) = match (a, b) {
                (Some(a), Some(b)) if b < a => (Some(b), Some(a)),
                other => other,
            };
            ConsentSubmission { active, patient, grantee, record_ids, start, end }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_consent_medgate_answers_with_reads_back_as_the_submitted_one(c in consent(), id in "[0-9a-f]{32}") {
        let written = serde_json::to_vec(&consent_resource(&id, &c, "hospital-a", None)).unwrap();
        let back = parse_consent(&written).unwrap();
        prop_assert_eq!(&back, &c);
        let again = serde_json::to_vec(&consent_resource(&id, &back, "hospital-a", None)).unwrap();
        prop_assert_eq!(again, written);
    }

    #[test]
    fn the_sample_transaction_parses_to_the_document_put_in(
        p in patient(),
        data in proptest::collection::vec(any::<u8>(), 1..2048),
        content_type in prop_oneof![Just("application/pdf"), Just("text/plain; charset=utf-8"), Just("application/fhir+json")],
        master in proptest::option::of("[0-9]{1,8}(\\.[0-9]{1,8}){1,4}"),
    ) {
        let master = master.map(|m| format!("urn:oid:{m}"));
        let bundle = sample_transaction(&p, content_type, &data, master.as_deref().map(|m| ("urn:ietf:rfc:3986", m)));
        let bytes = serde_json::to_vec(&bundle).unwrap();
        let docs = parse_transaction(&bytes).unwrap().documents;
        prop_assert_eq!(docs.len(), 1);
        let d = &docs[0];
        prop_assert_eq!(&d.patient, &p);
        prop_assert_eq!(&d.data, &data);
        prop_assert_eq!(d.content_type.as_str(), content_type);
        // Without one asked for, the bundle carries a fresh urn:oid:2.25.* (every call submits
        // a new document).
        let (system, value) = d.master_identifier.clone().unwrap();
        prop_assert_eq!(system.as_str(), "urn:ietf:rfc:3986");
        match master {
            Some(m) => prop_assert_eq!(value, m),
            None => prop_assert!(value.starts_with("urn:oid:2.25."), "{}", value),
        }
        prop_assert!(d.document_reference["content"][0]["attachment"].get("data").is_none());
        // Parsing the same bytes again gives the same submission.
        prop_assert_eq!(&parse_transaction(&bytes).unwrap().documents, &docs);
    }
}
