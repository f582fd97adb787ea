//! The ledger writer: one task owns appends. It gathers entries into a batch (up to
//! `max_entries`, or whatever arrived within `max_delay`), has the HSM sign the batch's Merkle
//! root once, hands the batch to the [`Orderer`], and answers each caller with a [`Receipt`] per
//! entry once the block holding it is stored and flushed.
//!
//! Boundary: batching, signing and receipts. Where a batch lands in the order, and how its
//! block is cut and stored, is the orderer's business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medgate_ledger::{Batch, Entry, Receipt, UnsignedBatch};
use tokio::sync::{mpsc, oneshot};

use crate::vault::Vault;
use crate::{ChainStore, Events, LedgerSigner, Orderer, StoreError};

struct Pending {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Vec<Receipt>, String>>,
    /// In a batch of its own: entries whose validity depends on a state that may change while
    /// they are on their way (membership) must not take other entries down with them.
    alone: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("entries", &self.entries.len()).finish()
    }
}

/// Handle to the ledger writer. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    /// The chain the writer appends to.
    pub store: ChainStore,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most entries signed together in one batch.
    pub max_entries: usize,
    /// Longest an entry waits for its batch to fill.
    pub max_delay: Duration,
}

/// What the writer task needs.
#[derive(Debug)]
pub struct WriterParts {
    /// This hospital's id (the batches' gateway).
    pub gateway: String,
    /// The chain appended to.
    pub store: ChainStore,
    /// Signs batches with the ledger key (the HSM).
    pub signer: Arc<dyn LedgerSigner>,
    /// Places batches in the order.
    pub orderer: Arc<dyn Orderer>,
    /// Where entries wait until they are in a block.
    pub vault: Vault,
    /// Batching limits.
    pub policy: BatchPolicy,
    /// Counters (`ledger_batches`, `ledger_append_failures`).
    pub events: Arc<dyn Events>,
}

impl Ledger {
    /// Starts the writer task. Entries left in the vault's outbox by a crash are appended first.
    /// Entries the outbox still holds are appended in the background by the caller's drain task
    /// when this first attempt fails (the ordering service may be unreachable at start).
    pub async fn start(parts: WriterParts) -> Result<Ledger, StoreError> {
        parts.store.claim_hospital(&parts.gateway)?;
        let (tx, rx) = mpsc::channel::<Pending>(4096);
        let vault = parts.vault.clone();
        let store = parts.store.clone();
        let writer = Writer { parts, keys: Mutex::new(HashMap::new()) };
        tokio::spawn(writer.run(rx));
        let ledger = Ledger { tx, store };
        if let Err(e) = ledger.drain_outbox(&vault).await {
            tracing::warn!(error = %e, outbox = vault.outbox_len(), "outbox entries not yet on the ledger; retrying in the background");
        }
        Ok(ledger)
    }

    /// Whether the writer task still takes entries.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Appends entries and waits until they are in a stored, flushed block.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, StoreError> {
        self.send(entries, false).await
    }

    /// As [`Ledger::append`], in a batch that holds these entries only.
    pub async fn append_alone(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, StoreError> {
        self.send(entries, true).await
    }

    async fn send(&self, entries: Vec<Entry>, alone: bool) -> Result<Vec<Receipt>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Pending { entries, reply, alone }).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?.map_err(StoreError::Order)
    }

    /// Appends whatever the outbox holds that is not on the chain yet (after a crash or an outage).
    pub async fn drain_outbox(&self, vault: &Vault) -> Result<usize, StoreError> {
        let mut todo = Vec::new();
        for (id, bytes) in vault.outbox()? {
            if self.store.location(&id)?.is_some() {
                vault.remove_from_outbox(&id)?;
                continue;
            }
            let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| StoreError::corrupt(format!("outbox entry {id}"), e))?;
            todo.push(entry);
        }
        let n = todo.len();
        if n > 0 {
            tracing::info!(entries = n, "appending ledger entries left in the outbox");
            for chunk in todo.chunks(256) {
                self.append(chunk.to_vec()).await?;
            }
        }
        Ok(n)
    }
}

struct Writer {
    parts: WriterParts,
    /// The ledger public key by version, looked up in the HSM once.
    keys: Mutex<HashMap<u32, Vec<u8>>>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => break,
                },
            };
            let (group, next) = self.gather(first, &mut rx).await;
            carried = next;
            self.answer(group).await;
        }
        tracing::info!("ledger writer stopped");
    }

    /// The requests that go into one append: `first`, and whatever arrives within the batching
    /// delay up to the batch size. A request that must be alone is carried to the next append.
    async fn gather(&self, first: Pending, rx: &mut mpsc::Receiver<Pending>) -> (Vec<Pending>, Option<Pending>) {
        let policy = self.parts.policy;
        let alone = first.alone;
        let mut count = first.entries.len();
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + policy.max_delay;
        while !alone && count < policy.max_entries {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) if p.alone => return (group, Some(p)),
                Ok(Some(p)) => {
                    count += p.entries.len();
                    group.push(p);
                }
                Ok(None) | Err(_) => break,
            }
        }
        (group, None)
    }

    /// Commits a group's entries (one block per batch-sized chunk) and answers each request.
    async fn answer(&self, group: Vec<Pending>) {
        let entries: Vec<Entry> = group.iter().flat_map(|p| p.entries.iter().cloned()).collect();
        let mut committed = Ok(Vec::with_capacity(entries.len()));
        for chunk in entries.chunks(self.parts.policy.max_entries.max(1)) {
            match self.commit(chunk.to_vec()).await {
                Ok(r) => {
                    if let Ok(all) = committed.as_mut() {
                        all.extend(r);
                    }
                }
                Err(e) => {
                    committed = Err(e);
                    break;
                }
            }
        }
        match committed {
            Ok(receipts) => {
                let mut it = receipts.into_iter();
                for p in group {
                    let mine: Vec<Receipt> = it.by_ref().take(p.entries.len()).collect();
                    let _ = p.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, entries = entries.len(), "ledger append failed; entries stay in the outbox");
                self.parts.events.incr("ledger_append_failures");
                for p in group {
                    let _ = p.reply.send(Err(e.to_string()));
                }
            }
        }
    }

    fn public_key(&self, version: u32) -> Result<Vec<u8>, StoreError> {
        if let Some(k) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&version) {
            return Ok(k.clone());
        }
        let spki = self.parts.signer.public_key(version)?;
        self.parts.store.remember_key(&self.parts.gateway, version, &spki)?;
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(version, spki.clone());
        Ok(spki)
    }

    /// Appends entries, answering those already on the chain (an outbox drain racing the
    /// request that first submitted them) from the chain, and each entry once even when it was
    /// queued twice: a batch holding an entry that is already on the chain would be flagged
    /// invalid, and with it every other entry in it.
    async fn commit(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, StoreError> {
        let mut known: HashMap<String, Receipt> = HashMap::new();
        let mut fresh = Vec::new();
        for e in &entries {
            if known.contains_key(&e.id) || fresh.iter().any(|f: &Entry| f.id == e.id) {
                continue;
            }
            match self.parts.store.receipt(&e.id)? {
                Some(r) => {
                    known.insert(e.id.clone(), r);
                }
                None => fresh.push(e.clone()),
            }
        }
        if !fresh.is_empty() {
            for r in self.commit_fresh(fresh).await? {
                known.insert(r.entry.id.clone(), r);
            }
        }
        entries
            .iter()
            .map(|e| known.get(&e.id).cloned().ok_or_else(|| StoreError::Format(format!("no receipt for entry {}", e.id))))
            .collect()
    }

    /// Signs a batch of new entries, checks it, has it ordered, and returns the receipts.
    async fn commit_fresh(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, StoreError> {
        let (store, gateway) = (&self.parts.store, self.parts.gateway.as_str());
        let seq = self.parts.orderer.next_seq(store, gateway)?;
        let unsigned = UnsignedBatch::new(gateway, seq, entries);
        unsigned.check().map_err(|e| StoreError::Format(format!("batch refused before signing: {e}")))?;
        let message = unsigned.signing_message();
        let signer = self.parts.signer.clone();
        let (key_version, raw) = tokio::task::spawn_blocking(move || signer.sign(&message))
            .await
            .map_err(|e| StoreError::Order(e.to_string()))??;
        let batch: Batch = unsigned.sign(key_version, &raw);
        let spki = self.public_key(key_version)?;
        batch
            .verify(&|g: &str, v: u32| (g == gateway && v == key_version).then(|| spki.clone()))
            .map_err(|e| StoreError::Format(format!("own batch does not verify: {e}")))?;
        self.parts.orderer.admit(store, gateway, key_version, &spki)?;
        let n = batch.entries.len();
        let ordered = self.parts.orderer.order(store, batch).await?;
        self.parts.events.incr("ledger_batches");
        (0..n)
            .map(|i| Receipt::for_entry(&ordered.block, ordered.index, i).map_err(|e| StoreError::Format(e.to_string())))
            .collect()
    }
}
