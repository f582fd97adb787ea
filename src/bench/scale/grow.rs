//! Grows the ledger quickly with real, verifiable entries: what a busy hospital's gateway
//! records for its patients (a record stored, read twice, the patient searched), with
//! pseudonyms only. The entries go through the running gateway's own ledger writer
//! ([`Ledger::record`]), as an access or a search does: the writer cuts them into blocks of at
//! most `ledger.batch_max_entries` entries, signs each once with the site's ledger key in the
//! HSM, and stores each block with the entry, patient audit and record indexes in its group
//! transaction, flushed. Only HTTP, TLS and the per-request work of the API are skipped. The
//! requests are as large as a group may be (`ledger.batch_max_entries`) and many are in flight,
//! as many as HIS clients at high load, so that the writer commits the groups it commits under
//! API load: larger transactions would hold more of sled's replaced leaves in memory until they
//! end, and the memory measured would be the loader's, not the gateway's. The records the
//! entries anchor are not in the vault (no search finds them); the ledger does not need them.

use std::time::{Duration, Instant};

use medgate_ledger::{Entry, EntryBody};
use medgate_store::Ledger;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::task::JoinSet;

use crate::exit::Failure;

/// Requests in flight at once, as from 64 HIS clients: the writer gathers the waiting ones
/// into its next group while one is flushed.
const IN_FLIGHT: usize = 64;
/// Patients the other entries are spread over.
const PATIENTS: usize = 50_000;

/// The patient whose audit trail is measured: a fixed number of entries, spread over the
/// first growth step, and none after.
#[derive(Debug, Clone)]
pub struct Audited {
    pub pseudonym: String,
    pub key_version: u32,
    pub entries: usize,
}

/// Writes entries for many patients (and the audited one) through the gateway's writer.
pub struct Grower {
    ledger: Ledger,
    /// Entries per request: the most a group holds.
    chunk: usize,
    hospital: String,
    rng: SystemRandom,
    patients: Vec<String>,
    users: Vec<String>,
    audited: Audited,
    /// Entries of the audited patient still to write.
    audited_left: usize,
    /// Entries generated so far (the kind and the patient follow from it).
    count: usize,
    /// The record the current group of four entries anchors, reads and finds.
    record: String,
}

/// One growth step.
#[derive(Debug, Clone, Copy)]
pub struct Grown {
    pub entries: usize,
    pub elapsed: Duration,
}

impl Grown {
    pub fn rate(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Grower {
    /// `chunk`: entries per request, the gateway's `ledger.batch_max_entries`.
    pub fn new(ledger: Ledger, chunk: usize, hospital: &str, audited: Audited) -> Grower {
        let rng = SystemRandom::new();
        let hex = |n: usize| {
            let mut b = vec![0u8; n];
            let _ = rng.fill(&mut b);
            hex::encode(b)
        };
        let patients = (0..PATIENTS).map(|_| hex(32)).collect();
        let users = (0..200).map(|_| hex(32)).collect();
        let audited_left = audited.entries;
        Grower { ledger, chunk: chunk.max(1), hospital: hospital.to_owned(), rng, patients, users, audited, audited_left, count: 0, record: String::new() }
    }

    /// Entries of the audited patient written so far.
    pub fn audited_written(&self) -> usize {
        self.audited.entries - self.audited_left
    }

    fn random_hex(&self, n: usize) -> String {
        let mut b = vec![0u8; n];
        let _ = self.rng.fill(&mut b);
        hex::encode(b)
    }

    /// The next entry: in each group of four, the record is stored, read twice, and its patient
    /// searched. Every `stride`-th entry is the audited patient's while it has entries left.
    fn next_entry(&mut self, stride: usize) -> Entry {
        let i = self.count;
        self.count += 1;
        let (patient, version) = if self.audited_left > 0 && i % stride == 0 {
            self.audited_left -= 1;
            (self.audited.pseudonym.clone(), self.audited.key_version)
        } else {
            (self.patients[(i / 4) % self.patients.len()].clone(), self.audited.key_version)
        };
        if i % 4 == 0 {
            self.record = self.random_hex(16);
        }
        let user = self.users[i % self.users.len()].clone();
        let (role, purpose, custodian) = ("physician".to_owned(), "TREAT".to_owned(), self.hospital.clone());
        let body = match i % 4 {
            0 => EntryBody::RecordAnchored {
                record_id: self.record.clone(),
                patient,
                pseudonym_key_version: version,
                content_hash: self.random_hex(32),
                content_type: "application/pdf".into(),
                size: 4096 + (i % 61) as u64 * 512,
                custodian,
                user,
                role,
                purpose,
            },
            1 | 2 => EntryBody::RecordRead { record_id: self.record.clone(), patient, reader: custodian.clone(), custodian, user, role, purpose, granted: true, reason: None },
            _ => EntryBody::PatientSearched { patient, reader: custodian, user, role, purpose, results: 1 + (i % 7) as u32 },
        };
        let mut nonce = [0u8; 16];
        let _ = self.rng.fill(&mut nonce);
        Entry::new(&self.hospital, &medgate_gateway::clock::now_rfc3339(), nonce, body)
    }

    /// Appends `n` entries, `IN_FLIGHT` requests of `chunk` at a time, each answered once its
    /// block is flushed; the audited patient's entries are spread over the first `n` written.
    /// Prints its progress on standard error.
    pub async fn grow(&mut self, n: usize) -> Result<Grown, Failure> {
        let stride = (n / self.audited_left.max(1)).max(1);
        let started = Instant::now();
        let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
        let (mut sent, mut said) = (0, 0);
        while sent < n {
            let k = self.chunk.min(n - sent);
            let entries: Vec<Entry> = (0..k).map(|_| self.next_entry(stride)).collect();
            let ledger = self.ledger.clone();
            tasks.spawn(async move {
                match ledger.record(entries).await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("the ledger did not take the entries (they wait in the outbox)".into()),
                    Err(e) => Err(e.to_string()),
                }
            });
            sent += k;
            while tasks.len() >= IN_FLIGHT {
                join_one(&mut tasks).await?;
            }
            if sent - said >= 100_000 {
                said = sent;
                eprintln!("medgate bench: scale: {sent} of {n} entries written ({:.0} entries/s)", sent as f64 / started.elapsed().as_secs_f64());
            }
        }
        while !tasks.is_empty() {
            join_one(&mut tasks).await?;
        }
        Ok(Grown { entries: n, elapsed: started.elapsed() })
    }
}

async fn join_one(tasks: &mut JoinSet<Result<(), String>>) -> Result<(), Failure> {
    match tasks.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(Failure::runtime(format!("bulk ledger write: {e}"))),
        Some(Err(e)) => Err(Failure::runtime(format!("bulk ledger write: {e}"))),
    }
}
