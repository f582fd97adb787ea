//! The command line: `medgate serve | config | keys | ledger | consortium | audit | demo |
//! bench`. Parsing and dispatch; each command returns a [`Failure`] with an exit status an
//! operator or a script can act on (see [`crate::exit`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use medgate_hsm::{Pin, Role};

use medgate_gateway::config::{self, Config, HsmOnly};

use crate::exit::{self, Failure};
use crate::keys;

#[derive(Debug, Parser)]
#[command(
    name = "medgate",
    version,
    about = "Hospital gateway: shares encrypted medical records over mutual TLS, keys in an HSM, every access on a signed ledger",
    long_about = None,
    after_help = "The HSM PIN is read from the file named by [hsm] pin_file, or from the systemd credential `hsm-pin`; never from an argument.\nLogs go to stderr; set MEDGATE_LOG=debug for more.\nErasure makes every backup taken before it unreadable, for all records: see `medgate serve --help`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, short = 'c', env = "MEDGATE_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// What an erasure guarantees, for `medgate serve --help`.
const SERVE_ERASURE: &str = "\
Erasure (DELETE /DocumentReference/{id} from the custodian's HIS) is crypto-shredding:
  - at once, the record's wrapped data key, ciphertext and sealed metadata leave the vault (the
    gateway answers 410; the ledger keeps the hash and a signed erasure entry);
  - then a shred pass (seconds for most vaults: it re-wrapped about 6 000 live records a second
    with SoftHSM on 2 cores) rotates the KEK, re-wraps every live record's key inside the HSM and
    destroys the old KEK versions. From then on every copy made before the pass is unreadable:
    backups of the state directory cannot be restored for ANY record, not only the erased one.
    Take a fresh backup after erasures, once /metrics shows medgate_shred_pending 0 (/readyz:
    `shred: none pending`).
A pass cut short by a stop or a crash runs again at the next start. HSM token backups taken before
the pass still hold the old KEK versions: do not keep them longer than the state backups.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a configuration file and report every problem (exit 0 or 64).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the gateway (systemd: Type=notify; SIGHUP reloads certificates, SIGTERM stops).
    #[command(after_long_help = SERVE_ERASURE)]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the ledger copy, print and check receipts.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// One hospital end to end on this machine: throwaway SoftHSM token, keys, CA, gateway, a
    /// sample HIS storing, finding and reading records, the audit trail and a ledger check.
    Demo {
        /// Keep the token, PIN file, configuration, certificates and data here (an empty or new
        /// directory) instead of a temporary one.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Three hospitals instead of one: a 3-member etcd cluster, three gateways, and a record
        /// shared under the patient's consent, then refused after the consent is withdrawn.
        #[arg(long)]
        consortium: bool,
    },
    /// Load generator: a throwaway site, then 4 KiB documents over mutual TLS at several
    /// concurrencies; prints records/s, p50/p99 latency and HSM calls per record.
    Bench {
        /// Documents stored per concurrency level.
        #[arg(long, default_value_t = 2000)]
        records: usize,
        /// Concurrency levels (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        /// Document size in bytes.
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Three hospitals on a 3-member etcd cluster instead: etcd's raw put rate, consortium
        /// ingest throughput and cross-hospital read latency (at the largest concurrency level).
        #[arg(long)]
        consortium: bool,
        /// Then erase one record and time the shred pass that follows: KEK rotation, every
        /// stored record re-wrapped in the HSM, the old KEK version destroyed. Prints the pass
        /// time and the records re-wrapped per second.
        #[arg(long, conflicts_with = "consortium")]
        shred: bool,
    },
    /// The consortium: a CA kept in files for tests and pilots (certify gateways' HSM keys and
    /// etcd members), the genesis and member cards, and membership changes on the ledger.
    Consortium {
        #[command(subcommand)]
        command: ConsortiumCommand,
    },
    /// Reviews for the privacy officer.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Security officer: manage the keys in the HSM.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Re-check the whole local ledger copy offline: heights, hash links, Merkle roots and every
    /// batch signature. Names the first bad block. Stop the gateway first (the store is locked).
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Trust only this ledger public key (PEM from `medgate keys public-key --role ledger`);
        /// repeatable. Without it the keys recorded in the store are used.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
    },
    /// Write every stored block, one JSON line each, for an auditor who checks the copy with
    /// the ledger crate alone (`cargo run -p medgate-ledger --example verify-ledger`). A
    /// consortium copy's genesis document is written next to it (OUT.genesis.json). Stop the
    /// gateway first (the store is locked).
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to write the blocks (JSON lines).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the receipt of a ledger entry (JSON): checkable by anyone with the public key.
    Proof {
        #[command(flatten)]
        config: ConfigArg,
        /// The entry id (64 hex).
        entry: String,
    },
    /// Consortium: compact etcd's history below what every member has checkpointed (asks the
    /// running gateway on its admin listener). Refused until every member has sent a checkpoint.
    Compact {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a receipt offline with only the gateway's ledger public key.
    CheckReceipt {
        /// Receipt file (JSON), as printed by `medgate ledger proof`.
        receipt: PathBuf,
        /// The gateway's ledger public key (PEM).
        #[arg(long = "public-key")]
        public_key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConsortiumCommand {
    /// Create a consortium CA in DIR: ca.pem (give it to every member) and ca-key.pem (0600).
    /// A production consortium CA is kept offline or in an HSM of its own.
    InitCa {
        /// New directory for the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The consortium's name (the CA's CN and O).
        #[arg(long, default_value = "medgate consortium CA")]
        name: String,
    },
    /// Certify a gateway: sign the CSR of its HSM tls key (subject O must be its hospital id),
    /// adding the IP addresses peers and etcd dial.
    Sign {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// PEM CSR from `medgate keys csr --role tls --subject "CN=...,O=<hospital id>"`.
        #[arg(long)]
        csr: PathBuf,
        /// IP address subjectAltName (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify an etcd member: a certificate and key for its client and peer listeners (etcd
    /// reads its key from a file), for DNS name NAME and the IP addresses given.
    EtcdMember {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// IP address subjectAltName (repeatable; gateways dial members by IP).
        #[arg(long = "ip", required = true)]
        ips: Vec<std::net::IpAddr>,
        /// Written as OUT.crt and OUT.key (0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the etcdctl commands for per-hospital RBAC on the consortium's etcd: each hospital's
    /// user (the CN of its consortium certificate) may read every batch and write only under
    /// PREFIX/batches/<its id>/. Review them, then run them with etcdctl and the root client
    /// certificate. The first time, with --enable-auth (creates root, turns authentication on).
    EtcdRbac {
        /// consortium.prefix of the gateways.
        #[arg(long, default_value = "/medgate/ledger")]
        prefix: String,
        /// Grant every founding member of this genesis.
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Grant this hospital (repeatable): a member admitted later.
        #[arg(long = "grant")]
        grant: Vec<String>,
        /// Take a removed hospital's etcd user away (repeatable).
        #[arg(long = "revoke")]
        revoke: Vec<String>,
        /// Also create the root user and enable authentication (once per cluster).
        #[arg(long)]
        enable_auth: bool,
    },
    /// Write this hospital's member card (JSON): its hospital id, ledger and sharing public keys
    /// (PEM files from `medgate keys public-key`) and peer address. The card goes into the
    /// genesis, or into a proposal to admit the hospital later.
    MemberCard {
        #[arg(long)]
        hospital_id: String,
        /// PEM from `medgate keys public-key --role ledger`.
        #[arg(long)]
        ledger_public_key: PathBuf,
        /// Version of that key.
        #[arg(long, default_value_t = 1)]
        ledger_key_version: u32,
        /// PEM from `medgate keys public-key --role sharing` (needed to receive shared records).
        #[arg(long)]
        sharing_public_key: Option<PathBuf>,
        /// The hospital's consortium.peer_listen, IP:port (needed for its records to be fetched).
        #[arg(long)]
        peer_address: Option<std::net::SocketAddr>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the genesis document from the founding members' cards. Every member configures the
    /// same file as consortium.genesis; its SHA-256 (printed) anchors block 0, so compare it out
    /// of band before starting.
    Genesis {
        /// The consortium's name.
        #[arg(long)]
        name: String,
        /// A founding member's card (repeatable).
        #[arg(long = "member", required = true)]
        members: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The current members and every membership proposal, as the running gateway's ledger copy
    /// holds them (asks its admin listener).
    Members {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Propose a membership change in this hospital's name: admit a hospital (--add CARD),
    /// remove one (--remove ID), or replace a member's keys or address (--update CARD). An
    /// admission or removal takes effect when a strict majority of the current members have
    /// approved (the proposer counts); an update when a majority of the other members have. A
    /// proposal lapses if the membership changes first.
    Propose {
        #[command(flatten)]
        config: ConfigArg,
        /// Member card of the hospital to admit.
        #[arg(long, group = "change")]
        add: Option<PathBuf>,
        /// Hospital id to remove.
        #[arg(long, group = "change")]
        remove: Option<String>,
        /// New member card of an existing member.
        #[arg(long, group = "change")]
        update: Option<PathBuf>,
    },
    /// Approve an open membership proposal in this hospital's name.
    Approve {
        #[command(flatten)]
        config: ConfigArg,
        /// The proposal id (from `medgate consortium members`).
        proposal: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Every read granted as break-glass (no consent, purpose BTG) on any gateway, for review.
    BreakGlass {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Parse and validate the configuration; print every problem with file, key and reason.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
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

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Entry point used by `main`.
pub fn main() -> i32 {
    crate::logging::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("medgate: {}", f.message.trim_end());
            f.code
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Config { command: ConfigCommand::Check { config } } => config_check(&config.config),
        Command::Keys { config, command } => keys_command(&config.config, command),
        Command::Serve { config } => crate::daemon::serve(&config.config),
        Command::Consortium { command } => consortium_command(command),
        Command::Audit { command: AuditCommand::BreakGlass { config, json } } => crate::audit::break_glass(&config.config, json),
        Command::Ledger { command } => ledger_command(command),
        Command::Demo { workdir, consortium: false } => crate::demo::run(workdir.as_deref()),
        Command::Demo { workdir, consortium: true } => crate::demo::run_consortium(workdir.as_deref()),
        Command::Bench { records, concurrency, size, consortium: false, shred } => crate::bench::run(records, &concurrency, size, shred),
        Command::Bench { records, concurrency, consortium: true, .. } => {
            crate::demo::bench_consortium(records, concurrency.iter().copied().max().unwrap_or(16))
        }
    }
}

fn consortium_command(command: ConsortiumCommand) -> Result<(), Failure> {
    use medgate_gateway::pki::TestCa;
    match command {
        ConsortiumCommand::InitCa { dir, name } => {
            if dir.join("ca-key.pem").exists() {
                return Err(Failure::usage(format!("{} already holds a CA", dir.display())));
            }
            let ca = TestCa::new(&name).map_err(|e| Failure::runtime(e.to_string()))?;
            ca.save(&dir).map_err(Failure::runtime)?;
            println!("consortium CA {name:?} created: {}/ca.pem (distribute), {}/ca-key.pem (keep offline)", dir.display(), dir.display());
        }
        ConsortiumCommand::Sign { dir, csr, ips, days, out } => {
            let ca = TestCa::load(&dir).map_err(Failure::usage)?;
            let pem = std::fs::read_to_string(&csr).map_err(|e| Failure::usage(format!("{}: {e}", csr.display())))?;
            let cert = ca.sign_peer_csr(&pem, days, &ips).map_err(|e| Failure::usage(format!("{}: {e}", csr.display())))?;
            let (subject, _, _) = medgate_gateway::pki::describe_certificate(cert.der()).map_err(Failure::runtime)?;
            if !subject.contains("O=") {
                return Err(Failure::usage(format!("{}: the subject has no O; peers know a gateway by the hospital id in O", csr.display())));
            }
            std::fs::write(&out, cert.pem()).map_err(|e| Failure::runtime(format!("{}: {e}", out.display())))?;
            println!("{} certified ({subject}), written to {}", csr.display(), out.display());
        }
        ConsortiumCommand::EtcdMember { dir, name, ips, out } => {
            let ca = TestCa::load(&dir).map_err(Failure::usage)?;
            let (cert, key) = ca.issue_server_for(&name, &ips).map_err(|e| Failure::runtime(e.to_string()))?;
            let crt = out.with_extension("crt");
            std::fs::write(&crt, cert.pem()).map_err(|e| Failure::runtime(format!("{}: {e}", crt.display())))?;
            crate::demo::write_private(&out.with_extension("key"), key.serialize_pem().as_bytes())?;
            println!("etcd member {name} certified: {} and {}", crt.display(), out.with_extension("key").display());
        }
        ConsortiumCommand::EtcdRbac { prefix, genesis, mut grant, revoke, enable_auth } => {
            if let Some(g) = &genesis {
                let (g, _, _) = medgate_ledger::membership::Genesis::read(g).map_err(Failure::usage)?;
                grant.extend(g.members.into_iter().map(|m| m.hospital_id));
            }
            if grant.is_empty() && revoke.is_empty() && !enable_auth {
                return Err(Failure::usage("nothing to do: give --genesis, --grant, --revoke or --enable-auth"));
            }
            let cmds = medgate_store::order::etcd::rbac_commands(&prefix, &grant, &revoke, enable_auth).map_err(Failure::usage)?;
            println!("# etcd RBAC for the medgate ledger under {prefix}/batches/");
            println!("# Run with: etcdctl --endpoints=... --cacert=consortium-ca.pem --cert=root.crt --key=root.key");
            for c in cmds {
                println!("etcdctl {c}");
            }
        }
        ConsortiumCommand::MemberCard { hospital_id, ledger_public_key, ledger_key_version, sharing_public_key, peer_address, out } => {
            let card = medgate_ledger::membership::MemberCard::from_files(&hospital_id, &ledger_public_key, ledger_key_version, sharing_public_key.as_deref(), peer_address)
                .map_err(Failure::usage)?;
            let mut bytes = serde_json::to_vec_pretty(&card).map_err(|e| Failure::runtime(format!("member card: {e}")))?;
            bytes.push(b'\n');
            std::fs::write(&out, bytes).map_err(|e| Failure::runtime(format!("{}: {e}", out.display())))?;
            println!("member card of {hospital_id} written to {}", out.display());
            if sharing_public_key.is_none() || peer_address.is_none() {
                println!("note: without --sharing-public-key and --peer-address this hospital can neither receive nor serve shared records");
            }
        }
        ConsortiumCommand::Genesis { name, members, out } => {
            if out.exists() {
                return Err(Failure::usage(format!("{} exists; a genesis is written once (remove it yourself if you mean to replace it)", out.display())));
            }
            let cards = members.iter().map(|p| read_card(p)).collect::<Result<Vec<_>, _>>()?;
            let g = medgate_ledger::membership::Genesis::new(&name, &medgate_gateway::clock::now_rfc3339(), cards).map_err(Failure::usage)?;
            let hash = g.write(&out).map_err(Failure::runtime)?;
            println!("genesis of {name:?} with {} founding members written to {}", g.members.len(), out.display());
            println!("sha256 {}  (every member must see this same hash before starting)", hex::encode(hash));
        }
        ConsortiumCommand::Members { config, json } => {
            let cfg = consortium_config(&config.config)?;
            let body = admin_call(&cfg, "GET", "/consortium/members", b"")?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| Failure::runtime(format!("unreadable answer: {e}")))?;
            println!("genesis {}", v["genesis"].as_str().unwrap_or("-"));
            println!("{:<24} {:<10} {:<22} LEDGER KEY VERSIONS", "MEMBER", "SINCE", "PEER ADDRESS");
            for m in v["members"].as_array().into_iter().flatten() {
                let since = m["admitted_at"].as_u64().map_or("genesis".to_owned(), |h| format!("block {h}"));
                let versions: Vec<String> = m["ledger_keys"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                println!("{:<24} {:<10} {:<22} {}", m["hospital_id"].as_str().unwrap_or("?"), since, m["peer_address"].as_str().unwrap_or("-"), versions.join(","));
            }
            let proposals = v["proposals"].as_array().cloned().unwrap_or_default();
            if !proposals.is_empty() {
                println!();
                println!("{:<34} {:<7} {:<20} {:<28} APPROVALS", "PROPOSAL", "ACTION", "HOSPITAL", "STATE");
                for p in proposals {
                    let state = p["state"].as_str().unwrap_or("?");
                    let approvals: Vec<&str> = p["approvals"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                    println!(
                        "{:<34} {:<7} {:<20} {:<28} {}",
                        p["proposal_id"].as_str().unwrap_or("?"),
                        p["action"].as_str().unwrap_or("?"),
                        p["hospital_id"].as_str().unwrap_or("?"),
                        state,
                        approvals.join(",")
                    );
                }
            }
        }
        ConsortiumCommand::Propose { config, add, remove, update } => {
            let cfg = consortium_config(&config.config)?;
            let request = match (add, remove, update) {
                (Some(card), None, None) => {
                    let card = read_card(&card)?;
                    serde_json::json!({"action": "add", "hospital_id": card.hospital_id.clone(), "card": card})
                }
                (None, Some(id), None) => serde_json::json!({"action": "remove", "hospital_id": id}),
                (None, None, Some(card)) => {
                    let card = read_card(&card)?;
                    serde_json::json!({"action": "update", "hospital_id": card.hospital_id.clone(), "card": card})
                }
                _ => return Err(Failure::usage("give one of --add CARD, --remove HOSPITAL_ID, --update CARD")),
            };
            let body = admin_call(&cfg, "POST", "/consortium/proposals", request.to_string().as_bytes())?;
            print_proposal(&body)?;
        }
        ConsortiumCommand::Approve { config, proposal } => {
            let cfg = consortium_config(&config.config)?;
            let id = proposal.trim();
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Failure::usage(format!("{id:?} is not a proposal id (32 hex characters)")));
            }
            let body = admin_call(&cfg, "POST", &format!("/consortium/proposals/{}/approve", id.to_ascii_lowercase()), b"")?;
            print_proposal(&body)?;
        }
    }
    Ok(())
}

fn read_card(path: &Path) -> Result<medgate_ledger::membership::MemberCard, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    let card: medgate_ledger::membership::MemberCard = serde_json::from_slice(&bytes).map_err(|e| Failure::usage(format!("{}: not a member card: {e}", path.display())))?;
    card.check().map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    Ok(card)
}

fn consortium_config(path: &Path) -> Result<Config, Failure> {
    let cfg = Config::load(path).map_err(|e| Failure::config(e.to_string()))?;
    if cfg.ledger.mode != "consortium" {
        return Err(Failure::usage(format!("{}: membership concerns the consortium ledger; this gateway runs standalone", path.display())));
    }
    Ok(cfg)
}

/// One request to the running gateway's admin listener; a non-200 answer is a failure that
/// carries the gateway's reason.
fn admin_call(cfg: &Config, method: &str, path: &str, body: &[u8]) -> Result<String, Failure> {
    match crate::admin_client::request(cfg.admin.listen, method, path, body) {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(Failure::runtime(format!("refused ({status}): {}", body.trim()))),
        Err(e) => Err(Failure { code: exit::UNAVAILABLE, message: format!("the gateway's admin listener {} did not answer: {e}", cfg.admin.listen) }),
    }
}

fn print_proposal(body: &str) -> Result<(), Failure> {
    let p: medgate_ledger::membership::Proposal = serde_json::from_str(body).map_err(|e| Failure::runtime(format!("unreadable answer: {e}")))?;
    match p.decided_at {
        Some(h) if p.lapsed => println!("proposal {} ({} {}) lapsed in block {h}: the membership no longer allows it; approvals: {}", p.proposal_id, p.action, p.hospital_id, p.approvals.join(", ")),
        Some(h) => println!("proposal {} ({} {}) carried in block {h}; approvals: {}", p.proposal_id, p.action, p.hospital_id, p.approvals.join(", ")),
        None => println!("proposal {} ({} {}) is open; approvals so far: {}", p.proposal_id, p.action, p.hospital_id, p.approvals.join(", ")),
    }
    Ok(())
}

fn open_chain(path: &Path) -> Result<medgate_store::ChainStore, Failure> {
    let cfg = Config::load(path).map_err(|e| Failure::config(e.to_string()))?;
    let dir = &cfg.gateway.state_directory;
    let db = medgate_store::Db::open(dir).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") || text.contains("WouldBlock") {
            Failure::runtime(format!("{}: the store is in use (is the gateway running? stop it, or copy the directory and point a configuration at the copy): {text}", dir.display()))
        } else {
            Failure::runtime(text)
        }
    })?;
    medgate_store::ChainStore::open(&db).map_err(|e| Failure::runtime(e.to_string()))
}

fn ledger_command(command: LedgerCommand) -> Result<(), Failure> {
    match command {
        LedgerCommand::Verify { config, public_keys } => {
            let store = open_chain(&config.config)?;
            let cfg = Config::load(&config.config).map_err(|e| Failure::config(e.to_string()))?;
            let stored = store.genesis_hash().map_err(|e| Failure::runtime(e.to_string()))?;
            if let (Some(c), Some(stored)) = (cfg.consortium.as_ref().filter(|_| cfg.ledger.mode == "consortium"), stored) {
                let (_, configured, _) = medgate_ledger::membership::Genesis::read(&c.genesis).map_err(|e| Failure::config(format!("consortium.genesis: {e}")))?;
                if configured != stored {
                    return Err(Failure::runtime(format!(
                        "ledger verification FAILED: this ledger copy hangs from genesis {}, the configured consortium.genesis is {}",
                        hex::encode(stored),
                        hex::encode(configured)
                    )));
                }
            }
            let keys = public_keys.iter().map(|p| medgate_ledger::keys::read_public_key(p)).collect::<Result<Vec<_>, _>>().map_err(|e| Failure::usage(e.to_string()))?;
            match store.verify(&keys) {
                Ok(r) => {
                    let height = r.height.map_or("empty".to_owned(), |h| h.to_string());
                    println!("ledger OK: height {height}, {} blocks, {} batches ({} flagged invalid), {} entries, head {}", r.blocks, r.batches, r.invalid_batches, r.entries, r.head);
                    match (stored, keys.is_empty()) {
                        (Some(g), true) => println!(
                            "signatures checked with the keys the genesis ({}) and the membership entries admitted, at each block's height; pass --public-key to trust only keys you hold",
                            &hex::encode(g)[..16]
                        ),
                        (None, true) => println!("signatures checked with the keys recorded in the store; pass --public-key to check against the keys your security officer exported"),
                        (_, false) => {}
                    }
                    Ok(())
                }
                Err(e) => Err(Failure::runtime(format!("ledger verification FAILED at block {}: {e}", e.height()))),
            }
        }
        LedgerCommand::Export { config, out } => export_ledger(&open_chain(&config.config)?, &out),
        LedgerCommand::Proof { config, entry } => {
            let store = open_chain(&config.config)?;
            match store.receipt(entry.trim()).map_err(|e| Failure::runtime(e.to_string()))? {
                Some(r) => {
                    println!("{}", serde_json::to_string_pretty(&r).map_err(|e| Failure::runtime(e.to_string()))?);
                    Ok(())
                }
                None => Err(Failure::usage(format!("no entry {} in a block of this ledger", entry.trim()))),
            }
        }
        LedgerCommand::Compact { config } => {
            let cfg = Config::load(&config.config).map_err(|e| Failure::config(e.to_string()))?;
            if cfg.ledger.mode != "consortium" {
                return Err(Failure::usage("compaction concerns the consortium's etcd; this gateway runs standalone"));
            }
            match crate::admin_client::request(cfg.admin.listen, "POST", "/ledger/compact", b"") {
                Ok((200, body)) => {
                    println!("{}", body.trim());
                    Ok(())
                }
                Ok((_, body)) => Err(Failure::runtime(format!("not compacted: {}", body.trim()))),
                Err(e) => Err(Failure { code: exit::UNAVAILABLE, message: format!("the gateway's admin listener {} did not answer: {e}", cfg.admin.listen) }),
            }
        }
        LedgerCommand::CheckReceipt { receipt, public_key } => {
            let bytes = std::fs::read(&receipt).map_err(|e| Failure::usage(format!("{}: {e}", receipt.display())))?;
            let key = medgate_ledger::keys::read_public_key(&public_key).map_err(|e| Failure::usage(e.to_string()))?;
            let r = medgate_ledger::check_receipt(&bytes, &key).map_err(|e| Failure::runtime(e.to_string()))?;
            println!("receipt OK: entry {} is leaf {} of batch {} signed by {} (key version {}), in block {} ({})", r.entry.id, r.leaf_index, r.seq, r.gateway, r.key_version, r.height, r.block_hash);
            Ok(())
        }
    }
}

/// `medgate ledger export`: the blocks as JSON lines, and the genesis beside them.
fn export_ledger(store: &medgate_store::ChainStore, out: &Path) -> Result<(), Failure> {
    use std::io::Write as _;
    let io = |p: &Path, e: std::io::Error| Failure::runtime(format!("{}: {e}", p.display()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(|e| io(out, e))?);
    let mut blocks = 0u64;
    for block in store.blocks() {
        let block = block.map_err(|e| Failure::runtime(format!("block {blocks} cannot be read: {e}")))?;
        file.write_all(&block.to_bytes()).and_then(|()| file.write_all(b"\n")).map_err(|e| io(out, e))?;
        blocks += 1;
    }
    file.flush().map_err(|e| io(out, e))?;
    println!("{blocks} blocks written to {}", out.display());
    if let Some(genesis) = store.genesis().map_err(|e| Failure::runtime(e.to_string()))? {
        let path = out.with_extension("genesis.json");
        std::fs::write(&path, genesis).map_err(|e| io(&path, e))?;
        println!("genesis written to {} (compare it with the consortium's)", path.display());
    }
    Ok(())
}

fn config_check(path: &Path) -> Result<(), Failure> {
    let cfg = Config::load(path).map_err(|e| Failure::config(e.to_string()))?;
    for d in cfg.dangerous_settings() {
        println!("warning: [dangerous] {d}");
    }
    println!("{}: OK", path.display());
    Ok(())
}

fn keys_command(path: &Path, command: KeysCommand) -> Result<(), Failure> {
    let cfg = HsmOnly::load(path).map_err(|e| Failure::config(e.to_string()))?;
    let state = keys::state_dir(&cfg);
    let state = state.as_deref();
    if let KeysCommand::InitToken { so_pin_file } = &command {
        let so = Pin::from_file(so_pin_file).map_err(|e| Failure::usage(e.to_string()))?;
        let user = Pin::resolve(cfg.hsm.pin_file.as_deref()).map_err(|e| Failure::config(e.to_string()))?;
        medgate_hsm::admin::init_token(&cfg.hsm.module, &cfg.hsm.token_label, &so, &user).map_err(Failure::hsm)?;
        tracing::info!(officer = %keys::officer(), token = %cfg.hsm.token_label, "token initialised");
        println!("token {:?} initialised; the user PIN is the one in the configured PIN file", cfg.hsm.token_label);
        return Ok(());
    }
    let hsm = keys::open_hsm(&cfg)?;
    let result = keys_on_token(&hsm, state, command);
    hsm.shutdown();
    result
}

fn keys_on_token(hsm: &Arc<medgate_hsm::Hsm>, state: Option<&Path>, command: KeysCommand) -> Result<(), Failure> {
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
            match out {
                Some(p) => std::fs::write(&p, &pem).map_err(|e| Failure::runtime(format!("{}: {e}", p.display())))?,
                None => print!("{pem}"),
            }
        }
        KeysCommand::ImportCert { role, file } => {
            let der = keys::read_certificate(&file)?;
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
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&value_file).map_err(|e| Failure::usage(format!("{}: {e}", value_file.display())))?,
            );
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
