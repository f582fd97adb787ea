//! medgate, the hospital gateway: FHIR over mutual TLS towards the hospital's HIS, records
//! encrypted under HSM keys in a local vault, every access anchored on an HSM-signed ledger.
//! `main.rs` only parses the command line; everything else is here, testable in-process.

pub mod cli;
pub mod config;
pub mod keys;
pub mod logging;
pub mod pki;
pub mod tls;
pub mod metrics;
pub mod gateway;
pub mod api;
pub mod server;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod verify;
pub mod bench;
pub mod peer;
pub mod audit;
pub mod shred;
