//! Helpers shared by medgate's fuzz targets and the seed generator: the fixed ledger key that
//! signed the seed corpus, and the checks every decoded ledger item must pass.
//!
//! Boundary: test support only. The key here is public (it is in this file); nothing outside
//! `fuzz/` uses it.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The hospital id the seed items are written by.
pub const GATEWAY: &str = "hospital-a";

const PRIVATE: &str = "b7a0acbc4f2d90a5c28a873e48a1f8158a0683e4ef0320db3b684f40cffc3d0f";
const PUBLIC: &str = "04b345b6c36600eb75191e58a3de5b9f6034cd5f63b6c5031810358a6bbf08440daebab8f2bced5d46ba01850263569b7c708537d51293dd0498a077d1508124ce";
const SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

/// SubjectPublicKeyInfo DER of the fixed seed key.
pub fn spki() -> Vec<u8> {
    hex::decode(format!("{SPKI_PREFIX}{PUBLIC}")).unwrap_or_default()
}

/// Key lookup as the gateways do it: the fixed key is version 1 of [`GATEWAY`] only.
pub fn lookup(gateway: &str, version: u32) -> Option<Vec<u8>> {
    (gateway == GATEWAY && version == 1).then(spki)
}

/// Signs `message` (ECDSA P-256 over its SHA-256) with the fixed key: raw `r || s`.
pub fn sign(message: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let (Ok(private), Ok(public)) = (hex::decode(PRIVATE), hex::decode(PUBLIC)) else {
        return Vec::new();
    };
    match EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, &private, &public, &rng) {
        Ok(pair) => pair.sign(&rng, message).map(|s| s.as_ref().to_vec()).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
