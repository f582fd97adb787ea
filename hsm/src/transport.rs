//! Transport keys: an AES-256 key per pair of hospitals that carries data keys from the
//! custodian's HSM to the requester's, so that a cross-hospital read costs an AES-GCM seal and
//! open instead of an RSA-3072 private-key operation (about 2.8 ms on SoftHSM2).
//!
//! The custodian makes one transport key for each requester (C_GenerateKey, a session object of
//! its HSM), wraps it once under the requester's RSA sharing key (RSA-OAEP, as single data keys
//! were) and then sets it non-extractable. It sends that RSA blob with every grant, and seals
//! each data key under the transport key with AES-GCM, the AAD binding the record and both
//! hospitals (`context`, given by the caller). The requester unwraps the blob once into a session
//! object of its own HSM (sensitive, never extractable, decrypt only) and keeps it by the blob's
//! SHA-256; every later grant that carries the same blob costs it one C_Decrypt.
//!
//! Neither copy ever leaves its HSM again. Both are session objects: they go with the connection
//! to the module (a restart, a recovered HSM) and are made or unwrapped again on the next read.
//! The custodian makes a new one every hour or after 2^20 data keys, whichever comes first,
//! and when the requester's sharing key changes; the requester forgets a transport key it has
//! not been sent for two hours, and keeps at most a few from any one custodian
//! ([`TransportLimits`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{CKM_AES_GCM, CKM_AES_KEY_GEN, CKM_RSA_PKCS_OAEP};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::HsmError;
use crate::keys::Role;
use crate::ops::{gcm_frame, gcm_seal_framed, oaep, require, rewrap_rsa, session_aes_template, take_value, unwrap_with_kek, wrap_for_peer_key, Unwrapped, WrappedKey};
use crate::profile::KekScheme;
use crate::held::{Cache, Made, Received};
use crate::pool::{Ctx, Fail, Hsm, Op, TRANSPORT_MAKE, TRANSPORT_RECEIVE};

/// How long transport keys live and how many are kept. The defaults are a site's; a test
/// shortens them to reach each limit without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// How long the custodian uses one transport key (default one hour).
    pub max_age: Duration,
    /// How many data keys the custodian seals under one transport key (default 2^20; random
    /// 96-bit IVs: far below the 2^32 seals per key that AES-GCM allows).
    pub max_uses: u64,
    /// How long the requester keeps a transport key no grant has carried (default two hours).
    pub idle: Duration,
    /// How many transport keys the requester keeps at once, over all custodians (default 256).
    pub received_max: usize,
    /// How many of those may come from one custodian (default 4: a custodian sends one key
    /// for this hospital at a time, and a new one each hour, after a restart or a new
    /// connection to its HSM), so that a custodian that sent a new key with every grant would
    /// push out only its own.
    pub received_per_peer: usize,
    /// How often unused transport keys are looked for and destroyed (default once a minute).
    pub sweep_every: Duration,
}

impl Default for TransportLimits {
    fn default() -> TransportLimits {
        TransportLimits {
            max_age: Duration::from_secs(3600),
            max_uses: 1 << 20,
            idle: Duration::from_secs(2 * 3600),
            received_max: 256,
            received_per_peer: 4,
            sweep_every: Duration::from_secs(60),
        }
    }
}

/// The sealed data key's format byte: `0x02 || IV (12 bytes) || ciphertext || tag (16 bytes)`
/// (the framing of the KEK's AES-GCM blobs, `crate::ops::gcm_seal_framed`).
const FORMAT: u8 = 0x02;
const DOMAIN: &[u8] = b"medgate transport/data key/aes-256-gcm/v1";

/// A data key on its way to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerWrap {
    /// RSA-OAEP (SHA-1, MGF1-SHA1) of the transport key under the peer's sharing key; `None`
    /// when the data key itself is wrapped for the sharing key.
    pub transport: Option<Vec<u8>>,
    /// With a transport key, `0x02 || IV || AES-256-GCM(data key) || tag`; without, the data
    /// key RSA-OAEP wrapped for the peer's sharing key (as [`Hsm::rewrap_for_peer`] makes it).
    pub key: Vec<u8>,
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn aad(context: &[u8]) -> Vec<u8> {
    let mut aad = DOMAIN.to_vec();
    aad.extend_from_slice(&(context.len() as u64).to_be_bytes());
    aad.extend_from_slice(context);
    aad
}

/// The custodian's transport key: sensitive, encrypt only, 32 bytes; extractable until it is
/// wrapped once for the peer. Limited to AES-GCM where the module keeps CKA_ALLOWED_MECHANISMS
/// (`limited`, from the module's profile).
fn made_template(limited: bool) -> Vec<Attribute> {
    let mut t = session_aes_template(true, true, true, false);
    t.push(Attribute::ValueLen(32.into()));
    limit_to_gcm(&mut t, limited);
    t
}

/// The requester's copy: sensitive, never extractable, decrypt only, limited to AES-GCM as the
/// custodian's is; 32 bytes long where the module lets the template say so (`with_len`;
/// SoftHSM2 refuses CKA_VALUE_LEN on unwrap).
fn received_template(with_len: bool, limited: bool) -> Vec<Attribute> {
    let mut t = session_aes_template(true, false, false, true);
    if with_len {
        t.push(Attribute::ValueLen(32.into()));
    }
    limit_to_gcm(&mut t, limited);
    t
}

/// The one mechanism a transport key is used with.
const TRANSPORT_MECHANISMS: [MechanismType; 1] = [MechanismType::AES_GCM];

fn limit_to_gcm(t: &mut Vec<Attribute>, limited: bool) {
    if limited {
        t.push(Attribute::AllowedMechanisms(TRANSPORT_MECHANISMS.to_vec()));
    }
}

/// Makes a transport key for a peer and its RSA blob: C_GenerateKey, C_CreateObject (the peer's
/// public key), C_WrapKey x2 (cryptoki asks for the length), C_DestroyObject,
/// C_SetAttributeValue (CKA_EXTRACTABLE to false).
fn make(hsm: &Hsm, s: &Session, ctx: &Ctx, modulus: &[u8], exponent: &[u8]) -> Result<(ObjectHandle, Vec<u8>), Fail> {
    hsm.add_calls(6);
    let key = s.generate_key(&Mechanism::AesKeyGen, &made_template(ctx.profile.template.allowed_mechanisms.usable())).map_err(Fail::with(Role::Sharing, "make a transport key", CKM_AES_KEY_GEN))?;
    let blob = match wrap_for_peer_key(s, modulus, exponent, key, "wrap a transport key for a peer") {
        Ok(b) => b,
        Err(e) => {
            let _ = s.destroy_object(key);
            return Err(e);
        }
    };
    // Wrapped once for the peer; from now on it cannot leave this HSM. A module that will not
    // change the flag keeps a key that only this process's sessions can reach, for an hour.
    if let Err(e) = s.update_attributes(key, &[Attribute::Extractable(false)]) {
        tracing::warn!(error = %e, "the module refused to make the transport key non-extractable; it stays a session object of this process");
    }
    Ok((key, blob))
}

impl Cache {
    /// The custodian's transport key for the peer whose sharing key is `peer`: the current one,
    /// or a new one when there is none, or it has reached [`TransportLimits::max_age`] or
    /// [`TransportLimits::max_uses`].
    fn outbound(&self, hsm: &Hsm, s: &Session, ctx: &Ctx, modulus: &[u8], exponent: &[u8]) -> Result<(ObjectHandle, Vec<u8>), Fail> {
        let limits = hsm.transport_limits();
        self.sweep(hsm, s, &limits);
        let peer = digest(&[modulus, exponent]);
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = made.get_mut(&peer) {
            if m.created.elapsed() < limits.max_age && m.uses < limits.max_uses {
                m.uses += 1;
                return Ok((m.key, m.blob.clone()));
            }
        }
        let (key, blob) = make(hsm, s, ctx, modulus, exponent)?;
        hsm.note_transport_key(true);
        let previous = made.get(&peer).map(|m| m.key);
        let gone = made.insert(peer, Made { key, blob: blob.clone(), created: Instant::now(), uses: 1, previous }).and_then(|m| m.previous);
        drop(made);
        destroy(hsm, s, gone);
        Ok((key, blob))
    }

    /// Destroys, at most once per [`TransportLimits::sweep_every`], the keys no longer used:
    /// the custodian's made for a sharing key the peer has since replaced (twice the
    /// `max_age` old: a key in use is replaced at `max_age`), and the requester's not sent
    /// for [`TransportLimits::idle`].
    fn sweep(&self, hsm: &Hsm, s: &Session, limits: &TransportLimits) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.is_some_and(|t| t.elapsed() < limits.sweep_every) {
                return;
            }
            *swept = Some(Instant::now());
        }
        let mut gone = Vec::new();
        self.made.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, m| {
            let keep = m.created.elapsed() < limits.max_age.saturating_mul(2);
            if !keep {
                gone.extend([Some(m.key), m.previous].into_iter().flatten());
            }
            keep
        });
        self.received.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, r| {
            let keep = r.last_used.elapsed() < limits.idle;
            if !keep {
                gone.push(r.key);
            }
            keep
        });
        destroy(hsm, s, gone);
    }

    /// Forgets the custodian's transport key `key` (its handle proved invalid).
    fn forget_made(&self, key: ObjectHandle) {
        self.made.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, m| m.key != key);
    }

    /// The requester's copy of the transport key `blob` brought from the custodian `peer`:
    /// kept, or unwrapped now with the active sharing key (C_UnwrapKey, RSA-OAEP).
    fn inbound(&self, hsm: &Hsm, s: &Session, ctx: &Ctx, peer: &str, blob: &[u8]) -> Result<ObjectHandle, Fail> {
        let limits = hsm.transport_limits();
        self.sweep(hsm, s, &limits);
        let id = digest(&[blob]);
        if let Some(r) = self.received.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            r.last_used = Instant::now();
            return Ok(r.key);
        }
        let (_, sharing) = ctx.key(hsm, s, Role::Sharing, None, ObjectClass::PRIVATE_KEY)?;
        let unwrap = |with_len: bool| {
            hsm.add_calls(1);
            s.unwrap_key(&oaep(), sharing, blob, &received_template(with_len, ctx.profile.template.allowed_mechanisms.usable()))
        };
        let template_refused = |e: &cryptoki::error::Error| {
            matches!(
                e,
                cryptoki::error::Error::Pkcs11(
                    RvError::AttributeReadOnly | RvError::AttributeTypeInvalid | RvError::AttributeValueInvalid | RvError::TemplateIncomplete | RvError::TemplateInconsistent,
                    _
                )
            )
        };
        let with_len = !self.no_value_len.load(Ordering::Relaxed);
        let mut unwrapped = unwrap(with_len);
        if with_len && unwrapped.as_ref().is_err_and(template_refused) {
            self.no_value_len.store(true, Ordering::Relaxed);
            unwrapped = unwrap(false);
        }
        let key = unwrapped.map_err(|e| match e {
            cryptoki::error::Error::Pkcs11(RvError::GeneralError | RvError::EncryptedDataInvalid | RvError::WrappedKeyInvalid | RvError::WrappedKeyLenRange | RvError::KeySizeRange, _) => Fail::Hsm(HsmError::Integrity),
            e if template_refused(&e) => {
                // This module will not hold a received transport key as medgate asks: stop
                // offering, so that custodians wrap each data key for the sharing key again.
                hsm.withdraw_transport_ability(TRANSPORT_RECEIVE);
                tracing::warn!(error = %e, "the module refused the template of a received transport key; data keys will come wrapped for the sharing key");
                Fail::with(Role::Sharing, "unwrap", CKM_RSA_PKCS_OAEP)(e)
            }
            other => Fail::with(Role::Sharing, "unwrap", CKM_RSA_PKCS_OAEP)(other),
        })?;
        if self.no_value_len.load(Ordering::Relaxed) {
            // Only an AES-256 key is a transport key. Where the template could not say so, a
            // length the module reports otherwise is refused and not kept (SoftHSM2 reports 0:
            // a shorter AES key then fails the seal's tag, a longer one C_DecryptInit).
            hsm.add_calls(1);
            let len = s.get_attributes(key, &[AttributeType::ValueLen]).map(|a| {
                a.into_iter().find_map(|a| match a {
                    Attribute::ValueLen(n) => Some(u64::from(n)),
                    _ => None,
                })
            });
            if !matches!(len, Ok(None | Some(0 | 32))) {
                destroy(hsm, s, Some(key));
                return Err(match len {
                    Ok(_) => HsmError::Integrity.into(),
                    Err(e) => e.into(),
                });
            }
        }
        hsm.note_transport_key(false);
        let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = received.get_mut(&id) {
            // Another read unwrapped the same blob meanwhile: keep one copy.
            r.last_used = Instant::now();
            let kept = r.key;
            drop(received);
            destroy(hsm, s, Some(key));
            return Ok(kept);
        }
        // Room for it: first among the keys of the same custodian, so that one that sends a new
        // key with every grant pushes out only its own; then among all.
        let from = digest(&[peer.as_bytes()]);
        let mut gone = Vec::new();
        let oldest = |received: &HashMap<[u8; 32], Received>, same: bool| {
            received.iter().filter(|(_, r)| !same || r.from == from).min_by_key(|(_, r)| r.last_used).map(|(k, _)| *k)
        };
        for (same, max) in [(true, limits.received_per_peer), (false, limits.received_max)] {
            while received.values().filter(|r| !same || r.from == from).count() >= max.max(1) {
                let Some(k) = oldest(&received, same) else { break };
                gone.extend(received.remove(&k).map(|r| r.key));
            }
        }
        received.insert(id, Received { key, from, last_used: Instant::now() });
        drop(received);
        destroy(hsm, s, gone);
        Ok(key)
    }

    /// Forgets the requester's transport key `key` (its handle proved invalid).
    fn forget_received(&self, key: ObjectHandle) {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, r| r.key != key);
    }
}

/// Destroys session objects no longer used (C_DestroyObject each; a failure leaves an object
/// that goes with the connection).
fn destroy(hsm: &Hsm, s: &Session, keys: impl IntoIterator<Item = ObjectHandle>) {
    for k in keys {
        hsm.add_calls(1);
        if let Err(e) = s.destroy_object(k) {
            tracing::debug!(error = %e, "a transport key could not be destroyed; it goes with the connection");
        }
    }
}

/// A cached handle that the module no longer knows (the session that made it is gone).
fn is_stale(e: &Fail) -> bool {
    matches!(e, Fail::P11(cryptoki::error::Error::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _), _))
}

impl Hsm {
    /// Whether this HSM can make transport keys and seal data keys for peers under them (AES
    /// key generation, AES-GCM, the KEK and sharing roles). Where it cannot, data keys travel
    /// under the peer's RSA sharing key one by one ([`Hsm::rewrap_for_peer`]). Takes no lock and
    /// makes no PKCS#11 call; false while the HSM is not connected.
    pub fn makes_transport_keys(&self) -> bool {
        self.transport_ability(TRANSPORT_MAKE)
    }

    /// Whether this HSM can open data keys a peer sealed under a transport key (AES-GCM and a
    /// sharing key), so that a read may offer it ([`Hsm::open_from_peer`]); false while the HSM
    /// is not connected, and once the module refused a received transport key's template.
    pub fn receives_transport_keys(&self) -> bool {
        self.transport_ability(TRANSPORT_RECEIVE)
    }

    /// A record's data key for a peer: sealed under this hospital's transport key for it (made,
    /// and wrapped for `peer_modulus`/`peer_exponent`, when there is none), the data key passing
    /// through process memory in a zeroizing buffer on its way from the KEK to the seal.
    /// `context` is bound into the seal (the record and both hospitals); the peer gives the same
    /// to open it. A data key under an RFC 5649 KEK version (a site whose policy keeps data keys
    /// inside the HSM, [`crate::HsmOptions::kek_rfc5649`]) is re-wrapped for the peer's sharing
    /// key instead, as [`Hsm::rewrap_for_peer`] does, and never leaves the HSM in the clear.
    pub fn share_with_peer(&self, wrapped: &WrappedKey, peer_modulus: &[u8], peer_exponent: &[u8], context: &[u8]) -> Result<PeerWrap, HsmError> {
        self.run(Op::Wrap, 0, true, |s, ctx| {
            require(self, ctx, Role::Kek)?;
            require(self, ctx, Role::Sharing)?;
            let (_, kek) = ctx.key(self, s, Role::Kek, Some(wrapped.kek_version), ObjectClass::SECRET_KEY)?;
            if matches!(ctx.kek_scheme(s, kek, wrapped.kek_version)?, KekScheme::Rfc5649 { .. }) {
                return Ok(PeerWrap { transport: None, key: rewrap_rsa(self, s, ctx, wrapped, peer_modulus, peer_exponent)? });
            }
            let (key, transport) = ctx.transport.outbound(self, s, ctx, peer_modulus, peer_exponent)?;
            let value = match unwrap_with_kek(self, s, ctx, wrapped, false)? {
                Unwrapped::Object(obj) => take_value(self, s, obj)?,
                Unwrapped::Value(v) => v,
            };
            // C_EncryptInit + C_Encrypt
            self.add_calls(2);
            match gcm_seal_framed(ctx, s, key, FORMAT, &aad(context), &value, Fail::with(Role::Sharing, "seal for a peer", CKM_AES_GCM)) {
                Ok(sealed) => Ok(PeerWrap { transport: Some(transport), key: sealed }),
                Err(e) => {
                    if is_stale(&e) {
                        ctx.transport.forget_made(key);
                    }
                    Err(e)
                }
            }
        })
    }

    /// Opens a data key the custodian `peer` sealed with [`Hsm::share_with_peer`]: the transport
    /// key from `transport` (unwrapped with this hospital's sharing key the first time it comes,
    /// and kept within [`TransportLimits`], counted per custodian), then
    /// C_DecryptInit + C_Decrypt. A blob or seal that was altered, or a `context` other than the
    /// custodian's, is an integrity error.
    pub fn open_from_peer(&self, peer: &str, transport: &[u8], sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let Some((iv, ciphertext)) = gcm_frame(FORMAT, sealed) else {
            return Err(HsmError::Integrity);
        };
        self.run(Op::Unwrap, 2, true, |s, ctx| {
            require(self, ctx, Role::Sharing)?;
            let key = ctx.transport.inbound(self, s, ctx, peer, transport)?;
            match ctx.raw.aes_gcm(s.handle(), key.handle(), false, iv, &aad(context), ciphertext) {
                Ok(v) => Ok(Zeroizing::new(v)),
                // SoftHSM reports a failed tag check as a general error.
                Err(cryptoki::error::Error::Pkcs11(RvError::GeneralError | RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _)) => Err(HsmError::Integrity.into()),
                // A transport key no AES-GCM takes: the custodian's blob was not one.
                Err(cryptoki::error::Error::Pkcs11(RvError::KeySizeRange | RvError::KeyTypeInconsistent, _)) => {
                    ctx.transport.forget_received(key);
                    destroy(self, s, Some(key));
                    Err(HsmError::Integrity.into())
                }
                Err(e) => {
                    // As an unwrap: a module's CKR_DEVICE_ERROR or CKR_FUNCTION_FAILED may be a
                    // failed tag check (HsmError::UnwrapFailed, an integrity error).
                    let e = Fail::with(Role::Sharing, "unwrap", CKM_AES_GCM)(e);
                    if is_stale(&e) {
                        ctx.transport.forget_received(key);
                    }
                    Err(e)
                }
            }
        })
    }

    /// Whether every transport key this HSM holds, made for peers or received from them, is
    /// sensitive, no longer extractable and, where the module keeps CKA_ALLOWED_MECHANISMS,
    /// usable with AES-GCM alone, as read from the module; false while it holds none.
    pub fn transport_keys_locked(&self) -> Result<bool, HsmError> {
        self.run(Op::Admin, 0, true, |s, ctx| {
            let mut keys: Vec<ObjectHandle> = ctx.transport.made.lock().unwrap_or_else(|p| p.into_inner()).values().map(|m| m.key).collect();
            keys.extend(ctx.transport.received.lock().unwrap_or_else(|p| p.into_inner()).values().map(|r| r.key));
            let limited = ctx.profile.template.allowed_mechanisms.usable();
            let mut locked = !keys.is_empty();
            for k in keys {
                self.add_calls(1);
                let attrs = s.get_attributes(k, &[AttributeType::Sensitive, AttributeType::Extractable])?;
                locked &= attrs.contains(&Attribute::Sensitive(true)) && attrs.contains(&Attribute::Extractable(false));
                if limited {
                    self.add_calls(1);
                    let allowed = ctx.raw.allowed_mechanisms(s.handle(), k.handle())?;
                    locked &= allowed.as_deref() == Some(&[CKM_AES_GCM][..]);
                }
            }
            Ok(locked)
        })
    }
}
