//! The chain store and the ledger writer through their traits, without an HSM, etcd or HTTP: an
//! in-memory P-256 key stands in for the HSM's ledger key ([`LedgerSigner`]), the in-process
//! [`Sequencer`] orders, and an [`Orderer`] that refuses plays an unreachable ordering service.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use medgate_ledger::{verify_ledger, Batch, Entry, EntryBody};
use medgate_store::order::{BoxFuture, Ordered};
use medgate_store::vault::Vault;
use medgate_store::writer::WriterParts;
use medgate_store::{BatchPolicy, ChainStore, Db, Events, Ledger, LedgerSigner, Orderer, Sequencer, StoreError};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A P-256 key in memory, version 1, counting its signatures.
#[derive(Debug)]
struct MemoryKey {
    pair: EcdsaKeyPair,
    signatures: AtomicU64,
}

impl MemoryKey {
    fn new() -> MemoryKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        MemoryKey { pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap(), signatures: AtomicU64::new(0) }
    }

    fn spki(&self) -> Vec<u8> {
        let mut out = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        out.extend_from_slice(self.pair.public_key().as_ref());
        out
    }
}

impl LedgerSigner for MemoryKey {
    fn sign(&self, message: &[u8]) -> Result<(u32, Vec<u8>), StoreError> {
        self.signatures.fetch_add(1, Ordering::Relaxed);
        Ok((1, self.pair.sign(&SystemRandom::new(), message).unwrap().as_ref().to_vec()))
    }

    fn public_key(&self, version: u32) -> Result<Vec<u8>, StoreError> {
        assert_eq!(version, 1);
        Ok(self.spki())
    }
}

/// The sequencer, or an ordering service that is down while `down` is set.
#[derive(Debug)]
struct Switchable {
    inner: Sequencer,
    down: AtomicBool,
}

impl Orderer for Switchable {
    fn next_seq(&self, chain: &ChainStore, gateway: &str) -> Result<u64, StoreError> {
        self.inner.next_seq(chain, gateway)
    }

    fn admit(&self, chain: &ChainStore, gateway: &str, key_version: u32, spki: &[u8]) -> Result<(), StoreError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::Order("the ordering service is unreachable".into()));
        }
        self.inner.admit(chain, gateway, key_version, spki)
    }

    fn order<'a>(&'a self, chain: &'a ChainStore, batch: Batch) -> BoxFuture<'a, Result<Ordered, StoreError>> {
        self.inner.order(chain, batch)
    }
}

#[derive(Debug, Default)]
struct Counted(std::sync::Mutex<Vec<String>>);

impl Events for Counted {
    fn incr(&self, name: &str) {
        self.0.lock().unwrap().push(name.to_owned());
    }
}

struct Site {
    vault: Vault,
    chain: ChainStore,
    key: Arc<MemoryKey>,
    orderer: Arc<Switchable>,
    events: Arc<Counted>,
}

impl Site {
    fn new() -> Site {
        let db = Db::temporary().unwrap();
        let orderer = Arc::new(Switchable { inner: Sequencer::open(&db).unwrap(), down: AtomicBool::new(false) });
        Site { vault: Vault::open(&db).unwrap(), chain: ChainStore::open(&db).unwrap(), key: Arc::new(MemoryKey::new()), orderer, events: Arc::default() }
    }

    async fn ledger(&self) -> Ledger {
        Ledger::start(WriterParts {
            gateway: "hospital-a".into(),
            store: self.chain.clone(),
            signer: self.key.clone(),
            orderer: self.orderer.clone(),
            vault: self.vault.clone(),
            policy: BatchPolicy { max_entries: 4, max_delay: Duration::from_millis(5) },
            events: self.events.clone(),
        })
        .await
        .unwrap()
    }

    fn verify(&self) -> medgate_ledger::ChainReport {
        let none = |_: &str, _: u32| None;
        verify_ledger(None, self.chain.blocks(), &none, &[self.key.spki()]).unwrap()
    }
}

fn searched(n: u8) -> Entry {
    let body = EntryBody::PatientSearched {
        patient: hex::encode([n; 32]),
        reader: "hospital-a".into(),
        user: hex::encode([7u8; 32]),
        role: "physician".into(),
        purpose: "TREAT".into(),
        results: u32::from(n),
    };
    Entry::new("hospital-a", "2026-12-04T10:00:00Z", [n; 16], body)
}

#[tokio::test]
async fn appended_entries_get_receipts_that_verify_and_a_retry_adds_no_block() {
    let site = Site::new();
    let ledger = site.ledger().await;
    let entries: Vec<Entry> = (1..=10).map(searched).collect();
    site.vault.enqueue(&entries).await.unwrap();
    let receipts = ledger.append(entries.clone()).await.unwrap();
    assert_eq!(receipts.len(), 10);
    for (r, e) in receipts.iter().zip(&entries) {
        assert_eq!(r.entry.id, e.id);
        r.verify(&site.key.spki()).unwrap();
    }
    assert_eq!(site.vault.outbox_len(), 0, "entries in a stored block leave the outbox");
    // Ten entries in batches of at most four: three blocks, three signatures.
    let report = site.verify();
    assert_eq!((report.blocks, report.entries, report.invalid_batches), (3, 10, 0));
    assert_eq!(site.key.signatures.load(Ordering::Relaxed), 3);

    // The same entries again (an outbox drain racing its request): answered from the chain.
    let again = ledger.append(entries[..5].to_vec()).await.unwrap();
    assert_eq!(again, receipts[..5].to_vec());
    assert_eq!(site.verify().blocks, 3);
    assert_eq!(site.events.0.lock().unwrap().iter().filter(|e| *e == "ledger_batches").count(), 3);
    assert_eq!(site.chain.receipt(&entries[9].id).unwrap().as_ref(), Some(&receipts[9]));
}

#[tokio::test]
async fn entries_wait_in_the_outbox_while_ordering_is_down_and_a_restart_appends_them() {
    let site = Site::new();
    let ledger = site.ledger().await;
    ledger.append(vec![searched(1)]).await.unwrap();
    site.orderer.down.store(true, Ordering::Relaxed);
    let waiting: Vec<Entry> = (2..=4).map(searched).collect();
    site.vault.enqueue(&waiting).await.unwrap();
    let err = ledger.append(waiting.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Order(ref m) if m.contains("unreachable")), "{err}");
    assert_eq!(site.vault.outbox_len(), 3, "nothing is lost");
    assert!(site.events.0.lock().unwrap().contains(&"ledger_append_failures".to_owned()));
    assert!(site.chain.receipt(&waiting[0].id).unwrap().is_none());
    drop(ledger);

    // Back up, and a new writer (a restart) appends what the outbox holds before anything else.
    site.orderer.down.store(false, Ordering::Relaxed);
    let _ledger = site.ledger().await;
    assert_eq!(site.vault.outbox_len(), 0);
    for e in &waiting {
        site.chain.receipt(&e.id).unwrap().unwrap().verify(&site.key.spki()).unwrap();
    }
    // Sequence numbers carried on across the restart: the whole chain verifies from block 0.
    let report = site.verify();
    assert_eq!((report.blocks, report.entries), (2, 4));
}
