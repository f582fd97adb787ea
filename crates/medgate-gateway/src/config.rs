//! Configuration: `/etc/medgate/medgate.toml`, read in three steps — parse (TOML syntax), check
//! the shape (every unknown key and every wrong type, all at once), validate (paths, addresses,
//! limits, all at once) — into a typed [`Config`]. Nothing secret lives here: the HSM PIN comes
//! from a file named here or from the systemd credential `hsm-pin`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod atna;
mod consortium;
mod limits;
mod log;
mod public_base;

pub use admin::{Admin, DEFAULT_ADMIN_SOCKET, DEFAULT_OFFICERS_GROUP};
pub use atna::{Atna, OnFull};
pub use consortium::Consortium;
use consortium::validate_consortium;
pub use limits::Limits;
pub use log::Log;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/medgate/medgate.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    pub hsm: Hsm,
    pub his: His,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub ledger: Ledger,
    #[serde(default)]
    pub dangerous: Dangerous,
    #[serde(default)]
    pub log: Log,
    /// Required when `ledger.mode = "consortium"`.
    #[serde(default)]
    pub consortium: Option<Consortium>,
    /// The IHE ATNA audit export (off unless `atna.enabled`).
    #[serde(default)]
    pub atna: Option<Atna>,
    /// Per-client and HTTP limits of the HIS listener.
    #[serde(default)]
    pub limits: Limits,
    /// The file this came from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// This hospital's identifier in the consortium (custodian in ledger entries).
    pub hospital_id: String,
    /// Vault, ledger and outbox live here (systemd StateDirectory).
    pub state_directory: PathBuf,
    /// The account `medgate serve` becomes when started as root (default: the service account,
    /// the owner of `state_directory`, as `medgate config check` finds it).
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hsm {
    pub module: PathBuf,
    pub token_label: String,
    /// File holding the user PIN (mode 0600). Optional when systemd passes the `hsm-pin` credential.
    pub pin_file: Option<PathBuf>,
    #[serde(default = "default_pool")]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct His {
    /// Address of the HIS-facing FHIR listener (mutual TLS).
    pub listen: SocketAddr,
    /// PEM chain for the gateway's TLS key (the key itself stays in the HSM, role `tls`).
    pub certificate: PathBuf,
    /// PEM CA certificate(s) that issue HIS client certificates.
    pub client_ca: PathBuf,
    /// PEM CRL files of the client CA; a revoked certificate is refused during the handshake.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Seconds a client has to finish sending a request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// The https URL clients reach this listener at (the FHIR base); see [`His::public_base`].
    #[serde(default)]
    pub public_base_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// `standalone`: the in-process sequencer (no etcd).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Most entries signed together in one batch.
    #[serde(default = "default_batch_entries")]
    pub batch_max_entries: usize,
    /// Longest an entry waits for its batch to fill, in milliseconds.
    #[serde(default = "default_batch_delay")]
    pub batch_max_delay_ms: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger { mode: default_mode(), batch_max_entries: default_batch_entries(), batch_max_delay_ms: default_batch_delay() }
    }
}


/// Settings that weaken a guarantee. Each one set is logged at WARN at start-up.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dangerous {
    /// Accept HIS client certificates without checking a CRL even when none is configured.
    #[serde(default)]
    pub allow_no_crl: bool,
    /// Bind the monitoring listener (`admin.listen`) to a non-loopback address.
    #[serde(default)]
    pub admin_on_all_interfaces: bool,
    /// Accept HIS client certificates while a CRL is past its nextUpdate (instead of refusing them).
    #[serde(default)]
    pub allow_expired_crl: bool,
}

fn default_pool() -> usize {
    4
}
fn default_max_body() -> usize {
    10 * 1024 * 1024
}
fn default_request_timeout() -> u64 {
    30
}
fn default_mode() -> String {
    "standalone".into()
}
fn default_batch_entries() -> usize {
    64
}
fn default_batch_delay() -> u64 {
    // No window: the writer groups what arrived while the previous group was being written.
    0
}

/// One problem in a configuration file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// All problems found in one file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{}", self.file.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            writeln!(f, "  {}: {}: {}", self.file.display(), p.key, p.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    /// A string holding `IP:port`.
    Addr,
    Table(&'static [(&'static str, Kind, bool)]),
}

const HSM_KEYS: &[(&str, Kind, bool)] =
    &[("module", Kind::Str, true), ("token_label", Kind::Str, true), ("pin_file", Kind::Str, false), ("pool_size", Kind::Int, false)];
const SCHEMA: &[(&str, Kind, bool)] = &[
    ("gateway", Kind::Table(&[("hospital_id", Kind::Str, true), ("state_directory", Kind::Str, true), ("user", Kind::Str, false)]), true),
    ("hsm", Kind::Table(HSM_KEYS), true),
    (
        "his",
        Kind::Table(&[
            ("listen", Kind::Addr, true),
            ("certificate", Kind::Str, true),
            ("client_ca", Kind::Str, true),
            ("crl", Kind::StrList, false),
            ("max_body_bytes", Kind::Int, false),
            ("request_timeout_seconds", Kind::Int, false),
            ("public_base_url", Kind::Str, false),
        ]),
        true,
    ),
    ("admin", Kind::Table(admin::KEYS), false),
    (
        "ledger",
        Kind::Table(&[("mode", Kind::Str, false), ("batch_max_entries", Kind::Int, false), ("batch_max_delay_ms", Kind::Int, false)]),
        false,
    ),
    ("dangerous", Kind::Table(&[("allow_no_crl", Kind::Bool, false), ("admin_on_all_interfaces", Kind::Bool, false), ("allow_expired_crl", Kind::Bool, false)]), false),
    ("log", Kind::Table(&[("level", Kind::Str, false)]), false),
    (
        "consortium",
        Kind::Table(&[
            ("etcd_endpoints", Kind::StrList, true),
            ("ca", Kind::Str, true),
            ("certificate", Kind::Str, true),
            ("prefix", Kind::Str, false),
            ("genesis", Kind::Str, true),
            ("peer_listen", Kind::Addr, false),
            ("break_glass_roles", Kind::StrList, false),
        ]),
        false,
    ),
    ("atna", Kind::Table(atna::KEYS), false),
    ("limits", Kind::Table(limits::KEYS), false),
];

fn check_shape(table: &toml::Table, schema: &[(&str, Kind, bool)], prefix: &str, out: &mut Vec<Problem>) {
    let key_path = |k: &str| {
        // A key that is not bare in TOML (empty, or with a dot or a space) is named quoted, as the
        // file must write it.
        let k = if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') { k.to_owned() } else { format!("{k:?}") };
        if prefix.is_empty() { k } else { format!("{prefix}.{k}") }
    };
    for (k, v) in table {
        let Some((_, kind, _)) = schema.iter().find(|(name, _, _)| name == k) else {
            let known: Vec<&str> = schema.iter().map(|(n, _, _)| *n).collect();
            out.push(Problem { key: key_path(k), reason: format!("unknown key (known here: {})", known.join(", ")) });
            continue;
        };
        let ok = match (kind, v) {
            (Kind::Str, toml::Value::String(_)) | (Kind::Int, toml::Value::Integer(_)) | (Kind::Bool, toml::Value::Boolean(_)) => true,
            (Kind::StrList, toml::Value::Array(a)) => a.iter().all(|x| x.is_str()),
            (Kind::Addr, toml::Value::String(a)) => a.parse::<SocketAddr>().is_ok(),
            (Kind::Table(inner), toml::Value::Table(t)) => {
                check_shape(t, inner, &key_path(k), out);
                true
            }
            _ => false,
        };
        if !ok {
            let want = match kind {
                Kind::Str => "a string",
                Kind::Int => "an integer",
                Kind::Bool => "true or false",
                Kind::StrList => "a list of strings",
                Kind::Addr => "an IP address and port such as \"127.0.0.1:8443\" or \"[::1]:8443\" (host names are not resolved)",
                Kind::Table(_) => "a table",
            };
            out.push(Problem { key: key_path(k), reason: format!("must be {want}, found {}", v.type_str()) });
        }
    }
    for (name, _, required) in schema {
        if *required && !table.contains_key(*name) {
            out.push(Problem { key: key_path(name), reason: "required but missing".into() });
        }
    }
}


fn check_readable_file(path: &Path, key: &str, out: &mut Vec<Problem>) {
    match std::fs::File::open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() => {}
            Ok(_) => out.push(Problem { key: key.into(), reason: format!("{} is not a file", path.display()) }),
            Err(e) => out.push(Problem { key: key.into(), reason: format!("{}: {e}", path.display()) }),
        },
        Err(e) => out.push(Problem { key: key.into(), reason: format!("{} cannot be read: {e}", path.display()) }),
    }
}

impl Config {
    /// Reads, checks and validates `path`, reporting every problem at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |problems| ConfigError { file: path.to_path_buf(), problems };
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(vec![Problem { key: "(file)".into(), reason: format!("cannot be read: {e}") }]))?;
        Config::parse(&text, path)
    }

    /// As [`Config::load`], from text already read.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |problems| ConfigError { file: path.to_path_buf(), problems };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let reason = e.message().to_owned();
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let key = line.map(|l| format!("line {l}")).unwrap_or_else(|| "(syntax)".into());
            err(vec![Problem { key, reason: format!("invalid TOML: {reason}") }])
        })?;
        let mut problems = Vec::new();
        check_shape(&table, SCHEMA, "", &mut problems);
        if !problems.is_empty() {
            return Err(err(problems));
        }
        let mut cfg: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            err(vec![Problem { key: "(structure)".into(), reason: e.message().to_owned() }])
        })?;
        cfg.source = path.to_path_buf();
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Checks meaning: files exist and can be read, addresses and limits make sense.
    fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut p = Vec::new();
        let g = &self.gateway;
        if let Err(rule) = medgate_ledger::hospital::check_hospital_id(&g.hospital_id) {
            p.push(Problem { key: "gateway.hospital_id".into(), reason: format!("must be {rule}") });
        }
        if !g.state_directory.is_absolute() {
            p.push(Problem { key: "gateway.state_directory".into(), reason: "must be an absolute path".into() });
        }
        if !self.hsm.module.is_file() {
            p.push(Problem { key: "hsm.module".into(), reason: format!("PKCS#11 module {} does not exist", self.hsm.module.display()) });
        }
        if self.hsm.token_label.is_empty() || self.hsm.token_label.len() > 32 {
            p.push(Problem { key: "hsm.token_label".into(), reason: "must be 1 to 32 characters".into() });
        }
        if !(1..=256).contains(&self.hsm.pool_size) {
            p.push(Problem { key: "hsm.pool_size".into(), reason: "must be between 1 and 256".into() });
        }
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| Path::new(&d).join(medgate_hsm::CREDENTIAL_NAME).exists())
            .unwrap_or(false);
        match (&self.hsm.pin_file, credential) {
            (Some(f), false) => {
                if let Err(e) = medgate_hsm::Pin::from_file(f) {
                    p.push(Problem { key: "hsm.pin_file".into(), reason: e.to_string() });
                }
            }
            (None, false) => p.push(Problem {
                key: "hsm.pin_file".into(),
                reason: "no PIN source: set pin_file or pass the systemd credential hsm-pin (LoadCredential=)".into(),
            }),
            _ => {}
        }
        self.validate_listeners(&mut p);
        match (self.ledger.mode.as_str(), &self.consortium) {
            ("standalone", _) => {}
            ("consortium", None) => p.push(Problem {
                key: "consortium".into(),
                reason: "ledger.mode = \"consortium\" needs a [consortium] table (etcd endpoints, CA, certificate, genesis)".into(),
            }),
            ("consortium", Some(c)) => validate_consortium(c, &mut p),
            (other, _) => p.push(Problem { key: "ledger.mode".into(), reason: format!("{other:?} is not a mode; use \"standalone\" or \"consortium\"") }),
        }
        if !(1..=medgate_ledger::MAX_BATCH_ENTRIES).contains(&self.ledger.batch_max_entries) {
            p.push(Problem {
                key: "ledger.batch_max_entries".into(),
                reason: format!("must be between 1 and {} (the largest batch every gateway accepts)", medgate_ledger::MAX_BATCH_ENTRIES),
            });
        }
        self.log.check(&mut p);
        if self.ledger.batch_max_delay_ms > 10_000 {
            p.push(Problem { key: "ledger.batch_max_delay_ms".into(), reason: "must be at most 10000".into() });
        }
        if let Some(a) = &self.atna {
            p.extend(a.problems());
        }
        p.extend(self.limits.problems());
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// The HIS and monitoring listeners: addresses, certificates, CRLs, limits.
    fn validate_listeners(&self, p: &mut Vec<Problem>) {
        let h = &self.his;
        if h.listen.port() == 0 {
            p.push(Problem { key: "his.listen".into(), reason: "port 0 is not a port clients can reach".into() });
        }
        check_readable_file(&h.certificate, "his.certificate", p);
        check_readable_file(&h.client_ca, "his.client_ca", p);
        for (i, crl) in h.crl.iter().enumerate() {
            check_readable_file(crl, &format!("his.crl[{i}]"), p);
        }
        if h.crl.is_empty() && !self.dangerous.allow_no_crl {
            p.push(Problem {
                key: "his.crl".into(),
                reason: "no CRL configured: revoked HIS certificates would be accepted (set [dangerous] allow_no_crl = true to run without)".into(),
            });
        }
        if !(1024..=1 << 30).contains(&h.max_body_bytes) {
            p.push(Problem { key: "his.max_body_bytes".into(), reason: "must be between 1024 and 1073741824".into() });
        }
        if !(1..=3600).contains(&h.request_timeout_seconds) {
            p.push(Problem { key: "his.request_timeout_seconds".into(), reason: "must be between 1 and 3600".into() });
        }
        if let Some(url) = &h.public_base_url {
            if let Err(reason) = public_base::check(url) {
                p.push(Problem { key: "his.public_base_url".into(), reason: reason.into() });
            }
        }
        if self.admin.listen.port() == 0 {
            p.push(Problem { key: "admin.listen".into(), reason: "port 0 is not a port a monitor can reach".into() });
        }
        if self.admin.listen.port() == h.listen.port() && self.admin.listen.ip() == h.listen.ip() {
            p.push(Problem { key: "admin.listen".into(), reason: "must differ from his.listen".into() });
        }
        if !self.admin.listen.ip().is_loopback() && !self.dangerous.admin_on_all_interfaces {
            p.push(Problem {
                key: "admin.listen".into(),
                reason: "not a loopback address; the monitoring listener has no TLS (set [dangerous] admin_on_all_interfaces = true to allow)".into(),
            });
        }
        p.extend(self.admin.problems());
    }

    /// The settings from `[dangerous]` that are on, for the start-up WARN lines.
    pub fn dangerous_settings(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.dangerous.allow_no_crl {
            v.push("allow_no_crl: HIS certificates are not checked against a CRL");
        }
        if self.dangerous.admin_on_all_interfaces {
            v.push("admin_on_all_interfaces: health and metrics are served beyond loopback without TLS");
        }
        if self.dangerous.allow_expired_crl {
            v.push("allow_expired_crl: HIS certificates are accepted while a CRL is past its nextUpdate");
        }
        v
    }

    pub fn hsm_config(&self) -> medgate_hsm::HsmConfig {
        medgate_hsm::HsmConfig {
            module: self.hsm.module.clone(),
            token_label: self.hsm.token_label.clone(),
            pool_size: self.hsm.pool_size,
        }
    }

    /// The PIN: systemd credential first, then `hsm.pin_file`.
    pub fn pin(&self) -> Result<medgate_hsm::Pin, medgate_hsm::PinError> {
        medgate_hsm::Pin::resolve(self.hsm.pin_file.as_deref())
    }
}

/// Only the `[hsm]` part, for the security officer's `medgate keys`, which must work before the
/// TLS certificates exist. Same rules: unknown keys in `[hsm]` are errors.
#[derive(Debug, Clone)]
pub struct HsmOnly {
    pub hsm: Hsm,
    pub state_directory: Option<PathBuf>,
    /// `[gateway] hospital_id`, which officers' approvals are bound to.
    pub hospital_id: Option<String>,
}

impl HsmOnly {
    pub fn load(path: &Path) -> Result<HsmOnly, ConfigError> {
        let err = |problems| ConfigError { file: path.to_path_buf(), problems };
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(vec![Problem { key: "(file)".into(), reason: format!("cannot be read: {e}") }]))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(vec![Problem { key: "(syntax)".into(), reason: format!("invalid TOML: {}", e.message()) }]))?;
        let mut problems = Vec::new();
        let Some(toml::Value::Table(hsm)) = table.get("hsm") else {
            return Err(err(vec![Problem { key: "hsm".into(), reason: "required but missing".into() }]));
        };
        check_shape(hsm, HSM_KEYS, "hsm", &mut problems);
        if !problems.is_empty() {
            return Err(err(problems));
        }
        let hsm: Hsm = toml::Value::Table(hsm.clone())
            .try_into()
            .map_err(|e: toml::de::Error| err(vec![Problem { key: "hsm".into(), reason: e.message().to_owned() }]))?;
        if !hsm.module.is_file() {
            problems.push(Problem { key: "hsm.module".into(), reason: format!("PKCS#11 module {} does not exist", hsm.module.display()) });
        }
        if !problems.is_empty() {
            return Err(err(problems));
        }
        let state_directory = table
            .get("gateway")
            .and_then(|g| g.get("state_directory"))
            .and_then(|s| s.as_str())
            .map(PathBuf::from);
        let hospital_id = table.get("gateway").and_then(|g| g.get("hospital_id")).and_then(|s| s.as_str()).map(str::to_owned);
        Ok(HsmOnly { hsm, state_directory, hospital_id })
    }

    pub fn hsm_config(&self) -> medgate_hsm::HsmConfig {
        medgate_hsm::HsmConfig { module: self.hsm.module.clone(), token_label: self.hsm.token_label.clone(), pool_size: self.hsm.pool_size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        Config::parse(text, Path::new("/etc/medgate/medgate.toml")).expect_err("must be refused").problems
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_all_reported_at_once() {
        let p = problems(
            r#"
            [gateway]
            hospital_id = "a"
            state_directory = "/var/lib/medgate"
            colour = "blue"
            [hsm]
            module = 7
            token_label = "medgate"
            [his]
            listen = "127.0.0.1:8443"
            certificate = "/x"
            client_ca = "/y"
            [extra]
            "#,
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"gateway.colour"), "{p:?}");
        assert!(keys.contains(&"hsm.module"), "{p:?}");
        assert!(keys.contains(&"extra"), "{p:?}");
        assert_eq!(p.len(), 3, "{p:?}");
        // Keys that are not bare are named as the file writes them (found by fuzzing: an empty
        // key was named by an empty string).
        let p = problems("\"\" = 222\n\"a.b\" = 1\n");
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"\"\"") && keys.contains(&"\"a.b\""), "{p:?}");
    }

    #[test]
    fn semantic_problems_name_the_key_and_path() {
        let p = problems(
            r#"
            [gateway]
            hospital_id = "bad id!"
            state_directory = "relative"
            [hsm]
            module = "/nonexistent/module.so"
            token_label = "medgate"
            pin_file = "/nonexistent/pin"
            [his]
            listen = "127.0.0.1:0"
            certificate = "/nonexistent/cert.pem"
            client_ca = "/nonexistent/ca.pem"
            [admin]
            listen = "0.0.0.0:9090"
            "#,
        );
        let find = |k: &str| p.iter().find(|x| x.key == k).map(|x| x.reason.clone()).unwrap_or_default();
        assert!(find("admin.listen").contains("not a loopback address"), "{p:?}");
        assert!(find("hsm.module").contains("/nonexistent/module.so"), "{p:?}");
        assert!(find("hsm.pin_file").contains("/nonexistent/pin"), "{p:?}");
        assert!(find("his.listen").contains("port 0"), "{p:?}");
        assert!(find("his.certificate").contains("/nonexistent/cert.pem"), "{p:?}");
        assert!(find("gateway.hospital_id").contains("1 to 64 characters"), "{p:?}");
        assert!(find("gateway.state_directory").contains("absolute"), "{p:?}");
        assert!(find("his.crl").contains("dangerous"), "{p:?}");
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let p = problems("[gateway]\nhospital_id = \n");
        assert!(p[0].key.starts_with("line "), "{p:?}");
    }

    #[test]
    fn display_lists_file_key_and_reason() {
        let e = ConfigError { file: "/etc/m.toml".into(), problems: vec![Problem { key: "a.b".into(), reason: "bad".into() }] };
        assert_eq!(e.to_string(), "/etc/m.toml: 1 problem\n  /etc/m.toml: a.b: bad\n");
    }
}
