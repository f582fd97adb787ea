//! medgate-gateway: the gateway service. FHIR over mutual TLS towards the hospital's HIS
//! ([`api`]), the work on records, consents, sharing, checkpoints and membership ([`gateway`]),
//! the peer gateways ([`peer`]), crypto-shredding ([`shred`]), the IHE ATNA audit export
//! ([`atna`]), and the listeners, background tasks of a running gateway ([`server`]) and its
//! [`reload`], configured by [`config`].
//!
//! Boundary: below are the store (vault, chain, ordering), the ledger format, the FHIR model
//! and the HSM; above is the `medgate` binary, the only place that knows exit codes. Errors are
//! one type, [`GatewayError`], turned into an answer once per listener. Modules depend on each
//! other one way only: `peer` and `shred` reach the gateway through the traits they define
//! ([`peer::PeerService`], [`shred::ShredHost`]).

pub mod api;
pub mod atna;
pub mod clock;
pub mod config;
mod error;
pub mod gateway;
pub mod journal;
pub mod metrics;
pub mod peer;
pub mod pki;
pub mod reload;
pub mod server;
pub mod shred;
pub mod tls;

pub use error::GatewayError;
pub use gateway::Gateway;
