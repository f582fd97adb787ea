//! The gateway as a value: what happens to a record between the HIS and the ledger, without HTTP.
//!
//! Boundary: takes validated FHIR submissions and the caller's identity, returns FHIR JSON or a
//! [`FhirError`]. Owns the order of durable steps: a record, its index row, its ledger entry (in
//! the outbox) and its idempotency state are stored and flushed together; only then is the entry
//! appended to the ledger, and the HIS hears 201 only once the entry is in a flushed block (202
//! when the ledger could not take it: the entry waits in the outbox and nothing is lost).
//!
//! HSM budget per stored record: one C_WrapKey (through the pool) plus the batch signature shared
//! by every entry of the batch. Patient and user pseudonyms are HMACs computed in the HSM and
//! cached in memory by a hash of the input, so a busy patient costs one HMAC, not one per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use medgate_hsm::{Hsm, HsmError};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chain::{ChainError, Ledger};
use crate::fhir::{
    self, audit_event, document_reference_resource, AuditAction, AuditRecord, ConsentSubmission, DocumentSubmission, FhirError,
    PatientId, StoredDocument,
};
use crate::ledger::{Entry, EntryBody, Receipt};
use crate::metrics::Metrics;
use crate::tls::ClientIdentity;
use crate::vault::{self, Claim, IdemState, SealedMeta, StoredRecord, Vault, VaultError};

/// Purpose-of-use codes (HL7 v3 PurposeOfUse) the HIS may assert.
pub const PURPOSES: [&str; 10] =
    ["TREAT", "ETREAT", "BTG", "HPAYMT", "HOPERAT", "PATRQT", "HRESCH", "PUBHLTH", "COC", "HLEGAL"];

/// Largest number of cached pseudonyms (patients and users together).
const PSEUDONYM_CACHE: usize = 100_000;

/// Who asks, on whose behalf, and why: the verified HIS certificate plus what the HIS asserts
/// about its end user. The user id is pseudonymised before it is recorded anywhere.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: ClientIdentity,
    pub user: String,
    pub role: String,
    pub purpose: String,
}

/// What a create produced: the HTTP status (201, or 202 while entries wait in the outbox, or 200
/// for a repeat) and the body.
#[derive(Debug, Clone)]
pub struct Created {
    pub status: u16,
    pub body: Value,
    /// `DocumentReference/{id}` of the first record, for the Location header.
    pub location: Option<String>,
}

/// A decrypted document for `GET /Binary/{id}`.
#[derive(Debug)]
pub struct Document {
    pub content_type: String,
    pub bytes: zeroize::Zeroizing<Vec<u8>>,
}

/// SHA-256 of the pseudonymised input → (pseudonym key version, pseudonym).
type PseudonymCache = HashMap<[u8; 32], (u32, String)>;

/// The service: HSM, vault, ledger, metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub hospital: String,
    pub hsm: Arc<Hsm>,
    pub vault: Vault,
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    pseudonyms: Arc<Mutex<PseudonymCache>>,
    /// Consortium sharing (peer reads); `None` in standalone mode.
    sharing: Option<Arc<crate::peer::Sharing>>,
    /// Crypto-shredding after erasures (see `crate::shred`).
    pub shred: Arc<crate::shred::Shredder>,
    /// One consent recorded at a time, so that a retry racing its first attempt finds it.
    consenting: Arc<tokio::sync::Mutex<()>>,
}

/// The answer to a retry of a request that is still being processed.
fn in_flight() -> FhirError {
    FhirError::InFlight("a request with this Idempotency-Key is still being processed; retry in a second".into())
}

fn internal(e: impl std::fmt::Display) -> FhirError {
    FhirError::Internal(e.to_string())
}

fn from_vault(e: VaultError) -> FhirError {
    match e {
        VaultError::Integrity(id) => {
            tracing::error!(record = %id, "stored record failed its integrity check; not served");
            FhirError::Integrity(id)
        }
        VaultError::Hsm(h) => from_hsm(h),
        other => internal(other),
    }
}

fn from_hsm(e: HsmError) -> FhirError {
    match e {
        HsmError::Unavailable(_) => FhirError::Unavailable("the HSM is unavailable; retry later".into()),
        other => internal(other),
    }
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // The system CSPRNG does not fail on Linux; a zero nonce would still give a valid entry.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n);
    n
}

impl Gateway {
    pub fn new(hospital: String, hsm: Arc<Hsm>, vault: Vault, ledger: Ledger, metrics: Arc<Metrics>) -> Gateway {
        Gateway { hospital, hsm, vault, ledger, metrics, pseudonyms: Arc::default(), sharing: None, shred: Arc::default(), consenting: Arc::default() }
    }

    pub fn with_sharing(mut self, sharing: Arc<crate::peer::Sharing>) -> Gateway {
        self.sharing = Some(sharing);
        self
    }

    /// HMAC pseudonym (hex) of `domain` + `value`, computed in the HSM, cached by a hash of the input.
    async fn pseudonym(&self, domain: &str, value: &str) -> Result<(u32, String), FhirError> {
        let input = format!("medgate-pseudonym-v1\0{domain}\0{value}");
        let cache_key: [u8; 32] = Sha256::digest(input.as_bytes()).into();
        if let Some(hit) = self.pseudonyms.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return Ok(hit.clone());
        }
        let hsm = self.hsm.clone();
        let (version, mac) = tokio::task::spawn_blocking(move || hsm.pseudonym_hmac(input.as_bytes()))
            .await
            .map_err(internal)?
            .map_err(from_hsm)?;
        let out = (version, hex::encode(mac));
        let mut cache = self.pseudonyms.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= PSEUDONYM_CACHE {
            cache.clear();
        }
        cache.insert(cache_key, out.clone());
        Ok(out)
    }

    /// Patient pseudonym: the same across the consortium only if every hospital shares the
    /// pseudonym key; within one gateway it is stable.
    pub async fn patient_pseudonym(&self, patient: &PatientId) -> Result<(u32, String), FhirError> {
        self.pseudonym("patient", &patient.canonical()).await
    }

    async fn user_pseudonym(&self, caller: &Caller) -> Result<String, FhirError> {
        Ok(self.pseudonym("user", &format!("{}\0{}", self.hospital, caller.user)).await?.1)
    }

    fn entry(&self, body: EntryBody) -> Entry {
        Entry::new(&self.hospital, &crate::keys::now_rfc3339(), nonce(), body)
    }

    /// Stores documents: validates nothing more (the FHIR layer did), encrypts each under a fresh
    /// data key, stores everything durably, then anchors on the ledger.
    ///
    /// `idempotency_key`: the client's `Idempotency-Key`; the same key from the same HIS returns
    /// the first answer. Each submission's `masterIdentifier` is a conditional-create key too.
    pub async fn create(&self, caller: &Caller, docs: Vec<DocumentSubmission>, idempotency_key: Option<&str>) -> Result<Created, FhirError> {
        if !caller.client.may_write() {
            return Err(FhirError::Forbidden(format!("certificate role {:?} may not store records", caller.client.role)));
        }
        let request_key = idempotency_key.map(|k| Vault::idem_key(&format!("request\n{}", caller.client.system), k));
        // Held until this request has answered (or failed, or been dropped with its connection);
        // what it committed under the key meanwhile answers the retries.
        let held = match &request_key {
            None => None,
            Some(k) => match self.vault.claim(k).map_err(from_vault)? {
                Claim::New(held) => Some(held),
                Claim::InFlight => return Err(in_flight()),
                Claim::Existing(state) => return self.replay(state, "DocumentReference").await,
            },
        };
        self.create_claimed(caller, docs, held.as_ref().map(|h| h.key())).await
    }

    /// The answer for a request key seen before; `resource` names what a single create made
    /// (`DocumentReference`, `Consent`), for the Location of an answer that is not a Bundle.
    async fn replay(&self, state: IdemState, resource: &str) -> Result<Created, FhirError> {
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
                self.vault.sync().await.map_err(from_vault)?;
                self.metrics.incr("idempotent_replays");
                let mut created = Vec::new();
                for id in &record_ids {
                    let rec = self.vault.get(id).map_err(from_vault)?.ok_or_else(|| internal(format!("record {id} missing")))?;
                    created.push(rec);
                }
                self.respond(created, None, None).await
            }
        }
    }

    async fn create_claimed(&self, caller: &Caller, docs: Vec<DocumentSubmission>, request_key: Option<&[u8]>) -> Result<Created, FhirError> {
        // Conditional create: a masterIdentifier already stored for this hospital answers with the
        // existing record (same content) or a conflict (other content).
        // Claims are given back when `master_keys` is dropped, whatever happens below.
        let mut master_keys = Vec::new();
        for d in &docs {
            if let Some((system, value)) = &d.master_identifier {
                let key = Vault::idem_key("master", &format!("{system}|{value}"));
                match self.vault.claim(&key).map_err(from_vault)? {
                    Claim::New(held) => master_keys.push(Some(held)),
                    Claim::Existing(IdemState::Stored { record_ids }) => return self.existing_master(&record_ids, d).await,
                    Claim::InFlight | Claim::Existing(_) => {
                        return Err(FhirError::InFlight(
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
        let stored = self.seal_all(caller, &docs).await;
        let (records, entries) = stored?;
        let outbox: Vec<(String, Vec<u8>)> =
            entries.iter().map(|e| (e.id.clone(), serde_json::to_vec(e).unwrap_or_default())).collect();
        let mut idem: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
        if let Some(k) = request_key {
            idem.push((k.to_vec(), records.iter().map(|r| r.id.clone()).collect()));
        }
        for (k, r) in master_keys.iter().zip(&records) {
            if let Some(k) = k {
                idem.push((k.key().to_vec(), vec![r.id.clone()]));
            }
        }
        self.vault.store(&records, &outbox, &idem).await.map_err(from_vault)?;
        drop(sealing);
        self.metrics.incr("records_stored");
        let receipts = match self.ledger.append(entries).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), "records stored; their ledger entries wait in the outbox");
                None
            }
        };
        let references = docs.into_iter().map(|d| d.document_reference).collect();
        let created = self.respond(records, Some(references), receipts).await?;
        if let Some(k) = request_key {
            if created.status == 201 {
                self.vault.finish(k, created.status, &created.body).map_err(from_vault)?;
            }
        }
        Ok(created)
    }

    async fn existing_master(&self, record_ids: &[String], doc: &DocumentSubmission) -> Result<Created, FhirError> {
        let id = record_ids.first().ok_or_else(|| internal("empty master identifier index"))?;
        self.vault.sync().await.map_err(from_vault)?;
        let rec = self.vault.get(id).map_err(from_vault)?.ok_or_else(|| internal(format!("record {id} missing")))?;
        if rec.content_hash != hex::encode(Sha256::digest(&doc.data)) {
            return Err(FhirError::Conflict(
                "DocumentReference.masterIdentifier is already used by a stored document with other content".into(),
            ));
        }
        self.metrics.incr("conditional_create_hits");
        let mut c = self.respond(vec![rec], None, None).await?;
        c.status = 200;
        Ok(c)
    }

    /// Encrypts each document (one HSM wrap each) and builds its ledger entry.
    async fn seal_all(&self, caller: &Caller, docs: &[DocumentSubmission]) -> Result<(Vec<StoredRecord>, Vec<Entry>), FhirError> {
        let user = self.user_pseudonym(caller).await?;
        let created = crate::keys::now_rfc3339();
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
            entry.validate().map_err(internal)?;
            let hsm = self.hsm.clone();
            let (hospital, created2, content_type, data, eid) =
                (self.hospital.clone(), created.clone(), d.content_type.clone(), d.data.clone(), entry.id.clone());
            let rec = tokio::task::spawn_blocking(move || {
                let data = zeroize::Zeroizing::new(data);
                vault::seal_record(&hsm, &id, &created2, &hospital, (&pseudonym, pv), &content_type, &data, &meta, &eid)
            })
            .await
            .map_err(internal)?
            .map_err(from_vault)?;
            records.push(rec);
            entries.push(entry);
        }
        Ok((records, entries))
    }

    /// Builds the create answer from stored records: 201 when every entry is in a block, else 202.
    /// `references` are the submitted DocumentReferences when the caller still has them; without
    /// them each record's sealed metadata is decrypted (one HSM unwrap each).
    async fn respond(&self, records: Vec<StoredRecord>, references: Option<Vec<Value>>, receipts: Option<Vec<Receipt>>) -> Result<Created, FhirError> {
        let mut out = Vec::with_capacity(records.len());
        let mut all_anchored = true;
        for (i, rec) in records.iter().enumerate() {
            let receipt = match &receipts {
                Some(r) => r.get(i).cloned(),
                None => self.ledger.store.receipt(&rec.entry_id).map_err(internal)?,
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
        let body = fhir::transaction_response(out.into_iter().map(|(v, _)| (v, status_text)).collect());
        Ok(Created { status, body, location })
    }

    fn describe(&self, rec: &StoredRecord, document_reference: &Value, receipt: Option<&Receipt>) -> Value {
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

    async fn open(&self, rec: StoredRecord, with_document: bool) -> Result<vault::OpenRecord, FhirError> {
        let (hsm, store) = (self.hsm.clone(), self.vault.clone());
        tokio::task::spawn_blocking(move || vault::open_latest(&hsm, &store, &rec, with_document))
            .await
            .map_err(internal)?
            .map_err(from_vault)
    }

    fn may_read(&self, caller: &Caller) -> Result<(), FhirError> {
        if caller.client.may_read() {
            Ok(())
        } else {
            Err(FhirError::Forbidden(format!("certificate role {:?} may not read records", caller.client.role)))
        }
    }

    /// Appends access entries: durably in the outbox first, then to the ledger. A ledger failure
    /// leaves them in the outbox for the background drain; the access still counts as recorded.
    async fn record_access(&self, entries: Vec<Entry>) -> Result<(), FhirError> {
        self.anchor(entries).await.map(|_| ())
    }

    fn read_entry(&self, caller: &Caller, user: &str, rec: &StoredRecord, reason: Option<&str>) -> Entry {
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

    /// `GET /DocumentReference?patient=system|value`.
    pub async fn search(&self, caller: &Caller, patient: &PatientId, self_link: &str) -> Result<Value, FhirError> {
        self.may_read(caller)?;
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        let user = self.user_pseudonym(caller).await?;
        let records: Vec<StoredRecord> = self.vault.records_for(&pseudonym).map_err(from_vault)?.into_iter().filter(|r| r.erased.is_none()).collect();
        let mut resources = Vec::with_capacity(records.len());
        for rec in records {
            let receipt = self.ledger.store.receipt(&rec.entry_id).map_err(internal)?;
            let open = self.open(rec, false).await?;
            resources.push(self.describe(&open.record, &open.meta.document_reference, receipt.as_ref()));
        }
        // Records other members hold: what the ledger says of them (their metadata stays sealed
        // at the custodian); GET /Binary/{id} fetches them under consent.
        if self.sharing.is_some() {
            let entries = self.ledger.store.entries_for_patient(&pseudonym).map_err(internal)?;
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
                    let receipt = self.ledger.store.receipt(&e.id).map_err(internal)?;
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
        Ok(fhir::searchset(resources, self_link))
    }

    fn stored(&self, id: &str) -> Result<StoredRecord, FhirError> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FhirError::NotFound(format!("no record {}", id.chars().take(64).collect::<String>())));
        }
        let rec = self.vault.get(id).map_err(from_vault)?.ok_or_else(|| FhirError::NotFound(format!("no record {id}")))?;
        if rec.erased.is_some() {
            return Err(FhirError::Gone(format!("record {id} was erased; its hash stays on the ledger")));
        }
        Ok(rec)
    }

    /// `DELETE /DocumentReference/{id}` by the custodian's HIS: crypto-shredding. The record's
    /// wrapped data key, ciphertext and sealed metadata leave the vault in the transaction that
    /// queues the signed erasure entry; the hash stays on the ledger. Erasing again answers the same.
    /// The shred pass that follows makes older copies of the store (backups) unreadable too.
    pub async fn erase(&self, caller: &Caller, id: &str) -> Result<(), FhirError> {
        if !caller.client.may_write() {
            return Err(FhirError::Forbidden(format!("certificate role {:?} may not erase records", caller.client.role)));
        }
        let rec = match self.stored(id) {
            Err(FhirError::Gone(_)) => return Ok(()),
            Err(FhirError::NotFound(m)) if self.remote_record(id)?.is_some() => {
                return Err(FhirError::Forbidden(format!("{m}: only the custodian hospital may erase a record")))
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
        entry.validate().map_err(internal)?;
        self.vault.erase(&rec, &entry).await.map_err(from_vault)?;
        self.shred.request();
        tracing::info!(record = %rec.id, entry = %entry.id, "record erased (crypto-shredded)");
        self.metrics.incr("records_erased");
        if let Err(e) = self.ledger.append(vec![entry]).await {
            tracing::warn!(error = %e, "erasure entry waits in the outbox");
        }
        Ok(())
    }

    /// `GET /DocumentReference/{id}`: the metadata (decrypted), recorded as a read.
    pub async fn read_reference(&self, caller: &Caller, id: &str) -> Result<Value, FhirError> {
        self.may_read(caller)?;
        let rec = self.stored(id)?;
        let user = self.user_pseudonym(caller).await?;
        let open = self.open(rec, false).await?;
        self.record_access(vec![self.read_entry(caller, &user, &open.record, Some("metadata"))]).await?;
        let receipt = self.ledger.store.receipt(&open.record.entry_id).map_err(internal)?;
        Ok(self.describe(&open.record, &open.meta.document_reference, receipt.as_ref()))
    }

    /// `GET /Binary/{id}`: the document, decrypted, after its read entry is durably recorded.
    /// A record held by another hospital is fetched from it (consent checked there).
    pub async fn read_binary(&self, caller: &Caller, id: &str) -> Result<Document, FhirError> {
        self.may_read(caller)?;
        if self.vault.get(id).map_err(from_vault)?.is_none() {
            if let Some(entry) = self.remote_record(id)? {
                return self.read_remote(caller, entry).await;
            }
        }
        let rec = self.stored(id)?;
        let user = self.user_pseudonym(caller).await?;
        let open = self.open(rec, true).await?;
        self.record_access(vec![self.read_entry(caller, &user, &open.record, None)]).await?;
        self.metrics.incr("records_read");
        Ok(Document { content_type: open.record.content_type.clone(), bytes: open.document })
    }

    /// The anchoring entry of a record another member holds, if the ledger knows one.
    fn remote_record(&self, id: &str) -> Result<Option<Entry>, FhirError> {
        if self.sharing.is_none() || id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let entry = self.ledger.store.anchored(id).map_err(internal)?;
        Ok(entry.filter(|e| matches!(&e.body, EntryBody::RecordAnchored { custodian, .. } if *custodian != self.hospital)))
    }

    /// Fetches a record from its custodian: ciphertext and a data key re-wrapped for this
    /// hospital's sharing key; unwrapped in the HSM, decrypted here, checked against the hash on
    /// the ledger. The custodian records the access (granted or denied) on the ledger.
    async fn read_remote(&self, caller: &Caller, entry: Entry) -> Result<Document, FhirError> {
        let EntryBody::RecordAnchored { record_id, custodian, content_hash, content_type, .. } = entry.body else {
            return Err(internal("not a record entry"));
        };
        let sharing = self.sharing.clone().ok_or_else(|| internal("sharing is not configured"))?;
        let user = self.user_pseudonym(caller).await?;
        let req = crate::peer::ReadRequest { record_id: record_id.clone(), user, role: caller.role.clone(), purpose: caller.purpose.clone() };
        let grant = match sharing.read(&custodian, &req).await {
            Err(e) => {
                tracing::warn!(%custodian, error = %e, "custodian unreachable");
                return Err(FhirError::Unavailable(format!("the custodian {custodian} could not be reached; retry later")));
            }
            Ok(Err((403, refusal))) if refusal.reason == "not-a-member" => {
                self.metrics.incr("peer_reads_denied");
                return Err(FhirError::Forbidden(format!("the custodian {custodian} refused the read: {} is not a current member of the consortium", self.hospital)));
            }
            Ok(Err((403, refusal))) => {
                self.metrics.incr("peer_reads_denied");
                return Err(FhirError::Forbidden(format!(
                    "the custodian {custodian} refused the read ({}); the refusal is on the ledger",
                    refusal.reason
                )));
            }
            Ok(Err((404, _))) => return Err(FhirError::NotFound(format!("{custodian} no longer holds record {record_id}"))),
            Ok(Err((410, _))) => return Err(FhirError::Gone(format!("record {record_id} was erased by its custodian {custodian}"))),
            Ok(Err((status, refusal))) => return Err(internal(format!("{custodian} answered {status}: {}", refusal.reason))),
            Ok(Ok(g)) => g,
        };
        if grant.record_id != record_id || grant.content_hash != content_hash || grant.content_type != content_type {
            return Err(FhirError::Integrity(record_id));
        }
        use base64::Engine as _;
        let blob = base64::engine::general_purpose::STANDARD.decode(&grant.shared_key).map_err(|_| FhirError::Integrity(record_id.clone()))?;
        let hsm = self.hsm.clone();
        let dk = tokio::task::spawn_blocking(move || hsm.unwrap_shared(&blob)).await.map_err(internal)?.map_err(|e| match e {
            HsmError::Integrity => FhirError::Integrity(record_id.clone()),
            other => from_hsm(other),
        })?;
        let bytes = vault::open_shared_document(&record_id, &content_type, &content_hash, &dk, &grant.doc_nonce, &grant.doc_ct).map_err(from_vault)?;
        self.metrics.incr("peer_reads_granted");
        Ok(Document { content_type, bytes })
    }

    /// Answers another gateway's read (the custodian's side): consent on this ledger copy, or
    /// break-glass by a role the configuration names; the access goes on the ledger either way,
    /// before any key material leaves.
    pub async fn serve_peer_read(&self, requester: &str, req: crate::peer::ReadRequest) -> Result<crate::peer::ReadGrant, (u16, String)> {
        let sharing = self.sharing.clone().ok_or((404, "no-sharing".to_owned()))?;
        let Some(peer) = sharing.peer(requester).filter(|_| requester != self.hospital) else {
            return Err((403, "not-a-member".into()));
        };
        let Some((n, e)) = peer.sharing_key.clone() else { return Err((403, "no-sharing-key".into())) };
        if !PURPOSES.contains(&req.purpose.as_str()) {
            return Err((400, "bad-request".into()));
        }
        let rec = match self.vault.get(&req.record_id) {
            Ok(Some(r)) if r.erased.is_some() => return Err((410, "erased".into())),
            Ok(Some(r)) => r,
            Ok(None) => return Err((404, "unknown-record".into())),
            Err(e) => {
                tracing::error!(error = %e, "vault read for a peer failed");
                return Err((500, "internal".into()));
            }
        };
        let now = crate::keys::now_rfc3339();
        let consented = self
            .ledger
            .store
            .consents_for(&rec.patient_pseudonym)
            .map(|cs| cs.iter().any(|c| c.custodian == self.hospital && c.permits(requester, &rec.id, &now)))
            .unwrap_or(false);
        let break_glass = !consented && req.purpose == "BTG" && sharing.break_glass_roles.contains(&req.role);
        let granted = consented || break_glass;
        let reason = if consented {
            None
        } else if break_glass {
            Some("break-glass".to_owned())
        } else {
            Some("no-consent".to_owned())
        };
        let entry = Entry::new(
            &self.hospital,
            &now,
            nonce(),
            EntryBody::RecordRead {
                record_id: rec.id.clone(),
                patient: rec.patient_pseudonym.clone(),
                custodian: self.hospital.clone(),
                reader: requester.to_owned(),
                user: req.user.clone(),
                role: req.role.clone(),
                purpose: req.purpose.clone(),
                granted,
                reason: reason.clone(),
            },
        );
        if entry.validate().is_err() {
            return Err((400, "bad-request".into()));
        }
        if let Err(e) = self.anchor(vec![entry]).await {
            tracing::error!(error = %e, "access entry for a peer read could not be stored; refused");
            return Err((503, "ledger-unavailable".into()));
        }
        tracing::info!(%requester, granted, reason = reason.as_deref().unwrap_or("consent"), "peer read");
        if !granted {
            return Err((403, "no-consent".into()));
        }
        let wrapped = match base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &rec.wrapped_key) {
            Ok(b) => medgate_hsm::WrappedKey { kek_version: rec.kek_version, bytes: b },
            Err(_) => return Err((500, "integrity".into())),
        };
        let hsm = self.hsm.clone();
        let shared = tokio::task::spawn_blocking(move || hsm.rewrap_for_peer(&wrapped, &n, &e)).await;
        let shared = match shared {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "re-wrapping for a peer failed");
                return Err((503, "hsm-unavailable".into()));
            }
            Err(_) => return Err((500, "internal".into())),
        };
        Ok(crate::peer::ReadGrant {
            record_id: rec.id,
            content_type: rec.content_type,
            content_hash: rec.content_hash,
            doc_nonce: rec.doc_nonce,
            doc_ct: rec.doc_ct,
            shared_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, shared),
        })
    }

    /// Signs a checkpoint of the stored chain head in the HSM and sends it to every peer.
    /// A peer that answers 409 holds another block at that height: a fork, which halts this
    /// gateway's submissions too.
    pub async fn send_checkpoint(&self) -> Result<(), String> {
        let sharing = self.sharing.clone().ok_or("no sharing")?;
        let Some((height, _)) = self.ledger.store.head().map_err(|e| e.to_string())? else { return Ok(()) };
        let Some(cp) = self.checkpoint_at(height).await? else { return Ok(()) };
        let mut failed = Vec::new();
        for (peer, p) in &sharing.other_members() {
            if p.address.is_none() {
                continue;
            }
            match sharing.send_checkpoint(peer, &cp).await {
                Ok((200, _)) => {}
                Ok((409, body)) => {
                    // The peer's own signed checkpoint at that height, checked before it counts.
                    let theirs = serde_json::from_str::<crate::peer::Refusal>(&body)
                        .ok()
                        .and_then(|r| crate::ledger::Checkpoint::from_bytes(r.reason.as_bytes()).ok())
                        .filter(|t| t.gateway == *peer && t.height == height)
                        .filter(|t| t.verify(&|g: &str, v: u32| self.ledger.store.member_key(g, v)).is_ok());
                    match theirs {
                        Some(t) => failed.push(self.fork_seen(&t, &cp.block_hash)),
                        None => failed.push(format!("{peer} answered 409 without a valid checkpoint")),
                    }
                }
                Ok((status, why)) => failed.push(format!("{peer}: {status} {why}")),
                Err(e) => failed.push(e),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// Signs a checkpoint of this gateway's block at `height` in the HSM.
    async fn checkpoint_at(&self, height: u64) -> Result<Option<crate::ledger::Checkpoint>, String> {
        let Some(block) = self.ledger.store.block(height).map_err(|e| e.to_string())? else { return Ok(None) };
        let unsigned = crate::ledger::UnsignedCheckpoint::new(&self.hospital, height, block.hash(), block.order_position);
        let digest = unsigned.signing_digest();
        let hsm = self.hsm.clone();
        let sig = tokio::task::spawn_blocking(move || hsm.sign_digest(medgate_hsm::Role::Ledger, &digest))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(Some(unsigned.sign(sig.key_version, &sig.raw)))
    }

    /// Two signed hashes at one height: keep both checkpoints as evidence, halt submissions,
    /// raise the alert.
    fn fork_seen(&self, theirs: &crate::ledger::Checkpoint, ours: &str) -> String {
        let reason = format!(
            "fork: {} signed block {} at height {}, this gateway holds {}",
            theirs.gateway,
            &theirs.block_hash[..16.min(theirs.block_hash.len())],
            theirs.height,
            &ours[..16.min(ours.len())]
        );
        tracing::error!(peer = %theirs.gateway, height = theirs.height, theirs = %theirs.block_hash, ours = %ours, "LEDGER FORK: two signed hashes at one height; submissions halted, evidence kept");
        if let Err(e) = self.ledger.store.record_fork(theirs.height, theirs, ours) {
            tracing::error!(error = %e, "fork evidence could not be stored");
        }
        self.metrics.incr("ledger_forks");
        if let Some(link) = self.sharing.as_ref().and_then(|s| s.link.as_ref()) {
            link.halt(reason.clone());
        }
        reason
    }

    /// Blocks from `from` on, for a member catching up (JSON array of blocks). Blocks hold only
    /// pseudonyms, hashes and codes.
    pub fn blocks_for_peer(&self, requester: &str, from: u64) -> Result<Vec<u8>, (u16, String)> {
        let sharing = self.sharing.as_ref().ok_or((404, "no-sharing".to_owned()))?;
        if sharing.peer(requester).is_none() || requester == self.hospital {
            return Err((403, "not-a-member".into()));
        }
        let mut out = b"[".to_vec();
        for (i, h) in (from..from.saturating_add(crate::peer::MAX_BLOCKS_PER_FETCH)).enumerate() {
            match self.ledger.store.block(h) {
                Ok(Some(b)) => {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&b.to_bytes());
                }
                Ok(None) => break,
                Err(e) => return Err((500, e.to_string())),
            }
        }
        out.push(b']');
        Ok(out)
    }

    /// Compacts the ordering service below what every member has checkpointed: the smallest
    /// order position among this gateway's stored chain and every peer's last signed checkpoint.
    /// Refused while any member has sent no checkpoint, or while the ledger is halted.
    pub async fn compact_ordering(&self) -> Result<u64, String> {
        let sharing = self.sharing.clone().ok_or("compaction needs the consortium mode")?;
        let link = sharing.link.clone().ok_or("no consortium link")?;
        if let Some(why) = link.halted() {
            return Err(format!("the ledger is halted ({why}); nothing is compacted"));
        }
        let own = self.ledger.store.state().map_err(|e| e.to_string())?.order_position().ok_or("this gateway has no block yet")?;
        let cps = self.ledger.store.peer_checkpoints().map_err(|e| e.to_string())?;
        let mut safe = own;
        for (member, _) in sharing.other_members() {
            let cp = cps.iter().find(|c| c.gateway == *member).ok_or_else(|| format!("{member} has sent no checkpoint yet; nothing is compacted"))?;
            safe = safe.min(cp.order_position);
        }
        // Keep the revision every member last checkpointed: a restarted member resumes after it.
        link.orderer.compact(safe).await?;
        tracing::info!(revision = safe, "ordering service compacted below what every member has checkpointed");
        Ok(safe)
    }

    /// A peer's signed checkpoint: checked with the member's ledger key and compared with this
    /// gateway's block at that height. On a fork the peer gets 409 and this gateway's own signed
    /// checkpoint for that height, so both sides keep both signatures as evidence.
    pub async fn accept_checkpoint(&self, from: &str, cp: &crate::ledger::Checkpoint) -> Result<String, (u16, String)> {
        if cp.gateway != from || from == self.hospital {
            return Err((403, "checkpoint-not-from-its-sender".into()));
        }
        let store = &self.ledger.store;
        cp.verify(&|g: &str, v: u32| store.member_key(g, v)).map_err(|e| (403, format!("bad-signature: {e}")))?;
        let _ = store.remember_peer_checkpoint(cp);
        let mine = match self.checkpoint_at(cp.height).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok("behind".into()),
            Err(e) => return Err((500, e)),
        };
        if mine.block_hash == cp.block_hash {
            return Ok("agree".into());
        }
        self.fork_seen(cp, &mine.block_hash);
        Err((409, serde_json::to_string(&mine).unwrap_or_default()))
    }

    /// `GET /AuditEvent?patient=system|value`: every ledger entry about the patient.
    pub async fn audit(&self, caller: &Caller, patient: &PatientId, self_link: &str) -> Result<Value, FhirError> {
        self.may_read(caller)?;
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        let entries = self.ledger.store.entries_for_patient(&pseudonym).map_err(internal)?;
        let events = entries.iter().filter_map(|(e, height)| audit_record(e, *height).map(|r| audit_event(&r))).collect();
        Ok(fhir::searchset(events, self_link))
    }

    /// Puts the security officer's key events (journalled by `medgate keys` in the state
    /// directory) on the ledger. Each event's entry is derived from its journal line, so an
    /// event already on the chain is recognised and not appended twice.
    pub async fn anchor_key_events(&self, state_dir: &std::path::Path) -> Result<usize, String> {
        let events = crate::keys::read_events(state_dir)?;
        let mut todo = Vec::new();
        for ev in events {
            let line = serde_json::to_vec(&ev).map_err(|e| e.to_string())?;
            let digest = Sha256::digest(&line);
            let mut nonce = [0u8; 16];
            nonce.copy_from_slice(&digest[..16]);
            let officer: String = ev.officer.chars().map(|c| if c.is_ascii_alphanumeric() || "-._@".contains(c) { c } else { '_' }).take(128).collect();
            let time = if ev.time.ends_with('Z') { ev.time.clone() } else { crate::keys::now_rfc3339() };
            let entry = Entry::new(
                &self.hospital,
                &time,
                nonce,
                EntryBody::KeyEvent { action: ev.action, key_role: ev.role, key_version: ev.version, key_id: ev.key_id, officer },
            );
            if entry.validate().is_err() {
                tracing::warn!(entry = %entry.id, "key event journal line does not make a valid ledger entry; skipped");
                continue;
            }
            if self.ledger.store.location(&entry.id).map_err(|e| e.to_string())?.is_none() {
                todo.push(entry);
            }
        }
        let n = todo.len();
        if n > 0 {
            self.record_access(todo).await.map_err(|e| e.to_string())?;
        }
        Ok(n)
    }

    /// `POST /Consent` (status active): the patient lets `grantee` read their records held here.
    /// Answers 201 once the consent entry is in a block, 202 while it waits in the outbox.
    ///
    /// A retry creates nothing new: with an `Idempotency-Key` it gets the first answer; without
    /// one, a consent with the same terms that is active on the ledger (200) or waiting in the
    /// outbox (202) is answered instead of recording a second one.
    pub async fn record_consent(&self, caller: &Caller, sub: &ConsentSubmission, idempotency_key: Option<&str>) -> Result<Created, FhirError> {
        if !caller.client.may_write() {
            return Err(FhirError::Forbidden(format!("certificate role {:?} may not record consents", caller.client.role)));
        }
        let request_key = idempotency_key.map(|k| Vault::idem_key(&format!("consent\n{}", caller.client.system), k));
        // Held until the answer is kept. A retry after a crash in between finds no answer and
        // records afresh, which finds the same consent on the ledger or in the outbox.
        let held = match &request_key {
            None => None,
            Some(k) => match self.vault.claim(k).map_err(from_vault)? {
                Claim::New(held) => Some(held),
                Claim::InFlight => return Err(in_flight()),
                Claim::Existing(state) => return self.replay(state, "Consent").await,
            },
        };
        let result = self.record_consent_claimed(caller, sub).await;
        if let (Some(held), Ok(c)) = (&held, &result) {
            if let Err(e) = self.vault.finish(held.key(), c.status, &c.body) {
                tracing::warn!(error = %e, "idempotency state of a consent request not kept");
            }
        }
        result
    }

    async fn record_consent_claimed(&self, caller: &Caller, sub: &ConsentSubmission) -> Result<Created, FhirError> {
        if !sub.active {
            return Err(FhirError::invalid("Consent.status", "to withdraw a consent, PUT /Consent/{id} with status 'inactive'"));
        }
        if sub.grantee == self.hospital {
            return Err(FhirError::invalid("Consent.provision.actor[0]", "names this hospital; a consent grants access to another hospital"));
        }
        let (_, pseudonym) = self.patient_pseudonym(&sub.patient).await?;
        let held = self.vault.records_for(&pseudonym).map_err(from_vault)?;
        if held.is_empty() {
            return Err(FhirError::invalid(
                "Consent.patient",
                "this hospital holds no record of the patient; a consent is recorded by the hospital that holds the records",
            ));
        }
        for (i, id) in sub.record_ids.iter().enumerate() {
            if !held.iter().any(|r| &r.id == id) {
                return Err(FhirError::invalid(
                    format!("Consent.provision.data[{i}].reference"),
                    "is not a record of this patient held here",
                ));
            }
        }
        // The same terms, already active on the ledger or waiting in the outbox: the answer to a
        // retry, not a second consent. One consent is recorded at a time, so a retry that races
        // its first attempt waits for it and then finds it.
        let _one = self.consenting.lock().await;
        let mut wanted = sub.record_ids.clone();
        wanted.sort();
        let same_terms = |c: &crate::chain::ConsentState| {
            let mut ids = c.record_ids.clone();
            ids.sort();
            c.active && c.custodian == self.hospital && c.grantee == sub.grantee && ids == wanted && c.start == sub.start && c.end == sub.end
        };
        if let Some(c) = self.ledger.store.consents_for(&pseudonym).map_err(internal)?.into_iter().find(|c| same_terms(c)) {
            self.metrics.incr("consents_already_recorded");
            let receipt = self.ledger.store.receipt(&c.recorded_by).map_err(internal)?;
            let body = fhir::consent_resource(&c.consent_id, sub, &self.hospital, receipt.map(|r| r.to_json()).as_ref());
            return Ok(Created { status: 200, body, location: Some(format!("Consent/{}", c.consent_id)) });
        }
        for (_, bytes) in self.vault.outbox().map_err(from_vault)? {
            let Ok(e) = serde_json::from_slice::<Entry>(&bytes) else { continue };
            if let Some(c) = crate::chain::consent_from(&e).filter(|c| c.patient == pseudonym && same_terms(c)) {
                self.metrics.incr("consents_already_recorded");
                let body = fhir::consent_resource(&c.consent_id, sub, &self.hospital, None);
                return Ok(Created { status: 202, body, location: Some(format!("Consent/{}", c.consent_id)) });
            }
        }
        let user = self.user_pseudonym(caller).await?;
        let consent_id = vault::new_id();
        let entry = self.entry(EntryBody::ConsentRecorded {
            consent_id: consent_id.clone(),
            patient: pseudonym,
            custodian: self.hospital.clone(),
            grantee: sub.grantee.clone(),
            record_ids: sub.record_ids.clone(),
            start: sub.start.clone(),
            end: sub.end.clone(),
            user,
            role: caller.role.clone(),
        });
        let receipt = self.anchor(vec![entry]).await?.and_then(|mut r| r.pop());
        let status = if receipt.is_some() { 201 } else { 202 };
        let body = fhir::consent_resource(&consent_id, sub, &self.hospital, receipt.map(|r| r.to_json()).as_ref());
        Ok(Created { status, body, location: Some(format!("Consent/{consent_id}")) })
    }

    /// `PUT /Consent/{id}` with status inactive: withdraws a consent this hospital recorded.
    /// Withdrawing one already withdrawn answers the same (a retried request is not an error).
    pub async fn revoke_consent(&self, caller: &Caller, consent_id: &str, sub: &ConsentSubmission) -> Result<Created, FhirError> {
        if !caller.client.may_write() {
            return Err(FhirError::Forbidden(format!("certificate role {:?} may not withdraw consents", caller.client.role)));
        }
        if sub.active {
            return Err(FhirError::invalid("Consent.status", "must be 'inactive' to withdraw; a consent is not changed in place"));
        }
        let (_, pseudonym) = self.patient_pseudonym(&sub.patient).await?;
        let current = self
            .ledger
            .store
            .consent(&pseudonym, consent_id)
            .map_err(internal)?
            .ok_or_else(|| FhirError::NotFound(format!("no consent {} for this patient", consent_id.chars().take(64).collect::<String>())))?;
        if current.custodian != self.hospital {
            return Err(FhirError::Forbidden("only the hospital that recorded a consent may withdraw it".into()));
        }
        if current.grantee != sub.grantee {
            return Err(FhirError::invalid("Consent.provision.actor[0]", "does not match the grantee of the consent being withdrawn"));
        }
        let mut status = 200;
        let mut receipt = None;
        if current.active {
            let user = self.user_pseudonym(caller).await?;
            let entry = self.entry(EntryBody::ConsentRevoked {
                consent_id: consent_id.to_owned(),
                patient: pseudonym,
                custodian: self.hospital.clone(),
                grantee: current.grantee.clone(),
                user,
                role: caller.role.clone(),
            });
            receipt = self.anchor(vec![entry]).await?.and_then(|mut r| r.pop());
            if receipt.is_none() {
                status = 202;
            }
        }
        let shown = ConsentSubmission { active: false, record_ids: current.record_ids, start: current.start, end: current.end, ..sub.clone() };
        let body = fhir::consent_resource(consent_id, &shown, &self.hospital, receipt.map(|r| r.to_json()).as_ref());
        Ok(Created { status, body, location: Some(format!("Consent/{consent_id}")) })
    }

    /// `GET /Consent?patient=`: every consent recorded for the patient, on any gateway.
    pub async fn consents(&self, caller: &Caller, patient: &PatientId, self_link: &str) -> Result<Value, FhirError> {
        self.may_read(caller)?;
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        let list = self.ledger.store.consents_for(&pseudonym).map_err(internal)?;
        let resources = list
            .into_iter()
            .map(|c| {
                let sub = ConsentSubmission {
                    active: c.active,
                    patient: patient.clone(),
                    grantee: c.grantee,
                    record_ids: c.record_ids,
                    start: c.start,
                    end: c.end,
                };
                fhir::consent_resource(&c.consent_id, &sub, &c.custodian, None)
            })
            .collect();
        Ok(fhir::searchset(resources, self_link))
    }

    /// Puts entries on the ledger: durably in the outbox, then appended. `None` when the ledger
    /// could not take them yet (they stay in the outbox for the background drain).
    async fn anchor(&self, entries: Vec<Entry>) -> Result<Option<Vec<Receipt>>, FhirError> {
        for e in &entries {
            e.validate().map_err(internal)?;
        }
        self.vault.enqueue(&entries).await.map_err(from_vault)?;
        match self.ledger.append(entries).await {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!(error = %e, "entries wait in the outbox");
                Ok(None)
            }
        }
    }

    /// Opens a membership proposal in this hospital's name (admin listener, `medgate consortium
    /// propose`). Not queued in the outbox: a proposal the roster no longer allows would make
    /// every batch it rides in invalid, so it is checked here, submitted once, and a failure is
    /// reported to the operator, who proposes again. Answers the proposal as the chain holds it.
    pub async fn propose_membership(&self, action: &str, hospital_id: &str, card: Option<crate::membership::MemberCard>) -> Result<crate::membership::Proposal, (u16, String)> {
        use crate::membership::{new_proposal_id, Proposal};
        let roster = self.ledger.store.roster().map_err(|e| (500, e.to_string()))?.ok_or((409, "membership needs ledger.mode = \"consortium\"".to_owned()))?;
        if !roster.is_member(&self.hospital) {
            return Err((409, format!("{} is not a current member; only members propose changes", self.hospital)));
        }
        let id = new_proposal_id();
        let body = match (action, card) {
            ("add" | "update", Some(card)) => {
                if card.hospital_id != hospital_id {
                    return Err((400, format!("the member card is for {}, not {hospital_id}", card.hospital_id)));
                }
                card.check().map_err(|e| (400, e))?;
                card.proposal(id, action, &self.hospital)
            }
            ("remove", None) => EntryBody::MembershipProposed {
                proposal_id: id,
                action: "remove".into(),
                hospital_id: hospital_id.to_owned(),
                ledger_public_key: None,
                ledger_key_version: None,
                sharing_public_key: None,
                peer_address: None,
                proposer: self.hospital.clone(),
            },
            ("add" | "update", None) => return Err((400, format!("{action} needs the hospital's member card"))),
            _ => return Err((400, format!("unknown action {action:?}: add, remove or update"))),
        };
        let proposal = Proposal::from_entry(&body).ok_or((400, "malformed proposal".to_owned()))?;
        if !roster.admits(&proposal) {
            let why = match action {
                "add" => format!("{hospital_id} is already a member, or its card does not hold valid keys"),
                "remove" if roster.members.len() <= 1 => "the last member cannot be removed".to_owned(),
                _ => format!("{hospital_id} is not a current member, or the update changes an admitted key version"),
            };
            return Err((409, why));
        }
        self.membership_entry(body, &proposal.proposal_id).await
    }

    /// Approves an open membership proposal in this hospital's name.
    pub async fn approve_membership(&self, proposal_id: &str) -> Result<crate::membership::Proposal, (u16, String)> {
        let roster = self.ledger.store.roster().map_err(|e| (500, e.to_string()))?;
        let Some(roster_version) = roster.filter(|r| r.is_member(&self.hospital)).map(|r| r.version) else {
            return Err((409, format!("{} is not a current member; only members approve changes", self.hospital)));
        };
        let p = self.ledger.store.proposal(proposal_id).map_err(|e| (500, e.to_string()))?.ok_or((
            404,
            format!("no membership proposal {proposal_id} on this ledger copy (yet: a proposal made elsewhere a moment ago may still be on its way)"),
        ))?;
        match p.decided_at {
            Some(h) if p.lapsed => return Err((409, format!("proposal {proposal_id} lapsed in block {h}; propose the change again"))),
            Some(h) => return Err((409, format!("proposal {proposal_id} was already carried in block {h}"))),
            None if p.roster_version != roster_version => {
                return Err((409, format!("proposal {proposal_id} lapsed: the membership changed since it was made; propose the change again")))
            }
            None => {}
        }
        if p.approvals.contains(&self.hospital) {
            return Err((409, format!("{} already approved proposal {proposal_id}", self.hospital)));
        }
        let body = EntryBody::MembershipApproved { proposal_id: proposal_id.to_owned(), approver: self.hospital.clone() };
        self.membership_entry(body, proposal_id).await
    }

    async fn membership_entry(&self, body: EntryBody, proposal_id: &str) -> Result<crate::membership::Proposal, (u16, String)> {
        let entry = self.entry(body);
        entry.validate().map_err(|e| (400, e.to_string()))?;
        self.ledger.append_alone(vec![entry]).await.map_err(|e| {
            (503, format!("the ledger did not confirm the entry ({e}); check `medgate consortium members` before proposing or approving again"))
        })?;
        let p = self.ledger.store.proposal(proposal_id).map_err(|e| (500, e.to_string()))?.ok_or((500, "the proposal is not in the ledger state".to_owned()))?;
        tracing::info!(proposal = %p.proposal_id, action = %p.action, hospital = %p.hospital_id, approvals = ?p.approvals, carried_at = ?p.decided_at, "membership entry on the ledger");
        Ok(p)
    }

    /// The roster and every proposal, for the admin listener.
    pub fn membership_json(&self) -> Result<Value, String> {
        let store = &self.ledger.store;
        let roster = store.roster().map_err(|e| e.to_string())?.ok_or("membership needs ledger.mode = \"consortium\"")?;
        let proposals: Vec<Value> = store
            .proposals()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|p| {
                let state = p.state(roster.version);
                let mut v = serde_json::to_value(&p).unwrap_or_default();
                v["state"] = Value::String(state);
                v
            })
            .collect();
        Ok(serde_json::json!({
            "genesis": store.genesis_hash().map_err(|e| e.to_string())?.map(hex::encode),
            "members": roster.members.values().collect::<Vec<_>>(),
            "proposals": proposals,
        }))
    }

    /// Appends what the outbox holds (entries whose append failed earlier).
    pub async fn drain_outbox(&self) -> Result<usize, ChainError> {
        self.ledger.drain_outbox(&self.vault).await
    }
}

/// `type/subtype` of a MIME type, lowercased (parameters dropped), as the ledger records it.
fn fhir_mime_essence(ct: &str) -> String {
    ct.split(';').next().unwrap_or(ct).trim().to_ascii_lowercase()
}

fn audit_record(e: &Entry, height: u64) -> Option<AuditRecord<'_>> {
    let base = |action, granted, reason: Option<&'static str>| AuditRecord {
        entry_id: &e.id,
        height,
        time: &e.time,
        action,
        granted,
        reason,
        record_id: e.record_id(),
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
        EntryBody::KeyEvent { .. } | EntryBody::MembershipProposed { .. } | EntryBody::MembershipApproved { .. } => None,
    }
}
