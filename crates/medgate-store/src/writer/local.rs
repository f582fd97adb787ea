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

use medgate_ledger::{Block, Receipt};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::mpsc;

use super::{answer, Outcome, Pending, Refused, Writer};
use crate::chain::{write_block, BlockViews, PreparedBlock};
use crate::error::to_json;
use crate::vault::DepositViews;
use crate::{Db, Sequencer, StoreError};

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

/// A group written (or not) and waiting for the flush.
struct Written {
    group: Vec<Pending>,
    outcome: Outcome,
}

pub(super) async fn run(w: Writer, sequencer: Sequencer, mut rx: mpsc::Receiver<Pending>) {
    let (flush_tx, flush_rx) = mpsc::channel::<Written>(FLUSH_QUEUE);
    let flusher = tokio::spawn(flusher(w.parts.store.db().clone(), flush_rx));
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
        let group = w.gather(first, &mut rx, &mut carried).await;
        let outcome = w.commit_group(&sequencer, &mut head, &group).await;
        if flush_tx.send(Written { group, outcome }).await.is_err() {
            break;
        }
    }
    drop(flush_tx);
    let _ = flusher.await;
    tracing::info!("ledger writer stopped");
}

/// Flushes once for every group written before the flush started, then answers them.
async fn flusher(db: Db, mut rx: mpsc::Receiver<Written>) {
    while let Some(first) = rx.recv().await {
        let mut written = vec![first];
        while let Ok(w) = rx.try_recv() {
            written.push(w);
        }
        let flushed = db.flush().await;
        for Written { group, outcome } in written {
            let outcome = match &flushed {
                Ok(()) => outcome,
                Err(e) => Err(Refused { why: format!("the store could not be flushed: {e}"), stored: false }),
            };
            answer(group, &outcome);
        }
    }
}

impl Writer {
    /// Writes one group; the outcome is answered after the next flush.
    async fn commit_group(&self, sequencer: &Sequencer, head: &mut Option<Head>, group: &[Pending]) -> Outcome {
        let mut current = match head.take() {
            Some(h) => h,
            None => Head::load(self, sequencer).map_err(|e| Refused { why: e.to_string(), stored: false })?,
        };
        match self.write_group(sequencer, &mut current, group).await {
            Ok(receipts) => {
                *head = Some(current);
                Ok(receipts)
            }
            Err(refused) => {
                // Read again from the store next time: the failure may have left it anywhere.
                self.failed(&refused.why, group.iter().map(|p| p.entries.len()).sum());
                Err(refused)
            }
        }
    }

    async fn write_group(&self, sequencer: &Sequencer, head: &mut Head, group: &[Pending]) -> Outcome {
        let refused = |e: StoreError| Refused { why: e.to_string(), stored: false };
        let (mut receipts, fresh) = self.split_known(group).map_err(refused)?;
        let mut blocks = Vec::new();
        let mut next = head.clone();
        for chunk in fresh.chunks(self.parts.policy.max_entries.max(1)) {
            let batch = match self.sign(next.seq, chunk.to_vec()).await {
                Ok((batch, _, _)) => batch,
                Err(e) => return self.write_outbox(group, &e.to_string()),
            };
            let block = Block { height: next.height, prev_hash: next.prev_hash.clone(), order_position: next.position, batches: vec![batch], valid: vec![true] };
            next = Head { height: next.height + 1, prev_hash: hex::encode(block.hash()), seq: next.seq + 1, position: next.position + 1 };
            blocks.push(block);
        }
        let prepared: Vec<PreparedBlock> = blocks.iter().map(|b| self.parts.store.prepare(b)).collect::<Result<_, _>>().map_err(refused)?;
        let deposits: Vec<&crate::vault::Deposit> = group.iter().filter_map(|p| p.deposit.as_ref()).collect();
        self.transact(sequencer, &deposits, &blocks, &prepared).map_err(refused)?;
        for block in &blocks {
            self.parts.events.incr("ledger_batches");
            for i in 0..block.batches[0].entries.len() {
                let r = Receipt::for_entry(block, 0, i).map_err(|e| refused(StoreError::Format(e.to_string())))?;
                receipts.insert(r.entry.id.clone(), r);
            }
        }
        *head = next;
        Ok(receipts)
    }

    /// The one transaction of a group: its deposits, then its blocks with their sequence
    /// numbers and sequencer positions.
    fn transact(&self, sequencer: &Sequencer, deposits: &[&crate::vault::Deposit], blocks: &[Block], prepared: &[PreparedBlock]) -> Result<(), StoreError> {
        let seq_updates: Vec<Vec<u8>> = blocks.iter().map(|b| (b.batches[0].seq + 1).to_be_bytes().to_vec()).collect();
        let mut trees: Vec<&sled::Tree> = self.parts.vault.deposit_trees().to_vec();
        trees.extend(self.parts.store.block_trees());
        trees.extend(sequencer.trees());
        trees
            .as_slice()
            .transaction(|t| {
                let chain = BlockViews::of(&t[3..10]);
                let vault = DepositViews { records: &t[0], by_patient: &t[1], idempotency: &t[2], outbox: &t[7] };
                for d in deposits {
                    d.write(&vault)?;
                }
                for ((block, prep), seq) in blocks.iter().zip(prepared).zip(&seq_updates) {
                    write_block(&chain, block, prep, &[(b"next_batch_seq", seq.clone())])?;
                    Sequencer::place_in(&t[10], &t[11], block.batches[0].hash(), block.order_position)?;
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e: TransactionError<StoreError>| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })
    }

    /// The batch could not be signed: the group's records and the entries it hands over go to
    /// the store with the entries in the outbox, for the background drain.
    fn write_outbox(&self, group: &[Pending], why: &str) -> Outcome {
        let mut deposit = crate::vault::Deposit::default();
        let mut parts = Vec::new();
        for p in group.iter().filter(|p| p.durable) {
            let outbox = p.entries.iter().map(|e| Ok((e.id.clone(), to_json("ledger entry", e)?))).collect::<Result<Vec<_>, StoreError>>();
            let outbox = outbox.map_err(|e| Refused { why: e.to_string(), stored: false })?;
            match &p.deposit {
                Some(d) => parts.push(d.with_outbox(outbox)),
                None => deposit.outbox.extend(outbox),
            }
        }
        parts.push(deposit);
        self.parts.vault.write_all(&parts).map_err(|e| Refused { why: e.to_string(), stored: false })?;
        Err(Refused { why: why.to_owned(), stored: true })
    }
}

