//! The hospital's security officers at the console: their credentials, the requests they approve
//! and the quorum check that runs before every operation that could make records unreadable.
//!
//! An officer's credential is a P-256 key: on a smart card (any PKCS#11 token, through
//! `medgate_hsm::card::Card`), or in a PKCS#8 file for tests and pilots (`medgate keys
//! officer-key`). An officer's name comes from their enrolment, which binds it to their public
//! key: the console names an officer by the credential that signed, never by a flag.
//!
//! The officers, the quorum M and the requests already used are read from the key-event
//! journal, replayed with the ledger's own rules ([`medgate_gateway::journal::officers`]). The
//! flow of a quorum operation:
//! 1. `medgate keys request OPERATION ... --out R.json` writes the request: the operation and
//!    its parameters (hospital, token, role, version, detail), a random nonce, a window;
//! 2. each officer runs `medgate keys approve R.json` with their credential, which shows what
//!    they approve and adds their signature;
//! 3. the operation runs with `--approvals R.json`: [`authorize`] takes the journal lock, checks
//!    that the request is the operation asked for, not expired, not used before, and signed by
//!    M distinct enrolled officers, journals the approvals (from then on the request is used,
//!    whatever happens next), and only then lets the operation run; [`Authorized::record`]
//!    journals the key event, naming the officers and the request.

use std::path::{Path, PathBuf};

use medgate_gateway::journal::{self, ApprovalRecord, JournalLock, Line};
use medgate_ledger::officers::{self as rules, Approval, Officer, OfficerSet, Request};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::exit::{Failure, NOPERM};

/// Default validity of a request.
pub const DEFAULT_VALIDITY: &str = "1h";

/// How an officer names their credential on the command line: `--officer-key FILE` or
/// `--card module=PATH,token=LABEL,id=HEX,pin-file=FILE`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialArgs {
    /// The officer's key file: PKCS#8 PEM, P-256 (`medgate keys officer-key`), for tests and pilots.
    #[arg(long, value_name = "FILE")]
    pub officer_key: Option<PathBuf>,
    /// The officer's smart card: `module=PATH,token=LABEL,id=HEX,pin-file=FILE` (the P-256 key
    /// pair with that CKA_ID; the card PIN is read from the file, never from the command line).
    #[arg(long, value_name = "SPEC", conflicts_with = "officer_key")]
    pub card: Option<String>,
}

/// An officer's credential, opened.
#[derive(Debug)]
pub enum Credential {
    /// A key file.
    File(p256::SecretKey),
    /// A smart card, logged in.
    Card(medgate_hsm::card::Card),
}

impl Credential {
    /// The credential named on the command line, if any.
    pub fn open(args: &CredentialArgs) -> Result<Option<Credential>, Failure> {
        match (&args.officer_key, &args.card) {
            (Some(path), _) => Credential::from_file(path).map(Some),
            (None, Some(spec)) => Credential::from_card(spec).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A key file: PKCS#8 PEM (or DER), P-256, readable by its owner only.
    pub fn from_file(path: &Path) -> Result<Credential, Failure> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Failure::usage(format!("{}: an officer's key file must be readable by its owner only (chmod 600)", path.display())));
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?);
        let key = match std::str::from_utf8(&bytes) {
            Ok(text) if text.contains("-----BEGIN") => p256::SecretKey::from_pkcs8_pem(text),
            _ => p256::SecretKey::from_pkcs8_der(&bytes),
        };
        key.map(Credential::File).map_err(|e| Failure::usage(format!("{}: not a P-256 PKCS#8 private key: {e}", path.display())))
    }

    /// A smart card from its spec.
    pub fn from_card(spec: &str) -> Result<Credential, Failure> {
        let card = CardSpec::parse(spec)?;
        let pin = medgate_hsm::Pin::from_file(&card.pin_file).map_err(|e| Failure::usage(format!("card PIN: {e}")))?;
        medgate_hsm::card::Card::open(&card.module, &card.token, &card.id, &pin).map(Credential::Card).map_err(Failure::hsm)
    }

    /// The officer's public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Result<Vec<u8>, Failure> {
        match self {
            Credential::File(k) => k.public_key().to_public_key_der().map(|d| d.as_bytes().to_vec()).map_err(|e| Failure::runtime(e.to_string())),
            Credential::Card(c) => Ok(c.public_key_der().to_vec()),
        }
    }

    /// The key id (hex SHA-256 of the public key).
    pub fn key_id(&self) -> Result<String, Failure> {
        Ok(rules::key_id(&self.public_key_der()?))
    }

    /// The officer's approval of `request`: ECDSA P-256 over its message, low-S.
    pub fn approve(&self, request: &Request) -> Result<Approval, Failure> {
        let message = request.message();
        let raw = match self {
            Credential::File(k) => {
                let signing = p256::ecdsa::SigningKey::from(k);
                let sig: p256::ecdsa::Signature = signing.sign(&message);
                sig.to_bytes().to_vec()
            }
            Credential::Card(c) => {
                let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &message).as_ref().try_into().map_err(|_| Failure::runtime("SHA-256"))?;
                c.sign_digest(&digest).map_err(Failure::hsm)?
            }
        };
        Ok(Approval { officer_key: self.key_id()?, signature: hex::encode(medgate_ledger::normalize_low_s(&raw)) })
    }

    /// The ECDH secret (x coordinate) with an uncompressed P-256 point, to open a backup share.
    pub fn ecdh(&self, point: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failure> {
        match self {
            Credential::File(k) => {
                let peer = p256::PublicKey::from_sec1_bytes(point).map_err(|_| Failure::usage("the share's ephemeral key is not a P-256 point"))?;
                let shared = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            Credential::Card(c) => c.ecdh(point).map_err(Failure::hsm),
        }
    }
}

/// `module=PATH,token=LABEL,id=HEX,pin-file=FILE`.
#[derive(Debug, Clone)]
struct CardSpec {
    module: PathBuf,
    token: String,
    id: Vec<u8>,
    pin_file: PathBuf,
}

impl CardSpec {
    fn parse(spec: &str) -> Result<CardSpec, Failure> {
        let usage = |why: &str| Failure::usage(format!("--card {spec:?}: {why} (expected module=PATH,token=LABEL,id=HEX,pin-file=FILE)"));
        let (mut module, mut token, mut id, mut pin_file) = (None, None, None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("module", v)) => module = Some(PathBuf::from(v)),
                Some(("token", v)) => token = Some(v.to_owned()),
                Some(("id", v)) => id = Some(hex::decode(v).map_err(|_| usage("id is not hex"))?),
                Some(("pin-file", v)) => pin_file = Some(PathBuf::from(v)),
                _ => return Err(usage(&format!("unknown part {part:?}"))),
            }
        }
        Ok(CardSpec {
            module: module.ok_or_else(|| usage("no module"))?,
            token: token.ok_or_else(|| usage("no token"))?,
            id: id.ok_or_else(|| usage("no id"))?,
            pin_file: pin_file.ok_or_else(|| usage("no pin-file"))?,
        })
    }
}

/// Creates (or truncates) a file readable by its owner only, for a command to write into after
/// it acts as the service.
pub fn create_private(path: &Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// Writes a new officer key file (PKCS#8 PEM, 0600) and returns the officer's card.
pub fn new_key_file(name: &str, out: &Path) -> Result<Officer, Failure> {
    rules::check_name(name).map_err(|e| Failure::usage(e.to_string()))?;
    if out.exists() {
        return Err(Failure::usage(format!("{} exists; an officer key file is never overwritten", out.display())));
    }
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let pem = key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).map_err(|e| Failure::runtime(e.to_string()))?;
    crate::demo::write_private(out, pem.as_bytes())?;
    card_of(name, &Credential::File(key))
}

/// The officer's card: their name and public key, as enrolment takes it.
pub fn card_of(name: &str, credential: &Credential) -> Result<Officer, Failure> {
    rules::check_name(name).map_err(|e| Failure::usage(e.to_string()))?;
    Ok(Officer { name: name.to_owned(), public_key: medgate_ledger::keys::b64_encode(&credential.public_key_der()?) })
}

/// Reads an officer card (JSON `{"name": ..., "public_key": ...}`), checked.
pub fn read_card(path: &Path) -> Result<Officer, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    let card: Officer = serde_json::from_str(&text).map_err(|e| Failure::usage(format!("{}: not an officer card: {e}", path.display())))?;
    card.check().map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    Ok(card)
}

/// A request file: the request, the approvals gathered so far, and what the officers need to
/// see to judge it (the officer card or set a request enrols), which its detail digests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    pub request: Request,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub officers: Option<OfficerSet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub officer: Option<Officer>,
}

impl RequestFile {
    pub fn read(path: &Path) -> Result<RequestFile, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        let file: RequestFile = serde_json::from_str(&text).map_err(|e| Failure::usage(format!("{}: not a request file: {e}", path.display())))?;
        file.request.validate().map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        file.check_context().map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        Ok(file)
    }

    pub fn write(&self, path: &Path) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Failure::runtime(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text + "\n").and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
    }

    /// Writes the file into `file`, opened earlier (as the officer who started the command).
    pub fn write_to(&self, mut file: std::fs::File, path: &Path) -> Result<(), Failure> {
        use std::io::Write as _;
        let text = serde_json::to_string_pretty(self).map_err(|e| Failure::runtime(e.to_string()))?;
        file.write_all((text + "\n").as_bytes()).and_then(|_| file.sync_all()).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
    }

    /// The officer set or card the request carries must be the one its detail digests.
    fn check_context(&self) -> Result<(), String> {
        let detail = self.request.detail.as_deref();
        match self.request.operation.as_str() {
            "officers-init" | "backup-init" => match &self.officers {
                Some(set) if detail == Some(set.digest().as_str()) => Ok(()),
                _ => Err("the officer set in the file is not the one the request names".into()),
            },
            "officer-add" => match &self.officer {
                Some(o) if detail == Some(o.digest().as_str()) => o.check().map(|_| ()).map_err(|e| e.to_string()),
                _ => Err("the officer card in the file is not the one the request names".into()),
            },
            _ => Ok(()),
        }
    }

    /// What the officers approve, for people.
    pub fn describe(&self) -> String {
        let r = &self.request;
        let mut out = format!(
            "operation {}\nhospital  {}\ntoken     {}\nrole      {}\nversion   {}\ndetail    {}\nvalid     {} to {}\nrequest   {}\n",
            r.operation,
            r.hospital,
            r.token,
            r.role.as_deref().unwrap_or("-"),
            r.version.map_or("-".into(), |v| v.to_string()),
            r.detail.as_deref().unwrap_or("-"),
            r.issued,
            r.expires,
            r.id(),
        );
        if let Some(set) = &self.officers {
            out.push_str(&format!("officers  {} of {}:\n", set.quorum, set.officers.len()));
            for o in &set.officers {
                out.push_str(&format!("  {:<20} key {}\n", o.name, o.key_id()));
            }
        }
        if let Some(o) = &self.officer {
            out.push_str(&format!("officer   {} key {}\n", o.name, o.key_id()));
        }
        out
    }
}

/// Parses a duration like `30m`, `1h`, `2h30m`, `900s`.
pub fn parse_validity(s: &str) -> Result<i64, Failure> {
    let bad = || Failure::usage(format!("--valid-for {s:?}: use s, m or h, e.g. 30m or 2h"));
    let (mut total, mut n) = (0i64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            n.push(c);
            continue;
        }
        let v: i64 = n.parse().map_err(|_| bad())?;
        n.clear();
        total += v * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
    }
    if !n.is_empty() || total <= 0 || total > rules::MAX_VALIDITY_SECONDS {
        return Err(if total > rules::MAX_VALIDITY_SECONDS { Failure::usage("a request is valid for at most 24 h") } else { bad() });
    }
    Ok(total)
}

/// The unix time now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A new request for `operation`, valid from now for `validity` seconds.
pub fn new_request(site: &Site, operation: &str, role: Option<String>, version: Option<u32>, detail: Option<String>, validity: i64) -> Result<Request, Failure> {
    let mut nonce = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).map_err(|_| Failure::runtime("no randomness"))?;
    let t = now();
    let r = Request {
        operation: operation.to_owned(),
        hospital: site.hospital.clone(),
        token: site.token.clone(),
        role,
        version,
        detail,
        nonce: hex::encode(nonce),
        issued: rules::format_time(t),
        expires: rules::format_time(t + validity),
    };
    r.validate().map_err(|e| Failure::usage(e.to_string()))?;
    Ok(r)
}

/// What a request is bound to on this appliance: the hospital, the token, and the journal.
#[derive(Debug, Clone)]
pub struct Site {
    pub hospital: String,
    pub token: String,
    pub state_dir: PathBuf,
}

impl Site {
    /// From the configuration: `[gateway] hospital_id`, `state_directory`, `[hsm] token_label`.
    pub fn of(cfg: &medgate_gateway::config::HsmOnly) -> Result<Site, Failure> {
        let need = |what: &str| Failure::config(format!("{what} is needed for the officers' approvals (the journal keeps them, and they are bound to the hospital)"));
        let hospital = cfg.hospital_id.clone().ok_or_else(|| need("[gateway] hospital_id"))?;
        let state_dir = cfg.state_directory.clone().filter(|d| d.is_dir()).ok_or_else(|| need("an existing [gateway] state_directory"))?;
        Ok(Site { hospital, token: cfg.hsm.token_label.clone(), state_dir })
    }

    /// The enrolled officers and the used requests, from the journal; problems are logged.
    pub fn officers(&self) -> Result<rules::AuditReport, Failure> {
        let lines = journal::read_lines(&self.state_dir).map_err(|e| Failure::runtime(e.to_string()))?;
        let report = journal::officers(&lines, &self.hospital);
        for (entry, why) in &report.problems {
            tracing::warn!(entry = %entry, problem = %why, "the key-event journal breaks an officer rule; the line is not applied");
        }
        Ok(report)
    }
}

/// A quorum refusal: exit 77, as for a PIN the HSM refused.
pub fn refused(e: impl std::fmt::Display) -> Failure {
    Failure { code: NOPERM, message: format!("refused: {e}") }
}

/// An operation cleared to run: the journal lock is held, the approvals are journalled.
#[derive(Debug)]
pub struct Authorized {
    _lock: JournalLock,
    state_dir: PathBuf,
    /// The `officer` field of the key event: the officers' names joined by `+`.
    pub officer: String,
    /// The approved request's id.
    pub request: Option<String>,
}

impl Authorized {
    /// Journals the key event of the operation that ran.
    pub fn record(&self, action: &str, role: &str, version: u32, key_id: &str) -> Result<(), Failure> {
        let ev = journal::key_event(&self.officer, action, role, version, key_id, self.request.clone());
        journal::append(&self.state_dir, &[Line::Key(ev)]).map_err(|e| Failure::runtime(e.to_string()))
    }

    /// Journals officer changes (after the approvals already journalled).
    pub fn record_lines(&self, lines: &[Line]) -> Result<(), Failure> {
        journal::append(&self.state_dir, lines).map_err(|e| Failure::runtime(e.to_string()))
    }
}

/// How many officers must approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule<'a> {
    /// M of the enrolled officers.
    Quorum,
    /// Every officer of the set being enrolled (the first enrolment).
    AllOf,
    /// M of the enrolled officers, and the officer being enrolled, who proves they hold their key.
    Enrol(&'a Officer),
    /// One enrolled officer, who names themselves with their credential.
    One,
}

/// Checks that `file`'s request is the operation `asked` (same operation and parameters), in
/// its window, never used, and approved as `rule` requires; journals the approvals; returns the
/// lock and the officers' names. `set` overrides the journal's officers (the first enrolment,
/// and an enrolment, which the new officer signs too).
pub fn authorize(site: &Site, asked: &Request, file: &RequestFile, rule: Rule<'_>, set: Option<&OfficerSet>) -> Result<Authorized, Failure> {
    let lock = journal::lock(&site.state_dir).map_err(|e| Failure::runtime(e.to_string()))?;
    let state = site.officers()?;
    let request = &file.request;
    request.same_operation(asked).map_err(refused)?;
    if state.used.contains(&request.id()) {
        return Err(refused(rules::QuorumError::Replayed(request.id())));
    }
    let officers = set.unwrap_or(&state.officers);
    if officers.officers.is_empty() {
        return Err(refused("no officers are enrolled: enrol them first (`medgate keys request officers-init`, README \"Key ceremony\")"));
    }
    let now = now();
    let who = match rule {
        Rule::Quorum => officers.check_quorum(request, &file.approvals, now).map_err(refused)?,
        Rule::AllOf => {
            officers.check_all(request, &file.approvals, now).map_err(refused)?;
            officers.approvers(request, &file.approvals, now).map_err(refused)?
        }
        Rule::Enrol(new) => {
            let current: Vec<Approval> = file.approvals.iter().filter(|a| a.officer_key != new.key_id()).cloned().collect();
            let mut who = officers.check_quorum(request, &current, now).map_err(refused)?;
            let mut with = officers.clone();
            with.officers.push(new.clone());
            let own = file.approvals.iter().find(|a| a.officer_key == new.key_id()).cloned().ok_or_else(|| refused(rules::QuorumError::Missing(new.name.clone())))?;
            with.approvers(request, &[own], now).map_err(refused)?;
            who.push(new);
            who
        }
        Rule::One => {
            let who = officers.approvers(request, &file.approvals, now).map_err(refused)?;
            if who.is_empty() {
                return Err(refused("no enrolled officer signed"));
            }
            who
        }
    };
    let time = medgate_gateway::clock::now_rfc3339();
    let lines: Vec<Line> = file
        .approvals
        .iter()
        .filter_map(|a| who.iter().find(|o| o.key_id() == a.officer_key).map(|o| (o, a)))
        .map(|(o, a)| Line::Approval(ApprovalRecord { time: time.clone(), officer: o.name.clone(), request: request.clone(), approval: a.clone() }))
        .collect();
    journal::append(&site.state_dir, &lines).map_err(|e| Failure::runtime(e.to_string()))?;
    Ok(Authorized { _lock: lock, state_dir: site.state_dir.clone(), officer: rules::joined_names(&who), request: Some(request.id()) })
}

/// Who runs an everyday operation (generate, rotate a role other than the KEK, import a
/// certificate, export a backup): once officers are enrolled, the officer named by their
/// credential, who signs a request for it on the spot; before any enrolment (the first key
/// ceremony), the console's login name, marked `unix:`.
pub fn acting(site: Option<&Site>, credential: Option<&Credential>, operation: &str, role: Option<&str>, version: Option<u32>) -> Result<Acting, Failure> {
    let enrolled = match site {
        Some(site) => !site.officers()?.officers.officers.is_empty(),
        None => false,
    };
    match (site, credential) {
        (Some(site), Some(c)) if enrolled => {
            let request = new_request(site, operation, role.map(str::to_owned), version, None, 300)?;
            let file = RequestFile { approvals: vec![c.approve(&request)?], request: request.clone(), officers: None, officer: None };
            Ok(Acting::Officer(authorize(site, &request, &file, Rule::One, None)?))
        }
        (Some(_), None) if enrolled => Err(refused(
            "officers are enrolled: name yourself with your credential (--officer-key FILE or --card SPEC)",
        )),
        _ => Ok(Acting::Login(format!("unix:{}", crate::keys::officer()))),
    }
}

/// Who an everyday operation is journalled for.
#[derive(Debug)]
pub enum Acting {
    /// An enrolled officer, who signed.
    Officer(Authorized),
    /// No officers enrolled yet: the console's login name.
    Login(String),
}

impl Acting {
    /// Journals the key event (when there is a state directory).
    pub fn record(&self, state_dir: Option<&Path>, action: &str, info: &medgate_hsm::KeyInfo) -> Result<(), Failure> {
        match self {
            Acting::Officer(a) => a.record(action, info.role.as_str(), info.version, &info.id_hex),
            Acting::Login(name) => {
                journal::record_event_by(state_dir, name, action, info).map(|_| ()).map_err(|e| Failure::runtime(e.to_string()))
            }
        }
    }
}
