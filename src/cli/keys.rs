//! `medgate keys`: the security officer's console over the HSM token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use medgate_gateway::config::HsmOnly;
use medgate_hsm::{Pin, Role};

use super::parse_role;
use crate::exit::Failure;
use crate::keys;

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Initialise an empty token in the HSM (labelled [hsm] token_label) and set the user PIN
    /// from [hsm] pin_file. Production HSMs are often initialised with the vendor's tool instead.
    InitToken {
        /// File holding the security officer PIN to set (mode 0600).
        #[arg(long)]
        so_pin_file: PathBuf,
    },
    /// Create version 1 of a key role.
    Generate {
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Create every missing role (ledger, tls, kek, sharing, pseudonym).
    GenerateAll,
    /// List medgate's keys and their protection.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create the next version of a role and make it active; older versions keep decrypting and verifying.
    Rotate {
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Take an old version out of use entirely (the active version cannot be retired).
    Retire {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        version: u32,
    },
    /// Destroy a version for ever (asks for confirmation; --yes when not on a terminal).
    Destroy {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        version: u32,
        /// Do not ask; required when stdin is not a terminal.
        #[arg(long)]
        yes: bool,
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
    },
    /// Key ceremony: import the consortium's shared pseudonym key (32 bytes, hex, in a file) as
    /// version 1, sensitive and never extractable, so one patient has one pseudonym across the
    /// consortium. Only before any pseudonym key exists; destroy the file afterwards.
    ImportPseudonymKey {
        /// File holding the key as 64 hex characters (mode 0600).
        #[arg(long)]
        value_file: PathBuf,
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
    // As root, the PIN the unit gets (its credential), read before acting as the service.
    crate::account::adopt_unit_credential(path, cfg.hsm.pin_file.as_deref());
    let user = Pin::resolve(cfg.hsm.pin_file.as_deref());
    let so = match &command {
        KeysCommand::InitToken { so_pin_file } => Some(Pin::from_file(so_pin_file).map_err(|e| Failure::usage(e.to_string()))?),
        _ => None,
    };
    let files = Files::read(&command)?;
    keys::act_as_service(path, state)?;
    let user = user.map_err(|e| Failure::config(e.to_string()))?;
    if let Some(so) = so {
        medgate_hsm::admin::init_token(&cfg.hsm.module, &cfg.hsm.token_label, &so, &user).map_err(Failure::hsm)?;
        tracing::info!(officer = %keys::officer(), token = %cfg.hsm.token_label, "token initialised");
        println!("token {:?} initialised; the user PIN is the one in the configured PIN file", cfg.hsm.token_label);
        return Ok(());
    }
    let hsm = keys::open_hsm_with(&cfg, user)?;
    let result = keys_on_token(&hsm, state, command, files);
    hsm.shutdown();
    result
}

/// The files a command reads or writes, opened as the officer who started it (root may read
/// what the service's user may not), before the command acts as the service.
#[derive(Debug, Default)]
struct Files {
    /// `import-cert`: the certificate, DER.
    certificate: Option<Vec<u8>>,
    /// `import-pseudonym-key`: the file's text.
    pseudonym_key: Option<zeroize::Zeroizing<String>>,
    /// `csr --out`: the file to write.
    csr_out: Option<std::fs::File>,
}

impl Files {
    fn read(command: &KeysCommand) -> Result<Files, Failure> {
        let mut f = Files::default();
        match command {
            KeysCommand::ImportCert { file, .. } => f.certificate = Some(keys::read_certificate(file)?),
            KeysCommand::ImportPseudonymKey { value_file } => {
                let text = std::fs::read_to_string(value_file).map_err(|e| Failure::usage(format!("{}: {e}", value_file.display())))?;
                f.pseudonym_key = Some(zeroize::Zeroizing::new(text));
            }
            KeysCommand::Csr { out: Some(p), .. } => f.csr_out = Some(std::fs::File::create(p).map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?),
            _ => {}
        }
        Ok(f)
    }
}

fn keys_on_token(hsm: &Arc<medgate_hsm::Hsm>, state: Option<&Path>, command: KeysCommand, files: Files) -> Result<(), Failure> {
    match command {
        KeysCommand::InitToken { .. } => unreachable!("handled before the token is opened"),
        KeysCommand::Generate { role } => {
            let info = hsm.generate(role).map_err(Failure::hsm)?;
            keys::record_event(state, "generate", &info)?;
            println!("generated {} (CKA_ID {})", info.label, info.id_hex);
        }
        KeysCommand::GenerateAll => {
            let existing = hsm.list_keys().map_err(Failure::hsm)?;
            for role in Role::ALL {
                if existing.iter().any(|k| k.role == role) {
                    println!("{role}: present, left as is");
                    continue;
                }
                let info = hsm.generate(role).map_err(Failure::hsm)?;
                keys::record_event(state, "generate", &info)?;
                println!("generated {} (CKA_ID {})", info.label, info.id_hex);
            }
        }
        KeysCommand::List { json } => {
            let keys = hsm.list_keys().map_err(Failure::hsm)?;
            if json {
                let v: Vec<_> = keys.iter().map(keys::key_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Failure::runtime(e.to_string()))?);
            } else {
                keys::print_table(&keys);
            }
        }
        KeysCommand::Rotate { role } => {
            if role == Role::Pseudonym {
                eprintln!("note: new pseudonyms will differ from those already on the ledger; searches use the key version recorded with each entry");
            }
            let info = hsm.rotate(role).map_err(Failure::hsm)?;
            keys::record_event(state, "rotate", &info)?;
            println!("{} is now active (CKA_ID {}); older versions keep decrypting and verifying until retired", info.label, info.id_hex);
        }
        KeysCommand::Retire { role, version } => {
            let info = keys::role_key(hsm, role, version)?;
            hsm.retire(role, version).map_err(Failure::hsm)?;
            keys::record_event(state, "retire", &info)?;
            println!("{} retired", info.label);
        }
        KeysCommand::Destroy { role, version, yes } => {
            let info = keys::role_key(hsm, role, version)?;
            keys::confirm(&info.label, yes)?;
            let n = hsm.destroy(role, version).map_err(Failure::hsm)?;
            keys::record_event(state, "destroy", &info)?;
            println!("{} destroyed ({n} objects)", info.label);
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
        KeysCommand::ImportCert { role, file } => {
            let der = files.certificate.unwrap_or_default();
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| Failure::usage(format!("{}: not an X.509 certificate: {e}", file.display())))?;
            if !cert.validity().is_valid() {
                return Err(Failure::usage(format!("{}: the certificate is not valid now ({:?})", file.display(), cert.validity())));
            }
            let subject = cert.subject().as_raw().to_vec();
            let version = hsm.import_certificate(role, &der, &subject).map_err(Failure::hsm)?;
            let info = keys::role_key(hsm, role, version)?;
            keys::record_event(state, "import-cert", &info)?;
            println!("certificate for {} imported: {}", info.label, cert.subject());
        }
        KeysCommand::ImportPseudonymKey { value_file } => {
            let text = files.pseudonym_key.unwrap_or_default();
            let value = zeroize::Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| Failure::usage(format!("{}: not hex", value_file.display())))?,
            );
            let info = hsm.import_pseudonym_key(&value).map_err(Failure::hsm)?;
            keys::record_event(state, "generate", &info)?;
            println!("imported {} (CKA_ID {}); destroy {} now", info.label, info.id_hex, value_file.display());
        }
        KeysCommand::PublicKey { role, version } => {
            let (_, pem) = hsm.public_key_pem(role, version).map_err(Failure::hsm)?;
            print!("{pem}");
        }
    }
    Ok(())
}
