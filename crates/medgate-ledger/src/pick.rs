//! Chosen entries out of an encoded block, without decoding the others.
//!
//! A patient's audit trail names a few entries in each of many blocks (an index gives their
//! places). Decoding each of those blocks whole allocated every entry of it, tens of times more
//! than the entries asked for, and the cost of a patient's audit grew with the allocator's heap.
//! [`Block::pick_entries`] walks the block's JSON once and builds only the entries asked for;
//! the others are skipped as they are read (serde's `IgnoredAny`, which allocates nothing).
//!
//! Boundary: reading blocks this gateway stored itself (after checking them). It does not
//! check the block's shape, hash or signatures; [`Block::from_bytes`] and the chain checks do.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Block, Entry, LedgerError, MAX_BLOCK_BYTES};

/// Where an entry sits in its block: (index of its batch, index of the entry in the batch).
pub type Place = (u32, u32);

impl Block {
    /// The entries of the encoded block `bytes` at the places `wanted` (any order), in block
    /// order with their places. Places the block does not have are left out.
    pub fn pick_entries(bytes: &[u8], wanted: &[Place]) -> Result<Vec<(Place, Entry)>, LedgerError> {
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(LedgerError::TooLarge { what: "block", size: bytes.len(), limit: MAX_BLOCK_BYTES });
        }
        let mut out = Vec::with_capacity(wanted.len());
        let mut de = serde_json::Deserializer::from_slice(bytes);
        Level { at: Depth::Block, wanted, out: &mut out }
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| LedgerError::Decode { what: "block", reason: e.to_string() })?;
        Ok(out)
    }
}

/// Which part of the block a [`Level`] reads.
#[derive(Clone, Copy)]
enum Depth {
    /// The block object: only `batches` is read.
    Block,
    /// The `batches` array.
    Batches,
    /// Batch `b`: only `entries` is read.
    Batch(u32),
    /// The `entries` array of batch `b`.
    Entries(u32),
}

struct Level<'a, 'o> {
    at: Depth,
    wanted: &'a [Place],
    out: &'o mut Vec<(Place, Entry)>,
}

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.at {
            Depth::Block | Depth::Batch(_) => d.deserialize_map(self),
            Depth::Batches | Depth::Entries(_) => d.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.at {
            Depth::Block => "a block object",
            Depth::Batch(_) => "a batch object",
            Depth::Batches => "an array of batches",
            Depth::Entries(_) => "an array of entries",
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (field, inner) = match self.at {
            Depth::Block => ("batches", Depth::Batches),
            Depth::Batch(b) => ("entries", Depth::Entries(b)),
            _ => return Err(serde::de::Error::custom("an object where an array belongs")),
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == field {
                map.next_value_seed(Level { at: inner, wanted: self.wanted, out: &mut *self.out })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i: u32 = 0;
        loop {
            let more = match self.at {
                Depth::Batches => seq.next_element_seed(Level { at: Depth::Batch(i), wanted: self.wanted, out: &mut *self.out })?.is_some(),
                Depth::Entries(b) if self.wanted.contains(&(b, i)) => match seq.next_element::<Entry>()? {
                    Some(e) => {
                        self.out.push(((b, i), e));
                        true
                    }
                    None => false,
                },
                Depth::Entries(_) => seq.next_element::<IgnoredAny>()?.is_some(),
                _ => return Err(serde::de::Error::custom("an array where an object belongs")),
            };
            if !more {
                return Ok(());
            }
            i = i.checked_add(1).ok_or_else(|| serde::de::Error::custom("too many elements"))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{anchored, TestKey};
    use crate::UnsignedBatch;

    /// A block of two signed batches of three and four entries.
    fn two_batch_block() -> Block {
        let key = TestKey::new();
        let batch = |seq: u64, n: std::ops::Range<u64>| key.sign_batch(UnsignedBatch::new("h", seq, n.map(|i| anchored("h", i)).collect()), 1);
        Block { height: 3, prev_hash: "ab".repeat(32), order_position: 9, batches: vec![batch(1, 0..3), batch(2, 3..7)], valid: vec![true, true] }
    }

    #[test]
    fn picks_the_entries_asked_for_and_only_those() {
        let block = two_batch_block();
        let bytes = block.to_bytes();
        let all: Vec<Place> = block.batches.iter().enumerate().flat_map(|(b, x)| (0..x.entries.len()).map(move |e| (b as u32, e as u32))).collect();
        assert!(all.len() >= 4 && block.batches.len() == 2, "the fixture has two batches of several entries");
        let picked = Block::pick_entries(&bytes, &all).expect("picks");
        let whole: Vec<(Place, Entry)> = all.iter().map(|&(b, e)| ((b, e), block.batches[b as usize].entries[e as usize].clone())).collect();
        assert_eq!(picked, whole);
        // Some, in any order: block order comes back; places the block lacks are left out.
        let some = [(1, 1), (0, 0), (7, 0), (0, 99)];
        let picked = Block::pick_entries(&bytes, &some).expect("picks");
        assert_eq!(picked, vec![((0, 0), block.batches[0].entries[0].clone()), ((1, 1), block.batches[1].entries[1].clone())]);
        assert!(Block::pick_entries(&bytes, &[]).expect("none").is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_block() {
        for bad in [&b"[]"[..], b"{\"batches\": {}}", b"{\"batches\": [[]]}", b"{\"batches\": [] } x", b"{"] {
            assert!(matches!(Block::pick_entries(bad, &[(0, 0)]), Err(LedgerError::Decode { .. })), "{}", String::from_utf8_lossy(bad));
        }
    }
}
