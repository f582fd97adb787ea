//! The key roles (DESIGN.md, "Keys"): what each key is for, by name. Nothing here talks to a
//! module.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The role a key plays. See DESIGN.md, "Keys".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// ECDSA P-256: signs ledger batches and checkpoints.
    Ledger,
    /// ECDSA P-256: the gateway's TLS server and client identity.
    Tls,
    /// AES-256, wrap/unwrap only: wraps per-record data keys (AES-KWP).
    Kek,
    /// RSA-3072, OAEP wrap/unwrap only: receives data keys re-wrapped by another hospital.
    Sharing,
    /// HMAC-SHA256 secret: turns patient identifiers into ledger pseudonyms.
    Pseudonym,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Ledger, Role::Tls, Role::Kek, Role::Sharing, Role::Pseudonym];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ledger => "ledger",
            Role::Tls => "tls",
            Role::Kek => "kek",
            Role::Sharing => "sharing",
            Role::Pseudonym => "pseudonym",
        }
    }

    /// What kind of key the role uses, for listings.
    pub fn algorithm(self) -> &'static str {
        match self {
            Role::Ledger | Role::Tls => "ECDSA P-256",
            Role::Kek => "AES-256 (key wrap)",
            Role::Sharing => "RSA-3072 (OAEP)",
            Role::Pseudonym => "HMAC-SHA256",
        }
    }

    /// True for roles that are key pairs.
    pub fn is_pair(self) -> bool {
        matches!(self, Role::Ledger | Role::Tls | Role::Sharing)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown key role {s:?} (expected one of: ledger, tls, kek, sharing, pseudonym)"))
    }
}
