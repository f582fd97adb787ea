//! A ledger entry as it arrives inside a batch from the ordering service or a peer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_ledger::Entry;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = serde_json::from_slice::<Entry>(data) else { return };
    let valid = entry.validate().is_ok();
    // The whole check is the fields' and the id's.
    assert_eq!(valid, entry.validate_fields().is_ok() && entry.check_id().is_ok());
    // Encoding is deterministic and decodes to the same entry.
    let bytes = serde_json::to_vec(&entry).expect("an entry serialises");
    let again: Entry = serde_json::from_slice(&bytes).expect("an encoded entry decodes");
    assert_eq!(again, entry);
    assert_eq!(again.canonical_bytes(), entry.canonical_bytes());
    assert_eq!(again.leaf_hash(), entry.leaf_hash());
    assert_eq!(again.validate().is_ok(), valid);
    if valid {
        assert!(entry.check_id().is_ok());
        let _ = (entry.patient(), entry.record_id());
        let _ = medgate_ledger::consent::ConsentState::from_entry(&entry);
        let _ = medgate_ledger::membership::Proposal::from_entry(&entry.body);
    }
});
