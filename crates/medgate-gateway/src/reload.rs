//! Reload of a running gateway (SIGHUP, or `POST /reload` on the admin socket, which
//! `medgate reload` sends and the unit's ExecReload= runs): the configuration file is read and
//! validated again; what can change live is applied at once (the HIS listener's certificate,
//! client CA and CRLs, the body limit, the log level); the changes that need a restart are named
//! and left as they were; any error leaves everything as it was.
//!
//! Boundary: configuration and TLS files in, the settings in use swapped. No socket, no task;
//! the caller says when (a signal, a request) and reports the [`Outcome`] or the
//! [`ReloadError`].

use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use medgate_hsm::Hsm;

use crate::config::{Config, ConfigError};
use crate::metrics::Gauge;
use crate::tls::{self, Reloadable, TlsError, TlsFiles};

/// The binary's logger, which the gateway crate does not know: sets its filter.
pub trait LogControl: Send + Sync + Debug {
    /// Makes `filter` (already checked by the configuration) the filter in use.
    fn set(&self, filter: &str) -> Result<(), String>;
}

static LOG_CONTROL: OnceLock<Box<dyn LogControl>> = OnceLock::new();

/// Hands the logger to reloads (once per process; `medgate serve` does it).
pub fn set_log_control(control: Box<dyn LogControl>) {
    let _ = LOG_CONTROL.set(control);
}

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// What is in effect now, one line each.
    pub applied: Vec<String>,
    /// Settings that changed in the file but keep their old value until the gateway restarts.
    pub needs_restart: Vec<String>,
}

impl Outcome {
    /// The outcome as lines for a person (the log, `medgate reload`).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for a in &self.applied {
            s.push_str(&format!("applied: {a}\n"));
        }
        for r in &self.needs_restart {
            s.push_str(&format!("needs a restart (old value kept): {r}\n"));
        }
        s
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Crl(String),
    #[error("log.level: {0}")]
    Log(String),
}

/// Samples of a gauge: (labels, value).
type Samples = Vec<(String, f64)>;

/// The last reload, and the dates of the certificates and CRLs in use, for `/metrics`.
#[derive(Debug, Clone, Default)]
struct Last {
    ok: bool,
    /// Unix time of the last successful reload (or of the start).
    success_at: f64,
    /// notAfter of each configured certificate, as read when last applied: (labels, unix time).
    certificates: Samples,
    /// nextUpdate of each configured CRL, as read when last applied.
    crls: Samples,
}

impl Last {
    /// The dates of the files `cfg` names, read now (when they are applied).
    fn dates(cfg: &Config) -> (Samples, Samples) {
        let mut certs = Vec::new();
        let mut files = vec![("server", cfg.his.certificate.clone()), ("client_ca", cfg.his.client_ca.clone())];
        if let Some(c) = cfg.consortium.as_ref().filter(|_| cfg.ledger.mode == "consortium") {
            files.extend([("consortium", c.certificate.clone()), ("consortium_ca", c.ca.clone())]);
        }
        let file_label = |p: &std::path::Path| crate::metrics::escape(&p.display().to_string());
        for (which, path) in files {
            for (i, der) in tls::load_certs(&path).unwrap_or_default().iter().enumerate() {
                if let Ok((_, _, not_after)) = crate::pki::describe_certificate(der.as_ref()) {
                    certs.push((format!("certificate=\"{which}\",file=\"{}\",index=\"{i}\"", file_label(&path)), not_after as f64));
                }
            }
        }
        let mut crls = Vec::new();
        for path in &cfg.his.crl {
            for (i, crl) in crate::pki::read_crls(path).unwrap_or_default().iter().enumerate() {
                if let Some(next) = crl.next_update {
                    crls.push((format!("file=\"{}\",index=\"{i}\"", file_label(path)), next as f64));
                }
            }
        }
        (certs, crls)
    }
}

/// The settings of a running gateway that a reload may change, and the configuration in use.
#[derive(Debug)]
pub struct Live {
    /// The configuration in effect (restart-only settings keep their start-up values). The lock
    /// also makes reloads one at a time.
    config: Mutex<Config>,
    hsm: Arc<Hsm>,
    tls: Arc<Reloadable>,
    max_body: Arc<AtomicUsize>,
    last: Mutex<Last>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Settings a reload cannot change: (key, its value as text).
fn restart_only(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("gateway.hospital_id", c.gateway.hospital_id.clone()),
        ("gateway.state_directory", c.gateway.state_directory.display().to_string()),
        ("hsm", format!("{:?}", c.hsm)),
        ("his.listen", c.his.listen.to_string()),
        ("his.request_timeout_seconds", c.his.request_timeout_seconds.to_string()),
        ("admin.listen", c.admin.listen.to_string()),
        ("admin.socket", c.admin.socket.display().to_string()),
        ("admin.officers_group", format!("{:?}", c.admin.officers_group)),
        ("limits", format!("{:?}", c.limits)),
        ("atna", format!("{:?}", c.atna)),
        ("ledger", format!("{:?}", c.ledger)),
        ("consortium", format!("{:?}", c.consortium)),
        ("dangerous.admin_on_all_interfaces", c.dangerous.admin_on_all_interfaces.to_string()),
    ]
}

impl Live {
    /// The settings in use at start-up: `tls` and `max_body` are the ones the listener reads.
    pub fn new(cfg: &Config, hsm: Arc<Hsm>, tls: Arc<Reloadable>, max_body: Arc<AtomicUsize>) -> Live {
        let (certificates, crls) = Last::dates(cfg);
        let last = Last { ok: true, success_at: unix_now(), certificates, crls };
        Live { config: Mutex::new(cfg.clone()), hsm, tls, max_body, last: Mutex::new(last) }
    }

    /// A copy of the configuration in effect.
    pub fn config(&self) -> Config {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the configuration file and applies it (see the module's comment). Tells
    /// systemd RELOADING=1 before and READY=1 after, whatever the result.
    pub fn reload(&self) -> Result<Outcome, ReloadError> {
        let mono = sd_notify::NotifyState::monotonic_usec_now().ok();
        let mut states = vec![sd_notify::NotifyState::Reloading];
        states.extend(mono);
        let _ = sd_notify::notify(false, &states);
        let result = self.try_reload();
        let dates = result.is_ok().then(|| Last::dates(&self.config()));
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            last.ok = result.is_ok();
            if let Some((certificates, crls)) = dates {
                last.success_at = unix_now();
                last.certificates = certificates;
                last.crls = crls;
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);
        result
    }

    fn try_reload(&self) -> Result<Outcome, ReloadError> {
        let mut current = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let new = Config::load(&current.source)?;
        let files = TlsFiles::from_config(&new);
        if files.enforce_crl_expiry {
            stale_crls(&files)?;
        }
        self.hsm.refresh_keys();
        let server = tls::server_config(&self.hsm, &files)?;
        // Everything is checked: apply.
        let log_control = LOG_CONTROL.get().filter(|_| std::env::var_os("MEDGATE_LOG").is_none());
        if let Some(control) = log_control {
            control.set(&new.log.level).map_err(ReloadError::Log)?;
        }
        self.tls.set(server);
        self.max_body.store(new.his.max_body_bytes, Ordering::Relaxed);
        let mut out = Outcome::default();
        out.applied.push(format!(
            "certificates and CRLs re-read: his.certificate {}, his.client_ca {}, {} CRL file(s)",
            new.his.certificate.display(),
            new.his.client_ca.display(),
            new.his.crl.len()
        ));
        if new.his.max_body_bytes != current.his.max_body_bytes {
            out.applied.push(format!("his.max_body_bytes = {} (was {})", new.his.max_body_bytes, current.his.max_body_bytes));
        }
        match log_control {
            Some(_) if new.log.level != current.log.level => out.applied.push(format!("log.level = {:?} (was {:?})", new.log.level, current.log.level)),
            None if new.log.level != current.log.level => out.needs_restart.push("log.level (MEDGATE_LOG in the environment wins over it)".into()),
            _ => {}
        }
        for ((key, old), (_, now)) in restart_only(&current).into_iter().zip(restart_only(&new)) {
            if old != now {
                out.needs_restart.push(key.to_owned());
            }
        }
        let mut merged = current.clone();
        merged.his.certificate = new.his.certificate;
        merged.his.client_ca = new.his.client_ca;
        merged.his.crl = new.his.crl;
        merged.his.max_body_bytes = new.his.max_body_bytes;
        merged.dangerous.allow_no_crl = new.dangerous.allow_no_crl;
        merged.dangerous.allow_expired_crl = new.dangerous.allow_expired_crl;
        merged.log = new.log;
        *current = merged;
        Ok(out)
    }

    /// Gauges for `/metrics`: the last reload, and when each certificate and CRL in use (read
    /// when last applied) runs out.
    pub fn gauges(&self) -> Vec<Gauge<'static>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        vec![
            ("medgate_config_last_reload_successful", "1 if the last reload applied the configuration, 0 if it was refused (the previous settings stay in use).", vec![(String::new(), f64::from(u8::from(last.ok)))]),
            ("medgate_config_last_reload_success_timestamp_seconds", "When the configuration was last applied, at start or by a reload (unix time).", vec![(String::new(), last.success_at)]),
            ("medgate_certificate_expiry_timestamp_seconds", "When each certificate in use expires (notAfter, unix time).", last.certificates),
            ("medgate_crl_next_update_timestamp_seconds", "nextUpdate of each CRL in use (unix time); past it, clients of that CA are refused unless [dangerous] allow_expired_crl.", last.crls),
        ]
    }
}

/// Refuses CRLs past their nextUpdate: rustls would then refuse every client of that CA.
pub fn stale_crls(files: &TlsFiles) -> Result<(), ReloadError> {
    let now = unix_now() as i64;
    for path in &files.crls {
        for crl in crate::pki::read_crls(path).map_err(ReloadError::Crl)? {
            if let Some(next) = crl.next_update.filter(|n| *n < now) {
                return Err(ReloadError::Crl(format!(
                    "{}: the CRL of {} is past its nextUpdate ({}): every HIS client certificate of that CA would be refused. Install a fresh CRL from the CA (`medgate pki crl` for a pilot CA), then reload",
                    path.display(),
                    crl.issuer,
                    crate::clock::rfc3339(next)
                )));
            }
        }
    }
    Ok(())
}
