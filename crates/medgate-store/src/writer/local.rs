//! Group commit with the in-process sequencer: one transaction and one flush per group.
//!
//! The writer task signs a group's new entries as one batch, cuts its block (height, link and
//! sequencer position are known here: nothing else appends), and writes, in one sled
//! transaction, the group's records with their index rows and idempotency states, the block
//! with its indexes, the batch sequence number and the sequencer's position. It then hands the
//! group to the flusher and goes on with the next group. The flusher flushes once for every
//! group written before the flush started, then answers them: no request is answered before
//! the flush that holds its records and its entries.
//!
//! When the batch cannot be signed (the HSM's ledger key is unusable), the group's records and
//! entries are written with the entries in the outbox instead, flushed the same way, and the
//! requests hear that their entries wait there.
//!
//! A request whose status change the stored state refuses (checked inside the transaction) is
//! answered with the refusal and taken out of its group; the rest of the group is signed and
//! written again without it. After the flush, the store's commit listeners hear of each block,
//! in height order, before the requests are answered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use medgate_ledger::{Block, Receipt};
use sled::transaction::{ConflictableTransactionError, Transactional};
use tokio::sync::mpsc;

use super::{answer, drop_refused, GroupError, Inbox, Outcome, Pending, Refused, Writer};
use crate::chain::{write_block, BlockViews, Outboxed, PreparedBlock};
use crate::error::to_json;
use crate::vault::{deposit, Deposit, DepositError, DepositViews};
use crate::{ChainStore, Events, Sequencer, StoreError};

/// Groups written and waiting for the flush that makes them durable.
const FLUSH_QUEUE: usize = 64;

/// Where the chain stands: the next block's height and link, the next batch's sequence number,
/// and the sequencer's next position. Read from the store at start and after a failed write.
#[derive(Debug, Clone)]
struct Head {
    height: u64,
    prev_hash: String,
    seq: u64,
    position: u64,
}

impl Head {
    fn load(w: &Writer, sequencer: &Sequencer) -> Result<Head, StoreError> {
        let store = &w.parts.store;
        let (height, prev_hash) = match store.head()? {
            None => (0, "0".repeat(64)),
            Some((h, hash)) => (h + 1, hash),
        };
        Ok(Head { height, prev_hash, seq: store.next_seq()?, position: sequencer.next()? })
    }
}

/// A group written (or not) and waiting for the flush, with the blocks it wrote (the commit
/// listeners hear of them once they are flushed).
struct Written {
    group: Vec<Pending>,
    outcome: Outcome,
    blocks: Vec<Block>,
}

pub(super) async fn run(w: Writer, sequencer: Sequencer, mut rx: Inbox) {
    let (flush_tx, flush_rx) = mpsc::channel::<Written>(FLUSH_QUEUE);
    let flusher = tokio::spawn(flusher(w.parts.store.clone(), w.parts.events.clone(), flush_rx));
    let mut head = None;
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let mut group = w.gather(first, &mut rx, &mut carried).await;
        let (outcome, blocks) = w.commit_group(&sequencer, &mut head, &mut group).await;
        if flush_tx.send(Written { group, outcome, blocks }).await.is_err() {
            break;
        }
    }
    drop(flush_tx);
    let _ = flusher.await;
    tracing::info!("ledger writer stopped");
}

/// Flushes once for every group written before the flush started, then tells the commit
/// listeners of their blocks (in height order) and answers them.
async fn flusher(store: ChainStore, events: Arc<dyn Events>, mut rx: mpsc::Receiver<Written>) {
    while let Some(first) = rx.recv().await {
        let mut written = vec![first];
        while let Ok(w) = rx.try_recv() {
            written.push(w);
        }
        let flushed = super::timed(events.as_ref(), "flush", store.db().flush()).await;
        for Written { group, outcome, blocks } in written {
            let outcome = match &flushed {
                Ok(()) => {
                    for block in &blocks {
                        store.committed(block);
                    }
                    outcome
                }
                Err(e) => Err(Refused { why: format!("the store could not be flushed: {e}"), stored: false, conflict: false }),
            };
            answer(group, &outcome);
        }
    }
}

impl Writer {
    /// Writes one group; the outcome is answered after the next flush. A request the stored
    /// state refuses (a status change it does not allow) is answered at once and taken out of
    /// the group, which is written again without it.
    async fn commit_group(&self, sequencer: &Sequencer, head: &mut Option<Head>, group: &mut Vec<Pending>) -> (Outcome, Vec<Block>) {
        loop {
            let mut current = match head.take() {
                Some(h) => h,
                None => match Head::load(self, sequencer) {
                    Ok(h) => h,
                    Err(e) => return (Err(Refused::not_stored(e)), Vec::new()),
                },
            };
            match self.write_group(sequencer, &mut current, group).await {
                Ok((receipts, blocks)) => {
                    *head = Some(current);
                    return (Ok(receipts), blocks);
                }
                Err(GroupError::Refused { index, error }) => {
                    // Nothing was written: the head stands.
                    *head = Some(current);
                    drop_refused(group, index, error);
                    if group.is_empty() {
                        return (Ok(HashMap::new()), Vec::new());
                    }
                }
                Err(GroupError::Failed(refused)) => {
                    // Read again from the store next time: the failure may have left it anywhere.
                    self.failed(&refused.why, group.iter().map(|p| p.entries.len()).sum());
                    return (Err(refused), Vec::new());
                }
            }
        }
    }

    async fn write_group(&self, sequencer: &Sequencer, head: &mut Head, group: &[Pending]) -> Result<(HashMap<String, Receipt>, Vec<Block>), GroupError> {
        let failed = |e: StoreError| GroupError::Failed(Refused::not_stored(e));
        let (mut receipts, fresh) = self.split_known(group).map_err(failed)?;
        let mut blocks = Vec::new();
        let mut next = head.clone();
        for chunk in fresh.chunks(self.parts.policy.max_entries.max(1)) {
            let batch = match self.sign(next.seq, chunk.to_vec()).await {
                Ok((batch, _, _)) => batch,
                Err(e) => return Err(self.write_outbox(group, &e.to_string())),
            };
            let block = Block { height: next.height, prev_hash: next.prev_hash.clone(), order_position: next.position, batches: vec![batch], valid: vec![true] };
            next = Head { height: next.height + 1, prev_hash: hex::encode(block.hash()), seq: next.seq + 1, position: next.position + 1 };
            blocks.push(block);
        }
        let prepared: Vec<PreparedBlock> = blocks.iter().map(|b| self.parts.store.prepare(b)).collect::<Result<_, _>>().map_err(failed)?;
        self.transact(sequencer, group, &blocks, &prepared).map_err(|e| GroupError::from_deposits(e, group.len()))?;
        for block in &blocks {
            self.parts.events.incr("ledger_batches");
            for r in Receipt::for_batch(block, 0).map_err(|e| failed(StoreError::Format(e.to_string())))? {
                receipts.insert(r.entry.id.clone(), r);
            }
        }
        *head = next;
        Ok((receipts, blocks))
    }

    /// The one transaction of a group: its deposits, then its blocks with their sequence
    /// numbers and sequencer positions.
    fn transact(&self, sequencer: &Sequencer, group: &[Pending], blocks: &[Block], prepared: &[PreparedBlock]) -> Result<(), DepositError> {
        let deposits: Vec<(usize, &Deposit)> = group.iter().enumerate().filter_map(|(i, p)| p.deposit.as_ref().map(|d| (i, d))).collect();
        // A deposit's entries are made by the request that deposits them and go straight into
        // the block. Any other entry may already wait in the outbox: the drain's, and one sent
        // again with the id it had (the key events' anchoring does) after its batch could not
        // be signed.
        let outboxed: HashSet<&str> = group.iter().filter(|p| p.deposit.is_none()).flat_map(|p| p.entries.iter().map(|e| e.id.as_str())).collect();
        let seq_updates: Vec<Vec<u8>> = blocks.iter().map(|b| (b.batches[0].seq + 1).to_be_bytes().to_vec()).collect();
        let mut trees: Vec<&sled::Tree> = self.parts.vault.deposit_trees().to_vec();
        let chain_at = trees.len();
        trees.extend(self.parts.store.block_trees());
        let sequencer_at = trees.len();
        trees.extend(sequencer.trees());
        let written = trees
            .as_slice()
            .transaction(|t| {
                let chain = BlockViews::of(&t[chain_at..sequencer_at]);
                let vault = DepositViews::of(&t[..chain_at], chain.outbox());
                deposit::write_all(&vault, deposits.iter().copied())?;
                for ((block, prep), seq) in blocks.iter().zip(prepared).zip(&seq_updates) {
                    write_block(&chain, block, prep, &[(b"next_batch_seq", seq.clone())], Outboxed::Ids(&outboxed)).map_err(deposit::store_fault)?;
                    Sequencer::place_in(&t[sequencer_at], &t[sequencer_at + 1], block.batches[0].hash(), block.order_position).map_err(deposit::store_fault)?;
                }
                Ok::<(), ConflictableTransactionError<DepositError>>(())
            })
            .map_err(DepositError::from_transaction);
        // A transaction that fills sled's log buffer seals it on this thread (see the flush).
        crate::db::release_deferred();
        written
    }

    /// The batch could not be signed: the group's records and the entries it hands over go to
    /// the store with the entries in the outbox, for the background drain.
    fn write_outbox(&self, group: &[Pending], why: &str) -> GroupError {
        let mut loose = Deposit::default();
        let mut parts = Vec::new();
        for (i, p) in group.iter().enumerate().filter(|(_, p)| p.durable) {
            let outbox = p.entries.iter().map(|e| Ok((e.id.clone(), to_json("ledger entry", e)?))).collect::<Result<Vec<_>, StoreError>>();
            let outbox = match outbox {
                Ok(o) => o,
                Err(e) => return GroupError::Failed(Refused::not_stored(e)),
            };
            match &p.deposit {
                Some(d) => parts.push((i, d.with_outbox(outbox))),
                None => loose.outbox.extend(outbox),
            }
        }
        parts.push((group.len(), loose));
        let refs: Vec<(usize, &Deposit)> = parts.iter().map(|(i, d)| (*i, d)).collect();
        match self.parts.vault.write_all(&refs) {
            Ok(()) => GroupError::Failed(Refused { why: why.to_owned(), stored: true, conflict: false }),
            Err(e) => GroupError::from_deposits(e, group.len()),
        }
    }
}
