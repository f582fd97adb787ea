//! How a signed batch gets its place in the total order, behind one trait: [`Orderer`].
//! Two implementations: the in-process [`sequencer::Sequencer`] (standalone, no etcd) and the
//! consortium's etcd link ([`link::EtcdLink`], with its client in [`etcd`]).
//!
//! Boundary: an orderer takes a batch the writer signed and checked, and returns the stored
//! block that holds it. The layers above reach it only through this trait, and give it what it
//! needs from them as traits too ([`Events`], [`BlockSource`]).

pub mod etcd;
pub mod link;
pub mod sequencer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use medgate_ledger::{Batch, Block};

use crate::{ChainStore, Sequencer, StoreError};

/// A boxed future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A batch's place on the chain: the stored block that holds it, and its index there.
#[derive(Debug, Clone)]
pub struct Ordered {
    /// The block, as stored.
    pub block: Block,
    /// The batch's index in the block.
    pub index: usize,
}

/// Where a submitted batch lands: resolves once the block holding it is stored and flushed.
pub type Landing = BoxFuture<'static, Result<Ordered, StoreError>>;

/// Places this gateway's signed batches in the total order.
pub trait Orderer: Send + Sync + std::fmt::Debug + 'static {
    /// The sequence number this gateway's next batch carries.
    fn next_seq(&self, chain: &ChainStore, gateway: &str) -> Result<u64, StoreError>;

    /// Whether a batch signed with ledger key `key_version` (`spki`) may be submitted now; the
    /// refusal says why (the entries stay in the outbox).
    fn admit(&self, chain: &ChainStore, gateway: &str, key_version: u32, spki: &[u8]) -> Result<(), StoreError>;

    /// Orders a signed, verified batch; answers once the block holding it is stored and flushed.
    fn order<'a>(&'a self, chain: &'a ChainStore, batch: Batch) -> BoxFuture<'a, Result<Ordered, StoreError>>;

    /// Submits a signed, verified batch and answers once the ordering service holds it, with
    /// its [`Landing`]. Batches submitted one after another land in that order, so the writer
    /// may submit the next one before the previous has landed (several batches in flight).
    /// Without an override: [`Orderer::order`], the landing already there.
    fn submit(self: Arc<Self>, chain: ChainStore, batch: Batch) -> BoxFuture<'static, Result<Landing, StoreError>> {
        Box::pin(async move {
            let ordered = self.order(&chain, batch).await?;
            Ok(Box::pin(async move { Ok(ordered) }) as Landing)
        })
    }

    /// The in-process sequencer, when this orderer is one: the writer then stores each group's
    /// records, entries and block in one transaction and one flush (group commit).
    fn sequencer(&self) -> Option<Sequencer> {
        None
    }
}

/// Signs ledger batches: the HSM's ledger key in the gateway ([`medgate_hsm::Hsm`] implements
/// it), an in-memory key in tests. Blocking: the writer calls it on the blocking pool.
pub trait LedgerSigner: Send + Sync + std::fmt::Debug {
    /// Signs `message` (ECDSA P-256 over its SHA-256) with the active ledger key: (key version,
    /// raw `r || s`).
    fn sign(&self, message: &[u8]) -> Result<(u32, Vec<u8>), StoreError>;

    /// The SubjectPublicKeyInfo DER of ledger key `version`.
    fn public_key(&self, version: u32) -> Result<Vec<u8>, StoreError>;
}

impl LedgerSigner for medgate_hsm::Hsm {
    fn sign(&self, message: &[u8]) -> Result<(u32, Vec<u8>), StoreError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        let sig = medgate_hsm::Hsm::sign_digest(self, medgate_hsm::Role::Ledger, &digest)?;
        Ok((sig.key_version, sig.raw))
    }

    fn public_key(&self, version: u32) -> Result<Vec<u8>, StoreError> {
        Ok(self.public_key_der(medgate_hsm::Role::Ledger, Some(version))?.1)
    }
}

/// Counters and timings the store reports to whoever keeps the gateway's metrics.
pub trait Events: Send + Sync + std::fmt::Debug {
    /// Counts one event named `name` (`ledger_batches`, `ledger_invalid_batches`, ...).
    fn incr(&self, name: &str);

    /// Times one step of the ledger writer, once per batch or flush, whatever its outcome (a
    /// slow failure is as slow as a slow success): `sign` (the batch's HSM signature and the
    /// writer's check of it), `submit` (until the ordering service holds the batch: etcd's
    /// transaction; for an orderer without its own [`Orderer::submit`], the whole of
    /// [`Orderer::order`]), `flush` (the store's flush that makes a group durable).
    fn writer_step(&self, step: &str, elapsed: std::time::Duration);
}

/// Where a gateway whose ordered stream was compacted away gets the missing blocks: the other
/// members' gateways (their peer listeners). Blocks fetched are checked here, never trusted.
pub trait BlockSource: Send + Sync + std::fmt::Debug {
    /// The members to ask, in order.
    fn sources(&self) -> Vec<String>;

    /// Blocks of `peer`'s chain from height `from` on (a bounded number; empty when it has
    /// none that high).
    fn fetch_blocks<'a>(&'a self, peer: &'a str, from: u64) -> BoxFuture<'a, Result<Vec<Block>, String>>;
}
