//! The running gateway: the HIS listener (mutual TLS, HTTP/1.1 and HTTP/2), the monitoring
//! listener (health, readiness, metrics), the admin socket (officers only), the background
//! outbox drain, the systemd watchdog, certificate reload and an orderly stop.
//!
//! Boundary: sockets and tasks. [`Running`] is the service as a value: `start` it on listeners
//! the caller bound (tests bind port 0), `reload` it on SIGHUP, `stop` it on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use medgate_hsm::Hsm;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use medgate_store::order::etcd::EtcdSettings;
use medgate_store::order::link::EtcdLink;
use medgate_store::vault::Vault;
use medgate_store::writer::WriterParts;
use medgate_store::{BatchPolicy, ChainStore, Db, Ledger, Orderer, Sequencer};

mod admin;
mod his;
pub mod limits;
mod linger;
pub mod officers;

use admin::{serve_monitor, watchdog, AdminState};

use crate::api::Api;
use crate::config::{Config, Consortium};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::{Live, Outcome, ReloadError};
use crate::tls::{self, Reloadable, TlsFiles};
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

/// Queue of connections the kernel completes before the gateway accepts them (capped by
/// `net.core.somaxconn`). The platform default of 128 overflows when a HIS opens its connection
/// pool at once: each connection beyond it loses its SYN and waits a second for the retransmit.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, so a restart
/// binds while the previous run's connections are in TIME_WAIT).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The sockets a gateway serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The HIS's FHIR API (mutual TLS).
    pub his: TcpListener,
    /// Monitoring: health, readiness, metrics.
    pub monitor: TcpListener,
    /// The admin socket ([`officers::bind`]).
    pub admin: UnixListener,
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    pub his_addr: SocketAddr,
    pub monitor_addr: SocketAddr,
    /// The admin socket's path (removed at stop).
    pub admin_socket: Option<std::path::PathBuf>,
    pub gateway: Gateway,
    db: Db,
    live: Arc<Live>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    his_task: JoinHandle<()>,
    /// The IHE ATNA exporter, when `[atna]` is enabled and it started.
    pub atna: Option<Arc<medgate_atna::Exporter>>,
    /// The per-client limits of the HIS listener, and what each client holds.
    pub limiter: Arc<limits::Limiter>,
}

impl Running {
    /// Opens the store and the ledger (appending what the outbox holds), builds the TLS
    /// configuration around the HSM key, and starts serving on the given listeners.
    pub async fn start(cfg: &Config, hsm: Arc<Hsm>, listeners: Listeners) -> Result<Running, ServerError> {
        let Listeners { his, monitor, admin } = listeners;
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
        let atna = start_audit_export(cfg, &hsm, &store).await;
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
        let admission = crate::api::admission::Admission::new(cfg.limits.max_submissions_preparing);
        let api = Arc::new(Api {
            gateway: gateway.clone(),
            max_body,
            body_timeout: Duration::from_secs(cfg.his.request_timeout_seconds),
            public_base: cfg.his.public_base(),
            admission: admission.clone(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let his_addr = his.local_addr().map_err(|e| ServerError::Storage { path: "HIS listener".into(), reason: e.to_string() })?;
        let monitor_addr = monitor.local_addr().map_err(|e| ServerError::Storage { path: "monitoring listener".into(), reason: e.to_string() })?;
        let admin_socket = admin.local_addr().ok().and_then(|a| a.as_pathname().map(std::path::Path::to_path_buf));
        let limiter = limits::Limiter::new(cfg.limits.clone());
        let refuse_when_full = cfg.atna.as_ref().is_some_and(|a| a.on_full() == crate::config::OnFull::Refuse);
        let his_side = Arc::new(his::His {
            tls: tls.clone(),
            api,
            limiter: limiter.clone(),
            request_timeout: Duration::from_secs(cfg.his.request_timeout_seconds),
            audit_gate: atna.clone().filter(|_| refuse_when_full),
        });
        let his_task = tokio::spawn(his::serve(his, his_side, stop_rx.clone()));
        let admin_state = Arc::new(AdminState {
            gateway: gateway.clone(),
            db: db.clone(),
            live: live.clone(),
            link,
            atna: atna.clone(),
            atna_enabled: cfg.atna.as_ref().is_some_and(|a| a.enabled),
            limiter: limiter.clone(),
            admission,
        });
        if let Some((l, tls)) = peer_listener {
            tasks.push(tokio::spawn(crate::peer::serve(l, tls, Arc::new(gateway.clone()), stop_rx.clone())));
            tasks.push(tokio::spawn(exchange_checkpoints(gateway.clone(), stop_rx.clone())));
        }
        tasks.extend([
            tokio::spawn(serve_monitor(monitor, admin_state.clone(), stop_rx.clone())),
            tokio::spawn(officers::serve(admin, admin_state.clone(), cfg.admin.officers().map(str::to_owned), stop_rx.clone())),
            tokio::spawn(drain_outbox(gateway.clone(), stop_rx.clone())),
            tokio::spawn(crate::shred::run(Arc::new(gateway.clone()), cfg.gateway.state_directory.clone(), stop_rx.clone())),
            tokio::spawn(watchdog(admin_state, stop_rx)),
        ]);
        tracing::info!(%his_addr, %monitor_addr, admin_socket = %cfg.admin.socket.display(), hospital = %cfg.gateway.hospital_id, "medgate gateway ready");
        Ok(Running { his_addr, monitor_addr, admin_socket, gateway, db, live, stop_tx, tasks, his_task, atna, limiter })
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
        // Writes whose clients left before their answer run on, on tasks of their own.
        if !self.gateway.writes.finished(DRAIN_TIMEOUT).await {
            tracing::warn!("writes still running after {} s; stopping without them (a client's retry redoes or replays each)", DRAIN_TIMEOUT.as_secs());
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        if let Some(path) = &self.admin_socket {
            let _ = std::fs::remove_file(path);
        }
        if let Some(x) = &self.atna {
            x.shutdown().await;
            tracing::info!(waiting = x.stats().queue_depth, "audit export stopped; waiting messages go out after the next start");
        }
        match self.db.flush().await {
            Ok(_) => tracing::info!("store flushed"),
            Err(e) => tracing::error!(error = %e, "store flush at stop failed"),
        }
    }
}

/// The IHE ATNA exporter when `[atna]` is enabled, listening on `store` for committed blocks. If
/// it cannot start (a damaged queue, an HSM key it cannot use), the gateway serves anyway: the
/// events stay on the ledger and are sent after a start that succeeds; the ERROR line says why.
async fn start_audit_export(cfg: &Config, hsm: &Arc<Hsm>, store: &ChainStore) -> Option<Arc<medgate_atna::Exporter>> {
    let a = cfg.atna.as_ref().filter(|a| a.enabled)?;
    let feed = Arc::new(crate::atna::Feed::new(&cfg.gateway.hospital_id));
    store.add_commit_listener(feed.clone());
    match crate::atna::start(a, &cfg.his.certificate, &cfg.gateway.state_directory, &cfg.gateway.hospital_id, hsm, store, &feed).await {
        Ok(x) => {
            tracing::info!(repository = %a.repository, "audit export to the audit record repository started");
            Some(x)
        }
        Err(e) => {
            feed.abandon();
            tracing::error!(error = %e, "audit export NOT started: audit events stay on the ledger and are sent after a start that succeeds");
            None
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
            let l = bind_tcp(addr).map_err(|e| ServerError::Consortium(format!("cannot listen on {addr} (consortium.peer_listen): {e}")))?;
            Some((l, crate::peer::server_tls(c, hsm).map_err(ServerError::Consortium)?))
        }
        None => None,
    };
    Ok((gateway.with_sharing(sharing), listener))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A HIS that opens its whole connection pool at once while the gateway is busy: every
    /// connection completes its handshake in the kernel's queue, none waits for a SYN
    /// retransmit. With the platform default (128) the 130th connect hangs until accepted.
    #[tokio::test]
    async fn a_burst_of_connections_beyond_the_default_backlog_is_queued_not_dropped() {
        const BURST: usize = 300;
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(LISTEN_BACKLOG);
        assert!(somaxconn as usize > BURST, "net.core.somaxconn is {somaxconn}: the kernel caps the listen backlog below {BURST}");
        let listener = bind_tcp(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("local address");
        // Nothing accepts until every connect has completed.
        let mut held = Vec::with_capacity(BURST);
        for i in 0..BURST {
            match tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => panic!("connection {i} refused: {e}"),
                Err(_) => panic!("connection {i} not completed: the listen backlog is full"),
            }
        }
        let mut accepted = 0;
        while accepted < BURST {
            listener.accept().await.expect("accept");
            accepted += 1;
        }
        assert_eq!(held.len(), accepted);
    }
}
