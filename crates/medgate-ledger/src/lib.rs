//! medgate's ledger: entries, Merkle trees, signed batches, hash-chained blocks, checkpoints and
//! receipts, the consortium's membership rules, the state derived from consent entries, and the
//! checks that every gateway (and any third party) runs on them.
//!
//! Boundary: pure data and verification, for gateways and auditors alike. Nothing here talks to
//! the HSM, the ordering service, a database, the network or the clock (no cryptoki, sled, tokio,
//! hyper or etcd in its dependencies): an auditor verifies a ledger copy and a receipt with this
//! crate alone (`examples/verify-ledger.rs`). Signing is done elsewhere: this crate hands out the exact message and its
//! SHA-256 digest (`signing_message` / `signing_digest`), the HSM signs the digest with
//! `CKM_ECDSA`, and the raw `r || s` signature comes back through `sign`. Verification uses ring's
//! `ECDSA_P256_SHA256_FIXED` over the message, which hashes the message itself.
//!
//! Everything that is hashed or signed is encoded by this module's own canonical writer (compact
//! JSON with a fixed field order, or fixed text lines for signed messages), so the bytes never
//! depend on a serializer library's choices. Block hashes depend only on the height, the previous
//! hash, the ordering position and the ordered batches: no wall clock and no local state, so every
//! gateway that reads the same ordered stream cuts byte-identical blocks.
//!
//! No ledger item may carry a patient identifier or document content: only pseudonyms (HMAC under
//! the HSM pseudonym key) and hashes. [`Entry::validate`] enforces the shape of every field.

#![warn(missing_docs)]

mod batch;
mod block;
mod canon;
mod checkpoint;
pub mod consent;
mod entry;
pub mod hospital;
pub mod keys;
pub mod membership;
pub mod merkle;
pub mod officers;
mod p256;
mod pick;
mod receipt;
#[cfg(test)]
pub(crate) mod testkit;
pub mod verify;

pub use batch::{Batch, UnsignedBatch};
pub use block::{verify_chain, verify_chain_with, BatchRef, Block, ChainError, ChainReport, ChainState};
pub use checkpoint::{Checkpoint, UnsignedCheckpoint};
pub use entry::{Entry, EntryBody};
pub use p256::{normalize_low_s, p256_point_from_spki};
pub use pick::Place;
pub use receipt::Receipt;
pub use verify::{check_receipt, verify_ledger, ReceiptError};

/// Largest encoded batch accepted, in bytes (well under etcd's 1.5 MiB request limit).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Largest number of entries in one batch.
pub const MAX_BATCH_ENTRIES: usize = 1024;
/// Largest number of batches in one block.
pub const MAX_BLOCK_BATCHES: usize = 128;
/// Largest encoded block accepted, in bytes.
pub const MAX_BLOCK_BYTES: usize = 16 * 1024 * 1024;
/// Largest encoded receipt or checkpoint accepted, in bytes.
pub const MAX_RECEIPT_BYTES: usize = 256 * 1024;

/// Why a ledger item was rejected. Carries no entry content beyond ids, gateway ids and numbers,
/// so it may be logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The bytes are not a well-formed encoding of the item (bad JSON, unknown or duplicate field,
    /// wrong type).
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// The item being decoded.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The item is over its size limit.
    #[error("{what} is {size}, over the limit of {limit}")]
    TooLarge {
        /// What was measured (bytes or count of something).
        what: &'static str,
        /// Measured size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An entry field does not have the required shape (for example a patient field that is not a
    /// 64-hex pseudonym).
    #[error("entry field `{field}` is invalid: {reason}")]
    BadEntry {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry's id is not the hash of its content.
    #[error("entry {id} does not match its content")]
    BadId {
        /// The id the entry claims.
        id: String,
    },
    /// A batch is malformed (empty, sequence number 0, entry from another gateway, bad hex).
    #[error("malformed batch: {0}")]
    BadBatch(&'static str),
    /// The Merkle root does not match the entries.
    #[error("Merkle root does not match the entries")]
    BadRoot,
    /// An inclusion proof does not lead from the entry to the signed root.
    #[error("inclusion proof does not lead to the root")]
    BadProof,
    /// The signature is malformed, not low-S, or does not verify with the key.
    #[error("signature does not verify")]
    BadSignature,
    /// The public key is not a P-256 SubjectPublicKeyInfo.
    #[error("public key is not a P-256 SubjectPublicKeyInfo")]
    BadKey,
    /// No key is known for this gateway and key version.
    #[error("no key known for gateway {gateway} version {version}")]
    UnknownKey {
        /// Gateway id.
        gateway: String,
        /// Key version.
        version: u32,
    },
    /// A batch's sequence number is not the next one for its gateway (replay, gap or reorder).
    #[error("batch {seq} of gateway {gateway} is out of sequence, expected {expected}")]
    OutOfSequence {
        /// Gateway id.
        gateway: String,
        /// Sequence number found.
        seq: u64,
        /// Sequence number expected.
        expected: u64,
    },
    /// A block's ordering position is before the previous block's.
    #[error("order position {found} is before the previous block's {previous}")]
    OrderRegression {
        /// The previous block's position.
        previous: u64,
        /// This block's position.
        found: u64,
    },
    /// A block has a different number of validity flags than batches.
    #[error("block has {batches} batches but {flags} validity flags")]
    FlagCount {
        /// Number of batches.
        batches: usize,
        /// Number of flags.
        flags: usize,
    },
    /// An index does not point into the block or batch.
    #[error("no {what} at index {index}")]
    NotFound {
        /// Batch or entry.
        what: &'static str,
        /// The index asked for.
        index: usize,
    },
    /// The batch is flagged invalid in its block: it is kept, but nothing in it counts.
    #[error("batch is flagged invalid in its block")]
    FlaggedInvalid,
    /// The block hash in a receipt does not match the block header it carries.
    #[error("block hash does not match the block header")]
    BadBlockHash,
}
