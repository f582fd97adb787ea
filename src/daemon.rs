//! `medgate serve`: the long-running gateway process. Order of start-up: configuration (exit 64
//! on any problem), process hardening ([`crate::harden`]), the PIN and the listeners (the HIS
//! and monitoring ports and the admin socket, still as root when started as root), the drop to
//! the service user, the HSM (module loaded and logged in once, as that user; then the probe:
//! exit 64 when the token cannot hold a role or use an active key, before any connection is
//! accepted), the store and the ledger, then READY=1 to systemd. A failure that a restart cannot
//! fix exits 64 or 77 (see
//! [`crate::exit`]). SIGHUP re-reads the configuration and applies what can change live
//! (`medgate_gateway::reload`; `medgate reload` asks the same on the admin socket and waits for
//! the answer); SIGTERM (or SIGINT) stops accepting, lets requests in flight finish, flushes,
//! closes the HSM and exits 0.

use std::path::Path;
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::exit::Failure;
use crate::harden;
use medgate_gateway::config::Config;
use medgate_gateway::server::{notify, officers, Listeners, Running};

fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, Failure> {
    medgate_gateway::server::bind_tcp(addr).map_err(|e| Failure::bind(addr, what, &e))
}

async fn listen(cfg: &Config) -> Result<Listeners, Failure> {
    let his = bind(cfg.his.listen, "his.listen")?;
    let monitor = bind(cfg.admin.listen, "admin.listen")?;
    let admin = officers::bind(&cfg.admin.socket, cfg.admin.officers()).map_err(|e| Failure {
        // A missing or unwritable directory is the installation's fault; a live socket may go away.
        code: if e.kind() == std::io::ErrorKind::AddrInUse { crate::exit::UNAVAILABLE } else { crate::exit::BAD_CONFIG },
        message: format!("cannot listen on {} (admin.socket): {e}", cfg.admin.socket.display()),
    })?;
    Ok(Listeners { his, monitor, admin })
}

pub fn serve(path: &Path) -> Result<(), Failure> {
    let cfg = Config::load(path).map_err(|e| Failure::config(e.to_string()))?;
    if let Err(e) = crate::logging::set_level(&cfg.log.level) {
        tracing::warn!(error = %e, "log.level not applied");
    }
    medgate_gateway::reload::set_log_control(Box::new(crate::logging::Control));
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
    // Bound before the drop from root: a port may be below 1024, and the admin socket's
    // directory (/run/medgate outside systemd) may be made only by root.
    // A socket directory made here (outside systemd) goes to the service user with the socket.
    let made_dir = cfg.admin.socket.parent().filter(|d| !d.exists()).map(Path::to_path_buf);
    let listeners = rt.block_on(listen(&cfg))?;
    harden::lock_memory();
    let mut hand_over = vec![cfg.admin.socket.as_path()];
    hand_over.extend(made_dir.as_deref());
    harden::drop_privileges(path, cfg.gateway.user.as_deref(), &cfg.gateway.state_directory, &hand_over).map_err(|e| Failure::config(format!("{}: {e}", cfg.source.display())))?;
    notify(&[NotifyState::Status("logging in to the HSM")]);
    let hsm = Arc::new(medgate_hsm::Hsm::open(cfg.hsm_config(), pin).map_err(Failure::hsm)?);
    // The same probe as `medgate keys probe`, over this connection: a token that cannot hold a
    // role, or an active key it cannot use, stops the start here, before any connection is
    // accepted.
    notify(&[NotifyState::Status("probing the HSM")]);
    let report = hsm.probe_report().map_err(Failure::hsm)?;
    if let Err(f) = crate::keys::refusal(&report) {
        hsm.shutdown();
        tracing::error!(module = %cfg.hsm.module.display(), "{}", f.message);
        return Err(f);
    }
    let result = rt.block_on(run(&cfg, hsm.clone(), listeners));
    drop(rt);
    hsm.shutdown();
    tracing::info!("HSM sessions closed; medgate stopped");
    result
}

async fn run(cfg: &Config, hsm: Arc<medgate_hsm::Hsm>, listeners: Listeners) -> Result<(), Failure> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::runtime(format!("signal: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::runtime(format!("signal: {e}")))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Failure::runtime(format!("signal: {e}")))?;
    let running = Running::start(cfg, hsm, listeners).await.map_err(Failure::start)?;
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // Logged by the reload itself, as for `medgate reload`.
            _ = hup.recv() => { let _ = running.reload(); }
        }
    }
    tracing::info!("stopping: no new connections; finishing requests in flight");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    running.stop().await;
    Ok(())
}
