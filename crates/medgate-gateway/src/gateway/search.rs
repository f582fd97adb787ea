//! Searches: a patient's DocumentReferences (ITI-67), found through the patient's pseudonym in
//! this vault and, in consortium mode, on the ledger; each search is one ledger entry.

use medgate_fhir::{document_reference_resource, searchset, PatientId, StoredDocument};
use medgate_ledger::EntryBody;
use medgate_store::vault::StoredRecord;
use serde_json::Value;

use super::{Caller, Gateway};
use crate::GatewayError;

impl Gateway {
    /// `GET /DocumentReference?patient=system|value`.
    pub async fn search(&self, caller: &Caller, patient: &PatientId, self_link: &str) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        let user = self.user_pseudonym(caller).await?;
        let records: Vec<StoredRecord> = self.vault.records_for(&pseudonym).map_err(GatewayError::from)?.into_iter().filter(|r| r.erased.is_none()).collect();
        let mut resources = Vec::with_capacity(records.len());
        for rec in records {
            let receipt = self.ledger.store.receipt(&rec.entry_id).map_err(GatewayError::internal)?;
            let open = self.open(rec, false).await?;
            resources.push(self.describe(&open.record, &open.meta.document_reference, receipt.as_ref()));
        }
        // Records other members hold: what the ledger says of them (their metadata stays sealed
        // at the custodian); GET /Binary/{id} fetches them under consent.
        if self.sharing.is_some() {
            let entries = self.ledger.store.entries_for_patient(&pseudonym).map_err(GatewayError::internal)?;
            let erased: std::collections::HashSet<&str> =
                entries.iter().filter(|(e, _)| matches!(e.body, EntryBody::RecordErased { .. })).filter_map(|(e, _)| e.record_id()).collect();
            for (e, _) in entries.iter().filter(|(e, _)| !e.record_id().is_some_and(|r| erased.contains(r))) {
                if let EntryBody::RecordAnchored { record_id, custodian, content_type, content_hash, size, .. } = &e.body {
                    if *custodian == self.hospital {
                        continue;
                    }
                    let reference = serde_json::json!({
                        "resourceType": "DocumentReference",
                        "status": "current",
                        "subject": {"identifier": {"system": patient.system, "value": patient.value}},
                        "content": [{"attachment": {"contentType": content_type}}]
                    });
                    let receipt = self.ledger.store.receipt(&e.id).map_err(GatewayError::internal)?;
                    let receipt = receipt.map(|r| r.to_json());
                    resources.push(document_reference_resource(&StoredDocument {
                        id: record_id,
                        document_reference: &reference,
                        created: &e.time,
                        size: *size,
                        content_hash,
                        custodian,
                        receipt: receipt.as_ref(),
                    }));
                }
            }
        }
        self.record_access(vec![self.entry(EntryBody::PatientSearched {
            patient: pseudonym,
            reader: self.hospital.clone(),
            user,
            role: caller.role.clone(),
            purpose: caller.purpose.clone(),
            results: resources.len() as u32,
        })])
        .await?;
        Ok(searchset(resources, self_link))
    }
}
