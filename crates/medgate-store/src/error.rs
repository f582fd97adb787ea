//! The store's one error type.

/// Why a store operation failed. `Integrity` means stored bytes were altered: the record is not
/// served. `Corrupt` means a stored value cannot be decoded (it is never read as a default).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused a read, a write or a flush.
    #[error("storage: {0}")]
    Storage(String),
    /// The system's random source failed: no id can be made that is surely unique.
    #[error("the system's random source failed ({0}); no record id was made and nothing was stored")]
    Random(String),
    /// A record failed its integrity check.
    #[error("record {0} failed its integrity check (ciphertext, wrapped key or metadata altered)")]
    Integrity(String),
    /// The HSM refused or failed.
    #[error(transparent)]
    Hsm(#[from] medgate_hsm::HsmError),
    /// A stored value cannot be decoded, or a value cannot be encoded for storage.
    #[error("stored {what} cannot be decoded: {reason}")]
    Corrupt {
        /// What was read (a tree and key, a record id).
        what: String,
        /// Why.
        reason: String,
    },
    /// A ledger item is malformed or does not verify.
    #[error("ledger format: {0}")]
    Format(String),
    /// The ordering service did not place the batch (the entries stay in the outbox).
    #[error("ordering: {0}")]
    Order(String),
    /// The state directory holds another hospital's ledger copy.
    #[error("the state directory holds the ledger of hospital {stored:?}, but gateway.hospital_id is {configured:?}. A hospital id cannot change: every ledger entry names its custodian, and the consortium knows this gateway by that id. Set gateway.hospital_id = {stored:?} again, or start {configured:?} on a new, empty state_directory")]
    WrongHospital {
        /// The hospital the copy belongs to.
        stored: String,
        /// The configured one.
        configured: String,
    },
    /// The stored state does not allow the change asked (a record already superseded, erased,
    /// or held by another hospital); nothing was written.
    #[error("refused by the stored state: {0}")]
    Conflict(String),
    /// The ledger writer task has stopped.
    #[error("the ledger writer has stopped")]
    Stopped,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

impl StoreError {
    /// A value that could not be encoded or decoded.
    pub fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { what: what.into(), reason: reason.to_string() }
    }
}

/// Serialises a value for storage; a value that cannot be serialised is an error, never empty.
pub(crate) fn to_json(what: &str, v: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::corrupt(what, e))
}

/// A big-endian u64 counter as stored; any other length is corrupt, never 0.
pub(crate) fn read_u64(what: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes).map(u64::from_be_bytes).map_err(|_| StoreError::corrupt(what, format!("{} bytes where a counter has 8", bytes.len())))
}
