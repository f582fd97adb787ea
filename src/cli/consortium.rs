//! `medgate consortium`: the consortium CA kept in files (tests and pilots), member cards, the
//! genesis, and membership changes asked of the running gateway.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{admin_call, ConfigArg};
use crate::exit::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum ConsortiumCommand {
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
    /// holds them (asks its admin socket).
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

pub(crate) fn consortium_command(command: ConsortiumCommand) -> Result<(), Failure> {
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
            let body = admin_call(&config.config, "GET", "/consortium/members", b"")?;
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
            let body = admin_call(&config.config, "POST", "/consortium/proposals", request.to_string().as_bytes())?;
            print_proposal(&body)?;
        }
        ConsortiumCommand::Approve { config, proposal } => {
            let id = proposal.trim();
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Failure::usage(format!("{id:?} is not a proposal id (32 hex characters)")));
            }
            let body = admin_call(&config.config, "POST", &format!("/consortium/proposals/{}/approve", id.to_ascii_lowercase()), b"")?;
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

fn print_proposal(body: &str) -> Result<(), Failure> {
    let p: medgate_ledger::membership::Proposal = serde_json::from_str(body).map_err(|e| Failure::runtime(format!("unreadable answer: {e}")))?;
    match p.decided_at {
        Some(h) if p.lapsed => println!("proposal {} ({} {}) lapsed in block {h}: the membership no longer allows it; approvals: {}", p.proposal_id, p.action, p.hospital_id, p.approvals.join(", ")),
        Some(h) => println!("proposal {} ({} {}) carried in block {h}; approvals: {}", p.proposal_id, p.action, p.hospital_id, p.approvals.join(", ")),
        None => println!("proposal {} ({} {}) is open; approvals so far: {}", p.proposal_id, p.action, p.hospital_id, p.approvals.join(", ")),
    }
    Ok(())
}

