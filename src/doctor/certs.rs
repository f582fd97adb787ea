//! Certificates and CRLs: within their validity, not about to run out, and the CRLs issued by
//! the CA they are meant for.

use std::path::Path;

use medgate_gateway::clock::rfc3339;
use medgate_gateway::config::Config;
use medgate_gateway::pki::{self, CertFacts};

use super::Report;

/// Warn this long before a certificate expires.
const CERT_WARN_DAYS: i64 = 30;
/// Warn this long before a CRL's nextUpdate.
const CRL_WARN_DAYS: i64 = 3;
const DAY: i64 = 86_400;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn read(path: &Path) -> Result<Vec<CertFacts>, String> {
    let certs = medgate_gateway::tls::load_certs(path).map_err(|e| e.to_string())?;
    certs.iter().map(|c| pki::certificate_facts(c.as_ref())).collect()
}

/// One file of certificates (`renew` says how to get new ones).
fn validity(key: &str, path: &Path, renew: &str, report: &mut Report) -> Vec<CertFacts> {
    if !report.readable(path) {
        return Vec::new();
    }
    let certs = match read(path) {
        Ok(c) => c,
        Err(e) => {
            report.fail(key, e, format!("put PEM certificates in {}", path.display()));
            return Vec::new();
        }
    };
    let now = now();
    for (i, c) in certs.iter().enumerate() {
        let what = if certs.len() > 1 { format!("{key} (certificate {} of {}, {})", i + 1, certs.len(), c.subject) } else { format!("{key} ({})", c.subject) };
        if now < c.not_before {
            report.fail(what, format!("not valid before {}", rfc3339(c.not_before)), "check this machine's clock (timedatectl), or wait");
        } else if now > c.not_after {
            report.fail(what, format!("expired on {}", rfc3339(c.not_after)), renew.to_owned());
        } else if c.not_after - now < CERT_WARN_DAYS * DAY {
            report.warn(what, format!("expires on {}, in {} days", rfc3339(c.not_after), (c.not_after - now) / DAY), renew.to_owned());
        } else {
            report.ok(what, format!("valid until {}", rfc3339(c.not_after)));
        }
    }
    certs
}

pub(super) fn check(cfg: &Config, report: &mut Report) {
    let renew_server = format!(
        "renew it: `sudo medgate keys csr --subject ... --out gateway.csr`, have the hospital CA sign it (`medgate pki sign-gateway`), install it as {}, `sudo medgate keys import-cert {0}`, `medgate reload`",
        cfg.his.certificate.display()
    );
    validity("his.certificate", &cfg.his.certificate, &renew_server, report);
    let cas = validity("his.client_ca", &cfg.his.client_ca, "install the renewed CA certificate(s) of the HIS client CA, then `medgate reload`", report);
    for (i, path) in cfg.his.crl.iter().enumerate() {
        crl(&format!("his.crl[{i}]"), path, &cas, cfg.dangerous.allow_expired_crl, report);
    }
    if let Some(c) = cfg.consortium.as_ref().filter(|_| cfg.ledger.mode == "consortium") {
        validity("consortium.certificate", &c.certificate, "have the consortium CA certify a new CSR of the tls key (`medgate consortium sign`)", report);
        validity("consortium.ca", &c.ca, "install the consortium CA's renewed certificate", report);
    }
}

fn crl(key: &str, path: &Path, cas: &[CertFacts], allow_expired: bool, report: &mut Report) {
    if !report.readable(path) {
        return;
    }
    let renew = format!("install a fresh CRL from the CA as {} (`medgate pki crl --dir CA --out {0}` for a pilot CA), then `medgate reload`", path.display());
    let crls = match pki::read_crls(path) {
        Ok(c) => c,
        Err(e) => return report.fail(key, e, format!("put the CA's PEM CRL in {}", path.display())),
    };
    let now = now();
    for c in crls {
        if !cas.iter().any(|ca| ca.subject == c.issuer) {
            report.fail(key, format!("issued by {}, which is not a CA of his.client_ca", c.issuer), "configure the CRL of the CA that issues the HIS client certificates");
            continue;
        }
        match c.next_update {
            Some(next) if next < now && allow_expired => {
                report.warn(key, format!("past its nextUpdate ({}); accepted because of [dangerous] allow_expired_crl", rfc3339(next)), renew.clone())
            }
            Some(next) if next < now => report.fail(
                key,
                format!("past its nextUpdate ({}): every HIS client certificate of {} is refused", rfc3339(next), c.issuer),
                renew.clone(),
            ),
            Some(next) if next - now < CRL_WARN_DAYS * DAY => report.warn(key, format!("nextUpdate {} is near", rfc3339(next)), renew.clone()),
            Some(next) => report.ok(key, format!("{} revoked, next update {}", c.revoked.len(), rfc3339(next))),
            None => report.ok(key, format!("{} revoked, no nextUpdate", c.revoked.len())),
        }
    }
}
