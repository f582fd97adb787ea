//! `medgate serve`: the long-running gateway process. Order of start-up: configuration (exit 64
//! on any problem), process hardening ([`crate::harden`]), the PIN and the listeners (still as
//! root when started as root), the drop to the service user, the HSM (module loaded and logged
//! in once, as that user), the store and the ledger, then READY=1 to systemd. SIGHUP reloads certificates and CRLs;
//! SIGTERM (or SIGINT) stops accepting, lets requests in flight finish, flushes, closes the HSM and exits 0.

use std::path::Path;
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::exit::{self, Failure};
use crate::harden;
use medgate_gateway::config::Config;
use medgate_gateway::server::{notify, Running};

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr).await.map_err(|e| Failure {
        code: exit::UNAVAILABLE,
        message: format!("cannot listen on {addr} ({what}): {e}"),
    })
}

pub fn serve(path: &Path) -> Result<(), Failure> {
    let cfg = Config::load(path).map_err(|e| Failure::config(e.to_string()))?;
    for d in cfg.dangerous_settings() {
        tracing::warn!(setting = d, "[dangerous] setting in effect");
    }
    harden::no_dumps().map_err(|e| Failure::runtime(e.to_string()))?;
    let pin = cfg.pin().map_err(|e| Failure::config(format!("{}: hsm.pin_file: {e}", cfg.source.display())))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("medgate")
        .build()
        .map_err(|e| Failure::runtime(format!("runtime: {e}")))?;
    // Bound before the drop from root, so a port may be below 1024.
    let listeners = rt.block_on(async { Ok::<_, Failure>((bind(cfg.his.listen, "his.listen").await?, bind(cfg.admin.listen, "admin.listen").await?)) })?;
    harden::lock_memory();
    harden::drop_privileges(cfg.gateway.user.as_deref()).map_err(|e| Failure::config(format!("{}: {e}", cfg.source.display())))?;
    notify(&[NotifyState::Status("logging in to the HSM")]);
    let hsm = Arc::new(medgate_hsm::Hsm::open(cfg.hsm_config(), pin).map_err(Failure::hsm)?);
    let result = rt.block_on(run(&cfg, hsm.clone(), listeners));
    drop(rt);
    hsm.shutdown();
    tracing::info!("HSM sessions closed; medgate stopped");
    result
}

async fn run(cfg: &Config, hsm: Arc<medgate_hsm::Hsm>, (his, admin): (TcpListener, TcpListener)) -> Result<(), Failure> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::runtime(format!("signal: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::runtime(format!("signal: {e}")))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Failure::runtime(format!("signal: {e}")))?;
    let running = Running::start(cfg, hsm, his, admin).await.map_err(|e| Failure { code: exit::UNAVAILABLE, message: e.to_string() })?;
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify(&[NotifyState::Reloading]);
                if let Ok(now) = NotifyState::monotonic_usec_now() {
                    notify(&[now]);
                }
                match running.reload() {
                    Ok(()) => tracing::info!("certificates and CRLs reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload failed; the previous TLS configuration stays in use"),
                }
                notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
            }
        }
    }
    tracing::info!("stopping: no new connections; finishing requests in flight");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    running.stop().await;
    Ok(())
}
