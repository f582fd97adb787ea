//! Offline checks of a gateway's ledger copy: `medgate ledger verify` (the whole chain) and
//! receipt checks (`medgate ledger check-receipt`), which need nothing but public keys.

use std::path::Path;

use crate::chain::ChainStore;
use crate::ledger::{verify_chain_from, ChainReport, ChainState, Receipt};

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

/// Re-checks every stored block from genesis (a consortium chain from the hash of its genesis
/// document). With `trusted` keys (SPKI DER, e.g. exported by the security officer) only those
/// are accepted; without, the keys recorded in the store are used (every key a member held,
/// removed members included), which proves integrity against accidental damage but not against
/// someone who could rewrite the store and its key table together.
pub fn verify_store(store: &ChainStore, trusted: &[Vec<u8>]) -> Result<ChainReport, crate::ledger::ChainError> {
    let lookup = |gateway: &str, version: u32| -> Option<Vec<u8>> {
        let stored = store.public_key(gateway, version).ok().flatten();
        if trusted.is_empty() {
            stored
        } else {
            match stored {
                Some(k) if trusted.contains(&k) => Some(k),
                // The store does not know this version: accept a trusted key if it is the only one.
                None if trusted.len() == 1 => trusted.first().cloned(),
                _ => None,
            }
        }
    };
    // An unreadable genesis hash leaves zeros, and block 0 then fails to link: reported, not hidden.
    let start = store.genesis_hash().ok().flatten().map_or_else(ChainState::new, ChainState::after_genesis);
    verify_chain_from(start, store.blocks(), &lookup)
}

/// Checks a receipt against one public key; the answer says what was proven.
pub fn check_receipt(receipt_json: &[u8], spki: &[u8]) -> Result<Receipt, String> {
    let r = Receipt::from_bytes(receipt_json).map_err(|e| format!("not a medgate receipt: {e}"))?;
    r.verify(spki).map_err(|e| format!("receipt does not verify: {e}"))?;
    Ok(r)
}
