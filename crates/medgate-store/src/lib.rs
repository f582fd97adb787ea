//! medgate-store: everything the gateway keeps on disk and the way its ledger batches get their
//! place in the order. The only crate that names sled.
//!
//! Boundary: one sled database per gateway ([`Db`]), holding the encrypted vault ([`vault`]),
//! the ledger copy with its derived state ([`chain`]), and the outbox between them. Appends go
//! through the ledger writer ([`writer`]), which signs a batch in the HSM and hands it to an
//! [`Orderer`]: the in-process [`Sequencer`] (standalone) or the consortium's etcd link
//! ([`order::link::EtcdLink`]). What the writer needs from above is passed down as a trait
//! ([`Events`] for counters, [`order::BlockSource`] for catching up from peers), never imported.
//! One error type, [`StoreError`].

mod db;
mod error;

pub mod chain;
pub mod commit;
pub mod order;
pub mod vault;
pub mod writer;

pub use chain::{ChainStore, Location};
pub use commit::CommitListener;
pub use db::Db;
pub use error::StoreError;
pub use order::sequencer::Sequencer;
pub use order::{Events, LedgerSigner, Orderer};
pub use writer::{BatchPolicy, Ledger};
