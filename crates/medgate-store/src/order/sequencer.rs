//! The standalone orderer: an in-process sequencer over the gateway's own database. Idempotent
//! (the same batch hash always gets the same position), gap-free, durable. One block per batch.

use medgate_ledger::{Batch, Block};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional, TransactionalTree};

use super::{BoxFuture, Ordered, Orderer};
use crate::error::read_u64;
use crate::{ChainStore, Db, StoreError};

/// A durable counter in the gateway's own database.
#[derive(Debug, Clone)]
pub struct Sequencer {
    positions: sled::Tree,
    meta: sled::Tree,
}

impl Sequencer {
    /// Opens the sequencer's trees.
    pub fn open(db: &Db) -> Result<Sequencer, StoreError> {
        Ok(Sequencer { positions: db.0.open_tree("sequencer")?, meta: db.0.open_tree("sequencer_meta")? })
    }

    /// The batch's position in the order. Submitting the same batch again (same hash) returns
    /// the same position and creates nothing new. A stored position or counter that is not 8
    /// bytes is an error, never position 0.
    pub fn position(&self, batch_hash: [u8; 32]) -> Result<u64, StoreError> {
        (&self.positions, &self.meta)
            .transaction(|(pos, meta)| {
                if let Some(p) = pos.get(batch_hash)? {
                    return read_u64("sequencer position", &p).map_err(ConflictableTransactionError::Abort);
                }
                let next = Sequencer::next_in(meta)?;
                Sequencer::place_in(pos, meta, batch_hash, next)?;
                Ok(next)
            })
            .map_err(|e: TransactionError<StoreError>| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })
    }

    /// The position the next new batch gets.
    pub(crate) fn next(&self) -> Result<u64, StoreError> {
        self.meta.get(b"next")?.map_or(Ok(1), |v| read_u64("sequencer counter", &v))
    }

    fn next_in(meta: &TransactionalTree) -> Result<u64, ConflictableTransactionError<StoreError>> {
        match meta.get(b"next")? {
            Some(v) => read_u64("sequencer counter", &v).map_err(ConflictableTransactionError::Abort),
            None => Ok(1),
        }
    }

    /// Gives `batch_hash` position `position` (the next one) inside a transaction over
    /// [`Sequencer::trees`].
    pub(crate) fn place_in(pos: &TransactionalTree, meta: &TransactionalTree, batch_hash: [u8; 32], position: u64) -> Result<(), ConflictableTransactionError<StoreError>> {
        pos.insert(&batch_hash, &position.to_be_bytes())?;
        meta.insert(b"next", &(position + 1).to_be_bytes())?;
        Ok(())
    }

    /// The positions tree and the counter's tree, in the order [`Sequencer::place_in`] takes them.
    pub(crate) fn trees(&self) -> [&sled::Tree; 2] {
        [&self.positions, &self.meta]
    }
}

impl Orderer for Sequencer {
    fn sequencer(&self) -> Option<Sequencer> {
        Some(self.clone())
    }

    fn next_seq(&self, chain: &ChainStore, _gateway: &str) -> Result<u64, StoreError> {
        chain.next_seq()
    }

    fn admit(&self, _chain: &ChainStore, _gateway: &str, _key_version: u32, _spki: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    fn order<'a>(&'a self, chain: &'a ChainStore, batch: Batch) -> BoxFuture<'a, Result<Ordered, StoreError>> {
        Box::pin(async move {
            let position = self.position(batch.hash())?;
            let seq = batch.seq;
            let (height, prev_hash) = match chain.head()? {
                None => (0, "0".repeat(64)),
                Some((h, hash)) => (h + 1, hash),
            };
            let block = Block { height, prev_hash, order_position: position, batches: vec![batch], valid: vec![true] };
            chain.persist(&block, &[(b"next_batch_seq", (seq + 1).to_be_bytes().to_vec())]).await?;
            Ok(Ordered { block, index: 0 })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn positions_are_idempotent_gap_free_and_a_corrupt_counter_is_an_error() {
        let db = Db::temporary().unwrap();
        let s = Sequencer::open(&db).unwrap();
        assert_eq!(s.position([1; 32]).unwrap(), 1);
        assert_eq!(s.position([2; 32]).unwrap(), 2);
        assert_eq!(s.position([1; 32]).unwrap(), 1, "the same batch keeps its position");
        assert_eq!(s.position([3; 32]).unwrap(), 3);
        s.meta.insert(b"next", &[0u8; 3]).unwrap();
        assert!(matches!(s.position([4; 32]), Err(StoreError::Corrupt { .. })), "never position 0");
        s.positions.insert([1; 32], &[9u8]).unwrap();
        assert!(matches!(s.position([1; 32]), Err(StoreError::Corrupt { .. })));
    }
}
