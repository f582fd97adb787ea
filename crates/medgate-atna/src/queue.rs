//! The bounded, durable queue that holds syslog messages until the audit repository has taken
//! them, and the ledger position up to which events have been queued.
//!
//! Boundary: a trait, so the store layer may provide another backend; [`file::FileQueue`] is the
//! one this crate ships (append-only segment files with fsync, no database). Messages hold
//! pseudonyms, codes and ids only (see [`crate::dicom`]), never a patient identifier.
//!
//! Thread ownership: a queue is `Send` and used behind one mutex by the exporter; every method
//! may block on disk I/O and is called from a blocking task.

pub mod file;

use thiserror::Error;

use crate::event::Position;

/// One message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Its sequence number: exactly [`Queue::next_seq`] for the first of a batch, then +1 each.
    pub seq: u64,
    /// The ledger position of the event it reports: the queue's cursor moves to it.
    pub position: Position,
    /// The complete SYSLOG-MSG (unframed).
    pub payload: Vec<u8>,
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub seq: u64,
    /// When it was queued, milliseconds since the Unix epoch.
    pub queued_at_ms: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("the audit queue is full ({capacity} messages)")]
    Full { capacity: u64 },
    #[error("audit queue {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("audit queue {path}: {problem}")]
    Corrupt { path: String, problem: String },
    #[error("audit queue: {0}")]
    Invalid(String),
}

/// A bounded FIFO of messages, durable across restarts, with a durable ledger cursor.
///
/// Contract: [`Queue::push`] and [`Queue::ack`] return only once their effect survives a crash
/// (fsync); messages come back from [`Queue::read`] in sequence order, each exactly as pushed;
/// sequence numbers are never reused, also across restarts.
pub trait Queue: Send + std::fmt::Debug {
    /// Appends a batch durably, or nothing: [`QueueError::Full`] when it does not fit.
    fn push(&mut self, batch: &[NewMessage]) -> Result<(), QueueError>;
    /// Up to `max` messages starting at sequence number `from` (or at the oldest, if `from` is
    /// older than that).
    fn read(&mut self, from: u64, max: usize) -> Result<Vec<QueuedMessage>, QueueError>;
    /// Forgets every message up to and including `seq`, durably.
    fn ack(&mut self, seq: u64) -> Result<(), QueueError>;
    /// Number of messages held.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Most messages held at once.
    fn capacity(&self) -> u64;
    /// The sequence number and queue time (ms since the epoch) of the oldest message held.
    fn oldest(&self) -> Option<(u64, u64)>;
    /// The sequence number the next pushed message must have.
    fn next_seq(&self) -> u64;
    /// The ledger position of the last event queued (or passed over), if any.
    fn cursor(&self) -> Option<Position>;
    /// Moves the cursor forward durably without queuing a message (an event passed over, or the
    /// starting point of a fresh queue). A position behind the cursor is ignored.
    fn set_cursor(&mut self, position: Position) -> Result<(), QueueError>;
}
