//! The ledger writer: one task owns appends, and commits in groups. Whatever arrived while the
//! previous group was being written forms the next group (no fixed time window: an idle
//! gateway commits at once, a busy one groups by itself), up to the batch size; the group's new
//! entries are signed in the HSM once, as one batch. A request announces itself while it is
//! being prepared ([`Ledger::preparing`]: sealed in the HSM, on its way to the writer); when
//! nothing else is queued and some are, the group waits for them, [`PREPARING_WAIT`] at most.
//! A lone request is never kept waiting.
//!
//! Two ways to commit, chosen by the [`Orderer`]:
//! * with the in-process sequencer ([`local`]): a group's records, idempotency states, entries
//!   and block go to disk in one transaction and one flush, and every request of the group is
//!   answered after that flush. The next group is signed and written while a flush is under
//!   way; one flusher flushes whatever was written before it started.
//! * with an ordering service ([`pipeline`]): a group's records and entries are first stored
//!   and flushed with the entries in the outbox (one transaction, one flush), then its batch is
//!   submitted; the next group's batch follows as soon as the service holds this one, several
//!   batches in flight in sequence, each answered when its block has landed (accesses: as soon
//!   as the service holds their batch, see [`Ledger::record_access`]).
//!
//! Boundary: grouping, signing, durability of what a request hands over, and receipts. Where a
//! batch lands in the order, and how its block is cut and stored, is the orderer's business.

mod local;
mod pipeline;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medgate_ledger::{Batch, Entry, Receipt, UnsignedBatch};
use tokio::sync::{mpsc, oneshot};

use crate::vault::{Deposit, Held, Vault, Write};
use crate::{ChainStore, Events, LedgerSigner, Orderer, StoreError};

/// Why a request's entries are not in a block, and whether what it handed over is stored
/// (records, and its entries in the outbox, for the background drain) anyway.
#[derive(Debug, Clone)]
struct Refused {
    why: String,
    stored: bool,
    /// Refused by the stored state (a status change it does not allow): nothing was stored.
    conflict: bool,
}

impl Refused {
    /// What a request whose deposit could not be written hears: nothing of it was stored.
    fn not_stored(e: StoreError) -> Refused {
        match e {
            StoreError::Conflict(why) => Refused { why, stored: false, conflict: true },
            e => Refused { why: e.to_string(), stored: false, conflict: false },
        }
    }
}

/// Why a group could not be written as it is.
#[derive(Debug)]
enum GroupError {
    /// The request at this index in the group cannot be written; the others may be, without it.
    Refused { index: usize, error: StoreError },
    /// The group as a whole.
    Failed(Refused),
}

impl GroupError {
    /// From a failed write of deposits; `count`: how many requests the group holds (an index
    /// beyond names none of them).
    fn from_deposits(e: crate::vault::DepositError, count: usize) -> GroupError {
        match e {
            crate::vault::DepositError::Refused { index, error } if index < count => GroupError::Refused { index, error },
            e => GroupError::Failed(Refused::not_stored(e.into_store())),
        }
    }
}

/// Takes the refused request out of `group` and answers it.
fn drop_refused(group: &mut Vec<Pending>, index: usize, error: StoreError) {
    let p = group.remove(index);
    tracing::info!(error = %error, "a request of the group is refused by the stored state; the others are written without it");
    let _ = p.reply.send(Err(Refused::not_stored(error)));
}

struct Pending {
    entries: Vec<Entry>,
    /// Records, lists, status changes and idempotency states stored with the entries.
    deposit: Option<Deposit>,
    /// The writer makes the entries durable (in the block, or in the outbox when the ledger
    /// cannot take them); `false` for entries the outbox already holds (the drain).
    durable: bool,
    /// In a batch of its own: entries whose validity depends on a state that may change while
    /// they are on their way (membership) must not take other entries down with them.
    alone: bool,
    /// When it is answered, through an ordering service.
    settle: Settle,
    reply: oneshot::Sender<Result<Vec<Receipt>, Refused>>,
    /// The request's idempotency claims, kept until it is answered (see [`Held`]).
    _holds: Vec<Held>,
}

/// When a request that goes through an ordering service is answered (the in-process sequencer
/// answers every request after the flush that holds its block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Once its entries are in a stored, flushed block, with their receipts.
    Landed,
    /// Once its entries are durable here (in the flushed outbox) and the ordering service holds
    /// their batch, so that its place in the order is fixed; without receipts. For accesses:
    /// the access is recorded before anything is disclosed, and the block, cut from that order
    /// by every member alike, adds nothing the reader waits for. Should the batch not land, the
    /// entries stay in the outbox for the background drain, as after any ledger failure.
    Ordered,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("entries", &self.entries.len()).field("deposit", &self.deposit.is_some()).finish()
    }
}

/// Receipts by entry id, or why a group's entries are not in a block.
type Outcome = Result<HashMap<String, Receipt>, Refused>;

/// Answers every request of a group from its outcome.
fn answer(group: Vec<Pending>, outcome: &Outcome) {
    for p in group {
        let mine = match outcome {
            Ok(receipts) => p
                .entries
                .iter()
                .map(|e| receipts.get(&e.id).cloned().ok_or_else(|| Refused { why: format!("no receipt for entry {}", e.id), stored: p.durable, conflict: false }))
                .collect(),
            Err(r) => Err(r.clone()),
        };
        let _ = p.reply.send(mine);
    }
}

/// The longest a group waits, when nothing else is queued, for requests that are being
/// prepared ([`Ledger::preparing`]). Under load a group then carries what the requests in
/// preparation bring within this time instead of the one or two that happened to be queued: the
/// batch signature and its check, the transaction and the flush are shared by many more
/// records (at 64 concurrent clients on 2 cores, groups of about 20 instead of 3 to 4).
pub const PREPARING_WAIT: Duration = Duration::from_millis(2);

/// Handle to the ledger writer. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    /// The writer's queue for accesses ([`Inbox`]).
    prompt: mpsc::Sender<Pending>,
    /// The chain the writer appends to.
    pub store: ChainStore,
    max_entries: usize,
    /// Requests being prepared: announced, not yet handed to the writer.
    preparing: Arc<AtomicUsize>,
}

/// A request being prepared for the writer (see [`PREPARING_WAIT`]), from
/// [`Ledger::preparing`] until [`Preparing::deposit`] hands it over, or until it is dropped
/// (the request failed before).
#[derive(Debug)]
pub struct Preparing {
    tx: mpsc::Sender<Pending>,
    preparing: Arc<AtomicUsize>,
    counted: bool,
}

impl Preparing {
    /// [`Ledger::deposit`]. The request stops counting as in preparation just before it is
    /// handed over: counted still when the writer takes it, it would keep its own group
    /// waiting for itself.
    ///
    /// `holds`: the idempotency keys `write` commits under; the writer keeps them claimed until
    /// it answers the deposit, whether or not this request is still there to hear.
    pub async fn deposit(mut self, write: &Write, entries: Vec<Entry>, holds: Vec<Held>) -> Result<Option<Vec<Receipt>>, StoreError> {
        let mut deposit = Deposit::encode(write)?;
        deposit.outbox.clear();
        self.release();
        Ledger::settle(answer_of(enqueue(&self.tx, Queued { entries, deposit: Some(deposit), holds, ..Queued::landed() }).await).await)
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.preparing.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        self.release();
    }
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most entries signed together in one batch (and gathered into one group).
    pub max_entries: usize,
    /// How long a group waits for more entries before it is committed. Zero (the default):
    /// no wait; a group holds what arrived while the previous one was being written.
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
    /// Where records and entries are stored until they are in a block.
    pub vault: Vault,
    /// Batching limits.
    pub policy: BatchPolicy,
    /// Counters (`ledger_batches`, `ledger_append_failures`) and the writer's step timings.
    pub events: Arc<dyn Events>,
}

impl Ledger {
    /// Starts the writer task. Entries left in the vault's outbox by a crash are appended first.
    /// Entries the outbox still holds are appended in the background by the caller's drain task
    /// when this first attempt fails (the ordering service may be unreachable at start).
    pub async fn start(parts: WriterParts) -> Result<Ledger, StoreError> {
        parts.store.claim_hospital(&parts.gateway)?;
        let (tx, rest) = mpsc::channel::<Pending>(4096);
        let (prompt, prompt_rx) = mpsc::channel::<Pending>(4096);
        let rx = Inbox { prompt: prompt_rx, rest };
        let vault = parts.vault.clone();
        let store = parts.store.clone();
        let max_entries = parts.policy.max_entries.max(1);
        let preparing = Arc::new(AtomicUsize::new(0));
        let writer = Writer { parts, keys: Mutex::new(HashMap::new()), preparing: preparing.clone() };
        match writer.parts.orderer.sequencer() {
            Some(sequencer) => tokio::spawn(local::run(writer, sequencer, rx)),
            None => tokio::spawn(pipeline::run(writer, rx)),
        };
        let ledger = Ledger { tx, prompt, store, max_entries, preparing };
        if let Err(e) = ledger.drain_outbox(&vault).await {
            tracing::warn!(error = %e, outbox = vault.outbox_len(), "outbox entries not yet on the ledger; retrying in the background");
        }
        Ok(ledger)
    }

    /// Whether the writer task still takes entries.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed() && !self.prompt.is_closed()
    }

    /// Announces a request that will [`Preparing::deposit`] soon, so that the group being
    /// gathered may wait for it (see [`PREPARING_WAIT`]).
    pub fn preparing(&self) -> Preparing {
        self.preparing.fetch_add(1, Ordering::Relaxed);
        Preparing { tx: self.tx.clone(), preparing: self.preparing.clone(), counted: true }
    }

    /// How many requests are announced and not yet handed over or given up.
    pub fn in_preparation(&self) -> usize {
        self.preparing.load(Ordering::Relaxed)
    }

    /// Appends entries the outbox already holds and waits until they are in a stored, flushed
    /// block.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, StoreError> {
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(self.max_entries) {
            out.extend(self.send(chunk.to_vec(), None, false, false).await.map_err(|r| StoreError::Order(r.why))?);
        }
        Ok(out)
    }

    /// As [`Ledger::append`], in a batch that holds these entries only.
    pub async fn append_alone(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, StoreError> {
        self.send(entries, None, false, true).await.map_err(|r| StoreError::Order(r.why))
    }

    /// Stores what `write` holds (records and lists with their index rows, status changes
    /// checked against the stored records inside the transaction, idempotency states) together
    /// with `entries`, the ledger entries it makes, durably, and puts the entries on the ledger;
    /// the writer puts the entries in the outbox when it must (`write.outbox` is not used).
    /// `Err`: nothing was stored ([`StoreError::Conflict`]: the stored state refuses a status
    /// change). `Ok(None)`: stored and flushed, the entries wait in the outbox (the ledger could
    /// not take them). `Ok(Some(_))`: the entries are in a flushed block, with the records.
    pub async fn deposit(&self, write: &Write, entries: Vec<Entry>) -> Result<Option<Vec<Receipt>>, StoreError> {
        self.preparing().deposit(write, entries, Vec::new()).await
    }

    /// Records entries (an access, a search) durably and puts them on the ledger: `Ok(Some(_))`
    /// once they are in a flushed block, `Ok(None)` when they wait in the flushed outbox, `Err`
    /// when they could not be stored at all.
    pub async fn record(&self, entries: Vec<Entry>) -> Result<Option<Vec<Receipt>>, StoreError> {
        Self::settle(self.send(entries, None, true, false).await)
    }

    /// Records access entries (a read, a search, a peer's read) as [`Ledger::record`] does, but
    /// through an ordering service answers as soon as they are durable here and the service
    /// holds their batch, without waiting for the block (see `Settle::Ordered`). `Err` when they
    /// could not be stored at all; the caller then discloses nothing.
    ///
    /// Someone waits to see what they asked for: the writer takes these before the other
    /// requests waiting (see [`Inbox`]).
    pub async fn record_access(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let queued = enqueue(&self.prompt, Queued { entries, settle: Settle::Ordered, ..Queued::landed() }).await;
        Self::settle(answer_of(queued).await).map(|_| ())
    }

    fn settle(r: Result<Vec<Receipt>, Refused>) -> Result<Option<Vec<Receipt>>, StoreError> {
        match r {
            Ok(receipts) => Ok(Some(receipts)),
            Err(Refused { why, stored: true, .. }) => {
                tracing::warn!(reason = %why, "stored; the ledger entries wait in the outbox");
                Ok(None)
            }
            Err(Refused { why, stored: false, conflict: true }) => Err(StoreError::Conflict(why)),
            Err(Refused { why, stored: false, conflict: false }) => Err(StoreError::Storage(why)),
        }
    }

    async fn send(&self, entries: Vec<Entry>, deposit: Option<Deposit>, durable: bool, alone: bool) -> Result<Vec<Receipt>, Refused> {
        answer_of(enqueue(&self.tx, Queued { entries, deposit, durable, alone, ..Queued::landed() }).await).await
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
            self.append(todo).await?;
        }
        Ok(n)
    }
}

/// Where a request hears its answer.
type Reply = oneshot::Receiver<Result<Vec<Receipt>, Refused>>;

/// The writer task is gone: nothing of the request was stored.
fn stopped() -> Refused {
    Refused { why: StoreError::Stopped.to_string(), stored: false, conflict: false }
}

/// What a request hands to the writer (see [`Pending`]).
struct Queued {
    entries: Vec<Entry>,
    deposit: Option<Deposit>,
    durable: bool,
    alone: bool,
    settle: Settle,
    holds: Vec<Held>,
}

impl Queued {
    /// Entries to make durable and answer once landed, in a batch with others, nothing held.
    fn landed() -> Queued {
        Queued { entries: Vec::new(), deposit: None, durable: true, alone: false, settle: Settle::Landed, holds: Vec::new() }
    }
}

/// Hands a request to the writer; the receiver hears its answer.
async fn enqueue(tx: &mpsc::Sender<Pending>, q: Queued) -> Result<Reply, Refused> {
    let (reply, rx) = oneshot::channel();
    let Queued { entries, deposit, durable, alone, settle, holds } = q;
    tx.send(Pending { entries, deposit, durable, alone, settle, reply, _holds: holds }).await.map_err(|_| stopped())?;
    Ok(rx)
}

async fn answer_of(queued: Result<Reply, Refused>) -> Result<Vec<Receipt>, Refused> {
    queued?.await.map_err(|_| stopped())?
}

/// The writer's two queues. Accesses (a read, a search, a peer's read: someone waits to see what
/// they asked for, and its entry must be durable first) are taken before everything else that
/// waits; the rest (records being stored, consents, the outbox's drain) in the order they came.
/// During a bulk load a clinician's read would otherwise wait behind every record already
/// queued. Accesses take at most half of a group while other requests wait (see
/// [`Writer::gather`]), so that a stream of reads cannot hold back the writes.
///
/// Nothing a waiting request could observe depends on the order between an access and the rest:
/// neither is answered yet. An access may now reach the chain before the outbox's drain
/// re-appends an entry it concerns (a record whose anchoring entry waited in the outbox); no
/// entry rule or check of the chain depends on that order.
struct Inbox {
    prompt: mpsc::Receiver<Pending>,
    rest: mpsc::Receiver<Pending>,
}

impl Inbox {
    /// The next request, an access first; `None` once both queues are closed and empty.
    async fn recv(&mut self) -> Option<Pending> {
        if let Some(p) = self.try_recv(true) {
            return Some(p);
        }
        tokio::select! {
            biased;
            Some(p) = self.prompt.recv() => Some(p),
            Some(p) = self.rest.recv() => Some(p),
            else => None,
        }
    }

    /// A request already waiting: an access first when `accesses_first`, else the rest first.
    fn try_recv(&mut self, accesses_first: bool) -> Option<Pending> {
        if accesses_first {
            self.prompt.try_recv().ok().or_else(|| self.rest.try_recv().ok())
        } else {
            self.rest.try_recv().ok().or_else(|| self.prompt.try_recv().ok())
        }
    }
}

impl Pending {
    /// An access, queued by [`Ledger::record_access`] on the writer's first queue.
    fn is_access(&self) -> bool {
        self.settle == Settle::Ordered
    }
}

struct Writer {
    parts: WriterParts,
    /// The ledger public key by version, looked up in the HSM once.
    keys: Mutex<HashMap<u32, Vec<u8>>>,
    /// Requests being prepared ([`Ledger::preparing`]).
    preparing: Arc<AtomicUsize>,
}

impl Writer {
    /// The requests of one group: `first`, then whatever is already waiting, up to the batch
    /// size; when nothing is, those being prepared, for [`PREPARING_WAIT`] at most (or, when the
    /// policy sets a delay, whatever arrives within it). A request that must be alone ends the
    /// group and is carried to the next one. Accesses come first until they hold half of the
    /// group; then the other requests waiting, then accesses again if room is left.
    async fn gather(&self, first: Pending, rx: &mut Inbox, carried: &mut Option<Pending>) -> Vec<Pending> {
        let policy = self.parts.policy;
        let alone = first.alone;
        let mut count = first.entries.len();
        let mut accesses = if first.is_access() { count } else { 0 };
        let mut group = vec![first];
        let started = tokio::time::Instant::now();
        let deadline = started + policy.max_delay;
        let patience = started + PREPARING_WAIT;
        while !alone && count < policy.max_entries {
            let next = match rx.try_recv(accesses * 2 < policy.max_entries) {
                Some(p) => Some(p),
                None if !policy.max_delay.is_zero() => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
                None if self.preparing.load(Ordering::Relaxed) > 0 => tokio::time::timeout_at(patience, rx.recv()).await.ok().flatten(),
                None => None,
            };
            let Some(p) = next else { break };
            if p.alone || count + p.entries.len() > policy.max_entries {
                *carried = Some(p);
                break;
            }
            count += p.entries.len();
            if p.is_access() {
                accesses += p.entries.len();
            }
            group.push(p);
        }
        group
    }

    /// The group's entries split into those already on the chain (an outbox drain racing the
    /// request that first submitted them: answered from the chain) and the new ones, each once
    /// even when it was queued twice: a batch holding an entry that is already on the chain
    /// would be flagged invalid, and with it every other entry in it.
    fn split_known(&self, group: &[Pending]) -> Result<(HashMap<String, Receipt>, Vec<Entry>), StoreError> {
        let mut known = HashMap::new();
        let mut fresh: Vec<Entry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in group.iter().flat_map(|p| p.entries.iter()) {
            if !seen.insert(e.id.as_str()) {
                continue;
            }
            match self.parts.store.receipt(&e.id)? {
                Some(r) => {
                    known.insert(e.id.clone(), r);
                }
                None => fresh.push(e.clone()),
            }
        }
        Ok((known, fresh))
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

    /// Signs a batch of new entries with sequence number `seq` (one HSM signature), checks it
    /// and returns it with its key version and public key.
    async fn sign(&self, seq: u64, entries: Vec<Entry>) -> Result<(Batch, u32, Vec<u8>), StoreError> {
        timed(self.parts.events.as_ref(), "sign", self.sign_untimed(seq, entries)).await
    }

    async fn sign_untimed(&self, seq: u64, entries: Vec<Entry>) -> Result<(Batch, u32, Vec<u8>), StoreError> {
        let gateway = self.parts.gateway.as_str();
        let unsigned = UnsignedBatch::new(gateway, seq, entries);
        unsigned.check().map_err(|e| StoreError::Format(format!("batch refused before signing: {e}")))?;
        let message = unsigned.signing_message();
        let signer = self.parts.signer.clone();
        let (key_version, raw) = tokio::task::spawn_blocking(move || signer.sign(&message))
            .await
            .map_err(|e| StoreError::Order(e.to_string()))??;
        let batch: Batch = unsigned.sign(key_version, &raw);
        let spki = self.public_key(key_version)?;
        // The content (entries, ids, root, size) passed `check` a moment ago and was moved into
        // the batch unchanged; what is new is the HSM's signature, checked against its public key.
        batch.verify_signature(&spki).map_err(|e| StoreError::Format(format!("own batch does not verify: {e}")))?;
        Ok((batch, key_version, spki))
    }

    /// Flushes the store, timed as `flush`.
    async fn flush(&self) -> Result<(), StoreError> {
        timed(self.parts.events.as_ref(), "flush", self.parts.vault.sync()).await
    }

    /// Counts a group whose entries could not be put on the ledger.
    fn failed(&self, why: &str, entries: usize) {
        tracing::error!(error = %why, entries, "ledger append failed; entries stay in the outbox");
        self.parts.events.incr("ledger_append_failures");
    }
}

/// Awaits `f` and reports how long it took as the writer's `step`, whatever its outcome.
async fn timed<T>(events: &dyn Events, step: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    events.writer_step(step, started.elapsed());
    out
}
