//! How a block lies in the `blocks` tree: in pieces of at most [`PIECE`] bytes, under the key
//! height ‖ piece number (8 + 4 bytes, big-endian), so that the pieces of one block sit next to
//! each other in height order.
//!
//! Why pieces: sled splits a leaf once it holds more than 16 keys, whatever their size, and its
//! cache (256 shards) counts a page it read from disk only once 64 accesses have queued up in
//! that page's shard. A block of 64 entries is some 25 KiB, so a leaf of whole blocks held up to
//! 400 KiB, and a scan of the chain (`ledger verify`, the break-glass review) read fewer leaves
//! than it takes to fill the shards' queues: nothing was counted, nothing evicted, and the whole
//! `blocks` tree stayed in memory beside a cache bounded at 64 MiB (jemalloc's heap profile after
//! one scan of 300 000 entries: 158 MiB of leaves read by the scan; resident memory 964 MiB with
//! a million entries). In pieces of 1 KiB a leaf holds at most 17 KiB and the cache can evict
//! what a scan read: the gateway held 355–370 MiB with a million entries. Blocks are also read
//! back piece by piece with point lookups, not with a scan ([`block_from`] says why): with that
//! and a 32 MiB cache, 211–240 MiB resident (tests/benches/README.md).
//!
//! A store written before blocks were stored in pieces holds each block whole under its bare
//! 8-byte height; both are read. The pieces of a block are written in one transaction with the
//! block's indexes, so a reader sees all of them or none.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::StoreError;

/// Bytes of a block per piece.
pub(crate) const PIECE: usize = 1024;

fn key(height: u64, piece: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&height.to_be_bytes());
    k[8..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// The height a key of the `blocks` tree belongs to (a piece's or a whole block's).
pub(crate) fn height_of(key: &[u8]) -> Result<u64, StoreError> {
    match key.len() {
        8 | 12 => Ok(u64::from_be_bytes(key[..8].try_into().map_err(|_| StoreError::Format("block key".into()))?)),
        n => Err(StoreError::Format(format!("block key of {n} bytes"))),
    }
}

/// The keys and values block `height` is stored under.
fn split(height: u64, bytes: &[u8]) -> impl Iterator<Item = ([u8; 12], &[u8])> {
    bytes.chunks(PIECE).enumerate().map(move |(i, piece)| (key(height, i as u32), piece))
}

/// Writes `bytes` as the pieces of block `height` inside a transaction.
pub(crate) fn write(tree: &TransactionalTree, height: u64, bytes: &[u8]) -> Result<(), ConflictableTransactionError<StoreError>> {
    for (k, piece) in split(height, bytes) {
        tree.insert(&k, piece)?;
    }
    Ok(())
}

/// Replaces block `height` by `bytes`, outside a transaction (fixtures that rewrite a copy).
#[cfg(any(test, feature = "fixtures"))]
pub(crate) fn overwrite(tree: &sled::Tree, height: u64, bytes: &[u8]) -> Result<(), StoreError> {
    for kv in tree.scan_prefix(height.to_be_bytes()) {
        tree.remove(kv?.0)?;
    }
    for (k, piece) in split(height, bytes) {
        tree.insert(k, piece)?;
    }
    Ok(())
}

/// A key and its value in the `blocks` tree.
type Kv = (sled::IVec, sled::IVec);

/// The bytes of block `height`, or None when it is not stored.
pub(crate) fn read(tree: &sled::Tree, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
    match tree.range(height.to_be_bytes()..).next().transpose()? {
        Some(kv) if height_of(&kv.0)? == height => Ok(Some(block_from(tree, height, kv)?.0)),
        _ => Ok(None),
    }
}

/// Every stored block in height order as (height, bytes).
pub(crate) fn all(tree: &sled::Tree) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
    let mut next = tree.first().map_err(StoreError::from).transpose();
    std::iter::from_fn(move || {
        let kv = match next.take()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        let read = height_of(&kv.0).and_then(|height| block_from(tree, height, kv).map(|(bytes, after)| (height, bytes, after)));
        Some(read.map(|(height, bytes, after)| {
            next = after.map(Ok);
            (height, bytes)
        }))
    })
}

/// Block `height`, whose first key and value are `first`, and the key and value after it.
///
/// Piece by piece with point lookups, not with one scan of the tree. sled counts an access to a
/// page at every lookup, so the leaves a whole-chain read went through are soon counted and
/// evicted. A scan counts each leaf once, and up to 63 accesses in each of the cache's 256 shards
/// wait uncounted, their leaves in memory: after `ledger verify` of a million entries, 142 MiB
/// allocated under the scan stayed (120 MiB of leaves it had read; jemalloc's heap profile), 228
/// MiB in all. Read by lookups, the process had 161 MiB allocated. The lookups cost some 15 % of
/// `ledger verify`'s speed.
fn block_from(tree: &sled::Tree, height: u64, first: Kv) -> Result<(Vec<u8>, Option<Kv>), StoreError> {
    let (first_key, first_value) = first;
    let of_this_block = |k: &[u8]| k.len() == 12 && k.starts_with(&height.to_be_bytes());
    if first_key.len() == 8 {
        let after = tree.get_gt(&first_key)?;
        if after.as_ref().is_some_and(|(k, _)| of_this_block(k)) {
            return Err(StoreError::Format(format!("block {height}: stored both whole and in pieces")));
        }
        return Ok((first_value.to_vec(), after));
    }
    let piece = |k: &[u8]| k.get(8..12).and_then(|p| <[u8; 4]>::try_from(p).ok()).map_or(u32::MAX, u32::from_be_bytes);
    if piece(&first_key) != 0 {
        return Err(StoreError::Format(format!("block {height}: piece 0 missing (found piece {})", piece(&first_key))));
    }
    let mut bytes = Vec::with_capacity(PIECE * 32);
    bytes.extend_from_slice(&first_value);
    let mut next = 1;
    while let Some(value) = tree.get(key(height, next))? {
        bytes.extend_from_slice(&value);
        next += 1;
    }
    let after = tree.get_gt(key(height, next))?;
    match &after {
        Some((k, _)) if of_this_block(k) => Err(StoreError::Format(format!("block {height}: piece {next} missing (found piece {})", piece(k)))),
        _ => Ok((bytes, after)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use sled::Transactional;

    fn tree() -> sled::Tree {
        sled::Config::new().temporary(true).open().unwrap().open_tree("blocks").unwrap()
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn put(t: &sled::Tree, height: u64, b: &[u8]) {
        (t,).transaction(|(t,)| write(t, height, b)).unwrap();
    }

    #[test]
    fn a_block_comes_back_whole_from_its_pieces_and_a_scan_sees_each_block_once() {
        let t = tree();
        let blocks: Vec<Vec<u8>> = vec![bytes(1, 1), bytes(PIECE, 2), bytes(PIECE + 1, 3), bytes(5 * PIECE + 17, 4)];
        for (h, b) in blocks.iter().enumerate() {
            put(&t, h as u64, b);
        }
        assert_eq!(t.len(), 1 + 1 + 2 + 6, "pieces of at most {PIECE} bytes");
        for (h, b) in blocks.iter().enumerate() {
            assert_eq!(read(&t, h as u64).unwrap().as_deref(), Some(b.as_slice()), "block {h}");
        }
        assert_eq!(read(&t, 4).unwrap(), None);
        let scanned: Vec<(u64, Vec<u8>)> = all(&t).collect::<Result<_, _>>().unwrap();
        assert_eq!(scanned, blocks.iter().cloned().enumerate().map(|(h, b)| (h as u64, b)).collect::<Vec<_>>());
        assert_eq!(height_of(&t.last().unwrap().unwrap().0).unwrap(), 3);
    }

    #[test]
    fn blocks_stored_whole_by_an_earlier_version_are_read_beside_pieced_ones() {
        let t = tree();
        t.insert(0u64.to_be_bytes(), bytes(9000, 7)).unwrap();
        t.insert(1u64.to_be_bytes(), bytes(10, 8)).unwrap();
        put(&t, 2, &bytes(9000, 9));
        assert_eq!(read(&t, 0).unwrap(), Some(bytes(9000, 7)));
        assert_eq!(read(&t, 2).unwrap(), Some(bytes(9000, 9)));
        let heights: Vec<u64> = all(&t).map(|r| r.unwrap().0).collect();
        assert_eq!(heights, vec![0, 1, 2]);
    }

    #[test]
    fn a_missing_piece_is_an_error_naming_the_block_not_a_shorter_block() {
        let t = tree();
        put(&t, 5, &bytes(3 * PIECE, 1));
        t.remove(key(5, 1)).unwrap();
        let e = read(&t, 5).unwrap_err().to_string();
        assert!(e.contains("block 5") && e.contains("piece 1 missing"), "{e}");
        let e = all(&t).next().unwrap().unwrap_err().to_string();
        assert!(e.contains("piece 1 missing"), "{e}");
    }

    #[test]
    fn an_overwrite_leaves_no_piece_of_the_longer_block_it_replaced() {
        let t = tree();
        put(&t, 3, &bytes(4 * PIECE, 1));
        overwrite(&t, 3, &bytes(10, 2)).unwrap();
        assert_eq!(read(&t, 3).unwrap(), Some(bytes(10, 2)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_block_without_its_first_piece_or_stored_twice_is_an_error_naming_it() {
        let t = tree();
        put(&t, 2, &bytes(3 * PIECE, 1));
        t.remove(key(2, 0)).unwrap();
        let e = read(&t, 2).unwrap_err().to_string();
        assert!(e.contains("block 2") && e.contains("piece 0 missing (found piece 1)"), "{e}");
        let t = tree();
        t.insert(7u64.to_be_bytes(), bytes(10, 1)).unwrap();
        put(&t, 7, &bytes(2 * PIECE, 2));
        let e = all(&t).next().unwrap().unwrap_err().to_string();
        assert!(e.contains("block 7: stored both whole and in pieces"), "{e}");
        assert!(all(&t).nth(1).is_none(), "a scan stops at the first block it cannot read");
    }

    #[test]
    fn a_scan_finds_the_block_after_a_gap_in_the_heights() {
        let t = tree();
        put(&t, 0, &bytes(2 * PIECE, 1));
        put(&t, 2, &bytes(PIECE + 3, 2));
        let heights: Vec<u64> = all(&t).map(|r| r.unwrap().0).collect();
        assert_eq!(heights, vec![0, 2], "the verifier, not the scan, judges a missing height");
        assert_eq!(read(&t, 1).unwrap(), None);
    }
}
