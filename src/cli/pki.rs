//! `medgate pki`: the hospital-side PKI of a pilot, kept in files, like the consortium's (`medgate
//! consortium init-ca`): a CA that issues the HIS client certificates, certifies the gateway's
//! HSM tls key from `medgate keys csr`, and publishes the CRL the gateway requires. A hospital
//! with its own CA uses that instead (packaging/README.Debian, "Your own CA").
//!
//! The CA directory holds `ca.pem`, `ca-key.pem` (0600), `revoked.json` (every certificate
//! revoked so far, so that each new CRL lists them all) and `crl-number`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use medgate_gateway::pki::{Revoked, TestCa};
use time::OffsetDateTime;

use crate::exit::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum PkiCommand {
    /// Create the hospital CA in DIR (a new directory): ca.pem, to install as his.client_ca
    /// (the HIS trusts it for the gateway too), and ca-key.pem (0600; keep DIR offline).
    InitCa {
        /// New directory for the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name (its CN and O).
        #[arg(long, default_value = "medgate hospital CA")]
        name: String,
    },
    /// Issue a client certificate for an HIS system: CN its name, OU its role (`his` may store
    /// and read, `his-read` may only read). Writes OUT.pem and OUT.key (0600) for the HIS.
    IssueHis {
        #[arg(long)]
        dir: PathBuf,
        /// The HIS system's name (the certificate's CN, as the gateway logs it).
        #[arg(long)]
        cn: String,
        /// `his` or `his-read`.
        #[arg(long, default_value = "his", value_parser = ["his", "his-read"])]
        role: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Written as OUT.pem (certificate) and OUT.key (private key, 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify the gateway's HSM tls key from its CSR (`sudo medgate keys csr ... --out
    /// gateway.csr`): writes the chain (certificate, then the CA) as OUT, the file his.certificate
    /// names; then `sudo medgate keys import-cert OUT`.
    SignGateway {
        #[arg(long)]
        dir: PathBuf,
        /// PEM CSR from `medgate keys csr` (its DNS names are kept).
        #[arg(long)]
        csr: PathBuf,
        /// IP address subjectAltName, for an HIS that dials the gateway by address (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue (or renew) the CA's CRL, revoking the given certificates on top of every one
    /// revoked before. Renew it before its nextUpdate and `medgate reload`: past it, the gateway
    /// refuses every client certificate of this CA.
    Crl {
        #[arg(long)]
        dir: PathBuf,
        /// A certificate to revoke (PEM; repeatable).
        #[arg(long = "revoke")]
        revoke: Vec<PathBuf>,
        /// Days until nextUpdate.
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::runtime(format!("{}: {e}", path.display()))
}

fn load(dir: &Path) -> Result<TestCa, Failure> {
    TestCa::load(dir).map_err(|e| Failure::usage(format!("{e} (is {} a CA made by `medgate pki init-ca`?)", dir.display())))
}

pub(crate) fn pki_command(command: PkiCommand) -> Result<(), Failure> {
    match command {
        PkiCommand::InitCa { dir, name } => init_ca(&dir, &name),
        PkiCommand::IssueHis { dir, cn, role, days, out } => issue_his(&dir, &cn, &role, days, &out),
        PkiCommand::SignGateway { dir, csr, ips, days, out } => sign_gateway(&dir, &csr, &ips, days, &out),
        PkiCommand::Crl { dir, revoke, days, out } => crl(&dir, &revoke, days, &out),
    }
}

fn init_ca(dir: &Path, name: &str) -> Result<(), Failure> {
    if dir.join("ca-key.pem").exists() {
        return Err(Failure::usage(format!("{} already holds a CA; choose a new directory", dir.display())));
    }
    let ca = TestCa::new(name).map_err(|e| Failure::runtime(e.to_string()))?;
    ca.save(dir).map_err(Failure::runtime)?;
    std::fs::write(dir.join("revoked.json"), "[]\n").map_err(io(dir))?;
    println!("hospital CA {name:?} created in {}: ca.pem, ca-key.pem (0600; keep this directory offline)", dir.display());
    println!("install ca.pem as his.client_ca, and publish a first CRL: medgate pki crl --dir {} --out /etc/medgate/tls/his-client-ca.crl.pem", dir.display());
    Ok(())
}

fn issue_his(dir: &Path, cn: &str, role: &str, days: i64, out: &Path) -> Result<(), Failure> {
    let ca = load(dir)?;
    let now = OffsetDateTime::now_utc();
    let (cert, key) = ca.issue_client(cn, role, now - time::Duration::minutes(5), now + time::Duration::days(days)).map_err(|e| Failure::runtime(e.to_string()))?;
    let (cert_path, key_path) = (out.with_extension("pem"), out.with_extension("key"));
    crate::demo::write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    println!("HIS certificate CN={cn}, OU={role}, valid {days} days: {} and its key {} (0600); give both to the HIS, with the CA's ca.pem to trust the gateway", cert_path.display(), key_path.display());
    Ok(())
}

fn sign_gateway(dir: &Path, csr: &Path, ips: &[std::net::IpAddr], days: i64, out: &Path) -> Result<(), Failure> {
    let ca = load(dir)?;
    let csr_pem = std::fs::read_to_string(csr).map_err(|e| Failure::usage(format!("{}: {e}", csr.display())))?;
    let cert = ca.sign_gateway_csr(&csr_pem, days, ips).map_err(|e| Failure::usage(format!("{}: not a CSR this CA can sign: {e}", csr.display())))?;
    let facts = medgate_gateway::pki::certificate_facts(cert.der()).map_err(Failure::runtime)?;
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).map_err(io(dir))?;
    std::fs::write(out, format!("{}{ca_pem}", cert.pem())).map_err(io(out))?;
    let names = cert.params().subject_alt_names.len();
    if names == 0 {
        eprintln!("warning: the CSR names no DNS name and no --ip was given: an HIS that checks the server's name will refuse it (`medgate keys csr --dns NAME`)");
    }
    println!("gateway certificate for {} ({names} subjectAltName(s), valid {days} days) and the CA written to {}", facts.subject, out.display());
    println!("next: sudo medgate keys import-cert {}; then medgate config check", out.display());
    Ok(())
}

/// One revoked certificate as `revoked.json` keeps it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RevokedEntry {
    serial: String,
    subject: String,
    revoked_at: i64,
}

fn crl(dir: &Path, revoke: &[PathBuf], days: i64, out: &Path) -> Result<(), Failure> {
    if !(1..=366).contains(&days) {
        return Err(Failure::usage("--days must be between 1 and 366"));
    }
    let ca = load(dir)?;
    let list_path = dir.join("revoked.json");
    let mut list: Vec<RevokedEntry> = match std::fs::read_to_string(&list_path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| Failure::runtime(format!("{}: {e}", list_path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&list_path)(e)),
    };
    let now = OffsetDateTime::now_utc();
    for path in revoke {
        let der = crate::keys::read_certificate(path)?;
        let facts = medgate_gateway::pki::certificate_facts(&der).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        let serial = facts.serial.replace(':', "");
        if !list.iter().any(|r| r.serial == serial) {
            list.push(RevokedEntry { serial, subject: facts.subject, revoked_at: now.unix_timestamp() });
        }
    }
    let revoked = list
        .iter()
        .map(|r| Ok(Revoked { serial: hex::decode(&r.serial).map_err(|_| Failure::runtime(format!("{}: bad serial {}", list_path.display(), r.serial)))?, at: OffsetDateTime::from_unix_timestamp(r.revoked_at).unwrap_or(now) }))
        .collect::<Result<Vec<_>, Failure>>()?;
    let number_path = dir.join("crl-number");
    let number = std::fs::read_to_string(&number_path).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0) + 1;
    let this_update = now - time::Duration::minutes(5);
    let pem = ca.crl_of(&revoked, this_update, days, &number.to_be_bytes()).map_err(|e| Failure::runtime(e.to_string()))?;
    std::fs::write(&list_path, serde_json::to_string_pretty(&list).map_err(|e| Failure::runtime(e.to_string()))? + "\n").map_err(io(&list_path))?;
    std::fs::write(&number_path, format!("{number}\n")).map_err(io(&number_path))?;
    std::fs::write(out, pem).map_err(io(out))?;
    println!(
        "CRL number {number} of {} written to {}: {} revoked, next update in {days} days ({}); renew it before then and `medgate reload`",
        ca.name,
        out.display(),
        list.len(),
        medgate_gateway::clock::rfc3339((this_update + time::Duration::days(days)).unix_timestamp())
    );
    Ok(())
}
