//! `[admin]`: the operators' two doors, the monitoring listener (TCP: health, readiness,
//! metrics) and the admin socket (Unix: every action, for root, the service's user and the
//! officers' group).
//!
//! Boundary: the keys, their defaults and their checks; the socket itself is
//! [`crate::server::officers`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{check_shape, ConfigError, Kind, Problem};

pub(super) const KEYS: &[(&str, Kind, bool)] = &[("listen", Kind::Addr, false), ("socket", Kind::Str, false), ("officers_group", Kind::Str, false)];

/// The operators' interfaces: the monitoring listener (TCP, read-only: health, readiness,
/// metrics) and the admin socket (Unix, every action; only root, the service user and the
/// officers' group, checked on the peer's credentials).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Monitoring listener: `/healthz`, `/readyz`, `/metrics` only (plain HTTP; keep it on
    /// loopback or a management network).
    #[serde(default = "default_monitor_listen")]
    pub listen: SocketAddr,
    /// The admin socket: every admin action, and the officers' reviews.
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
    /// Members of this group may use the admin socket (besides root and the service's user).
    #[serde(default = "default_officers_group")]
    pub officers_group: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { listen: default_monitor_listen(), socket: default_admin_socket(), officers_group: default_officers_group() }
    }
}

fn default_monitor_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
fn default_officers_group() -> Option<String> {
    Some(DEFAULT_OFFICERS_GROUP.to_owned())
}

/// Where the admin socket is when the configuration does not say (systemd's RuntimeDirectory).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/medgate/admin.sock";
/// The officers' group when the configuration does not name one.
pub const DEFAULT_OFFICERS_GROUP: &str = "medgate-officers";

impl Admin {
    /// The admin socket's path and the officers' group name, checked.
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let socket = self.socket.as_os_str().len();
        if !self.socket.is_absolute() || self.socket.file_name().is_none() {
            p.push(Problem { key: "admin.socket".into(), reason: "must be an absolute path to the socket file, e.g. \"/run/medgate/admin.sock\"".into() });
        } else if socket >= 108 {
            p.push(Problem { key: "admin.socket".into(), reason: format!("is {socket} bytes long; a Unix socket path must be shorter than 108") });
        }
        if let Some(g) = self.officers_group.as_deref().filter(|g| !g.is_empty()) {
            let ok = g.len() <= 32 && g.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) && !g.starts_with('-');
            if !ok {
                p.push(Problem { key: "admin.officers_group".into(), reason: "must be a group name: 1 to 32 letters, digits, '_', '-', '.' (or \"\" for none)".into() });
            }
        }
        p
    }

    /// The officers' group, unless the configuration names none (`officers_group = ""`).
    pub fn officers(&self) -> Option<&str> {
        self.officers_group.as_deref().filter(|g| !g.is_empty())
    }

    /// The admin socket named by the configuration at `path`, for the operators' commands: only
    /// `[admin]` is read, so an officer who may use the socket needs neither the HSM PIN file nor
    /// the TLS files to be readable. A file the caller may not read gives the default socket.
    pub fn socket_of(path: &Path) -> Result<PathBuf, ConfigError> {
        let err = |problems| ConfigError { file: path.to_path_buf(), problems };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // An officer may use the socket without being allowed to read the configuration.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(default_admin_socket()),
            Err(e) => return Err(err(vec![Problem { key: "(file)".into(), reason: format!("cannot be read: {e}") }])),
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(vec![Problem { key: "(syntax)".into(), reason: format!("invalid TOML: {}", e.message()) }]))?;
        let Some(admin) = table.get("admin") else { return Ok(default_admin_socket()) };
        let mut problems = Vec::new();
        match admin {
            toml::Value::Table(t) => check_shape(t, KEYS, "admin", &mut problems),
            other => problems.push(Problem { key: "admin".into(), reason: format!("must be a table, found {}", other.type_str()) }),
        }
        if !problems.is_empty() {
            return Err(err(problems));
        }
        let admin: Admin = admin.clone().try_into().map_err(|e: toml::de::Error| err(vec![Problem { key: "admin".into(), reason: e.message().to_owned() }]))?;
        let problems = admin.problems();
        if problems.is_empty() {
            Ok(admin.socket)
        } else {
            Err(err(problems))
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_must_be_absolute_and_short_and_the_group_a_name() {
        assert!(Admin::default().problems().is_empty());
        let a: Admin = toml::from_str("socket = \"admin.sock\"\nofficers_group = \"bad group\"").unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<String> = a.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, vec!["admin.socket", "admin.officers_group"]);
        let none: Admin = toml::from_str("officers_group = \"\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none.officers(), None);
        let long = format!("socket = \"/{}\"", "s".repeat(120));
        assert!(toml::from_str::<Admin>(&long).map(|a| a.problems().len()).unwrap_or(0) == 1);
    }

    #[test]
    fn the_cli_reads_only_admin_and_falls_back_only_when_not_allowed_to_read() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("medgate.toml");
        std::fs::write(&f, "[hsm]\nmodule = 7\n[admin]\nsocket = \"/run/x/admin.sock\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Admin::socket_of(&f).ok(), Some(PathBuf::from("/run/x/admin.sock")), "other tables are not read");
        assert!(Admin::socket_of(&dir.path().join("missing.toml")).is_err(), "a wrong path is an error, not the default");
        std::fs::write(&f, "[admin]\nsocket = 7\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(Admin::socket_of(&f).is_err());
    }
}
