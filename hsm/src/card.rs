//! An officer's credential on a smart card: any PKCS#11 token that holds the officer's P-256 key
//! pair, found by its CKA_ID. The card signs the officer's approvals (CKM_ECDSA over a SHA-256
//! digest made in process) and opens the officer's share of the backup key (CKM_ECDH1_DERIVE
//! with the share's ephemeral public key). The private key never leaves the card; the derived
//! ECDH secret is read into a zeroizing buffer, as it would be from a key file.
//!
//! A card is a different token from medgate's, often in a different module: it is opened on its
//! own ([`Card::open`]) and logged out when dropped. Card PINs are read from a file (or a
//! systemd credential), never from the command line, like the HSM's.

use std::path::{Path, PathBuf};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use zeroize::Zeroizing;

use crate::der::{p256_spki_der, unwrap_ec_point};
use crate::error::{map_op_error, HsmError};
use crate::pin::Pin;
use crate::pool::{find_token, load_module, ModuleHold};

/// An open, logged-in session on an officer's card, with their key pair found.
///
/// Thread ownership: one `Card` belongs to the console thread that opened it (`Session` is
/// `Send` but not `Sync`).
#[derive(Debug)]
pub struct Card {
    module: PathBuf,
    token: String,
    session: Session,
    private: ObjectHandle,
    public_der: Vec<u8>,
    // Last: the module stays initialised until the session above is closed.
    _pkcs11: Pkcs11,
    _hold: ModuleHold,
}

impl Card {
    /// Opens the card: the token labelled `token` in `module`, logged in with `pin`, and the P-256
    /// key pair whose CKA_ID is `key_id` (private and public halves).
    pub fn open(module: &Path, token: &str, key_id: &[u8], pin: &Pin) -> Result<Card, HsmError> {
        let (pkcs11, raw, hold) = load_module(module)?;
        let slot = find_token(&pkcs11, &raw, module, token)?;
        let session = pkcs11.open_rw_session(slot).map_err(|e| map_op_error(e, None))?;
        match session.login(UserType::User, Some(&pin.to_auth())) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(HsmError::Invalid(format!("the card {token:?} rejected the officer's PIN")));
            }
            Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
                return Err(HsmError::Invalid(format!("the officer's PIN of card {token:?} is locked")));
            }
            Err(e) => return Err(map_op_error(e, None)),
        }
        let find = |class: ObjectClass| -> Result<ObjectHandle, HsmError> {
            session
                .find_objects(&[Attribute::Class(class), Attribute::Id(key_id.to_vec())])
                .map_err(|e| map_op_error(e, None))?
                .into_iter()
                .next()
                .ok_or_else(|| HsmError::Invalid(format!("no {} with CKA_ID {} on card {token:?}", class_name(class), hex::encode(key_id))))
        };
        let private = find(ObjectClass::PRIVATE_KEY)?;
        let public = find(ObjectClass::PUBLIC_KEY)?;
        let point = session
            .get_attributes(public, &[AttributeType::EcPoint])
            .map_err(|e| map_op_error(e, None))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => unwrap_ec_point(&p),
                _ => None,
            })
            .ok_or_else(|| HsmError::Invalid(format!("the key {} on card {token:?} is not an EC key", hex::encode(key_id))))?;
        let public_der = p256_spki_der(&point)
            .ok_or_else(|| HsmError::Invalid(format!("the key {} on card {token:?} is not a P-256 key", hex::encode(key_id))))?;
        Ok(Card { module: module.to_path_buf(), token: token.to_owned(), session, private, public_der, _pkcs11: pkcs11, _hold: hold })
    }

    /// The officer's public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// Signs a SHA-256 digest with CKM_ECDSA; the raw `r || s` (64 bytes).
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, HsmError> {
        let sig = self.session.sign(&Mechanism::Ecdsa, self.private, digest).map_err(|e| self.error("CKM_ECDSA signature", e))?;
        if sig.len() != 64 {
            return Err(HsmError::Device(format!("card {:?} returned a {}-byte ECDSA signature, not 64", self.token, sig.len())));
        }
        Ok(sig)
    }

    /// The ECDH shared secret (the x coordinate, 32 bytes) of the officer's key and the peer's
    /// uncompressed P-256 point, through CKM_ECDH1_DERIVE without a KDF. The card's key must
    /// allow derivation (CKA_DERIVE).
    pub fn ecdh(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let params = Ecdh1DeriveParams::new(EcKdf::null(), peer_point);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let secret = self
            .session
            .derive_key(&Mechanism::Ecdh1Derive(params), self.private, &template)
            .map_err(|e| self.error("CKM_ECDH1_DERIVE (the card key needs CKA_DERIVE)", e))?;
        let value = self.session.get_attributes(secret, &[AttributeType::Value]).map_err(|e| self.error("reading the derived secret", e));
        let _ = self.session.destroy_object(secret);
        let value = value?.into_iter().find_map(|a| match a {
            Attribute::Value(v) => Some(Zeroizing::new(v)),
            _ => None,
        });
        value.ok_or_else(|| HsmError::Device(format!("card {:?} gave no derived secret", self.token)))
    }

    fn error(&self, what: &str, e: P11Error) -> HsmError {
        HsmError::Device(format!("officer card {:?} in {}: {what}: {e}", self.token, self.module.display()))
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        let _ = self.session.logout();
    }
}

fn class_name(class: ObjectClass) -> &'static str {
    if class == ObjectClass::PRIVATE_KEY {
        "private key"
    } else {
        "public key"
    }
}
