//! The running gateway: the HIS listener (mutual TLS, HTTP/1.1 and HTTP/2), the admin listener
//! (health, readiness, metrics), the background outbox drain, the systemd watchdog, certificate
//! reload and an orderly stop.
//!
//! Boundary: sockets and tasks. [`Running`] is the service as a value: `start` it on listeners
//! the caller bound (tests bind port 0), `reload` it on SIGHUP, `stop` it on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use medgate_hsm::Hsm;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use medgate_store::order::etcd::EtcdSettings;
use medgate_store::order::link::EtcdLink;
use medgate_store::vault::Vault;
use medgate_store::writer::WriterParts;
use medgate_store::{BatchPolicy, ChainStore, Db, Ledger, Orderer, Sequencer};

mod admin;
mod linger;

pub use admin::ADMIN_HEADER;
use admin::{serve_admin, watchdog, AdminState};

use crate::api::Api;
use crate::config::{Config, Consortium};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::{Live, Outcome, ReloadError};
use crate::tls::{self, ClientIdentity, Reloadable, TlsFiles};

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
    Ledger(#[from] medgate_store::StoreError),
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
    db: Db,
    live: Arc<Live>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    his_task: JoinHandle<()>,
}

impl Running {
    /// Opens the store and the ledger (appending what the outbox holds), builds the TLS
    /// configuration around the HSM key, and starts serving on the given listeners.
    pub async fn start(cfg: &Config, hsm: Arc<Hsm>, his: TcpListener, admin: TcpListener) -> Result<Running, ServerError> {
        let tls_files = TlsFiles::from_config(cfg);
        if let (true, Err(e)) = (tls_files.enforce_crl_expiry, crate::reload::stale_crls(&tls_files)) {
            tracing::error!(error = %e, "HIS clients of that CA will be refused");
        }
        let tls = Arc::new(Reloadable::new(tls::server_config(&hsm, &tls_files)?));
        notify(&[sd_notify::NotifyState::Status("opening the vault and the ledger")]);
        let storage = |e: medgate_store::StoreError| ServerError::Storage { path: cfg.gateway.state_directory.display().to_string(), reason: e.to_string() };
        let db = Db::open(&cfg.gateway.state_directory).map_err(storage)?;
        let vault = Vault::open(&db).map_err(storage)?;
        let metrics = Arc::new(Metrics::default());
        let policy = BatchPolicy {
            max_entries: cfg.ledger.batch_max_entries,
            max_delay: Duration::from_millis(cfg.ledger.batch_max_delay_ms),
        };
        let store = ChainStore::open(&db)?;
        let mut tasks = Vec::new();
        let (orderer, link): (Arc<dyn Orderer>, _) = match (&cfg.consortium, cfg.ledger.mode.as_str()) {
            (Some(c), "consortium") => {
                let (link, t) = start_link(c, &cfg.gateway.hospital_id, &hsm, &store, metrics.clone()).await?;
                tasks.extend(t);
                (link.clone(), Some(link))
            }
            _ => (Arc::new(Sequencer::open(&db)?), None),
        };
        let parts = WriterParts {
            gateway: cfg.gateway.hospital_id.clone(),
            store,
            signer: hsm.clone(),
            orderer,
            vault: vault.clone(),
            policy,
            events: metrics.clone(),
        };
        let ledger = Ledger::start(parts).await?;
        let mut gateway = Gateway::new(cfg.gateway.hospital_id.clone(), hsm.clone(), vault, ledger, metrics);
        let mut peer_listener = None;
        if let (Some(c), Some(l)) = (&cfg.consortium, &link) {
            let (shared, listener) = share(gateway, c, l, &hsm).await?;
            gateway = shared;
            peer_listener = listener;
        }
        match gateway.anchor_key_events(&cfg.gateway.state_directory).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "key events from the officer's journal put on the ledger"),
            Err(e) => tracing::warn!(error = %e, "key event journal not anchored; it will be retried at the next start"),
        }
        let max_body = Arc::new(std::sync::atomic::AtomicUsize::new(cfg.his.max_body_bytes));
        let live = Arc::new(Live::new(cfg, hsm.clone(), tls.clone(), max_body.clone()));
        let api = Arc::new(Api {
            gateway: gateway.clone(),
            max_body,
            body_timeout: Duration::from_secs(cfg.his.request_timeout_seconds),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let his_addr = his.local_addr().map_err(|e| ServerError::Storage { path: "HIS listener".into(), reason: e.to_string() })?;
        let admin_addr = admin.local_addr().map_err(|e| ServerError::Storage { path: "admin listener".into(), reason: e.to_string() })?;
        let timeout = Duration::from_secs(cfg.his.request_timeout_seconds);
        let his_task = tokio::spawn(serve_his(his, tls.clone(), api, stop_rx.clone(), timeout));
        let admin_state = Arc::new(AdminState { gateway: gateway.clone(), db: db.clone(), live: live.clone(), link });
        if let Some((l, tls)) = peer_listener {
            tasks.push(tokio::spawn(crate::peer::serve(l, tls, Arc::new(gateway.clone()), stop_rx.clone())));
            tasks.push(tokio::spawn(exchange_checkpoints(gateway.clone(), stop_rx.clone())));
        }
        tasks.extend([
            tokio::spawn(serve_admin(admin, admin_state.clone(), stop_rx.clone())),
            tokio::spawn(drain_outbox(gateway.clone(), stop_rx.clone())),
            tokio::spawn(crate::shred::run(Arc::new(gateway.clone()), cfg.gateway.state_directory.clone(), stop_rx.clone())),
            tokio::spawn(watchdog(admin_state, stop_rx)),
        ]);
        tracing::info!(%his_addr, %admin_addr, hospital = %cfg.gateway.hospital_id, "medgate gateway ready");
        Ok(Running { his_addr, admin_addr, gateway, db, live, stop_tx, tasks, his_task })
    }

    /// Re-reads and applies the configuration (SIGHUP; see [`crate::reload`]). New handshakes
    /// use the new certificates; open connections keep what they started with. Any error keeps
    /// every old setting.
    pub fn reload(&self) -> Result<Outcome, ReloadError> {
        reload_counted(&self.live, &self.gateway)
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
        match self.db.flush().await {
            Ok(_) => tracing::info!("store flushed"),
            Err(e) => tracing::error!(error = %e, "store flush at stop failed"),
        }
    }
}

/// A reload, logged and counted in `medgate_events_total` (`reloads`, `reload_failures`).
fn reload_counted(live: &Live, gateway: &Gateway) -> Result<Outcome, ReloadError> {
    let r = live.reload();
    match &r {
        Ok(done) => tracing::info!(changes = %done.text().trim_end().replace('\n', "; "), "configuration reloaded; certificates and CRLs reloaded"),
        Err(e) => tracing::error!(error = %e, "reload failed; the previous settings stay in use"),
    }
    gateway.metrics.incr(if r.is_ok() { "reloads" } else { "reload_failures" });
    r
}

/// The consortium link: the genesis adopted (a stored fork halts it), etcd reached over mutual
/// TLS with the HSM key, the stream reader and follower started.
async fn start_link(c: &Consortium, me: &str, hsm: &Arc<Hsm>, store: &ChainStore, metrics: Arc<Metrics>) -> Result<(Arc<EtcdLink>, Vec<JoinHandle<()>>), ServerError> {
    let (genesis, hash, bytes) = medgate_ledger::membership::Genesis::read(&c.genesis).map_err(|e| ServerError::Consortium(format!("consortium.genesis: {e}")))?;
    let endpoints = c
        .etcd_endpoints
        .iter()
        .map(|e| e.parse().map_err(|_| ServerError::Consortium(format!("consortium.etcd_endpoints: {e} is not IP:port"))))
        .collect::<Result<_, _>>()?;
    let settings = EtcdSettings { endpoints, prefix: c.prefix.clone(), tls: tls::consortium_client(c, hsm).map_err(ServerError::Consortium)? };
    let (link, tasks) = EtcdLink::start(settings, me, (&genesis, hash, &bytes), store.clone(), metrics)
        .await
        .map_err(|e| ServerError::Consortium(format!("consortium.genesis ({}): {e}", c.genesis.display())))?;
    if let Ok(forks) = store.forks() {
        if !forks.is_empty() {
            link.halt(format!("{} fork(s) on record (evidence in the store); an operator must investigate before submissions resume", forks.len()));
        }
    }
    Ok((link, tasks))
}

/// Consortium sharing for `gateway`: the peers it reads from and catches up from, and the peer
/// listener (bound here) when `consortium.peer_listen` is set.
async fn share(gateway: Gateway, c: &Consortium, link: &Arc<EtcdLink>, hsm: &Arc<Hsm>) -> Result<(Gateway, Option<(TcpListener, Arc<rustls::ServerConfig>)>), ServerError> {
    let mut sharing = crate::peer::Sharing::from_config(c, &gateway.hospital, hsm, gateway.ledger.store.clone()).map_err(ServerError::Consortium)?;
    sharing.link = Some(link.clone());
    let sharing = Arc::new(sharing);
    link.set_block_source(sharing.clone());
    let listener = match c.peer_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| ServerError::Consortium(format!("cannot listen on {addr} (consortium.peer_listen): {e}")))?;
            Some((l, crate::peer::server_tls(c, hsm).map_err(ServerError::Consortium)?))
        }
        None => None,
    };
    Ok((gateway.with_sharing(sharing), listener))
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
