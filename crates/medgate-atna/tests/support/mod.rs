//! Test fixtures: a test PKI made with rcgen, a real rsyslog (Debian `rsyslog` + `rsyslog-gnutls`)
//! as the audit record repository with mutual TLS on a free loopback port, an in-memory ledger,
//! and audit events of every kind.
//!
//! rsyslog runs in the foreground (`-n`) as a child process with its own configuration, work
//! directory and output file in a temporary directory; it is stopped by PID (SIGTERM, then waited
//! for) and killed by PID if a test ends while it runs.

#![allow(dead_code, reason = "each test uses a different part of the fixture")]
#![allow(clippy::unwrap_used, reason = "test fixture")]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medgate_atna::{Access, AuditEvent, ClientIdentity, EventDetail, KeyAction, LedgerSource, Position, Requester};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// The name in the repository's certificate.
pub const SERVER_NAME: &str = "arr.test";
/// The name in the gateway's client certificate, the one rsyslog permits.
pub const CLIENT_NAME: &str = "medgate-gw.test";
/// How long a test waits for something it can observe before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

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

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real rsyslog with its TLS driver (gtls), mutual TLS with `x509/name` and one permitted
/// peer, writing every message it receives (`%rawmsg%`) as one line of `received.log`.
pub struct Rsyslog {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start(dir: &Path, pki: &Pki) -> Rsyslog {
        fs::create_dir_all(dir.join("work")).unwrap();
        fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        fs::write(dir.join("server.pem"), &pki.server.cert_pem).unwrap();
        fs::write(dir.join("server.key"), &pki.server.key_pem).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            r#"global(
  workDirectory="{d}/work"
  maxMessageSize="64k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{d}/ca.pem"
  defaultNetstreamDriverCertFile="{d}/server.pem"
  defaultNetstreamDriverKeyFile="{d}/server.key"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/name" permittedPeer=["{CLIENT_NAME}"])
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="arr") {{
  action(type="omfile" file="{d}/received.log" template="raw" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="arr")
*.* action(type="omfile" file="{d}/internal.log")
"#
        );
        fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let mut r = Rsyslog { dir: dir.to_owned(), port, child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("rsyslogd.out")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{RSYSLOGD}: {e} (Debian packages rsyslog and rsyslog-gnutls; scripts/install-deps.sh installs them)"));
        self.child = Some(child);
        // Ready when the TLS listener accepts connections.
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("rsyslogd exited with {status}:\n{}", self.diagnostics());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "rsyslogd did not listen on {} within {PATIENCE:?}:\n{}", self.port, self.diagnostics());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM by PID, then waits for the process to exit (rsyslog writes what it has read first).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rsyslogd did not stop on SIGTERM within {PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again on the same port, with the same configuration and output file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "rsyslogd is still running");
        self.spawn();
    }

    /// The lines received so far (each one syslog message).
    pub fn received(&self) -> Vec<String> {
        match fs::read(self.dir.join("received.log")) {
            Ok(b) => String::from_utf8(b).unwrap().lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until at least `n` lines have been received.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines = self.received();
            if lines.len() >= n {
                return lines;
            }
            assert!(Instant::now() < deadline, "{} of {n} messages received within {PATIENCE:?}:\n{}", lines.len(), self.diagnostics());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn diagnostics(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let tail = |s: String| s.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("--- rsyslogd output\n{}\n--- rsyslog internal log\n{}", tail(read("rsyslogd.out")), tail(read("internal.log")))
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
