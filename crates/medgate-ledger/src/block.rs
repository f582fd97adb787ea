//! Hash-chained blocks, the deterministic block cutter and the chain verifier.
//!
//! Boundary: a block is a pure function of the previous chain state and a slice of the ordered
//! stream (ordering position and the batches in stream order), plus the caller's policy verdicts.
//! No wall clock, no local configuration: every gateway reading the same stream with the same
//! membership and policy cuts byte-identical blocks. Storage and the ordering service are
//! elsewhere.
//!
//! Sequence rule: a batch counts (is flagged valid) only if it verifies and its `seq` is exactly
//! one more than the last valid batch of its gateway (the first is 1). Replays, duplicates and
//! reordered batches are therefore kept but flagged invalid; an invalid batch does not use up its
//! sequence number, so its gateway resubmits the same number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::canon::{self, Obj};
use super::{Batch, LedgerError, MAX_BLOCK_BATCHES, MAX_BLOCK_BYTES};

/// A block: the batches ordered at one position of the ordered stream. Standalone mode cuts one
/// block per batch; the consortium may put several. Deterministic: depends only on height,
/// previous hash, ordering position and the ordered batches with their validity flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// Height; the first block (genesis) is 0.
    pub height: u64,
    /// Lowercase hex hash of the previous block; 64 zeros at height 0.
    pub prev_hash: String,
    /// Ordering service revision (etcd) or sequencer counter of the last batch in the block.
    /// Never decreases along the chain; consecutive blocks may share it when one revision's
    /// batches are split over several blocks.
    pub order_position: u64,
    /// The batches in stream order, valid or not.
    pub batches: Vec<Batch>,
    /// Per batch: `false` means kept but flagged invalid (nothing in it counts).
    pub valid: Vec<bool>,
}

/// A batch as a block header lists it: its hash and validity flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRef {
    /// Lowercase hex [`Batch::hash`].
    pub hash: String,
    /// Validity flag.
    pub valid: bool,
}

impl Block {
    /// SHA-256 of the canonical header
    /// `{"height":…,"prev_hash":…,"order_position":…,"batches":[{"hash":…,"valid":…},…]}`.
    pub fn hash(&self) -> [u8; 32] {
        header_hash(self.height, &self.prev_hash, self.order_position, &self.batch_refs())
    }

    /// The header's list of batch hashes and validity flags (a batch without a flag counts as
    /// invalid; such a block is rejected by [`ChainState::apply`] anyway).
    pub fn batch_refs(&self) -> Vec<BatchRef> {
        self.batches
            .iter()
            .enumerate()
            .map(|(i, b)| BatchRef {
                hash: hex::encode(b.hash()),
                valid: self.valid.get(i).copied().unwrap_or(false),
            })
            .collect()
    }

    /// Compact JSON with fields in declaration order (identical to `serde_json`'s output).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// Decodes a block: at most [`MAX_BLOCK_BYTES`], unknown or duplicate fields rejected, at most
    /// [`MAX_BLOCK_BATCHES`] batches, one flag per batch. Does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Block, LedgerError> {
        let block: Block = canon::decode("block", bytes, MAX_BLOCK_BYTES)?;
        block.check_shape()?;
        Ok(block)
    }

    fn check_shape(&self) -> Result<(), LedgerError> {
        if self.batches.len() > MAX_BLOCK_BATCHES {
            return Err(LedgerError::TooLarge {
                what: "block batch count",
                size: self.batches.len(),
                limit: MAX_BLOCK_BATCHES,
            });
        }
        if self.valid.len() != self.batches.len() {
            return Err(LedgerError::FlagCount {
                batches: self.batches.len(),
                flags: self.valid.len(),
            });
        }
        Ok(())
    }

    fn write(&self, out: &mut Vec<u8>) {
        Obj::begin(out)
            .u64("height", self.height)
            .str("prev_hash", &self.prev_hash)
            .u64("order_position", self.order_position)
            .array("batches", &self.batches, |out, b| b.write(out))
            .array("valid", &self.valid, |out, v| {
                out.extend_from_slice(if *v { b"true" } else { b"false" })
            })
            .end();
    }
}

/// The block hash from header fields; shared with receipts.
pub(super) fn header_hash(
    height: u64,
    prev_hash: &str,
    order_position: u64,
    refs: &[BatchRef],
) -> [u8; 32] {
    let mut out = Vec::with_capacity(128 + 90 * refs.len());
    Obj::begin(&mut out)
        .u64("height", height)
        .str("prev_hash", prev_hash)
        .u64("order_position", order_position)
        .array("batches", refs, |out, r| {
            Obj::begin(out).str("hash", &r.hash).bool("valid", r.valid).end();
        })
        .end();
    canon::sha256(&out)
}

/// The state a chain leaves behind: height, head hash, ordering position and each gateway's last
/// valid sequence number. Cutting and verifying blocks both advance it, with the same rules.
/// Persist it next to the chain ([`ChainState::to_bytes`]) to resume without replaying.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainState {
    height: Option<u64>,
    head: [u8; 32],
    order_position: Option<u64>,
    last_seq: BTreeMap<String, u64>,
}

/// Serialized form of [`ChainState`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainStateWire {
    height: Option<u64>,
    head: String,
    order_position: Option<u64>,
    last_seq: BTreeMap<String, u64>,
}

impl ChainState {
    /// The state before the genesis block: no blocks, head of 32 zero bytes.
    pub fn new() -> ChainState {
        ChainState::default()
    }

    /// The state before block 0 of a chain anchored to a genesis document: block 0's
    /// `prev_hash` is the genesis hash instead of zeros.
    pub fn after_genesis(genesis_hash: [u8; 32]) -> ChainState {
        ChainState { head: genesis_hash, ..ChainState::default() }
    }

    /// Height of the last block, `None` for an empty chain.
    pub fn height(&self) -> Option<u64> {
        self.height
    }

    /// Height the next block will have.
    pub fn next_height(&self) -> u64 {
        self.height.map_or(0, |h| h.saturating_add(1))
    }

    /// Hash of the last block (32 zero bytes for an empty chain): the next block's `prev_hash`.
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// Ordering position of the last block, if any: where to resume reading the stream.
    pub fn order_position(&self) -> Option<u64> {
        self.order_position
    }

    /// Last valid sequence number of a gateway (0 if it has none yet).
    pub fn last_seq(&self, gateway: &str) -> u64 {
        self.last_seq.get(gateway).copied().unwrap_or(0)
    }

    /// Checks a batch against the committed state: [`Batch::verify`] and the sequence rule.
    /// Use it to decide whether a submission still needs ordering; [`ChainState::cut`] repeats
    /// it with the batches earlier in the same block taken into account.
    pub fn check_batch(
        &self,
        batch: &Batch,
        spki_for_version: &dyn Fn(&str, u32) -> Option<Vec<u8>>,
    ) -> Result<(), LedgerError> {
        batch.verify(spki_for_version)?;
        check_seq(batch, self.last_seq(&batch.gateway))
    }

    /// Cuts the next block from batches read at `order_position` of the ordered stream, in stream
    /// order, and advances the state.
    ///
    /// A batch is flagged valid when it verifies ([`Batch::verify`] with `spki_for_version`), is
    /// next in its gateway's sequence (counting earlier batches of this block), and `policy`
    /// accepts it. `policy` (membership, consent and other entry rules, evaluated on derived
    /// state) is called only for batches that passed the first two checks, in order; it must be
    /// deterministic. Errors (nothing is changed, `policy` is not called): more than
    /// [`MAX_BLOCK_BATCHES`] batches, more than [`MAX_BLOCK_BYTES`] encoded, or an ordering
    /// position before the previous block's. The caller then splits the batches over several
    /// blocks with the same position.
    pub fn cut(
        &mut self,
        order_position: u64,
        batches: Vec<Batch>,
        spki_for_version: &dyn Fn(&str, u32) -> Option<Vec<u8>>,
        policy: &mut dyn FnMut(&Batch) -> bool,
    ) -> Result<Block, LedgerError> {
        let mut block = Block {
            height: self.next_height(),
            prev_hash: hex::encode(self.head),
            order_position,
            valid: vec![false; batches.len()],
            batches,
        };
        block.check_shape()?;
        self.check_position(order_position)?;
        let size = block.to_bytes().len();
        if size > MAX_BLOCK_BYTES {
            return Err(LedgerError::TooLarge {
                what: "encoded block",
                size,
                limit: MAX_BLOCK_BYTES,
            });
        }
        let mut seqs = SeqOverlay::new(&self.last_seq);
        for (batch, valid) in block.batches.iter().zip(block.valid.iter_mut()) {
            *valid = batch.verify(spki_for_version).is_ok()
                && check_seq(batch, seqs.last(&batch.gateway)).is_ok()
                && policy(batch);
            if *valid {
                seqs.advance(&batch.gateway, batch.seq);
            }
        }
        let updates = seqs.into_updates();
        self.commit(&block, updates);
        Ok(block)
    }

    /// Checks a block received from elsewhere (a peer, or the local store) against this state and
    /// advances: the next height, `prev_hash` equal to the head, one flag per batch, ordering
    /// position not decreasing, and every batch flagged valid verifies and is next in its
    /// gateway's sequence. Batches flagged invalid are not re-checked. On error nothing changes.
    pub fn apply(
        &mut self,
        block: &Block,
        spki_for_version: &dyn Fn(&str, u32) -> Option<Vec<u8>>,
    ) -> Result<(), ChainError> {
        let height = block.height;
        let expected = self.next_height();
        if height != expected {
            return Err(ChainError::HeightGap {
                expected,
                found: height,
            });
        }
        if block.prev_hash != hex::encode(self.head) {
            return Err(ChainError::BadLink { height });
        }
        block
            .check_shape()
            .and_then(|()| self.check_position(block.order_position))
            .map_err(|reason| ChainError::BadBlock { height, reason })?;
        let mut seqs = SeqOverlay::new(&self.last_seq);
        for (index, (batch, valid)) in block.batches.iter().zip(&block.valid).enumerate() {
            if !*valid {
                continue;
            }
            batch
                .verify(spki_for_version)
                .and_then(|()| check_seq(batch, seqs.last(&batch.gateway)))
                .map_err(|reason| ChainError::BadBatch {
                    height,
                    index,
                    reason,
                })?;
            seqs.advance(&batch.gateway, batch.seq);
        }
        let updates = seqs.into_updates();
        self.commit(block, updates);
        Ok(())
    }

    /// Compact JSON: `{"height":…,"head":…,"order_position":…,"last_seq":{gateway: seq,…}}`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Obj::begin(&mut out)
            .opt_u64("height", self.height)
            .str("head", &hex::encode(self.head))
            .opt_u64("order_position", self.order_position)
            .with("last_seq", |out| {
                let mut o = Obj::begin(out);
                for (gateway, seq) in &self.last_seq {
                    o.u64(gateway, *seq);
                }
                o.end();
            })
            .end();
        out
    }

    /// Decodes what [`ChainState::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<ChainState, LedgerError> {
        let wire: ChainStateWire = canon::decode("chain state", bytes, MAX_BLOCK_BYTES)?;
        let head = canon::hash_from_hex(&wire.head).ok_or(LedgerError::Decode {
            what: "chain state",
            reason: "head is not 64 lowercase hex characters".to_owned(),
        })?;
        Ok(ChainState {
            height: wire.height,
            head,
            order_position: wire.order_position,
            last_seq: wire.last_seq,
        })
    }

    fn check_position(&self, order_position: u64) -> Result<(), LedgerError> {
        match self.order_position {
            Some(previous) if order_position < previous => Err(LedgerError::OrderRegression {
                previous,
                found: order_position,
            }),
            _ => Ok(()),
        }
    }

    fn commit(&mut self, block: &Block, seq_updates: Vec<(String, u64)>) {
        self.height = Some(block.height);
        self.head = block.hash();
        self.order_position = Some(block.order_position);
        self.last_seq.extend(seq_updates);
    }
}

fn check_seq(batch: &Batch, last: u64) -> Result<(), LedgerError> {
    let expected = last.saturating_add(1);
    if batch.seq == expected {
        Ok(())
    } else {
        Err(LedgerError::OutOfSequence {
            gateway: batch.gateway.clone(),
            seq: batch.seq,
            expected,
        })
    }
}

/// Sequence numbers advanced within one block, on top of the committed ones.
struct SeqOverlay<'a> {
    committed: &'a BTreeMap<String, u64>,
    pending: BTreeMap<String, u64>,
}

impl<'a> SeqOverlay<'a> {
    fn new(committed: &'a BTreeMap<String, u64>) -> Self {
        SeqOverlay {
            committed,
            pending: BTreeMap::new(),
        }
    }

    fn last(&self, gateway: &str) -> u64 {
        self.pending
            .get(gateway)
            .or_else(|| self.committed.get(gateway))
            .copied()
            .unwrap_or(0)
    }

    fn advance(&mut self, gateway: &str, seq: u64) {
        self.pending.insert(gateway.to_owned(), seq);
    }

    fn into_updates(self) -> Vec<(String, u64)> {
        self.pending.into_iter().collect()
    }
}

/// Result of verifying a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Height of the last block, `None` for an empty chain.
    pub height: Option<u64>,
    /// Number of blocks.
    pub blocks: u64,
    /// Number of batches, valid or not.
    pub batches: u64,
    /// Number of batches flagged invalid.
    pub invalid_batches: u64,
    /// Number of entries in batches flagged valid.
    pub entries: u64,
    /// Lowercase hex hash of the last block (64 zeros for an empty chain).
    pub head: String,
}

/// Why a chain failed verification; always names the first bad block by height.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The block at this position has the wrong height.
    #[error("expected block {expected}, found block {found}")]
    HeightGap {
        /// Height the block should have.
        expected: u64,
        /// Height it has.
        found: u64,
    },
    /// The block's `prev_hash` is not the hash of the block before it.
    #[error("block {height} does not link to the previous block")]
    BadLink {
        /// Height of the block.
        height: u64,
    },
    /// A batch flagged valid does not verify or is out of sequence.
    #[error("block {height}, batch {index}: {reason}")]
    BadBatch {
        /// Height of the block.
        height: u64,
        /// Index of the batch in the block.
        index: usize,
        /// What is wrong with it.
        #[source]
        reason: LedgerError,
    },
    /// The block itself is malformed (flag count, too many batches, ordering position going back).
    #[error("block {height}: {reason}")]
    BadBlock {
        /// Height of the block.
        height: u64,
        /// What is wrong with it.
        #[source]
        reason: LedgerError,
    },
    /// The block at this position could not be read or decoded.
    #[error("block {height} cannot be read: {source}")]
    Decode {
        /// Height the block should have had.
        height: u64,
        /// The decoding error.
        #[source]
        source: LedgerError,
    },
}

impl ChainError {
    /// Height of the first bad block.
    pub fn height(&self) -> u64 {
        match self {
            ChainError::HeightGap { expected, .. } => *expected,
            ChainError::BadLink { height }
            | ChainError::BadBatch { height, .. }
            | ChainError::BadBlock { height, .. }
            | ChainError::Decode { height, .. } => *height,
        }
    }
}

/// Re-checks a whole chain in order, from genesis: heights consecutive from 0, `prev_hash` links,
/// ordering positions never decreasing, every batch flagged valid verifies (signature, root,
/// entry ids and fields, key looked up with `spki_for_version`) and is next in its gateway's
/// sequence. Batches flagged invalid are counted, not re-checked. Stops at the first bad block.
pub fn verify_chain(
    blocks: impl Iterator<Item = Result<Block, LedgerError>>,
    spki_for_version: &dyn Fn(&str, u32) -> Option<Vec<u8>>,
) -> Result<ChainReport, ChainError> {
    verify_chain_with(ChainState::new(), blocks, spki_for_version, &mut |_| {})
}

/// [`verify_chain`] from a given starting state ([`ChainState::after_genesis`] for a consortium
/// chain), calling `after_block` with each block once it verified: a caller whose key lookup
/// depends on the chain (the consortium's membership) updates it there.
pub fn verify_chain_with(
    start: ChainState,
    blocks: impl Iterator<Item = Result<Block, LedgerError>>,
    spki_for_version: &dyn Fn(&str, u32) -> Option<Vec<u8>>,
    after_block: &mut dyn FnMut(&Block),
) -> Result<ChainReport, ChainError> {
    let mut state = start;
    let mut report = ChainReport {
        height: None,
        blocks: 0,
        batches: 0,
        invalid_batches: 0,
        entries: 0,
        head: hex::encode(state.head()),
    };
    for block in blocks {
        let block = block.map_err(|source| ChainError::Decode {
            height: state.next_height(),
            source,
        })?;
        state.apply(&block, spki_for_version)?;
        after_block(&block);
        report.blocks += 1;
        for (batch, valid) in block.batches.iter().zip(&block.valid) {
            report.batches += 1;
            if *valid {
                report.entries += batch.entries.len() as u64;
            } else {
                report.invalid_batches += 1;
            }
        }
    }
    report.height = state.height();
    report.head = hex::encode(state.head());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{anchored, TestKey};
    use super::super::{EntryBody, UnsignedBatch};
    use super::*;

    struct Net {
        a: TestKey,
        b: TestKey,
    }

    impl Net {
        fn new() -> Net {
            Net {
                a: TestKey::new(),
                b: TestKey::new(),
            }
        }

        fn lookup(&self) -> impl Fn(&str, u32) -> Option<Vec<u8>> + '_ {
            move |gw: &str, v: u32| match (gw, v) {
                ("hospital-a", 1) => Some(self.a.spki()),
                ("hospital-b", 1) => Some(self.b.spki()),
                _ => None,
            }
        }

        fn batch(&self, gw: &str, seq: u64, entries: u64) -> Batch {
            let key = if gw == "hospital-a" { &self.a } else { &self.b };
            let es = (0..entries).map(|n| anchored(gw, seq * 100 + n)).collect();
            key.sign_batch(UnsignedBatch::new(gw, seq, es), 1)
        }
    }

    fn accept_all(_: &Batch) -> bool {
        true
    }

    /// Five blocks: one batch each from hospital-a, except block 2 with two batches (a and b).
    fn chain(net: &Net) -> Vec<Block> {
        let mut state = ChainState::new();
        let lookup = net.lookup();
        let mut blocks = Vec::new();
        let plan: [Vec<Batch>; 5] = [
            vec![net.batch("hospital-a", 1, 3)],
            vec![net.batch("hospital-a", 2, 1)],
            vec![net.batch("hospital-a", 3, 2), net.batch("hospital-b", 1, 4)],
            vec![net.batch("hospital-a", 4, 7)],
            vec![net.batch("hospital-b", 2, 1)],
        ];
        for (i, batches) in plan.into_iter().enumerate() {
            let block = state.cut(10 + i as u64, batches, &lookup, &mut accept_all);
            blocks.push(block.unwrap_or_else(|e| panic!("cut {i}: {e}")));
        }
        blocks
    }

    fn ok(blocks: &[Block]) -> impl Iterator<Item = Result<Block, LedgerError>> + '_ {
        blocks.iter().cloned().map(Ok)
    }

    #[test]
    fn five_blocks_verify() {
        let net = Net::new();
        let blocks = chain(&net);
        assert!(blocks.iter().all(|b| b.valid.iter().all(|v| *v)));
        assert_eq!(blocks[0].prev_hash, "0".repeat(64));
        for w in blocks.windows(2) {
            assert_eq!(w[1].prev_hash, hex::encode(w[0].hash()));
            assert_eq!(w[1].height, w[0].height + 1);
        }
        let report = verify_chain(ok(&blocks), &net.lookup());
        assert_eq!(
            report,
            Ok(ChainReport {
                height: Some(4),
                blocks: 5,
                batches: 6,
                invalid_batches: 0,
                entries: 18,
                head: hex::encode(blocks[4].hash()),
            })
        );
        let empty = verify_chain(std::iter::empty(), &net.lookup());
        assert_eq!(empty.map(|r| (r.height, r.head)), Ok((None, "0".repeat(64))));
    }

    #[test]
    fn altered_batch_in_block_3_is_reported_at_height_3() {
        let net = Net::new();
        let good = chain(&net);

        let mut blocks = good.clone();
        let mut changed = false;
        if let Some(EntryBody::RecordAnchored { size, .. }) =
            blocks[3].batches[0].entries.first_mut().map(|e| &mut e.body)
        {
            *size += 1;
            changed = true;
        }
        assert!(changed);
        let err = verify_chain(ok(&blocks), &net.lookup());
        assert!(
            matches!(err, Err(ChainError::BadBatch { height: 3, index: 0, reason: LedgerError::BadId { .. } })),
            "{err:?}"
        );

        let mut blocks = good.clone();
        blocks[3].batches[0].signature = blocks[1].batches[0].signature.clone();
        let err = verify_chain(ok(&blocks), &net.lookup());
        assert_eq!(err.map_err(|e| e.height()), Err(3));

        // Flipping a validity flag changes the block hash: the next block no longer links.
        let mut blocks = good.clone();
        blocks[3].valid[0] = false;
        assert_eq!(verify_chain(ok(&blocks), &net.lookup()), Err(ChainError::BadLink { height: 4 }));

        // Removing a whole batch from block 2 breaks the link from block 3.
        let mut blocks = good.clone();
        blocks[2].batches.pop();
        blocks[2].valid.pop();
        assert_eq!(verify_chain(ok(&blocks), &net.lookup()), Err(ChainError::BadLink { height: 3 }));
    }

    #[test]
    fn altered_prev_hash_height_gap_and_decode_errors() {
        let net = Net::new();
        let good = chain(&net);

        let mut blocks = good.clone();
        blocks[3].prev_hash = hex::encode([1u8; 32]);
        assert_eq!(verify_chain(ok(&blocks), &net.lookup()), Err(ChainError::BadLink { height: 3 }));

        let mut blocks = good.clone();
        blocks.remove(2);
        assert_eq!(
            verify_chain(ok(&blocks), &net.lookup()),
            Err(ChainError::HeightGap { expected: 2, found: 3 })
        );

        let items = good.iter().enumerate().map(|(i, b)| {
            if i == 3 {
                Block::from_bytes(b"{not json")
            } else {
                Ok(b.clone())
            }
        });
        let err = verify_chain(items, &net.lookup());
        assert!(matches!(err, Err(ChainError::Decode { height: 3, .. })), "{err:?}");

        let mut blocks = good.clone();
        blocks[3].valid.push(true);
        let err = verify_chain(ok(&blocks), &net.lookup());
        assert!(matches!(err, Err(ChainError::BadBlock { height: 3, reason: LedgerError::FlagCount { .. } })));

        // A key the verifier does not know.
        let only_a = |gw: &str, v: u32| (gw == "hospital-a" && v == 1).then(|| net.a.spki());
        let err = verify_chain(ok(&good), &only_a);
        assert!(matches!(
            err,
            Err(ChainError::BadBatch { height: 2, index: 1, reason: LedgerError::UnknownKey { .. } })
        ));
    }

    #[test]
    fn replays_and_gaps_are_flagged_invalid_and_do_not_consume_seq() {
        let net = Net::new();
        let lookup = net.lookup();
        let mut state = ChainState::new();
        let b1 = net.batch("hospital-a", 1, 1);
        let b3 = net.batch("hospital-a", 3, 1);
        let b2 = net.batch("hospital-a", 2, 1);
        let blk0 = state.cut(1, vec![b1.clone(), b1.clone(), b3.clone()], &lookup, &mut accept_all);
        assert_eq!(blk0.as_ref().map(|b| b.valid.clone()), Ok(vec![true, false, false]));
        assert_eq!(state.last_seq("hospital-a"), 1);
        assert_eq!(state.check_batch(&b2, &lookup), Ok(()));
        assert!(matches!(state.check_batch(&b3, &lookup), Err(LedgerError::OutOfSequence { expected: 2, .. })));

        // Policy refusal: verified and in sequence, but flagged invalid; seq 2 stays free.
        let mut refuse = |_: &Batch| false;
        let blk1 = state.cut(2, vec![b2.clone()], &lookup, &mut refuse);
        assert_eq!(blk1.as_ref().map(|b| b.valid.clone()), Ok(vec![false]));
        assert_eq!(state.last_seq("hospital-a"), 1);
        let mut called = 0;
        let mut counting = |_: &Batch| {
            called += 1;
            true
        };
        let blk2 = state.cut(3, vec![b2, b3, net.batch("hospital-b", 5, 1)], &lookup, &mut counting);
        assert_eq!(blk2.as_ref().map(|b| b.valid.clone()), Ok(vec![true, true, false]));
        assert_eq!(called, 2, "policy only sees batches that passed the format checks");
        assert_eq!(state.last_seq("hospital-a"), 3);
        assert_eq!(state.last_seq("hospital-b"), 0);

        let blocks: Vec<Block> = [blk0, blk1, blk2].into_iter().flatten().collect();
        let report = verify_chain(ok(&blocks), &lookup);
        assert_eq!(report.map(|r| (r.batches, r.invalid_batches, r.entries)), Ok((7, 4, 3)));

        // A forged block that flags the replay valid is caught.
        let mut forged = blocks.clone();
        forged[0].valid[1] = true;
        let err = verify_chain(ok(&forged), &lookup);
        assert!(matches!(
            err,
            Err(ChainError::BadBatch { height: 0, index: 1, reason: LedgerError::OutOfSequence { .. } })
        ));
    }

    #[test]
    fn cut_refuses_bad_shapes_without_changing_state() {
        let net = Net::new();
        let lookup = net.lookup();
        let mut state = ChainState::new();
        assert!(state.cut(5, vec![net.batch("hospital-a", 1, 1)], &lookup, &mut accept_all).is_ok());
        let before = state.clone();
        let err = state.cut(4, vec![net.batch("hospital-a", 2, 1)], &lookup, &mut accept_all);
        assert_eq!(err, Err(LedgerError::OrderRegression { previous: 5, found: 4 }));
        let many = vec![net.batch("hospital-a", 2, 1); MAX_BLOCK_BATCHES + 1];
        assert!(matches!(
            state.cut(6, many, &lookup, &mut accept_all),
            Err(LedgerError::TooLarge { .. })
        ));
        assert_eq!(state, before);
        // Same position again is allowed (a revision split over two blocks).
        let again = state.cut(5, vec![net.batch("hospital-a", 2, 1)], &lookup, &mut accept_all);
        assert_eq!(again.map(|b| b.valid), Ok(vec![true]));
    }

    #[test]
    fn blocks_are_deterministic_and_round_trip() {
        let net = Net::new();
        let blocks = chain(&net);
        // A second gateway cutting the same stream gets the same blocks.
        let mut state = ChainState::new();
        for b in &blocks {
            let again = state.cut(b.order_position, b.batches.clone(), &net.lookup(), &mut accept_all);
            assert_eq!(again.as_ref(), Ok(b));
        }
        for b in &blocks {
            let bytes = b.to_bytes();
            assert_eq!(bytes, serde_json::to_vec(b).unwrap_or_default());
            assert_eq!(Block::from_bytes(&bytes).as_ref(), Ok(b));
        }
        let json = String::from_utf8(blocks[1].to_bytes()).unwrap_or_default();
        let extra = json.replacen("{\"height\"", "{\"time\":\"now\",\"height\"", 1);
        assert!(matches!(Block::from_bytes(extra.as_bytes()), Err(LedgerError::Decode { .. })));
        let no_flags = json.replace(",\"valid\":[true]", ",\"valid\":[]");
        assert!(matches!(Block::from_bytes(no_flags.as_bytes()), Err(LedgerError::FlagCount { .. })));
        for garbage in [&b""[..], b"[]", b"{}", b"\x00", b"{\"height\":-1}"] {
            assert!(matches!(Block::from_bytes(garbage), Err(LedgerError::Decode { .. })));
        }
    }

    #[test]
    fn state_persists_and_resumes() {
        let net = Net::new();
        let blocks = chain(&net);
        let mut state = ChainState::new();
        for b in &blocks[..3] {
            assert_eq!(state.apply(b, &net.lookup()), Ok(()));
        }
        let bytes = state.to_bytes();
        #[derive(Serialize)]
        struct Mirror<'a> {
            height: Option<u64>,
            head: String,
            order_position: Option<u64>,
            last_seq: &'a BTreeMap<String, u64>,
        }
        let mirror = Mirror {
            height: state.height,
            head: hex::encode(state.head),
            order_position: state.order_position,
            last_seq: &state.last_seq,
        };
        assert_eq!(bytes, serde_json::to_vec(&mirror).unwrap_or_default());
        let mut resumed = ChainState::from_bytes(&bytes).unwrap_or_default();
        assert_eq!(resumed, state);
        assert_eq!(resumed.last_seq("hospital-a"), 3);
        assert_eq!(resumed.order_position(), Some(12));
        for b in &blocks[3..] {
            assert_eq!(resumed.apply(b, &net.lookup()), Ok(()));
        }
        assert_eq!(resumed.head(), blocks[4].hash());
        assert!(ChainState::from_bytes(b"{\"height\":null,\"head\":\"00\",\"order_position\":null,\"last_seq\":{}}").is_err());
        assert_eq!(ChainState::from_bytes(&ChainState::new().to_bytes()), Ok(ChainState::new()));
    }
}
