//! Signed batches: one gateway's entries in order, their Merkle root, and one HSM signature.
//!
//! Boundary: builds the message to sign and checks signed batches. The signature itself is made
//! by the caller (HSM, `CKM_ECDSA` over [`UnsignedBatch::signing_digest`]).
//!
//! Signed message (UTF-8 text, `\n` separated, no trailing newline):
//! `medgate-batch-v1\n{gateway}\n{seq}\n{tree_size}\n{root hex}`. The entry count (`tree_size`)
//! is signed so that an inclusion proof's tree size is bound by the signature too.

use serde::{Deserialize, Serialize};

use super::canon::{self, Obj};
use super::{merkle, p256, Entry, LedgerError, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};

/// Domain tag at the start of every batch signing message.
const BATCH_TAG: &str = "medgate-batch-v1";

/// A signed batch: a gateway's entries in order, their Merkle root, one signature.
///
/// Every string has exactly one accepted spelling (lowercase hex, canonical entries), so a batch
/// that verifies has exactly one [`Batch::hash`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Hospital id of the gateway that wrote and signed the batch.
    pub gateway: String,
    /// Per-gateway counter, starting at 1; a batch is valid only as the next one of its gateway.
    pub seq: u64,
    /// The entries, in leaf order.
    pub entries: Vec<Entry>,
    /// Lowercase hex Merkle root over the entries' leaf hashes.
    pub root: String,
    /// Version of the gateway's ledger signing key.
    pub key_version: u32,
    /// Lowercase hex raw `r || s` (64 bytes), low-S.
    pub signature: String,
}

/// A batch before signing. Fields are private so the root always matches the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedBatch {
    gateway: String,
    seq: u64,
    entries: Vec<Entry>,
    root: String,
}

impl UnsignedBatch {
    /// Builds the batch and computes its root from the leaves `SHA-256(0x00 || canonical_bytes)`.
    /// Call [`UnsignedBatch::check`] before spending an HSM signature on it.
    pub fn new(gateway: &str, seq: u64, entries: Vec<Entry>) -> UnsignedBatch {
        let root = hex::encode(merkle::root(&leaf_hashes(&entries)));
        UnsignedBatch {
            gateway: gateway.to_owned(),
            seq,
            entries,
            root,
        }
    }

    /// Checks everything [`Batch::verify`] checks except the signature: sequence number, entry
    /// count, encoded size (with room for the signature), entry fields and ids, entries' gateway.
    pub fn check(&self) -> Result<(), LedgerError> {
        let mut out = Vec::new();
        write_batch(&mut out, &self.gateway, self.seq, &self.entries, &self.root, u32::MAX, &"0".repeat(128));
        check_content(&self.gateway, self.seq, &self.entries, &self.root, out.len())
    }

    /// Message that the batch signature covers:
    /// `b"medgate-batch-v1\n" || gateway || "\n" || seq || "\n" || tree_size || "\n" || root`
    /// (decimal numbers, lowercase hex root).
    pub fn signing_message(&self) -> Vec<u8> {
        signing_message(&self.gateway, self.seq, self.entries.len() as u64, &self.root)
    }

    /// SHA-256 of [`UnsignedBatch::signing_message`]: what the HSM signs with `CKM_ECDSA`.
    pub fn signing_digest(&self) -> [u8; 32] {
        canon::sha256(&self.signing_message())
    }

    /// Attaches the HSM's raw `r || s` signature made with ledger key `key_version`. The signature
    /// is stored in low-S form. Nothing is checked here; [`Batch::verify`] does.
    pub fn sign(self, key_version: u32, raw_signature: &[u8]) -> Batch {
        Batch {
            gateway: self.gateway,
            seq: self.seq,
            entries: self.entries,
            root: self.root,
            key_version,
            signature: hex::encode(p256::normalize_low_s(raw_signature)),
        }
    }

    /// Gateway id.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Entries in leaf order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Lowercase hex Merkle root.
    pub fn root(&self) -> &str {
        &self.root
    }
}

impl Batch {
    /// Identity of the signed batch, used as the idempotency key when ordering and listed in
    /// blocks: SHA-256 of the canonical header
    /// `{"gateway":…,"seq":…,"tree_size":…,"root":…,"key_version":…,"signature":…}`.
    /// The root commits to the entries, so the header identifies the whole batch, and a receipt
    /// (which carries the header fields) can recompute it.
    pub fn hash(&self) -> [u8; 32] {
        header_hash(
            &self.gateway,
            self.seq,
            self.entries.len() as u64,
            &self.root,
            self.key_version,
            &self.signature,
        )
    }

    /// The message the signature covers (see [`UnsignedBatch::signing_message`]).
    pub fn signing_message(&self) -> Vec<u8> {
        signing_message(&self.gateway, self.seq, self.entries.len() as u64, &self.root)
    }

    /// Leaf hashes of the entries, in order.
    pub fn leaf_hashes(&self) -> Vec<[u8; 32]> {
        leaf_hashes(&self.entries)
    }

    /// Verifies the batch on its own: sequence number at least 1, 1 to [`MAX_BATCH_ENTRIES`]
    /// entries, encoded size within [`MAX_BATCH_BYTES`], every entry from the batch's gateway with
    /// valid fields and a matching id, the root recomputed from the entries, and the signature
    /// with the key that `spki_for_version(gateway, key_version)` returns (SubjectPublicKeyInfo
    /// DER). Whether the batch comes next in its gateway's sequence is checked by
    /// [`super::ChainState`].
    pub fn verify(
        &self,
        spki_for_version: &dyn Fn(&str, u32) -> Option<Vec<u8>>,
    ) -> Result<(), LedgerError> {
        check_content(&self.gateway, self.seq, &self.entries, &self.root, self.to_bytes().len())?;
        let spki = spki_for_version(&self.gateway, self.key_version).ok_or_else(|| {
            LedgerError::UnknownKey {
                gateway: self.gateway.clone(),
                version: self.key_version,
            }
        })?;
        self.verify_signature(&spki)
    }

    /// Verifies the signature alone, over the gateway, sequence number, tree size and root, with
    /// `spki` (SubjectPublicKeyInfo DER). For the signer's own check of a batch whose
    /// [`UnsignedBatch::check`] passed just before signing; anyone else uses [`Batch::verify`].
    pub fn verify_signature(&self, spki: &[u8]) -> Result<(), LedgerError> {
        p256::verify(spki, &self.signing_message(), &self.signature)
    }

    /// Compact JSON with fields in declaration order (identical to `serde_json`'s output).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + 600 * self.entries.len());
        self.write(&mut out);
        out
    }

    /// Decodes a batch: at most [`MAX_BATCH_BYTES`], JSON, unknown or duplicate fields rejected,
    /// at most [`MAX_BATCH_ENTRIES`] entries. Does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Batch, LedgerError> {
        let batch: Batch = canon::decode("batch", bytes, MAX_BATCH_BYTES)?;
        if batch.entries.len() > MAX_BATCH_ENTRIES {
            return Err(LedgerError::TooLarge {
                what: "batch entry count",
                size: batch.entries.len(),
                limit: MAX_BATCH_ENTRIES,
            });
        }
        Ok(batch)
    }

    pub(super) fn write(&self, out: &mut Vec<u8>) {
        write_batch(
            out,
            &self.gateway,
            self.seq,
            &self.entries,
            &self.root,
            self.key_version,
            &self.signature,
        );
    }
}

fn leaf_hashes(entries: &[Entry]) -> Vec<[u8; 32]> {
    entries.iter().map(Entry::leaf_hash).collect()
}

fn write_batch(
    out: &mut Vec<u8>,
    gateway: &str,
    seq: u64,
    entries: &[Entry],
    root: &str,
    key_version: u32,
    signature: &str,
) {
    Obj::begin(out)
        .str("gateway", gateway)
        .u64("seq", seq)
        .array("entries", entries, |out, e| e.write(out, true))
        .str("root", root)
        .u64("key_version", u64::from(key_version))
        .str("signature", signature)
        .end();
}

/// The batch signing message; shared with receipts, which rebuild it from their own fields.
pub(super) fn signing_message(gateway: &str, seq: u64, tree_size: u64, root: &str) -> Vec<u8> {
    format!("{BATCH_TAG}\n{gateway}\n{seq}\n{tree_size}\n{root}").into_bytes()
}

/// The batch hash from header fields; shared with receipts.
pub(super) fn header_hash(
    gateway: &str,
    seq: u64,
    tree_size: u64,
    root: &str,
    key_version: u32,
    signature: &str,
) -> [u8; 32] {
    let mut out = Vec::with_capacity(320);
    Obj::begin(&mut out)
        .str("gateway", gateway)
        .u64("seq", seq)
        .u64("tree_size", tree_size)
        .str("root", root)
        .u64("key_version", u64::from(key_version))
        .str("signature", signature)
        .end();
    canon::sha256(&out)
}

fn check_content(
    gateway: &str,
    seq: u64,
    entries: &[Entry],
    root: &str,
    encoded_len: usize,
) -> Result<(), LedgerError> {
    if seq == 0 {
        return Err(LedgerError::BadBatch("sequence numbers start at 1"));
    }
    if entries.is_empty() {
        return Err(LedgerError::BadBatch("no entries"));
    }
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(LedgerError::TooLarge {
            what: "batch entry count",
            size: entries.len(),
            limit: MAX_BATCH_ENTRIES,
        });
    }
    if encoded_len > MAX_BATCH_BYTES {
        return Err(LedgerError::TooLarge {
            what: "encoded batch",
            size: encoded_len,
            limit: MAX_BATCH_BYTES,
        });
    }
    // Each entry is encoded once, for its id and its leaf hash both.
    let mut leaves = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.gateway != gateway {
            return Err(LedgerError::BadBatch("entry written by another gateway"));
        }
        entry.validate_fields()?;
        let canonical = entry.canonical_bytes();
        entry.check_id_of(&canonical)?;
        leaves.push(merkle::leaf_hash(&canonical));
    }
    if hex::encode(merkle::root(&leaves)) != root {
        return Err(LedgerError::BadRoot);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{anchored, one_of_each, TestKey};
    use super::*;

    const GW: &str = "hospital-a";

    fn keys(key: &TestKey) -> impl Fn(&str, u32) -> Option<Vec<u8>> {
        let spki = key.spki();
        move |gw: &str, v: u32| (gw == GW && v == 1).then(|| spki.clone())
    }

    fn signed(key: &TestKey) -> Batch {
        let mut entries = one_of_each(GW);
        entries.extend((10..13).map(|n| anchored(GW, n)));
        let unsigned = UnsignedBatch::new(GW, 1, entries);
        assert_eq!(unsigned.check(), Ok(()));
        key.sign_batch(unsigned, 1)
    }

    #[test]
    fn signed_batch_verifies() {
        let key = TestKey::new();
        let b = signed(&key);
        assert_eq!(b.verify(&keys(&key)), Ok(()));
        assert_eq!(b.entries.len(), 17, "one entry of each of the thirteen kinds, a key event under an approved request, plus three anchored");
        assert_eq!(b.root, hex::encode(merkle::root(&b.leaf_hashes())));
    }

    #[test]
    fn the_signers_own_check_refuses_another_key_and_any_change_the_signature_covers() {
        let key = TestKey::new();
        let b = signed(&key);
        assert_eq!(b.verify_signature(&key.spki()), Ok(()));
        assert!(b.verify_signature(&TestKey::new().spki()).is_err(), "a signature by another key");
        let mut other_gateway = b.clone();
        other_gateway.gateway = "hospital-b".into();
        assert!(other_gateway.verify_signature(&key.spki()).is_err(), "another gateway");
        let mut moved = b.clone();
        moved.seq += 1;
        assert!(moved.verify_signature(&key.spki()).is_err(), "another sequence number");
        let mut rerooted = b.clone();
        rerooted.root = hex::encode([0u8; 32]);
        assert!(rerooted.verify_signature(&key.spki()).is_err(), "another root");
        let mut shorter = b;
        shorter.entries.pop();
        assert!(shorter.verify_signature(&key.spki()).is_err(), "another tree size");
    }

    #[test]
    fn signing_message_and_digest() {
        let u = UnsignedBatch::new(GW, 42, vec![anchored(GW, 1)]);
        let msg = u.signing_message();
        assert_eq!(
            String::from_utf8_lossy(&msg),
            format!("medgate-batch-v1\nhospital-a\n42\n1\n{}", u.root())
        );
        assert_eq!(u.signing_digest(), canon::sha256(&msg));
        assert_eq!(u.root(), hex::encode(anchored(GW, 1).leaf_hash()));
    }

    #[test]
    fn tampering_fails_with_the_right_error() {
        let key = TestKey::new();
        let lookup = keys(&key);
        let good = signed(&key);

        // An entry changed without fixing its id.
        let mut b = good.clone();
        b.entries[2].time = "2030-01-01T00:00:00Z".into();
        assert!(matches!(b.verify(&lookup), Err(LedgerError::BadId { .. })));

        // An entry changed and its id recomputed: the root no longer matches.
        let mut b = good.clone();
        b.entries[2].time = "2030-01-01T00:00:00Z".into();
        let e = &b.entries[2];
        let mut n = [0u8; 16];
        hex::decode_to_slice(&e.nonce, &mut n).unwrap_or_default();
        b.entries[2] = Entry::new(&e.gateway, &e.time, n, e.body.clone());
        assert_eq!(b.verify(&lookup), Err(LedgerError::BadRoot));

        // Entries reordered or dropped.
        let mut b = good.clone();
        b.entries.swap(0, 1);
        assert_eq!(b.verify(&lookup), Err(LedgerError::BadRoot));
        let mut b = good.clone();
        b.entries.pop();
        assert_eq!(b.verify(&lookup), Err(LedgerError::BadRoot));

        // Root changed.
        let mut b = good.clone();
        b.root = hex::encode([7u8; 32]);
        assert_eq!(b.verify(&lookup), Err(LedgerError::BadRoot));
        let mut b = good.clone();
        b.root = b.root.to_uppercase();
        assert_eq!(b.verify(&lookup), Err(LedgerError::BadRoot));

        // Signature changed, and every signed header field changed.
        let mut b = good.clone();
        let mut sig = hex::decode(&b.signature).unwrap_or_default();
        sig[10] ^= 1;
        b.signature = hex::encode(sig);
        assert_eq!(b.verify(&lookup), Err(LedgerError::BadSignature));
        let mut b = good.clone();
        b.seq = 2;
        assert_eq!(b.verify(&lookup), Err(LedgerError::BadSignature));

        // Wrong key, unknown key version, unknown gateway.
        let other = TestKey::new();
        let wrong = |_: &str, _: u32| Some(other.spki());
        assert_eq!(good.verify(&wrong), Err(LedgerError::BadSignature));
        let mut b = good.clone();
        b.key_version = 2;
        assert_eq!(
            b.verify(&lookup),
            Err(LedgerError::UnknownKey { gateway: GW.into(), version: 2 })
        );
        let garbage = |_: &str, _: u32| Some(vec![1, 2, 3]);
        assert_eq!(good.verify(&garbage), Err(LedgerError::BadKey));

        // An entry from another gateway smuggled in (and re-signed).
        let mut entries = good.entries.clone();
        entries.push(anchored("hospital-b", 1));
        let b = key.sign_batch(UnsignedBatch::new(GW, 1, entries), 1);
        assert!(matches!(b.verify(&lookup), Err(LedgerError::BadBatch(_))));

        assert_eq!(good.verify(&lookup), Ok(()));
    }

    #[test]
    fn structural_limits() {
        let key = TestKey::new();
        let empty = UnsignedBatch::new(GW, 1, vec![]);
        assert!(matches!(empty.check(), Err(LedgerError::BadBatch(_))));
        let zero = UnsignedBatch::new(GW, 0, vec![anchored(GW, 1)]);
        assert!(matches!(zero.check(), Err(LedgerError::BadBatch(_))));
        let many = UnsignedBatch::new(GW, 1, (0..=MAX_BATCH_ENTRIES as u64).map(|n| anchored(GW, n)).collect());
        assert!(matches!(many.check(), Err(LedgerError::TooLarge { .. })));
        let b = key.sign_batch(many, 1);
        assert!(matches!(b.verify(&keys(&key)), Err(LedgerError::TooLarge { .. })));
        assert!(matches!(Batch::from_bytes(&b.to_bytes()), Err(LedgerError::TooLarge { .. })));
    }

    #[test]
    fn bytes_round_trip_and_match_serde() {
        let key = TestKey::new();
        let b = signed(&key);
        let bytes = b.to_bytes();
        assert_eq!(bytes, serde_json::to_vec(&b).unwrap_or_default());
        let back = Batch::from_bytes(&bytes);
        assert_eq!(back.as_ref(), Ok(&b));
        assert_eq!(back.map(|x| x.to_bytes()), Ok(bytes.clone()));
        // Whitespace does not change the decoded batch nor its hash.
        let pretty = serde_json::to_vec_pretty(&b).unwrap_or_default();
        assert_eq!(Batch::from_bytes(&pretty).map(|x| x.hash()), Ok(b.hash()));
    }

    #[test]
    fn from_bytes_rejects_unknown_fields_and_garbage() {
        let key = TestKey::new();
        let b = signed(&key);
        let json = String::from_utf8(b.to_bytes()).unwrap_or_default();
        let extra = json.replacen("{\"gateway\"", "{\"note\":1,\"gateway\"", 1);
        assert!(matches!(Batch::from_bytes(extra.as_bytes()), Err(LedgerError::Decode { .. })));
        let extra_entry = json.replacen("\"nonce\"", "\"patient_name\":\"x\",\"nonce\"", 1);
        assert!(matches!(Batch::from_bytes(extra_entry.as_bytes()), Err(LedgerError::Decode { .. })));
        for garbage in [&b""[..], b"null", b"[]", b"{", b"\xff\xfe", b"{}", &json.as_bytes()[..json.len() - 1]] {
            assert!(matches!(Batch::from_bytes(garbage), Err(LedgerError::Decode { .. })));
        }
        let trailing = format!("{json}x");
        assert!(matches!(Batch::from_bytes(trailing.as_bytes()), Err(LedgerError::Decode { .. })));
        let huge = vec![b' '; MAX_BATCH_BYTES + 1];
        assert!(matches!(Batch::from_bytes(&huge), Err(LedgerError::TooLarge { .. })));
    }

    #[test]
    fn hash_covers_the_header_and_is_not_malleable() {
        let key = TestKey::new();
        let b = signed(&key);
        let h = b.hash();
        let mut other = b.clone();
        other.key_version = 2;
        assert_ne!(other.hash(), h);
        let mut other = b.clone();
        other.seq = 2;
        assert_ne!(other.hash(), h);
        // Re-attaching the high-S twin gives the same stored signature, hence the same hash.
        let sig = hex::decode(&b.signature).unwrap_or_default();
        let u = UnsignedBatch::new(GW, 1, b.entries.clone());
        let again = u.sign(1, &sig);
        assert_eq!(again.hash(), h);
    }
}
