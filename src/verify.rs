//! Offline checks of a gateway's ledger copy: `medgate ledger verify` (the whole chain) and
//! receipt checks (`medgate ledger check-receipt`), which need nothing but public keys.

use std::path::Path;

use crate::chain::ChainStore;
use std::collections::HashMap;

use crate::ledger::{verify_chain_with, ChainReport, ChainState, Receipt};

/// Reads a PEM (or DER) SubjectPublicKeyInfo file, as `medgate keys public-key` writes it.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        let text = String::from_utf8_lossy(&bytes);
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("{}: not a PEM public key: {e}", path.display()))
    } else {
        Ok(bytes)
    }
}

/// Re-checks every stored block from genesis. With `trusted` keys (SPKI DER, e.g. exported by
/// the security officer) only those are accepted; without, the keys recorded in the store are
/// used, which proves integrity against accidental damage but not against someone who could
/// rewrite the store and its key table together.
///
/// A consortium chain is checked from the hash of its genesis document, and its membership is
/// replayed from the genesis: a batch flagged valid must be signed by a key its gateway held as
/// a member at that height (a batch from a removed or not yet admitted hospital fails).
pub fn verify_store(store: &ChainStore, trusted: &[Vec<u8>]) -> Result<ChainReport, crate::ledger::ChainError> {
    let trust = |key: Option<Vec<u8>>| -> Option<Vec<u8>> {
        match key {
            Some(k) if trusted.is_empty() || trusted.contains(&k) => Some(k),
            Some(_) => None,
            // The store does not know this version: accept a trusted key if it is the only one.
            None if trusted.len() == 1 => trusted.first().cloned(),
            None => None,
        }
    };
    let unreadable = |reason: String| crate::ledger::ChainError::Decode { height: 0, source: crate::ledger::LedgerError::Decode { what: "stored genesis", reason } };
    let stored_hash = store.genesis_hash().map_err(|e| unreadable(e.to_string()))?;
    let Some(stored_hash) = stored_hash else {
        // A standalone chain.
        return verify_chain_with(ChainState::new(), store.blocks(), &|g: &str, v: u32| trust(store.public_key(g, v).ok().flatten()), &mut |_| {});
    };
    // A consortium chain: its membership is replayed from the stored genesis, which must be
    // there and be the document block 0 hangs from.
    let bytes = store.genesis().map_err(|e| unreadable(e.to_string()))?.ok_or_else(|| unreadable("missing".into()))?;
    let (genesis, hash) = crate::membership::Genesis::parse(&bytes).map_err(unreadable)?;
    if hash != stored_hash {
        return Err(unreadable("does not hash to the genesis hash recorded with the chain".into()));
    }
    let roster = std::cell::RefCell::new(crate::membership::Roster::from_genesis(&genesis));
    let mut proposals: HashMap<String, crate::membership::Proposal> = HashMap::new();
    let lookup = |g: &str, v: u32| -> Option<Vec<u8>> {
        let key = roster.borrow().ledger_key(g, v)?;
        trust(Some(key))
    };
    let mut after = |block: &crate::ledger::Block| {
        let (touched, _) = crate::membership::apply_block(&mut roster.borrow_mut(), block, &mut |id| proposals.get(id).cloned());
        for p in touched {
            proposals.insert(p.proposal_id.clone(), p);
        }
    };
    verify_chain_with(ChainState::after_genesis(hash), store.blocks(), &lookup, &mut after)
}

/// Checks a receipt against one public key; the answer says what was proven.
pub fn check_receipt(receipt_json: &[u8], spki: &[u8]) -> Result<Receipt, String> {
    let r = Receipt::from_bytes(receipt_json).map_err(|e| format!("not a medgate receipt: {e}"))?;
    r.verify(spki).map_err(|e| format!("receipt does not verify: {e}"))?;
    Ok(r)
}
