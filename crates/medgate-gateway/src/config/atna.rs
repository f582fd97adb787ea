//! `[atna]`: the IHE ATNA audit export (ITI-20) to the hospital's audit record repository,
//! syslog over mutual TLS. Off unless `enabled = true`; then `repository` and `ca` are required.
//!
//! Boundary: the keys, their defaults and their checks; the exporter itself is
//! [`crate::atna`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{check_readable_file, Kind, Problem};

pub(super) const KEYS: &[(&str, Kind, bool)] = &[
    ("enabled", Kind::Bool, false),
    ("repository", Kind::Str, false),
    ("server_name", Kind::Str, false),
    ("ca", Kind::Str, false),
    ("client_cert", Kind::Str, false),
    ("hostname", Kind::Str, false),
    ("queue_dir", Kind::Str, false),
    ("queue_max_messages", Kind::Int, false),
    ("on_full", Kind::Str, false),
    ("replay_history", Kind::Bool, false),
    ("linger_ms", Kind::Int, false),
    ("session_max_messages", Kind::Int, false),
    ("connect_timeout_secs", Kind::Int, false),
    ("confirm_timeout_secs", Kind::Int, false),
    ("retry_max_secs", Kind::Int, false),
];

/// What to do while the queue is full (the repository has been unreachable for long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Keep serving; the events wait on the ledger and are sent as room frees.
    CatchUp,
    /// Answer new HIS requests 503 until the queue has room again.
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Atna {
    #[serde(default)]
    pub enabled: bool,
    /// The repository's syslog-over-TLS listener, `host:port` (RFC 5425; IANA port 6514).
    #[serde(default)]
    pub repository: String,
    /// The name the repository's certificate must carry. Default: the host part of `repository`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA certificate(s) that issued the repository's certificate.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM chain for the HSM `tls` key, presented to the repository. Default: `his.certificate`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// syslog HOSTNAME and AuditSourceID. Default: the system's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Where the queue lives. Default: `<gateway.state_directory>/atna`.
    #[serde(default)]
    pub queue_dir: Option<PathBuf>,
    #[serde(default = "default_queue_max")]
    pub queue_max_messages: u64,
    #[serde(default = "default_on_full")]
    pub on_full: String,
    #[serde(default)]
    pub replay_history: bool,
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
    #[serde(default = "default_session_max")]
    pub session_max_messages: u64,
    #[serde(default = "default_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_timeout")]
    pub confirm_timeout_secs: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
}

fn default_queue_max() -> u64 {
    100_000
}
fn default_on_full() -> String {
    "catch-up".into()
}
fn default_linger() -> u64 {
    500
}
fn default_session_max() -> u64 {
    10_000
}
fn default_timeout() -> u64 {
    10
}
fn default_retry_max() -> u64 {
    30
}

/// The host part of `host:port` (`[v6]:port` too), if the string has that shape.
fn host_of(repository: &str) -> Option<&str> {
    let (host, port) = repository.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some(host)
}

impl Atna {
    pub fn on_full(&self) -> OnFull {
        if self.on_full == "refuse" {
            OnFull::Refuse
        } else {
            OnFull::CatchUp
        }
    }

    /// The repository's certificate name.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| host_of(&self.repository).unwrap_or_default().to_owned())
    }

    /// The syslog HOSTNAME: configured, or this system's host name.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "medgate".into()))
    }

    pub fn queue_dir(&self, state_directory: &Path) -> PathBuf {
        self.queue_dir.clone().unwrap_or_else(|| state_directory.join("atna"))
    }

    /// The exporter's settings, for hospital `site_id`.
    pub fn exporter_config(&self, site_id: &str) -> medgate_atna::Config {
        let mut c = medgate_atna::Config::new(&self.repository, &self.hostname(), site_id);
        c.replay_history = self.replay_history;
        c.session_max_messages = self.session_max_messages as usize;
        c.linger = Duration::from_millis(self.linger_ms);
        c.connect_timeout = Duration::from_secs(self.connect_timeout_secs);
        c.confirm_timeout = Duration::from_secs(self.confirm_timeout_secs);
        c.retry_max = Duration::from_secs(self.retry_max_secs).max(c.retry_min);
        c
    }

    /// Every problem with the table (only when enabled: a disabled table is not checked).
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let mut bad = |key: &str, reason: String| p.push(Problem { key: format!("atna.{key}"), reason });
        if self.repository.is_empty() {
            bad("repository", "required when enabled: the repository's syslog-over-TLS listener, e.g. \"arr.hospital.example:6514\"".into());
        } else if host_of(&self.repository).is_none() {
            bad("repository", format!("{:?} is not host:port", self.repository));
        }
        if self.server_name.as_deref().is_some_and(|n| rustls::pki_types::ServerName::try_from(n).is_err()) {
            bad("server_name", "must be a DNS name or an IP address".into());
        }
        let hostname_ok = |h: &str| (1..=255).contains(&h.len()) && h.bytes().all(|b| (33..=126).contains(&b)) && h != "-";
        if self.hostname.as_deref().is_some_and(|h| !hostname_ok(h)) {
            bad("hostname", "must be 1 to 255 printable ASCII characters without spaces".into());
        }
        if let Some(q) = &self.queue_dir {
            if !q.is_absolute() {
                bad("queue_dir", "must be an absolute path".into());
            }
        }
        if self.queue_max_messages == 0 || self.queue_max_messages > 100_000_000 {
            bad("queue_max_messages", "must be between 1 and 100000000".into());
        }
        if !["catch-up", "refuse"].contains(&self.on_full.as_str()) {
            bad("on_full", format!("{:?} is not \"catch-up\" or \"refuse\"", self.on_full));
        }
        if !(1..=60_000).contains(&self.linger_ms) {
            bad("linger_ms", "must be between 1 and 60000".into());
        }
        if !(1..=1_000_000).contains(&self.session_max_messages) {
            bad("session_max_messages", "must be between 1 and 1000000".into());
        }
        for (key, v) in [("connect_timeout_secs", self.connect_timeout_secs), ("confirm_timeout_secs", self.confirm_timeout_secs), ("retry_max_secs", self.retry_max_secs)] {
            if !(1..=3600).contains(&v) {
                bad(key, "must be between 1 and 3600".into());
            }
        }
        match &self.ca {
            None => bad("ca", "required when enabled: the PEM CA certificate(s) of the repository".into()),
            Some(ca) => check_pem_certificates(ca, "atna.ca", &mut p),
        }
        if let Some(cert) = &self.client_cert {
            check_pem_certificates(cert, "atna.client_cert", &mut p);
        }
        p
    }
}

/// A readable PEM file with at least one certificate.
fn check_pem_certificates(path: &Path, key: &str, out: &mut Vec<Problem>) {
    let before = out.len();
    check_readable_file(path, key, out);
    if out.len() > before {
        return;
    }
    let bytes = std::fs::read(path).unwrap_or_default();
    let certs = rustls_pemfile::certs(&mut bytes.as_slice()).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(c) if !c.is_empty() => {}
        Ok(_) => out.push(Problem { key: key.into(), reason: format!("{}: no CERTIFICATE in the file", path.display()) }),
        Err(e) => out.push(Problem { key: key.into(), reason: format!("{}: bad PEM: {e}", path.display()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        let a: Atna = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        a.problems().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn an_enabled_table_names_each_bad_key_and_a_disabled_one_is_not_checked() {
        assert!(keys("repository = \"nonsense\"\non_full = \"drop\"").is_empty());
        let k = keys("enabled = true\non_full = \"drop\"\nqueue_max_messages = 0\nhostname = \"gw 1\"\nqueue_dir = \"atna\"");
        for want in ["atna.repository", "atna.ca", "atna.on_full", "atna.queue_max_messages", "atna.hostname", "atna.queue_dir"] {
            assert!(k.iter().any(|x| x == want), "{want} in {k:?}");
        }
        let k = keys("enabled = true\nrepository = \"arr:6514\"\nca = \"/nonexistent/ca.pem\"");
        assert_eq!(k, vec!["atna.ca".to_owned()]);
    }

    #[test]
    fn repositories_are_host_and_port() {
        assert_eq!(host_of("arr.example:6514"), Some("arr.example"));
        assert_eq!(host_of("[::1]:6514"), Some("::1"));
        assert_eq!(host_of("arr.example"), None);
        assert_eq!(host_of("arr.example:0"), None);
        assert_eq!(host_of(":6514"), None);
    }
}
