//! Disaster recovery at the console: the backup key split between the officers, the key backup
//! file, and the restore into a fresh token. What the HSM lets out, and under what, is
//! `medgate_hsm::backup`; the procedure an officer follows is in README, "Disaster recovery".
//!
//! * `backup init` (a quorum operation): 32 random bytes S are split into one Shamir share per
//!   enrolled officer, any M of which recombine S (GF(256), the `vsss-rs` crate). Each share is
//!   encrypted to its officer's P-256 key (ECDH with a fresh ephemeral key, HKDF-SHA256,
//!   AES-256-GCM) and written to its own file, which is useless to anyone but that officer. The
//!   backup key K = HKDF(S) is installed on the token by the security officer, trusted and
//!   wrap-only. S and K live in zeroizing memory for the command's duration, never on disk.
//! * `backup export`: every backed-up key version wrapped under K on the token, with the public
//!   halves, in a backup file signed by the HSM ledger key.
//! * `backup restore`: on a replacement appliance, with a fresh token and the state directory
//!   restored from the state backup, M officers open their shares with their credentials; S and
//!   K are recombined and checked; the backup file's signature is checked with the ledger public
//!   key the officers bring; every KEK version a live record needs must be in the backup, and no
//!   version the journal shows destroyed is restored (a backup taken before a shred pass cannot
//!   bring back what the pass destroyed); then the keys are unwrapped into the token.

use std::path::{Path, PathBuf};

use medgate_hsm::backup::BackedUpKey;
use medgate_hsm::{Hsm, Pin, Role};
use medgate_ledger::officers::OfficerSet;
use ring::{aead, agreement, hkdf, hmac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::exit::Failure;
use crate::officers::{self, Credential, Site};

const SHARE_FORMAT: &str = "medgate-backup-share/1";
const BACKUP_FORMAT: &str = "medgate-key-backup/1";

/// One officer's share of the backup key, encrypted to that officer's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareFile {
    pub format: String,
    /// The backup key's id (its CKA_ID on the token), hex.
    pub set: String,
    pub hospital: String,
    pub token: String,
    /// M: how many shares recombine the key.
    pub threshold: u32,
    /// N: how many shares were made.
    pub shares: u32,
    pub officer: String,
    pub officer_key: String,
    /// A check value of the key the shares make (HKDF of the secret), hex.
    pub key_check: String,
    /// The ephemeral P-256 public key (uncompressed point), hex.
    pub ephemeral: String,
    /// The share, AES-256-GCM, hex.
    pub sealed: String,
}

/// A key backup file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    #[serde(flatten)]
    pub body: BackupBody,
    /// ECDSA P-256 by the HSM ledger key over SHA-256 of the body's JSON, `r || s` hex.
    pub signature: String,
}

/// What the backup file's signature covers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupBody {
    pub format: String,
    pub hospital: String,
    pub token: String,
    pub created: String,
    /// The backup key's id, hex: the shares of this set open it.
    pub set: String,
    /// The ledger key version that signed.
    pub ledger_key_version: u32,
    pub keys: Vec<BackedUpKey>,
}

impl BackupBody {
    fn message(&self) -> Result<Vec<u8>, Failure> {
        serde_json::to_vec(self).map_err(|e| Failure::runtime(e.to_string()))
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(secret: &[u8], info: &[&[u8]], len: usize) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"medgate backup v1").extract(secret);
    let mut out = Zeroizing::new(vec![0u8; len]);
    prk.expand(info, Len(len)).and_then(|okm| okm.fill(&mut out)).map_err(|_| Failure::runtime("HKDF"))?;
    Ok(out)
}

/// The backup key made from the officers' secret.
fn backup_key(secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failure> {
    derive(secret, &[b"backup key"], 32)
}

/// The check value of the secret, bound to the set: shows recombined shares are right.
fn key_check(secret: &[u8], set: &str) -> Result<String, Failure> {
    let k = derive(secret, &[b"key check"], 32)?;
    Ok(hex::encode(&hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &k), set.as_bytes()).as_ref()[..16]))
}

fn rng() -> ring::rand::SystemRandom {
    ring::rand::SystemRandom::new()
}

fn random(n: usize) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut b = Zeroizing::new(vec![0u8; n]);
    ring::rand::SecureRandom::fill(&rng(), &mut b).map_err(|_| Failure::runtime("no randomness"))?;
    Ok(b)
}

fn aead_key(shared: &[u8], ephemeral: &[u8], officer_key: &str, set: &str) -> Result<aead::LessSafeKey, Failure> {
    let k = derive(shared, &[b"share", ephemeral, officer_key.as_bytes(), set.as_bytes()], 32)?;
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &k).map_err(|_| Failure::runtime("AES-256-GCM key"))?;
    Ok(aead::LessSafeKey::new(unbound))
}

/// Encrypts one share to an officer: a fresh ephemeral key, so the AES key is used once.
fn seal_share(share: &[u8], officer: &medgate_ledger::officers::Officer, set: &str) -> Result<(String, String), Failure> {
    let spki = medgate_ledger::keys::b64_decode(&officer.public_key).map_err(|e| Failure::usage(e.to_string()))?;
    let point = medgate_ledger::p256_point_from_spki(&spki).map_err(|e| Failure::usage(e.to_string()))?.to_vec();
    let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng()).map_err(|_| Failure::runtime("ECDH key"))?;
    let eph_pub = eph.compute_public_key().map_err(|_| Failure::runtime("ECDH key"))?.as_ref().to_vec();
    let officer_key = officer.key_id();
    let key = agreement::agree_ephemeral(eph, &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &point), |shared| {
        aead_key(shared, &eph_pub, &officer_key, set)
    })
    .map_err(|_| Failure::usage(format!("officer {}: ECDH with their key failed", officer.name)))??;
    let mut sealed = share.to_vec();
    key.seal_in_place_append_tag(aead::Nonce::assume_unique_for_key([0u8; 12]), aead::Aad::from(set.as_bytes()), &mut sealed)
        .map_err(|_| Failure::runtime("AES-256-GCM"))?;
    Ok((hex::encode(eph_pub), hex::encode(sealed)))
}

/// Opens a share with its officer's credential.
fn open_share(file: &ShareFile, credential: &Credential) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let eph = hex::decode(&file.ephemeral).map_err(|_| Failure::usage("share: ephemeral key is not hex"))?;
    let shared = credential.ecdh(&eph)?;
    let key = aead_key(&shared, &eph, &file.officer_key, &file.set)?;
    let mut buf = Zeroizing::new(hex::decode(&file.sealed).map_err(|_| Failure::usage("share: not hex"))?);
    let plain = key
        .open_in_place(aead::Nonce::assume_unique_for_key([0u8; 12]), aead::Aad::from(file.set.as_bytes()), &mut buf)
        .map_err(|_| Failure::usage(format!("the share of {} does not open with this credential (altered, or another officer's)", file.officer)))?;
    Ok(Zeroizing::new(plain.to_vec()))
}

/// Creates one share file per officer in `dir` (never overwriting one), before the command acts
/// as the service; [`init`] writes them.
pub fn create_share_files(dir: &Path, set: &OfficerSet) -> Result<Vec<(PathBuf, std::fs::File)>, Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
    let paths: Vec<PathBuf> = set.officers.iter().map(|o| dir.join(format!("{}.share", o.name))).collect();
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        return Err(Failure::usage(format!("{} exists: shares are never overwritten", p.display())));
    }
    paths
        .into_iter()
        .map(|p| {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?;
            Ok((p, f))
        })
        .collect()
}

/// `failure`, once the share files [`create_share_files`] made (still empty) are removed; those
/// this user may not remove (the command now acts as the service) are named, to be removed
/// before `backup init` runs again: shares are never overwritten.
pub fn nothing_written(mut failure: Failure, files: &[(PathBuf, std::fs::File)]) -> Failure {
    let left: Vec<String> = files.iter().filter(|(p, _)| std::fs::remove_file(p).is_err()).map(|(p, _)| p.display().to_string()).collect();
    if !left.is_empty() {
        failure.message.push_str(&format!("\nno share was written; remove the empty files {} before trying again", left.join(", ")));
    }
    failure
}

/// `medgate keys backup init`: the officers' secret, its shares written to `files` (one per
/// officer of `set`, in order), the backup key on the token. Runs after
/// [`officers::authorize`] cleared a `backup-init` request for `set`. When the module refuses
/// the backup key, no share is written and the empty files are removed ([`nothing_written`]).
pub fn init(site: &Site, module: &Path, set: &OfficerSet, so_pin: &Pin, files: Vec<(PathBuf, std::fs::File)>) -> Result<(String, Vec<PathBuf>), Failure> {
    use std::io::Write as _;
    let secret = random(32)?;
    let set_id = hex::encode(&*random(16)?);
    let (m, n) = (set.quorum as usize, set.officers.len());
    let shares = vsss_rs::Gf256::split_array(m, n, &*secret, rand_core::OsRng).map_err(|e| Failure::runtime(format!("Shamir split: {e:?}")))?;
    let check = key_check(&secret, &set_id)?;
    let key = backup_key(&secret)?;
    // The token first: if the module refuses a backup key, no share is written.
    let id = hex::decode(&set_id).map_err(|_| Failure::runtime("set id"))?;
    if let Err(e) = medgate_hsm::backup::install_backup_key(module, &site.token, so_pin, &key, &id) {
        return Err(nothing_written(Failure::hsm(e), &files));
    }
    let mut paths = Vec::new();
    for ((officer, share), (path, mut out)) in set.officers.iter().zip(shares.iter()).zip(files) {
        let share = Zeroizing::new(share.clone());
        let (ephemeral, sealed) = seal_share(&share, officer, &set_id)?;
        let file = ShareFile {
            format: SHARE_FORMAT.into(),
            set: set_id.clone(),
            hospital: site.hospital.clone(),
            token: site.token.clone(),
            threshold: m as u32,
            shares: n as u32,
            officer: officer.name.clone(),
            officer_key: officer.key_id(),
            key_check: check.clone(),
            ephemeral,
            sealed,
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| Failure::runtime(e.to_string()))?;
        out.write_all((text + "\n").as_bytes()).and_then(|_| out.sync_all()).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
        paths.push(path);
    }
    Ok((set_id, paths))
}

/// `medgate keys backup export`: the backed-up keys wrapped under the backup key, signed by the
/// ledger key, written to `out` (opened 0600 by the officer; `path` names it in messages).
/// Returns the number of keys.
pub fn export(site: &Site, hsm: &Hsm, mut out: std::fs::File, path: &Path) -> Result<usize, Failure> {
    use std::io::Write as _;
    let keys = hsm.export_backup().map_err(Failure::hsm)?;
    let set = hsm.backup_key_id().map_err(Failure::hsm)?.ok_or_else(|| Failure::usage("the token has no backup key: `medgate keys backup init` first"))?;
    let ledger_key_version = hsm.public_key_der(Role::Ledger, None).map_err(Failure::hsm)?.0;
    let body = BackupBody {
        format: BACKUP_FORMAT.into(),
        hospital: site.hospital.clone(),
        token: site.token.clone(),
        created: medgate_gateway::clock::now_rfc3339(),
        set,
        ledger_key_version,
        keys,
    };
    let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &body.message()?).as_ref().try_into().map_err(|_| Failure::runtime("SHA-256"))?;
    let sig = hsm.sign_digest(Role::Ledger, &digest).map_err(Failure::hsm)?;
    let n = body.keys.len();
    let file = BackupFile { body, signature: hex::encode(medgate_ledger::normalize_low_s(&sig.raw)) };
    let text = serde_json::to_string_pretty(&file).map_err(|e| Failure::runtime(e.to_string()))?;
    out.write_all((text + "\n").as_bytes()).and_then(|_| out.sync_all()).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
    Ok(n)
}

/// What a restore needs from the officers, read before the command acts as the service.
#[derive(Debug)]
pub struct RestoreInput {
    /// The key backup file and its text.
    pub backup: (PathBuf, String),
    /// The ledger public key (DER SubjectPublicKeyInfo) and its file, kept apart from the appliance.
    pub ledger_public_key: (PathBuf, Vec<u8>),
    /// Each share file and its text.
    pub shares: Vec<(PathBuf, String)>,
    /// The officers' credentials, matched to the shares by key.
    pub credentials: Vec<Credential>,
}

impl RestoreInput {
    /// Reads the files.
    pub fn read(backup: &Path, ledger_public_key: &Path, shares: &[PathBuf], credentials: Vec<Credential>) -> Result<RestoreInput, Failure> {
        let text = |p: &Path| std::fs::read_to_string(p).map_err(|e| Failure::usage(format!("{}: {e}", p.display())));
        let spki = medgate_ledger::keys::read_public_key(ledger_public_key).map_err(|e| Failure::usage(e.to_string()))?;
        Ok(RestoreInput {
            backup: (backup.to_path_buf(), text(backup)?),
            ledger_public_key: (ledger_public_key.to_path_buf(), spki),
            shares: shares.iter().map(|p| Ok((p.clone(), text(p)?))).collect::<Result<_, Failure>>()?,
            credentials,
        })
    }
}

/// `medgate keys backup restore`. Returns the officers whose shares opened it, the keys
/// restored, and the versions left out because the journal shows them destroyed.
pub fn restore(site: &Site, input: RestoreInput, module: &Path, so_pin: &Pin, user_pin: &Pin) -> Result<(Vec<String>, usize, Vec<String>), Failure> {
    let file = read_backup(&input.backup.0, &input.backup.1, &input.ledger_public_key)?;
    let body = &file.body;
    // A replacement token may have another label; the hospital must be this one.
    if body.hospital != site.hospital {
        return Err(Failure::usage(format!("the backup is of hospital {}, not {}", body.hospital, site.hospital)));
    }
    let (officers, secret) = recombine(&input.shares, &input.credentials, &body.set)?;
    let (keys, skipped) = keys_to_restore(site, body)?;
    let key = backup_key(&secret)?;
    let id = hex::decode(&body.set).map_err(|_| Failure::usage("backup: set is not hex"))?;
    let n = medgate_hsm::backup::restore(module, &site.token, user_pin, so_pin, &key, &id, &keys).map_err(Failure::hsm)?;
    Ok((officers, n, skipped))
}

fn read_backup(path: &Path, text: &str, ledger_public_key: &(PathBuf, Vec<u8>)) -> Result<BackupFile, Failure> {
    let file: BackupFile = serde_json::from_str(text).map_err(|e| Failure::usage(format!("{}: not a key backup: {e}", path.display())))?;
    if file.body.format != BACKUP_FORMAT {
        return Err(Failure::usage(format!("{}: format {:?}, not {BACKUP_FORMAT}", path.display(), file.body.format)));
    }
    let (key_path, spki) = ledger_public_key;
    let point = medgate_ledger::p256_point_from_spki(spki).map_err(|e| Failure::usage(format!("{}: {e}", key_path.display())))?;
    let sig = hex::decode(&file.signature).map_err(|_| Failure::usage("backup: signature is not hex"))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(&file.body.message()?, &sig)
        .map_err(|_| Failure::usage(format!("{}: the signature does not verify with the ledger public key {}: altered, or another appliance's", path.display(), key_path.display())))?;
    Ok(file)
}

/// Opens every share for which a credential is given, checks they belong to `set` and agree,
/// and recombines the secret from at least M of them.
fn recombine(shares: &[(PathBuf, String)], credentials: &[Credential], set: &str) -> Result<(Vec<String>, Zeroizing<Vec<u8>>), Failure> {
    let mut opened: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    let mut who = Vec::new();
    let mut rule: Option<(u32, String)> = None;
    for (path, text) in shares {
        let share: ShareFile = serde_json::from_str(text).map_err(|e| Failure::usage(format!("{}: not a share: {e}", path.display())))?;
        if share.format != SHARE_FORMAT || share.set != set {
            return Err(Failure::usage(format!("{}: a share of backup key {}, not of this backup's {set}", path.display(), share.set)));
        }
        if rule.as_ref().is_some_and(|(m, c)| *m != share.threshold || *c != share.key_check) {
            return Err(Failure::usage(format!("{}: disagrees with the other shares", path.display())));
        }
        rule = Some((share.threshold, share.key_check.clone()));
        let mut matched = None;
        for c in credentials {
            if c.key_id()? == share.officer_key {
                matched = Some(c);
            }
        }
        let Some(c) = matched else {
            return Err(Failure::usage(format!("{}: no credential of officer {} was given (--officer-key or --card)", path.display(), share.officer)));
        };
        opened.push(open_share(&share, c)?);
        who.push(share.officer.clone());
    }
    let Some((m, check)) = rule else { return Err(Failure::usage("no share given (--share FILE, one per officer present)")) };
    if who.len() < m as usize {
        return Err(officers::refused(format!("{} of the {m} shares needed were opened ({}): one officer alone never restores", who.len(), who.join(", "))));
    }
    let shares: Vec<Vec<u8>> = opened.iter().map(|s| s.to_vec()).collect();
    let secret = Zeroizing::new(vsss_rs::Gf256::combine_array(&shares).map_err(|e| Failure::usage(format!("the shares do not combine: {e:?}")))?);
    for s in shares {
        drop(Zeroizing::new(s));
    }
    if key_check(&secret, set)? != check {
        return Err(Failure::usage("the shares do not make the backup key (altered shares, or shares of another backup key)"));
    }
    Ok((who, secret))
}

/// The backed-up keys to restore: every version but those the journal shows destroyed; refused
/// when a KEK version a live record needs is missing.
fn keys_to_restore(site: &Site, body: &BackupBody) -> Result<(Vec<BackedUpKey>, Vec<String>), Failure> {
    let events = medgate_gateway::journal::read_events(&site.state_dir).map_err(|e| Failure::runtime(e.to_string()))?;
    let destroyed = |k: &BackedUpKey| events.iter().any(|e| e.action == "destroy" && e.role == k.role && e.version == k.version);
    let (skipped, keys): (Vec<BackedUpKey>, Vec<BackedUpKey>) = body.keys.iter().cloned().partition(|k| destroyed(k));
    let live = live_kek_versions(&site.state_dir)?;
    let missing: Vec<String> = live
        .iter()
        .filter(|(v, n)| **n > 0 && !keys.iter().any(|k| k.role == "kek" && k.version == **v))
        .map(|(v, n)| format!("kek v{v} ({n} sealed records and SubmissionSets)"))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::usage(format!(
            "this backup cannot read the vault: it lacks {}. It was taken before a KEK rotation or a shred pass (which destroys the KEK versions an erasure touched, in backups too): restore the newest key backup, taken after the last pass",
            missing.join(", ")
        )));
    }
    Ok((keys, skipped.iter().map(|k| k.label.clone()).collect()))
}

/// The KEK versions the vault's live records are wrapped under, with their counts (none when
/// the state directory holds no vault yet).
fn live_kek_versions(state_dir: &Path) -> Result<std::collections::BTreeMap<u32, usize>, Failure> {
    if !state_dir.join("medgate.sled").exists() {
        return Ok(Default::default());
    }
    let db = medgate_store::Db::open(state_dir).map_err(|e| Failure::runtime(format!("the state directory {}: {e} (is the gateway stopped?)", state_dir.display())))?;
    let vault = medgate_store::vault::Vault::open(&db).map_err(|e| Failure::runtime(e.to_string()))?;
    vault.live_kek_versions().map_err(|e| Failure::runtime(e.to_string()))
}
