//! A block as a peer sends it to a gateway catching up, or as the chain store reads it back:
//! decoding, hashing, and the chain checks a gateway runs before it accepts it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_fuzz::lookup;
use medgate_ledger::{Block, ChainState};

fuzz_target!(|data: &[u8]| {
    let Ok(block) = Block::from_bytes(data) else { return };
    let bytes = block.to_bytes();
    assert_eq!(bytes, serde_json::to_vec(&block).expect("a block serialises"));
    if let Ok(again) = Block::from_bytes(&bytes) {
        assert_eq!(again, block);
        assert_eq!(again.hash(), block.hash());
    }
    assert_eq!(block.batch_refs().len(), block.batches.len());
    let mut state = ChainState::new();
    let applied = state.apply(&block, &lookup);
    if applied.is_ok() {
        assert_eq!(state.head(), block.hash());
        assert_eq!(state.height(), Some(block.height));
        // A block applies once: the same block again is refused.
        assert!(state.clone().apply(&block, &lookup).is_err());
        let restored = ChainState::from_bytes(&state.to_bytes()).expect("chain state round trip");
        assert_eq!(restored, state);
    }
    let report = medgate_ledger::verify_chain(std::iter::once(Ok(block.clone())), &lookup);
    assert_eq!(report.is_ok(), applied.is_ok());
    let _ = medgate_ledger::verify_ledger(None, std::iter::once(Ok(block)), &lookup, &[]);
});
