//! A receipt as the HIS (or anyone it hands it to) checks it with `medgate ledger proof` or the
//! ledger crate alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_ledger::{check_receipt, Receipt};

fuzz_target!(|data: &[u8]| {
    let spki = medgate_fuzz::spki();
    let checked = check_receipt(data, &spki);
    let Ok(receipt) = Receipt::from_bytes(data) else {
        assert!(checked.is_err());
        return;
    };
    let verdict = receipt.verify(&spki);
    assert_eq!(checked.is_ok(), verdict.is_ok());
    let bytes = serde_json::to_vec(&receipt.to_json()).expect("a receipt serialises");
    if let Ok(again) = Receipt::from_bytes(&bytes) {
        assert_eq!(again, receipt);
        assert_eq!(again.verify(&spki), verdict);
    }
});
