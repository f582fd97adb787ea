//! The token's own rates for medgate's hot-path operations: the ceilings that `medgate bench`
//! prints beside the gateway's figures, measured in the same run so that a busy machine lowers
//! both alike.
//!
//! Boundary: measurement only. Each thread takes one pooled session for the whole measurement
//! and repeats the bare PKCS#11 calls of one operation, exactly as the hot path makes them, with
//! key handles resolved once. The first two wraps use a throwaway AES-256 session key, so nothing
//! on the token changes and a site's KEK scheme does not decide what can be measured; the third
//! wraps with the site's active KEK exactly as a stored record does (a token object: SoftHSM
//! reads the object's file back at every operation's init, which a session key is spared). The
//! signature uses the active ledger key. Wrapping under the KEK changes nothing on the token.

use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{CKM_AES_GCM, CKM_ECDSA};

use crate::error::HsmError;
use crate::keys::Role;
use crate::ops::{data_key_template, kwp_len};
use crate::pool::{Ctx, Fail, Hsm, Op};
use crate::profile::KekScheme;

/// An operation whose raw rate can be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOp {
    /// A 32-byte data key wrapped with RFC 5649 the way medgate does it: C_CreateObject +
    /// C_WrapKey (pre-sized buffer) + C_DestroyObject.
    WrapRfc5649,
    /// A 32-byte data key sealed with AES-256-GCM: C_EncryptInit + C_Encrypt (pre-sized buffer).
    WrapAesGcm,
    /// A 32-byte data key wrapped with the site's active KEK, through the gateway's own wrap
    /// (the KEK's scheme: RFC 5649 or AES-GCM).
    WrapSiteKek,
    /// An ECDSA P-256 signature of a digest with the ledger key: C_SignInit + C_Sign.
    Sign,
}

impl RawOp {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            RawOp::WrapRfc5649 => "wrap RFC 5649 (create + wrap + destroy)",
            RawOp::WrapAesGcm => "wrap AES-GCM (encrypt)",
            RawOp::WrapSiteKek => "wrap with the site's KEK (token object)",
            RawOp::Sign => "sign ECDSA P-256",
        }
    }
}

/// A throwaway AES-256 session key that may wrap and encrypt.
fn scratch_kek(s: &Session) -> Result<ObjectHandle, Fail> {
    Ok(s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
        ],
    )?)
}

/// Repeats `one` for `duration` from its first call, at least once; returns its rate per
/// second. The clock starts after the caller's set-up (a scratch key, handle look-ups), which
/// on a loaded machine can take longer than a short measurement.
fn timed(duration: Duration, mut one: impl FnMut() -> Result<(), Fail>) -> Result<f64, Fail> {
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        one()?;
        n += 1;
        if started.elapsed() >= duration {
            return Ok(n as f64 / started.elapsed().as_secs_f64());
        }
    }
}

/// The rate of `op` on session `s` for `duration` (operations per second).
fn repeat(hsm: &Hsm, s: &Session, ctx: &Ctx, op: RawOp, duration: Duration) -> Result<f64, Fail> {
    let dk = [0x5au8; 32];
    match op {
        RawOp::Sign => {
            let (_, key) = ctx.key(hsm, s, Role::Ledger, None, ObjectClass::PRIVATE_KEY)?;
            timed(duration, || Ok(ctx.raw.sign(s.handle(), CKM_ECDSA, key.handle(), &[7u8; 32], 64).map(drop)?))
        }
        RawOp::WrapRfc5649 => {
            let mechanism = [cryptoki_sys::CKM_AES_KEY_WRAP_PAD, crate::raw::CKM_AES_KEY_WRAP_KWP]
                .into_iter()
                .find(|c| ctx.profile.mechanisms.offers(*c, cryptoki_sys::CKF_WRAP))
                .ok_or_else(|| HsmError::Invalid("the module offers no RFC 5649 key wrap".into()))?;
            let kek = scratch_kek(s)?;
            let result = timed(duration, || {
                let obj = s.create_object(&data_key_template(Some(&dk)))?;
                let wrapped = ctx.raw.wrap_key(s.handle(), mechanism, kek.handle(), obj.handle(), kwp_len(dk.len()));
                s.destroy_object(obj)?;
                wrapped?;
                Ok(())
            });
            let _ = s.destroy_object(kek);
            result
        }
        RawOp::WrapSiteKek => timed(duration, || crate::ops::wrap_once(hsm, s, ctx, &crate::ops::Dk::Value(&dk)).map(drop)),
        RawOp::WrapAesGcm => {
            if !ctx.profile.mechanisms.offers(CKM_AES_GCM, cryptoki_sys::CKF_ENCRYPT) {
                return Err(HsmError::Invalid("the module offers no AES-GCM".into()).into());
            }
            let kek = scratch_kek(s)?;
            let rng = ring::rand::SystemRandom::new();
            let result = timed(duration, || {
                let mut iv = [0u8; 12];
                ring::rand::SecureRandom::fill(&rng, &mut iv).map_err(|_| HsmError::Device("random".into()))?;
                ctx.raw.aes_gcm(s.handle(), kek.handle(), true, &iv, b"medgate bench", &dk)?;
                Ok(())
            });
            let _ = s.destroy_object(kek);
            result
        }
    }
}

impl Hsm {
    /// Operations per second of `op` done raw on `threads` sessions at once for `duration`.
    /// Needs the ledger key for [`RawOp::Sign`] and an active KEK for [`RawOp::WrapSiteKek`]; the
    /// other wraps need nothing but the mechanism.
    /// Each session's clock starts after its own set-up, and each does the operation at least
    /// once; the rate is the sum of the sessions' rates.
    pub fn raw_rate(&self, op: RawOp, threads: usize, duration: Duration) -> Result<f64, HsmError> {
        let rates: Vec<Result<f64, HsmError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(|| self.run(Op::Admin, 0, false, |s, ctx| repeat(self, s, ctx, op, duration)))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(HsmError::Device("a measuring thread panicked".into())))).collect()
        });
        rates.into_iter().sum()
    }

    /// The scheme new data keys are wrapped with here (the active KEK version's), if there is
    /// an active KEK: what the gateway's records cost.
    pub fn active_kek_scheme(&self) -> Result<KekScheme, HsmError> {
        self.run(Op::Admin, 0, true, |s, ctx| {
            let (version, kek) = ctx.key(self, s, Role::Kek, None, ObjectClass::SECRET_KEY)?;
            ctx.kek_scheme(s, kek, version)
        })
    }
}
