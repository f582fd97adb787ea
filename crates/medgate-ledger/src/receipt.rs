//! Receipts: the proof, handed to the HIS with every create, that an entry is in a signed batch
//! and that the batch is in a block at a given height.
//!
//! Boundary: a receipt is self-contained. With only the gateway's ledger public key a third party
//! can check it offline: the entry's id and fields, the Merkle inclusion proof up to the batch
//! root, the batch signature over (gateway, seq, tree size, root), and that the batch hash is
//! listed, flagged valid, in the block header whose hash the receipt names.

use serde::{Deserialize, Serialize};

use super::block::header_hash;
use super::canon;
use super::{batch, merkle, p256, BatchRef, Block, Entry, LedgerError, MAX_RECEIPT_BYTES};

/// Proof that one entry is on the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The entry itself (pseudonyms, hashes and codes only).
    pub entry: Entry,
    /// Index of the entry's leaf in its batch.
    pub leaf_index: u64,
    /// RFC 6962 audit path from the leaf to the batch root, lowercase hex.
    pub proof: Vec<String>,
    /// The gateway that signed the batch.
    pub gateway: String,
    /// The batch's sequence number.
    pub seq: u64,
    /// How many entries the batch holds.
    pub tree_size: u64,
    /// The batch's Merkle root, lowercase hex.
    pub root: String,
    /// Version of the gateway's ledger signing key.
    pub key_version: u32,
    /// The raw low-S `r || s` batch signature, lowercase hex.
    pub signature: String,
    /// Height of the block holding the batch.
    pub height: u64,
    /// That block's previous hash.
    pub prev_hash: String,
    /// That block's ordering position.
    pub order_position: u64,
    /// That block's batch list (hashes and validity flags).
    pub batches: Vec<BatchRef>,
    /// Index of the entry's batch in the block.
    pub batch_index: u64,
    /// Lowercase hex hash of the block header.
    pub block_hash: String,
}

/// What every receipt of one batch shares.
struct Shared<'a> {
    block: &'a Block,
    batch: &'a crate::Batch,
    batch_index: usize,
    leaves: Vec<[u8; 32]>,
    block_hash: String,
    batches: Vec<BatchRef>,
}

impl<'a> Shared<'a> {
    fn new(block: &'a Block, batch_index: usize, batch: &'a crate::Batch) -> Shared<'a> {
        Shared { block, batch, batch_index, leaves: batch.leaf_hashes(), block_hash: hex::encode(block.hash()), batches: block.batch_refs() }
    }

    /// The receipt of entry `entry` (an index inside the batch), whose audit path is `proof`.
    fn receipt(&self, entry: usize, proof: &[[u8; 32]]) -> Receipt {
        let b = self.batch;
        Receipt {
            entry: b.entries[entry].clone(),
            leaf_index: entry as u64,
            proof: proof.iter().map(hex::encode).collect(),
            gateway: b.gateway.clone(),
            seq: b.seq,
            tree_size: self.leaves.len() as u64,
            root: b.root.clone(),
            key_version: b.key_version,
            signature: b.signature.clone(),
            height: self.block.height,
            prev_hash: self.block.prev_hash.clone(),
            order_position: self.block.order_position,
            batches: self.batches.clone(),
            batch_index: self.batch_index as u64,
            block_hash: self.block_hash.clone(),
        }
    }
}

impl Receipt {
    /// Builds the receipt for entry `entry` of batch `batch` in `block`.
    pub fn for_entry(block: &Block, batch: usize, entry: usize) -> Result<Receipt, LedgerError> {
        let b = block.batches.get(batch).ok_or(LedgerError::NotFound { what: "batch", index: batch })?;
        b.entries.get(entry).ok_or(LedgerError::NotFound { what: "entry", index: entry })?;
        let shared = Shared::new(block, batch, b);
        Ok(shared.receipt(entry, &merkle::inclusion_proof(&shared.leaves, entry)))
    }

    /// The receipts of every entry of batch `batch` in `block`, in entry order. The batch's leaf
    /// hashes, audit paths and the block's hash are computed once for all of them (per entry, a
    /// group of n entries cost n² entry encodings and node hashes).
    pub fn for_batch(block: &Block, batch: usize) -> Result<Vec<Receipt>, LedgerError> {
        let b = block.batches.get(batch).ok_or(LedgerError::NotFound { what: "batch", index: batch })?;
        let shared = Shared::new(block, batch, b);
        let proofs = merkle::inclusion_proofs(&shared.leaves);
        Ok(proofs.iter().enumerate().map(|(i, proof)| shared.receipt(i, proof)).collect())
    }

    /// Checks the receipt with the signing gateway's public key (SubjectPublicKeyInfo DER).
    pub fn verify(&self, spki: &[u8]) -> Result<(), LedgerError> {
        self.entry.validate()?;
        if self.entry.gateway != self.gateway {
            return Err(LedgerError::BadBatch("entry written by another gateway"));
        }
        let root = canon::hash_from_hex(&self.root).ok_or(LedgerError::BadRoot)?;
        let mut proof = Vec::with_capacity(self.proof.len());
        for p in &self.proof {
            proof.push(canon::hash_from_hex(p).ok_or(LedgerError::BadProof)?);
        }
        if !merkle::verify_inclusion(self.entry.leaf_hash(), self.leaf_index, self.tree_size, &proof, root) {
            return Err(LedgerError::BadProof);
        }
        p256::verify(spki, &batch::signing_message(&self.gateway, self.seq, self.tree_size, &self.root), &self.signature)?;
        let batch_hash = hex::encode(batch::header_hash(
            &self.gateway,
            self.seq,
            self.tree_size,
            &self.root,
            self.key_version,
            &self.signature,
        ));
        let listed = self
            .batches
            .get(self.batch_index as usize)
            .ok_or(LedgerError::NotFound { what: "batch", index: self.batch_index as usize })?;
        if listed.hash != batch_hash {
            return Err(LedgerError::BadBlockHash);
        }
        if !listed.valid {
            return Err(LedgerError::FlaggedInvalid);
        }
        let block_hash = header_hash(self.height, &self.prev_hash, self.order_position, &self.batches);
        if hex::encode(block_hash) != self.block_hash {
            return Err(LedgerError::BadBlockHash);
        }
        Ok(())
    }

    /// Compact JSON (the form handed to the HIS and printed by `medgate ledger proof`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Decodes a receipt (at most [`MAX_RECEIPT_BYTES`], unknown fields rejected). Does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Receipt, LedgerError> {
        canon::decode("receipt", bytes, MAX_RECEIPT_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{anchored, TestKey};
    use super::super::{ChainState, UnsignedBatch};
    use super::*;

    fn block_of(key: &TestKey, n: u64) -> Block {
        let entries = (0..n).map(|i| anchored("hospital-a", i)).collect();
        let batch = key.sign_batch(UnsignedBatch::new("hospital-a", 1, entries), 1);
        let spki = key.spki();
        let lookup = move |g: &str, v: u32| (g == "hospital-a" && v == 1).then(|| spki.clone());
        ChainState::new().cut(7, vec![batch], &lookup, &mut |_| true).expect("cut")
    }

    #[test]
    fn every_receipt_of_a_block_verifies_and_survives_a_round_trip() {
        let key = TestKey::new();
        let block = block_of(&key, 5);
        for i in 0..5 {
            let r = Receipt::for_entry(&block, 0, i).expect("receipt");
            assert_eq!(r.verify(&key.spki()), Ok(()), "entry {i}");
            let bytes = serde_json::to_vec(&r).expect("encode");
            assert_eq!(Receipt::from_bytes(&bytes).expect("decode"), r);
        }
        assert!(Receipt::for_entry(&block, 0, 5).is_err());
        assert!(Receipt::for_entry(&block, 1, 0).is_err());
    }

    #[test]
    fn a_batch_s_receipts_are_its_entries_receipts_in_order() {
        let key = TestKey::new();
        let block = block_of(&key, 7);
        let all = Receipt::for_batch(&block, 0).expect("receipts");
        assert_eq!(all.len(), 7);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r, &Receipt::for_entry(&block, 0, i).expect("receipt"), "entry {i}");
            assert_eq!(r.verify(&key.spki()), Ok(()), "entry {i}");
        }
        assert!(Receipt::for_batch(&block, 1).is_err());
    }

    #[test]
    fn altered_receipts_fail() {
        let key = TestKey::new();
        let block = block_of(&key, 3);
        let good = Receipt::for_entry(&block, 0, 1).expect("receipt");
        let other = TestKey::new();
        assert_eq!(good.verify(&other.spki()), Err(LedgerError::BadSignature));

        let mut r = good.clone();
        r.leaf_index = 2;
        assert_eq!(r.verify(&key.spki()), Err(LedgerError::BadProof));

        let mut r = good.clone();
        r.height += 1;
        assert_eq!(r.verify(&key.spki()), Err(LedgerError::BadBlockHash));

        let mut r = good.clone();
        r.batches[0].valid = false;
        assert_eq!(r.verify(&key.spki()), Err(LedgerError::FlaggedInvalid));

        let mut r = good.clone();
        r.entry = anchored("hospital-a", 99);
        assert_eq!(r.verify(&key.spki()), Err(LedgerError::BadProof));
    }
}
