//! The chain store and the ledger writer through their traits, without an HSM, etcd or HTTP: an
//! in-memory P-256 key stands in for the HSM's ledger key ([`LedgerSigner`]), the in-process
//! [`Sequencer`] orders, and an [`Orderer`] that refuses plays an unreachable ordering service.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use medgate_ledger::{verify_ledger, Batch, Entry, EntryBody};
use medgate_store::order::{BoxFuture, Landing, Ordered};
use medgate_store::vault::{AnswerItem, Claim, IdemState, RecordChange, StatusChange, StoredRecord, Vault, Write};
use medgate_store::writer::WriterParts;
use medgate_store::{BatchPolicy, ChainStore, CommitListener, Db, Events, Ledger, LedgerSigner, Orderer, Sequencer, StoreError};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A P-256 key in memory, version 1, counting its signatures; refuses to sign while `broken`.
#[derive(Debug)]
struct MemoryKey {
    pair: EcdsaKeyPair,
    signatures: AtomicU64,
    broken: AtomicBool,
}

impl MemoryKey {
    fn new() -> MemoryKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        MemoryKey {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap(),
            signatures: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        }
    }

    fn spki(&self) -> Vec<u8> {
        let mut out = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        out.extend_from_slice(self.pair.public_key().as_ref());
        out
    }
}

impl LedgerSigner for MemoryKey {
    fn sign(&self, message: &[u8]) -> Result<(u32, Vec<u8>), StoreError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(StoreError::Storage("the ledger key is unusable".into()));
        }
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

/// The writer's events, and the steps it timed.
#[derive(Debug, Default)]
struct Counted {
    events: std::sync::Mutex<Vec<String>>,
    steps: std::sync::Mutex<Vec<String>>,
}

impl Events for Counted {
    fn incr(&self, name: &str) {
        self.events.lock().unwrap().push(name.to_owned());
    }

    fn writer_step(&self, step: &str, _elapsed: std::time::Duration) {
        self.steps.lock().unwrap().push(step.to_owned());
    }
}

struct Site {
    vault: Vault,
    chain: ChainStore,
    key: Arc<MemoryKey>,
    orderer: Arc<Switchable>,
    sequencer: Sequencer,
    events: Arc<Counted>,
}

impl Site {
    /// How many times the writer timed `step`.
    fn timed(&self, step: &str) -> u64 {
        self.events.steps.lock().unwrap().iter().filter(|s| *s == step).count() as u64
    }

    fn new() -> Site {
        let db = Db::temporary().unwrap();
        let sequencer = Sequencer::open(&db).unwrap();
        let orderer = Arc::new(Switchable { inner: sequencer.clone(), down: AtomicBool::new(false) });
        Site { vault: Vault::open(&db).unwrap(), chain: ChainStore::open(&db).unwrap(), key: Arc::new(MemoryKey::new()), orderer, sequencer, events: Arc::default() }
    }

    /// The writer over the switchable orderer (an ordering service: stored first, then ordered).
    async fn ledger(&self) -> Ledger {
        self.ledger_with(self.orderer.clone()).await
    }

    /// The writer over the in-process sequencer itself (group commit in one transaction).
    async fn local_ledger(&self) -> Ledger {
        self.ledger_with(Arc::new(self.sequencer.clone())).await
    }

    async fn ledger_with(&self, orderer: Arc<dyn Orderer>) -> Ledger {
        self.ledger_policy(orderer, BatchPolicy { max_entries: 4, max_delay: Duration::from_millis(5) }).await
    }

    async fn ledger_policy(&self, orderer: Arc<dyn Orderer>, policy: BatchPolicy) -> Ledger {
        Ledger::start(WriterParts {
            gateway: "hospital-a".into(),
            store: self.chain.clone(),
            signer: self.key.clone(),
            orderer,
            vault: self.vault.clone(),
            policy,
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
    assert_eq!(site.events.events.lock().unwrap().iter().filter(|e| *e == "ledger_batches").count(), 3);
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
    assert!(site.events.events.lock().unwrap().contains(&"ledger_append_failures".to_owned()));
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

/// A record of patient `n` and the entry that anchors it (its ciphertext is no real ciphertext).
fn record(n: u32) -> (StoredRecord, Entry) {
    let id = format!("{n:032x}");
    let body = EntryBody::RecordAnchored {
        record_id: id.clone(),
        patient: hex::encode([n as u8; 32]),
        pseudonym_key_version: 1,
        content_hash: "cd".repeat(32),
        content_type: "text/plain".into(),
        size: 1,
        custodian: "hospital-a".into(),
        user: hex::encode([7u8; 32]),
        role: "physician".into(),
        purpose: "TREAT".into(),
    };
    let entry = Entry::new("hospital-a", "2026-12-04T10:00:00Z", [n as u8; 16], body);
    let rec = StoredRecord {
        id,
        created: "2026-12-04T10:00:00Z".into(),
        custodian: "hospital-a".into(),
        patient_pseudonym: hex::encode([n as u8; 32]),
        pseudonym_key_version: 1,
        content_type: "text/plain".into(),
        size: 1,
        content_hash: "cd".repeat(32),
        kek_version: 1,
        wrapped_key: "AAAA".into(),
        doc_nonce: "AAAA".into(),
        doc_ct: "AAAA".into(),
        meta_nonce: "AAAA".into(),
        meta_ct: "AAAA".into(),
        entry_id: entry.id.clone(),
        erased: None,
        changes: Vec::new(),
    };
    (rec, entry)
}

/// A write of `rec` alone.
fn only(rec: &StoredRecord) -> Write {
    Write { records: vec![rec.clone()], ..Write::default() }
}

/// A deposited record, its idempotency key and its receipts (`None`: its entries wait in the
/// outbox).
type Deposited = (StoredRecord, Vec<u8>, Option<Vec<medgate_ledger::Receipt>>);

/// Deposits records `first..first + n` at once, each with its own idempotency key; returns what each got.
async fn deposit_many(ledger: &Ledger, first: u32, n: u32) -> Vec<Deposited> {
    let mut tasks = Vec::new();
    for i in first..first + n {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let (rec, entry) = record(i);
            let key = Vault::idem_key("his-a", &format!("key-{i}"));
            let state = IdemState::Committed { items: vec![AnswerItem::new("DocumentReference", &rec.id, 1)] };
            let write = Write { records: vec![rec.clone()], idem: vec![(key.clone(), state)], ..Write::default() };
            let got = ledger.deposit(&write, vec![entry]).await.unwrap();
            (rec, key, got)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn assert_deposited(site: &Site, got: &[Deposited]) {
    for (rec, key, receipts) in got {
        let receipts = receipts.as_ref().expect("anchored");
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].entry.id, rec.entry_id);
        receipts[0].verify(&site.key.spki()).unwrap();
        assert_eq!(site.vault.get(&rec.id).unwrap().as_ref(), Some(rec), "the record is stored with its entry");
        match site.vault.claim(key).unwrap() {
            medgate_store::vault::Claim::Existing(IdemState::Committed { items }) => assert_eq!(items, vec![AnswerItem::new("DocumentReference", &rec.id, 1)]),
            other => panic!("the idempotency state is stored with the record: {other:?}"),
        }
    }
    assert_eq!(site.vault.outbox_len(), 0, "every entry is in a block");
}

/// A request that is dropped (its client gone) after it handed its deposit to the writer, and
/// before it heard back, must not let a retry claim its key before the deposit is written: the
/// retry would store the same submission again.
#[tokio::test]
async fn a_request_dropped_while_the_writer_has_its_deposit_keeps_its_key_until_it_is_stored() {
    let site = Site::new();
    let ledger = site.local_ledger().await;
    let (rec, entry) = record(1);
    let key = Vault::idem_key("his-a", "key-1");
    let Claim::New(held) = site.vault.claim(&key).unwrap() else { panic!("a fresh key is claimed") };
    let items = vec![AnswerItem::new("DocumentReference", &rec.id, 1)];
    let write = Write { records: vec![rec.clone()], idem: vec![(key.clone(), IdemState::Committed { items: items.clone() })], ..Write::default() };
    // One poll hands the deposit to the writer's queue; then the request is gone. This test's
    // runtime has one thread, and nothing below awaits before the checks: the writer has not
    // run since.
    let mut request = Box::pin(ledger.preparing().deposit(&write, vec![entry], vec![held.clone()]));
    std::future::poll_fn(|cx| {
        assert!(request.as_mut().poll(cx).is_pending(), "the request waits for the writer");
        Poll::Ready(())
    })
    .await;
    drop(request);
    drop(held);
    assert!(site.vault.get(&rec.id).unwrap().is_none(), "not written yet");
    assert!(matches!(site.vault.claim(&key).unwrap(), Claim::InFlight), "a retry waits for the deposit the writer holds");
    // Once the writer has written it (a later deposit is answered after it), the retry finds
    // what the dropped request committed, and the key is free for it.
    let (later, later_entry) = record(2);
    ledger.deposit(&only(&later), vec![later_entry]).await.unwrap().expect("anchored");
    match site.vault.claim(&key).unwrap() {
        Claim::Existing(IdemState::Committed { items: got }) => assert_eq!(got, items),
        other => panic!("the retry finds what the dropped request committed: {other:?}"),
    }
    assert_eq!(site.vault.get(&rec.id).unwrap().as_ref(), Some(&rec));
}

/// Hands every request to the writer's queues in this order (one poll each), then waits for
/// all of them. This test runtime has one thread and nothing awaits between the polls: the
/// writer takes none of them before all are queued.
async fn queue_in_order(mut queued: Vec<BoxFuture<'_, Result<(), StoreError>>>) {
    std::future::poll_fn(|cx| {
        for q in &mut queued {
            assert!(q.as_mut().poll(cx).is_pending(), "each request waits for the writer");
        }
        Poll::Ready(())
    })
    .await;
    for q in queued {
        q.await.unwrap();
    }
}

/// A read's access entry is taken before the records queued ahead of it: during a bulk load a
/// clinician's read must not wait for every record already waiting for the writer.
#[tokio::test]
async fn an_access_is_written_before_the_records_queued_ahead_of_it() {
    let site = Site::new();
    access_before_records(&site, Arc::new(site.sequencer.clone())).await;
}

/// As [`an_access_is_written_before_the_records_queued_ahead_of_it`], through an ordering
/// service: the records are stored first, and the batches submitted in the order the writer
/// gathered them.
#[tokio::test]
async fn through_an_ordering_service_an_access_is_ordered_before_the_records_queued_ahead_of_it() {
    let site = Site::new();
    access_before_records(&site, site.orderer.clone()).await;
}

async fn access_before_records(site: &Site, orderer: Arc<dyn Orderer>) {
    // One entry per group: every request gets a block of its own, in the order the writer
    // takes them.
    let ledger = site.ledger_policy(orderer, BatchPolicy { max_entries: 1, max_delay: Duration::ZERO }).await;
    let records: Vec<(StoredRecord, Entry)> = (1..=3).map(record).collect();
    let writes: Vec<Write> = records.iter().map(|(r, _)| only(r)).collect();
    let mut queued: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
    for (w, (_, e)) in writes.iter().zip(&records) {
        let ledger = &ledger;
        queued.push(Box::pin(async move { ledger.deposit(w, vec![e.clone()]).await.map(|r| assert!(r.is_some(), "anchored")) }));
    }
    let access = searched(9);
    queued.push(Box::pin(ledger.record_access(vec![access.clone()])));
    queue_in_order(queued).await;
    let height = |id: &str| site.chain.location(id).unwrap().expect("in a block").height;
    let access_at = height(&access.id);
    let records_at: Vec<u64> = records.iter().map(|(_, e)| height(&e.id)).collect();
    assert!(records_at.iter().all(|h| *h > access_at), "the access (block {access_at}) before the records queued ahead of it (blocks {records_at:?})");
    let mut sorted = records_at.clone();
    sorted.sort_unstable();
    assert_eq!(records_at, sorted, "the records in the order they came");
    let report = site.verify();
    assert_eq!((report.invalid_batches, report.entries), (0, 4), "{report:?}");
}

/// Accesses come first, but a stream of them cannot hold back the other requests: while one
/// waits, accesses take at most half of a group.
#[tokio::test]
async fn a_stream_of_accesses_leaves_the_other_requests_half_of_every_group() {
    let site = Site::new();
    accesses_take_half(&site, Arc::new(site.sequencer.clone())).await;
}

/// As [`a_stream_of_accesses_leaves_the_other_requests_half_of_every_group`], through an
/// ordering service.
#[tokio::test]
async fn through_an_ordering_service_a_stream_of_accesses_leaves_the_other_requests_half_of_every_group() {
    let site = Site::new();
    accesses_take_half(&site, site.orderer.clone()).await;
}

async fn accesses_take_half(site: &Site, orderer: Arc<dyn Orderer>) {
    let ledger = site.ledger_policy(orderer, BatchPolicy { max_entries: 2, max_delay: Duration::ZERO }).await;
    let accesses: Vec<Entry> = (1..=4).map(searched).collect();
    let (rec, entry) = record(1);
    let write = only(&rec);
    let mut queued: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
    for a in &accesses[..2] {
        queued.push(Box::pin(ledger.record_access(vec![a.clone()])));
    }
    queued.push(Box::pin(async { ledger.deposit(&write, vec![entry.clone()]).await.map(|r| assert!(r.is_some(), "anchored")) }));
    for a in &accesses[2..] {
        queued.push(Box::pin(ledger.record_access(vec![a.clone()])));
    }
    queue_in_order(queued).await;
    let height = |id: &str| site.chain.location(id).unwrap().expect("in a block").height;
    let at: Vec<u64> = accesses.iter().map(|a| height(&a.id)).collect();
    assert_eq!(height(&entry.id), at[0], "the record shares the first group with one access, not behind all four: {at:?}");
    assert!(at[1..].iter().all(|h| *h > at[0]), "{at:?}");
    let report = site.verify();
    assert_eq!((report.invalid_batches, report.entries), (0, 5), "{report:?}");
}

#[tokio::test]
async fn concurrent_creates_commit_records_entries_and_blocks_together_one_signature_per_block() {
    let site = Site::new();
    let ledger = site.local_ledger().await;
    let got = deposit_many(&ledger, 1, 40).await;
    assert_deposited(&site, &got);
    let report = site.verify();
    assert_eq!((report.entries, report.invalid_batches), (40, 0));
    assert!(report.blocks <= 40, "{} blocks for 40 records", report.blocks);
    assert_eq!(site.key.signatures.load(Ordering::Relaxed), report.blocks, "one signature per block");
    // Each signature and each group's flush timed; no ordering service to wait for.
    assert_eq!(site.timed("sign"), report.blocks);
    assert!((1..=report.blocks).contains(&site.timed("flush")), "{} flushes for {} blocks", site.timed("flush"), report.blocks);
    assert_eq!(site.timed("submit"), 0);
    // A restart carries on the same chain: heights, links, sequence numbers and positions.
    drop(ledger);
    let ledger = site.local_ledger().await;
    let more: Vec<_> = deposit_many(&ledger, 41, 3).await.into_iter().map(|(r, _, got)| (r, got)).collect();
    assert!(more.iter().all(|(_, got)| got.is_some()));
    assert_eq!(site.verify().entries, 43);
}

/// With the gateway's policy (no fixed delay), a group waits a short while at most for the
/// requests announced as in preparation: one that never comes (it failed before its deposit)
/// holds no deposit up, and announced requests are committed, each counting as in preparation
/// until it is handed over.
#[tokio::test]
async fn an_announced_request_that_never_comes_holds_nothing_up_and_announced_ones_are_committed() {
    let site = Site::new();
    let ledger = site.ledger_policy(Arc::new(site.sequencer.clone()), BatchPolicy { max_entries: 64, max_delay: Duration::ZERO }).await;
    let never = ledger.preparing();
    assert_eq!(ledger.in_preparation(), 1);
    for n in 1..=3 {
        let (rec, entry) = record(n);
        // A liveness bound, far above the wait: an unbounded wait would never end.
        let got = tokio::time::timeout(Duration::from_secs(60), ledger.deposit(&only(&rec), vec![entry])).await.expect("held up by an announcement");
        assert!(got.unwrap().is_some(), "in a block");
    }
    drop(never);
    assert_eq!(ledger.in_preparation(), 0);

    let announced: Vec<_> = (10..30).map(|n| (n, ledger.preparing())).collect();
    assert_eq!(ledger.in_preparation(), 20);
    let mut tasks = Vec::new();
    for (n, preparing) in announced {
        tasks.push(tokio::spawn(async move {
            let (rec, entry) = record(n);
            let got = preparing.deposit(&only(&rec), vec![entry], Vec::new()).await.unwrap();
            (rec, got)
        }));
    }
    for t in tasks {
        let (rec, got) = t.await.unwrap();
        assert_eq!(got.expect("in a block")[0].entry.id, rec.entry_id);
        assert_eq!(site.vault.get(&rec.id).unwrap().as_ref(), Some(&rec));
    }
    assert_eq!(ledger.in_preparation(), 0, "each stopped counting once handed over");
    let report = site.verify();
    assert_eq!((report.entries, report.invalid_batches), (23, 0));
    assert_eq!(site.key.signatures.load(Ordering::Relaxed), report.blocks, "one signature per block");
}

#[tokio::test]
async fn a_create_whose_batch_cannot_be_signed_is_stored_and_its_entry_waits_in_the_outbox() {
    let site = Site::new();
    let ledger = site.local_ledger().await;
    site.key.broken.store(true, Ordering::Relaxed);
    let (rec, entry) = record(1);
    let got = ledger.deposit(&only(&rec), vec![entry.clone()]).await.unwrap();
    assert!(got.is_none(), "stored, not anchored");
    assert_eq!(site.vault.get(&rec.id).unwrap().as_ref(), Some(&rec));
    assert_eq!(site.vault.outbox_len(), 1);
    assert!(site.events.events.lock().unwrap().contains(&"ledger_append_failures".to_owned()));
    // An access recorded meanwhile waits in the outbox too.
    assert!(ledger.record(vec![searched(9)]).await.unwrap().is_none());
    assert_eq!(site.vault.outbox_len(), 2);
    site.key.broken.store(false, Ordering::Relaxed);
    assert_eq!(ledger.drain_outbox(&site.vault).await.unwrap(), 2);
    assert_eq!(site.vault.outbox_len(), 0);
    site.chain.receipt(&entry.id).unwrap().unwrap().verify(&site.key.spki()).unwrap();
}

#[tokio::test]
async fn an_entry_sent_again_with_its_id_leaves_the_outbox_when_its_block_is_written() {
    let site = Site::new();
    let ledger = site.local_ledger().await;
    site.key.broken.store(true, Ordering::Relaxed);
    let entry = searched(7);
    assert!(ledger.record(vec![entry.clone()]).await.unwrap().is_none(), "stored, not anchored");
    assert_eq!(site.vault.outbox_len(), 1);
    site.key.broken.store(false, Ordering::Relaxed);
    // Sent again with the same id before any drain (as the key events' anchoring does): its
    // block takes it out of the outbox.
    let got = ledger.record(vec![entry.clone()]).await.unwrap().expect("in a block");
    assert_eq!(got[0].entry.id, entry.id);
    assert_eq!(site.vault.outbox_len(), 0);
    // A create's entry goes straight into its block and never into the outbox.
    let (rec, created) = record(2);
    assert!(ledger.deposit(&only(&rec), vec![created.clone()]).await.unwrap().is_some());
    assert_eq!(site.vault.outbox_len(), 0);
    site.chain.receipt(&created.id).unwrap().unwrap().verify(&site.key.spki()).unwrap();
    assert_eq!(ledger.drain_outbox(&site.vault).await.unwrap(), 0);
}

#[tokio::test]
async fn through_an_ordering_service_creates_are_stored_first_then_ordered_batches_in_flight() {
    let site = Site::new();
    let ledger = site.ledger().await;
    let got = deposit_many(&ledger, 1, 40).await;
    assert_deposited(&site, &got);
    let report = site.verify();
    assert_eq!((report.entries, report.invalid_batches), (40, 0));
    // Each batch signed and submitted once, each timed; the groups flushed before.
    assert_eq!((site.timed("sign"), site.timed("submit")), (report.blocks, report.blocks));
    assert!(site.timed("flush") >= 1);
    // Ordering down: stored and flushed, the entries wait in the outbox.
    site.orderer.down.store(true, Ordering::Relaxed);
    let (rec, entry) = record(77);
    assert!(ledger.deposit(&only(&rec), vec![entry]).await.unwrap().is_none());
    assert_eq!(site.vault.get(&rec.id).unwrap().as_ref(), Some(&rec));
    assert_eq!(site.vault.outbox_len(), 1);
}

/// Hears the height of every committed block.
#[derive(Debug, Default)]
struct Heard(std::sync::Mutex<Vec<u64>>);

impl CommitListener for Heard {
    fn committed(&self, block: &medgate_ledger::Block) {
        self.0.lock().unwrap().push(block.height);
    }
}

/// Record `n` replacing `old`: its record, the write that supersedes `old`, and both entries.
fn replacement(old: &StoredRecord, n: u32) -> (StoredRecord, Write, Vec<Entry>) {
    let (rec, anchored) = record(n);
    let body = EntryBody::RecordStatusChanged {
        record_id: old.id.clone(),
        patient: old.patient_pseudonym.clone(),
        custodian: "hospital-a".into(),
        status: "superseded".into(),
        replaced_by: Some(rec.id.clone()),
        user: hex::encode([7u8; 32]),
        role: "physician".into(),
    };
    let changed = Entry::new("hospital-a", "2026-12-04T10:00:01Z", [(n % 251) as u8 + 1; 16], body);
    let change = StatusChange {
        record_id: old.id.clone(),
        custodian: "hospital-a".into(),
        change: RecordChange { status: "superseded".into(), replaced_by: Some(rec.id.clone()), time: "2026-12-04T10:00:01Z".into(), entry_id: changed.id.clone() },
    };
    let write = Write { records: vec![rec.clone()], changes: vec![change], ..Write::default() };
    (rec, write, vec![anchored, changed])
}

/// Six requests replace the same record while twenty plain creates go on: exactly one
/// replacement is stored and anchored, the others are refused with nothing of them stored or on
/// the chain, every plain create is anchored, and the commit listener hears every block once,
/// in height order.
async fn racing_replacements_refuse_only_themselves(site: &Site, ledger: &Ledger, heard: &Heard) {
    let (old, entry) = record(1);
    ledger.deposit(&only(&old), vec![entry]).await.unwrap().expect("anchored");
    let mut tasks = Vec::new();
    for n in 300..306 {
        let (ledger, (rec, write, entries)) = (ledger.clone(), replacement(&old, n));
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        tasks.push(tokio::spawn(async move { (rec, ids, ledger.deposit(&write, entries).await) }));
    }
    let plain = deposit_many(ledger, 2, 20).await;
    assert_deposited(site, &plain);
    let mut stored = 0;
    for t in tasks {
        let (rec, ids, got) = t.await.unwrap();
        match got {
            Ok(Some(receipts)) => {
                stored += 1;
                assert_eq!(receipts.len(), 2);
                assert!(site.vault.get(&rec.id).unwrap().is_some());
            }
            Err(StoreError::Conflict(why)) => {
                assert!(why.contains("superseded"), "{why}");
                assert_eq!(site.vault.get(&rec.id).unwrap(), None, "nothing of a refused replacement is stored");
                for id in &ids {
                    assert!(site.chain.receipt(id).unwrap().is_none(), "a refused replacement's entries are not on the chain");
                }
            }
            other => panic!("a replacement is stored or refused by the stored state: {other:?}"),
        }
    }
    assert_eq!(stored, 1, "one replacement wins");
    let old_now = site.vault.get(&old.id).unwrap().unwrap();
    assert_eq!((old_now.status(), old_now.changes.len()), ("superseded", 1));
    let report = site.verify();
    assert_eq!((report.entries, report.invalid_batches), (1 + 20 + 2, 0));
    assert_eq!(site.vault.outbox_len(), 0);
    let heights = heard.0.lock().unwrap().clone();
    assert_eq!(heights, (0..report.blocks).collect::<Vec<_>>(), "every block heard once, in order");
}

#[tokio::test]
async fn group_commit_refuses_a_status_change_the_record_no_longer_allows_and_tells_the_listener() {
    let site = Site::new();
    let heard = Arc::new(Heard::default());
    site.chain.add_commit_listener(heard.clone());
    let ledger = site.local_ledger().await;
    racing_replacements_refuse_only_themselves(&site, &ledger, &heard).await;
}

#[tokio::test]
async fn through_an_ordering_service_a_refused_status_change_stores_nothing_and_the_listener_hears_each_block() {
    let site = Site::new();
    let heard = Arc::new(Heard::default());
    site.chain.add_commit_listener(heard.clone());
    let ledger = site.ledger().await;
    racing_replacements_refuse_only_themselves(&site, &ledger, &heard).await;
}

/// An ordering service that refuses the second batch it is asked to admit and holds the landing
/// of the first one until released; it notes whether anyone read the next sequence number
/// meanwhile.
#[derive(Debug)]
struct HalfDown {
    inner: Sequencer,
    admits: AtomicU64,
    submits: AtomicU64,
    held: AtomicBool,
    read_while_held: AtomicBool,
    release: tokio::sync::Semaphore,
}

impl Orderer for HalfDown {
    fn next_seq(&self, chain: &ChainStore, gateway: &str) -> Result<u64, StoreError> {
        if self.held.load(Ordering::SeqCst) {
            self.read_while_held.store(true, Ordering::SeqCst);
        }
        self.inner.next_seq(chain, gateway)
    }

    fn admit(&self, chain: &ChainStore, gateway: &str, key_version: u32, spki: &[u8]) -> Result<(), StoreError> {
        if self.admits.fetch_add(1, Ordering::SeqCst) == 1 {
            return Err(StoreError::Order("the ordering service refused the batch".into()));
        }
        self.inner.admit(chain, gateway, key_version, spki)
    }

    fn order<'a>(&'a self, chain: &'a ChainStore, batch: Batch) -> BoxFuture<'a, Result<Ordered, StoreError>> {
        self.inner.order(chain, batch)
    }

    fn submit(self: Arc<Self>, chain: ChainStore, batch: Batch) -> BoxFuture<'static, Result<Landing, StoreError>> {
        Box::pin(async move {
            if self.submits.fetch_add(1, Ordering::SeqCst) > 0 {
                let ordered = self.inner.order(&chain, batch).await?;
                return Ok(Box::pin(async move { Ok(ordered) }) as Landing);
            }
            self.held.store(true, Ordering::SeqCst);
            Ok(Box::pin(async move {
                let _permit = self.release.acquire().await.map_err(|e| StoreError::Order(e.to_string()))?;
                let ordered = self.inner.order(&chain, batch).await;
                self.held.store(false, Ordering::SeqCst);
                ordered
            }) as Landing)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn batches_submitted_before_a_failure_land_before_the_next_group_reads_its_sequence_number() {
    let site = Site::new();
    let orderer = Arc::new(HalfDown {
        inner: site.sequencer.clone(),
        admits: AtomicU64::new(0),
        submits: AtomicU64::new(0),
        held: AtomicBool::new(false),
        read_while_held: AtomicBool::new(false),
        release: tokio::sync::Semaphore::new(0),
    });
    let ledger = site.ledger_with(orderer.clone()).await;
    // Six entries in one request: a first batch of four goes to the ordering service, the
    // second is refused. They are stored, so the request is answered; they wait in the outbox.
    let first: Vec<Entry> = (1..=6).map(searched).collect();
    assert_eq!(ledger.record(first).await.unwrap(), None);
    assert!(orderer.held.load(Ordering::SeqCst), "the first batch is submitted, not landed");

    let writer = ledger.clone();
    let pending = tokio::spawn(async move { writer.record(vec![searched(7)]).await });
    // Paused time advances only once every task waits, blocking work included: by then the
    // writer has done all it would do before the first batch lands.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!orderer.read_while_held.load(Ordering::SeqCst), "the next group read its sequence number before the earlier batch landed");
    orderer.release.add_permits(1);
    let receipts = pending.await.unwrap().unwrap().expect("anchored after the earlier batch");
    receipts[0].verify(&site.key.spki()).unwrap();

    // The refused batch's two entries wait in the outbox; a drain appends them.
    assert_eq!(ledger.drain_outbox(&site.vault).await.unwrap(), 2);
    assert_eq!(site.vault.outbox_len(), 0);
    let report = site.verify();
    assert_eq!((report.entries, report.invalid_batches), (7, 0));
}

/// An ordering service that fixes each batch's place when it is submitted and cuts the blocks,
/// in that order, only once `open` is set.
#[derive(Debug)]
struct Gated {
    inner: Sequencer,
    queue: tokio::sync::Mutex<std::collections::VecDeque<Batch>>,
    landed: std::sync::Mutex<std::collections::HashMap<[u8; 32], Ordered>>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Orderer for Gated {
    fn next_seq(&self, chain: &ChainStore, gateway: &str) -> Result<u64, StoreError> {
        self.inner.next_seq(chain, gateway)
    }

    fn admit(&self, chain: &ChainStore, gateway: &str, key_version: u32, spki: &[u8]) -> Result<(), StoreError> {
        self.inner.admit(chain, gateway, key_version, spki)
    }

    fn order<'a>(&'a self, chain: &'a ChainStore, batch: Batch) -> BoxFuture<'a, Result<Ordered, StoreError>> {
        self.inner.order(chain, batch)
    }

    fn submit(self: Arc<Self>, chain: ChainStore, batch: Batch) -> BoxFuture<'static, Result<Landing, StoreError>> {
        Box::pin(async move {
            let hash = batch.hash();
            self.queue.lock().await.push_back(batch);
            Ok(Box::pin(async move {
                self.open.subscribe().wait_for(|open| *open).await.map_err(|e| StoreError::Order(e.to_string()))?;
                let mut queue = self.queue.lock().await;
                while let Some(b) = queue.pop_front() {
                    let ordered = self.inner.order(&chain, b).await?;
                    self.landed.lock().unwrap().insert(ordered.block.batches[ordered.index].hash(), ordered);
                }
                self.landed.lock().unwrap().remove(&hash).ok_or_else(|| StoreError::Order("batch not cut".into()))
            }) as Landing)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn through_an_ordering_service_an_access_is_answered_once_ordered_and_a_receipt_once_its_block_landed() {
    let site = Site::new();
    let orderer = Arc::new(Gated {
        inner: site.sequencer.clone(),
        queue: Default::default(),
        landed: Default::default(),
        open: tokio::sync::watch::channel(false).0,
    });
    let ledger = site.ledger_with(orderer.clone()).await;
    // The access is answered while its block is not cut yet: durable in the outbox meanwhile.
    let access = searched(1);
    let answered = tokio::time::timeout(Duration::from_secs(5), ledger.record_access(vec![access.clone()])).await;
    answered.expect("the access waited for its block").unwrap();
    assert_eq!(site.vault.outbox_len(), 1);
    assert!(site.chain.location(&access.id).unwrap().is_none());
    // An entry recorded for its receipt waits for its block.
    let writer = ledger.clone();
    let pending = tokio::spawn(async move { writer.record(vec![searched(2)]).await });
    // Paused time advances only once every task waits: the writer has done all it can.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!pending.is_finished(), "a receipt was given before its block was cut");
    orderer.open.send_replace(true);
    let receipts = pending.await.unwrap().unwrap().expect("anchored");
    receipts[0].verify(&site.key.spki()).unwrap();
    // Both blocks are cut in the order the batches were submitted; the outbox is empty.
    assert!(site.chain.location(&access.id).unwrap().is_some());
    assert_eq!(site.vault.outbox_len(), 0);
    let report = site.verify();
    assert_eq!((report.entries, report.invalid_batches), (2, 0));
}
