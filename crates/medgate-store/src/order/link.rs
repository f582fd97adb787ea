//! The consortium ledger: every gateway submits its signed batches to the consortium's etcd
//! cluster, and every gateway follows etcd's ordered stream and cuts the same blocks from it.
//!
//! Boundary: [`EtcdLink`] is the [`Orderer`] the ledger writer sees (submit a batch, wait until
//! it is in a block); [`follow`] turns the ordered stream into stored blocks; [`super::etcd`]
//! talks to etcd; a [`BlockSource`] (the peer gateways) serves the blocks a compacted stream no
//! longer holds.
//! Blocks depend only on stream content (revision and batch bytes) and the genesis member keys,
//! so every gateway that reads the same stream stores byte-identical blocks.
//!
//! Rules applied when cutting (deterministic, from stream content only): a batch counts only if
//! its signature verifies with a member's key, it is next in its gateway's sequence, none of its
//! entries is already on the chain (a resubmitted outbox entry is not recorded twice), and its
//! entries keep the consent rules ([`ChainStore::batch_counts`]).
//! Batches that fail are kept in the block and flagged invalid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medgate_ledger::membership::Genesis;
use medgate_ledger::{Batch, Block, ChainState, LedgerError};
use tokio::sync::{mpsc, oneshot, Notify};

use super::etcd::{EtcdOrderer, EtcdSettings, COMPACTED};
use super::{BlockSource, BoxFuture, Events, Landing, Ordered, Orderer};
use crate::chain::Outboxed;
use crate::{ChainStore, StoreError};

/// Where this gateway's own batches landed: batch hash → (block height, valid).
#[derive(Debug, Default)]
pub struct Landed {
    seen: Mutex<HashMap<[u8; 32], (u64, bool)>>,
    notify: Notify,
}

impl Landed {
    fn record(&self, hash: [u8; 32], height: u64, valid: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Landings nobody waits for any more (the writer gave up, the outbox took over) must not
        // pile up over the years: only recent ones matter.
        if seen.len() >= 4096 {
            seen.retain(|_, (h, _)| *h + 1024 >= height);
        }
        seen.insert(hash, (height, valid));
        drop(seen);
        self.notify.notify_waiters();
    }

    /// Waits until the batch is in a stored, flushed block, at most `timeout`. A landing that
    /// came before the wait began is kept for it.
    pub async fn wait(&self, hash: [u8; 32], timeout: Duration) -> Option<(u64, bool)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&hash) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// What the follower is fed: a batch of the ordered stream at its revision, or the order to
/// catch up from peer gateways (the stream's resume point was compacted away).
#[derive(Debug)]
pub enum Feed {
    /// A batch's bytes at its revision.
    Batch(u64, Vec<u8>),
    /// Catch up from the peers; answers how many blocks were stored.
    CatchUp(oneshot::Sender<Result<usize, String>>),
}

/// The writer's connection to the consortium: the consortium's [`Orderer`].
#[derive(Debug)]
pub struct EtcdLink {
    orderer: EtcdOrderer,
    landed: Arc<Landed>,
    /// The peer gateways, for catching up from their blocks; set once sharing is configured.
    peers: Mutex<Option<Arc<dyn BlockSource>>>,
    /// Why the ordered stream stopped for good (store failure, fork), if it did.
    halted: Mutex<Option<String>>,
    /// Why this gateway is behind and waiting to catch up from its peers, if it is (its resume
    /// point was compacted and no peer gave it the missing blocks yet; retried).
    behind: Mutex<Option<String>>,
}

/// How long a gateway that could not catch up from its peers waits before it tries again.
const CATCH_UP_RETRY: Duration = Duration::from_secs(30);

impl EtcdLink {
    /// Why this gateway is behind the consortium, if it is.
    pub fn behind(&self) -> Option<String> {
        self.behind.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_behind(&self, why: Option<String>) {
        *self.behind.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why the consortium ledger halted here, if it did.
    pub fn halted(&self) -> Option<String> {
        self.halted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Halts submissions (a fork, a store failure) until an operator acts.
    pub fn halt(&self, why: String) {
        tracing::error!(reason = %why, "consortium ledger halted: no new blocks until an operator acts");
        *self.halted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// The peer gateways to catch up from (set once sharing is configured).
    pub fn set_block_source(&self, source: Arc<dyn BlockSource>) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Compacts etcd's history below `revision`.
    pub async fn compact(&self, revision: u64) -> Result<(), String> {
        self.orderer.compact(revision).await
    }

    /// Adopts the genesis document (`genesis`, its hash and its bytes; or checks that the ledger
    /// copy started from it), connects to etcd (lazily), and starts the stream reader and the
    /// follower. Returns the link and the two tasks.
    pub async fn start(
        settings: EtcdSettings,
        me: &str,
        genesis: (&Genesis, [u8; 32], &[u8]),
        store: ChainStore,
        events: Arc<dyn Events>,
    ) -> Result<(Arc<EtcdLink>, Vec<tokio::task::JoinHandle<()>>), String> {
        let (genesis, hash, bytes) = genesis;
        store.adopt_genesis(genesis, hash, bytes).map_err(|e| e.to_string())?;
        if !store.is_member(me) {
            tracing::warn!(hospital = %me, genesis = %hex::encode(hash), "this hospital is not a current member: it follows the ledger but submits nothing until a membership change admits it");
        }
        let orderer = EtcdOrderer::connect(settings, me).await?;
        let link = Arc::new(EtcdLink { orderer: orderer.clone(), landed: Arc::default(), peers: Mutex::new(None), halted: Mutex::new(None), behind: Mutex::new(None) });
        let (tx, rx) = mpsc::channel(1024);
        let (l1, l2) = (link.clone(), link.clone());
        let follower_store = store.clone();
        let me = me.to_owned();
        let follower = tokio::spawn(async move {
            match follow(follower_store, me, rx, l1.clone(), events).await {
                Ok(()) => {}
                Err(e) => l1.halt(format!("storing blocks failed: {e}")),
            }
        });
        let reader = tokio::spawn(async move {
            loop {
                let why = orderer.stream(store.clone(), tx.clone()).await;
                if !why.starts_with(COMPACTED) {
                    l2.halt(why);
                    return;
                }
                // Never skip ahead: fetch the missing blocks from peers and verify them.
                let (reply, answer) = oneshot::channel();
                if tx.send(Feed::CatchUp(reply)).await.is_err() {
                    return;
                }
                let failed = match answer.await {
                    Ok(Ok(n)) if n > 0 => {
                        l2.set_behind(None);
                        tracing::info!(blocks = n, "caught up from peer gateways; following the ordered stream again");
                        continue;
                    }
                    Ok(Ok(_)) => format!("{why}; no peer had the missing blocks"),
                    Ok(Err(e)) => format!("{why}; catching up from peers failed: {e}"),
                    Err(_) => return,
                };
                // Never skip ahead: wait and try again (a joining hospital's peers serve it
                // blocks once it is admitted; a peer that was down comes back).
                tracing::warn!(reason = %failed, retry_in_s = CATCH_UP_RETRY.as_secs(), "behind the consortium ledger; not ready until caught up");
                l2.set_behind(Some(failed));
                tokio::time::sleep(CATCH_UP_RETRY).await;
            }
        });
        Ok((link, vec![follower, reader]))
    }

}

/// How long a submitted batch may take to come back through the stream.
const LAND_TIMEOUT: Duration = Duration::from_secs(15);

impl Orderer for EtcdLink {
    /// The next number after this gateway's last valid batch on the ordered chain.
    fn next_seq(&self, chain: &ChainStore, gateway: &str) -> Result<u64, StoreError> {
        Ok(chain.state()?.last_seq(gateway) + 1)
    }

    fn admit(&self, chain: &ChainStore, gateway: &str, key_version: u32, spki: &[u8]) -> Result<(), StoreError> {
        if let Some(why) = self.halted() {
            return Err(StoreError::Order(format!("the consortium ledger is halted ({why}); entries stay in the outbox")));
        }
        let roster = chain.roster()?;
        let Some(me) = roster.as_ref().and_then(|r| r.get(gateway)) else {
            return Err(StoreError::Order(format!(
                "{gateway} is not a current member of the consortium (not yet admitted, or removed); entries stay in the outbox"
            )));
        };
        // A batch signed by a key version the consortium has not admitted is flagged invalid
        // everywhere: say so here instead of filling the chain with them.
        if me.ledger_key(key_version).as_deref() != Some(spki) {
            let admitted: Vec<String> = me.ledger_keys.keys().map(|v| format!("v{v}")).collect();
            return Err(StoreError::Order(format!(
                "this hospital's ledger key v{key_version} is not the one the consortium admitted ({}); another member must propose `medgate consortium propose --update` with a member card for v{key_version}; entries stay in the outbox",
                if admitted.is_empty() { "none".to_owned() } else { admitted.join(", ") },
            )));
        }
        Ok(())
    }

    fn order<'a>(&'a self, chain: &'a ChainStore, batch: Batch) -> BoxFuture<'a, Result<Ordered, StoreError>> {
        Box::pin(async move {
            let (hash, seq) = (batch.hash(), batch.seq);
            self.orderer.submit(&batch).await.map_err(StoreError::Order)?;
            self.landing(chain, hash, seq).await
        })
    }

    fn submit(self: Arc<Self>, chain: ChainStore, batch: Batch) -> BoxFuture<'static, Result<Landing, StoreError>> {
        Box::pin(async move {
            let (hash, seq) = (batch.hash(), batch.seq);
            self.orderer.submit(&batch).await.map_err(StoreError::Order)?;
            Ok(Box::pin(async move { self.landing(&chain, hash, seq).await }) as Landing)
        })
    }
}

impl EtcdLink {
    /// Waits for this gateway's batch `hash` (sequence number `seq`) to land in a block.
    async fn landing(&self, chain: &ChainStore, hash: [u8; 32], seq: u64) -> Result<Ordered, StoreError> {
        let (height, valid) = self.landed.wait(hash, LAND_TIMEOUT).await.ok_or_else(|| {
            StoreError::Order("the ordering service took the batch but it was not seen in a block in time; its entries stay in the outbox".into())
        })?;
        if !valid {
            return Err(StoreError::Order(format!("batch {seq} was flagged invalid in block {height}; its entries stay in the outbox")));
        }
        let block = chain.block(height)?.ok_or_else(|| StoreError::Storage(format!("block {height} missing")))?;
        let index = block.batches.iter().position(|b| b.hash() == hash).ok_or_else(|| StoreError::Storage(format!("batch not in block {height}")))?;
        Ok(Ordered { block, index })
    }
}

/// Most blocks the follower stores before it flushes and says where they landed.
const BLOCKS_PER_FLUSH: usize = 256;

/// How long blocks that hold no batch of this gateway may wait for their flush. Such a block
/// answers no request here, and after a crash the follower takes it again from the ordered
/// stream (or from a peer), from the position it flushed last: its flush only tells the commit
/// listeners (the audit export) a little later. A block with a batch of this gateway is flushed
/// at once, with any waiting before it.
const FOREIGN_FLUSH_DELAY: Duration = Duration::from_millis(100);

/// Cuts a block for every batch of the ordered stream (revision, batch bytes), in order, and
/// stores it. Batches that arrived together are stored block by block (each cut against the
/// state the previous one left) and flushed once; only then does the writer hear where its
/// batches landed. Blocks of other gateways' batches alone wait up to [`FOREIGN_FLUSH_DELAY`]
/// for a flush they share. Revisions at or below the stored chain's position are skipped, so
/// the stream may be replayed from any earlier point after a reconnection.
pub async fn follow(store: ChainStore, me: String, mut rx: mpsc::Receiver<Feed>, link: Arc<EtcdLink>, events: Arc<dyn Events>) -> Result<(), StoreError> {
    let landed = link.landed.clone();
    let mut state = store.state()?;
    // Stored and not yet flushed, oldest first, and when the oldest must be flushed by.
    let mut stored: Vec<Block> = Vec::new();
    let mut flush_by: Option<tokio::time::Instant> = None;
    loop {
        let first = match flush_by {
            None => rx.recv().await,
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(feed) => feed,
                Err(_) => {
                    settle(&store, &me, &landed, std::mem::take(&mut stored)).await?;
                    flush_by = None;
                    continue;
                }
            },
        };
        let Some(first) = first else { break };
        let mut ours = false;
        let mut next_feed = Some(first);
        while let Some(feed) = next_feed.take() {
            match feed {
                Feed::Batch(revision, bytes) => {
                    if let Some(block) = follow_one(&store, &me, &mut state, revision, &bytes, events.as_ref())? {
                        ours |= block.batches.iter().any(|b| b.gateway == me);
                        stored.push(block);
                    }
                }
                Feed::CatchUp(reply) => {
                    settle(&store, &me, &landed, std::mem::take(&mut stored)).await?;
                    flush_by = None;
                    let peers = link.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let r = match peers {
                        None => Err("no peer gateways are configured".to_owned()),
                        Some(p) => catch_up(&store, &me, &mut state, p.as_ref(), &landed).await,
                    };
                    let _ = reply.send(r);
                }
            }
            if stored.len() < BLOCKS_PER_FLUSH {
                next_feed = rx.try_recv().ok();
            }
        }
        if ours || stored.len() >= BLOCKS_PER_FLUSH {
            settle(&store, &me, &landed, std::mem::take(&mut stored)).await?;
            flush_by = None;
        } else if !stored.is_empty() && flush_by.is_none() {
            flush_by = Some(tokio::time::Instant::now() + FOREIGN_FLUSH_DELAY);
        }
    }
    settle(&store, &me, &landed, stored).await?;
    Ok(())
}

/// Flushes the blocks stored since the last flush, then tells the commit listeners of each and
/// the writer where this gateway's batches landed.
async fn settle(store: &ChainStore, me: &str, landed: &Landed, blocks: Vec<Block>) -> Result<(), StoreError> {
    if blocks.is_empty() {
        return Ok(());
    }
    store.db().flush().await?;
    for block in &blocks {
        store.committed(block);
        record_landings(me, landed, block);
    }
    Ok(())
}

/// Cuts and stores (unflushed) the block of one batch of the stream; `None` when the batch is
/// skipped (already on the chain, or undecodable).
fn follow_one(store: &ChainStore, me: &str, state: &mut ChainState, revision: u64, bytes: &[u8], events: &dyn Events) -> Result<Option<Block>, StoreError> {
    if state.order_position().is_some_and(|p| revision <= p) {
        return Ok(None);
    }
    let batch = match Batch::from_bytes(bytes) {
        Ok(b) => b,
        Err(e) => {
            // Not representable in a block; every gateway skips the same bytes.
            tracing::warn!(revision, error = %e, "undecodable batch in the ordered stream skipped");
            events.incr("ledger_undecodable_batches");
            return Ok(None);
        }
    };
    let mut next = state.clone();
    let block = match cut_checked(store, &mut next, revision, vec![batch])? {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(revision, error = %e, "batch could not be cut into a block; skipped");
            return Ok(None);
        }
    };
    if !block.valid[0] {
        events.incr("ledger_invalid_batches");
        // Why, for the operator: the same checks again, against the state before the block.
        let b = &block.batches[0];
        let why = match state.check_batch(b, &|gw: &str, v: u32| store.member_key(gw, v)) {
            Err(e) => format!("{e} (signature, key version not admitted, not a member, or out of sequence)"),
            Ok(()) => "an entry is already on the chain or breaks an entry rule (consent, erasure, membership)".to_owned(),
        };
        tracing::warn!(height = block.height, gateway = %b.gateway, seq = b.seq, reason = %why, "batch flagged invalid");
    }
    apply_block(store, me, &block, next, state)?;
    Ok(Some(block))
}

/// Cuts the block for `batches` at `position` from `state` with the membership and entry rules
/// of the stored chain. The outer error is a store fault (nothing may be decided on it: the
/// follower stops rather than flag a batch differently from the other gateways); the inner one
/// says the batches cannot make a block.
fn cut_checked(store: &ChainStore, state: &mut ChainState, position: u64, batches: Vec<Batch>) -> Result<Result<Block, LedgerError>, StoreError> {
    let fault: std::cell::RefCell<Option<StoreError>> = std::cell::RefCell::new(None);
    let lookup = |gw: &str, v: u32| match store.member_key_checked(gw, v) {
        Ok(k) => k,
        Err(e) => {
            fault.borrow_mut().get_or_insert(e);
            None
        }
    };
    let mut counts = |b: &Batch| match store.batch_counts(b) {
        Ok(v) => v,
        Err(e) => {
            fault.borrow_mut().get_or_insert(e);
            false
        }
    };
    let mut next = state.clone();
    let cut = next.cut(position, batches, &lookup, &mut counts);
    if let Some(e) = fault.into_inner() {
        return Err(e);
    }
    if cut.is_ok() {
        *state = next;
    }
    Ok(cut)
}

/// Stores a checked block with the chain state it leads to (and the ordering position to
/// resume after), unflushed.
fn apply_block(store: &ChainStore, me: &str, block: &Block, next: ChainState, state: &mut ChainState) -> Result<(), StoreError> {
    let meta: &[(&[u8], Vec<u8>)] = &[(b"chain_state", next.to_bytes()), (b"last_revision", block.order_position.to_be_bytes().to_vec())];
    store.apply_with(block, meta, Outboxed::Gateway(me))?;
    *state = next;
    Ok(())
}

/// Tells the writer where this gateway's own batches of a flushed block landed.
fn record_landings(me: &str, landed: &Landed, block: &Block) {
    for (batch, valid) in block.batches.iter().zip(&block.valid) {
        if batch.gateway == me {
            landed.record(batch.hash(), block.height, *valid);
        }
    }
}

/// Stores a checked block, flushed, then tells the writer where this gateway's batches landed.
async fn commit_block(store: &ChainStore, me: &str, landed: &Landed, block: &Block, next: ChainState, state: &mut ChainState) -> Result<(), StoreError> {
    apply_block(store, me, block, next, state)?;
    store.db().flush().await?;
    store.committed(block);
    record_landings(me, landed, block);
    Ok(())
}

/// Fetches the blocks after this gateway's head from peer gateways and stores them after the
/// same checks as blocks read from another gateway: height, link to the head, ordering
/// position, every batch flagged valid verifies with a member's key and is next in its
/// gateway's sequence, and its entries keep the entry rules. Returns the number stored.
async fn catch_up(store: &ChainStore, me: &str, state: &mut ChainState, source: &dyn BlockSource, landed: &Landed) -> Result<usize, String> {
    let mut stored = 0;
    let mut last_error = None;
    for peer in source.sources() {
        let peer = &peer;
        loop {
            let blocks = match source.fetch_blocks(peer, state.next_height()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot fetch blocks from this peer");
                    last_error = Some(e);
                    break;
                }
            };
            if blocks.is_empty() {
                break;
            }
            for block in blocks {
                // The peer's block must be exactly the one this gateway cuts from the same batch
                // at the same position: its validity flags are checked, not trusted.
                if block.batches.len() != 1 {
                    return Err(format!("{peer} sent block {} with {} batches; blocks here hold one batch each", block.height, block.batches.len()));
                }
                if block.height != state.next_height() {
                    return Err(format!("{peer} sent block {} where block {} was expected", block.height, state.next_height()));
                }
                let mut next = state.clone();
                let mine = cut_checked(store, &mut next, block.order_position, block.batches.clone())
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{peer} sent block {} that cannot be cut here: {e}", block.height))?;
                if mine != block {
                    return Err(format!(
                        "{peer} sent block {} that differs from the block this gateway cuts from the same batch (link or validity flag)",
                        block.height
                    ));
                }
                commit_block(store, me, landed, &block, next, state).await.map_err(|e| e.to_string())?;
                stored += 1;
            }
        }
        if stored > 0 {
            tracing::info!(%peer, blocks = stored, height = ?state.height(), "caught up from a peer gateway");
            return Ok(stored);
        }
    }
    match last_error {
        Some(e) if stored == 0 => Err(e),
        _ => Ok(stored),
    }
}
