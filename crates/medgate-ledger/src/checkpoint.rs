//! Signed checkpoints: a gateway's statement "my chain at height H has head hash X and was cut
//! from the ordered stream up to position P", signed by its HSM ledger key. Gateways exchange
//! them; two valid checkpoints with different hashes at one height prove a fork.
//!
//! Signed message (UTF-8 text, `\n` separated, no trailing newline):
//! `medgate-checkpoint-v1\n{gateway}\n{height}\n{block_hash hex}\n{order_position}`.

use serde::{Deserialize, Serialize};

use super::canon;
use super::{p256, LedgerError, MAX_RECEIPT_BYTES};

const CHECKPOINT_TAG: &str = "medgate-checkpoint-v1";

/// A checkpoint before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedCheckpoint {
    gateway: String,
    height: u64,
    block_hash: String,
    order_position: u64,
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Hospital id of the signing gateway.
    pub gateway: String,
    /// Height of the block checkpointed.
    pub height: u64,
    /// Lowercase hex hash of the block at `height`.
    pub block_hash: String,
    /// Ordering position of that block.
    pub order_position: u64,
    /// Version of the ledger key that signed.
    pub key_version: u32,
    /// Raw low-S `r || s`, lowercase hex.
    pub signature: String,
}

fn message(gateway: &str, height: u64, block_hash: &str, order_position: u64) -> Vec<u8> {
    format!("{CHECKPOINT_TAG}\n{gateway}\n{height}\n{block_hash}\n{order_position}").into_bytes()
}

impl UnsignedCheckpoint {
    /// A checkpoint of `gateway`'s block at `height`.
    pub fn new(gateway: &str, height: u64, block_hash: [u8; 32], order_position: u64) -> UnsignedCheckpoint {
        UnsignedCheckpoint { gateway: gateway.to_owned(), height, block_hash: hex::encode(block_hash), order_position }
    }

    /// SHA-256 of the signing message: what the HSM signs with `CKM_ECDSA`.
    pub fn signing_digest(&self) -> [u8; 32] {
        canon::sha256(&message(&self.gateway, self.height, &self.block_hash, self.order_position))
    }

    /// Attaches the HSM's raw signature (stored low-S).
    pub fn sign(self, key_version: u32, raw_signature: &[u8]) -> Checkpoint {
        Checkpoint {
            gateway: self.gateway,
            height: self.height,
            block_hash: self.block_hash,
            order_position: self.order_position,
            key_version,
            signature: hex::encode(p256::normalize_low_s(raw_signature)),
        }
    }
}

impl Checkpoint {
    /// Checks the signature with the key `spki_for_version(gateway, key_version)` returns.
    pub fn verify(&self, spki_for_version: &dyn Fn(&str, u32) -> Option<Vec<u8>>) -> Result<(), LedgerError> {
        if !canon::is_hex(&self.block_hash, 64) {
            return Err(LedgerError::BadBlockHash);
        }
        let spki = spki_for_version(&self.gateway, self.key_version)
            .ok_or_else(|| LedgerError::UnknownKey { gateway: self.gateway.clone(), version: self.key_version })?;
        p256::verify(&spki, &message(&self.gateway, self.height, &self.block_hash, self.order_position), &self.signature)
    }

    /// Two valid checkpoints at one height with different block hashes: a fork.
    pub fn conflicts_with(&self, other: &Checkpoint) -> bool {
        self.height == other.height && self.block_hash != other.block_hash
    }

    /// Decodes a checkpoint (size-limited, unknown fields rejected). Does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, LedgerError> {
        canon::decode("checkpoint", bytes, MAX_RECEIPT_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::TestKey;
    use super::*;

    #[test]
    fn signed_checkpoint_verifies_and_detects_forks() {
        let key = TestKey::new();
        let spki = key.spki();
        let lookup = move |g: &str, v: u32| (g == "hospital-a" && v == 1).then(|| spki.clone());
        let make = |hash: [u8; 32]| {
            let u = UnsignedCheckpoint::new("hospital-a", 4, hash, 9);
            let msg = message("hospital-a", 4, &hex::encode(hash), 9);
            u.sign(1, &key.sign(&msg))
        };
        let a = make([1; 32]);
        let b = make([2; 32]);
        assert_eq!(a.verify(&lookup), Ok(()));
        assert_eq!(b.verify(&lookup), Ok(()));
        assert!(a.conflicts_with(&b));
        assert!(!a.conflicts_with(&a.clone()));
        let mut forged = a.clone();
        forged.height = 5;
        assert_eq!(forged.verify(&lookup), Err(LedgerError::BadSignature));
        let bytes = serde_json::to_vec(&a).expect("encode");
        assert_eq!(Checkpoint::from_bytes(&bytes).expect("decode"), a);
    }
}
