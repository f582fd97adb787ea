//! `medgate bench --reads`: a clinician opening documents while the HIS stores them. One reader,
//! with a client certificate of its own, retrieves stored documents (ITI-68 `GET /Binary/{id}`,
//! each read a ledger access entry made durable before the bytes go out) one after another:
//! first alone, then throughout each level's ingest. Its latency shows what a bulk load costs
//! the people reading.
//!
//! Boundary: the gateway in this process; the reader runs on a thread and runtime of its own,
//! so its figures are the gateway's answer time, not the load generator's scheduling. Its reads
//! share the two cores and the ledger's groups with the ingest, so a level run with a reader is
//! not compared with one run without.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use medgate_fhir::{answer_ids, SampleDocument};
use serde::Serialize;

use super::flood::ward as client;
use super::load::percentile;
use crate::demo::Site;
use crate::exit::Failure;

/// Documents the reader stores before the levels and then reads in turn.
const DOCUMENTS: usize = 64;

/// Reads made alone, before the levels.
const ALONE: usize = 500;

/// The reader's latencies over one stretch.
#[derive(Debug, Clone, Serialize)]
pub struct Reads {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Reads {
    fn of(mut lat: Vec<Duration>) -> Reads {
        lat.sort();
        let ms = |p: f64| percentile(&lat, p).as_secs_f64() * 1e3;
        Reads { count: lat.len(), p50_ms: ms(0.5), p99_ms: ms(0.99), max_ms: ms(1.0) }
    }
}

/// The reader: its documents stored, ready to read them.
#[derive(Debug)]
pub struct Reader {
    site: Site,
    ids: Arc<Vec<String>>,
    size: usize,
}

/// Reads running on their own thread until [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Duration>, String>>,
}

impl Running {
    /// Ends the reads (the one under way finishes) and returns their latencies.
    pub fn stop(self) -> Result<Reads, Failure> {
        self.stop.store(true, Ordering::Relaxed);
        let lat = self.thread.join().map_err(|_| Failure::runtime("the reader's thread failed"))?.map_err(Failure::runtime)?;
        Ok(Reads::of(lat))
    }
}

impl Reader {
    /// Stores the reader's documents (one patient each) through the gateway.
    pub async fn prepare(site: &Site, size: usize) -> Result<Reader, Failure> {
        let mut c = client(site)?;
        let data: Vec<u8> = (0..size).map(|i| (i * 13) as u8).collect();
        let doc = SampleDocument::new("application/pdf", &data);
        let mut ids = Vec::with_capacity(DOCUMENTS);
        for i in 0..DOCUMENTS {
            let patient = medgate_fhir::PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("reader-{i}") };
            let r = c.post_json("/", &doc.transaction(&patient, None), &[]).await.map_err(Failure::runtime)?;
            if r.status != 200 {
                return Err(Failure::runtime(format!("the reader's document {i}: {} (a transaction answers 200)", r.status)));
            }
            ids.extend(answer_ids(&r.json(), "DocumentReference"));
        }
        if ids.len() != DOCUMENTS {
            return Err(Failure::runtime(format!("the reader stored {DOCUMENTS} documents but the answers named {}", ids.len())));
        }
        Ok(Reader { site: site.clone(), ids: Arc::new(ids), size })
    }

    /// Reads alone: [`ALONE`] documents, one after another, after a warm-up.
    pub fn alone(&self) -> Result<Reads, Failure> {
        let stop = Arc::new(AtomicBool::new(false));
        let lat = read(&self.site, &self.ids, self.size, ALONE + DOCUMENTS, &stop, None).map_err(Failure::runtime)?;
        Ok(Reads::of(lat.into_iter().skip(DOCUMENTS).collect()))
    }

    /// Starts reading, one document after another, until stopped; returns once the reader's
    /// connection is open (as the load generator's are before a level's clock starts). At least
    /// one read is made, however short the level.
    pub fn start(&self) -> Result<Running, Failure> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (site, ids, size, flag) = (self.site.clone(), self.ids.clone(), self.size, stop.clone());
        let thread = std::thread::spawn(move || read(&site, &ids, size, usize::MAX, &flag, Some(ready_tx)));
        // The thread says when its connection is open; it ends without a word when it failed.
        match ready_rx.recv() {
            Ok(()) => Ok(Running { stop, thread }),
            Err(_) => Err(Running { stop, thread }.stop().err().unwrap_or_else(|| Failure::runtime("the reader stopped before it read"))),
        }
    }
}

/// Reads of `ids` in turn on one connection, `n` at most, until `stop` is set (checked after each
/// read): their latencies in order. `ready` hears when the connection is open. Every answer must
/// be 200 with the document's `size` bytes.
fn read(site: &Site, ids: &[String], size: usize, n: usize, stop: &AtomicBool, ready: Option<std::sync::mpsc::Sender<()>>) -> Result<Vec<Duration>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = client(site).map_err(|f| f.message)?;
        c.open().await?;
        if let Some(ready) = ready {
            let _ = ready.send(());
        }
        let mut lat = Vec::new();
        for id in ids.iter().cycle().take(n) {
            let t = Instant::now();
            let r = c.get(&format!("/Binary/{id}")).await?;
            if r.status != 200 || r.body.len() != size {
                return Err(format!("GET /Binary/{id}: {} ({} bytes)", r.status, r.body.len()));
            }
            lat.push(t.elapsed());
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        Ok(lat)
    })
}
