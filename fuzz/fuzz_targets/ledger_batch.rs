//! A signed batch as the ordering service (etcd) delivers it to every gateway.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_fuzz::lookup;
use medgate_ledger::Batch;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = Batch::from_bytes(data) else { return };
    let verdict = batch.verify(&lookup);
    // The canonical encoding is serde_json's, decodes to the same batch, and is stable.
    let bytes = batch.to_bytes();
    assert_eq!(bytes, serde_json::to_vec(&batch).expect("a batch serialises"));
    if let Ok(again) = Batch::from_bytes(&bytes) {
        assert_eq!(again, batch);
        assert_eq!(again.to_bytes(), bytes);
        assert_eq!(again.hash(), batch.hash());
        assert_eq!(again.verify(&lookup), verdict);
    } else {
        // Only the size limit may refuse what decoded once.
        assert!(bytes.len() > medgate_ledger::MAX_BATCH_BYTES);
    }
    let _ = batch.leaf_hashes();
    let _ = medgate_ledger::ChainState::new().check_batch(&batch, &lookup);
});
