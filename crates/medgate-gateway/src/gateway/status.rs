//! A record's status changed by its custodian outside a submission: `PATCH
//! /DocumentReference/{id}` marking it `entered-in-error`. (A replacement supersedes the
//! document it replaces within its ITI-65 submission, see `provide`.) The change is a signed
//! ledger entry with ids and pseudonyms only; the record and its content stay readable by id.
//!
//! A document entered in error is left out of ITI-67 searches: MHD's DocumentReference status
//! value set is `current | superseded` only.

use medgate_ledger::EntryBody;
use medgate_store::vault::{status_change_allowed, RecordChange, StatusChange, Write};
use serde_json::Value;

use super::{Caller, Gateway};
use crate::GatewayError;

impl Gateway {
    /// Sets the status of this hospital's record `id`; answers the DocumentReference as it now
    /// stands. Asking again for the status it has answers the same and records nothing.
    pub async fn change_status(&self, caller: &Caller, id: &str, status: &str) -> Result<Value, GatewayError> {
        if !caller.client.may_write() {
            return Err(GatewayError::Forbidden(format!("certificate role {:?} may not change records", caller.client.role)));
        }
        let rec = match self.stored(id) {
            Err(GatewayError::NotFound(m)) if self.remote_record(id)?.is_some() => {
                return Err(GatewayError::Forbidden(format!("{m}: only the custodian hospital may change a record's status")))
            }
            other => other?,
        };
        if rec.status() != status {
            if !status_change_allowed(rec.status(), status) {
                return Err(GatewayError::Conflict(format!("DocumentReference/{id} is {}; it cannot become {status}", rec.status())));
            }
            if self.ledger.store.location(&rec.entry_id).map_err(GatewayError::internal)?.is_none() {
                return Err(GatewayError::Unavailable(format!("DocumentReference/{id} is not on the ledger yet (its entry waits in the outbox); retry once it is")));
            }
            let entry = self.entry(EntryBody::RecordStatusChanged {
                record_id: rec.id.clone(),
                patient: rec.patient_pseudonym.clone(),
                custodian: self.hospital.clone(),
                status: status.to_owned(),
                replaced_by: None,
                user: self.user_pseudonym(caller).await?,
                role: caller.role.clone(),
            });
            entry.validate().map_err(GatewayError::internal)?;
            let change = RecordChange { status: status.to_owned(), replaced_by: None, time: crate::clock::now_rfc3339(), entry_id: entry.id.clone() };
            let outbox = vec![(entry.id.clone(), serde_json::to_vec(&entry).map_err(GatewayError::internal)?)];
            let write = Write { changes: vec![StatusChange { record_id: rec.id.clone(), custodian: self.hospital.clone(), change }], outbox, ..Write::default() };
            self.vault.store(&write).await?;
            self.metrics.incr("records_status_changed");
            tracing::info!(record = %rec.id, entry = %entry.id, status, "record status changed by its custodian");
            if let Err(e) = self.ledger.append(vec![entry]).await {
                tracing::warn!(error = %e, "status change entry waits in the outbox");
            }
        }
        let rec = self.stored(id)?;
        let open = self.open(rec, false).await?;
        let receipt = self.ledger.store.receipt(&open.record.entry_id).map_err(GatewayError::internal)?;
        Ok(self.describe(&open.record, &open.meta.document_reference, receipt.as_ref()))
    }
}
