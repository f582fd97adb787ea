//! The local vault: records encrypted in process under a fresh data key each, the data key wrapped
//! by the HSM's key-encryption key, everything in sled. Plaintext never reaches the disk; data
//! keys and plaintext live in zeroizing buffers. A write acknowledged to a client has been flushed.
//!
//! Trees: `records` (id → [`StoredRecord`]), `by_patient` (pseudonym/id → ()), `lists` and
//! `lists_by_patient` (sealed SubmissionSets, see [`list`]), `idempotency` (hashed request key →
//! [`IdemState`]: ids and codes only, never a response body), `outbox` (ledger entry id → entry
//! bytes not yet in a block), `shred` (the erasure count and the shred-pending marker the
//! gateway's shred pass reads). A submission's records, its list, the status changes it makes to
//! earlier records, their index rows, their outbox entries and the idempotency states are
//! written in one transaction ([`Vault::store`]), so a crash leaves either all of them or none;
//! so are an erasure, its entry and its shred marker.
//! A request in flight holds its idempotency keys in memory only ([`Held`]): a claim never
//! outlives the process that made it, so after a crash a retry is answered at once, from what
//! the first attempt committed (records stored, or its final answer) or by a fresh create.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use medgate_hsm::{Hsm, HsmError, Role, WrappedKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use zeroize::Zeroizing;

use crate::error::{read_u64, to_json};
use crate::{Db, StoreError};

pub(crate) mod deposit;
mod idem;
mod list;

pub use deposit::Deposit;
pub(crate) use deposit::{DepositError, DepositViews};

pub use idem::{AnswerItem, Migrated};
pub use list::{open_list, open_list_latest, seal_list, ListHeader, OpenList, SealedList, StoredList};
#[cfg(any(test, feature = "fixtures"))]
pub use list::fixture as list_fixture;

/// The vault's errors are the store's.
type VaultError = StoreError;

/// What the vault keeps for one record. Only ciphertext, a wrapped key, a pseudonym and hashes:
/// the patient's identifier and the DocumentReference are inside `meta_ct`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredRecord {
    pub id: String,
    pub created: String,
    pub custodian: String,
    pub patient_pseudonym: String,
    pub pseudonym_key_version: u32,
    pub content_type: String,
    pub size: u64,
    /// hex SHA-256 of the plaintext document.
    pub content_hash: String,
    pub kek_version: u32,
    pub wrapped_key: String,
    pub doc_nonce: String,
    pub doc_ct: String,
    pub meta_nonce: String,
    pub meta_ct: String,
    /// The ledger entry that anchors this record.
    pub entry_id: String,
    /// Set when the record was erased: the erasure entry's id. Key material, ciphertext and
    /// sealed metadata are then gone from the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<String>,
    /// Status changes made by the custodian, oldest first (codes and ids, as on the ledger).
    /// None: the record is `current`, at version 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<RecordChange>,
}

/// A change of a record's status, as the ledger records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordChange {
    /// `superseded` or `entered-in-error`.
    pub status: String,
    /// The record that replaced this one, for a replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// When (RFC 3339 UTC).
    pub time: String,
    /// The ledger entry recording the change.
    pub entry_id: String,
}

impl StoredRecord {
    /// `current`, or the status of the last change.
    pub fn status(&self) -> &str {
        self.changes.last().map_or("current", |c| c.status.as_str())
    }

    /// 1 when stored, plus one per status change.
    pub fn version(&self) -> u32 {
        1 + u32::try_from(self.changes.len()).unwrap_or(u32::MAX - 1)
    }

    /// When version `version` was made (the creation time for version 1).
    pub fn version_time(&self, version: u32) -> &str {
        match version.checked_sub(2).and_then(|i| self.changes.get(i as usize)) {
            Some(c) => &c.time,
            None => &self.created,
        }
    }
}

/// A status change to make to a stored record within [`Vault::store`]: checked against the
/// record as it stands inside the transaction, so two requests cannot both supersede it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub record_id: String,
    /// Only a record held by this custodian is changed.
    pub custodian: String,
    pub change: RecordChange,
}

/// Which status a record may move to from which: `current` → `superseded` or
/// `entered-in-error`; `superseded` → `entered-in-error`. Nothing leaves `entered-in-error`.
pub fn status_change_allowed(from: &str, to: &str) -> bool {
    matches!((from, to), ("current", "superseded" | "entered-in-error") | ("superseded", "entered-in-error"))
}

/// Everything one create writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Write {
    /// New records.
    pub records: Vec<StoredRecord>,
    /// New lists (their records are in `records`).
    pub lists: Vec<StoredList>,
    /// Status changes to earlier records.
    pub changes: Vec<StatusChange>,
    /// (entry id, entry bytes) of every ledger entry the write makes.
    pub outbox: Vec<(String, Vec<u8>)>,
    /// (hashed key, state): the request's Idempotency-Key and each masterIdentifier.
    pub idem: Vec<(Vec<u8>, IdemState)>,
}

/// The sensitive metadata sealed with a record: what the HIS sent, minus the document bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SealedMeta {
    pub patient_system: String,
    pub patient_value: String,
    pub document_reference: serde_json::Value,
    pub master_identifier: Option<(String, String)>,
}

/// A decrypted record, in zeroizing memory.
pub struct OpenRecord {
    pub record: StoredRecord,
    pub meta: SealedMeta,
    pub document: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for OpenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRecord").field("id", &self.record.id).finish_non_exhaustive()
    }
}

/// Where a client's request stands, keyed by its idempotency key. Only ids, codes and HTTP
/// statuses: a retry's answer is rendered again from the sealed records and the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum IdemState {
    /// Written by earlier versions for a request in flight. No longer written, and never
    /// returned by [`Vault::claim`]: the process that wrote it is gone, so it means nothing.
    Pending { since: u64 },
    /// Records stored by an earlier version (or under a masterIdentifier by one); their ledger
    /// entries may still be in the outbox.
    Stored { record_ids: Vec<String> },
    /// Written by earlier versions: the exact response, which may hold patient data. Never
    /// written now, and converted to [`IdemState::Answered`] (or removed) when the vault opens.
    Done { status: u16, body: serde_json::Value },
    /// What a request committed, one item per entry of its answer, written with its records;
    /// their ledger entries may still be in the outbox.
    Committed { items: Vec<AnswerItem> },
    /// Finished: the HTTP status the client got and what its answer named.
    Answered { status: u16, items: Vec<AnswerItem> },
}

/// The result of claiming an idempotency key.
#[derive(Debug)]
pub enum Claim {
    /// Nothing was committed under the key: this request owns it while it holds [`Held`].
    New(Held),
    /// Another request of this process is processing it right now.
    InFlight,
    /// What an earlier request committed under the key (never [`IdemState::Pending`]).
    Existing(IdemState),
}

/// Keys claimed by requests in flight in this process.
type InFlight = Arc<Mutex<HashSet<Vec<u8>>>>;

/// An idempotency key claimed by a request in flight, in this process's memory only; dropping
/// it (the request finished, failed, or was cancelled with its connection) gives the key back.
/// Whatever the request committed under the key stays in the store.
///
/// Clones share the claim: the key is given back when the last of them is dropped. The ledger
/// writer keeps one with a request's deposit until it answers the deposit (written and flushed,
/// or refused; through an ordering service, once its block has landed or the ordering failed),
/// so that a request dropped while it waits for the writer does not let a retry in before what
/// it handed over is stored.
#[derive(Debug, Clone)]
pub struct Held(Arc<HeldKey>);

#[derive(Debug)]
struct HeldKey {
    key: Vec<u8>,
    inflight: InFlight,
}

impl Held {
    /// The (hashed) idempotency key held.
    pub fn key(&self) -> &[u8] {
        &self.0.key
    }
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// Aad for the document ciphertext: binds record id, content type and content hash.
fn doc_aad(id: &str, content_type: &str, content_hash: &str) -> Vec<u8> {
    format!("medgate-record-v1\0doc\0{id}\0{content_type}\0{content_hash}").into_bytes()
}

fn meta_aad(id: &str, pseudonym: &str) -> Vec<u8> {
    format!("medgate-record-v1\0meta\0{id}\0{pseudonym}").into_bytes()
}

fn seal(key: &[u8], aad: &[u8], plaintext: &[u8], rng: &SystemRandom) -> Result<([u8; 12], Vec<u8>), VaultError> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| VaultError::Storage("AES key".into()))?);
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce).map_err(|_| VaultError::Storage("random".into()))?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .map_err(|_| VaultError::Storage("AES-GCM seal".into()))?;
    Ok((nonce, buf))
}

fn open(id: &str, key: &[u8], aad: &[u8], nonce_b64: &str, ct_b64: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let integrity = || VaultError::Integrity(id.to_owned());
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| integrity())?);
    let nonce: [u8; 12] = B64.decode(nonce_b64).ok().and_then(|n| n.try_into().ok()).ok_or_else(integrity)?;
    let mut buf = Zeroizing::new(B64.decode(ct_b64).map_err(|_| integrity())?);
    let n = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .map_err(|_| integrity())?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Encrypts a document and its metadata under a fresh data key wrapped by the HSM (one C_WrapKey).
/// `content_hash`: the hex SHA-256 of `document`, as the record's ledger entry (`entry_id`)
/// anchors it; computed once by the caller, which needs it for the entry before the record.
#[allow(clippy::too_many_arguments, reason = "one flat call site in the ingest path")]
pub fn seal_record(
    hsm: &Hsm,
    id: &str,
    created: &str,
    custodian: &str,
    pseudonym: (&str, u32),
    content_type: &str,
    (document, content_hash): (&[u8], &str),
    meta: &SealedMeta,
    entry_id: &str,
) -> Result<StoredRecord, VaultError> {
    debug_assert_eq!(content_hash, hex::encode(Sha256::digest(document)), "the document's own hash");
    let rng = SystemRandom::new();
    let mut dk = Zeroizing::new([0u8; 32]);
    rng.fill(dk.as_mut()).map_err(|_| VaultError::Storage("random".into()))?;
    let wrapped = hsm.wrap_data_key(dk.as_ref())?;
    let content_hash = content_hash.to_owned();
    let (doc_nonce, doc_ct) = seal(dk.as_ref(), &doc_aad(id, content_type, &content_hash), document, &rng)?;
    let meta_plain = Zeroizing::new(to_json("sealed metadata", meta)?);
    let (meta_nonce, meta_ct) = seal(dk.as_ref(), &meta_aad(id, pseudonym.0), &meta_plain, &rng)?;
    Ok(StoredRecord {
        id: id.to_owned(),
        created: created.to_owned(),
        custodian: custodian.to_owned(),
        patient_pseudonym: pseudonym.0.to_owned(),
        pseudonym_key_version: pseudonym.1,
        content_type: content_type.to_owned(),
        size: document.len() as u64,
        content_hash,
        kek_version: wrapped.kek_version,
        wrapped_key: B64.encode(&wrapped.bytes),
        doc_nonce: B64.encode(doc_nonce),
        doc_ct: B64.encode(doc_ct),
        meta_nonce: B64.encode(meta_nonce),
        meta_ct: B64.encode(meta_ct),
        entry_id: entry_id.to_owned(),
        erased: None,
        changes: Vec::new(),
    })
}

/// Decrypts a document received from its custodian with the data key unwrapped here, and
/// checks it against the content hash the ledger anchored.
pub fn open_shared_document(id: &str, content_type: &str, content_hash: &str, dk: &[u8], nonce_b64: &str, ct_b64: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let d = open(id, dk, &doc_aad(id, content_type, content_hash), nonce_b64, ct_b64)?;
    if hex::encode(Sha256::digest(d.as_slice())) != content_hash {
        return Err(VaultError::Integrity(id.to_owned()));
    }
    Ok(d)
}

/// A record whose wrapped key the HSM would not unwrap as intact ([`HsmError::is_integrity`]:
/// a failed check, or a module answer that may mean one); the module's own words go to the log.
fn integrity(record: &str, e: &HsmError) -> VaultError {
    tracing::error!(record, error = %e, "the HSM refused the record's wrapped key");
    VaultError::Integrity(record.to_owned())
}

/// Unwraps the data key in the HSM and decrypts. `with_document: false` decrypts only the
/// metadata (search results), which saves the document's decryption but not the unwrap.
pub fn open_record(hsm: &Hsm, rec: StoredRecord, with_document: bool) -> Result<OpenRecord, VaultError> {
    let wrapped = WrappedKey {
        kek_version: rec.kek_version,
        bytes: B64.decode(&rec.wrapped_key).map_err(|_| VaultError::Integrity(rec.id.clone()))?,
    };
    let dk = match hsm.unwrap_data_key(&wrapped) {
        Ok(k) => k,
        Err(e) if e.is_integrity() => return Err(integrity(&rec.id, &e)),
        Err(e) => return Err(e.into()),
    };
    let meta_plain = open(&rec.id, &dk, &meta_aad(&rec.id, &rec.patient_pseudonym), &rec.meta_nonce, &rec.meta_ct)?;
    let meta: SealedMeta = serde_json::from_slice(&meta_plain).map_err(|_| VaultError::Integrity(rec.id.clone()))?;
    let document = if with_document {
        let d = open(&rec.id, &dk, &doc_aad(&rec.id, &rec.content_type, &rec.content_hash), &rec.doc_nonce, &rec.doc_ct)?;
        if hex::encode(Sha256::digest(d.as_slice())) != rec.content_hash {
            return Err(VaultError::Integrity(rec.id.clone()));
        }
        d
    } else {
        Zeroizing::new(Vec::new())
    };
    Ok(OpenRecord { record: rec, meta, document })
}

/// Opens a record as [`open_record`] does, following a concurrent shred pass: when the KEK
/// version `rec` was read with is gone because the record has since been re-wrapped under a newer
/// one, the stored record is read again and opened once more.
pub fn open_latest(hsm: &Hsm, vault: &Vault, rec: StoredRecord, with_document: bool) -> Result<OpenRecord, VaultError> {
    let (id, kek_version) = (rec.id.clone(), rec.kek_version);
    let first = open_record(hsm, rec, with_document);
    if let Err(VaultError::Hsm(HsmError::KeyMissing { role: Role::Kek, .. })) = &first {
        if let Some(now) = vault.get(&id)?.filter(|now| now.erased.is_none() && now.kek_version != kek_version) {
            return open_record(hsm, now, with_document);
        }
    }
    first
}

/// The two fields of a stored record that a shred pass looks at, read without decoding the rest.
#[derive(Debug, Deserialize)]
struct KeyRef {
    kek_version: u32,
    #[serde(default)]
    erased: Option<String>,
}

/// What [`Vault::rewrap_record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrap {
    /// Re-wrapped; the data key had been wrapped by this KEK version.
    Done { from: u32 },
    /// Nothing to do: erased, gone, or already under a version at least as new as asked.
    Current,
}

/// The vault's sled trees. Cloning is cheap (sled handles are reference counted).
#[derive(Debug, Clone)]
pub struct Vault {
    db: Db,
    records: sled::Tree,
    by_patient: sled::Tree,
    lists: sled::Tree,
    lists_by_patient: sled::Tree,
    idempotency: sled::Tree,
    outbox: sled::Tree,
    shred: sled::Tree,
    /// Idempotency keys held by requests in flight (see [`Held`]); shared by every clone.
    inflight: InFlight,
}

/// Keys of the `shred` tree: how many erasures were ever committed (never decreases), the count
/// at the last erasure that no shred pass has finished yet (absent when none is pending), and
/// the count at which the current pass rotated the KEK, with the version it rotated to.
const ERASURES: &[u8] = b"erasures";
const PENDING: &[u8] = b"pending";
const ROTATION: &[u8] = b"rotation";


impl Vault {
    /// Opens the vault in `db` (the gateway's one database). Idempotency states that earlier
    /// versions wrote with a whole response in them are converted to ids at once (see
    /// [`Vault::migrate_idempotency`]), so that no response body outlives the upgrade.
    pub fn open(db: &Db) -> Result<Vault, VaultError> {
        let d = &db.0;
        let vault = Vault {
            db: db.clone(),
            records: d.open_tree("records")?,
            by_patient: d.open_tree("by_patient")?,
            lists: d.open_tree("lists")?,
            lists_by_patient: d.open_tree("lists_by_patient")?,
            idempotency: d.open_tree("idempotency")?,
            outbox: d.open_tree(crate::chain::OUTBOX_TREE)?,
            shred: d.open_tree("shred")?,
            inflight: InFlight::default(),
        };
        let m = vault.migrate_idempotency()?;
        if m.converted + m.removed > 0 {
            tracing::info!(converted = m.converted, removed = m.removed, "idempotency states holding whole responses replaced by ids");
        }
        Ok(vault)
    }

    pub fn idem_key(scope: &str, key: &str) -> Vec<u8> {
        Sha256::digest(format!("{scope}\n{key}").as_bytes()).to_vec()
    }

    /// Claims `key` for this request, or says who has it: a request in flight in this process,
    /// or what an earlier request committed under it.
    ///
    /// A claim lives in memory only. The holder writes under the key (records stored, then its
    /// final answer) before it drops its [`Held`]; a claim takes the key first and only then
    /// reads the store, so a retry either finds the key held or finds what was written.
    ///
    /// The store is read outside the in-flight set's lock: a read waits while a transaction
    /// (the ledger writer's group commit) holds sled's lock, and other requests' claims must not
    /// queue behind it. It may block: an async caller runs it on a blocking thread. (Two
    /// retries of a request already answered that claim while the first of them reads the
    /// answer, which takes as long as a group commit under load: the second hears
    /// [`Claim::InFlight`], and its next retry gets the answer.)
    pub fn claim(&self, key: &[u8]) -> Result<Claim, VaultError> {
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if !inflight.insert(key.to_vec()) {
                return Ok(Claim::InFlight);
            }
        }
        // Given back on every return below but the last.
        let held = Held(Arc::new(HeldKey { key: key.to_vec(), inflight: self.inflight.clone() }));
        if let Some(cur) = self.idempotency.get(key)? {
            match serde_json::from_slice(&cur).map_err(|e| StoreError::corrupt("idempotency state", e))? {
                // A claim an earlier version left on disk: its process is gone.
                IdemState::Pending { .. } => {
                    self.idempotency.remove(key)?;
                }
                state => return Ok(Claim::Existing(state)),
            }
        }
        Ok(Claim::New(held))
    }

    /// Flushes the store: what any request wrote is on disk when this returns.
    pub async fn sync(&self) -> Result<(), VaultError> {
        self.db.flush().await
    }

    /// Records that a request was answered with `status`; `items` name what the answer holds.
    /// Ids and codes only (checked): the answer itself is rendered again for a retry.
    pub fn finish(&self, key: &[u8], status: u16, items: &[AnswerItem]) -> Result<(), VaultError> {
        idem::check_items(items)?;
        let v = to_json("idempotency state", &IdemState::Answered { status, items: items.to_vec() })?;
        self.idempotency.insert(key, v)?;
        Ok(())
    }

    /// Stores a create atomically, then flushes: its records and lists with their index rows,
    /// the status changes it makes to earlier records, its outbox entries and its idempotency
    /// states. A status change the record's state does not allow (see [`status_change_allowed`];
    /// erased, or held by another custodian) aborts the whole write with
    /// [`StoreError::Conflict`]: nothing is stored. (The gateway's creates go through the
    /// ledger writer's group commit instead, which writes the same [`Deposit`].)
    pub async fn store(&self, w: &Write) -> Result<(), VaultError> {
        let deposit = Deposit::encode(w)?;
        self.write_all(&[(0, &deposit)]).map_err(DepositError::into_store)?;
        self.db.flush().await
    }

    /// Writes encoded deposits in one transaction, without flushing. A deposit whose status
    /// change the stored state refuses aborts the transaction ([`DepositError::Refused`] names
    /// it by the index it comes with): nothing is written.
    pub(crate) fn write_all(&self, deposits: &[(usize, &Deposit)]) -> Result<(), DepositError> {
        let mut trees: Vec<&sled::Tree> = self.deposit_trees().to_vec();
        trees.push(&self.outbox);
        trees
            .as_slice()
            .transaction(|t| {
                let v = DepositViews::of(&t[..5], &t[5]);
                deposit::write_all(&v, deposits.iter().copied())
            })
            .map_err(DepositError::from_transaction)
    }

    /// The trees a deposit is written to besides the outbox (which the chain shares), in the
    /// order [`DepositViews::of`] reads them: records, the patient index, lists, the lists'
    /// patient index, the idempotency states.
    pub(crate) fn deposit_trees(&self) -> [&sled::Tree; 5] {
        [&self.records, &self.by_patient, &self.lists, &self.lists_by_patient, &self.idempotency]
    }

    /// Crypto-shreds a record: the wrapped data key, the ciphertext and the sealed metadata are
    /// removed from the vault in the same transaction that queues the erasure entry and marks a
    /// shred pass pending, then flushed. What remains is what the ledger holds anyway (ids,
    /// pseudonym, hash, size, type). Copies of the store taken before still hold the wrapped key
    /// until the shred pass has destroyed the KEK version that wrapped it.
    pub async fn erase(&self, rec: &StoredRecord, entry: &medgate_ledger::Entry) -> Result<(), VaultError> {
        let mut shredded = rec.clone();
        shredded.wrapped_key.clear();
        shredded.doc_nonce.clear();
        shredded.doc_ct.clear();
        shredded.meta_nonce.clear();
        shredded.meta_ct.clear();
        shredded.erased = Some(entry.id.clone());
        let value = to_json("record", &shredded)?;
        let entry_bytes = to_json("ledger entry", entry)?;
        (&self.records, &self.outbox, &self.shred)
            .transaction(|(rec_t, out_t, shred_t)| {
                rec_t.insert(rec.id.as_bytes(), value.as_slice())?;
                out_t.insert(entry.id.as_bytes(), entry_bytes.as_slice())?;
                let erasures = match shred_t.get(ERASURES)? {
                    None => 0,
                    Some(v) => read_u64("erasure count", &v).map_err(ConflictableTransactionError::Abort)?,
                };
                let n = (erasures + 1).to_be_bytes();
                shred_t.insert(ERASURES, &n)?;
                shred_t.insert(PENDING, &n)?;
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e: TransactionError<StoreError>| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })?;
        self.db.flush().await
    }

    /// Puts ledger entries (an access, a search) in the outbox, flushed, before the ledger sees them.
    pub async fn enqueue(&self, entries: &[medgate_ledger::Entry]) -> Result<(), VaultError> {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(e.id.as_bytes(), to_json("ledger entry", e)?);
        }
        self.outbox.apply_batch(batch)?;
        self.db.flush().await
    }

    pub fn get(&self, id: &str) -> Result<Option<StoredRecord>, VaultError> {
        match self.records.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::corrupt(format!("record {id}"), e)),
        }
    }

    /// This hospital's records of one patient (by pseudonym), oldest first by id order.
    pub fn records_for(&self, pseudonym: &str) -> Result<Vec<StoredRecord>, VaultError> {
        let mut out = Vec::new();
        for id in self.record_ids_for(pseudonym)? {
            if let Some(r) = self.get(&id)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The ids of the patient's records, in the index's order (not by date): for a caller that
    /// reads them one at a time with [`Vault::get`] rather than holding them all at once.
    pub fn record_ids_for(&self, pseudonym: &str) -> Result<Vec<String>, VaultError> {
        self.by_patient
            .scan_prefix(format!("{pseudonym}/").as_bytes())
            .map(|kv| kv.map(|(k, _)| String::from_utf8_lossy(&k[pseudonym.len() + 1..]).into_owned()).map_err(VaultError::from))
            .collect()
    }

    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Ledger entries stored but not yet in a block, oldest key first.
    pub fn outbox(&self) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
        self.outbox
            .iter()
            .map(|kv| kv.map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.to_vec())).map_err(VaultError::from))
            .collect()
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Drops an outbox entry that is already on the chain.
    pub fn remove_from_outbox(&self, entry_id: &str) -> Result<(), VaultError> {
        self.outbox.remove(entry_id.as_bytes())?;
        Ok(())
    }

    /// The erasure count at the last erasure no shred pass has finished yet; `None` when every
    /// erasure has been shredded everywhere.
    pub fn shred_pending(&self) -> Result<Option<u64>, VaultError> {
        self.shred.get(PENDING)?.map(|v| read_u64("shred marker", &v)).transpose()
    }

    /// Clears the shred marker if no erasure came after `seen` (compare-and-swap). `false`: one
    /// did, and another pass is needed.
    pub fn finish_shred(&self, seen: u64) -> Result<bool, VaultError> {
        let done = self.shred.compare_and_swap(PENDING, Some(&seen.to_be_bytes()[..]), None as Option<&[u8]>)?.is_ok();
        if done {
            self.shred.remove(ROTATION)?;
        }
        self.db.flush_blocking()?;
        Ok(done)
    }

    /// The erasure count at which a shred pass last rotated the KEK, and the version it made.
    pub fn shred_rotation(&self) -> Result<Option<(u64, u32)>, VaultError> {
        let Some(v) = self.shred.get(ROTATION)? else { return Ok(None) };
        let corrupt = || StoreError::corrupt("shred rotation", format!("{} bytes where it has 12", v.len()));
        let (seen, version) = v.split_at_checked(8).ok_or_else(corrupt)?;
        let version = <[u8; 4]>::try_from(version).map_err(|_| corrupt())?;
        Ok(Some((read_u64("shred rotation", seen)?, u32::from_be_bytes(version))))
    }

    pub fn set_shred_rotation(&self, seen: u64, kek_version: u32) -> Result<(), VaultError> {
        let mut v = seen.to_be_bytes().to_vec();
        v.extend_from_slice(&kek_version.to_be_bytes());
        self.shred.insert(ROTATION, v)?;
        self.db.flush_blocking()
    }

    /// The id of every sealed item whose data key the KEK wraps: every record, then every list,
    /// in key order. [`Vault::rewrap_record`] takes either.
    pub fn record_ids(&self) -> impl Iterator<Item = Result<String, VaultError>> + '_ {
        self.records
            .iter()
            .keys()
            .chain(self.lists.iter().keys())
            .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()).map_err(VaultError::from))
    }

    /// Re-wraps the data key of live record `id` under the active KEK (in the HSM) when the
    /// version that wraps it is older than `below`. The record is replaced by compare-and-swap,
    /// so a change made meanwhile (an erasure) is never overwritten: the record is read again
    /// and the decision made anew. Not flushed; the caller flushes once for many records.
    pub fn rewrap_record(&self, hsm: &Hsm, id: &str, below: u32) -> Result<Rewrap, VaultError> {
        let tree = if self.records.contains_key(id.as_bytes())? { &self.records } else { &self.lists };
        loop {
            let Some(current) = tree.get(id.as_bytes())? else { return Ok(Rewrap::Current) };
            let key: KeyRef = serde_json::from_slice(&current).map_err(|e| StoreError::corrupt(format!("record {id}"), e))?;
            if key.erased.is_some() || key.kek_version >= below {
                return Ok(Rewrap::Current);
            }
            // The wrapped key and its version are rewritten in place; every other field is kept
            // as stored, whatever the item (record or list).
            let mut item: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&current).map_err(|e| StoreError::corrupt(format!("record {id}"), e))?;
            let bytes = item
                .get("wrapped_key")
                .and_then(serde_json::Value::as_str)
                .and_then(|w| B64.decode(w).ok())
                .ok_or_else(|| VaultError::Integrity(id.to_owned()))?;
            let new = match hsm.rewrap_data_key(&WrappedKey { kek_version: key.kek_version, bytes }) {
                Ok(k) => k,
                Err(e) if e.is_integrity() => return Err(integrity(id, &e)),
                Err(e) => return Err(e.into()),
            };
            item.insert("kek_version".into(), new.kek_version.into());
            item.insert("wrapped_key".into(), B64.encode(&new.bytes).into());
            let value = to_json("record", &item)?;
            if tree.compare_and_swap(id.as_bytes(), Some(current), Some(value))?.is_ok() {
                return Ok(Rewrap::Done { from: key.kek_version });
            }
        }
    }

    /// Live (not erased) records and lists, counted by the KEK version that wraps their data key.
    pub fn live_kek_versions(&self) -> Result<std::collections::BTreeMap<u32, usize>, VaultError> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.records.iter().chain(self.lists.iter()) {
            let (k, v) = kv?;
            let key: KeyRef = serde_json::from_slice(&v).map_err(|e| StoreError::corrupt(format!("record {}", String::from_utf8_lossy(&k)), e))?;
            if key.erased.is_none() {
                *out.entry(key.kek_version).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Flushes the store from a blocking thread.
    pub fn flush_blocking(&self) -> Result<(), VaultError> {
        self.db.flush_blocking()
    }

    /// Overwrites a stored record as it is (used by integrity tests and by erasure).
    pub fn put_raw(&self, id: &str, value: &[u8]) -> Result<(), VaultError> {
        self.records.insert(id.as_bytes(), value)?;
        self.db.flush_blocking()
    }
}

/// The record `current` (its stored bytes) with `c` applied, or why not.
pub(crate) fn apply_change(current: Option<&[u8]>, c: &StatusChange) -> Result<Vec<u8>, StoreError> {
    let id = &c.record_id;
    let Some(bytes) = current else { return Err(StoreError::Conflict(format!("record {id} is not held here"))) };
    let mut rec: StoredRecord = serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(format!("record {id}"), e))?;
    if rec.erased.is_some() {
        return Err(StoreError::Conflict(format!("record {id} was erased")));
    }
    if rec.custodian != c.custodian {
        return Err(StoreError::Conflict(format!("record {id} is held for another custodian")));
    }
    if !status_change_allowed(rec.status(), &c.change.status) {
        return Err(StoreError::Conflict(format!("record {id} is {}; it cannot become {}", rec.status(), c.change.status)));
    }
    rec.changes.push(c.change.clone());
    to_json("record", &rec)
}

/// A new record or list id: 128 bits in hex, the first 48 the time in milliseconds since the
/// Unix epoch (big-endian), the other 80 random.
///
/// Ids made one after another sort together, so new records are inserted at the end of the
/// vault's trees, in leaves that are already in the page cache. With fully random ids every
/// insert landed in a different leaf: once the vault outgrew the cache, each one first read its
/// leaf back from disk (ingest slowed by a fifth within the first 50 000 records). The time an
/// id shows is when the record was stored, which its DocumentReference and its ledger entry
/// already say; 80 random bits keep ids unguessable and distinct.
pub fn new_id() -> Result<String, StoreError> {
    let mut b = [0u8; 16];
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    // Without its random part, every id made in the same millisecond would be the same one, and
    // a second record would be stored over the first.
    SystemRandom::new().fill(&mut b[6..]).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(hex::encode(b))
}

/// A stored record and its erasure entry, for unit tests (here and in the layers above) that need
/// no HSM. Compiled for this crate's tests and with the `fixtures` feature.
#[cfg(any(test, feature = "fixtures"))]
pub mod fixture {
    use super::StoredRecord;
    use medgate_ledger::{Entry, EntryBody};

    /// A live record wrapped by KEK `kek_version` (its ciphertext is no real ciphertext).
    pub fn record(id: &str, kek_version: u32) -> StoredRecord {
        StoredRecord {
            id: id.to_owned(),
            created: "2026-01-01T00:00:00Z".into(),
            custodian: "hospital-a".into(),
            patient_pseudonym: "ab".repeat(32),
            pseudonym_key_version: 1,
            content_type: "text/plain".into(),
            size: 1,
            content_hash: "cd".repeat(32),
            kek_version,
            wrapped_key: "AAAA".into(),
            doc_nonce: "AAAA".into(),
            doc_ct: "AAAA".into(),
            meta_nonce: "AAAA".into(),
            meta_ct: "AAAA".into(),
            entry_id: "ef".repeat(32),
            erased: None,
            changes: Vec::new(),
        }
    }

    /// The erasure entry of `rec`.
    pub fn erasure(rec: &StoredRecord) -> Entry {
        Entry::new(
            "hospital-a",
            "2026-01-02T00:00:00Z",
            [7; 16],
            EntryBody::RecordErased {
                record_id: rec.id.clone(),
                patient: rec.patient_pseudonym.clone(),
                custodian: "hospital-a".into(),
                user: "12".repeat(32),
                role: "physician".into(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vault in a database of its own in a fresh directory (kept until the test ends).
    fn on_disk() -> (tempfile::TempDir, Db, Vault) {
        let dir = tempfile::tempdir().expect("tmp");
        let db = Db::open(dir.path()).expect("db");
        let v = Vault::open(&db).expect("vault");
        (dir, db, v)
    }

    #[test]
    fn ids_start_with_the_time_they_were_made_sort_in_that_order_and_are_distinct() {
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
        let before = now();
        let ids: Vec<String> = (0..10_000).map(|_| new_id().expect("random")).collect();
        let after = now();
        let times: Vec<u64> = ids.iter().map(|id| u64::from_str_radix(&id[..12], 16).expect("hex")).collect();
        assert!(times.iter().all(|t| (before..=after).contains(t)), "{before}..{after}: {:?}", (times.first(), times.last()));
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "ids made one after another sort in that order");
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[tokio::test]
    async fn an_erasure_marks_a_shred_pending_that_only_a_pass_covering_every_erasure_clears() {
        let (dir, db, v) = on_disk();
        let recs: Vec<StoredRecord> = [("a1", 1), ("b1", 1), ("c2", 2)].iter().map(|(id, k)| fixture::record(id, *k)).collect();
        for r in &recs {
            v.put_raw(&r.id, &serde_json::to_vec(r).expect("json")).expect("put");
        }
        assert_eq!(v.shred_pending().expect("marker"), None);
        assert_eq!(v.live_kek_versions().expect("scan"), std::collections::BTreeMap::from([(1, 2), (2, 1)]));

        v.erase(&recs[0], &fixture::erasure(&recs[0])).await.expect("erase");
        assert_eq!(v.shred_pending().expect("marker"), Some(1));
        assert_eq!(v.live_kek_versions().expect("scan"), std::collections::BTreeMap::from([(1, 1), (2, 1)]), "erased records need no KEK");
        // A second erasure while a pass that saw the first one runs: that pass cannot clear it.
        v.erase(&recs[1], &fixture::erasure(&recs[1])).await.expect("erase");
        assert_eq!(v.shred_pending().expect("marker"), Some(2));
        assert!(!v.finish_shred(1).expect("cas"));
        assert_eq!(v.shred_pending().expect("marker"), Some(2));
        v.set_shred_rotation(2, 3).expect("rotation");
        assert_eq!(v.shred_rotation().expect("rotation"), Some((2, 3)));
        assert!(v.finish_shred(2).expect("cas"));
        assert_eq!(v.shred_pending().expect("marker"), None);
        assert_eq!(v.shred_rotation().expect("rotation"), None);
        // The count never goes back, so a remembered rotation never covers a later erasure.
        v.erase(&recs[2], &fixture::erasure(&recs[2])).await.expect("erase");
        assert_eq!(v.shred_pending().expect("marker"), Some(3));
        assert_eq!(v.outbox_len(), 3, "each erasure entry is queued with its marker");
        drop(v);
        drop(db);
        // Durable: the marker is there after reopening.
        let db = Db::reopen(dir.path());
        assert_eq!(Vault::open(&db).expect("vault").shred_pending().expect("marker"), Some(3));
    }

    #[test]
    fn sealed_bytes_open_only_with_the_same_key_and_aad() {
        let rng = SystemRandom::new();
        let key = [5u8; 32];
        let (nonce, ct) = seal(&key, b"aad", b"hello", &rng).expect("seal");
        let (n, c) = (B64.encode(nonce), B64.encode(&ct));
        assert_eq!(open("r", &key, b"aad", &n, &c).expect("open").as_slice(), b"hello");
        assert!(matches!(open("r", &key, b"other", &n, &c), Err(VaultError::Integrity(_))));
        assert!(matches!(open("r", &[6u8; 32], b"aad", &n, &c), Err(VaultError::Integrity(_))));
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(matches!(open("r", &key, b"aad", &n, &B64.encode(bad)), Err(VaultError::Integrity(_))));
        assert!(!ct.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn idempotency_claims_are_exclusive_and_finish_is_returned() {
        let (_dir, _db, v) = on_disk();
        let k = Vault::idem_key("his-a", "abc");
        let Claim::New(held) = v.claim(&k).expect("claim") else { panic!("a fresh key is claimed") };
        assert!(matches!(v.clone().claim(&k).expect("claim"), Claim::InFlight), "held for every clone");
        v.finish(&k, 201, &[AnswerItem::new("DocumentReference", "r1", 1)]).expect("finish");
        drop(held);
        let Claim::Existing(state) = v.claim(&k).expect("claim") else { panic!("the answer is kept") };
        assert_eq!(state, IdemState::Answered { status: 201, items: vec![AnswerItem::new("DocumentReference", "r1", 1)] });
        let other = Vault::idem_key("his-b", "abc");
        assert!(matches!(v.claim(&other).expect("claim"), Claim::New(_)), "keys are scoped per client");
    }

    #[test]
    fn a_claim_dies_with_its_request_or_its_process() {
        let dir = tempfile::tempdir().expect("tmp");
        let k = Vault::idem_key("his-a", "abc");
        {
            let db = Db::open(dir.path()).expect("db");
            let v = Vault::open(&db).expect("vault");
            let held = v.claim(&k).expect("claim");
            assert!(matches!(v.claim(&k).expect("claim"), Claim::InFlight));
            drop(held);
            let held = v.claim(&k).expect("claim");
            assert!(matches!(held, Claim::New(_)), "a request that stored nothing leaves nothing: {held:?}");
            // A claim an earlier version left on disk for a request that never finished.
            let legacy = serde_json::to_vec(&IdemState::Pending { since: 1 }).expect("json");
            v.idempotency.insert(Vault::idem_key("his-a", "old"), legacy).expect("insert");
            db.flush_blocking().expect("flush");
            // The process ends with `held` still claimed (as if killed): nothing of it is on disk.
            std::mem::forget(held);
        }
        let db = Db::reopen(dir.path());
        let v = Vault::open(&db).expect("vault");
        assert!(matches!(v.claim(&k).expect("claim"), Claim::New(_)), "the next process owes its crashed predecessor nothing");
        assert!(matches!(v.claim(&Vault::idem_key("his-a", "old")).expect("claim"), Claim::New(_)));
    }

    #[test]
    fn a_claim_waiting_for_a_transaction_does_not_hold_up_other_claims() {
        let (_dir, _db, v) = on_disk();
        let k = Vault::idem_key("his-a", "abc");
        // A transaction (the ledger writer's group commit) holds sled's lock until released:
        // every read of the store waits for it meanwhile.
        let (open_tx, open_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let idempotency = v.idempotency.clone();
        let writer = std::thread::spawn(move || {
            idempotency.transaction(|_| {
                let _ = open_tx.send(());
                let _ = release_rx.recv();
                Ok::<(), ConflictableTransactionError<()>>(())
            })
        });
        open_rx.recv().expect("the transaction is open");
        // Two requests claim the same key: the one that takes it reads the store and waits for
        // the transaction; the other must hear at once that the key is in flight, not queue
        // behind that read.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let claimers: Vec<_> = (0..2)
            .map(|_| {
                let (v, k, done) = (v.clone(), k.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    let claim = v.claim(&k).expect("claim");
                    let _ = done.send(matches!(claim, Claim::New(_)));
                    claim
                })
            })
            .collect();
        // Only the claimers can send now: if one of them fails, the waits below end.
        drop(done_tx);
        let first = done_rx.recv_timeout(std::time::Duration::from_secs(30));
        // Ends the transaction (its wait returns), and any rerun of its closure at once.
        drop(release_tx);
        writer.join().expect("writer").expect("transaction");
        assert_eq!(first, Ok(false), "the second claim answers InFlight while the first one reads the store");
        let second = done_rx.recv().expect("the first claim returns once the transaction is over");
        assert!(second, "the claim that waited for the transaction holds the key");
        let claims: Vec<Claim> = claimers.into_iter().map(|c| c.join().expect("claimer")).collect();
        assert_eq!(claims.iter().filter(|c| matches!(c, Claim::InFlight)).count(), 1, "{claims:?}");
        assert!(matches!(v.claim(&k).expect("claim"), Claim::InFlight), "held until its holder drops it");
        drop(claims);
        assert!(matches!(v.claim(&k).expect("claim"), Claim::New(_)), "given back with the request");
    }

    #[tokio::test]
    async fn what_a_request_stored_outlives_its_claim() {
        let (_dir, _db, v) = on_disk();
        let k = Vault::idem_key("his-a", "abc");
        let Claim::New(held) = v.claim(&k).expect("claim") else { panic!("fresh key") };
        let rec = fixture::record("r1", 1);
        let items = vec![AnswerItem::new("DocumentReference", "r1", 1), AnswerItem::new("Binary", "r1", 1)];
        let write = Write { records: vec![rec], idem: vec![(held.key().to_vec(), IdemState::Committed { items: items.clone() })], ..Write::default() };
        v.store(&write).await.expect("store");
        // The request fails after storing (or its connection is gone): the records stay claimed.
        drop(held);
        let Claim::Existing(state) = v.claim(&k).expect("claim") else { panic!("stored") };
        assert_eq!(state, IdemState::Committed { items });
    }

    #[tokio::test]
    async fn a_status_change_is_checked_inside_the_write_and_refusal_stores_nothing() {
        let (_dir, _db, v) = on_disk();
        v.store(&Write { records: vec![fixture::record("old", 1)], ..Write::default() }).await.expect("store");
        let change = |status: &str, custodian: &str| StatusChange {
            record_id: "old".into(),
            custodian: custodian.into(),
            change: RecordChange { status: status.into(), replaced_by: Some("new".into()), time: "2026-02-01T00:00:00Z".into(), entry_id: "e2".into() },
        };
        let replacing = |c: StatusChange| Write { records: vec![fixture::record("new", 1)], changes: vec![c], outbox: vec![("e2".into(), b"{}".to_vec())], ..Write::default() };
        let refused = v.store(&replacing(change("superseded", "hospital-b"))).await.expect_err("another custodian's record");
        assert!(matches!(refused, StoreError::Conflict(_)), "{refused}");
        assert_eq!(v.get("new").expect("get"), None, "nothing of a refused write is stored");
        assert_eq!(v.outbox_len(), 0);

        v.store(&replacing(change("superseded", "hospital-a"))).await.expect("replace");
        let old = v.get("old").expect("get").expect("kept");
        assert_eq!((old.status(), old.version(), old.version_time(2), old.version_time(1)), ("superseded", 2, "2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"));
        assert!(!old.doc_ct.is_empty(), "a superseded record keeps its content");
        let again = v.store(&Write { records: vec![fixture::record("third", 1)], changes: vec![change("superseded", "hospital-a")], ..Write::default() }).await;
        assert!(matches!(again, Err(StoreError::Conflict(ref m)) if m.contains("superseded")), "{again:?}");
        assert_eq!(v.get("third").expect("get"), None);
        v.store(&Write { changes: vec![change("entered-in-error", "hospital-a")], ..Write::default() }).await.expect("superseded, then entered in error");
        assert_eq!(v.get("old").expect("get").expect("kept").status(), "entered-in-error");
        assert!(!status_change_allowed("entered-in-error", "superseded"));
        assert!(!status_change_allowed("current", "current"));
    }

    #[tokio::test]
    async fn a_patients_record_ids_are_exactly_its_records_and_records_for_sorts_them_by_date() {
        let (_dir, _db, v) = on_disk();
        let of = |id: &str, patient: &str, created: &str| StoredRecord { patient_pseudonym: patient.repeat(32), created: created.into(), ..fixture::record(id, 1) };
        let records = vec![
            of("r3", "ab", "2026-01-01T00:00:00Z"),
            of("r1", "ab", "2026-01-03T00:00:00Z"),
            of("r2", "ab", "2026-01-02T00:00:00Z"),
            of("r0", "ab", "2026-01-02T00:00:00Z"),
            of("x1", "cd", "2026-01-01T00:00:00Z"),
        ];
        v.store(&Write { records, ..Write::default() }).await.expect("store");
        let mut ids = v.record_ids_for(&"ab".repeat(32)).expect("ids");
        ids.sort();
        assert_eq!(ids, ["r0", "r1", "r2", "r3"], "the patient's records, no other patient's");
        let by_date: Vec<String> = v.records_for(&"ab".repeat(32)).expect("records").into_iter().map(|r| r.id).collect();
        assert_eq!(by_date, ["r3", "r0", "r2", "r1"], "oldest first, then by id");
        assert_eq!(v.record_ids_for(&"ef".repeat(32)).expect("ids"), Vec::<String>::new());
    }
}
