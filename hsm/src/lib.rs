//! medgate's HSM boundary. This is the only crate in the workspace that talks PKCS#11 (through
//! `cryptoki`); the gateway sees typed operations and typed errors, never object handles, sessions
//! or key bytes of long-lived keys.
//!
//! * [`Hsm`] loads any PKCS#11 module by path, logs in once per process, keeps a bounded pool of
//!   sessions and caches key handles. When the module reports that the device or the session went
//!   away, the pool re-initialises and retries the operation once; while the HSM stays down every
//!   call fails with [`HsmError::Unavailable`].
//! * [`keys`] fixes the key roles, their versioned labels and their full attribute templates.
//! * [`admin`] holds the security officer's operations (generate, rotate, retire, destroy, list,
//!   certificate import, token initialisation).
//! * [`tls::HsmSigningKey`] is a rustls `SigningKey` whose private half stays in the HSM.

pub mod admin;
mod der;
mod error;
pub mod keys;
mod ops;
mod pin;
mod pool;
pub mod tls;

pub use der::{ecdsa_raw_to_der, p256_spki_der, rsa_spki_parts};
pub use error::HsmError;
pub use keys::{KeyInfo, Role};
pub use ops::{Signature, WrappedKey};
pub use pin::{Pin, PinError, CREDENTIAL_NAME};
pub use pool::{Hsm, HsmConfig, HsmStats};
