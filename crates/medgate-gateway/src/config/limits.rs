//! `[limits]`: how much of the HIS listener one client certificate may take, and the HTTP limits
//! every connection has. Every key has a default; the table may be left out.
//!
//! Boundary: the keys, their defaults and their checks; enforcement is
//! [`crate::server::limits`].

use std::time::Duration;

use serde::Deserialize;

use super::{Kind, Problem};

pub(super) const KEYS: &[(&str, Kind, bool)] = &[
    ("header_timeout_seconds", Kind::Int, false),
    ("max_connections", Kind::Int, false),
    ("max_connections_per_client", Kind::Int, false),
    ("max_requests_in_flight_per_client", Kind::Int, false),
    ("max_submissions_preparing", Kind::Int, false),
    ("requests_per_second_per_client", Kind::Int, false),
    ("burst_per_client", Kind::Int, false),
    ("http2_max_concurrent_streams", Kind::Int, false),
    ("max_header_list_bytes", Kind::Int, false),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Seconds a client has to send a request's headers (HTTP/1.1), and to finish its TLS
    /// handshake. The body has `his.request_timeout_seconds`.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// Open HIS connections at once, all clients together.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Open connections at once per client certificate.
    #[serde(default = "default_per_client_connections")]
    pub max_connections_per_client: u32,
    /// Requests being processed at once per client certificate.
    #[serde(default = "default_in_flight")]
    pub max_requests_in_flight_per_client: u32,
    /// Submissions (ITI-65, `POST /DocumentReference`) parsed, checked and sealed at once, all
    /// clients together; the others wait with their bodies read, the HIS systems (certificate
    /// CN) taking turns. Reads, searches and the rest never wait for it, so they are not queued
    /// behind a bulk load.
    #[serde(default = "default_submissions_preparing")]
    pub max_submissions_preparing: u32,
    /// Sustained request rate per client certificate (token bucket refill).
    #[serde(default = "default_rate")]
    pub requests_per_second_per_client: u32,
    /// Requests a client certificate may send at once above the rate (token bucket size).
    #[serde(default = "default_burst")]
    pub burst_per_client: u32,
    /// HTTP/2 streams a client may have open at once on one connection.
    #[serde(default = "default_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Largest request header block, in bytes (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE; the HTTP/1.1
    /// read buffer for headers).
    #[serde(default = "default_header_list")]
    pub max_header_list_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout_seconds: default_header_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_per_client_connections(),
            max_requests_in_flight_per_client: default_in_flight(),
            max_submissions_preparing: default_submissions_preparing(),
            requests_per_second_per_client: default_rate(),
            burst_per_client: default_burst(),
            http2_max_concurrent_streams: default_streams(),
            max_header_list_bytes: default_header_list(),
        }
    }
}

fn default_header_timeout() -> u64 {
    10
}
fn default_max_connections() -> u32 {
    4096
}
fn default_per_client_connections() -> u32 {
    64
}
fn default_in_flight() -> u32 {
    128
}
/// Six per CPU core: enough to keep every core busy while some of them wait for the HSM or the
/// blocking pool and to fill the group commit's groups, few enough that a read is not queued
/// behind a bulk load (tests/benches/README.md has the runs that chose it).
fn default_submissions_preparing() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(6)).unwrap_or(u32::MAX).clamp(6, 1024)
}
fn default_rate() -> u32 {
    200
}
fn default_burst() -> u32 {
    400
}
fn default_streams() -> u32 {
    64
}
fn default_header_list() -> u32 {
    32 * 1024
}

impl Limits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_seconds)
    }

    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut range = |key: &str, v: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&v) {
                p.push(Problem { key: format!("limits.{key}"), reason: format!("must be between {lo} and {hi}") });
            }
        };
        range("header_timeout_seconds", self.header_timeout_seconds, 1, 3600);
        range("max_connections", self.max_connections.into(), 1, 1_000_000);
        range("max_connections_per_client", self.max_connections_per_client.into(), 1, 1_000_000);
        range("max_requests_in_flight_per_client", self.max_requests_in_flight_per_client.into(), 1, 1_000_000);
        range("max_submissions_preparing", self.max_submissions_preparing.into(), 1, 100_000);
        range("requests_per_second_per_client", self.requests_per_second_per_client.into(), 1, 1_000_000);
        range("burst_per_client", self.burst_per_client.into(), 1, 1_000_000);
        range("http2_max_concurrent_streams", self.http2_max_concurrent_streams.into(), 1, 10_000);
        range("max_header_list_bytes", self.max_header_list_bytes.into(), 8192, 1 << 20);
        if self.max_connections_per_client > self.max_connections {
            p.push(Problem { key: "limits.max_connections_per_client".into(), reason: "must not exceed limits.max_connections".into() });
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_bad_values_name_their_key() {
        assert!(Limits::default().problems().is_empty());
        let l: Limits = toml::from_str("max_header_list_bytes = 100\nmax_connections = 2\nmax_connections_per_client = 3\nburst_per_client = 0\nmax_submissions_preparing = 0").unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<String> = l.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            vec!["limits.max_submissions_preparing", "limits.burst_per_client", "limits.max_header_list_bytes", "limits.max_connections_per_client"]
        );
    }

    #[test]
    fn submissions_are_prepared_six_per_core_by_default() {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get) as u32;
        assert_eq!(Limits::default().max_submissions_preparing, (cores * 6).clamp(6, 1024));
        let l: Limits = toml::from_str("max_submissions_preparing = 3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.max_submissions_preparing, 3);
    }
}
