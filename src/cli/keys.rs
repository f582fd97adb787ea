//! `medgate keys`: the security officers' console over the HSM token. Operations that could make
//! records unreadable run only with the approval of a quorum of enrolled officers
//! (`crate::officers`); the officers, requests and disaster recovery commands are in
//! [`super::officer`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use medgate_gateway::config::HsmOnly;
use medgate_hsm::{Pin, Role};
use medgate_ledger::officers::Request;

use super::{officer, parse_role};
use crate::exit::Failure;
use crate::keys;
use crate::officers::{self, Acting, Authorized, Credential, CredentialArgs, RequestFile, Rule, Site};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Initialise an empty token in the HSM (labelled [hsm] token_label) and set the user PIN
    /// from [hsm] pin_file. Production HSMs are often initialised with the vendor's tool instead.
    InitToken {
        /// File holding the security officer PIN to set (mode 0600).
        #[arg(long)]
        so_pin_file: PathBuf,
    },
    /// Open the module on its own and report its slots, tokens and mechanisms, and for each key
    /// role whether the configured token can hold it and how (with the user PIN, when it can be
    /// read: the template attributes and the state of each active key too). Exits 64 when the
    /// token cannot serve medgate (a role it cannot hold, an active key it cannot use), as
    /// `medgate serve` would refuse to start.
    Probe {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create version 1 of a key role.
    Generate {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        who: CredentialArgs,
    },
    /// Create every missing role (ledger, tls, kek, sharing, pseudonym).
    GenerateAll {
        #[command(flatten)]
        who: CredentialArgs,
    },
    /// List medgate's keys and their protection (a table, or --json), with the backup key.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The key events of every key (or of one role or version) from the journal: who, what,
    /// when, and under which approved request.
    History {
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        #[arg(long)]
        version: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create the next version of a role and make it active; older versions keep decrypting and
    /// verifying. The KEK needs the approval of a quorum of officers (--approvals).
    Rotate {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The request file approved by the officers (`medgate keys request rotate-kek`).
        #[arg(long, value_name = "FILE")]
        approvals: Option<PathBuf>,
        #[command(flatten)]
        who: CredentialArgs,
    },
    /// Take an old version out of use entirely (the active version cannot be retired). Needs
    /// the approval of a quorum of officers.
    Retire {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        version: u32,
        /// The request file approved by the officers (`medgate keys request retire`).
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
    },
    /// Destroy a version for ever (asks for confirmation; --yes when not on a terminal). Needs
    /// the approval of a quorum of officers.
    Destroy {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        version: u32,
        /// Do not ask; required when stdin is not a terminal.
        #[arg(long)]
        yes: bool,
        /// The request file approved by the officers (`medgate keys request destroy`).
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
    },
    /// Print a PKCS#10 CSR for the active key of a role, signed inside the HSM.
    Csr {
        #[arg(long, value_parser = parse_role, default_value = "tls")]
        role: Role,
        /// Subject, e.g. "CN=medgate.hospital-a.example,O=Hospital A".
        #[arg(long)]
        subject: String,
        /// DNS names for subjectAltName (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Write the CSR here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Store the certificate the CA issued next to the active key of a role.
    ImportCert {
        #[arg(long, value_parser = parse_role, default_value = "tls")]
        role: Role,
        /// PEM or DER certificate file.
        file: PathBuf,
        #[command(flatten)]
        who: CredentialArgs,
    },
    /// Key ceremony: import the consortium's shared pseudonym key (32 bytes, hex, in a file) as
    /// version 1, sensitive and never extractable, so one patient has one pseudonym across the
    /// consortium. Only before any pseudonym key exists; destroy the file afterwards. Once
    /// officers are enrolled, a quorum approves it (`medgate keys request import-key`).
    ImportPseudonymKey {
        /// File holding the key as 64 hex characters (mode 0600).
        #[arg(long)]
        value_file: PathBuf,
        /// The request file approved by the officers.
        #[arg(long, value_name = "FILE")]
        approvals: Option<PathBuf>,
    },
    /// Change the token's user PIN (the one the gateway logs in with) or, with --so, the
    /// security officer's PIN. Needs the approval of a quorum of officers. Put the new user PIN
    /// in the gateway's PIN file or credential afterwards.
    ChangePin {
        /// Change the SO PIN instead of the user PIN.
        #[arg(long)]
        so: bool,
        /// The current SO PIN (with --so).
        #[arg(long, value_name = "FILE", required_if_eq("so", "true"))]
        so_pin_file: Option<PathBuf>,
        /// The new PIN (mode 0600).
        #[arg(long, value_name = "FILE")]
        new_pin_file: PathBuf,
        /// The request file approved by the officers (`medgate keys request change-pin`).
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
    },
    /// Write a new officer key file (P-256, PKCS#8 PEM, mode 0600) for tests and pilots, and
    /// print the officer's card (name and public key) for their enrolment.
    OfficerKey {
        /// The officer's name (A-Z a-z 0-9 - . _ @).
        #[arg(long)]
        name: String,
        /// The key file to write (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Also write the card here.
        #[arg(long, value_name = "FILE")]
        card_out: Option<PathBuf>,
    },
    /// Print an officer's card (name and public key) from their credential, e.g. a smart card.
    OfficerCard {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        who: CredentialArgs,
        /// Write the card here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write a request for the officers to approve: the operation, its parameters, a nonce and
    /// a validity window.
    Request {
        #[command(subcommand)]
        what: officer::RequestKind,
        /// The request file to write.
        #[arg(long, global = true, value_name = "FILE")]
        out: Option<PathBuf>,
        /// How long the approvals stay valid (at most 24h).
        #[arg(long, global = true, default_value = crate::officers::DEFAULT_VALIDITY)]
        valid_for: String,
    },
    /// Approve a request with your credential: shows what it is, then adds your signature to
    /// the file.
    Approve {
        /// The request file.
        file: PathBuf,
        #[command(flatten)]
        who: CredentialArgs,
    },
    /// The hospital's security officers: list them, enrol them, remove one, change the quorum.
    Officers {
        #[command(subcommand)]
        command: officer::OfficersCommand,
    },
    /// Disaster recovery: the backup key split between the officers, key backups, restore.
    Backup {
        #[command(subcommand)]
        command: officer::BackupCommand,
    },
    /// Print the public key of a role (PEM), for verifiers.
    PublicKey {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A specific version (default: active).
        #[arg(long)]
        version: Option<u32>,
    },
}

pub(crate) fn keys_command(path: &Path, command: KeysCommand) -> Result<(), Failure> {
    let cfg = HsmOnly::load(path).map_err(|e| Failure::config(e.to_string()))?;
    let state = keys::state_dir(&cfg);
    let state = state.as_deref();
    // Commands that change neither the token nor the journal run as the officer who started
    // them (an officer's own files, the request file they sign).
    let command = match command {
        KeysCommand::History { role, version, json } => return officer::history(&cfg, role, version, json),
        KeysCommand::OfficerKey { name, out, card_out } => return officer::officer_key(&name, &out, card_out.as_deref()),
        KeysCommand::OfficerCard { name, who, out } => return officer::officer_card(&name, &who, out.as_deref()),
        KeysCommand::Approve { file, who } => return officer::approve(&cfg, &file, &who),
        KeysCommand::Officers { command: officer::OfficersCommand::List { json } } => return officer::list(&cfg, json),
        other => other,
    };
    // As root, the PIN the unit gets (its credential), read before acting as the service.
    crate::account::adopt_unit_credential(path, cfg.hsm.pin_file.as_deref());
    let user = Pin::resolve(cfg.hsm.pin_file.as_deref());
    let become_service = || keys::act_as_service(path, state);
    // Commands that log in on their own (as the SO, or on a fresh token): they read the
    // officers' files first, then act as the service.
    let command = match command {
        KeysCommand::ChangePin { so, so_pin_file, new_pin_file, approvals } => {
            return officer::change_pin(&cfg, so, so_pin_file.as_deref(), &new_pin_file, &approvals, &become_service)
        }
        KeysCommand::Officers { command } => return officer::officers(&cfg, command, &become_service),
        KeysCommand::Backup { command } if !officer::needs_pool(&command) => return officer::backup_alone(&cfg, user, command, &become_service),
        other => other,
    };
    let so = match &command {
        KeysCommand::InitToken { so_pin_file } => Some(Pin::from_file(so_pin_file).map_err(|e| Failure::usage(e.to_string()))?),
        _ => None,
    };
    let files = Files::read(&command)?;
    become_service()?;
    if let KeysCommand::Probe { json } = command {
        return keys::probe(&cfg, user, json);
    }
    let user = user.map_err(|e| Failure::config(e.to_string()))?;
    if let Some(so) = so {
        medgate_hsm::admin::init_token(&cfg.hsm.module, &cfg.hsm.token_label, &so, &user).map_err(Failure::hsm)?;
        tracing::info!(officer = %keys::officer(), token = %cfg.hsm.token_label, "token initialised");
        println!("token {:?} initialised; the user PIN is the one in the configured PIN file", cfg.hsm.token_label);
        return Ok(());
    }
    let site = crate::officers::Site::of(&cfg).ok();
    let hsm = keys::open_hsm_with(&cfg, user)?;
    let result = match command {
        KeysCommand::Request { what, valid_for, .. } => officer::request(&cfg, &hsm, what, files.request, &valid_for),
        KeysCommand::Backup { command } => officer::backup_with_pool(&cfg, &hsm, command, files.out, files.credential),
        other => keys_on_token(&hsm, site.as_ref(), state, other, files),
    };
    hsm.shutdown();
    result
}

/// The request a quorum operation must have been approved for.
fn asked(site: Option<&Site>, operation: &str, role: Option<Role>, version: Option<u32>, detail: Option<String>) -> Result<(Site, Request), Failure> {
    let site = site.cloned().ok_or_else(|| Failure::config("[gateway] hospital_id and an existing state_directory are needed for the officers' approvals"))?;
    let request = Request {
        operation: operation.to_owned(),
        hospital: site.hospital.clone(),
        token: site.token.clone(),
        role: role.map(|r| r.to_string()),
        version,
        detail,
        nonce: String::new(),
        issued: String::new(),
        expires: String::new(),
    };
    Ok((site, request))
}

/// Checks the approvals for the operation asked, journals them, and returns the lock.
fn quorum(site: Option<&Site>, operation: &str, role: Option<Role>, version: Option<u32>, detail: Option<String>, approvals: Option<&RequestFile>) -> Result<Authorized, Failure> {
    let (site, request) = asked(site, operation, role, version, detail)?;
    let approvals = approvals.ok_or_else(|| officers::refused(format!("{operation} needs the approval of a quorum of officers: `medgate keys request {operation}`, then --approvals FILE")))?;
    officers::authorize(&site, &request, approvals, Rule::Quorum, None)
}


/// The files a command reads or writes, opened as the officer who started it (root may read
/// what the service's user may not), before the command acts as the service: the certificate,
/// the key to import, the CSR to write, the approved request, the acting officer's credential
/// (a smart card is opened as the officer), the request file to write.
#[derive(Debug, Default)]
struct Files {
    /// `import-cert`: the certificate, DER.
    certificate: Option<Vec<u8>>,
    /// `import-pseudonym-key`: the file's text.
    pseudonym_key: Option<zeroize::Zeroizing<String>>,
    /// `csr --out`: the file to write.
    csr_out: Option<std::fs::File>,
    /// `--approvals`: the request the officers approved.
    approvals: Option<RequestFile>,
    /// `--officer-key` or `--card`: the acting officer's credential.
    credential: Option<Credential>,
    /// `request`: what the request needs from files, and the file to write.
    request: officer::RequestFiles,
    /// `backup export --out`: the file to write.
    out: Option<std::fs::File>,
}

impl Files {
    fn read(command: &KeysCommand) -> Result<Files, Failure> {
        let mut f = Files::default();
        let approvals = |p: &Option<PathBuf>| p.as_deref().map(RequestFile::read).transpose();
        match command {
            KeysCommand::ImportCert { file, who, .. } => {
                f.certificate = Some(keys::read_certificate(file)?);
                f.credential = Credential::open(who)?;
            }
            KeysCommand::ImportPseudonymKey { value_file, approvals: a } => {
                let text = std::fs::read_to_string(value_file).map_err(|e| Failure::usage(format!("{}: {e}", value_file.display())))?;
                f.pseudonym_key = Some(zeroize::Zeroizing::new(text));
                f.approvals = approvals(a)?;
            }
            KeysCommand::Csr { out: Some(p), .. } => f.csr_out = Some(std::fs::File::create(p).map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?),
            KeysCommand::Generate { who, .. } | KeysCommand::GenerateAll { who } => f.credential = Credential::open(who)?,
            KeysCommand::Rotate { approvals: a, who, .. } => {
                f.approvals = approvals(a)?;
                f.credential = Credential::open(who)?;
            }
            KeysCommand::Retire { approvals: a, .. } | KeysCommand::Destroy { approvals: a, .. } => f.approvals = Some(RequestFile::read(a)?),
            KeysCommand::Request { what, out, .. } => f.request = officer::RequestFiles::read(what, out.as_deref())?,
            KeysCommand::Backup { command: officer::BackupCommand::Export { out, who } } => {
                f.out = Some(crate::officers::create_private(out)?);
                f.credential = Credential::open(who)?;
            }
            _ => {}
        }
        Ok(f)
    }
}

fn keys_on_token(hsm: &Arc<medgate_hsm::Hsm>, site: Option<&Site>, state: Option<&Path>, command: KeysCommand, files: Files) -> Result<(), Failure> {
    match command {
        KeysCommand::Generate { role, .. } => {
            let acting = officers::acting(site, files.credential.as_ref(), "generate", Some(role.as_str()), Some(1))?;
            let info = hsm.generate(role).map_err(Failure::hsm)?;
            acting.record(state, "generate", &info)?;
            println!("generated {} (CKA_ID {}){}", info.label, info.id_hex, protection_note(&info));
        }
        KeysCommand::GenerateAll { .. } => {
            let credential = files.credential;
            let existing = hsm.list_keys().map_err(Failure::hsm)?;
            for role in Role::ALL {
                if existing.iter().any(|k| k.role == role) {
                    println!("{role}: present, left as is");
                    continue;
                }
                let acting = officers::acting(site, credential.as_ref(), "generate", Some(role.as_str()), Some(1))?;
                let info = hsm.generate(role).map_err(Failure::hsm)?;
                acting.record(state, "generate", &info)?;
                println!("generated {} (CKA_ID {}){}", info.label, info.id_hex, protection_note(&info));
            }
        }
        KeysCommand::List { json } => keys::list(hsm, json)?,
        KeysCommand::Rotate { role, .. } => rotate(hsm, site, state, role, files.approvals.as_ref(), files.credential.as_ref())?,
        KeysCommand::Retire { role, version, .. } => {
            let info = keys::role_key(hsm, role, version)?;
            let ok = quorum(site, "retire", Some(role), Some(version), None, files.approvals.as_ref())?;
            hsm.retire(role, version).map_err(Failure::hsm)?;
            ok.record("retire", role.as_str(), version, &info.id_hex)?;
            println!("{} retired (approved by {})", info.label, ok.officer);
        }
        KeysCommand::Destroy { role, version, yes, .. } => {
            let info = keys::role_key(hsm, role, version)?;
            keys::confirm(&info.label, yes)?;
            let ok = quorum(site, "destroy", Some(role), Some(version), None, files.approvals.as_ref())?;
            let n = hsm.destroy(role, version).map_err(Failure::hsm)?;
            ok.record("destroy", role.as_str(), version, &info.id_hex)?;
            println!("{} destroyed ({n} objects; approved by {})", info.label, ok.officer);
        }
        KeysCommand::Csr { role, subject, dns, out } => {
            if !matches!(role, Role::Tls | Role::Ledger) {
                return Err(Failure::usage(format!("{role} keys cannot sign a CSR (use tls or ledger)")));
            }
            let dn = medgate_gateway::pki::parse_subject(&subject).map_err(Failure::usage)?;
            let pem = medgate_gateway::pki::csr_for_hsm_key(hsm.clone(), role, dn, &dns).map_err(|e| Failure::runtime(e.to_string()))?;
            match (out, files.csr_out) {
                (Some(p), Some(mut f)) => std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?,
                _ => print!("{pem}"),
            }
        }
        KeysCommand::ImportCert { role, file, .. } => {
            let der = files.certificate.unwrap_or_default();
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| Failure::usage(format!("{}: not an X.509 certificate: {e}", file.display())))?;
            if !cert.validity().is_valid() {
                return Err(Failure::usage(format!("{}: the certificate is not valid now ({:?})", file.display(), cert.validity())));
            }
            let acting = officers::acting(site, files.credential.as_ref(), "import-cert", Some(role.as_str()), None)?;
            let subject = cert.subject().as_raw().to_vec();
            let version = hsm.import_certificate(role, &der, &subject).map_err(Failure::hsm)?;
            let info = keys::role_key(hsm, role, version)?;
            acting.record(state, "import-cert", &info)?;
            println!("certificate for {} imported: {}", info.label, cert.subject());
        }
        KeysCommand::ImportPseudonymKey { value_file, .. } => {
            let text = files.pseudonym_key.unwrap_or_default();
            let value = zeroize::Zeroizing::new(hex::decode(text.trim()).map_err(|_| Failure::usage(format!("{}: not hex", value_file.display())))?);
            import_pseudonym_key(hsm, site, state, &value_file, &value, files.approvals.as_ref())?
        }
        KeysCommand::PublicKey { role, version } => {
            let (_, pem) = hsm.public_key_pem(role, version).map_err(Failure::hsm)?;
            print!("{pem}");
        }
        _ => unreachable!("handled before the token is opened"),
    }
    Ok(())
}

/// `keys rotate`: the KEK under a quorum, the other roles by one named officer.
fn rotate(hsm: &medgate_hsm::Hsm, site: Option<&Site>, state: Option<&Path>, role: Role, approvals: Option<&RequestFile>, credential: Option<&Credential>) -> Result<(), Failure> {
    if role == Role::Pseudonym {
        eprintln!("note: new pseudonyms will differ from those already on the ledger; searches use the key version recorded with each entry");
    }
    let next = hsm.list_keys().map_err(Failure::hsm)?.iter().filter(|k| k.role == role).map(|k| k.version).max().unwrap_or(0) + 1;
    let acting = match (role, approvals) {
        (Role::Kek, Some(file)) => Acting::Officer(quorum(site, "rotate-kek", Some(role), Some(next), None, Some(file))?),
        (Role::Kek, None) => {
            return Err(officers::refused("rotating the KEK needs the approval of a quorum of officers: `medgate keys request rotate-kek`, then --approvals FILE"))
        }
        _ => officers::acting(site, credential, "rotate", Some(role.as_str()), Some(next))?,
    };
    let info = hsm.rotate(role).map_err(Failure::hsm)?;
    acting.record(state, "rotate", &info)?;
    println!("{} is now active (CKA_ID {}); older versions keep decrypting and verifying until retired", info.label, info.id_hex);
    Ok(())
}

/// `keys import-pseudonym-key`: under a quorum once officers are enrolled.
fn import_pseudonym_key(hsm: &medgate_hsm::Hsm, site: Option<&Site>, state: Option<&Path>, value_file: &Path, value: &[u8], approvals: Option<&RequestFile>) -> Result<(), Failure> {
    let detail = hex::encode(ring::digest::digest(&ring::digest::SHA256, value));
    let acting = match approvals {
        Some(file) => Acting::Officer(quorum(site, "import-key", Some(Role::Pseudonym), Some(1), Some(detail), Some(file))?),
        None => officers::acting(site, None, "import-key", None, None).map_err(|_| {
            officers::refused("officers are enrolled: importing a key needs the approval of a quorum (`medgate keys request import-key`, then --approvals FILE)")
        })?,
    };
    let info = hsm.import_pseudonym_key(value).map_err(Failure::hsm)?;
    acting.record(state, "generate", &info)?;
    println!("imported {} (CKA_ID {}); destroy {} now", info.label, info.id_hex, value_file.display());
    Ok(())
}

/// How a new key is protected, for the officer.
fn protection_note(info: &medgate_hsm::KeyInfo) -> &'static str {
    if info.wrap_with_trusted {
        "; sensitive, leaves the token only wrapped under the trusted backup key"
    } else {
        "; sensitive, never extractable"
    }
}
