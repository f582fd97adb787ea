//! The exporter: takes the audit events of newly committed ledger blocks, queues their syslog
//! messages durably, and delivers them in order to the audit record repository.
//!
//! Two tasks, one queue:
//! - the *writer* turns offered events into messages (validate, DICOM XML, RFC 5424) and pushes
//!   them to the queue with the ledger position they came from (the queue's cursor);
//! - the *sender* opens a mutual-TLS session, writes every queued message in sequence order with
//!   RFC 5425 framing, then closes the session with a TLS close_notify and waits for the
//!   repository to close its side. Syslog has no acknowledgement: the repository closing after it
//!   read our close_notify is the only sign that it has read everything before it, so messages
//!   leave the queue only then. A session that breaks leaves them queued and they are sent again
//!   on the next one: delivery is at least once, and a repeat carries the same sequence number
//!   and ledger entry id, byte for byte, so the repository can drop it.
//!
//! When the queue is full, nothing is dropped and no ledger work is refused: the writer stops
//! queuing and *catches up* from the ledger instead ([`LedgerSource`]), from the cursor, as room
//! comes back. The ledger keeps every event anyway; the queue only bounds what waits on disk in
//! syslog form. The same catch-up runs at start, so events committed while the gateway was down,
//! or between a block's commit and its offer here, are sent too. [`Exporter::is_full`] lets a site
//! that prefers to refuse new work while the repository is unreachable do so.
//!
//! Boundary: no dependency on the gateway; events come in as plain values
//! ([`crate::event::AuditEvent`]) with their ledger position.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::dicom::{self, AuditSource};
use crate::event::{AuditEvent, Position};
use crate::queue::file::now_ms;
use crate::queue::{NewMessage, Queue, QueueError, QueuedMessage};
use crate::syslog::{self, Header, Severity, SyslogError};
use crate::transport::TlsClient;

/// The ledger, as the exporter reads it when it catches up. The gateway implements it over its
/// chain store: the audited entries *this* gateway wrote, in ledger order.
pub trait LedgerSource: Send + Sync + 'static {
    /// Up to `max` events strictly after `after` (all from the start when `None`), in ledger order.
    fn events_after(&self, after: Option<Position>, max: usize) -> Result<Vec<(Position, AuditEvent)>, String>;
    /// The position of the last committed entry, if any (where a fresh queue starts, unless
    /// [`Config::replay_history`]).
    fn head(&self) -> Result<Option<Position>, String>;
}

/// Exporter settings (the `[atna]` table of the gateway's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The repository's syslog-over-TLS listener, `host:port`.
    pub repository: String,
    /// This gateway's name: syslog HOSTNAME, AuditSourceID.
    pub hostname: String,
    /// The hospital id: AuditEnterpriseSiteID.
    pub site_id: String,
    /// On a fresh queue, send the whole ledger history (true) or only what happens from now (false).
    pub replay_history: bool,
    /// A session is closed (and its messages confirmed) after this many messages.
    pub session_max_messages: usize,
    /// An idle session is closed after this long without new messages.
    pub linger: Duration,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// How long the repository may take to close its side after our close_notify.
    pub confirm_timeout: Duration,
    /// Retry delays after a failure: doubling from `retry_min` up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Blocks offered but not yet queued; beyond this, offers are left to the catch-up.
    pub offer_backlog: usize,
}

impl Config {
    /// Defaults for everything but the three names.
    pub fn new(repository: &str, hostname: &str, site_id: &str) -> Config {
        Config {
            repository: repository.to_owned(),
            hostname: hostname.to_owned(),
            site_id: site_id.to_owned(),
            replay_history: false,
            session_max_messages: 10_000,
            linger: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(10),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            offer_backlog: 1024,
        }
    }
}

/// What `/metrics` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages waiting (including those sent in the open session, not yet confirmed).
    pub queue_depth: u64,
    pub queue_capacity: u64,
    /// How long the oldest waiting message has been queued.
    pub oldest_age: Option<Duration>,
    /// Messages the repository confirmed (by closing the session after reading them).
    pub sent_total: u64,
    /// Messages written again after a session broke before its confirmation.
    pub resent_total: u64,
    /// Failed connection attempts and broken sessions.
    pub failed_total: u64,
    /// Events refused by the shape check (never sent; should stay 0).
    pub rejected_total: u64,
    /// Whether events wait on the ledger rather than in the queue (the queue was full, or the
    /// exporter is starting).
    pub catching_up: bool,
    /// Whether a session to the repository is open.
    pub connected: bool,
    /// The last delivery error, until the next confirmed session.
    pub last_error: Option<String>,
}

#[derive(Debug, Error)]
pub enum AtnaError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Syslog(#[from] SyslogError),
    #[error("ledger: {0}")]
    Source(String),
    #[error("audit exporter: {0}")]
    Config(String),
}

#[derive(Debug, Default)]
struct Status {
    depth: u64,
    capacity: u64,
    oldest_ms: Option<u64>,
    catching_up: bool,
    connected: bool,
    last_error: Option<String>,
}

struct Shared {
    queue: Mutex<Box<dyn Queue>>,
    status: Mutex<Status>,
    sent: AtomicU64,
    resent: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    /// An offer could not be taken (backlog full): catch up from the ledger.
    lagging: AtomicBool,
    /// Writer → sender: messages were queued.
    queued: Notify,
    /// Sender → writer: messages left the queue.
    room: Notify,
    shutdown: watch::Sender<bool>,
    render: Render,
}

struct Render {
    header: Header,
    source: AuditSource,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Box<dyn Queue>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the queue's figures into the status (call with the queue locked).
    fn note_queue(&self, q: &dyn Queue) {
        let mut s = self.status();
        s.depth = q.len();
        s.capacity = q.capacity();
        s.oldest_ms = q.oldest().map(|(_, ms)| ms);
    }

    fn set_error(&self, e: &str) {
        self.status().last_error = Some(e.to_owned());
    }
}

struct Offer {
    height: u64,
    events: Vec<(u32, AuditEvent)>,
}

/// The running exporter. Cheap to share behind an `Arc`; [`Exporter::offer`] never blocks.
pub struct Exporter {
    shared: Arc<Shared>,
    offers: mpsc::Sender<Offer>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts the writer and the sender on the current tokio runtime. The exporter first catches
    /// up from the queue's cursor (a fresh queue starts at the ledger head, or at the beginning
    /// with [`Config::replay_history`]).
    pub async fn start(config: Config, tls: TlsClient, queue: Box<dyn Queue>, ledger: Arc<dyn LedgerSource>) -> Result<Exporter, AtnaError> {
        if config.session_max_messages == 0 || config.offer_backlog == 0 {
            return Err(AtnaError::Config("session_max_messages and offer_backlog must be at least 1".into()));
        }
        if !crate::event::is_code(&config.site_id) {
            return Err(AtnaError::Config(format!("site id {:?} is not a code (1 to 128 characters, no spaces)", config.site_id)));
        }
        let header = Header::new(&config.hostname, &std::process::id().to_string())?;
        let render = Render { header, source: AuditSource { source_id: config.hostname.clone(), site_id: config.site_id.clone() } };
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            status: Mutex::new(Status { catching_up: true, ..Status::default() }),
            sent: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            lagging: AtomicBool::new(false),
            queued: Notify::new(),
            room: Notify::new(),
            shutdown,
            render,
        });
        let fresh_start = {
            let sh = shared.clone();
            let ledger = ledger.clone();
            let replay = config.replay_history;
            blocking(move || -> Result<(), AtnaError> {
                let mut q = sh.queue();
                sh.note_queue(q.as_ref());
                if q.cursor().is_none() && !replay {
                    if let Some(head) = ledger.head().map_err(AtnaError::Source)? {
                        q.set_cursor(head)?;
                    }
                }
                Ok(())
            })
        };
        fresh_start.await?;
        let (tx, rx) = mpsc::channel(config.offer_backlog);
        let writer = tokio::spawn(writer(shared.clone(), ledger, rx));
        let sender = tokio::spawn(sender(shared.clone(), tls, config));
        Ok(Exporter { shared, offers: tx, tasks: Mutex::new(vec![writer, sender]) })
    }

    /// Offers the audited events of a block that has just been committed, with their index in the
    /// block. Call it after the block is durably stored, once per block, in height order. Never
    /// blocks: when the backlog is full the events are left to the catch-up from the ledger.
    pub fn offer(&self, height: u64, events: Vec<(u32, AuditEvent)>) {
        if events.is_empty() {
            return;
        }
        if self.offers.try_send(Offer { height, events }).is_err() {
            self.shared.lagging.store(true, Ordering::SeqCst);
        }
    }

    /// The figures for `/metrics`.
    pub fn stats(&self) -> Stats {
        let s = self.shared.status();
        Stats {
            queue_depth: s.depth,
            queue_capacity: s.capacity,
            oldest_age: s.oldest_ms.map(|ms| Duration::from_millis(now_ms().saturating_sub(ms))),
            sent_total: self.shared.sent.load(Ordering::Relaxed),
            resent_total: self.shared.resent.load(Ordering::Relaxed),
            failed_total: self.shared.failed.load(Ordering::Relaxed),
            rejected_total: self.shared.rejected.load(Ordering::Relaxed),
            catching_up: s.catching_up,
            connected: s.connected,
            last_error: s.last_error.clone(),
        }
    }

    /// Whether the queue is at capacity (events then wait on the ledger). A site that must not
    /// serve while its audit repository is unreachable can refuse new requests on this.
    pub fn is_full(&self) -> bool {
        let s = self.shared.status();
        s.depth >= s.capacity
    }

    /// Stops both tasks. A session in progress is closed; what it sent but could not confirm is
    /// sent again after the next start.
    pub async fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Validates, renders and queues events not yet queued (those after the cursor), all or none.
/// Returns the number of messages queued. Called from a blocking task.
fn enqueue(shared: &Shared, events: Vec<(Position, AuditEvent)>) -> Result<usize, QueueError> {
    let mut q = shared.queue();
    let cursor = q.cursor();
    let mut seq = q.next_seq();
    let mut batch = Vec::new();
    let mut rejected = 0u64;
    let mut last = None;
    for (position, event) in events.into_iter().filter(|(p, _)| cursor.is_none_or(|c| *p > c)) {
        last = Some(position);
        if let Err(e) = event.validate() {
            tracing::error!(error = %e, "audit event refused: not sent to the audit repository (the ledger keeps it)");
            rejected += 1;
            continue;
        }
        let xml = dicom::audit_message(&shared.render.source, position, &event);
        let severity = if dicom::is_failure(&event) { Severity::Warning } else { Severity::Notice };
        let payload = shared.render.header.message(severity, &event.time, seq, &xml);
        batch.push(NewMessage { seq, position, payload });
        seq += 1;
    }
    q.push(&batch)?;
    if let Some(p) = last {
        q.set_cursor(p)?;
    }
    shared.rejected.fetch_add(rejected, Ordering::Relaxed);
    shared.note_queue(q.as_ref());
    Ok(batch.len())
}

async fn writer(shared: Arc<Shared>, ledger: Arc<dyn LedgerSource>, mut offers: mpsc::Receiver<Offer>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut catching_up = true;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if shared.lagging.swap(false, Ordering::SeqCst) {
            catching_up = true;
        }
        if catching_up {
            shared.status().catching_up = true;
            match catch_up(&shared, &ledger).await {
                Ok(CatchUp::Done) => {
                    catching_up = false;
                    shared.status().catching_up = false;
                }
                Ok(CatchUp::Progress) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(CatchUp::Blocked) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "audit export: catching up from the ledger failed; retrying");
                    shared.set_error(&e.to_string());
                }
            }
        }
        tokio::select! {
            offer = offers.recv() => {
                let Some(offer) = offer else { break };
                // An offer dropped before this one must not be overtaken.
                if shared.lagging.swap(false, Ordering::SeqCst) {
                    catching_up = true;
                }
                if catching_up {
                    // Already on the ledger: the catch-up reads it from there.
                    continue;
                }
                let events: Vec<(Position, AuditEvent)> = offer.events.into_iter().map(|(i, e)| (Position::new(offer.height, i), e)).collect();
                let sh = shared.clone();
                match blocking(move || enqueue(&sh, events)).await {
                    Ok(n) if n > 0 => shared.queued.notify_one(),
                    Ok(_) => {}
                    Err(QueueError::Full { .. }) => catching_up = true,
                    Err(e) => {
                        tracing::error!(error = %e, "audit export: queuing failed; the events wait on the ledger");
                        shared.set_error(&e.to_string());
                        catching_up = true;
                    }
                }
            }
            () = shared.room.notified(), if catching_up => {}
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
    }
}

enum CatchUp {
    /// The queue holds everything the ledger has.
    Done,
    /// Events were queued and more may follow.
    Progress,
    /// No room in the queue.
    Blocked,
}

/// Queues events from the ledger after the cursor, as many as there is room for.
async fn catch_up(shared: &Arc<Shared>, ledger: &Arc<dyn LedgerSource>) -> Result<CatchUp, AtnaError> {
    const MAX_READ: u64 = 1000;
    let (room, cursor) = {
        let q = shared.queue();
        (q.capacity().saturating_sub(q.len()), q.cursor())
    };
    if room == 0 {
        return Ok(CatchUp::Blocked);
    }
    let max = room.min(MAX_READ) as usize;
    let l = ledger.clone();
    let events = blocking(move || l.events_after(cursor, max)).await.map_err(AtnaError::Source)?;
    let got = events.len();
    let sh = shared.clone();
    let queued = blocking(move || enqueue(&sh, events)).await?;
    if queued > 0 {
        shared.queued.notify_one();
    }
    Ok(if got < max { CatchUp::Done } else { CatchUp::Progress })
}

enum SessionEnd {
    /// The repository closed after our close_notify: everything up to `last` was read.
    Confirmed { count: u64, last: Option<u64> },
    /// The session broke; `sent` messages were written and are not confirmed.
    Broken { error: String, sent: u64 },
}

async fn sender(shared: Arc<Shared>, tls: TlsClient, config: Config) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut delay = config.retry_min;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if shared.status().depth == 0 {
            tokio::select! {
                () = shared.queued.notified() => continue,
                _ = shutdown.changed() => break,
            }
        }
        let end = match tls.connect(&config.repository, config.connect_timeout).await {
            Ok(stream) => {
                shared.status().connected = true;
                let end = session(&shared, stream, &config, &mut shutdown).await;
                shared.status().connected = false;
                end
            }
            Err(error) => SessionEnd::Broken { error, sent: 0 },
        };
        match end {
            SessionEnd::Confirmed { count, last } => {
                if let Some(last) = last {
                    let sh = shared.clone();
                    let acked = blocking(move || {
                        let mut q = sh.queue();
                        let r = q.ack(last);
                        // Counted before the depth is published, so that whoever sees the
                        // messages leave the queue also sees them counted as sent.
                        if r.is_ok() {
                            sh.sent.fetch_add(count, Ordering::Relaxed);
                        }
                        sh.note_queue(q.as_ref());
                        r
                    })
                    .await;
                    if let Err(e) = acked {
                        // The messages stay queued and go out again: duplicates, not losses.
                        tracing::error!(error = %e, "audit export: could not drop confirmed messages from the queue");
                        shared.set_error(&e.to_string());
                        continue;
                    }
                    shared.status().last_error = None;
                    shared.room.notify_one();
                }
                delay = config.retry_min;
            }
            SessionEnd::Broken { error, sent } => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.resent.fetch_add(sent, Ordering::Relaxed);
                tracing::warn!(error = %error, unconfirmed = sent, retry_in = ?delay, "audit repository unreachable; messages stay queued");
                shared.set_error(&error);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
                delay = (delay * 2).min(config.retry_max);
            }
        }
    }
}

async fn session(
    shared: &Arc<Shared>,
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    config: &Config,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    const READ_BATCH: usize = 512;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut probe = [0u8; 512];
    let mut count = 0u64;
    let mut last: Option<u64> = None;
    let mut buf = Vec::new();
    let started = Instant::now();
    loop {
        let from = last.map_or(0, |l| l + 1);
        let sh = shared.clone();
        let batch: Vec<QueuedMessage> = match blocking(move || sh.queue().read(from, READ_BATCH)).await {
            Ok(b) => b,
            Err(e) => return SessionEnd::Broken { error: e.to_string(), sent: count },
        };
        if batch.is_empty() {
            if count as usize >= config.session_max_messages || *shutdown.borrow() {
                break;
            }
            tokio::select! {
                () = shared.queued.notified() => continue,
                () = tokio::time::sleep(config.linger) => break,
                r = rd.read(&mut probe) => match r {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => return SessionEnd::Broken { error: "the repository closed the session".into(), sent: count },
                    Err(e) => return SessionEnd::Broken { error: format!("the session broke: {e}"), sent: count },
                },
                _ = shutdown.changed() => break,
            }
        }
        buf.clear();
        let n = batch.len().min(config.session_max_messages.saturating_sub(count as usize).max(1));
        for m in &batch[..n] {
            syslog::frame(&m.payload, &mut buf);
        }
        let write = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        };
        tokio::select! {
            r = write => if let Err(e) = r {
                return SessionEnd::Broken { error: format!("writing to the repository: {e}"), sent: count + n as u64 };
            },
            r = rd.read(&mut probe) => {
                let why = match r { Ok(0) => "the repository closed the session".to_owned(), Ok(_) => "the repository sent data".to_owned(), Err(e) => format!("the session broke: {e}") };
                return SessionEnd::Broken { error: why, sent: count + n as u64 };
            }
        }
        count += n as u64;
        last = Some(batch[n - 1].seq);
        if count as usize >= config.session_max_messages {
            break;
        }
    }
    // close_notify, then wait for the repository to close its side: it does so only after
    // reading (and so processing) everything we sent before.
    let confirm = async {
        wr.shutdown().await?;
        loop {
            match rd.read(&mut probe).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                // Closed without its own close_notify: still closed after reading ours.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(config.confirm_timeout, confirm).await {
        Ok(Ok(())) => {
            tracing::debug!(messages = count, elapsed = ?started.elapsed(), "audit session confirmed");
            SessionEnd::Confirmed { count, last }
        }
        Ok(Err(e)) => SessionEnd::Broken { error: format!("closing the session: {e}"), sent: count },
        Err(_) => SessionEnd::Broken { error: format!("the repository did not close the session within {:?}", config.confirm_timeout), sent: count },
    }
}
