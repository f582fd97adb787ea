//! Test-only fixtures: P-256 signing keys made with ring (standing in for the HSM) and sample
//! entries. Not compiled outside tests.

#![allow(clippy::unwrap_used, reason = "test fixtures")]

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::{Batch, Entry, EntryBody, UnsignedBatch};

/// A P-256 key pair generated in memory. Signing hashes the message with SHA-256 and signs the
/// digest, exactly what the HSM does with `CKM_ECDSA` over `signing_digest()`.
pub(super) struct TestKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl TestKey {
    pub(super) fn new() -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap();
        TestKey { pair, rng }
    }

    /// SubjectPublicKeyInfo DER (91 bytes).
    pub(super) fn spki(&self) -> Vec<u8> {
        let mut out = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        out.extend_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// Raw `r || s` over SHA-256(message), as returned by the HSM (not normalized).
    pub(super) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(&self.rng, message).unwrap().as_ref().to_vec()
    }

    /// Signs an unsigned batch as key version `version`.
    pub(super) fn sign_batch(&self, unsigned: UnsignedBatch, version: u32) -> Batch {
        let sig = self.sign(&unsigned.signing_message());
        unsigned.sign(version, &sig)
    }
}

/// A deterministic 16-byte nonce from a counter.
pub(super) fn nonce(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[8..].copy_from_slice(&n.to_be_bytes());
    out
}

/// A 64-hex pseudonym derived from a label (tests only; the real one is an HSM HMAC).
pub(super) fn pseudonym(label: &str) -> String {
    hex::encode(super::canon::sha256(label.as_bytes()))
}

/// A record-anchored entry written by `gateway`.
pub(super) fn anchored(gateway: &str, n: u64) -> Entry {
    Entry::new(
        gateway,
        "2025-01-02T03:04:05Z",
        nonce(n),
        EntryBody::RecordAnchored {
            record_id: format!("rec-{n}"),
            patient: pseudonym(&format!("patient {}", n % 3)),
            pseudonym_key_version: 1,
            content_hash: pseudonym(&format!("content {n}")),
            content_type: "application/pdf".to_owned(),
            size: 1000 + n,
            custodian: gateway.to_owned(),
            user: pseudonym("dr who"),
            role: "physician".to_owned(),
            purpose: "TREAT".to_owned(),
        },
    )
}

/// One entry of every kind, written by `gateway`.
/// Base64 DER of a fixed P-256 public key: enough for shape checks of membership entries and
/// cards (nothing verifies a signature with it).
pub(crate) const P256_SPKI_B64: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8VCZ4n49Ubfrc7xdVEeHnqynb8ysdTNviUwqdVONnXPg1dzDVEMkq5O2mmXFd9OF6WbACh4i/Tlt3A9JZYGLdg==";

pub(super) fn one_of_each(gateway: &str) -> Vec<Entry> {
    let t = "2025-01-02T03:04:05.123Z";
    vec![
        anchored(gateway, 1),
        Entry::new(
            gateway,
            t,
            nonce(2),
            EntryBody::RecordRead {
                record_id: "rec-1".to_owned(),
                patient: pseudonym("patient 1"),
                custodian: gateway.to_owned(),
                reader: "hospital-b".to_owned(),
                user: pseudonym("nurse"),
                role: "nurse".to_owned(),
                purpose: "TREAT".to_owned(),
                granted: false,
                reason: Some("no-consent".to_owned()),
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(3),
            EntryBody::PatientSearched {
                patient: pseudonym("patient 1"),
                reader: gateway.to_owned(),
                user: pseudonym("nurse"),
                role: "nurse".to_owned(),
                purpose: "TREAT".to_owned(),
                results: 2,
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(4),
            EntryBody::KeyEvent {
                action: "rotate".to_owned(),
                key_role: "ledger-signing".to_owned(),
                key_version: 2,
                key_id: "0a1b2c".to_owned(),
                officer: "so-1".to_owned(),
                request: None,
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(5),
            EntryBody::ConsentRecorded {
                consent_id: "c-1".to_owned(),
                patient: pseudonym("patient 1"),
                custodian: gateway.to_owned(),
                grantee: "hospital-b".to_owned(),
                record_ids: vec!["rec-1".to_owned(), "rec-2".to_owned()],
                start: Some(t.to_owned()),
                end: None,
                user: pseudonym("nurse"),
                role: "nurse".to_owned(),
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(7),
            EntryBody::RecordErased {
                record_id: "rec-1".to_owned(),
                patient: pseudonym("patient 1"),
                custodian: gateway.to_owned(),
                user: pseudonym("nurse"),
                role: "nurse".to_owned(),
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(6),
            EntryBody::ConsentRevoked {
                consent_id: "c-1".to_owned(),
                patient: pseudonym("patient 1"),
                custodian: gateway.to_owned(),
                grantee: "hospital-b".to_owned(),
                user: pseudonym("nurse"),
                role: "nurse".to_owned(),
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(7),
            EntryBody::MembershipProposed {
                proposal_id: "0f".repeat(16),
                action: "add".to_owned(),
                hospital_id: "hospital-d".to_owned(),
                ledger_public_key: Some(P256_SPKI_B64.to_owned()),
                ledger_key_version: Some(1),
                sharing_public_key: None,
                peer_address: Some("10.20.0.24:9443".to_owned()),
                proposer: gateway.to_owned(),
            },
        ),
        Entry::new(gateway, t, nonce(8), EntryBody::MembershipApproved { proposal_id: "0f".repeat(16), approver: gateway.to_owned() }),
        Entry::new(
            gateway,
            t,
            nonce(9),
            EntryBody::OfficerChanged {
                action: "enrol".to_owned(),
                officer: Some("alice".to_owned()),
                officer_key: Some("ab".repeat(32)),
                public_key: Some(P256_SPKI_B64.to_owned()),
                quorum: 2,
                request: "cd".repeat(32),
            },
        ),
        approval_entry(gateway, &TestKey::new(), &request(gateway, "destroy"), "alice", 10),
        Entry::new(
            gateway,
            t,
            nonce(11),
            EntryBody::KeyEvent {
                action: "destroy".to_owned(),
                key_role: "kek".to_owned(),
                key_version: 1,
                key_id: "0a1b2c".to_owned(),
                officer: "alice+bob".to_owned(),
                request: Some(request(gateway, "destroy").id()),
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(12),
            EntryBody::ListAnchored {
                list_id: "list-1".to_owned(),
                patient: pseudonym("patient 1"),
                pseudonym_key_version: 1,
                code: "submissionset".to_owned(),
                record_ids: vec!["rec-1".to_owned(), "rec-2".to_owned()],
                custodian: gateway.to_owned(),
                user: pseudonym("nurse"),
                role: "nurse".to_owned(),
                purpose: "TREAT".to_owned(),
            },
        ),
        Entry::new(
            gateway,
            t,
            nonce(13),
            EntryBody::RecordStatusChanged {
                record_id: "rec-1".to_owned(),
                patient: pseudonym("patient 1"),
                custodian: gateway.to_owned(),
                status: "superseded".to_owned(),
                replaced_by: Some("rec-2".to_owned()),
                user: pseudonym("nurse"),
                role: "nurse".to_owned(),
            },
        ),
    ]
}

/// A request of `operation` on kek version 1, valid for an hour from 2025-01-02T03:00:00Z.
pub(super) fn request(hospital: &str, operation: &str) -> crate::officers::Request {
    crate::officers::Request {
        operation: operation.to_owned(),
        hospital: hospital.to_owned(),
        token: "medgate".to_owned(),
        role: Some("kek".to_owned()),
        version: Some(1),
        detail: None,
        nonce: "11".repeat(16),
        issued: "2025-01-02T03:00:00Z".to_owned(),
        expires: "2025-01-02T04:00:00Z".to_owned(),
    }
}

impl TestKey {
    /// This key as an enrolled officer named `name`.
    pub(super) fn officer(&self, name: &str) -> crate::officers::Officer {
        crate::officers::Officer { name: name.to_owned(), public_key: crate::keys::b64_encode(&self.spki()) }
    }

    /// Its approval of `request`.
    pub(super) fn approve(&self, request: &crate::officers::Request) -> crate::officers::Approval {
        crate::officers::Approval {
            officer_key: crate::officers::key_id(&self.spki()),
            signature: hex::encode(super::normalize_low_s(&self.sign(&request.message()))),
        }
    }
}

/// The ledger entry of `key`'s approval of `request` as officer `name`.
pub(super) fn approval_entry(gateway: &str, key: &TestKey, request: &crate::officers::Request, name: &str, n: u64) -> Entry {
    let a = key.approve(request);
    Entry::new(
        gateway,
        "2025-01-02T03:04:05Z",
        nonce(n),
        EntryBody::KeyApproval {
            request: request.id(),
            operation: request.operation.clone(),
            hospital: request.hospital.clone(),
            token: request.token.clone(),
            key_role: request.role.clone(),
            key_version: request.version,
            detail: request.detail.clone(),
            nonce: request.nonce.clone(),
            issued: request.issued.clone(),
            expires: request.expires.clone(),
            officer: name.to_owned(),
            officer_key: a.officer_key,
            signature: a.signature,
        },
    )
}
