//! The gateway as a value: what happens to a record between the HIS and the ledger, without HTTP.
//!
//! Boundary: takes validated FHIR submissions and the caller's identity, returns FHIR JSON or a
//! [`GatewayError`]. Owns the order of durable steps: a record (or a status change), its index
//! row, its idempotency state and its ledger entry are stored and flushed together (with the
//! entry's block, in one group commit, on a standalone gateway; with the entry in the outbox
//! before it is ordered, in a consortium), and the HIS hears 201 only once the entry is in a
//! flushed block (202 when the ledger could not take it: the entry waits in the outbox and
//! nothing is lost).
//! The work is split by subject: `records`, `search`, `retrieve`, `consents`, `sharing`,
//! `checkpoints`, `membership`, `audit`; this file holds what they share.
//!
//! HSM budget per stored record: one data-key wrap (through the pool: two PKCS#11 calls with an
//! AES-GCM KEK, three with RFC 5649) plus the batch signature shared by every entry of the
//! batch. Patient and user pseudonyms are HMACs computed in the HSM and cached in memory by a
//! hash of the input, so a busy patient costs one HMAC, not one per request.

mod audit;
mod checkpoints;
mod consents;
mod lists;
mod membership;
mod provide;
mod records;
mod retrieve;
mod search;
mod sharing;
mod status;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use medgate_fhir::PatientId;
use medgate_hsm::Hsm;
use medgate_ledger::{Checkpoint, Entry, EntryBody, Receipt};
use medgate_store::order::BoxFuture;
use medgate_store::vault::{self, AnswerItem, Claim, Held, StoredRecord, Vault};
use medgate_store::{Ledger, StoreError};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use audit::break_glass_json;
pub use lists::SubmissionSet;
pub use retrieve::{Located, Retrieved, BINARY_VERSION};

use crate::metrics::Metrics;
use crate::peer::{PeerService, ReadGrant, ReadRequest, Sharing};
use crate::shred::{ShredHost, Shredder};
use crate::tls::ClientIdentity;
use crate::GatewayError;

/// Purpose-of-use codes (HL7 v3 PurposeOfUse) the HIS may assert.
pub const PURPOSES: [&str; 10] =
    ["TREAT", "ETREAT", "BTG", "HPAYMT", "HOPERAT", "PATRQT", "HRESCH", "PUBHLTH", "COC", "HLEGAL"];

/// Largest number of cached pseudonyms (patients and users together).
const PSEUDONYM_CACHE: usize = 100_000;

/// Who asks, on whose behalf, and why: the verified HIS certificate plus what the HIS asserts
/// about its end user. The user id is pseudonymised before it is recorded anywhere.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The HIS, from its verified certificate.
    pub client: ClientIdentity,
    /// The end user's id in the HIS (pseudonymised before it is recorded).
    pub user: String,
    /// The end user's role code.
    pub role: String,
    /// The HL7 v3 purpose of use.
    pub purpose: String,
}

/// What a create produced: the HTTP status (201, or 202 while entries wait in the outbox, or 200
/// for a repeat) and the body.
#[derive(Debug, Clone)]
pub struct Created {
    /// 201, 202 or 200.
    pub status: u16,
    /// The FHIR answer.
    pub body: Value,
    /// `DocumentReference/{id}` of the first record, for the Location header.
    pub location: Option<String>,
}

/// A decrypted document for `GET /Binary/{id}`.
#[derive(Debug)]
pub struct Document {
    /// Its MIME type.
    pub content_type: String,
    /// The plaintext, zeroized when dropped.
    pub bytes: zeroize::Zeroizing<Vec<u8>>,
}

/// SHA-256 of the pseudonymised input → (pseudonym key version, pseudonym).
type PseudonymCache = HashMap<[u8; 32], (u32, String)>;

/// The service: HSM, vault, ledger, metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// This hospital's id.
    pub hospital: String,
    /// The HSM session pool.
    pub hsm: Arc<Hsm>,
    /// The encrypted records.
    pub vault: Vault,
    /// The ledger writer and the chain.
    pub ledger: Ledger,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    pseudonyms: Arc<Mutex<PseudonymCache>>,
    /// Consortium sharing (peer reads); `None` in standalone mode.
    sharing: Option<Arc<Sharing>>,
    /// Crypto-shredding after erasures (see [`crate::shred`]).
    pub shred: Arc<Shredder>,
    /// One consent recorded at a time, so that a retry racing its first attempt finds it.
    consenting: Arc<tokio::sync::Mutex<()>>,
    /// The writes running on tasks of their own ([`Writes::to_the_end`]).
    pub writes: Writes,
}

/// Writes that run to their end on tasks of their own, even if their client goes away meanwhile
/// (the connection closes and the request is dropped). Cut short between its steps, a create or
/// a consent would give back what it holds while what it handed over is still on its way to the
/// store: its idempotency keys and the consent lock, so that a retry records it twice, or the
/// shred pass's sealing guard, so that a pass could destroy the KEK version a queued record's
/// data key is wrapped under. A stop waits for them ([`Writes::finished`]).
#[derive(Debug, Clone, Default)]
pub struct Writes(Arc<tokio::sync::RwLock<()>>);

tokio::task_local! {
    /// What the request being served holds (see [`Hold`]).
    static REQUEST_HOLD: Hold;
}

/// Something a request holds until it is done, its place among its client's requests in
/// flight (`limits.max_requests_in_flight_per_client`): the server serves each request inside
/// [`Hold::around`], and a write the request leaves running after its client went away
/// ([`Writes::to_the_end`]) keeps it until the write ends. A client that sends writes and
/// hangs up at once therefore still has them counted.
#[derive(Clone)]
pub struct Hold(pub Arc<dyn Send + Sync>);

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

impl Hold {
    /// Runs `request` (serving one request) with this held by it and by the writes it starts.
    pub async fn around<F: std::future::Future>(self, request: F) -> F::Output {
        REQUEST_HOLD.scope(self, request).await
    }
}

impl Writes {
    /// Runs `write` on a task of its own and waits for it; dropped, the caller stops waiting,
    /// the write does not stop. The write keeps what its request holds ([`Hold`]).
    pub async fn to_the_end<T: Send + 'static>(&self, write: impl std::future::Future<Output = Result<T, GatewayError>> + Send + 'static) -> Result<T, GatewayError> {
        let running = self.0.clone().read_owned().await;
        let hold = REQUEST_HOLD.try_with(Hold::clone).ok();
        tokio::spawn(async move {
            // Given back before `running`: once a stop sees no write running, none holds a
            // request's place either.
            let _running = running;
            let _hold = hold;
            write.await
        })
        .await
        .map_err(GatewayError::internal)?
    }

    /// Waits, at most `limit`, until none of the writes is running; `false` when some still were.
    pub async fn finished(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.0.write()).await.is_ok()
    }
}

/// Runs `f` on the blocking pool: an HSM call, or a read of the store, which waits while the
/// ledger writer's transaction holds sled's lock (a group's commit takes milliseconds). On a
/// runtime thread either would stop that thread's other requests meanwhile, and leave a core
/// idle.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, GatewayError>
where
    T: Send + 'static,
    E: Send + 'static,
    GatewayError: From<E>,
{
    Ok(tokio::task::spawn_blocking(f).await.map_err(GatewayError::internal)??)
}

/// The answer to a retry of a request that is still being processed.
fn in_flight() -> GatewayError {
    GatewayError::InFlight("a request with this Idempotency-Key is still being processed; retry in a second".into())
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // The system CSPRNG does not fail on Linux; a zero nonce would still give a valid entry.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n);
    n
}

impl Gateway {
    /// A gateway of hospital `hospital` over these parts (standalone until [`Gateway::with_sharing`]).
    pub fn new(hospital: String, hsm: Arc<Hsm>, vault: Vault, ledger: Ledger, metrics: Arc<Metrics>) -> Gateway {
        Gateway { hospital, hsm, vault, ledger, metrics, pseudonyms: Arc::default(), sharing: None, shred: Arc::default(), consenting: Arc::default(), writes: Writes::default() }
    }

    /// Consortium sharing: peer reads, checkpoints, catch-up.
    pub fn with_sharing(mut self, sharing: Arc<Sharing>) -> Gateway {
        self.sharing = Some(sharing);
        self
    }

    /// Runs `f` with this gateway on a blocking thread (see [`blocking`]): for the store lookups
    /// of a request, made together.
    async fn off_runtime<T: Send + 'static>(&self, f: impl FnOnce(&Gateway) -> Result<T, GatewayError> + Send + 'static) -> Result<T, GatewayError> {
        let g = self.clone();
        blocking(move || f(&g)).await
    }

    /// Claims an idempotency key ([`Vault::claim`]) on a blocking thread (see [`blocking`]).
    async fn claim(&self, key: &[u8]) -> Result<Claim, GatewayError> {
        let (vault, key) = (self.vault.clone(), key.to_vec());
        blocking(move || vault.claim(&key)).await
    }

    /// Keeps a request's answer under its claimed idempotency key ([`Vault::finish`]), on a
    /// blocking thread (see [`blocking`]). The claim goes with it and is given back only once
    /// the answer is written, even if the request is dropped meanwhile: a retry finds the key
    /// held, or what was committed under it.
    async fn finish(&self, held: Held, status: u16, items: Vec<AnswerItem>) -> Result<(), GatewayError> {
        let vault = self.vault.clone();
        blocking(move || vault.finish(held.key(), status, &items)).await
    }

    /// HMAC pseudonym (hex) of `domain` + `value`, computed in the HSM, cached by a hash of the input.
    async fn pseudonym(&self, domain: &str, value: &str) -> Result<(u32, String), GatewayError> {
        let input = format!("medgate-pseudonym-v1\0{domain}\0{value}");
        let cache_key: [u8; 32] = Sha256::digest(input.as_bytes()).into();
        if let Some(hit) = self.pseudonyms.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return Ok(hit.clone());
        }
        let hsm = self.hsm.clone();
        let (version, mac) = blocking(move || hsm.pseudonym_hmac(input.as_bytes())).await?;
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
    pub async fn patient_pseudonym(&self, patient: &PatientId) -> Result<(u32, String), GatewayError> {
        self.pseudonym("patient", &patient.canonical()).await
    }

    async fn user_pseudonym(&self, caller: &Caller) -> Result<String, GatewayError> {
        Ok(self.pseudonym("user", &format!("{}\0{}", self.hospital, caller.user)).await?.1)
    }

    fn entry(&self, body: EntryBody) -> Entry {
        Entry::new(&self.hospital, &crate::clock::now_rfc3339(), nonce(), body)
    }

    async fn open(&self, rec: StoredRecord, with_document: bool) -> Result<vault::OpenRecord, GatewayError> {
        let (hsm, store) = (self.hsm.clone(), self.vault.clone());
        blocking(move || vault::open_latest(&hsm, &store, rec, with_document)).await
    }

    fn may_read(&self, caller: &Caller) -> Result<(), GatewayError> {
        if caller.client.may_read() {
            Ok(())
        } else {
            Err(GatewayError::Forbidden(format!("certificate role {:?} may not read records", caller.client.role)))
        }
    }

    /// Appends access entries: durably in the outbox first, then to the ledger; answered once the
    /// ordering service holds them, without waiting for their block. A ledger failure leaves them
    /// in the outbox for the background drain; the access still counts as recorded.
    async fn record_access(&self, entries: Vec<Entry>) -> Result<(), GatewayError> {
        well_formed(&entries)?;
        self.ledger.record_access(entries).await.map_err(GatewayError::from)
    }

    /// Puts entries on the ledger: durably in the outbox, then appended. `None` when the ledger
    /// could not take them yet (they stay in the outbox for the background drain).
    async fn anchor(&self, entries: Vec<Entry>) -> Result<Option<Vec<Receipt>>, GatewayError> {
        well_formed(&entries)?;
        // Durably in a block, or in the outbox when the ledger cannot take them (`None`).
        self.ledger.record(entries).await.map_err(GatewayError::from)
    }

    /// Appends what the outbox holds (entries whose append failed earlier).
    pub async fn drain_outbox(&self) -> Result<usize, StoreError> {
        self.ledger.drain_outbox(&self.vault).await
    }
}

/// Entries this gateway built itself: one that breaks an entry rule is a fault here, not the caller's.
fn well_formed(entries: &[Entry]) -> Result<(), GatewayError> {
    entries.iter().try_for_each(|e| e.validate().map_err(GatewayError::internal))
}

impl ShredHost for Gateway {
    fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    fn vault(&self) -> &Vault {
        &self.vault
    }

    fn shredder(&self) -> &Arc<Shredder> {
        &self.shred
    }

    fn count(&self, name: &str, n: u64) {
        self.metrics.add(name, n);
    }

    fn anchor_key_events<'a>(&'a self, state_dir: &'a Path) -> BoxFuture<'a, Result<usize, String>> {
        Box::pin(async move { Gateway::anchor_key_events(self, state_dir).await.map_err(|e| e.to_string()) })
    }
}

impl PeerService for Gateway {
    fn is_member(&self, hospital: &str) -> bool {
        self.ledger.store.is_member(hospital)
    }

    fn count(&self, name: &str) {
        self.metrics.incr(name);
    }

    fn read<'a>(&'a self, requester: &'a str, req: ReadRequest) -> BoxFuture<'a, Result<ReadGrant, GatewayError>> {
        Box::pin(self.serve_peer_read(requester, req))
    }

    fn checkpoint<'a>(&'a self, requester: &'a str, cp: Checkpoint) -> BoxFuture<'a, Result<String, GatewayError>> {
        Box::pin(async move { self.accept_checkpoint(requester, &cp).await })
    }

    fn blocks(&self, requester: &str, from: u64) -> Result<Vec<u8>, GatewayError> {
        self.blocks_for_peer(requester, from)
    }
}
