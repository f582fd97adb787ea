//! Offline checks of this gateway's own ledger copy (`medgate ledger verify`): the stored blocks,
//! genesis and recorded keys handed to [`medgate_ledger::verify_ledger`], which does the work.

use medgate_ledger::{verify_ledger, ChainError, ChainReport, LedgerError};
use sha2::{Digest, Sha256};

use medgate_store::ChainStore;

/// Re-checks every stored block from genesis (see [`verify_ledger`] for what `trusted` means).
/// A consortium copy is checked from the genesis document stored with it, which must hash to the
/// genesis hash recorded with the chain.
pub fn verify_store(store: &ChainStore, trusted: &[Vec<u8>]) -> Result<ChainReport, ChainError> {
    let unreadable = |reason: String| ChainError::Decode { height: 0, source: LedgerError::Decode { what: "stored genesis", reason } };
    let genesis = match store.genesis_hash().map_err(|e| unreadable(e.to_string()))? {
        None => None,
        Some(hash) => {
            let bytes = store.genesis().map_err(|e| unreadable(e.to_string()))?.ok_or_else(|| unreadable("missing".into()))?;
            if <[u8; 32]>::from(Sha256::digest(&bytes)) != hash {
                return Err(unreadable("does not hash to the genesis hash recorded with the chain".into()));
            }
            Some(bytes)
        }
    };
    verify_ledger(genesis.as_deref(), store.blocks(), &|g: &str, v: u32| store.public_key(g, v).ok().flatten(), trusted)
}
