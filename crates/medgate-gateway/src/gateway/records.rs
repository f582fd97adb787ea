//! Records: store (ITI-65), read the metadata and erase, with the idempotency and
//! conditional-create rules that keep a retrying HIS from storing twice. What a submission does
//! besides storing records (its SubmissionSet, replacements, its answer) is in `provide`.

use medgate_fhir::{document_reference_resource, DocumentSubmission, StoredDocument, Submission};
use medgate_ledger::{Entry, EntryBody, Receipt};
use medgate_store::writer::Preparing;
use medgate_store::vault::{self, Claim, Held, IdemState, ListHeader, SealedList, SealedMeta, StoredList, StoredRecord, Vault, Write};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::provide::{Known, ListJob};
use super::{in_flight, retrieve, Caller, Created, Gateway};
use crate::GatewayError;

/// A document to seal, with everything `vault::seal_record` takes, owned: the blocking task
/// that seals it outlives the request's borrow.
pub(super) struct RecordJob {
    pub id: String,
    created: String,
    pseudonym: String,
    pv: u32,
    content_type: String,
    /// The document's bytes, wiped once sealed.
    data: zeroize::Zeroizing<Vec<u8>>,
    /// Their hex SHA-256, as the record's ledger entry anchors it.
    content_hash: String,
    meta: SealedMeta,
    entry_id: String,
}

impl Gateway {
    /// Stores documents: validates nothing more (the FHIR layer did), encrypts each under a fresh
    /// data key, stores everything durably, then anchors on the ledger.
    ///
    /// `idempotency_key`: the client's `Idempotency-Key`; the same key from the same HIS returns
    /// the first answer. Each document's `masterIdentifier` is a conditional-create key too.
    /// The answer has one entry per request entry (see `provide`); `represent` puts the
    /// created DocumentReferences and List in it (`Prefer: return=representation`). `slot`: the
    /// request's place among the submissions prepared at once (given back when dropped), held
    /// until its documents are sealed, not while it waits for the group commit.
    pub async fn create(&self, caller: &Caller, sub: Submission, idempotency_key: Option<&str>, represent: bool, slot: Option<Box<dyn Send>>) -> Result<Created, GatewayError> {
        if !caller.client.may_write() {
            return Err(GatewayError::Forbidden(format!("certificate role {:?} may not store records", caller.client.role)));
        }
        // The writer's group being gathered may wait for this request (see
        // `medgate_store::writer::PREPARING_WAIT`) until it is handed over or fails: from here,
        // not only once its claims are made, which wait while a group commit holds the store.
        let preparing = self.ledger.preparing();
        let request_key = idempotency_key.map(|k| Vault::idem_key(&format!("request\n{}", caller.client.system), k));
        // Held until this request has answered or failed (it runs to its end even when its
        // client goes away, see `Writes`); what it committed under the key answers the retries.
        let held = match &request_key {
            None => None,
            Some(k) => match self.claim(k).await? {
                Claim::New(held) => Some(held),
                Claim::InFlight => return Err(in_flight()),
                Claim::Existing(state) => {
                    // Answered from what is stored: nothing for the writer to wait for.
                    drop(preparing);
                    return self.replay_create(state, represent).await;
                }
            },
        };
        self.create_claimed(caller, sub, held, represent, (slot, preparing)).await
    }

    /// `request`: the request's claimed Idempotency-Key, given back once its answer is kept.
    async fn create_claimed(
        &self,
        caller: &Caller,
        mut sub: Submission,
        request: Option<Held>,
        represent: bool,
        (slot, preparing): (Option<Box<dyn Send>>, Preparing),
    ) -> Result<Created, GatewayError> {
        // Conditional create: a masterIdentifier already stored for this hospital answers with the
        // earlier submission (the same one) or a conflict (another one).
        // Claims are given back when `master_keys` is dropped, whatever happens below.
        let mut master_keys: Vec<Option<Held>> = Vec::new();
        for (k, d) in sub.documents.iter().enumerate() {
            if let Some((system, value)) = &d.master_identifier {
                let key = Vault::idem_key("master", &format!("{system}|{value}"));
                match self.claim(&key).await? {
                    Claim::New(held) => master_keys.push(Some(held)),
                    Claim::Existing(state) => {
                        drop(preparing);
                        return self.repeated_submission(state, &sub, k, represent).await;
                    }
                    Claim::InFlight => {
                        return Err(GatewayError::InFlight(
                            "a document with this masterIdentifier is being stored by another request; retry in a second".into(),
                        ));
                    }
                }
            } else {
                master_keys.push(None);
            }
        }
        let replaced = self.check_relations(&sub).await?;
        // From the data-key wrap until the record is stored: a shred pass must not rotate the KEK
        // and destroy the old version in between.
        let sealing = self.shred.sealing().await;
        let (jobs, mut entries) = self.record_jobs(caller, &sub.documents).await?;
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let (mut extras, list_job) = self.prepare_extras(caller, &mut sub, &ids, &replaced).await?;
        let (records, list) = self.seal(jobs, list_job).await?;
        drop(slot);
        extras.list = list;
        entries.extend(extras.entries.iter().cloned());
        let items = Self::answer_items(&sub, &records, &extras);
        let write = Self::write(records, &extras, &items, request.as_ref().map(Held::key), &master_keys);
        // Records, list, status changes, idempotency states and ledger entries reach the disk
        // together, in one group commit with other requests' (see `medgate_store::writer`);
        // `None`: stored, the entries wait in the outbox.
        // The writer keeps the keys claimed until it answers the deposit, even if this request
        // is dropped before it hears: a retry waits, then finds the records.
        let holds = request.iter().chain(master_keys.iter().flatten()).cloned().collect();
        let receipts = preparing.deposit(&write, entries, holds).await?;
        drop(sealing);
        self.metrics.incr("records_stored");
        let known = Self::known(sub, write, extras, receipts);
        let created = self.answer(&items, &known, false, represent).await?;
        if let Some(held) = request {
            if created.status == 201 {
                self.finish(held, created.status, items).await?;
            }
        }
        Ok(created)
    }

    /// Everything a create writes in one transaction besides its ledger entries (the writer
    /// puts those in the block, or in the outbox): records, list, status changes, and under the
    /// request's key and each masterIdentifier the answer's ids.
    fn write(records: Vec<StoredRecord>, extras: &super::provide::Extras, items: &[vault::AnswerItem], request_key: Option<&[u8]>, master_keys: &[Option<Held>]) -> Write {
        let committed = IdemState::Committed { items: items.to_vec() };
        let keys = request_key.into_iter().chain(master_keys.iter().flatten().map(Held::key));
        let idem = keys.map(|k| (k.to_vec(), committed.clone())).collect();
        Write { records, lists: extras.list.iter().map(|(l, _)| l.clone()).collect(), changes: extras.changes.clone(), outbox: Vec::new(), idem }
    }

    /// What the request still holds in plaintext, for its first answer.
    fn known(sub: Submission, write: Write, extras: super::provide::Extras, receipts: Option<Vec<Receipt>>) -> Known {
        let mut known = Known::default();
        for (mut d, r) in sub.documents.into_iter().zip(write.records) {
            known.references.insert(r.id.clone(), std::mem::take(&mut d.document_reference));
            known.records.insert(r.id.clone(), r);
        }
        if let Some((l, sealed)) = extras.list {
            known.lists.insert(l.id.clone(), (l, sealed));
        }
        known.receipts(receipts);
        known
    }

    /// What sealing each document takes (its id, metadata and bytes), and its ledger entry.
    pub(super) async fn record_jobs(&self, caller: &Caller, docs: &[DocumentSubmission]) -> Result<(Vec<RecordJob>, Vec<Entry>), GatewayError> {
        let user = self.user_pseudonym(caller).await?;
        let created = crate::clock::now_rfc3339();
        let mut jobs = Vec::with_capacity(docs.len());
        let mut entries = Vec::with_capacity(docs.len());
        for d in docs {
            let (pv, pseudonym) = self.patient_pseudonym(&d.patient).await?;
            let id = vault::new_id()?;
            let meta = SealedMeta {
                patient_system: d.patient.system.clone(),
                patient_value: d.patient.value.clone(),
                document_reference: d.document_reference.clone(),
                master_identifier: d.master_identifier.clone(),
            };
            let content_hash = hex::encode(Sha256::digest(&d.data));
            let entry = self.entry(EntryBody::RecordAnchored {
                record_id: id.clone(),
                patient: pseudonym.clone(),
                pseudonym_key_version: pv,
                content_hash: content_hash.clone(),
                content_type: fhir_mime_essence(&d.content_type),
                size: d.data.len() as u64,
                custodian: self.hospital.clone(),
                user: user.clone(),
                role: caller.role.clone(),
                purpose: caller.purpose.clone(),
            });
            // Made by Entry::new just now: its id is the hash of its content by construction.
            entry.validate_fields().map_err(GatewayError::internal)?;
            let data = zeroize::Zeroizing::new(d.data.clone());
            jobs.push(RecordJob { id, created: created.clone(), pseudonym, pv, content_type: d.content_type.clone(), data, content_hash, meta, entry_id: entry.id.clone() });
            entries.push(entry);
        }
        Ok((jobs, entries))
    }

    /// Encrypts each document and the SubmissionSet under fresh data keys (one HSM wrap each),
    /// on one blocking thread: one hand-over for the whole submission.
    async fn seal(&self, jobs: Vec<RecordJob>, list: Option<ListJob>) -> Result<(Vec<StoredRecord>, Option<(StoredList, SealedList)>), GatewayError> {
        let (hsm, hospital) = (self.hsm.clone(), self.hospital.clone());
        super::blocking(move || -> Result<_, medgate_store::StoreError> {
            let records = jobs
                .iter()
                .map(|j| vault::seal_record(&hsm, &j.id, &j.created, &hospital, (&j.pseudonym, j.pv), &j.content_type, (&j.data, &j.content_hash), &j.meta, &j.entry_id))
                .collect::<Result<Vec<_>, _>>()?;
            let list = match list {
                None => None,
                Some(l) => {
                    let h = ListHeader { id: &l.id, created: &l.created, custodian: &hospital, pseudonym: (&l.pseudonym, l.pv), code: "submissionset", record_ids: &l.record_ids, entry_id: &l.entry_id };
                    Some((vault::seal_list(&hsm, &h, &l.content)?, l.content))
                }
            };
            Ok((records, list))
        })
        .await
    }

    /// The DocumentReference of `rec` as it stands: its status (`current`, `superseded`,
    /// `entered-in-error`), `meta.versionId` and `meta.lastUpdated` as its custodian last changed
    /// them, the rest as submitted; the anchoring receipt as an extension.
    pub(super) fn describe(&self, rec: &StoredRecord, document_reference: &Value, receipt: Option<&Receipt>) -> Value {
        let receipt = receipt.map(Receipt::to_json);
        self.describe_at(rec, document_reference, receipt.as_ref(), rec.version())
    }

    /// What the HIS sent, with the server's id, attachment url and size, and the receipt.
    pub(super) fn describe_plain(&self, rec: &StoredRecord, document_reference: &Value, receipt: Option<&Value>) -> Value {
        document_reference_resource(&StoredDocument {
            id: &rec.id,
            document_reference,
            created: &rec.created,
            size: rec.size,
            content_hash: &rec.content_hash,
            custodian: &rec.custodian,
            receipt,
        })
    }

    pub(super) fn read_entry(&self, caller: &Caller, user: &str, rec: &StoredRecord, reason: Option<&str>) -> Entry {
        self.entry(EntryBody::RecordRead {
            record_id: rec.id.clone(),
            patient: rec.patient_pseudonym.clone(),
            custodian: rec.custodian.clone(),
            reader: self.hospital.clone(),
            user: user.to_owned(),
            role: caller.role.clone(),
            purpose: caller.purpose.clone(),
            granted: true,
            reason: reason.map(str::to_owned),
        })
    }

    pub(super) fn stored(&self, id: &str) -> Result<StoredRecord, GatewayError> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(retrieve::no_record(id));
        }
        let rec = self.vault.get(id).map_err(GatewayError::from)?.ok_or_else(|| retrieve::no_record(id))?;
        if rec.erased.is_some() {
            return Err(retrieve::erased(id));
        }
        Ok(rec)
    }

    /// `DELETE /DocumentReference/{id}` by the custodian's HIS: crypto-shredding. The record's
    /// wrapped data key, ciphertext and sealed metadata leave the vault in the transaction that
    /// queues the signed erasure entry; the hash stays on the ledger. Erasing again answers the same.
    /// The shred pass that follows makes older copies of the store (backups) unreadable too.
    pub async fn erase(&self, caller: &Caller, id: &str) -> Result<(), GatewayError> {
        if !caller.client.may_write() {
            return Err(GatewayError::Forbidden(format!("certificate role {:?} may not erase records", caller.client.role)));
        }
        let rec = match self.stored(id) {
            Err(GatewayError::Gone(_)) => return Ok(()),
            Err(GatewayError::NotFound(m)) if self.remote_record(id)?.is_some() => {
                return Err(GatewayError::Forbidden(format!("{m}: only the custodian hospital may erase a record")))
            }
            other => other?,
        };
        let user = self.user_pseudonym(caller).await?;
        let entry = self.entry(EntryBody::RecordErased {
            record_id: rec.id.clone(),
            patient: rec.patient_pseudonym.clone(),
            custodian: self.hospital.clone(),
            user,
            role: caller.role.clone(),
        });
        entry.validate().map_err(GatewayError::internal)?;
        self.vault.erase(&rec, &entry).await.map_err(GatewayError::from)?;
        self.shred.request();
        tracing::info!(record = %rec.id, entry = %entry.id, "record erased (crypto-shredded)");
        self.metrics.incr("records_erased");
        if let Err(e) = self.ledger.append(vec![entry]).await {
            tracing::warn!(error = %e, "erasure entry waits in the outbox");
        }
        Ok(())
    }

    /// `GET /DocumentReference/{id}`: the metadata (decrypted), recorded as a read.
    pub async fn read_reference(&self, caller: &Caller, id: &str) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let id = id.to_owned();
        // The record and its anchoring receipt, off the runtime threads, as for a Binary (see
        // `Gateway::locate`).
        let (rec, receipt) = self
            .off_runtime(move |g| {
                let rec = g.stored(&id)?;
                let receipt = g.ledger.store.receipt(&rec.entry_id).map_err(GatewayError::internal)?;
                Ok((rec, receipt))
            })
            .await?;
        let user = self.user_pseudonym(caller).await?;
        let open = self.open(rec, false).await?;
        self.record_access(vec![self.read_entry(caller, &user, &open.record, Some("metadata"))]).await?;
        Ok(self.describe(&open.record, &open.meta.document_reference, receipt.as_ref()))
    }

    /// The anchoring entry of a record another member holds, if the ledger knows one.
    pub(super) fn remote_record(&self, id: &str) -> Result<Option<Entry>, GatewayError> {
        if self.sharing.is_none() || id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let entry = self.ledger.store.anchored(id).map_err(GatewayError::internal)?;
        Ok(entry.filter(|e| matches!(&e.body, EntryBody::RecordAnchored { custodian, .. } if *custodian != self.hospital)))
    }
}

/// `type/subtype` of a MIME type, lowercased (parameters dropped), as the ledger records it.
fn fhir_mime_essence(ct: &str) -> String {
    ct.split(';').next().unwrap_or(ct).trim().to_ascii_lowercase()
}
