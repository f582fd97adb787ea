//! medgate, the hospital gateway's command: `medgate serve | reload | config | doctor | keys |
//! pki | ledger | consortium | audit | demo | bench`. The service itself is the `medgate-gateway` crate; this crate runs
//! it as a daemon, holds the officer's console, the operators' commands, the demo and the load
//! generator, and is the only place that maps failures to exit codes (see [`exit`]).
//! `main.rs` only calls [`cli::main`]; everything else is here, testable in-process.

pub mod account;
pub mod admin_client;
pub mod audit;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cpu;
pub mod daemon;
pub mod demo;
mod doctor;
pub mod exit;
pub mod harden;
pub mod keys;
pub mod logging;
pub mod officers;
