//! A [`Write`] encoded for a transaction, so that the ledger writer can put many of them, and the
//! blocks that anchor them, in one transaction and one flush (its group commit).
//!
//! Boundary: encoding and the writes inside a transaction; opening the transaction, flushing and
//! deciding what to do with a refused deposit belong to the caller ([`super::Vault::store`], the
//! writer).

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{apply_change, idem, StatusChange, Write};
use crate::error::to_json;
use crate::StoreError;

/// Records and lists with their index rows, status changes to earlier records, idempotency
/// states and ledger entries, encoded for one transaction: what one create makes durable
/// together.
#[derive(Debug, Default, Clone)]
pub struct Deposit {
    /// (record id, patient pseudonym, record bytes).
    records: Vec<(String, String, Vec<u8>)>,
    /// (list id, patient pseudonym, list bytes).
    lists: Vec<(String, String, Vec<u8>)>,
    /// Checked against the stored record inside the transaction.
    changes: Vec<StatusChange>,
    /// (hashed idempotency key, state bytes).
    idem: Vec<(Vec<u8>, Vec<u8>)>,
    /// (entry id, entry bytes) to put in the outbox.
    pub(crate) outbox: Vec<(String, Vec<u8>)>,
}

/// A deposit's trees inside a transaction.
pub(crate) struct DepositViews<'a> {
    records: &'a TransactionalTree,
    by_patient: &'a TransactionalTree,
    lists: &'a TransactionalTree,
    lists_by_patient: &'a TransactionalTree,
    idempotency: &'a TransactionalTree,
    outbox: &'a TransactionalTree,
}

impl<'a> DepositViews<'a> {
    /// The views of the trees [`super::Vault::deposit_trees`] lists (in that order), and of the
    /// outbox.
    pub(crate) fn of(t: &'a [TransactionalTree], outbox: &'a TransactionalTree) -> DepositViews<'a> {
        DepositViews { records: &t[0], by_patient: &t[1], lists: &t[2], lists_by_patient: &t[3], idempotency: &t[4], outbox }
    }
}

/// Why deposits were not written. Nothing of the transaction was.
#[derive(Debug)]
pub(crate) enum DepositError {
    /// The deposit at `index` cannot be written ([`StoreError::Conflict`]: the stored state
    /// refuses one of its status changes); the others may be written without it.
    Refused { index: usize, error: StoreError },
    /// The store failed.
    Store(StoreError),
}

impl DepositError {
    /// The store's error, whichever deposit it concerns.
    pub(crate) fn into_store(self) -> StoreError {
        match self {
            DepositError::Refused { error, .. } | DepositError::Store(error) => error,
        }
    }

    pub(crate) fn from_transaction(e: TransactionError<DepositError>) -> DepositError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => DepositError::Store(e.into()),
        }
    }
}

/// A store fault inside a transaction that writes deposits (it concerns none of them).
pub(crate) fn store_fault(e: ConflictableTransactionError<StoreError>) -> ConflictableTransactionError<DepositError> {
    match e {
        ConflictableTransactionError::Abort(e) => ConflictableTransactionError::Abort(DepositError::Store(e)),
        ConflictableTransactionError::Conflict => ConflictableTransactionError::Conflict,
        ConflictableTransactionError::Storage(e) => ConflictableTransactionError::Storage(e),
    }
}

/// Writes `deposits` (each with its index, which names it in a refusal) in order.
pub(crate) fn write_all<'d>(v: &DepositViews<'_>, deposits: impl IntoIterator<Item = (usize, &'d Deposit)>) -> Result<(), ConflictableTransactionError<DepositError>> {
    for (index, d) in deposits {
        d.write(v).map_err(|e| match e {
            ConflictableTransactionError::Abort(error) => ConflictableTransactionError::Abort(DepositError::Refused { index, error }),
            other => store_fault(other),
        })?;
    }
    Ok(())
}

impl Deposit {
    /// Encodes `w` (its idempotency states are checked: ids and codes only).
    pub fn encode(w: &Write) -> Result<Deposit, StoreError> {
        for (_, state) in &w.idem {
            idem::check_state(state)?;
        }
        Ok(Deposit {
            records: w.records.iter().map(|r| Ok((r.id.clone(), r.patient_pseudonym.clone(), to_json("record", r)?))).collect::<Result<_, StoreError>>()?,
            lists: w.lists.iter().map(|l| Ok((l.id.clone(), l.patient_pseudonym.clone(), to_json("list", l)?))).collect::<Result<_, StoreError>>()?,
            changes: w.changes.clone(),
            idem: w.idem.iter().map(|(k, state)| Ok((k.clone(), to_json("idempotency state", state)?))).collect::<Result<_, StoreError>>()?,
            outbox: w.outbox.clone(),
        })
    }

    /// The same deposit, carrying `outbox` entries instead of its own.
    pub(crate) fn with_outbox(&self, outbox: Vec<(String, Vec<u8>)>) -> Deposit {
        Deposit { outbox, ..self.clone() }
    }

    /// Writes records and lists with their index rows, the status changes (each checked against
    /// the record as it stands in the transaction: a refusal aborts with
    /// [`StoreError::Conflict`]), the outbox entries it carries and the idempotency states.
    pub(crate) fn write(&self, v: &DepositViews<'_>) -> Result<(), ConflictableTransactionError<StoreError>> {
        for (id, pseudonym, bytes) in &self.records {
            v.records.insert(id.as_bytes(), bytes.as_slice())?;
            v.by_patient.insert(format!("{pseudonym}/{id}").as_bytes(), &[] as &[u8])?;
        }
        for c in &self.changes {
            let current = v.records.get(c.record_id.as_bytes())?;
            let changed = apply_change(current.as_deref(), c).map_err(ConflictableTransactionError::Abort)?;
            v.records.insert(c.record_id.as_bytes(), changed)?;
        }
        for (id, pseudonym, bytes) in &self.lists {
            v.lists.insert(id.as_bytes(), bytes.as_slice())?;
            v.lists_by_patient.insert(format!("{pseudonym}/{id}").as_bytes(), &[] as &[u8])?;
        }
        for (eid, bytes) in &self.outbox {
            v.outbox.insert(eid.as_bytes(), bytes.as_slice())?;
        }
        for (k, bytes) in &self.idem {
            v.idempotency.insert(k.as_slice(), bytes.as_slice())?;
        }
        Ok(())
    }
}
