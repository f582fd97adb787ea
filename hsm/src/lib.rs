//! medgate's HSM boundary. This is the only crate in the workspace that talks PKCS#11 (through
//! `cryptoki`, and through `cryptoki-sys` for the few calls cryptoki cannot make); the gateway
//! sees typed operations and typed errors, never object handles, sessions or key bytes of
//! long-lived keys.
//!
//! * [`Hsm`] loads any PKCS#11 module by path, logs in once per process, keeps a bounded pool of
//!   sessions and caches key handles. When the module reports that the device or the session went
//!   away, the pool re-initialises and retries the operation once; while the HSM stays down every
//!   call fails with [`HsmError::Unavailable`].
//! * [`profile`] decides, once per connection, how the token holds each key role (which
//!   mechanisms, which template attributes) from what the module offers; [`probe`] reports it
//!   (`medgate keys probe`) and readiness ([`Hsm::ping`]) follows it.
//! * [`keys`] fixes the key roles, their versioned labels and their full attribute templates.
//! * [`admin`] holds the security officer's operations (generate, rotate, retire, destroy, list,
//!   certificate import, token initialisation, PIN changes).
//! * [`backup`] wraps the keys under a backup key for disaster recovery and restores them into a
//!   fresh token; [`card`] is an officer's credential on a smart card (sign, ECDH).
//! * [`tls::HsmSigningKey`] is a rustls `SigningKey` whose private half stays in the HSM.
//! * Transport keys carry data keys between two hospitals' HSMs under AES-GCM, made once per
//!   peer and wrapped under its RSA sharing key ([`Hsm::share_with_peer`], [`Hsm::open_from_peer`]).
//! * [`ceiling`] measures the token's raw rates of the hot-path calls, for the benchmark.

pub mod admin;
pub mod backup;
pub mod card;
pub mod ceiling;
mod der;
mod error;
mod held;
pub mod keys;
mod ops;
mod pin;
mod pool;
pub mod probe;
pub mod profile;
mod raw;
mod role;
pub mod tls;
mod transport;

pub use der::{ecdsa_der_to_raw, ecdsa_raw_to_der, p256_spki_der, p256_spki_point, rsa_spki_checked, rsa_spki_parts, KeyFormatError, RSA_MIN_BITS};
pub use error::HsmError;
pub use keys::{KeyInfo, Role};
pub use ops::{Signature, WrappedKey};
pub use pin::{Pin, PinError, CREDENTIAL_NAME};
pub use pool::{Hsm, HsmConfig, HsmOptions, HsmStats};
pub use probe::{probe, ProbeReport};
pub use profile::RoleStatus;
pub use transport::{PeerWrap, TransportLimits};
