//! SubmissionSets: the IHE MHD List each document submission carries, sealed in the vault like a
//! record's metadata and anchored on the ledger with pseudonyms and ids only. Read by id
//! (`GET /List/{id}`), the Patient a submission carried (`GET /Patient/{id}`), and listed per
//! patient, decrypted, for the searches ([`Gateway::submission_sets`]).

use medgate_fhir::{list_resource, patient_resource, PatientId, StoredListView};
use medgate_ledger::EntryBody;
use medgate_store::vault::{self, OpenList, SealedList, StoredList};
use serde_json::Value;

use super::{Caller, Gateway};
use crate::GatewayError;

/// A SubmissionSet this hospital stored, decrypted: what an ITI-66 search filters and returns.
#[derive(Debug, Clone)]
pub struct SubmissionSet {
    /// What the vault keeps in the clear: id, creation time, custodian, patient pseudonym, the
    /// ids of the records the list names (in its order), the anchoring ledger entry.
    pub stored: StoredList,
    /// The List resource as `GET /List/{id}` answers it: as the HIS sent it, with the server's
    /// id, `meta.versionId` and `meta.lastUpdated`, `entry[].item` as `DocumentReference/<id>`,
    /// the patient as a logical reference by identifier when the submission referenced its own
    /// Patient entry, and the ledger receipt as an extension once the entry is in a block.
    pub resource: Value,
}

impl Gateway {
    /// Every SubmissionSet List this hospital stored for `patient`, decrypted (one HSM unwrap
    /// each), oldest first. Records nothing on the ledger: the search that calls it records its
    /// one `PatientSearched` entry, as every search does.
    pub async fn submission_sets(&self, patient: &PatientId) -> Result<Vec<SubmissionSet>, GatewayError> {
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        self.submission_sets_for(&pseudonym).await
    }

    /// [`Gateway::submission_sets`] for a patient pseudonym: the lists looked up, opened and
    /// given their receipts on one blocking thread (the store's reads wait while the ledger
    /// writer's transaction holds sled's lock, and must not stop a runtime thread meanwhile).
    pub async fn submission_sets_for(&self, pseudonym: &str) -> Result<Vec<SubmissionSet>, GatewayError> {
        let pseudonym = pseudonym.to_owned();
        self.off_runtime(move |g| {
            let lists = g.vault.lists_for(&pseudonym).map_err(GatewayError::from)?;
            lists.iter().map(|list| g.submission_set(&vault::open_list_latest(&g.hsm, &g.vault, list).map_err(GatewayError::from)?)).collect()
        })
        .await
    }

    /// The List resource of an opened list, with its receipt.
    pub(super) fn submission_set(&self, open: &OpenList) -> Result<SubmissionSet, GatewayError> {
        let receipt = self.ledger.store.receipt(&open.stored.entry_id).map_err(GatewayError::internal)?.map(|r| r.to_json());
        let resource = self.list_resource(&open.stored, &open.sealed, receipt.as_ref());
        Ok(SubmissionSet { stored: open.stored.clone(), resource })
    }

    /// The List resource of a list whose content is open, with the receipt given.
    pub(super) fn list_resource(&self, stored: &StoredList, sealed: &SealedList, receipt: Option<&Value>) -> Value {
        list_resource(&StoredListView { id: &stored.id, list: &sealed.list, created: &stored.created, receipt })
    }

    pub(super) async fn open_list(&self, list: StoredList) -> Result<OpenList, GatewayError> {
        let (hsm, store) = (self.hsm.clone(), self.vault.clone());
        super::blocking(move || vault::open_list_latest(&hsm, &store, &list)).await
    }

    /// A stored list by id, or 404 (the id is checked before the store is asked).
    pub(super) fn stored_list(&self, id: &str) -> Result<StoredList, GatewayError> {
        let known = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let list = if known { self.vault.get_list(id).map_err(GatewayError::from)? } else { None };
        list.ok_or_else(|| GatewayError::NotFound(format!("no List {}", id.chars().take(64).collect::<String>())))
    }

    /// `GET /List/{id}`: a SubmissionSet, decrypted, recorded on the ledger as a read of the list.
    pub async fn read_list(&self, caller: &Caller, id: &str) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let id = id.to_owned();
        let open = self.open_list(self.off_runtime(move |g| g.stored_list(&id)).await?).await?;
        self.record_list_read(caller, &open.stored, "list").await?;
        Ok(self.submission_set(&open)?.resource)
    }

    /// `GET /Patient/{id}`: the Patient resource a submission carried, kept with its
    /// SubmissionSet under the list's id; recorded on the ledger like a read of the list.
    pub async fn read_patient(&self, caller: &Caller, id: &str) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let wanted = id.to_owned();
        let stored = self.off_runtime(move |g| g.stored_list(&wanted)).await.map_err(|_| GatewayError::NotFound(format!("no Patient {}", id.chars().take(64).collect::<String>())))?;
        let open = self.open_list(stored).await?;
        let Some(patient) = open.sealed.patient_resource.as_ref() else {
            return Err(GatewayError::NotFound(format!("no Patient {id}")));
        };
        self.record_list_read(caller, &open.stored, "patient").await?;
        Ok(patient_resource(&open.stored.id, patient, &open.stored.created))
    }

    async fn record_list_read(&self, caller: &Caller, list: &StoredList, reason: &str) -> Result<(), GatewayError> {
        let user = self.user_pseudonym(caller).await?;
        self.record_access(vec![self.entry(EntryBody::RecordRead {
            record_id: list.id.clone(),
            patient: list.patient_pseudonym.clone(),
            custodian: list.custodian.clone(),
            reader: self.hospital.clone(),
            user,
            role: caller.role.clone(),
            purpose: caller.purpose.clone(),
            granted: true,
            reason: Some(reason.to_owned()),
        })])
        .await
    }
}
