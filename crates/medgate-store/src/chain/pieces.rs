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
//! a million entries). In pieces of 1 KiB a leaf holds at most 17 KiB, a scan reads some 25
//! leaves per block, the queues fill and the cache evicts: the same scan leaves 6 MiB, and the
//! gateway held 370 MiB with a million entries (tests/benches/README.md).
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

/// The bytes of block `height`, or None when it is not stored.
pub(crate) fn read(tree: &sled::Tree, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let mut joined = Joined::new(height);
    for kv in tree.scan_prefix(height.to_be_bytes()) {
        let (k, v) = kv?;
        if !joined.add(&k, &v)? {
            break;
        }
    }
    Ok(joined.finish())
}

/// Every stored block in height order as (height, bytes).
pub(crate) fn all(tree: &sled::Tree) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
    let mut kvs = tree.iter().peekable();
    std::iter::from_fn(move || {
        let first = match kvs.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e.into())),
        };
        let height = match height_of(&first.0) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let mut joined = Joined::new(height);
        let mut more = match joined.add(&first.0, &first.1) {
            Ok(more) => more,
            Err(e) => return Some(Err(e)),
        };
        while more {
            match kvs.peek() {
                Some(Ok((k, _))) if k.len() == 12 && k.starts_with(&height.to_be_bytes()) => {}
                _ => break,
            }
            let Some(Ok((k, v))) = kvs.next() else { break };
            more = match joined.add(&k, &v) {
                Ok(more) => more,
                Err(e) => return Some(Err(e)),
            };
        }
        Some(joined.finish().map(|b| (height, b)).ok_or_else(|| StoreError::Format(format!("block {height}: no pieces"))))
    })
}

/// The pieces of one block, checked to follow each other from piece 0.
struct Joined {
    height: u64,
    bytes: Option<Vec<u8>>,
    next: u32,
}

impl Joined {
    fn new(height: u64) -> Joined {
        Joined { height, bytes: None, next: 0 }
    }

    /// Adds the value under `key`; false once the block is complete (a whole, unpieced block).
    fn add(&mut self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        if key.len() == 8 {
            if self.bytes.is_some() {
                return Err(StoreError::Format(format!("block {}: stored both whole and in pieces", self.height)));
            }
            self.bytes = Some(value.to_vec());
            return Ok(false);
        }
        let piece = u32::from_be_bytes(key.get(8..12).and_then(|p| p.try_into().ok()).ok_or_else(|| StoreError::Format(format!("block {}: piece key of {} bytes", self.height, key.len())))?);
        if piece != self.next {
            return Err(StoreError::Format(format!("block {}: piece {} missing (found piece {piece})", self.height, self.next)));
        }
        self.next += 1;
        self.bytes.get_or_insert_with(|| Vec::with_capacity(PIECE * 8)).extend_from_slice(value);
        Ok(true)
    }

    fn finish(self) -> Option<Vec<u8>> {
        self.bytes
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
}
