//! Session objects a connection to the module keeps from one operation to the next: the
//! transport keys made for peers and received from them (`crate::transport`). Their handles are
//! only valid for the connection that made them, so the cache lives in the connection's `Ctx`
//! and goes with it.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

use cryptoki::object::ObjectHandle;

/// A transport key this hospital made for a peer, and its wrapped form for the peer.
#[derive(Debug)]
pub(crate) struct Made {
    pub(crate) key: ObjectHandle,
    pub(crate) blob: Vec<u8>,
    pub(crate) created: Instant,
    pub(crate) uses: u64,
    /// The key this one replaced: still in use by a seal that began before, destroyed at the
    /// next replacement.
    pub(crate) previous: Option<ObjectHandle>,
}

/// A transport key a peer sent, unwrapped in this HSM.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) key: ObjectHandle,
    /// The SHA-256 of the custodian's name.
    pub(crate) from: [u8; 32],
    pub(crate) last_used: Instant,
}

/// The transport keys of one connection to the module (their handles die with it).
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// By the SHA-256 of the peer's sharing key.
    pub(crate) made: Mutex<HashMap<[u8; 32], Made>>,
    /// By the SHA-256 of the RSA blob that brought them.
    pub(crate) received: Mutex<HashMap<[u8; 32], Received>>,
    /// When unused keys were last looked for.
    pub(crate) swept: Mutex<Option<Instant>>,
    /// Set once the module refused CKA_VALUE_LEN in the template of a received key.
    pub(crate) no_value_len: AtomicBool,
}
