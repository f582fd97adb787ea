//! Whole-ledger and receipt verification with nothing but public keys: what `medgate ledger
//! verify` and `check-receipt` run, and what a third party runs with this crate alone.
//!
//! Boundary: blocks come from any iterator (a gateway's store, an exported file); keys come from
//! the caller's lookup and trust list. A consortium chain is checked from its genesis document,
//! and its membership is replayed block by block, so every batch flagged valid must be signed by
//! a key its gateway held as a member at that height.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::membership::{apply_block, Genesis, Proposal, Roster};
use crate::{verify_chain_with, Block, ChainError, ChainReport, ChainState, LedgerError, Receipt};

/// Re-checks a whole chain from its first block.
///
/// `genesis`: the genesis document's bytes for a consortium chain (block 0 links to its hash and
/// the members' keys come from it and from the membership entries), `None` for a standalone
/// chain (keys come from `recorded`, the keys the gateway recorded when it signed). `trusted`:
/// SubjectPublicKeyInfo DER keys the caller holds (exported by the security officer); when not
/// empty, only those are accepted. Without it the check proves integrity against accidental
/// damage, not against someone who could rewrite the blocks and the key table together.
pub fn verify_ledger(
    genesis: Option<&[u8]>,
    blocks: impl Iterator<Item = Result<Block, LedgerError>>,
    recorded: &dyn Fn(&str, u32) -> Option<Vec<u8>>,
    trusted: &[Vec<u8>],
) -> Result<ChainReport, ChainError> {
    let trust = |key: Option<Vec<u8>>| -> Option<Vec<u8>> {
        match key {
            Some(k) if trusted.is_empty() || trusted.contains(&k) => Some(k),
            Some(_) => None,
            // The recorded keys do not know this version: accept a trusted key if it is the only one.
            None if trusted.len() == 1 => trusted.first().cloned(),
            None => None,
        }
    };
    let Some(bytes) = genesis else {
        return verify_chain_with(ChainState::new(), blocks, &|g: &str, v: u32| trust(recorded(g, v)), &mut |_| {});
    };
    let (genesis, hash) = Genesis::parse(bytes).map_err(|reason| ChainError::Decode {
        height: 0,
        source: LedgerError::Decode { what: "genesis", reason },
    })?;
    let roster = RefCell::new(Roster::from_genesis(&genesis));
    let mut proposals: HashMap<String, Proposal> = HashMap::new();
    let lookup = |g: &str, v: u32| -> Option<Vec<u8>> {
        let key = roster.borrow().ledger_key(g, v)?;
        trust(Some(key))
    };
    let mut after = |block: &Block| {
        let (touched, _) = apply_block(&mut roster.borrow_mut(), block, &mut |id| proposals.get(id).cloned());
        for p in touched {
            proposals.insert(p.proposal_id.clone(), p);
        }
    };
    verify_chain_with(ChainState::after_genesis(hash), blocks, &lookup, &mut after)
}

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The bytes are not a receipt.
    #[error("not a medgate receipt: {0}")]
    Decode(LedgerError),
    /// The receipt does not prove what it claims with this key.
    #[error("receipt does not verify: {0}")]
    Invalid(LedgerError),
}

/// Checks a receipt (JSON, as the HIS received it) against one public key (SPKI DER); the
/// answer says what was proven.
pub fn check_receipt(receipt_json: &[u8], spki: &[u8]) -> Result<Receipt, ReceiptError> {
    let r = Receipt::from_bytes(receipt_json).map_err(ReceiptError::Decode)?;
    r.verify(spki).map_err(ReceiptError::Invalid)?;
    Ok(r)
}
