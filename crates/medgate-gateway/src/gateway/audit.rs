//! The audit trail: a patient's ledger entries as AuditEvents (searched in `search`), and the
//! officer's key events put on the ledger from the key-event journal.

use medgate_fhir::{AuditAction, AuditRecord};
use medgate_ledger::{Entry, EntryBody};
use serde_json::Value;

use super::Gateway;
use crate::GatewayError;

impl Gateway {
    /// Puts the key-event journal (the security officer's key events, approvals and officer
    /// changes, journalled by `medgate keys` in the state directory, and the shred pass's key
    /// events) on the ledger, in journal order. Each line's entry is derived from the line, so
    /// a line already on the chain is recognised and not appended twice.
    pub async fn anchor_key_events(&self, state_dir: &std::path::Path) -> Result<usize, GatewayError> {
        let lines = crate::journal::read_lines(state_dir).map_err(GatewayError::internal)?;
        let mut todo = Vec::new();
        for line in &lines {
            let entry = crate::journal::entry_for(line, &self.hospital).map_err(GatewayError::internal)?;
            if entry.validate().is_err() {
                tracing::warn!(entry = %entry.id, "key event journal line does not make a valid ledger entry; skipped");
                continue;
            }
            if self.ledger.store.location(&entry.id)?.is_none() {
                todo.push(entry);
            }
        }
        let n = todo.len();
        if n > 0 {
            self.anchor(todo).await?;
        }
        Ok(n)
    }
}

/// The break-glass review list as JSON (what the admin listener serves and `medgate audit
/// break-glass` prints): every read granted without consent, with its block height.
pub fn break_glass_json(list: &[(Entry, u64)]) -> Value {
    let items: Vec<Value> = list
        .iter()
        .filter_map(|(e, height)| match &e.body {
            EntryBody::RecordRead { record_id, custodian, reader, user, role, purpose, .. } => Some(serde_json::json!({
                "time": e.time, "entry": e.id, "height": height, "record": record_id, "custodian": custodian,
                "reader": reader, "user": user, "role": role, "purpose": purpose,
            })),
            _ => None,
        })
        .collect();
    serde_json::json!({"break_glass_reads": items})
}

pub(super) fn audit_record(e: &Entry, height: u64) -> Option<AuditRecord<'_>> {
    let base = |action, granted, reason: Option<&'static str>| AuditRecord {
        entry_id: &e.id,
        height,
        time: &e.time,
        action,
        granted,
        reason,
        record_id: e.record_id(),
        record_type: "DocumentReference",
        patient: e.patient().unwrap_or_default(),
        hospital: &e.gateway,
        user: "",
        role: "",
        purpose: "",
    };
    match &e.body {
        EntryBody::RecordAnchored { user, role, purpose, .. } => {
            Some(AuditRecord { user, role, purpose, ..base(AuditAction::Create, true, None) })
        }
        EntryBody::RecordRead { user, role, purpose, granted, reason, .. } => Some(AuditRecord {
            user,
            role,
            purpose,
            reason: reason.as_deref(),
            // Reads of a SubmissionSet and of the Patient it carried (see `lists`).
            record_type: match reason.as_deref() {
                Some("list") => "List",
                Some("patient") => "Patient",
                _ => "DocumentReference",
            },
            ..base(AuditAction::Read, *granted, None)
        }),
        EntryBody::PatientSearched { user, role, purpose, .. } => {
            Some(AuditRecord { user, role, purpose, ..base(AuditAction::Search, true, None) })
        }
        EntryBody::ConsentRecorded { user, role, grantee, .. } => Some(AuditRecord {
            user,
            role,
            purpose: "PATRQT",
            reason: Some(grantee),
            ..base(AuditAction::ConsentGranted, true, None)
        }),
        EntryBody::ConsentRevoked { user, role, grantee, .. } => Some(AuditRecord {
            user,
            role,
            purpose: "PATRQT",
            reason: Some(grantee),
            ..base(AuditAction::ConsentRevoked, true, None)
        }),
        EntryBody::RecordErased { user, role, .. } => Some(AuditRecord { user, role, purpose: "PATRQT", ..base(AuditAction::Erase, true, None) }),
        EntryBody::ListAnchored { list_id, user, role, purpose, .. } => {
            Some(AuditRecord { user, role, purpose, record_id: Some(list_id), record_type: "List", ..base(AuditAction::Create, true, None) })
        }
        EntryBody::RecordStatusChanged { user, role, status, .. } => Some(AuditRecord {
            user,
            role,
            purpose: "HOPERAT",
            reason: Some(status),
            ..base(AuditAction::StatusChange, true, None)
        }),
        EntryBody::KeyEvent { .. }
        | EntryBody::KeyApproval { .. }
        | EntryBody::OfficerChanged { .. }
        | EntryBody::MembershipProposed { .. }
        | EntryBody::MembershipApproved { .. } => None,
    }
}
