//! Records: store (ITI-65), read the metadata and erase, with the idempotency and
//! conditional-create rules that keep a retrying HIS from storing twice.

use medgate_fhir::{document_reference_resource, transaction_response, DocumentSubmission, StoredDocument};
use medgate_ledger::{Entry, EntryBody, Receipt};
use medgate_store::vault::{self, Claim, IdemState, SealedMeta, StoredRecord, Vault};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{in_flight, Caller, Created, Gateway};
use crate::GatewayError;

impl Gateway {
    /// Stores documents: validates nothing more (the FHIR layer did), encrypts each under a fresh
    /// data key, stores everything durably, then anchors on the ledger.
    ///
    /// `idempotency_key`: the client's `Idempotency-Key`; the same key from the same HIS returns
    /// the first answer. Each submission's `masterIdentifier` is a conditional-create key too.
    pub async fn create(&self, caller: &Caller, docs: Vec<DocumentSubmission>, idempotency_key: Option<&str>) -> Result<Created, GatewayError> {
        if !caller.client.may_write() {
            return Err(GatewayError::Forbidden(format!("certificate role {:?} may not store records", caller.client.role)));
        }
        let request_key = idempotency_key.map(|k| Vault::idem_key(&format!("request\n{}", caller.client.system), k));
        // Held until this request has answered (or failed, or been dropped with its connection);
        // what it committed under the key meanwhile answers the retries.
        let held = match &request_key {
            None => None,
            Some(k) => match self.vault.claim(k)? {
                Claim::New(held) => Some(held),
                Claim::InFlight => return Err(in_flight()),
                Claim::Existing(state) => return self.replay(state, "DocumentReference").await,
            },
        };
        self.create_claimed(caller, docs, held.as_ref().map(|h| h.key())).await
    }

    /// The answer for a request key seen before; `resource` names what a single create made
    /// (`DocumentReference`, `Consent`), for the Location of an answer that is not a Bundle.
    pub(super) async fn replay(&self, state: IdemState, resource: &str) -> Result<Created, GatewayError> {
        match state {
            IdemState::Done { status, body } => {
                self.metrics.incr("idempotent_replays");
                let location = body["entry"][0]["response"]["location"].as_str().map(str::to_owned).or_else(|| {
                    body["id"].as_str().map(|id| format!("{resource}/{id}"))
                });
                Ok(Created { status, body, location })
            }
            // Not returned by a claim (see `Vault::claim`).
            IdemState::Pending { .. } => Err(in_flight()),
            IdemState::Stored { record_ids } => {
                // Stored by an earlier attempt that did not finish answering (crash, or its
                // connection went away): answer now, once what it stored is surely on disk.
                self.vault.sync().await?;
                self.metrics.incr("idempotent_replays");
                let mut created = Vec::new();
                for id in &record_ids {
                    let rec = self.vault.get(id).map_err(GatewayError::from)?.ok_or_else(|| GatewayError::internal(format!("record {id} missing")))?;
                    created.push(rec);
                }
                self.respond(created, None, None).await
            }
        }
    }

    pub(super) async fn create_claimed(&self, caller: &Caller, docs: Vec<DocumentSubmission>, request_key: Option<&[u8]>) -> Result<Created, GatewayError> {
        // The decoded documents are wiped however this ends (sealed, refused or cancelled).
        let mut docs = WipedOnDrop(docs);
        // Conditional create: a masterIdentifier already stored for this hospital answers with the
        // existing record (same content) or a conflict (other content).
        // Claims are given back when `master_keys` is dropped, whatever happens below.
        let mut master_keys = Vec::new();
        for d in &docs.0 {
            if let Some((system, value)) = &d.master_identifier {
                let key = Vault::idem_key("master", &format!("{system}|{value}"));
                match self.vault.claim(&key).map_err(GatewayError::from)? {
                    Claim::New(held) => master_keys.push(Some(held)),
                    Claim::Existing(IdemState::Stored { record_ids }) => return self.existing_master(&record_ids, d).await,
                    Claim::InFlight | Claim::Existing(_) => {
                        return Err(GatewayError::InFlight(
                            "a document with this masterIdentifier is being stored by another request; retry in a second".into(),
                        ));
                    }
                }
            } else {
                master_keys.push(None);
            }
        }
        // From the data-key wrap until the record is stored: a shred pass must not rotate the KEK
        // and destroy the old version in between.
        let sealing = self.shred.sealing().await;
        let stored = self.seal_all(caller, &docs.0).await;
        let (records, entries) = stored?;
        let outbox: Vec<(String, Vec<u8>)> =
            entries.iter().map(|e| Ok((e.id.clone(), serde_json::to_vec(e)?))).collect::<Result<_, serde_json::Error>>().map_err(GatewayError::internal)?;
        let mut idem: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
        if let Some(k) = request_key {
            idem.push((k.to_vec(), records.iter().map(|r| r.id.clone()).collect()));
        }
        for (k, r) in master_keys.iter().zip(&records) {
            if let Some(k) = k {
                idem.push((k.key().to_vec(), vec![r.id.clone()]));
            }
        }
        self.vault.store(&records, &outbox, &idem).await?;
        drop(sealing);
        self.metrics.incr("records_stored");
        let receipts = match self.ledger.append(entries).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), "records stored; their ledger entries wait in the outbox");
                None
            }
        };
        let references = std::mem::take(&mut docs.0)
            .into_iter()
            .map(|mut d| {
                zeroize::Zeroize::zeroize(&mut d.data);
                d.document_reference
            })
            .collect();
        let created = self.respond(records, Some(references), receipts).await?;
        if let Some(k) = request_key {
            if created.status == 201 {
                self.vault.finish(k, created.status, &created.body).map_err(GatewayError::from)?;
            }
        }
        Ok(created)
    }

    pub(super) async fn existing_master(&self, record_ids: &[String], doc: &DocumentSubmission) -> Result<Created, GatewayError> {
        let id = record_ids.first().ok_or_else(|| GatewayError::internal("empty master identifier index"))?;
        self.vault.sync().await?;
        let rec = self.vault.get(id).map_err(GatewayError::from)?.ok_or_else(|| GatewayError::internal(format!("record {id} missing")))?;
        if rec.content_hash != hex::encode(Sha256::digest(&doc.data)) {
            return Err(GatewayError::Conflict(
                "DocumentReference.masterIdentifier is already used by a stored document with other content".into(),
            ));
        }
        self.metrics.incr("conditional_create_hits");
        let mut c = self.respond(vec![rec], None, None).await?;
        c.status = 200;
        Ok(c)
    }

    /// Encrypts each document (one HSM wrap each) and builds its ledger entry.
    pub(super) async fn seal_all(&self, caller: &Caller, docs: &[DocumentSubmission]) -> Result<(Vec<StoredRecord>, Vec<Entry>), GatewayError> {
        let user = self.user_pseudonym(caller).await?;
        let created = crate::clock::now_rfc3339();
        let mut records = Vec::with_capacity(docs.len());
        let mut entries = Vec::with_capacity(docs.len());
        for d in docs {
            let (pv, pseudonym) = self.patient_pseudonym(&d.patient).await?;
            let id = vault::new_id();
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
                content_hash,
                content_type: fhir_mime_essence(&d.content_type),
                size: d.data.len() as u64,
                custodian: self.hospital.clone(),
                user: user.clone(),
                role: caller.role.clone(),
                purpose: caller.purpose.clone(),
            });
            entry.validate().map_err(GatewayError::internal)?;
            let hsm = self.hsm.clone();
            let (hospital, created2, content_type, data, eid) =
                (self.hospital.clone(), created.clone(), d.content_type.clone(), d.data.clone(), entry.id.clone());
            let rec = tokio::task::spawn_blocking(move || {
                let data = zeroize::Zeroizing::new(data);
                vault::seal_record(&hsm, &id, &created2, &hospital, (&pseudonym, pv), &content_type, &data, &meta, &eid)
            })
            .await
            .map_err(GatewayError::internal)?
            .map_err(GatewayError::from)?;
            records.push(rec);
            entries.push(entry);
        }
        Ok((records, entries))
    }

    /// Builds the create answer from stored records: 201 when every entry is in a block, else 202.
    /// `references` are the submitted DocumentReferences when the caller still has them; without
    /// them each record's sealed metadata is decrypted (one HSM unwrap each).
    pub(super) async fn respond(&self, records: Vec<StoredRecord>, references: Option<Vec<Value>>, receipts: Option<Vec<Receipt>>) -> Result<Created, GatewayError> {
        let mut out = Vec::with_capacity(records.len());
        let mut all_anchored = true;
        for (i, rec) in records.iter().enumerate() {
            let receipt = match &receipts {
                Some(r) => r.get(i).cloned(),
                None => self.ledger.store.receipt(&rec.entry_id).map_err(GatewayError::internal)?,
            };
            all_anchored &= receipt.is_some();
            let reference = match references.as_ref().and_then(|r| r.get(i)) {
                Some(r) => r.clone(),
                None => self.open(rec.clone(), false).await?.meta.document_reference,
            };
            out.push((self.describe(rec, &reference, receipt.as_ref()), rec));
        }
        let status = if all_anchored { 201 } else { 202 };
        let status_text = if all_anchored { "201 Created" } else { "202 Accepted" };
        let location = out.first().map(|(_, r)| format!("DocumentReference/{}", r.id));
        let body = transaction_response(out.into_iter().map(|(v, _)| (v, status_text)).collect());
        Ok(Created { status, body, location })
    }

    pub(super) fn describe(&self, rec: &StoredRecord, document_reference: &Value, receipt: Option<&Receipt>) -> Value {
        let receipt = receipt.map(Receipt::to_json);
        document_reference_resource(&StoredDocument {
            id: &rec.id,
            document_reference,
            created: &rec.created,
            size: rec.size,
            content_hash: &rec.content_hash,
            custodian: &rec.custodian,
            receipt: receipt.as_ref(),
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
            return Err(GatewayError::NotFound(format!("no record {}", id.chars().take(64).collect::<String>())));
        }
        let rec = self.vault.get(id).map_err(GatewayError::from)?.ok_or_else(|| GatewayError::NotFound(format!("no record {id}")))?;
        if rec.erased.is_some() {
            return Err(GatewayError::Gone(format!("record {id} was erased; its hash stays on the ledger")));
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
        let rec = self.stored(id)?;
        let user = self.user_pseudonym(caller).await?;
        let open = self.open(rec, false).await?;
        self.record_access(vec![self.read_entry(caller, &user, &open.record, Some("metadata"))]).await?;
        let receipt = self.ledger.store.receipt(&open.record.entry_id).map_err(GatewayError::internal)?;
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

/// Submissions whose decoded document bytes are zeroized when dropped.
struct WipedOnDrop(Vec<DocumentSubmission>);

impl Drop for WipedOnDrop {
    fn drop(&mut self) {
        for d in &mut self.0 {
            zeroize::Zeroize::zeroize(&mut d.data);
        }
    }
}

/// `type/subtype` of a MIME type, lowercased (parameters dropped), as the ledger records it.
fn fhir_mime_essence(ct: &str) -> String {
    ct.split(';').next().unwrap_or(ct).trim().to_ascii_lowercase()
}
