//! `[consortium]`: the etcd ordering service, the genesis, this gateway's peer listener and the
//! break-glass roles. Required when `ledger.mode = "consortium"`.
//!
//! Boundary: the keys and their checks; the link itself is `medgate_store::order::link`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{check_readable_file, Problem};

/// The consortium ledger: the etcd ordering service, the genesis, this gateway's peer listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consortium {
    /// etcd client endpoints, `IP:port` (TLS).
    pub etcd_endpoints: Vec<String>,
    /// PEM CA certificate(s) of the consortium CA: etcd servers and peer gateways must chain to it.
    pub ca: PathBuf,
    /// PEM chain issued by the consortium CA for this gateway's HSM `tls` key (the etcd client
    /// certificate; its CN is the etcd user).
    pub certificate: PathBuf,
    /// etcd key prefix of this consortium's ledger.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The genesis document (`medgate consortium genesis`): the consortium's founding members
    /// and their keys. Every member is configured with the same file; later members are admitted
    /// by membership entries on the ledger.
    pub genesis: PathBuf,
    /// Where other gateways fetch this hospital's records (mutual TLS, consortium CA), `IP:port`.
    /// Without it, this gateway shares nothing.
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// Roles of the end user allowed to read another hospital's record without consent, with
    /// purpose of use BTG (break-glass); such reads are recorded as break-glass for review.
    #[serde(default)]
    pub break_glass_roles: Vec<String>,
}

fn default_prefix() -> String {
    "/medgate/ledger".into()
}

pub(super) fn validate_consortium(c: &Consortium, p: &mut Vec<Problem>) {
    if c.etcd_endpoints.is_empty() {
        p.push(Problem { key: "consortium.etcd_endpoints".into(), reason: "name at least one etcd endpoint".into() });
    }
    for (i, e) in c.etcd_endpoints.iter().enumerate() {
        if e.parse::<SocketAddr>().is_err() {
            p.push(Problem { key: format!("consortium.etcd_endpoints[{i}]"), reason: "must be IP:port, e.g. \"10.1.2.3:2379\"".into() });
        }
    }
    check_readable_file(&c.ca, "consortium.ca", p);
    check_readable_file(&c.certificate, "consortium.certificate", p);
    if !c.prefix.starts_with('/') || c.prefix.ends_with('/') || c.prefix.len() < 2 {
        p.push(Problem { key: "consortium.prefix".into(), reason: "must start with '/' and not end with one, e.g. \"/medgate/ledger\"".into() });
    }
    // A hospital missing from the genesis is a joining member: it starts, follows the ledger
    // and submits once a membership change admits it, so that is not a configuration error.
    if let Err(e) = medgate_ledger::membership::Genesis::read(&c.genesis) {
        p.push(Problem { key: "consortium.genesis".into(), reason: e });
    }
}
