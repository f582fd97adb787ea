//! The command line: `medgate serve | reload | config | doctor | keys | pki | ledger |
//! consortium | audit | demo | bench`. Parsing and dispatch; each command returns a [`Failure`] with an exit status an
//! operator or a script can act on (see [`crate::exit`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use medgate_hsm::Role;

use medgate_gateway::config;

use crate::exit::{self, Failure};

mod bench;
mod config_cmd;
mod consortium;
mod docs;
mod keys;
mod ledger;
mod officer;
mod pki;
mod reload;

use config_cmd::ConfigCommand;
use consortium::ConsortiumCommand;
use keys::KeysCommand;
use ledger::LedgerCommand;
use pki::PkiCommand;

#[derive(Debug, Parser)]
#[command(
    name = "medgate",
    author = "medgate maintainers <maintainers@example.invalid>",
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
    /// Check a configuration and everything the gateway needs, as the service will find it
    /// (exit 0 or 64).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The same as `medgate config check`.
    #[command(after_long_help = config_cmd::CHECK_HELP)]
    Doctor {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the gateway (systemd: Type=notify; SIGHUP reloads the configuration, SIGTERM stops).
    #[command(after_long_help = SERVE_ERASURE)]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make the running gateway re-read its configuration and wait for the answer (the unit's
    /// ExecReload=). Certificates, CRLs, the body limit and the log level change at once; the
    /// changes that need a restart are named. Exit 64 when the gateway refused the file: it
    /// keeps its previous settings.
    Reload {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The hospital-side PKI of a pilot, kept in files: a CA for the HIS client certificates,
    /// the gateway's certificate from `medgate keys csr`, and the CRL.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Write the manual pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write man/*.1 and completions/* into.
        #[arg(long)]
        out: PathBuf,
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
    /// concurrencies; prints its ceilings (HSM, store, a null mTLS endpoint), records/s, p50/p99
    /// latency, HSM calls per record, and each figure's ratio to its ceiling.
    Bench(bench::BenchArgs),
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
enum AuditCommand {
    /// The hospital's key events on its ledger copy, each with the officers who approved it,
    /// and the officer rules re-checked (exit 1 when one is broken). Stop the gateway first.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this key role.
        #[arg(long)]
        role: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every read granted as break-glass (no consent, purpose BTG) on any gateway, for review.
    BreakGlass {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Entry point used by `main`.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // The load generator runs the gateway in process: its per-request lines would drown the table.
    crate::logging::init(if matches!(cli.command, Command::Bench(_)) { "warn" } else { "info" });
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
        Command::Config { command: ConfigCommand::Check { config } } | Command::Doctor { config } => config_cmd::config_check(&config.config),
        Command::Reload { config } => reload::reload(&config.config),
        Command::Pki { command } => pki::pki_command(command),
        Command::GenerateDocs { out } => docs::generate(&out),
        Command::Keys { config, command } => keys::keys_command(&config.config, command),
        Command::Serve { config } => crate::daemon::serve(&config.config),
        Command::Consortium { command } => consortium::consortium_command(command),
        Command::Audit { command: AuditCommand::BreakGlass { config, json } } => crate::audit::break_glass(&config.config, json),
        Command::Audit { command: AuditCommand::Keys { config, role, json } } => crate::audit::key_events(&config.config, role.as_deref(), json),
        Command::Ledger { command } => ledger::ledger_command(command),
        Command::Demo { workdir, consortium: false } => crate::demo::run(workdir.as_deref()),
        Command::Demo { workdir, consortium: true } => crate::demo::run_consortium(workdir.as_deref()),
        Command::Bench(args) => bench::bench_command(args),
    }
}

/// One request on the running gateway's admin socket; a non-200 answer is a failure that
/// carries the gateway's reason.
pub(crate) fn admin_call(config: &std::path::Path, method: &str, path: &str, body: &[u8]) -> Result<String, Failure> {
    let socket = crate::admin_client::socket_of(config).map_err(Failure::config)?;
    match crate::admin_client::request(&socket, method, path, body) {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(Failure::runtime(format!("refused ({status}): {}", body.trim()))),
        Err(e) => Err(Failure { code: exit::UNAVAILABLE, message: format!("the gateway's admin socket did not answer: {e}") }),
    }
}
