//! The consortium ledger: every gateway submits its signed batches to the consortium's etcd
//! cluster, and every gateway follows etcd's ordered stream and cuts the same blocks from it.
//!
//! Boundary: [`Link`] is what the ledger writer sees (submit a batch, wait until it is in a
//! block); [`follow`] turns the ordered stream into stored blocks; [`etcd`] talks to etcd.
//! Blocks depend only on stream content (revision and batch bytes) and the genesis member keys,
//! so every gateway that reads the same stream stores byte-identical blocks.
//!
//! Rules applied when cutting (deterministic, from stream content only): a batch counts only if
//! its signature verifies with a member's key, it is next in its gateway's sequence, none of its
//! entries is already on the chain (a resubmitted outbox entry is not recorded twice), and its
//! entries keep the consent rules ([`ChainStore::batch_counts`]).
//! Batches that fail are kept in the block and flagged invalid.

pub mod etcd;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::chain::{ChainError, ChainStore};
use medgate_ledger::Batch;
use crate::metrics::Metrics;

/// Where this gateway's own batches landed: batch hash → (block height, valid).
#[derive(Debug, Default)]
pub struct Landed {
    seen: Mutex<HashMap<[u8; 32], (u64, bool)>>,
    notify: Notify,
}

/// A registration to wait for one batch; take it before submitting so no landing is missed.
#[derive(Debug)]
pub struct Waiter<'a> {
    landed: &'a Landed,
}

impl Landed {
    pub fn waiter(&self) -> Waiter<'_> {
        Waiter { landed: self }
    }

    fn record(&self, hash: [u8; 32], height: u64, valid: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Landings nobody waits for any more (the writer gave up, the outbox took over) must not
        // pile up over the years: only recent ones matter.
        if seen.len() >= 4096 {
            seen.clear();
        }
        seen.insert(hash, (height, valid));
        drop(seen);
        self.notify.notify_waiters();
    }
}

impl Waiter<'_> {
    /// Waits until the batch is in a stored block, at most `timeout`.
    pub async fn wait(self, hash: [u8; 32], timeout: Duration) -> Option<(u64, bool)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.landed.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.landed.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&hash) {
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
    Batch(u64, Vec<u8>),
    CatchUp(oneshot::Sender<Result<usize, String>>),
}

/// The writer's connection to the consortium.
#[derive(Debug)]
pub struct Link {
    pub orderer: etcd::EtcdOrderer,
    pub landed: Arc<Landed>,
    /// The peer gateways, for catching up from their blocks; set once sharing is configured.
    pub peers: Mutex<Option<Arc<crate::peer::Sharing>>>,
    /// Why the ordered stream stopped for good (store failure, fork), if it did.
    pub halted: Mutex<Option<String>>,
    /// Why this gateway is behind and waiting to catch up from its peers, if it is (its resume
    /// point was compacted and no peer gave it the missing blocks yet; retried).
    pub behind: Mutex<Option<String>>,
}

/// How long a gateway that could not catch up from its peers waits before it tries again.
const CATCH_UP_RETRY: Duration = Duration::from_secs(30);

impl Link {
    pub fn behind(&self) -> Option<String> {
        self.behind.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_behind(&self, why: Option<String>) {
        *self.behind.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn halted(&self) -> Option<String> {
        self.halted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn halt(&self, why: String) {
        tracing::error!(reason = %why, "consortium ledger halted: no new blocks until an operator acts");
        *self.halted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Adopts the genesis document (or checks that the ledger copy started from it), connects
    /// to etcd (lazily), and starts the stream reader and the follower. Returns the link and
    /// the two tasks.
    pub async fn start(
        cfg: &crate::config::Consortium,
        me: &str,
        hsm: &Arc<medgate_hsm::Hsm>,
        store: ChainStore,
        outbox: sled::Tree,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Link>, Vec<tokio::task::JoinHandle<()>>), String> {
        let (genesis, hash, bytes) = medgate_ledger::membership::Genesis::read(&cfg.genesis).map_err(|e| format!("consortium.genesis: {e}"))?;
        store.adopt_genesis(&genesis, hash, &bytes).map_err(|e| format!("consortium.genesis ({}): {e}", cfg.genesis.display()))?;
        if !store.is_member(me) {
            tracing::warn!(hospital = %me, genesis = %hex::encode(hash), "this hospital is not a current member: it follows the ledger but submits nothing until a membership change admits it");
        }
        let orderer = etcd::EtcdOrderer::connect(cfg, me, hsm).await?;
        let link = Arc::new(Link { orderer: orderer.clone(), landed: Arc::default(), peers: Mutex::new(None), halted: Mutex::new(None), behind: Mutex::new(None) });
        let (tx, rx) = mpsc::channel(1024);
        let (l1, l2) = (link.clone(), link.clone());
        let follower_store = store.clone();
        let me = me.to_owned();
        let follower = tokio::spawn(async move {
            match follow(follower_store, outbox, me, rx, l1.clone(), metrics).await {
                Ok(()) => {}
                Err(e) => l1.halt(format!("storing blocks failed: {e}")),
            }
        });
        let reader = tokio::spawn(async move {
            loop {
                let why = orderer.stream(store.clone(), tx.clone()).await;
                if !why.starts_with(etcd::COMPACTED) {
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

    pub async fn submit(&self, batch: &Batch) -> Result<u64, String> {
        self.orderer.submit(batch).await
    }

    /// How long a submitted batch may take to come back through the stream.
    pub fn land_timeout(&self) -> Duration {
        Duration::from_secs(15)
    }
}

/// Cuts a block for every batch of the ordered stream (revision, batch bytes), in order, and
/// stores it. Revisions at or below the stored chain's position are skipped, so the stream may
/// be replayed from any earlier point after a reconnection.
pub async fn follow(
    store: ChainStore,
    outbox: sled::Tree,
    me: String,
    mut rx: mpsc::Receiver<Feed>,
    link: Arc<Link>,
    metrics: Arc<Metrics>,
) -> Result<(), ChainError> {
    let landed = link.landed.clone();
    let mut state = store.state()?;
    while let Some(feed) = rx.recv().await {
        let (revision, bytes) = match feed {
            Feed::Batch(r, b) => (r, b),
            Feed::CatchUp(reply) => {
                let peers = link.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let r = match peers {
                    None => Err("no peer gateways are configured".to_owned()),
                    Some(p) => catch_up(&store, &outbox, &me, &mut state, &p, &landed).await,
                };
                let _ = reply.send(r);
                continue;
            }
        };
        if state.order_position().is_some_and(|p| revision <= p) {
            continue;
        }
        let batch = match Batch::from_bytes(&bytes) {
            Ok(b) => b,
            Err(e) => {
                // Not representable in a block; every gateway skips the same bytes.
                tracing::warn!(revision, error = %e, "undecodable batch in the ordered stream skipped");
                metrics.incr("ledger_undecodable_batches");
                continue;
            }
        };
        let mut next = state.clone();
        let block = match cut_checked(&store, &mut next, revision, vec![batch])? {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(revision, error = %e, "batch could not be cut into a block; skipped");
                continue;
            }
        };
        if !block.valid[0] {
            metrics.incr("ledger_invalid_batches");
            // Why, for the operator: the same checks again, against the state before the block.
            let b = &block.batches[0];
            let why = match state.check_batch(b, &|gw: &str, v: u32| store.member_key(gw, v)) {
                Err(e) => format!("{e} (signature, key version not admitted, not a member, or out of sequence)"),
                Ok(()) => "an entry is already on the chain or breaks an entry rule (consent, erasure, membership)".to_owned(),
            };
            tracing::warn!(height = block.height, gateway = %b.gateway, seq = b.seq, reason = %why, "batch flagged invalid");
        }
        commit_block(&store, &outbox, &me, &landed, &block, next, &mut state).await?;
    }
    Ok(())
}

/// Cuts the block for `batches` at `position` from `state` with the membership and entry rules
/// of the stored chain. The outer error is a store fault (nothing may be decided on it: the
/// follower stops rather than flag a batch differently from the other gateways); the inner one
/// says the batches cannot make a block.
fn cut_checked(
    store: &ChainStore,
    state: &mut medgate_ledger::ChainState,
    position: u64,
    batches: Vec<Batch>,
) -> Result<Result<medgate_ledger::Block, medgate_ledger::LedgerError>, ChainError> {
    let fault: std::cell::RefCell<Option<ChainError>> = std::cell::RefCell::new(None);
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
/// resume after), then tells the writer where this gateway's own batches landed.
async fn commit_block(
    store: &ChainStore,
    outbox: &sled::Tree,
    me: &str,
    landed: &Landed,
    block: &medgate_ledger::Block,
    next: medgate_ledger::ChainState,
    state: &mut medgate_ledger::ChainState,
) -> Result<(), ChainError> {
    store
        .persist(block, outbox, &[(b"chain_state", next.to_bytes()), (b"last_revision", block.order_position.to_be_bytes().to_vec())])
        .await?;
    *state = next;
    for (batch, valid) in block.batches.iter().zip(&block.valid) {
        if batch.gateway == me {
            landed.record(batch.hash(), block.height, *valid);
        }
    }
    Ok(())
}

/// Fetches the blocks after this gateway's head from peer gateways and stores them after the
/// same checks as blocks read from another gateway: height, link to the head, ordering
/// position, every batch flagged valid verifies with a member's key and is next in its
/// gateway's sequence, and its entries keep the entry rules. Returns the number stored.
async fn catch_up(
    store: &ChainStore,
    outbox: &sled::Tree,
    me: &str,
    state: &mut medgate_ledger::ChainState,
    sharing: &crate::peer::Sharing,
    landed: &Landed,
) -> Result<usize, String> {
    let mut stored = 0;
    let mut last_error = None;
    for (peer, _) in sharing.other_members().into_iter().filter(|(_, p)| p.address.is_some()) {
        let peer = &peer;
        loop {
            let blocks = match sharing.fetch_blocks(peer, state.next_height()).await {
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
                commit_block(store, outbox, me, landed, &block, next, state).await.map_err(|e| e.to_string())?;
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
