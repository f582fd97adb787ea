//! The running gateway: the HIS listener (mutual TLS, HTTP/1.1 and HTTP/2), the admin listener
//! (health, readiness, metrics), the background outbox drain, the systemd watchdog, certificate
//! reload and an orderly stop.
//!
//! Boundary: sockets and tasks. [`Running`] is the service as a value: `start` it on listeners
//! the caller bound (tests bind port 0), `reload` it on SIGHUP, `stop` it on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use medgate_hsm::Hsm;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::chain::{BatchPolicy, ChainStore, Ledger, Ordering, Sequencer};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::tls::{self, ClientIdentity, Reloadable, TlsFiles};
use crate::vault::Vault;

mod linger;

/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often entries left in the outbox are retried.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("storage {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("ledger: {0}")]
    Ledger(#[from] crate::chain::ChainError),
    #[error("consortium: {0}")]
    Consortium(String),
}

/// Tells systemd (when it started us) how things stand. A no-op outside systemd.
pub fn notify(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(false, states);
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    pub his_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Gateway,
    db: sled::Db,
    hsm: Arc<Hsm>,
    tls_files: TlsFiles,
    tls: Arc<Reloadable>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    his_task: JoinHandle<()>,
}

impl Running {
    /// Opens the store and the ledger (appending what the outbox holds), builds the TLS
    /// configuration around the HSM key, and starts serving on the given listeners.
    pub async fn start(cfg: &Config, hsm: Arc<Hsm>, his: TcpListener, admin: TcpListener) -> Result<Running, ServerError> {
        let tls_files = TlsFiles { certificate: cfg.his.certificate.clone(), client_ca: cfg.his.client_ca.clone(), crls: cfg.his.crl.clone() };
        let tls = Arc::new(Reloadable::new(tls::server_config(&hsm, &tls_files)?));
        notify(&[sd_notify::NotifyState::Status("opening the vault and the ledger")]);
        let storage = |e: crate::vault::VaultError| ServerError::Storage { path: cfg.gateway.state_directory.display().to_string(), reason: e.to_string() };
        let db = Vault::open_db(&cfg.gateway.state_directory).map_err(storage)?;
        let vault = Vault::open(&db).map_err(storage)?;
        let metrics = Arc::new(Metrics::default());
        let policy = BatchPolicy {
            max_entries: cfg.ledger.batch_max_entries,
            max_delay: Duration::from_millis(cfg.ledger.batch_max_delay_ms),
        };
        let store = ChainStore::open(&db)?;
        let mut tasks = Vec::new();
        let (ordering, link) = match (&cfg.consortium, cfg.ledger.mode.as_str()) {
            (Some(c), "consortium") => {
                let (link, t) = crate::consortium::Link::start(c, &cfg.gateway.hospital_id, &hsm, store.clone(), vault.outbox_tree().clone(), metrics.clone())
                    .await
                    .map_err(ServerError::Consortium)?;
                tasks.extend(t);
                if let Ok(forks) = store.forks() {
                    if !forks.is_empty() {
                        link.halt(format!("{} fork(s) on record (evidence in the store); an operator must investigate before submissions resume", forks.len()));
                    }
                }
                (Ordering::Consortium(link.clone()), Some(link))
            }
            _ => (Ordering::Standalone(Sequencer::open(&db)?), None),
        };
        let ledger = Ledger::start(cfg.gateway.hospital_id.clone(), store, hsm.clone(), ordering, vault.clone(), policy, metrics.clone()).await?;
        let mut gateway = Gateway::new(cfg.gateway.hospital_id.clone(), hsm.clone(), vault, ledger, metrics);
        let mut peer_listener = None;
        if let (Some(c), Some(l)) = (&cfg.consortium, &link) {
            let mut sharing = crate::peer::Sharing::from_config(c, &cfg.gateway.hospital_id, &hsm, gateway.ledger.store.clone()).map_err(ServerError::Consortium)?;
            sharing.link = Some(l.clone());
            let sharing = Arc::new(sharing);
            *l.peers.lock().unwrap_or_else(|p| p.into_inner()) = Some(sharing.clone());
            gateway = gateway.with_sharing(sharing);
            if let Some(addr) = c.peer_listen {
                let l = TcpListener::bind(addr).await.map_err(|e| ServerError::Consortium(format!("cannot listen on {addr} (consortium.peer_listen): {e}")))?;
                peer_listener = Some((l, crate::peer::server_tls(c, &hsm).map_err(ServerError::Consortium)?));
            }
        }
        match gateway.anchor_key_events(&cfg.gateway.state_directory).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "key events from the officer's journal put on the ledger"),
            Err(e) => tracing::warn!(error = %e, "key event journal not anchored; it will be retried at the next start"),
        }
        let api = Arc::new(Api {
            gateway: gateway.clone(),
            max_body: cfg.his.max_body_bytes,
            body_timeout: Duration::from_secs(cfg.his.request_timeout_seconds),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let his_addr = his.local_addr().map_err(|e| ServerError::Storage { path: "HIS listener".into(), reason: e.to_string() })?;
        let admin_addr = admin.local_addr().map_err(|e| ServerError::Storage { path: "admin listener".into(), reason: e.to_string() })?;
        let timeout = Duration::from_secs(cfg.his.request_timeout_seconds);
        let his_task = tokio::spawn(serve_his(his, tls.clone(), api, stop_rx.clone(), timeout));
        let admin_state = Arc::new(AdminState { gateway: gateway.clone(), db: db.clone(), tls_files: tls_files.clone(), link });
        if let Some((l, tls)) = peer_listener {
            tasks.push(tokio::spawn(crate::peer::serve(l, tls, gateway.clone(), stop_rx.clone())));
            tasks.push(tokio::spawn(exchange_checkpoints(gateway.clone(), stop_rx.clone())));
        }
        tasks.extend([
            tokio::spawn(serve_admin(admin, admin_state.clone(), stop_rx.clone())),
            tokio::spawn(drain_outbox(gateway.clone(), stop_rx.clone())),
            tokio::spawn(crate::shred::run(gateway.clone(), cfg.gateway.state_directory.clone(), stop_rx.clone())),
            tokio::spawn(watchdog(admin_state, stop_rx)),
        ]);
        tracing::info!(%his_addr, %admin_addr, hospital = %cfg.gateway.hospital_id, "medgate gateway ready");
        Ok(Running { his_addr, admin_addr, gateway, db, hsm, tls_files, tls, stop_tx, tasks, his_task })
    }

    /// Re-reads the certificate, the client CA and the CRLs (SIGHUP). New handshakes use them;
    /// open connections keep the configuration they started with. A bad file keeps the old one.
    pub fn reload(&self) -> Result<(), tls::TlsError> {
        self.hsm.refresh_keys();
        let cfg = tls::server_config(&self.hsm, &self.tls_files)?;
        self.tls.set(cfg);
        self.gateway.metrics.incr("tls_reloads");
        Ok(())
    }

    /// Stops accepting, lets requests in flight finish (bounded), stops the background tasks and
    /// flushes the store. The HSM is closed by the caller, who owns it.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), self.his_task).await.is_err() {
            tracing::warn!("HIS listener did not stop in time");
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        match crate::vault::flush(&self.db).await {
            Ok(_) => tracing::info!("store flushed"),
            Err(e) => tracing::error!(error = %e, "store flush at stop failed"),
        }
    }
}

async fn serve_his(listener: TcpListener, tls: Arc<Reloadable>, api: Arc<Api>, mut stop: watch::Receiver<bool>, request_timeout: Duration) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(request_timeout).timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
        let api = api.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    api.gateway.metrics.incr("tls_handshake_failures");
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    api.gateway.metrics.incr("tls_handshake_failures");
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| ClientIdentity::from_der(c.as_ref()));
            let Some(identity) = identity else {
                tracing::info!(%peer, "client certificate has no usable subject CN; connection closed");
                return;
            };
            let identity = Arc::new(identity);
            let service = service_fn(move |req| api.clone().handle(identity.clone(), req));
            // Closed lingering: a client still sending when the answer is out gets to read it.
            let stream = linger::Lingering::new(stream, request_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {} s; closing them", DRAIN_TIMEOUT.as_secs());
    }
}

/// How often this gateway tells its peers its chain head (when it moved).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// Signs a checkpoint of the chain head whenever it moved and sends it to every peer; a peer
/// that holds another block at that height answers 409, and both sides halt (fork).
async fn exchange_checkpoints(gateway: Gateway, mut stop: watch::Receiver<bool>) {
    let mut last_sent: Option<(u64, String)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let head = match gateway.ledger.store.head() {
            Ok(Some(h)) => h,
            _ => continue,
        };
        if last_sent.as_ref() == Some(&head) {
            continue;
        }
        match gateway.send_checkpoint().await {
            Ok(()) => last_sent = Some(head),
            Err(e) => tracing::debug!(error = %e, "checkpoint not sent to every peer; retrying"),
        }
    }
}

async fn drain_outbox(gateway: Gateway, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(OUTBOX_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if gateway.vault.outbox_len() == 0 {
            continue;
        }
        match gateway.drain_outbox().await {
            Ok(n) if n > 0 => tracing::info!(entries = n, "outbox entries appended to the ledger"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, outbox = gateway.vault.outbox_len(), "outbox still waiting for the ledger"),
        }
    }
}

#[derive(Debug)]
struct AdminState {
    gateway: Gateway,
    db: sled::Db,
    tls_files: TlsFiles,
    link: Option<Arc<crate::consortium::Link>>,
}

/// What `/readyz` and the watchdog check.
#[derive(Debug, Default)]
struct Health {
    hsm: Option<String>,
    store: Option<String>,
    ledger: Option<String>,
    /// Information only: a pending shred pass does not make the gateway unready.
    shred: String,
}

impl Health {
    fn ok(&self) -> bool {
        self.hsm.is_none() && self.store.is_none() && self.ledger.is_none()
    }
    fn text(&self) -> String {
        let line = |name: &str, v: &Option<String>| format!("{name}: {}\n", v.as_deref().unwrap_or("ok"));
        format!("{}{}{}shred: {}\n", line("hsm", &self.hsm), line("store", &self.store), line("ledger", &self.ledger), self.shred)
    }
}

impl AdminState {
    async fn health(&self) -> Health {
        let mut h = Health::default();
        let hsm = self.gateway.hsm.clone();
        match tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || hsm.ping())).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => h.hsm = Some(e.to_string()),
            Ok(Err(e)) => h.hsm = Some(e.to_string()),
            Err(_) => h.hsm = Some("no answer within 5 s".into()),
        }
        // The store must take a small flushed write: catches a full or read-only disk.
        let db = self.db.clone();
        let write = tokio::task::spawn_blocking(move || {
            let t = db.open_tree("health")?;
            t.insert(b"last_check", crate::keys::now_rfc3339().as_bytes())?;
            db.flush().map(|_| ())
        });
        match tokio::time::timeout(Duration::from_secs(5), write).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => h.store = Some(e.to_string()),
            Ok(Err(e)) => h.store = Some(e.to_string()),
            Err(_) => h.store = Some("no flushed write within 5 s".into()),
        }
        if !self.gateway.ledger.is_running() {
            h.ledger = Some("the ledger writer has stopped".into());
        } else if let Some(why) = self.link.as_ref().and_then(|l| l.halted()) {
            h.ledger = Some(why);
        } else if let Some(why) = self.link.as_ref().and_then(|l| l.behind()) {
            h.ledger = Some(format!("behind, catching up from peers: {why}"));
        } else if let Err(e) = self.gateway.ledger.store.head() {
            h.ledger = Some(e.to_string());
        }
        h.shred = self.gateway.shred.readiness(&self.gateway.vault);
        h
    }

    fn metrics(&self) -> String {
        let st = self.gateway.hsm.stats();
        let mut gauges: Vec<crate::metrics::Gauge<'_>> = vec![
            ("medgate_hsm_operations_total", "HSM operations by kind.", st.ops.iter().map(|(k, n)| (format!("op=\"{k}\""), *n as f64)).collect()),
            ("medgate_hsm_errors_total", "HSM errors by kind.", st.errors.iter().map(|(k, n)| (format!("kind=\"{k}\""), *n as f64)).collect()),
            ("medgate_hsm_pkcs11_calls_total", "PKCS#11 calls made.", vec![(String::new(), st.pkcs11_calls as f64)]),
            ("medgate_hsm_pool_waits_total", "Times a request waited for an HSM session.", vec![(String::new(), st.pool_waits as f64)]),
            ("medgate_hsm_pool_wait_seconds_total", "Time spent waiting for an HSM session.", vec![(String::new(), st.pool_wait_seconds)]),
            ("medgate_vault_records", "Records in the local vault.", vec![(String::new(), self.gateway.vault.record_count() as f64)]),
            ("medgate_outbox_entries", "Ledger entries stored but not yet in a block.", vec![(String::new(), self.gateway.vault.outbox_len() as f64)]),
        ];
        if let Ok(Some((h, _))) = self.gateway.ledger.store.head() {
            gauges.push(("medgate_ledger_height", "Height of the last block.", vec![(String::new(), h as f64)]));
            if let Ok(cps) = self.gateway.ledger.store.peer_checkpoints() {
                let lag = cps.iter().map(|c| (format!("peer=\"{}\"", c.gateway), h as f64 - c.height as f64)).collect();
                gauges.push(("medgate_checkpoint_lag_blocks", "This gateway's height minus each peer's last signed checkpoint.", lag));
            }
        }
        if let Ok(Some(roster)) = self.gateway.ledger.store.roster() {
            let me = f64::from(u8::from(roster.is_member(&self.gateway.hospital)));
            gauges.push(("medgate_consortium_member", "1 while this hospital is a current consortium member.", vec![(String::new(), me)]));
            gauges.push(("medgate_consortium_members", "Current consortium members.", vec![(String::new(), roster.members.len() as f64)]));
            if let Ok(ps) = self.gateway.ledger.store.proposals() {
                let open = ps.iter().filter(|p| p.state(roster.version) == "open").count();
                gauges.push(("medgate_consortium_open_proposals", "Membership proposals not yet carried.", vec![(String::new(), open as f64)]));
            }
        }
        if let Ok(forks) = self.gateway.ledger.store.forks() {
            gauges.push(("medgate_ledger_forks", "Forks seen (two signed hashes at one height).", vec![(String::new(), forks.len() as f64)]));
        }
        let mut expiry = Vec::new();
        for (which, path) in [("server", &self.tls_files.certificate), ("client_ca", &self.tls_files.client_ca)] {
            if let Ok(certs) = tls::load_certs(path) {
                if let Some(Ok((_, _, not_after))) = certs.first().map(|c| crate::pki::describe_certificate(c.as_ref())) {
                    expiry.push((format!("certificate=\"{which}\""), not_after as f64));
                }
            }
        }
        gauges.push(("medgate_certificate_expiry_timestamp_seconds", "When each configured certificate expires (unix time).", expiry));
        gauges.extend(self.gateway.shred.gauges(&self.gateway.vault));
        self.gateway.metrics.render(&gauges)
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

/// The header every admin change must carry (see [`admin_request`]).
pub const ADMIN_HEADER: &str = "x-medgate-admin";

/// A membership proposal as the admin listener takes it (`medgate consortium propose`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalRequest {
    action: String,
    hospital_id: String,
    #[serde(default)]
    card: Option<crate::membership::MemberCard>,
}

fn membership_answer(r: Result<crate::membership::Proposal, (u16, String)>) -> Response<Full<Bytes>> {
    match r {
        Ok(p) => text(StatusCode::OK, serde_json::to_string(&p).unwrap_or_default(), "application/json"),
        Err((status, why)) => text(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), format!("{why}\n"), "text/plain; charset=utf-8"),
    }
}

async fn admin_request(state: Arc<AdminState>, req: Request<hyper::body::Incoming>, from: SocketAddr) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let plain = "text/plain; charset=utf-8";
    let path = req.uri().path().to_owned();
    // Changes (compaction, membership) only from this machine, even when
    // [dangerous] admin_on_all_interfaces exposes the read-only endpoints.
    if req.method() != hyper::Method::GET && !from.ip().is_loopback() {
        tracing::warn!(peer = %from, %path, "admin change refused: not from this machine");
        return Ok(text(StatusCode::FORBIDDEN, "changes are accepted from this machine only\n".into(), plain));
    }
    // A web page open on this machine may send simple requests here; it cannot add a custom
    // header without a CORS preflight (never answered), and a browser always names its Origin.
    if req.method() != hyper::Method::GET && (!req.headers().contains_key(ADMIN_HEADER) || req.headers().contains_key(hyper::header::ORIGIN)) {
        tracing::warn!(peer = %from, %path, "admin change refused: no {ADMIN_HEADER} header, or sent by a browser");
        return Ok(text(StatusCode::FORBIDDEN, format!("changes need the {ADMIN_HEADER} header (the medgate CLI sends it) and no Origin\n"), plain));
    }
    if req.method() == hyper::Method::POST && path.starts_with("/consortium/proposals") {
        let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "unreadable or oversized body (64 KiB at most)\n".into(), plain)),
        };
        if path == "/consortium/proposals" {
            return Ok(match serde_json::from_slice::<ProposalRequest>(&body) {
                Ok(p) => membership_answer(state.gateway.propose_membership(&p.action, &p.hospital_id, p.card).await),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("not a proposal: {e}\n"), plain),
            });
        }
        return Ok(match path.strip_prefix("/consortium/proposals/").and_then(|r| r.strip_suffix("/approve")) {
            Some(id) => membership_answer(state.gateway.approve_membership(id).await),
            None => text(StatusCode::NOT_FOUND, "not found: POST /consortium/proposals or /consortium/proposals/{id}/approve\n".into(), plain),
        });
    }
    Ok(match (req.method().as_str(), path.as_str()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok\n".into(), plain),
        ("GET", "/readyz") => {
            let h = state.health().await;
            let status = if h.ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, h.text(), plain)
        }
        ("GET", "/metrics") => text(StatusCode::OK, state.metrics(), "text/plain; version=0.0.4; charset=utf-8"),
        ("POST", "/ledger/compact") => match state.gateway.compact_ordering().await {
            Ok(rev) => text(StatusCode::OK, format!("{{\"compacted_below\":{rev}}}"), "application/json"),
            Err(e) => text(StatusCode::CONFLICT, format!("{e}\n"), plain),
        },
        ("GET", "/audit/break-glass") => match state.gateway.ledger.store.break_glass_reads() {
            Ok(list) => text(StatusCode::OK, crate::audit::break_glass_json(&list).to_string(), "application/json"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), plain),
        },
        ("GET", "/consortium/members") => match state.gateway.membership_json() {
            Ok(v) => text(StatusCode::OK, v.to_string(), "application/json"),
            Err(e) => text(StatusCode::CONFLICT, format!("{e}\n"), plain),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: GET /healthz, /readyz, /metrics, /audit/break-glass, /consortium/members; POST /ledger/compact, /consortium/proposals, /consortium/proposals/{id}/approve\n".into(),
            plain,
        ),
    })
}

async fn serve_admin(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, from) = tokio::select! {
            r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| admin_request(state.clone(), req, from));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// The watchdog interval systemd asked for, as sd_watchdog_enabled(3) reads it: WATCHDOG_USEC,
/// for this process unless WATCHDOG_PID names another one.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        Some(Ok(pid)) if pid != std::process::id() => None,
        Some(Err(_)) => None,
        _ => (usec > 0).then_some(usec),
    }
}

/// Sends WATCHDOG=1 while the process can still do its job. A PKCS#11 module that hangs, or a
/// store that fails, stops the pings and systemd restarts the service. An HSM that answers
/// "unavailable" does not: the session pool recovers by itself when the device returns, and a
/// restart could not log in either; it shows in STATUS= and /readyz instead.
async fn watchdog(state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let Some(usec) = watchdog_usec() else { return };
    let every = Duration::from_micros(usec / 3);
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let h = state.health().await;
        let hung = h.hsm.as_deref() == Some("no answer within 5 s");
        let status = if h.ok() { "serving".to_owned() } else { format!("degraded: {}", h.text().replace('\n', "; ")) };
        if status != last_status {
            notify(&[sd_notify::NotifyState::Status(&status)]);
            last_status = status;
        }
        if !hung && h.store.is_none() {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(health = %h.text().replace('\n', "; "), "watchdog withheld");
        }
    }
}
