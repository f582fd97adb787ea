//! `medgate ledger`: offline checks of the local ledger copy, receipts, export, and compaction
//! of the consortium's etcd (asked of the running gateway).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use medgate_gateway::config::Config;

use super::ConfigArg;
use crate::exit::{self, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
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
    /// running gateway on its admin socket). Refused until every member has sent a checkpoint.
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

/// What the offline ledger commands need of the configuration: the state directory and, in
/// consortium mode, the genesis. Neither the PIN nor the certificates: an auditor's copy of
/// the configuration need not have them.
#[derive(Debug)]
struct LedgerOnly {
    state_directory: PathBuf,
    genesis: Option<PathBuf>,
}

impl LedgerOnly {
    fn load(path: &Path) -> Result<LedgerOnly, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| Failure::config(format!("{}: cannot be read: {e}", path.display())))?;
        let t: toml::Table = text.parse().map_err(|e: toml::de::Error| Failure::config(format!("{}: invalid TOML: {}", path.display(), e.message())))?;
        let get = |table: &str, key: &str| t.get(table).and_then(|v| v.get(key)).and_then(|v| v.as_str()).map(PathBuf::from);
        let state_directory = get("gateway", "state_directory").ok_or_else(|| Failure::config(format!("{}: gateway.state_directory: required but missing", path.display())))?;
        let consortium = t.get("ledger").and_then(|l| l.get("mode")).and_then(|m| m.as_str()) == Some("consortium");
        Ok(LedgerOnly { state_directory, genesis: if consortium { get("consortium", "genesis") } else { None } })
    }
}

fn open_chain(path: &Path) -> Result<medgate_store::ChainStore, Failure> {
    let cfg = LedgerOnly::load(path)?;
    let dir = &cfg.state_directory;
    // As root, open the store as its owner: files sled creates must stay the service's.
    if let Some(owner) = crate::account::service_account(path, Some(dir)).filter(|_| crate::account::is_root()) {
        crate::account::become_account(&owner).map_err(Failure::runtime)?;
    }
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

pub(crate) fn ledger_command(command: LedgerCommand) -> Result<(), Failure> {
    match command {
        LedgerCommand::Verify { config, public_keys } => {
            let keys = public_keys.iter().map(|p| medgate_ledger::keys::read_public_key(p)).collect::<Result<Vec<_>, _>>().map_err(|e| Failure::usage(e.to_string()))?;
            let cfg = LedgerOnly::load(&config.config)?;
            let genesis = cfg.genesis.as_deref().map(|g| medgate_ledger::membership::Genesis::read(g).map_err(|e| Failure::config(format!("consortium.genesis: {e}")))).transpose()?;
            let store = open_chain(&config.config)?;
            let stored = store.genesis_hash().map_err(|e| Failure::runtime(e.to_string()))?;
            if let (Some((_, configured, _)), Some(stored)) = (genesis, stored) {
                if configured != stored {
                    return Err(Failure::runtime(format!(
                        "ledger verification FAILED: this ledger copy hangs from genesis {}, the configured consortium.genesis is {}",
                        hex::encode(stored),
                        hex::encode(configured)
                    )));
                }
            }
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
            match crate::admin_client::request(&cfg.admin.socket, "POST", "/ledger/compact", b"") {
                Ok((200, body)) => {
                    println!("{}", body.trim());
                    Ok(())
                }
                Ok((_, body)) => Err(Failure::runtime(format!("not compacted: {}", body.trim()))),
                Err(e) => Err(Failure { code: exit::UNAVAILABLE, message: format!("the gateway's admin socket did not answer: {e}") }),
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

