//! A signed checkpoint as a peer posts it, and the chain state a gateway persists next to its
//! chain and reads back at start-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_fuzz::lookup;
use medgate_ledger::{ChainState, Checkpoint};

fuzz_target!(|data: &[u8]| {
    if let Ok(cp) = Checkpoint::from_bytes(data) {
        let verdict = cp.verify(&lookup);
        let bytes = serde_json::to_vec(&cp).expect("a checkpoint serialises");
        let again = Checkpoint::from_bytes(&bytes).expect("an encoded checkpoint decodes");
        assert_eq!(again, cp);
        assert_eq!(again.verify(&lookup), verdict);
        assert!(!cp.conflicts_with(&cp));
    }
    if let Ok(state) = ChainState::from_bytes(data) {
        let bytes = state.to_bytes();
        let again = ChainState::from_bytes(&bytes).expect("an encoded chain state decodes");
        assert_eq!(again, state);
        assert_eq!(again.to_bytes(), bytes);
    }
});
