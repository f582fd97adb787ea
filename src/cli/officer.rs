//! `medgate keys request | approve | officers | backup | history | change-pin | officer-key |
//! officer-card`: the officers' own commands. The quorum rules are `crate::officers`; disaster
//! recovery is `crate::backup`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use medgate_gateway::config::HsmOnly;
use medgate_gateway::journal::{self, Line, OfficerRecord};
use medgate_hsm::{Hsm, Pin, Role};
use medgate_ledger::officers::{self as rules, OfficerSet, Request};
use zeroize::Zeroizing;

use super::parse_role;
use crate::exit::Failure;
use crate::officers::{self, Credential, CredentialArgs, RequestFile, Rule, Site};

/// What a request is for (`medgate keys request ...`).
#[derive(Debug, Subcommand)]
pub(crate) enum RequestKind {
    /// Destroy a key version.
    Destroy {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        version: u32,
    },
    /// Retire a key version.
    Retire {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        version: u32,
    },
    /// Rotate the KEK (the request names the version the rotation will make).
    RotateKek,
    /// Import the consortium's shared pseudonym key (the request names its SHA-256).
    ImportKey {
        /// The key file that will be imported (64 hex characters).
        #[arg(long)]
        value_file: PathBuf,
    },
    /// Change the user PIN, or the SO PIN with --so.
    ChangePin {
        #[arg(long)]
        so: bool,
    },
    /// The first enrolment: every officer's card and the quorum M. Every officer listed approves.
    OfficersInit {
        /// M: how many officers must approve an operation that could make records unreadable.
        #[arg(long)]
        quorum: u32,
        /// An officer's card (`medgate keys officer-key` or `officer-card`); one per officer.
        #[arg(long = "officer-card", value_name = "FILE", required = true)]
        cards: Vec<PathBuf>,
    },
    /// Enrol one more officer (a quorum approves, and the new officer too).
    OfficerAdd {
        #[arg(long = "officer-card", value_name = "FILE")]
        card: PathBuf,
    },
    /// Remove an officer.
    OfficerRemove {
        #[arg(long)]
        officer: String,
    },
    /// Change the quorum M.
    SetQuorum {
        #[arg(long)]
        quorum: u32,
    },
    /// Set up the backup key, split between the officers enrolled now.
    BackupInit,
}

#[derive(Debug, Subcommand)]
pub(crate) enum OfficersCommand {
    /// The enrolled officers and the quorum (a table, or --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// The first enrolment, approved by every officer it lists.
    Init {
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
    },
    /// Enrol an officer, approved by a quorum and by the new officer.
    Add {
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
    },
    /// Remove an officer, approved by a quorum.
    Remove {
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
    },
    /// Change the quorum, approved by a quorum.
    Quorum {
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Make the backup key: one encrypted share per enrolled officer in DIR (M recombine it),
    /// the key installed on the token by the security officer. A quorum approves.
    Init {
        #[arg(long, value_name = "FILE")]
        approvals: PathBuf,
        /// The token's SO PIN (mode 0600): only the SO can mark the backup key trusted.
        #[arg(long, value_name = "FILE")]
        so_pin_file: PathBuf,
        /// Where to write the shares (one file per officer; each officer takes theirs away).
        #[arg(long, value_name = "DIR")]
        shares_dir: PathBuf,
    },
    /// Whether the token holds the backup key, which keys a backup would hold and which it
    /// cannot (made before the backup key), and the last backup in the journal.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write a key backup: every backed-up key wrapped under the backup key, signed by the
    /// ledger key. Take one after every key change and every shred pass.
    Export {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        who: CredentialArgs,
    },
    /// Restore a key backup into a fresh token: M officers open their shares with their
    /// credentials. Stop the gateway first; restore the state directory from its backup first.
    Restore {
        /// The key backup file.
        #[arg(long, value_name = "FILE")]
        backup: PathBuf,
        /// The hospital's ledger public key (PEM), kept apart from the appliance: it checks the
        /// backup's signature.
        #[arg(long, value_name = "FILE")]
        ledger_public_key: PathBuf,
        /// An officer's share (repeat; at least M).
        #[arg(long = "share", value_name = "FILE", required = true)]
        shares: Vec<PathBuf>,
        /// An officer's key file (repeat; matched to the shares by key).
        #[arg(long = "officer-key", value_name = "FILE")]
        officer_keys: Vec<PathBuf>,
        /// An officer's smart card (repeat): module=PATH,token=LABEL,id=HEX,pin-file=FILE.
        #[arg(long = "card", value_name = "SPEC")]
        cards: Vec<String>,
        /// The fresh token's SO PIN (mode 0600).
        #[arg(long, value_name = "FILE")]
        so_pin_file: PathBuf,
    },
}

/// Whether a backup command needs the HSM pool (the others log in on their own, as the SO).
pub(crate) fn needs_pool(command: &BackupCommand) -> bool {
    matches!(command, BackupCommand::Export { .. } | BackupCommand::Status { .. })
}

fn site(cfg: &HsmOnly) -> Result<Site, Failure> {
    Site::of(cfg)
}

/// Reads a key value file (64 hex characters).
pub(crate) fn read_key_value(path: &Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?);
    Ok(Zeroizing::new(hex::decode(text.trim()).map_err(|_| Failure::usage(format!("{}: not hex", path.display())))?))
}

/// A request's operation and parameters, and the officers it enrols.
struct Spec(&'static str, Option<Role>, Option<u32>, Option<String>, Option<OfficerSet>, Option<rules::Officer>);

/// What `medgate keys request` reads from files and the file it writes, opened as the officer
/// who started it.
#[derive(Debug, Default)]
pub(crate) struct RequestFiles {
    /// `import-key`: the key to be imported.
    value: Option<Zeroizing<Vec<u8>>>,
    /// `officers-init`, `officer-add`: the officers' cards.
    cards: Vec<rules::Officer>,
    /// `--out`, and the file.
    out: Option<(PathBuf, std::fs::File)>,
}

impl RequestFiles {
    pub(crate) fn read(what: &RequestKind, out: Option<&Path>) -> Result<RequestFiles, Failure> {
        let mut f = RequestFiles::default();
        match what {
            RequestKind::ImportKey { value_file } => f.value = Some(read_key_value(value_file)?),
            RequestKind::OfficersInit { cards, .. } => f.cards = cards.iter().map(|c| officers::read_card(c)).collect::<Result<_, _>>()?,
            RequestKind::OfficerAdd { card } => f.cards = vec![officers::read_card(card)?],
            _ => {}
        }
        let out = out.ok_or_else(|| Failure::usage("--out FILE is required"))?;
        f.out = Some((out.to_path_buf(), std::fs::File::create(out).map_err(|e| Failure::usage(format!("{}: {e}", out.display())))?));
        Ok(f)
    }
}

/// `medgate keys request ...`.
pub(crate) fn request(cfg: &HsmOnly, hsm: &Hsm, what: RequestKind, files: RequestFiles, valid_for: &str) -> Result<(), Failure> {
    let site = site(cfg)?;
    let validity = officers::parse_validity(valid_for)?;
    let (out, handle) = files.out.ok_or_else(|| Failure::usage("--out FILE is required"))?;
    let current = site.officers()?.officers;
    let mut cards = files.cards.into_iter();
    let Spec(op, role, version, detail, set, card) = match what {
        RequestKind::Destroy { role, version } => Spec("destroy", Some(role), Some(version), None, None, None),
        RequestKind::Retire { role, version } => Spec("retire", Some(role), Some(version), None, None, None),
        RequestKind::RotateKek => {
            let next = hsm.list_keys().map_err(Failure::hsm)?.iter().filter(|k| k.role == Role::Kek).map(|k| k.version).max().unwrap_or(0) + 1;
            Spec("rotate-kek", Some(Role::Kek), Some(next), None, None, None)
        }
        RequestKind::ImportKey { .. } => {
            let value = files.value.unwrap_or_default();
            Spec("import-key", Some(Role::Pseudonym), Some(1), Some(hex::encode(ring::digest::digest(&ring::digest::SHA256, &value))), None, None)
        }
        RequestKind::ChangePin { so } => Spec("change-pin", None, None, Some(if so { "so" } else { "user" }.to_owned()), None, None),
        RequestKind::OfficersInit { quorum, .. } => {
            let set = OfficerSet { quorum, officers: cards.collect() };
            set.check().map_err(|e| Failure::usage(e.to_string()))?;
            Spec("officers-init", None, None, Some(set.digest()), Some(set), None)
        }
        RequestKind::OfficerAdd { .. } => {
            let o = cards.next().ok_or_else(|| Failure::usage("--officer-card FILE"))?;
            Spec("officer-add", None, None, Some(o.digest()), None, Some(o))
        }
        RequestKind::OfficerRemove { officer } => {
            let o = current.officers.iter().find(|o| o.name == officer).ok_or_else(|| Failure::usage(format!("no enrolled officer is named {officer}")))?;
            Spec("officer-remove", None, None, Some(o.key_id()), None, None)
        }
        RequestKind::SetQuorum { quorum } => Spec("set-quorum", None, None, Some(quorum.to_string()), None, None),
        RequestKind::BackupInit => Spec("backup-init", None, None, Some(current.digest()), Some(current), None),
    };
    let request = officers::new_request(&site, op, role.map(|r| r.to_string()), version, detail, validity)?;
    let file = RequestFile { request, approvals: Vec::new(), officers: set, officer: card };
    file.write_to(handle, &out)?;
    eprint!("{}", file.describe());
    println!("request {} written to {}; each officer approves it with `medgate keys approve {}`", file.request.id(), out.display(), out.display());
    Ok(())
}

/// `medgate keys approve FILE`.
pub(crate) fn approve(cfg: &HsmOnly, path: &Path, who: &CredentialArgs) -> Result<(), Failure> {
    let credential = Credential::open(who)?.ok_or_else(|| Failure::usage("approve with your credential: --officer-key FILE or --card SPEC"))?;
    let mut file = RequestFile::read(path)?;
    let site = site(cfg)?;
    if file.request.hospital != site.hospital || file.request.token != site.token {
        return Err(Failure::usage(format!("the request is for hospital {} token {:?}, not this appliance's", file.request.hospital, file.request.token)));
    }
    file.request.check_window(officers::now()).map_err(officers::refused)?;
    let approval = credential.approve(&file.request)?;
    let state = site.officers()?;
    let name = state
        .officers
        .by_key(&approval.officer_key)
        .or_else(|| file.officers.as_ref().and_then(|s| s.by_key(&approval.officer_key)))
        .or(file.officer.as_ref().filter(|o| o.key_id() == approval.officer_key))
        .map(|o| o.name.clone())
        .ok_or_else(|| officers::refused("this credential is not an enrolled officer's (nor one this request enrols)"))?;
    eprint!("{}", file.describe());
    file.approvals.retain(|a| a.officer_key != approval.officer_key);
    file.approvals.push(approval);
    file.write(path)?;
    println!("approved by {name}; {} approval(s) on the request", file.approvals.len());
    Ok(())
}

/// `medgate keys officers ...`.
pub(crate) fn officers(cfg: &HsmOnly, command: OfficersCommand, become_service: &dyn Fn() -> Result<(), Failure>) -> Result<(), Failure> {
    let site = site(cfg)?;
    let (file, action) = match command {
        OfficersCommand::List { json } => return list_officers(&site, json),
        OfficersCommand::Init { approvals } => (RequestFile::read(&approvals)?, "init"),
        OfficersCommand::Add { approvals } => (RequestFile::read(&approvals)?, "add"),
        OfficersCommand::Remove { approvals } => (RequestFile::read(&approvals)?, "remove"),
        OfficersCommand::Quorum { approvals } => (RequestFile::read(&approvals)?, "quorum"),
    };
    become_service()?;
    let current = site.officers()?.officers;
    let r = &file.request;
    let operation = match action {
        "init" => "officers-init",
        "add" => "officer-add",
        "remove" => "officer-remove",
        _ => "set-quorum",
    };
    // The parameters are the request's own (its detail digests the officers it names, checked
    // when the file was read); the operation must be this one.
    let asked = Request { operation: operation.into(), ..r.clone() };
    let time = medgate_gateway::clock::now_rfc3339();
    let record = |action: &str, officer: Option<rules::Officer>, quorum: u32| {
        Line::Officer(OfficerRecord { time: time.clone(), action: action.into(), officer, quorum, request: r.id() })
    };
    match action {
        "init" => {
            let set = file.officers.clone().ok_or_else(|| Failure::usage("the request carries no officer set"))?;
            if !current.officers.is_empty() {
                return Err(officers::refused("officers are already enrolled: add or remove them one by one"));
            }
            // The rules the ledger replays (quorum of at least 2, distinct keys, at most 32
            // officers): a set they would refuse is never recorded as enrolled.
            set.check().map_err(|e| Failure::usage(e.to_string()))?;
            let ok = officers::authorize(&site, &asked, &file, Rule::AllOf, Some(&set))?;
            ok.record_lines(&set.officers.iter().map(|o| record("enrol", Some(o.clone()), set.quorum)).collect::<Vec<_>>())?;
            println!("{} officers enrolled; {} of them must approve what could make records unreadable", set.officers.len(), set.quorum);
        }
        "add" => {
            let new = file.officer.clone().ok_or_else(|| Failure::usage("the request carries no officer card"))?;
            let mut after = current.clone();
            after.officers.push(new.clone());
            after.check().map_err(|e| Failure::usage(e.to_string()))?;
            let ok = officers::authorize(&site, &asked, &file, Rule::Enrol(&new), None)?;
            ok.record_lines(&[record("enrol", Some(new.clone()), current.quorum)])?;
            println!("officer {} enrolled (approved by {}); {} of {} must approve", new.name, ok.officer, after.quorum, after.officers.len());
        }
        "remove" => {
            let gone = current.officers.iter().find(|o| Some(o.key_id()) == r.detail).cloned().ok_or_else(|| Failure::usage("the request names no enrolled officer"))?;
            let mut after = current.clone();
            after.officers.retain(|o| o.name != gone.name);
            after.check().map_err(|e| Failure::usage(format!("{e}: lower the quorum first")))?;
            let ok = officers::authorize(&site, &asked, &file, Rule::Quorum, None)?;
            ok.record_lines(&[record("remove", Some(gone.clone()), current.quorum)])?;
            println!("officer {} removed (approved by {})", gone.name, ok.officer);
        }
        _ => {
            let quorum: u32 = r.detail.as_deref().and_then(|d| d.parse().ok()).ok_or_else(|| Failure::usage("the request names no quorum"))?;
            let after = OfficerSet { quorum, ..current.clone() };
            after.check().map_err(|e| Failure::usage(e.to_string()))?;
            let ok = officers::authorize(&site, &asked, &file, Rule::Quorum, None)?;
            ok.record_lines(&[record("quorum", None, quorum)])?;
            println!("the quorum is now {quorum} of {} (approved by {})", after.officers.len(), ok.officer);
        }
    }
    Ok(())
}

/// `medgate keys officers list`.
pub(crate) fn list(cfg: &HsmOnly, json: bool) -> Result<(), Failure> {
    list_officers(&site(cfg)?, json)
}

fn list_officers(site: &Site, json: bool) -> Result<(), Failure> {
    let state = site.officers()?;
    let set = &state.officers;
    if json {
        let v = serde_json::json!({
            "quorum": set.quorum,
            "officers": set.officers.iter().map(|o| serde_json::json!({"name": o.name, "key_id": o.key_id(), "public_key": o.public_key})).collect::<Vec<_>>(),
            "problems": state.problems.iter().map(|(e, w)| serde_json::json!({"entry": e, "problem": w})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Failure::runtime(e.to_string()))?);
        return Ok(());
    }
    if set.officers.is_empty() {
        println!("(no officers enrolled: README, \"Key ceremony\")");
    } else {
        println!("quorum: {} of {}", set.quorum, set.officers.len());
        println!("{:<24} KEY ID", "OFFICER");
        for o in &set.officers {
            println!("{:<24} {}", o.name, o.key_id());
        }
    }
    for (entry, why) in &state.problems {
        println!("PROBLEM (journal line {entry}): {why}");
    }
    Ok(())
}

/// `medgate keys backup init | restore`: they log in on their own (as the SO, or into a fresh
/// token). The officers' files are read first, then the command acts as the service.
pub(crate) fn backup_alone(
    cfg: &HsmOnly,
    user: Result<Pin, medgate_hsm::PinError>,
    command: BackupCommand,
    become_service: &dyn Fn() -> Result<(), Failure>,
) -> Result<(), Failure> {
    let site = site(cfg)?;
    match command {
        BackupCommand::Init { approvals, so_pin_file, shares_dir } => {
            let so = Pin::from_file(&so_pin_file).map_err(|e| Failure::usage(e.to_string()))?;
            let set = site.officers()?.officers;
            let file = RequestFile::read(&approvals)?;
            let shares = crate::backup::create_share_files(&shares_dir, &set)?;
            let asked = Request { operation: "backup-init".into(), role: None, version: None, detail: Some(set.digest()), ..file.request.clone() };
            let ok = become_service()
                .and_then(|()| officers::authorize(&site, &asked, &file, Rule::Quorum, None))
                .map_err(|e| crate::backup::nothing_written(e, &shares))?;
            let (id, paths) = crate::backup::init(&site, &cfg.hsm.module, &set, &so, shares)?;
            ok.record("backup-init", "backup", 1, &id)?;
            for p in &paths {
                println!("share written: {}", p.display());
            }
            println!("backup key {id} installed; {} of the {} shares recombine it. Each officer takes their share away; then `medgate keys backup export`", set.quorum, set.officers.len());
        }
        BackupCommand::Restore { backup, ledger_public_key, shares, officer_keys, cards, so_pin_file } => {
            let so = Pin::from_file(&so_pin_file).map_err(|e| Failure::usage(e.to_string()))?;
            let user = user.map_err(|e| Failure::config(e.to_string()))?;
            let mut credentials = Vec::new();
            for k in &officer_keys {
                credentials.push(Credential::from_file(k)?);
            }
            for c in &cards {
                credentials.push(Credential::from_card(c)?);
            }
            let input = crate::backup::RestoreInput::read(&backup, &ledger_public_key, &shares, credentials)?;
            become_service()?;
            let (who, n, skipped) = crate::backup::restore(&site, input, &cfg.hsm.module, &so, &user)?;
            let ev = journal::key_event(&who.join("+"), "restore", "backup", 1, "-", None);
            journal::append(&site.state_dir, &[Line::Key(ev)]).map_err(|e| Failure::runtime(e.to_string()))?;
            for s in &skipped {
                println!("not restored: {s} (destroyed, per the journal)");
            }
            println!("{n} keys restored into token {:?} with the shares of {}. Next: a new tls key and certificate (`medgate keys generate --role tls`, `csr`, `import-cert`)", site.token, who.join(", "));
        }
        BackupCommand::Export { .. } | BackupCommand::Status { .. } => unreachable!("these open the HSM's pool"),
    }
    Ok(())
}

/// `medgate keys backup export | status`, on the HSM's pool; the output file and the officer's
/// credential were opened before the command acted as the service.
pub(crate) fn backup_with_pool(cfg: &HsmOnly, hsm: &Hsm, command: BackupCommand, out: Option<std::fs::File>, credential: Option<Credential>) -> Result<(), Failure> {
    let site = site(cfg)?;
    match command {
        BackupCommand::Status { json } => backup_status(&site, hsm, json)?,
        BackupCommand::Export { out: path, .. } => {
            let acting = officers::acting(Some(&site), credential.as_ref(), "backup", None, None)?;
            let out = out.ok_or_else(|| Failure::runtime("the backup file is not open"))?;
            let n = crate::backup::export(&site, hsm, out, &path)?;
            let id = hsm.backup_key_id().map_err(Failure::hsm)?.unwrap_or_default();
            match &acting {
                officers::Acting::Officer(a) => a.record("backup", "backup", 1, &id)?,
                officers::Acting::Login(name) => {
                    let ev = journal::key_event(name, "backup", "backup", 1, &id, None);
                    journal::append(&site.state_dir, &[Line::Key(ev)]).map_err(|e| Failure::runtime(e.to_string()))?;
                }
            }
            println!("{n} keys backed up to {} (wrapped under backup key {id}, signed by the ledger key)", path.display());
        }
        BackupCommand::Init { .. } | BackupCommand::Restore { .. } => unreachable!("these log in on their own"),
    }
    Ok(())
}

fn backup_status(site: &Site, hsm: &Hsm, json: bool) -> Result<(), Failure> {
    let id = hsm.backup_key_id().map_err(Failure::hsm)?;
    let keys = hsm.list_keys().map_err(Failure::hsm)?;
    let backed: Vec<&medgate_hsm::KeyInfo> = keys.iter().filter(|k| !k.retired && medgate_hsm::backup::BACKED_UP.contains(&k.role)).collect();
    let (ok, not): (Vec<&&medgate_hsm::KeyInfo>, Vec<&&medgate_hsm::KeyInfo>) = backed.iter().partition(|k| k.wrap_with_trusted);
    let events = journal::read_events(&site.state_dir).map_err(|e| Failure::runtime(e.to_string()))?;
    let last = events.iter().rev().find(|e| e.action == "backup").map(|e| e.time.clone());
    let changed = events.iter().rev().find(|e| e.action != "backup" && e.role != "tls" && e.action != "import-cert").map(|e| e.time.clone());
    let stale = match (&last, &changed) {
        (Some(b), Some(c)) => c > b,
        (None, _) => true,
        _ => false,
    };
    if json {
        let v = serde_json::json!({
            "backup_key": id,
            "backed_up": ok.iter().map(|k| &k.label).collect::<Vec<_>>(),
            "cannot_be_backed_up": not.iter().map(|k| &k.label).collect::<Vec<_>>(),
            "last_backup": last,
            "keys_changed_since": stale,
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Failure::runtime(e.to_string()))?);
        return Ok(());
    }
    match &id {
        Some(id) => println!("backup key      medgate-backup-v1 (CKA_ID {id})"),
        None => println!("backup key      none: `medgate keys backup init` (README, \"Disaster recovery\")"),
    }
    println!("in a backup     {}", if ok.is_empty() { "-".to_owned() } else { ok.iter().map(|k| k.label.as_str()).collect::<Vec<_>>().join(", ") });
    if !not.is_empty() {
        println!("NOT backed up   {} (made before the backup key: rotate, then destroy them once nothing needs them)", not.iter().map(|k| k.label.as_str()).collect::<Vec<_>>().join(", "));
    }
    println!("last backup     {}", last.as_deref().unwrap_or("never"));
    if stale {
        println!("keys changed since the last backup (or a shred pass ran): take a new backup");
    }
    Ok(())
}

/// `medgate keys history`: the journal's key events, per key.
pub(crate) fn history(cfg: &HsmOnly, role: Option<Role>, version: Option<u32>, json: bool) -> Result<(), Failure> {
    let dir = cfg.state_directory.clone().ok_or_else(|| Failure::config("[gateway] state_directory is needed: the journal is there"))?;
    let events: Vec<_> = journal::read_events(&dir)
        .map_err(|e| Failure::runtime(e.to_string()))?
        .into_iter()
        .filter(|e| role.is_none_or(|r| e.role == r.as_str()))
        .filter(|e| version.is_none_or(|v| e.version == v))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&events).map_err(|e| Failure::runtime(e.to_string()))?);
        return Ok(());
    }
    println!("{:<25} {:<10} {:>3}  {:<12} {:<32} {:<24} REQUEST", "TIME", "ROLE", "VER", "ACTION", "CKA_ID", "OFFICER");
    for e in &events {
        println!(
            "{:<25} {:<10} {:>3}  {:<12} {:<32} {:<24} {}",
            e.time,
            e.role,
            e.version,
            e.action,
            e.key_id,
            e.officer,
            e.request.as_deref().map_or("-", |r| &r[..16.min(r.len())])
        );
    }
    if events.is_empty() {
        println!("(no key events)");
    }
    Ok(())
}

/// `medgate keys change-pin`.
pub(crate) fn change_pin(
    cfg: &HsmOnly,
    so: bool,
    so_pin_file: Option<&Path>,
    new_pin_file: &Path,
    approvals: &Path,
    become_service: &dyn Fn() -> Result<(), Failure>,
) -> Result<(), Failure> {
    let site = site(cfg)?;
    let file = RequestFile::read(approvals)?;
    let which = if so { "so" } else { "user" };
    let asked = Request { operation: "change-pin".into(), role: None, version: None, detail: Some(which.into()), ..file.request.clone() };
    let new = Pin::from_file(new_pin_file).map_err(|e| Failure::usage(e.to_string()))?;
    let old = match so_pin_file {
        Some(p) if so => Pin::from_file(p).map_err(|e| Failure::usage(e.to_string()))?,
        _ => Pin::resolve(cfg.hsm.pin_file.as_deref()).map_err(|e| Failure::config(e.to_string()))?,
    };
    become_service()?;
    let ok = officers::authorize(&site, &asked, &file, Rule::Quorum, None)?;
    medgate_hsm::admin::change_pin(&cfg.hsm.module, &cfg.hsm.token_label, so, &old, &new).map_err(Failure::hsm)?;
    ok.record("change-pin", &format!("{which}-pin"), 0, "-")?;
    if so {
        println!("the SO PIN of token {:?} is changed (approved by {})", cfg.hsm.token_label, ok.officer);
    } else {
        println!("the user PIN of token {:?} is changed (approved by {}): put it in the gateway's PIN file or credential now", cfg.hsm.token_label, ok.officer);
    }
    Ok(())
}

/// `medgate keys officer-key`.
pub(crate) fn officer_key(name: &str, out: &Path, card_out: Option<&Path>) -> Result<(), Failure> {
    let card = officers::new_key_file(name, out)?;
    let text = serde_json::to_string_pretty(&card).map_err(|e| Failure::runtime(e.to_string()))? + "\n";
    if let Some(p) = card_out {
        std::fs::write(p, &text).map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?;
    }
    print!("{text}");
    eprintln!("officer key written to {} (mode 0600); the card above goes into the enrolment request", out.display());
    Ok(())
}

/// `medgate keys officer-card`.
pub(crate) fn officer_card(name: &str, who: &CredentialArgs, out: Option<&Path>) -> Result<(), Failure> {
    let credential = Credential::open(who)?.ok_or_else(|| Failure::usage("--officer-key FILE or --card SPEC"))?;
    let card = officers::card_of(name, &credential)?;
    let text = serde_json::to_string_pretty(&card).map_err(|e| Failure::runtime(e.to_string()))? + "\n";
    match out {
        Some(p) => std::fs::write(p, &text).map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?,
        None => print!("{text}"),
    }
    Ok(())
}
