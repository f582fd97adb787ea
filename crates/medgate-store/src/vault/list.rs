//! Sealed lists: the IHE MHD SubmissionSet a document submission carries, kept like a record's
//! metadata. The List (and the Patient resource the submission carried, if any) is encrypted
//! under a fresh data key wrapped by the HSM KEK; in the clear the vault keeps only ids, the
//! patient pseudonym, the list type code and the ids of the records the list names (all of
//! which the ledger holds too).
//!
//! Trees: `lists` (id → [`StoredList`]) and `lists_by_patient` (pseudonym/id → ()). Both are
//! written in the transaction that stores the list's records (see [`super::Vault::store`]).

use medgate_hsm::{Hsm, HsmError, WrappedKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{open, seal, Vault, VaultError, B64};
use crate::error::to_json;
use crate::StoreError;
use base64::Engine;

/// What the vault keeps for one list. Only ids, codes, a pseudonym and ciphertext: the List
/// itself (with the patient's identifier, the author, the title...) is inside `meta_ct`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredList {
    pub id: String,
    /// When the gateway stored it (RFC 3339 UTC).
    pub created: String,
    /// Hospital id of the custodian.
    pub custodian: String,
    pub patient_pseudonym: String,
    pub pseudonym_key_version: u32,
    /// The MHD list type: `submissionset`.
    pub code: String,
    /// The records the list names, in its order (ids in this vault).
    pub record_ids: Vec<String>,
    pub kek_version: u32,
    pub wrapped_key: String,
    pub meta_nonce: String,
    pub meta_ct: String,
    /// The ledger entry that anchors this list.
    pub entry_id: String,
    /// Never set today (lists are not erased); read by the shred pass like a record's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<String>,
}

/// The sensitive content sealed with a list: the patient's identifier, the List as the HIS sent
/// it (references to the submission's entries rewritten to their stored ids), and the Patient
/// resource the submission carried, if any.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SealedList {
    pub patient_system: String,
    pub patient_value: String,
    pub list: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_resource: Option<serde_json::Value>,
}

/// A decrypted list, in zeroizing memory while it is JSON.
#[derive(Clone)]
pub struct OpenList {
    pub stored: StoredList,
    pub sealed: SealedList,
}

impl std::fmt::Debug for OpenList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenList").field("id", &self.stored.id).finish_non_exhaustive()
    }
}

/// Binds the sealed content to the list's id, patient pseudonym, code and records: moving the
/// ciphertext to another list, or changing what the clear fields say, fails its integrity check.
fn list_aad(id: &str, pseudonym: &str, code: &str, record_ids: &[String]) -> Vec<u8> {
    format!("medgate-list-v1\0{id}\0{pseudonym}\0{code}\0{}", record_ids.join("\0")).into_bytes()
}

/// What [`seal_list`] needs besides the content.
#[derive(Debug, Clone, Copy)]
pub struct ListHeader<'a> {
    pub id: &'a str,
    pub created: &'a str,
    pub custodian: &'a str,
    /// (pseudonym, pseudonym key version).
    pub pseudonym: (&'a str, u32),
    pub code: &'a str,
    pub record_ids: &'a [String],
    pub entry_id: &'a str,
}

/// Encrypts a list under a fresh data key wrapped by the HSM (one C_WrapKey).
pub fn seal_list(hsm: &Hsm, h: &ListHeader<'_>, content: &SealedList) -> Result<StoredList, VaultError> {
    let rng = SystemRandom::new();
    let mut dk = Zeroizing::new([0u8; 32]);
    rng.fill(dk.as_mut()).map_err(|_| VaultError::Storage("random".into()))?;
    let wrapped = hsm.wrap_data_key(dk.as_ref())?;
    let plain = Zeroizing::new(to_json("sealed list", content)?);
    let (nonce, ct) = seal(dk.as_ref(), &list_aad(h.id, h.pseudonym.0, h.code, h.record_ids), &plain, &rng)?;
    Ok(StoredList {
        id: h.id.to_owned(),
        created: h.created.to_owned(),
        custodian: h.custodian.to_owned(),
        patient_pseudonym: h.pseudonym.0.to_owned(),
        pseudonym_key_version: h.pseudonym.1,
        code: h.code.to_owned(),
        record_ids: h.record_ids.to_vec(),
        kek_version: wrapped.kek_version,
        wrapped_key: B64.encode(&wrapped.bytes),
        meta_nonce: B64.encode(nonce),
        meta_ct: B64.encode(ct),
        entry_id: h.entry_id.to_owned(),
        erased: None,
    })
}

/// Unwraps the list's data key in the HSM and decrypts it.
pub fn open_list(hsm: &Hsm, list: &StoredList) -> Result<OpenList, VaultError> {
    let integrity = || VaultError::Integrity(list.id.clone());
    let wrapped = WrappedKey { kek_version: list.kek_version, bytes: B64.decode(&list.wrapped_key).map_err(|_| integrity())? };
    let dk = match hsm.unwrap_data_key(&wrapped) {
        Ok(k) => k,
        Err(HsmError::Integrity) => return Err(integrity()),
        Err(e) => return Err(e.into()),
    };
    let aad = list_aad(&list.id, &list.patient_pseudonym, &list.code, &list.record_ids);
    let plain = open(&list.id, &dk, &aad, &list.meta_nonce, &list.meta_ct)?;
    let sealed: SealedList = serde_json::from_slice(&plain).map_err(|_| integrity())?;
    Ok(OpenList { stored: list.clone(), sealed })
}

/// Opens a list as [`open_list`] does, following a concurrent shred pass (see
/// [`super::open_latest`]).
pub fn open_list_latest(hsm: &Hsm, vault: &Vault, list: &StoredList) -> Result<OpenList, VaultError> {
    let first = open_list(hsm, list);
    if let Err(VaultError::Hsm(HsmError::KeyMissing { role: medgate_hsm::Role::Kek, .. })) = &first {
        if let Some(now) = vault.get_list(&list.id)?.filter(|now| now.kek_version != list.kek_version) {
            return open_list(hsm, &now);
        }
    }
    first
}

impl Vault {
    /// A stored list by id.
    pub fn get_list(&self, id: &str) -> Result<Option<StoredList>, VaultError> {
        match self.lists.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::corrupt(format!("list {id}"), e)),
        }
    }

    /// This hospital's lists about one patient (by pseudonym), oldest first (then by id).
    pub fn lists_for(&self, pseudonym: &str) -> Result<Vec<StoredList>, VaultError> {
        let mut out = Vec::new();
        for kv in self.lists_by_patient.scan_prefix(format!("{pseudonym}/").as_bytes()) {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[pseudonym.len() + 1..]).into_owned();
            if let Some(l) = self.get_list(&id)? {
                out.push(l);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// How many lists the vault holds.
    pub fn list_count(&self) -> usize {
        self.lists.len()
    }
}

/// A list for unit tests that need no HSM (its ciphertext is no real ciphertext).
#[cfg(any(test, feature = "fixtures"))]
pub fn fixture(id: &str, pseudonym: &str, record_ids: &[&str], kek_version: u32) -> StoredList {
    StoredList {
        id: id.to_owned(),
        created: "2026-01-01T00:00:00Z".into(),
        custodian: "hospital-a".into(),
        patient_pseudonym: pseudonym.to_owned(),
        pseudonym_key_version: 1,
        code: "submissionset".into(),
        record_ids: record_ids.iter().map(|r| (*r).to_owned()).collect(),
        kek_version,
        wrapped_key: "AAAA".into(),
        meta_nonce: "AAAA".into(),
        meta_ct: "AAAA".into(),
        entry_id: "ef".repeat(32),
        erased: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fixture as records, Write};
    use super::*;
    use crate::Db;

    #[tokio::test]
    async fn lists_are_stored_with_their_records_and_found_by_patient() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = Db::open(dir.path()).expect("db");
        let v = Vault::open(&db).expect("vault");
        let p = "ab".repeat(32);
        let other = "cd".repeat(32);
        let rec = records::record("r1", 1);
        let mut l1 = fixture("l1", &p, &["r1"], 1);
        l1.created = "2026-01-02T00:00:00Z".into();
        let l0 = fixture("l0", &p, &["r1"], 1);
        let l2 = fixture("l2", &other, &["r1"], 1);
        let write = Write { records: vec![rec], lists: vec![l1.clone(), l0.clone(), l2], ..Write::default() };
        v.store(&write).await.expect("store");
        assert_eq!(v.lists_for(&p).expect("scan"), vec![l0, l1.clone()], "oldest first, this patient only");
        assert_eq!(v.get_list("l1").expect("get"), Some(l1));
        assert_eq!(v.get_list("nope").expect("get"), None);
        assert_eq!(v.list_count(), 3);
        assert!(v.lists_for(&"ef".repeat(32)).expect("scan").is_empty());
    }

    #[test]
    fn the_clear_fields_are_bound_to_the_sealed_content() {
        let ids = vec!["r1".to_owned()];
        let base = list_aad("l1", "ab", "submissionset", &ids);
        assert_ne!(base, list_aad("l2", "ab", "submissionset", &ids));
        assert_ne!(base, list_aad("l1", "cd", "submissionset", &ids));
        assert_ne!(base, list_aad("l1", "ab", "folder", &ids));
        assert_ne!(base, list_aad("l1", "ab", "submissionset", &["r2".to_owned()]));
    }
}
