//! Test fixtures: a test PKI made with rcgen, a real rsyslog (Debian `rsyslog` + `rsyslog-gnutls`)
//! as the audit record repository with mutual TLS on a free loopback port, an in-memory ledger,
//! and audit events of every kind.
//!
//! rsyslog runs in the foreground (`-n`) as a child process with its own configuration, work
//! directory and output file in a temporary directory; it is stopped by PID (SIGTERM, then waited
//! for) and killed by PID if a test ends while it runs.

#![allow(dead_code, reason = "each test uses a different part of the fixture")]
#![allow(clippy::unwrap_used, reason = "test fixture")]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medgate_atna::{Access, AuditEvent, ClientIdentity, EventDetail, KeyAction, LedgerSource, Position, Requester};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The name in the repository's certificate.
pub const SERVER_NAME: &str = "arr.test";
/// The name in the gateway's client certificate, the one rsyslog permits.
pub const CLIENT_NAME: &str = "medgate-gw.test";

/// A CA and the certificates it issued, as PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

pub struct Pki {
    pub ca_pem: String,
    pub server: Issued,
    pub client: Issued,
    /// A client certificate from another CA, which the repository must refuse.
    pub stranger: Issued,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params.self_signed(&key).unwrap(), key)
}

fn issue(ca: &(rcgen::Certificate, KeyPair), name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    Issued { cert_pem: cert.pem(), cert_der: cert.der().clone(), key_pem: key.serialize_pem(), key_der: key.serialize_der() }
}

impl Pki {
    pub fn new() -> Pki {
        let authority = ca("medgate test audit CA");
        let other = ca("some other CA");
        Pki {
            ca_pem: authority.0.pem(),
            server: issue(&authority, SERVER_NAME, ExtendedKeyUsagePurpose::ServerAuth),
            client: issue(&authority, CLIENT_NAME, ExtendedKeyUsagePurpose::ClientAuth),
            stranger: issue(&other, CLIENT_NAME, ExtendedKeyUsagePurpose::ClientAuth),
        }
    }

    /// The gateway's identity as the exporter takes it: a chain and a rustls `SigningKey` (an
    /// in-process key here; the gateway passes its HSM-backed one).
    pub fn identity(issued: &Issued) -> ClientIdentity {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone()));
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&der).unwrap();
        ClientIdentity::Key { chain: vec![issued.cert_der.clone()], key }
    }
}

/// The rsyslog repository fixture, shared with the gateway's own tests.
#[path = "../../../../tests/support/rsyslog.rs"]
mod rsyslog;
pub use rsyslog::{Rsyslog, PATIENCE};

impl Rsyslog {
    /// A repository with the PKI's server certificate, permitting only the gateway's client
    /// certificate ([`CLIENT_NAME`]).
    pub fn start_for(dir: &Path, pki: &Pki) -> Rsyslog {
        Rsyslog::start(dir, &pki.ca_pem, &pki.server.cert_pem, &pki.server.key_pem, CLIENT_NAME)
    }
}

/// Polls `cond` until it holds (an observable state, not a timer), or fails the test.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The ledger as the exporter reads it: blocks of audited events, in order.
#[derive(Default)]
pub struct MemLedger {
    events: Mutex<Vec<(Position, AuditEvent)>>,
}

impl MemLedger {
    /// Commits a block of events at the next height and returns what the gateway would offer.
    pub fn commit(&self, events: Vec<AuditEvent>) -> (u64, Vec<(u32, AuditEvent)>) {
        let mut all = self.events.lock().unwrap();
        let height = all.last().map_or(1, |(p, _)| p.height + 1);
        let offered: Vec<(u32, AuditEvent)> = events.into_iter().enumerate().map(|(i, e)| (i as u32, e)).collect();
        all.extend(offered.iter().map(|(i, e)| (Position::new(height, *i), e.clone())));
        (height, offered)
    }
}

impl LedgerSource for MemLedger {
    fn events_after(&self, after: Option<Position>, max: usize) -> Result<Vec<(Position, AuditEvent)>, String> {
        let all = self.events.lock().unwrap();
        Ok(all.iter().filter(|(p, _)| after.is_none_or(|a| *p > a)).take(max).cloned().collect())
    }

    fn head(&self) -> Result<Option<Position>, String> {
        Ok(self.events.lock().unwrap().last().map(|(p, _)| *p))
    }
}

pub fn shared_ledger() -> Arc<MemLedger> {
    Arc::new(MemLedger::default())
}

/// What the HIS knew about the patient: never given to the exporter, and checked absent from
/// everything the repository receives and from the queue files.
pub const PATIENT_IDENTIFIER: &str = "urn:oid:2.16.756.5.30.1.123.100.1.1.1|PAT-7734-1962";
pub const PATIENT_NAME: &str = "Roe^Jane";

/// A stand-in for the HSM-keyed pseudonym of the patient (64 lowercase hex).
pub fn pseudonym(seed: u64) -> String {
    format!("{:016x}", seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).repeat(4)
}

/// Event number `n`: a distinct ledger entry id; the kind cycles through every audited kind.
pub fn event(n: u64) -> AuditEvent {
    let by = Requester { user: format!("{:032x}", n * 7 + 1), role: "physician".into(), purpose: Some("TREAT".into()), hospital: "hospital-a".into() };
    let patient = pseudonym(n % 17);
    let record_id = format!("rec-{n}");
    let detail = match n % 9 {
        0 => EventDetail::RecordStored { record_id, patient, by },
        1 => EventDetail::PatientSearched { patient, results: 3, by },
        2 => EventDetail::RecordRead { record_id, patient, custodian: "hospital-a".into(), by, access: Access::Granted },
        3 => EventDetail::RecordRead {
            record_id,
            patient,
            custodian: "hospital-a".into(),
            by: Requester { hospital: "hospital-b".into(), ..by },
            access: Access::Denied { reason: "no-consent".into() },
        },
        4 => EventDetail::RecordRead {
            record_id,
            patient,
            custodian: "hospital-a".into(),
            by: Requester { purpose: Some("BTG".into()), role: "emergency-physician".into(), ..by },
            access: Access::BreakGlass,
        },
        5 => EventDetail::RecordErased { record_id, patient, by: Requester { purpose: None, ..by } },
        6 => EventDetail::ConsentRecorded { consent_id: format!("consent-{n}"), patient, grantee: "hospital-b".into(), by: Requester { purpose: None, ..by } },
        7 => EventDetail::ConsentWithdrawn { consent_id: format!("consent-{n}"), patient, grantee: "hospital-b".into(), by: Requester { purpose: None, ..by } },
        _ => EventDetail::KeyEvent { action: KeyAction::Rotate, key_role: "ledger".into(), key_version: 2, key_id: "0a1b2c".into(), officer: "officer-1".into() },
    };
    AuditEvent { entry_id: format!("{n:064x}"), time: "2026-11-28T10:00:00.123456789Z".into(), gateway: "hospital-a".into(), detail }
}
