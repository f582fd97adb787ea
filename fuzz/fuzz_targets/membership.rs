//! A member card (what a hospital hands over to join) and the genesis document every member
//! configures; then the roster the chain derives from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_ledger::membership::{Genesis, MemberCard, Roster};

fuzz_target!(|data: &[u8]| {
    if let Ok(card) = serde_json::from_slice::<MemberCard>(data) {
        if card.check().is_ok() {
            let bytes = serde_json::to_vec(&card).expect("a card serialises");
            let again: MemberCard = serde_json::from_slice(&bytes).expect("an encoded card decodes");
            assert_eq!(again, card);
            assert!(again.check().is_ok());
        }
    }
    if let Ok((genesis, hash)) = Genesis::parse(data) {
        assert_ne!(hash, [0; 32]);
        let roster = Roster::from_genesis(&genesis);
        for m in &genesis.members {
            assert!(roster.is_member(&m.hospital_id));
            assert!(roster.ledger_key(&m.hospital_id, m.ledger_key_version).is_some());
        }
        // What `medgate consortium genesis` writes parses back to the same document.
        let bytes = genesis.to_bytes().expect("a checked genesis serialises");
        let (again, _) = Genesis::parse(&bytes).expect("a written genesis parses");
        assert_eq!(again, genesis);
    }
});
